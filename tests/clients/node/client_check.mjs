// Cross-language client check (Node / @grpc/grpc-js) for the orchestrator.v1 contract.
//
// Starts the real orchestrator binary on a free port with a temporary
// database, loads proto/orchestrator/v1/*.proto with @grpc/proto-loader (no
// code generation) and drives it as a third-party client would: a full worker
// lifecycle, argument validation, session fencing (with the ErrorInfo detail
// decoded by protobufjs), grpc.health.v1 and reflection (v1 list_services).
//
// Usage: node tests/clients/node/client_check.mjs [ORCHESTRATOR_BIN]
// The binary is taken from argv, else $ORCHESTRATOR_BIN, else
// target/debug/orchestrator under the repository root. Prints one line per
// check and, at the end, "N passed, M failed"; exits 1 if anything failed.

import { spawn } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { accessSync, chmodSync, constants, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const PROTO_ROOT = path.join(REPO_ROOT, "proto");
const PROTO_FILES = ["orchestrator/v1/common.proto", "orchestrator/v1/worker.proto", "orchestrator/v1/admin.proto"];
const SERVE_LINE = /orchestrator serving addr=(\S+)/;
const ANSI = /\x1b\[[0-9;]*m/g;
const RPC_TIMEOUT_MS = 10_000;
const STARTUP_TIMEOUT_MS = 30_000;

// Checks where the orchestrator is known to deviate from the contract: their
// failure is printed as KNOWN and not counted, unless CLIENT_CHECK_STRICT=1
// (as CI runs it); a listed check that passes fails either way, so the list
// cannot go stale.
// Remove an entry once the orchestrator is fixed.
const KNOWN_ISSUES = {}; // check name -> why it may fail for now (none at the moment)
const STRICT = process.env.CLIENT_CHECK_STRICT === "1";

// google.rpc.Status / ErrorInfo, the grpc.health.v1 and grpc.reflection.v1
// messages we use: wire-compatible subsets of the upstream definitions.
const EXTRA = protobuf.parse(`
syntax = "proto3";
package extra;
message Any { string type_url = 1; bytes value = 2; }
message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
message ServerReflectionRequest {
  string host = 1;
  oneof message_request { string file_containing_symbol = 4; string list_services = 7; }
}
message ServiceResponse { string name = 1; }
message ListServiceResponse { repeated ServiceResponse service = 1; }
message ErrorResponse { int32 error_code = 1; string error_message = 2; }
message ServerReflectionResponse {
  string valid_host = 1;
  oneof message_response { ListServiceResponse list_services_response = 6; ErrorResponse error_response = 7; }
}
`, { keepCase: true }).root;
const T = (name) => EXTRA.lookupType(`extra.${name}`);

class CheckFailed extends Error {}

function expect(cond, what) {
  if (!cond) throw new CheckFailed(what);
}

function expectEq(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new CheckFailed(`${what}: expected ${e}, got ${a}`);
}

const rid = () => randomUUID().replaceAll("-", "");
const deadline = () => ({ deadline: Date.now() + RPC_TIMEOUT_MS });
const leaseKey = (l) => `${l.stream_id}@${l.lease_epoch}`;
const durationMs = (d) => Number(d?.seconds ?? 0) * 1000 + Math.floor((d?.nanos ?? 0) / 1e6);

// ------------------------------------------------------------------ server

class Orchestrator {
  constructor(binary, workdir, extra = []) {
    this.binary = binary;
    this.extra = extra;
    this.db = path.join(workdir, "orchestrator.db");
    this.proc = null;
    this.log = [];
    this.exited = null;
  }

  start() {
    const args = [
      "serve",
      "--listen", "127.0.0.1:0",
      "--database", this.db,
      "--heartbeat-interval", "200ms",
      "--session-timeout", "2s",
      ...this.extra,
    ]; // prettier-ignore
    this.proc = spawn(this.binary, args, {
      stdio: ["ignore", "ignore", "pipe"],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "info", NO_COLOR: "1" },
    });
    this.exitPromise = new Promise((resolve) => {
      this.proc.on("exit", (code, signal) => {
        this.exited = { code, signal };
        resolve();
      });
      this.proc.on("error", (err) => {
        this.exited = { code: null, signal: null, error: err.message };
        resolve();
      });
    });
    return new Promise((resolve, reject) => {
      let addr = null;
      const timer = setTimeout(
        () => reject(new CheckFailed(`orchestrator did not log 'orchestrator serving addr=...' within ${STARTUP_TIMEOUT_MS / 1000}s (see its stderr below)`)),
        STARTUP_TIMEOUT_MS,
      );
      createInterface({ input: this.proc.stderr }).on("line", (raw) => {
        const line = raw.replace(ANSI, "");
        this.log.push(line);
        const m = addr === null && SERVE_LINE.exec(line);
        if (m) {
          addr = m[1];
          clearTimeout(timer);
          resolve(addr);
        }
      });
      this.exitPromise.then(() => {
        if (addr === null) {
          clearTimeout(timer);
          reject(new CheckFailed(`orchestrator exited before serving (${JSON.stringify(this.exited)}) (see its stderr below)`));
        }
      });
    });
  }

  tail(n = 40) {
    return this.log.slice(-n).map((l) => `    ${l}`).join("\n");
  }

  async stop() {
    if (!this.proc || this.exited) return;
    this.proc.kill("SIGTERM");
    const killer = setTimeout(() => this.proc.kill("SIGKILL"), 10_000);
    await this.exitPromise;
    clearTimeout(killer);
  }

  killNow() {
    if (this.proc && !this.exited) this.proc.kill("SIGKILL");
  }
}

// ------------------------------------------------------------------ helpers

// Secure mode's tokens: { admin, workers: { server_id: token } }, or null.
let AUTH = null;

// The token a client of this fleet would send: the admin's on AdminService,
// the named worker's (server_id or session.server_id) on WorkerService.
function tokenFor(client, request) {
  if (!AUTH) return undefined;
  if (client.role === "admin") return AUTH.admin;
  if (client.role !== "worker") return undefined;
  return AUTH.workers[request?.server_id || request?.session?.server_id || ""];
}

function unary(client, method, request, metadata = new grpc.Metadata()) {
  const token = tokenFor(client, request);
  if (token && !metadata.get("authorization").length) metadata.set("authorization", `Bearer ${token}`);
  return new Promise((resolve, reject) => {
    client[method](request, metadata, deadline(), (err, resp) => (err ? reject(err) : resolve(resp)));
  });
}

async function expectError(client, method, request, metadata) {
  try {
    const resp = await unary(client, method, request, metadata);
    throw new CheckFailed(`${method}: expected the call to fail, it returned OK: ${JSON.stringify(resp)}`);
  } catch (err) {
    if (err instanceof CheckFailed) throw err;
    return err;
  }
}

const codeName = (code) => Object.keys(grpc.status).find((k) => grpc.status[k] === code) ?? String(code);

function errorInfos(err) {
  const raw = err.metadata?.get("grpc-status-details-bin") ?? [];
  expect(raw.length === 1, `expected one grpc-status-details-bin trailer, got ${raw.length}`);
  const status = T("Status").decode(raw[0]);
  expectEq(status.code, err.code, "google.rpc.Status.code vs the gRPC status code");
  expectEq(status.message, err.details, "google.rpc.Status.message vs the gRPC status message");
  return status.details
    .filter((d) => d.type_url === "type.googleapis.com/google.rpc.ErrorInfo")
    .map((d) => T("ErrorInfo").decode(d.value));
}

function expectSessionError(err, reason, serverId) {
  expectEq(codeName(err.code), "FAILED_PRECONDITION", "status code");
  const infos = errorInfos(err);
  expectEq(infos.length, 1, "number of ErrorInfo details");
  expectEq(infos[0].reason, reason, "ErrorInfo.reason");
  expectEq(infos[0].domain, "orchestrator.v1", "ErrorInfo.domain");
  expectEq(infos[0].metadata?.server_id, serverId, "ErrorInfo.metadata[server_id]");
}

const registerReq = (serverId, maxStreams = 10) => ({
  server_id: serverId,
  max_streams: maxStreams,
  request_id: rid(),
  client_version: "node-client-check/1",
});

// ------------------------------------------------------------------ checks

function makeChecks(addr, v1, creds = grpc.credentials.createInsecure()) {
  const worker = new v1.WorkerService(addr, creds);
  const admin = new v1.AdminService(addr, creds);
  worker.role = "worker";
  admin.role = "admin";
  const raw = new grpc.Client(addr, creds);
  const clients = [worker, admin, raw];

  const rawUnary = (pathName, reqType, respType, request) =>
    new Promise((resolve, reject) => {
      raw.makeUnaryRequest(
        pathName,
        (obj) => Buffer.from(T(reqType).encode(T(reqType).fromObject(obj)).finish()),
        (buf) => T(respType).toObject(T(respType).decode(buf), { enums: String, defaults: true }),
        request,
        deadline(),
        (err, resp) => (err ? reject(err) : resolve(resp)),
      );
    });

  const checks = {
    async health_serving() {
      for (const service of ["", "orchestrator.v1.WorkerService", "orchestrator.v1.AdminService"]) {
        const resp = await rawUnary("/grpc.health.v1.Health/Check", "HealthCheckRequest", "HealthCheckResponse", { service });
        expectEq(resp.status, "SERVING", `health status of ${JSON.stringify(service)}`);
      }
    },

    async reflection_v1_list_services() {
      const responses = await new Promise((resolve, reject) => {
        const out = [];
        const call = raw.makeBidiStreamRequest(
          "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
          (obj) => Buffer.from(T("ServerReflectionRequest").encode(T("ServerReflectionRequest").fromObject(obj)).finish()),
          (buf) => T("ServerReflectionResponse").toObject(T("ServerReflectionResponse").decode(buf), { oneofs: true }),
          new grpc.Metadata(),
          deadline(),
        );
        call.on("data", (d) => out.push(d));
        call.on("error", reject);
        call.on("end", () => resolve(out));
        call.write({ list_services: "*" }); // any value; "" would not be encoded
        call.end();
      });
      expectEq(responses.length, 1, "number of reflection responses");
      expectEq(responses[0].message_response, "list_services_response", "reflection answer kind");
      const names = responses[0].list_services_response.service.map((s) => s.name);
      for (const svc of ["orchestrator.v1.WorkerService", "orchestrator.v1.AdminService"]) {
        expect(names.includes(svc), `${svc} not in listed services ${JSON.stringify(names)}`);
      }
    },

    async invalid_empty_server_id() {
      const err = await expectError(worker, "Register", registerReq(""));
      expectEq(codeName(err.code), "INVALID_ARGUMENT", "status code");
      expect((err.details ?? "").startsWith("server_id"), `message should start with 'server_id', got ${JSON.stringify(err.details)}`);
    },

    async invalid_max_streams_zero() {
      const err = await expectError(worker, "Register", registerReq("node-invalid", 0));
      expectEq(codeName(err.code), "INVALID_ARGUMENT", "status code");
      expect((err.details ?? "").startsWith("max_streams"), `message should start with 'max_streams', got ${JSON.stringify(err.details)}`);
    },

    async worker_lifecycle() {
      // AddStreams: 3 new streams (int64 ids travel as strings: longs: String).
      const first = ["201", "202", "203"];
      const added = await unary(admin, "AddStreams", {
        streams: first.map((id) => ({ stream_id: id, name: `node-${id}` })),
        request_id: rid(),
      });
      expectEq(added.added, first, "AddStreams.added");
      expectEq(added.already_present, [], "AddStreams.already_present");

      // Register.
      const serverId = "node-worker-1";
      const reg = await unary(worker, "Register", registerReq(serverId));
      const session = reg.session;
      expectEq(session.server_id, serverId, "Register session.server_id");
      expect(session.session_id !== "", "Register returned an empty session_id");
      expect(BigInt(session.worker_epoch) >= 1n, `worker_epoch ${session.worker_epoch} < 1`);
      expectEq(reg.held_lease_decisions, [], "Register held_lease_decisions");
      expect(durationMs(reg.heartbeat_interval) > 0, `heartbeat_interval ${JSON.stringify(reg.heartbeat_interval)} not > 0`);
      expect(durationMs(reg.session_timeout) > durationMs(reg.heartbeat_interval), "session_timeout not above heartbeat_interval");

      // Heartbeat: gets the new streams in `assign` (repeated until
      // acknowledged). The orchestrator may batch its placement rounds, so
      // the grants can take a heartbeat or two to appear.
      let hb = await unary(worker, "Heartbeat", { session });
      for (const deadline = Date.now() + 5000; hb.assign.length === 0 && Date.now() < deadline; ) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        hb = await unary(worker, "Heartbeat", { session });
      }
      expect(hb.assign.length > 0, "no Heartbeat within 5 s after Register assigned anything");
      const held = new Map();
      const until = Date.now() + 10_000;
      for (;;) {
        for (const lease of hb.assign) {
          expect(first.includes(lease.stream_id), `assigned unknown stream ${lease.stream_id}`);
          expect(BigInt(lease.lease_epoch) >= 1n, `lease_epoch ${lease.lease_epoch} < 1`);
          held.set(lease.stream_id, lease.lease_epoch);
        }
        expectEq(hb.revoke, [], "Heartbeat.revoke");
        expect(!hb.draining, "Heartbeat.draining is true");
        if (held.size === first.length) break;
        expect(Date.now() < until, `only ${[...held.keys()]} of ${first} assigned in 10 s`);
        await new Promise((r) => setTimeout(r, 100));
        hb = await unary(worker, "Heartbeat", { session, processing_count: held.size });
      }

      // Heartbeat acknowledging them: `assign` is empty afterwards.
      const acked = [...held].sort().map(([stream_id, lease_epoch]) => ({ stream_id, lease_epoch }));
      hb = await unary(worker, "Heartbeat", { session, processing_count: held.size, acknowledged: acked });
      expectEq(hb.assign, [], "Heartbeat.assign after acknowledging");
      expect(durationMs(hb.next_heartbeat_interval) > 0, "next_heartbeat_interval not > 0");

      const listed = await unary(admin, "ListAssignments", { server_id: serverId });
      expectEq(listed.assignments.map((a) => leaseKey(a.lease)).sort(), acked.map(leaseKey).sort(), "ListAssignments of the worker");

      // RequestStreams: two more streams, pulled before any heartbeat.
      const more = ["204", "205"];
      await unary(admin, "AddStreams", { streams: more.map((id) => ({ stream_id: id })), request_id: rid() });
      const req = await unary(worker, "RequestStreams", { session, count: 2, request_id: rid() });
      const granted = [...req.granted].sort((a, b) => Number(a.stream_id) - Number(b.stream_id));
      expectEq(granted.map((l) => l.stream_id), more, "RequestStreams.granted stream ids");
      expect(granted.every((l) => BigInt(l.lease_epoch) >= 1n), `granted lease_epoch < 1: ${JSON.stringify(granted)}`);

      // ReleaseStreams: give the two back, plus one never held.
      const rel = await unary(worker, "ReleaseStreams", {
        session,
        leases: [...granted, { stream_id: "999", lease_epoch: "1" }],
        request_id: rid(),
      });
      expectEq(rel.released.map(leaseKey).sort(), granted.map(leaseKey).sort(), "ReleaseStreams.released");
      expectEq(rel.not_held.map(leaseKey), ["999@1"], "ReleaseStreams.not_held");

      // SyncLocalState: confirm one lease, upload two processing records.
      const lease = { stream_id: "201", lease_epoch: held.get("201") };
      const now = Math.floor(Date.now() / 1000);
      const sync = await unary(worker, "SyncLocalState", {
        session,
        held_leases: [lease],
        records: [
          { ...lease, processed_at: { seconds: String(now - 1), nanos: 0 }, sequence: "1", local_mode: true },
          { ...lease, processed_at: { seconds: String(now), nanos: 0 }, sequence: "2", local_mode: false },
        ],
        request_id: rid(),
      });
      expectEq(sync.acknowledged_through_sequence, "2", "acknowledged_through_sequence");
      expectEq(sync.stale_records, 0, "stale_records");
      expectEq(sync.decisions.length, 1, "number of SyncLocalState decisions");
      expectEq(sync.decisions[0].kind, "LEASE_DECISION_KIND_KEEP", "SyncLocalState decision");
      expectEq(leaseKey(sync.decisions[0].lease), leaseKey(lease), "decision lease");

      // Deregister (twice with the same request_id: both OK).
      const dereg = { session, request_id: rid() };
      await unary(worker, "Deregister", dereg);
      await unary(worker, "Deregister", dereg);
      const err = await expectError(worker, "Heartbeat", { session });
      expectEq(codeName(err.code), "FAILED_PRECONDITION", "Heartbeat after Deregister");

      const status = await unary(admin, "GetClusterStatus", {});
      expectEq(status.live_workers, 0, "GetClusterStatus.live_workers after Deregister");
      expectEq(status.total_streams, "5", "GetClusterStatus.total_streams");
      expectEq(status.assigned_streams, "0", "GetClusterStatus.assigned_streams after Deregister");
      // ListWorkers is paginated like the other lists: page through
      // (two per page here, so a fleet of any size is read whole).
      const workers = [];
      for (let token = ""; ; ) {
        const page = await unary(admin, "ListWorkers", { page_size: 2, page_token: token });
        workers.push(...page.workers);
        if (!page.next_page_token) break;
        token = page.next_page_token;
      }
      const mine = workers.filter((w) => w.server_id === serverId);
      expectEq(mine.length, 1, "ListWorkers entries for the worker");
      expectEq(mine[0].state, "WORKER_STATE_EXPIRED", "worker state");
      expectEq(mine[0].client_version, "node-client-check/1", "ListWorkers client_version");
    },

    async fenced_session() {
      const serverId = "node-fenced";
      const first = (await unary(worker, "Register", registerReq(serverId))).session;
      const second = (await unary(worker, "Register", registerReq(serverId))).session;
      expect(second.session_id !== first.session_id, "second Register returned the same session");
      expect(BigInt(second.worker_epoch) > BigInt(first.worker_epoch), `worker_epoch did not grow: ${first.worker_epoch} -> ${second.worker_epoch}`);
      const err = await expectError(worker, "Heartbeat", { session: first });
      expectSessionError(err, "SESSION_FENCED", serverId);
      await unary(worker, "Heartbeat", { session: second }); // the new session is unaffected
      await unary(worker, "Deregister", { session: second, request_id: rid() });
    },

    // worker.proto, Deregister: "Later calls with this session fail with
    // SESSION_UNKNOWN"; common.proto: SESSION_UNKNOWN is "ended by Deregister".
    async deregistered_session_unknown() {
      const serverId = "node-deregistered";
      const { session } = await unary(worker, "Register", registerReq(serverId));
      await unary(worker, "Deregister", { session, request_id: rid() });
      const err = await expectError(worker, "Heartbeat", { session });
      expectSessionError(err, "SESSION_UNKNOWN", serverId);
    },
  };
  return { checks, close: () => clients.forEach((c) => c.close()) };
}

// ------------------------------------------------------------------ TLS + tokens

// Worker ids the checks register, each given a token in secure mode.
const WORKER_IDS = ["node-invalid", "node-worker-1", "node-fenced", "node-deregistered"];

// What authentication promises, against a TLS + token orchestrator.
function makeSecureChecks(target, v1, certs) {
  const ca = readFileSync(path.join(certs, "ca.pem"));
  const anonymous = grpc.credentials.createSsl(ca);
  const worker = new v1.WorkerService(target, anonymous);
  const admin = new v1.AdminService(target, anonymous);
  const mtlsCreds = grpc.credentials.createSsl(
    ca,
    readFileSync(path.join(certs, "worker-node-mtls.key")),
    readFileSync(path.join(certs, "worker-node-mtls.pem")),
  );
  const mtls = new v1.WorkerService(target, mtlsCreds);
  const plain = new v1.WorkerService(target, grpc.credentials.createInsecure());
  const bearer = (token) => {
    const md = new grpc.Metadata();
    md.set("authorization", `Bearer ${token}`);
    return md;
  };
  const clients = [worker, admin, mtls, plain];
  const checks = {
    async no_credential_is_unauthenticated() {
      let err = await expectError(worker, "Register", registerReq("node-worker-1"));
      expectEq(codeName(err.code), "UNAUTHENTICATED", "Register without a token");
      err = await expectError(admin, "ListWorkers", {});
      expectEq(codeName(err.code), "UNAUTHENTICATED", "ListWorkers without a token");
      err = await expectError(admin, "ListWorkers", {}, bearer("not-a-valid-token-1234"));
      expectEq(codeName(err.code), "UNAUTHENTICATED", "ListWorkers with an unknown token");
    },
    async a_worker_cannot_act_as_another() {
      const mine = AUTH.workers["node-worker-1"];
      const err = await expectError(worker, "Register", registerReq("node-fenced"), bearer(mine));
      expectEq(codeName(err.code), "PERMISSION_DENIED", "Register as another worker");
      const ghost = await expectError(worker, "Register", registerReq("node-nobody"), bearer(mine));
      expectEq([ghost.code, ghost.details], [err.code, err.details], "the answer for an unknown server_id");
    },
    async a_worker_token_cannot_administer() {
      const err = await expectError(
        admin,
        "DrainWorker",
        { server_id: "node-worker-1", request_id: rid() },
        bearer(AUTH.workers["node-worker-1"]),
      );
      expectEq(codeName(err.code), "PERMISSION_DENIED", "DrainWorker with a worker token");
    },
    async a_client_certificate_names_its_worker() {
      const reg = await unary(mtls, "Register", registerReq("node-mtls"));
      expectEq(reg.session.server_id, "node-mtls", "Register by client certificate");
      const err = await expectError(mtls, "Register", registerReq("node-worker-1"));
      expectEq(codeName(err.code), "PERMISSION_DENIED", "Register as another worker by certificate");
      await unary(mtls, "Deregister", { session: reg.session, request_id: rid() });
    },
    async plaintext_to_the_tls_port_fails() {
      const err = await new Promise((resolve) => {
        plain.Register(registerReq("node-worker-1"), { deadline: Date.now() + 3000 }, (e) => resolve(e));
      });
      expect(err && err.code !== grpc.status.OK, "a plaintext call to the TLS port succeeded");
    },
  };
  return { checks, close: () => clients.forEach((c) => c.close()) };
}

// ------------------------------------------------------------------ main

async function runChecks(checks, label = "") {
  let passed = 0;
  let failed = 0;
  let known = 0;
  for (const [name, fn] of Object.entries(checks)) {
    const shown = `${label}${name}`;
    const knownIssue = STRICT ? undefined : KNOWN_ISSUES[name];
    try {
      await fn();
      if (name in KNOWN_ISSUES) {
        // A listed issue that passes is a stale list: fail, so it gets removed.
        failed += 1;
        console.log(`FAIL ${shown}: passes but is listed in KNOWN_ISSUES: remove it from the list`);
      } else {
        passed += 1;
        console.log(`ok   ${shown}`);
      }
    } catch (e) {
      const why =
        e instanceof CheckFailed ? e.message
        : e?.code !== undefined && e?.details !== undefined ? `unexpected RPC error ${codeName(e.code)}: ${e.details}`
        : `unexpected exception\n${e?.stack ?? e}`; // prettier-ignore
      if (knownIssue) {
        known += 1;
        console.log(`KNOWN ${shown}: ${why} (known issue, not counted: ${knownIssue})`);
      } else {
        failed += 1;
        console.log(`FAIL ${shown}: ${why}`);
      }
    }
  }
  return { passed, failed, known };
}

async function main() {
  const binary = path.resolve(process.argv[2] || process.env.ORCHESTRATOR_BIN || path.join(REPO_ROOT, "target/debug/orchestrator"));
  try {
    accessSync(binary, constants.X_OK);
  } catch {
    console.error(`FAIL: orchestrator binary not found or not executable: ${binary}`);
    console.log("0 passed, 1 failed");
    return 1;
  }
  // A directory written by `test-certs DIR --worker node-mtls`: run the
  // checks a second time against a TLS + token orchestrator.
  const certs = process.env.CLIENT_CHECK_CERTS;

  const def = protoLoader.loadSync(PROTO_FILES, {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const v1 = grpc.loadPackageDefinition(def).orchestrator.v1;

  const workdir = mkdtempSync(path.join(tmpdir(), "orchestrator-client-check-node-"));
  const servers = [new Orchestrator(binary, workdir)];
  const onSignal = (sig) => {
    servers.forEach((s) => s.killNow());
    process.exit(sig === "SIGINT" ? 130 : 143);
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  process.on("exit", () => servers.forEach((s) => s.killNow()));

  const total = { passed: 0, failed: 0, known: 0 };
  const add = (r) => {
    total.passed += r.passed;
    total.failed += r.failed;
    total.known += r.known;
  };
  try {
    const addr = await servers[0].start();
    console.log(`orchestrator ${binary} serving on ${addr}`);
    const { checks, close } = makeChecks(addr, v1);
    try {
      add(await runChecks(checks));
    } finally {
      close();
    }
    if (servers[0].exited) {
      total.failed += 1;
      console.log(`FAIL orchestrator exited early: ${JSON.stringify(servers[0].exited)}`);
    }
    await servers[0].stop();

    if (certs) {
      const token = () => randomBytes(24).toString("base64url");
      AUTH = { admin: token(), workers: Object.fromEntries(WORKER_IDS.map((id) => [id, token()])) };
      const auth = path.join(workdir, "auth");
      writeFileSync(
        auth,
        `admin node-check ${AUTH.admin}\n` + Object.entries(AUTH.workers).map(([id, t]) => `worker ${id} ${t}\n`).join(""),
      );
      chmodSync(auth, 0o600);
      mkdirSync(path.join(workdir, "secure"));
      const secure = new Orchestrator(binary, path.join(workdir, "secure"), [
        "--tls-cert", path.join(certs, "server.pem"),
        "--tls-key", path.join(certs, "server.key"),
        "--tls-client-ca", path.join(certs, "ca.pem"),
        "--auth-file", auth,
      ]); // prettier-ignore
      servers.push(secure);
      const target = `localhost:${(await secure.start()).split(":").pop()}`;
      console.log(`orchestrator ${binary} serving TLS + tokens on ${target}`);
      const creds = grpc.credentials.createSsl(readFileSync(path.join(certs, "ca.pem")));
      const plainChecks = makeChecks(target, v1, creds);
      const secureChecks = makeSecureChecks(target, v1, certs);
      try {
        const { invalid_empty_server_id: _skipped, ...again } = plainChecks.checks;
        add(await runChecks({ ...again, ...secureChecks.checks }, "tls+token "));
      } finally {
        plainChecks.close();
        secureChecks.close();
      }
      const log = secure.log.join("\n");
      if ([AUTH.admin, ...Object.values(AUTH.workers)].some((t) => log.includes(t))) {
        total.failed += 1;
        console.log("FAIL tls+token tokens_not_logged: a token appears in the orchestrator's log");
      } else {
        total.passed += 1;
        console.log("ok   tls+token tokens_not_logged");
      }
    } else {
      console.log("(CLIENT_CHECK_CERTS not set: the TLS + token checks are skipped)");
    }
  } catch (e) {
    total.failed += 1;
    console.log(`FAIL setup: ${e instanceof CheckFailed ? e.message : e?.stack ?? e}`);
  } finally {
    for (const server of servers) {
      await server.stop();
      if (total.failed) console.log(`orchestrator stderr (last lines):\n${server.tail()}`);
    }
    rmSync(workdir, { recursive: true, force: true });
  }
  if (total.known) console.log(`${total.known} known issue(s) not counted (CLIENT_CHECK_STRICT=1 counts them)`);
  console.log(`${total.passed} passed, ${total.failed} failed`);
  return total.failed ? 1 : 0;
}

process.exitCode = await main();
