// Browser test of the orchestrator's HTTP dashboard.
//
// Starts the real orchestrator (gRPC + HTTP listeners on free ports, a
// temporary SQLite database, 60 demo streams) and three example workers, then
// opens the dashboard in the machine's headless Chromium (driven by
// playwright-core; no browser is downloaded) and checks that what it shows
// agrees with the admin CLI (`orchestrator status --json`,
// `orchestrator workers --json`): first with all three workers live, then
// after one is killed with SIGKILL and its streams have moved.
// A second scenario starts another orchestrator (5 demo streams) with an auth
// file holding an admin and a worker token, and checks in a fresh browser
// context that the page asks for a token, refuses the worker token (403: "not
// an admin token"), loads with the admin token (never put in the URL), keeps
// it in sessionStorage across a reload, and that GET /api/v1/status answers
// 401 + WWW-Authenticate: Bearer without a token.
//
// Usage: node tests/browser/dashboard.test.mjs [ORCHESTRATOR_BIN [WORKER_BIN]]
//   ORCHESTRATOR_BIN  default target/debug/orchestrator
//   WORKER_BIN        default target/debug/examples/worker
//   CHROMIUM          default /usr/bin/chromium
//   PATIENCE          multiplies every timeout (default 1; e.g. 3 on a slow machine)
// Relative paths are taken from the current directory, else from the repository root.
// Screenshots: target/dashboard-live.png (three live workers) and
// target/dashboard.png (after the kill); target/dashboard-failure.png on failure
// (target/dashboard-auth-failure.png for the second scenario).
// Prints one line per check and, at the end, "N passed, M failed"; exits 1 on failure.

import { execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, "../..");
const TARGET = path.join(ROOT, "target");

const PATIENCE = (() => {
  const p = Number(process.env.PATIENCE ?? "1");
  return Number.isFinite(p) && p > 0 ? p : 1;
})();
const T = (ms) => Math.round(ms * PATIENCE);

const STREAMS = 60;
const WORKERS = ["w-a", "w-b", "w-c"];
const MAX_STREAMS = 30;
const VICTIM = "w-c";

// Log lines (tracing fmt, ANSI stripped): the gRPC listener logs
// "orchestrator serving addr=HOST:PORT ...", the HTTP listener "HTTP listening addr=HOST:PORT ...".
const ANSI = /\x1b\[[0-9;]*[A-Za-z]/g;
const GRPC_LINE = /orchestrator serving/;
const HTTP_LINE = /HTTP listening/;
const ADDR_FIELD = /\baddr="?([^\s"]+)"?/;

const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox", // runs as root here; Chromium's sandbox refuses to start as root
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking", // the machine has no internet: no update/safe-browsing/metrics calls
  "--disable-component-update",
  "--disable-sync",
];

function binary(arg, envName, fallback) {
  const p = arg || process.env[envName] || fallback;
  if (path.isAbsolute(p)) return p;
  const fromCwd = path.resolve(process.cwd(), p);
  return existsSync(fromCwd) ? fromCwd : path.resolve(ROOT, p);
}
const ORCHESTRATOR_BIN = binary(process.argv[2], "ORCHESTRATOR_BIN", "target/debug/orchestrator");
const WORKER_BIN = binary(process.argv[3], "WORKER_BIN", "target/debug/examples/worker");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

class CheckFailed extends Error {}
function expect(cond, what) {
  if (!cond) throw new CheckFailed(what);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------ child processes

const children = [];

class Child {
  constructor(name, bin, args, env, cwd) {
    this.name = name;
    this.tail = [];
    this.exited = null;
    this.proc = spawn(bin, args, { cwd, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
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
    this.lines = [];
    const keep = (raw) => {
      const line = raw.replace(ANSI, "");
      this.tail.push(line);
      if (this.tail.length > 200) this.tail.shift();
      for (const l of this.lines) l(line);
    };
    createInterface({ input: this.proc.stdout }).on("line", keep);
    createInterface({ input: this.proc.stderr }).on("line", keep);
    children.push(this);
  }

  onLine(fn) {
    this.lines.push(fn);
  }

  kill(signal) {
    if (this.exited === null) {
      try {
        this.proc.kill(signal);
      } catch {
        /* already gone */
      }
    }
  }

  async stop(graceMs = 3000) {
    if (this.exited !== null) return;
    this.kill("SIGTERM");
    await Promise.race([this.exitPromise, sleep(graceMs)]);
    if (this.exited === null) {
      this.kill("SIGKILL");
      await Promise.race([this.exitPromise, sleep(2000)]);
    }
  }
}

// `args`: the `serve` arguments; by default those of the first scenario.
function startOrchestrator(dir, args = null) {
  const orch = new Child(
    "orchestrator",
    ORCHESTRATOR_BIN,
    args ?? [
      "serve",
      "--listen", "127.0.0.1:0",
      "--http-listen", "127.0.0.1:0",
      "--database", path.join(dir, "o.db"),
      "--demo-streams", String(STREAMS),
      "--heartbeat-interval", "200ms",
      "--session-timeout", "1s",
    ], // prettier-ignore
    { RUST_LOG: "info", NO_COLOR: "1" },
    dir,
  );
  return new Promise((resolve, reject) => {
    let grpc = null;
    let http = null;
    const timer = setTimeout(
      () => reject(new CheckFailed(`orchestrator did not log both listening addresses within ${T(30_000) / 1000}s (gRPC: ${grpc}, HTTP: ${http})`)),
      T(30_000),
    );
    orch.onLine((line) => {
      const m = ADDR_FIELD.exec(line);
      if (!m) return;
      const addr = m[1].replace(/^https?:\/\//, "").replace(/\/$/, "");
      if (grpc === null && GRPC_LINE.test(line)) grpc = addr;
      else if (http === null && HTTP_LINE.test(line)) http = addr;
      if (grpc !== null && http !== null) {
        clearTimeout(timer);
        resolve({ orch, grpc, http });
      }
    });
    orch.exitPromise.then(() => {
      clearTimeout(timer);
      reject(new CheckFailed(`orchestrator exited before listening (${JSON.stringify(orch.exited)})`));
    });
  });
}

function run(bin, args, timeoutMs) {
  return new Promise((resolve, reject) => {
    execFile(bin, args, { timeout: timeoutMs, env: { ...process.env, NO_COLOR: "1" }, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${path.basename(bin)} ${args.join(" ")}: ${err.message.trim()}${stderr ? `\n${stderr.trim()}` : ""}`));
      else resolve(stdout);
    });
  });
}

// ------------------------------------------------------------ what each side shows

// The admin CLI's view: `status --json` and `workers --json`.
async function cliView(grpc) {
  const common = ["--addr", `http://${grpc}`, "--json", "--timeout", `${T(5000)}ms`];
  const [status, workers] = await Promise.all([
    run(ORCHESTRATOR_BIN, ["status", ...common], T(15_000)).then(JSON.parse),
    run(ORCHESTRATOR_BIN, ["workers", ...common], T(15_000)).then(JSON.parse),
  ]);
  return normalise({
    live: status.live_workers,
    total: status.total_streams,
    assigned: status.assigned_streams,
    unassigned: status.unassigned_streams,
    workers: (workers.workers ?? []).map((w) => ({ id: w.server_id, state: w.state, assigned: w.assigned_streams })),
  });
}

// The dashboard's view, read through its data-testid attributes.
async function pageView(page) {
  return normalise(
    await page.evaluate(() => {
      const num = (id) => {
        const el = document.querySelector(`[data-testid="${id}"]`);
        const t = el ? el.textContent.trim() : "";
        return /^\d+$/.test(t) ? Number(t) : t;
      };
      return {
        refreshes: Number(document.body.dataset.refreshes),
        live: num("live-workers"),
        total: num("total-streams"),
        assigned: num("assigned-streams"),
        unassigned: num("unassigned-streams"),
        workers: [...document.querySelectorAll('[data-testid="worker-row"]')].map((row) => {
          const a = row.querySelector('[data-testid="worker-assigned"]');
          const t = a ? a.textContent.trim() : "";
          return { id: row.dataset.serverId, state: row.dataset.state, assigned: /^\d+$/.test(t) ? Number(t) : t };
        }),
      };
    }),
  );
}

function normalise(v) {
  v.workers = [...v.workers].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  return v;
}

const figures = (v) => JSON.stringify({ live: v.live, total: v.total, assigned: v.assigned, unassigned: v.unassigned, workers: v.workers });
const liveSum = (v, ids) => v.workers.filter((w) => ids.includes(w.id)).reduce((s, w) => s + (typeof w.assigned === "number" ? w.assigned : 0), 0);

// Polls until `settled(cli)` holds and the page shows exactly what the CLI
// shows (read CLI, page, CLI again: both CLI reads equal and equal to the page).
async function untilPageMatches(page, grpc, settled, what, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let last = "nothing read yet";
  while (Date.now() < deadline) {
    try {
      const before = await cliView(grpc);
      if (!settled(before)) {
        last = `CLI not settled yet: ${figures(before)}`;
      } else {
        const shown = await pageView(page);
        const after = await cliView(grpc);
        if (figures(before) === figures(after) && figures(shown) === figures(after)) return { cli: after, page: shown };
        last = `page ${figures(shown)} vs CLI ${figures(after)}`;
      }
    } catch (e) {
      last = `error: ${e.message}`;
    }
    await sleep(T(300));
  }
  throw new CheckFailed(`${what}: not within ${timeoutMs / 1000}s; last: ${last}`);
}

// ------------------------------------------------------------ the test

const results = [];
let failed = false;

async function check(name, fn) {
  if (failed) {
    results.push({ name, status: "skipped" });
    console.log(`skip - ${name}`);
    return;
  }
  const started = Date.now();
  try {
    const detail = await fn();
    results.push({ name, status: "passed" });
    console.log(`ok   - ${name} (${((Date.now() - started) / 1000).toFixed(1)}s)${detail ? `: ${detail}` : ""}`);
  } catch (e) {
    failed = true;
    results.push({ name, status: "failed" });
    console.log(`FAIL - ${name}: ${e instanceof CheckFailed ? e.message : e.stack || e}`);
  }
}

async function main() {
  console.log(`orchestrator: ${ORCHESTRATOR_BIN}\nworker:       ${WORKER_BIN}\nchromium:     ${CHROMIUM}\npatience:     ${PATIENCE}`);
  for (const [what, p] of [["orchestrator binary", ORCHESTRATOR_BIN], ["worker binary", WORKER_BIN], ["Chromium", CHROMIUM]]) {
    if (!existsSync(p)) {
      console.log(`FAIL - ${what} not found: ${p}`);
      console.log("0 passed, 1 failed");
      return 1;
    }
  }

  rmSync(path.join(TARGET, "dashboard-failure.png"), { force: true });
  rmSync(path.join(TARGET, "dashboard-auth-failure.png"), { force: true });
  const dir = mkdtempSync(path.join(tmpdir(), "dashboard-test-"));
  let browser = null;
  let page = null;
  let orch = null;
  let grpc = null;
  let http = null;
  const pageErrors = [];
  const consoleErrors = [];
  const cleanup = async () => {
    if (browser) await Promise.race([browser.close().catch(() => {}), sleep(5000)]);
    browser = null;
    await Promise.all(children.map((c) => c.stop()));
  };
  // The second scenario's (see below): its temporary directory and browser.
  let authDir = null;
  let authBrowser = null;
  const onSignal = (sig) => {
    for (const c of children) c.kill("SIGKILL");
    if (browser) browser.close().catch(() => {});
    if (authBrowser) authBrowser.close().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
    if (authDir) rmSync(authDir, { recursive: true, force: true });
    process.exit(sig === "SIGINT" ? 130 : 143);
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);

  try {
    await check("orchestrator starts with gRPC and HTTP listeners", async () => {
      ({ orch, grpc, http } = await startOrchestrator(dir));
      return `gRPC ${grpc}, HTTP ${http}`;
    });

    await check(`${WORKERS.length} example workers hold all ${STREAMS} streams (admin CLI)`, async () => {
      const help = await run(WORKER_BIN, ["--help"], T(10_000)).catch(() => "");
      const hb = help.includes("--heartbeat-interval") ? ["--heartbeat-interval", "200ms"] : [];
      for (const id of WORKERS) {
        new Child(
          id,
          WORKER_BIN,
          [
            "--server-id", id,
            "--orchestrator-url", `http://${grpc}`,
            "--max-streams", String(MAX_STREAMS),
            "--state", path.join(dir, `${id}.db`),
            ...hb,
          ], // prettier-ignore
          { RUST_LOG: "warn" },
          dir,
        );
      }
      const deadline = Date.now() + T(30_000);
      let last = null;
      while (Date.now() < deadline) {
        try {
          last = await cliView(grpc);
          const live = last.workers.filter((w) => w.state === "live").map((w) => w.id);
          if (
            last.live === WORKERS.length &&
            WORKERS.every((id) => live.includes(id)) &&
            last.total === STREAMS &&
            last.assigned === STREAMS &&
            last.unassigned === 0 &&
            liveSum(last, WORKERS) === STREAMS
          ) {
            return last.workers.map((w) => `${w.id}=${w.assigned}`).join(" ");
          }
        } catch (e) {
          last = { error: e.message };
        }
        for (const c of children) {
          if (c.exited !== null) throw new CheckFailed(`${c.name} exited: ${JSON.stringify(c.exited)}\n${c.tail.slice(-20).join("\n")}`);
        }
        await sleep(T(250));
      }
      throw new CheckFailed(`fleet did not settle within ${T(30_000) / 1000}s; last CLI view: ${JSON.stringify(last)}`);
    });

    await check("GET api/v1/status answers the orchestrator.status.v1 schema", async () => {
      const r = await fetch(`http://${http}/api/v1/status`, { signal: AbortSignal.timeout(T(10_000)) });
      expect(r.status === 200, `status ${r.status}`);
      expect((r.headers.get("content-type") ?? "").includes("application/json"), `content-type ${r.headers.get("content-type")}`);
      const s = await r.json();
      expect(s.schema === "orchestrator.status.v1", `schema ${JSON.stringify(s.schema)}`);
      expect(s.cluster && s.cluster.total_streams === STREAMS, `cluster ${JSON.stringify(s.cluster)}`);
      return `role ${s.role}, version ${s.version}`;
    });

    await check("the dashboard loads in headless Chromium", async () => {
      browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: T(60_000) });
      const context = await browser.newContext({ viewport: { width: 1600, height: 1000 } });
      page = await context.newPage();
      page.setDefaultTimeout(T(15_000));
      page.on("pageerror", (e) => pageErrors.push(e.message));
      page.on("console", (m) => {
        if (m.type() === "error") consoleErrors.push(m.text());
      });
      const resp = await page.goto(`http://${http}/`, { timeout: T(20_000) });
      expect(resp && resp.status() === 200, `GET / answered ${resp && resp.status()}`);
      expect((resp.headers()["content-type"] ?? "").includes("text/html"), `GET / content-type ${resp.headers()["content-type"]}`);
      await page.waitForSelector("body[data-loaded=true]", { timeout: T(20_000) });
      expect(await page.isHidden('[data-testid="token-form"]'), "the token form is shown, but this orchestrator has no auth file");
      return `title "${await page.title()}"`;
    });

    await check("the dashboard agrees with the admin CLI (3 live workers)", async () => {
      const { page: shown } = await untilPageMatches(
        page,
        grpc,
        (v) => v.live === WORKERS.length && v.assigned === STREAMS && v.unassigned === 0 && liveSum(v, WORKERS) === STREAMS,
        "page and CLI agree on 3 live workers holding all streams",
        T(30_000),
      );
      expect(shown.workers.length === WORKERS.length, `worker rows: ${JSON.stringify(shown.workers)}`);
      expect(shown.workers.every((w) => w.state === "live"), `worker states: ${JSON.stringify(shown.workers)}`);
      const refreshes = shown.refreshes;
      await page.waitForFunction((n) => Number(document.body.dataset.refreshes) > n, refreshes, { timeout: T(10_000) });
      mkdirSync(TARGET, { recursive: true });
      await page.screenshot({ path: path.join(TARGET, "dashboard-live.png"), fullPage: true });
      return `${figures(shown)}; screenshot target/dashboard-live.png`;
    });

    const survivors = WORKERS.filter((w) => w !== VICTIM);
    await check(`after SIGKILL of ${VICTIM}, the dashboard shows it gone and ${survivors.join(" + ")} holding all ${STREAMS} streams, as the CLI does`, async () => {
      // Record every timeline item the page renders from now on, so an event
      // cannot scroll out of the newest-50 window between two of our polls.
      await page.evaluate(() => {
        window.__seenEvents = new Set();
        const list = document.querySelector('[data-testid="events"]');
        const record = () => {
          for (const li of list.querySelectorAll('[data-testid="event"]')) {
            window.__seenEvents.add(`${li.dataset.event} ${[...li.children].map((c) => c.textContent).join(" ")}`);
          }
        };
        new MutationObserver(record).observe(list, { childList: true });
        record();
      });
      const victim = children.find((c) => c.name === VICTIM);
      victim.kill("SIGKILL");
      await victim.exitPromise;
      const { page: shown } = await untilPageMatches(
        page,
        grpc,
        (v) => {
          const w = v.workers.find((x) => x.id === VICTIM);
          return (!w || w.state !== "live") && v.live === survivors.length && v.assigned === STREAMS && liveSum(v, survivors) === STREAMS;
        },
        `page and CLI agree that ${VICTIM} is not live and ${survivors.join(" + ")} hold ${STREAMS}`,
        T(45_000),
      );
      const row = shown.workers.find((w) => w.id === VICTIM);
      expect(!row || row.state !== "live", `${VICTIM} still shown live`);
      expect(liveSum(shown, survivors) === STREAMS, `survivors hold ${liveSum(shown, survivors)}`);
      return figures(shown);
    });

    await check(`the timeline shows worker_expired for ${VICTIM}`, async () => {
      const deadline = Date.now() + T(10_000);
      while (Date.now() < deadline) {
        const seen = await page.evaluate(() => [...(window.__seenEvents || [])]);
        const hit = seen.find((e) => e.startsWith("worker_expired ") && e.includes(VICTIM));
        if (hit) return hit.replace(/\s+/g, " ");
        await sleep(T(300));
      }
      const names = await page.$$eval('[data-testid="event"]', (els) => els.map((e) => e.dataset.event));
      throw new CheckFailed(`no worker_expired event for ${VICTIM}; timeline now: ${names.join(", ")}`);
    });

    await check("screenshot target/dashboard.png", async () => {
      mkdirSync(TARGET, { recursive: true });
      await page.screenshot({ path: path.join(TARGET, "dashboard.png"), fullPage: true });
    });

    await check("no script errors in the page", async () => {
      expect(pageErrors.length === 0, `uncaught errors: ${pageErrors.join(" | ")}`);
      expect(consoleErrors.length === 0, `console errors: ${consoleErrors.join(" | ")}`);
    });
  } finally {
    if (failed) {
      if (page) {
        mkdirSync(TARGET, { recursive: true });
        await page
          .screenshot({ path: path.join(TARGET, "dashboard-failure.png"), fullPage: true, timeout: 5000 })
          .then(() => console.log("screenshot of the failure: target/dashboard-failure.png"))
          .catch(() => {});
      }
      for (const c of children) {
        const n = c === orch ? 60 : 15;
        if (c.tail.length) console.log(`\n--- ${c.name} output (last ${Math.min(n, c.tail.length)} lines; ${c.exited ? `exit ${JSON.stringify(c.exited)}` : "still running"}) ---\n${c.tail.slice(-n).join("\n")}`);
      }
      if (pageErrors.length || consoleErrors.length) console.log(`\n--- page errors ---\n${[...pageErrors, ...consoleErrors].join("\n")}`);
    }
    await cleanup();
    rmSync(dir, { recursive: true, force: true });
  }

  // ---------------------------------------------------------- scenario 2: an orchestrator with an auth file
  //
  // The dashboard behind an admin token: the page asks for it, refuses a
  // worker token (403), loads with the admin token (kept in sessionStorage,
  // never in the URL) and loads again after a reload without asking.
  // Independent of the first scenario: a failure there does not skip these.
  failed = false;
  const AUTH_STREAMS = 5;
  const ADMIN_TOKEN = randomBytes(16).toString("hex");
  const WORKER_TOKEN = randomBytes(16).toString("hex");
  const hasToken = (s) => s.includes(ADMIN_TOKEN) || s.includes(WORKER_TOKEN);
  authDir = mkdtempSync(path.join(tmpdir(), "dashboard-auth-test-"));
  let authOrch = null;
  let authHttp = null;
  let authContext = null;
  let authPage = null;
  const authPageErrors = [];
  const authConsoleErrors = [];
  const statusAnswers = []; // HTTP status of every api/v1/status answer the page got, in order
  const requestUrls = []; // every URL the page requested
  const answersSince = (n) => statusAnswers.slice(n);
  try {
    await check("auth: orchestrator starts with --auth-file (an admin and a worker token, mode 600)", async () => {
      const authFile = path.join(authDir, "auth");
      writeFileSync(authFile, `admin ops ${ADMIN_TOKEN}\nworker w-x ${WORKER_TOKEN}\n`, { mode: 0o600 });
      chmodSync(authFile, 0o600); // whatever the umask
      expect((statSync(authFile).mode & 0o777) === 0o600, `auth file mode ${(statSync(authFile).mode & 0o777).toString(8)}`);
      let grpc;
      ({ orch: authOrch, grpc, http: authHttp } = await startOrchestrator(authDir, [
        "serve",
        "--listen", "127.0.0.1:0",
        "--http-listen", "127.0.0.1:0",
        "--database", path.join(authDir, "auth.db"),
        "--demo-streams", String(AUTH_STREAMS),
        "--auth-file", authFile,
      ])); // prettier-ignore
      const loose = authOrch.tail.find((l) => l.includes("accessible by group or others"));
      expect(!loose, `the orchestrator warns about the auth file's mode: ${loose}`);
      const loaded = authOrch.tail.find((l) => l.includes("bearer tokens from"));
      expect(loaded && /\badmins=1\b/.test(loaded) && /\bworkers=1\b/.test(loaded), `auth file not logged as 1 admin + 1 worker: ${loaded}`);
      return `gRPC ${grpc}, HTTP ${authHttp}`;
    });

    await check("auth: a fresh browser context gets the token form and no figures", async () => {
      authBrowser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: T(60_000) });
      authContext = await authBrowser.newContext({ viewport: { width: 1600, height: 1000 } });
      authPage = await authContext.newPage();
      authPage.setDefaultTimeout(T(15_000));
      authPage.on("pageerror", (e) => authPageErrors.push(e.message));
      authPage.on("console", (m) => {
        // Chromium logs every 401/403 answer as a console error; those are expected here.
        if (m.type() === "error" && !/Failed to load resource: the server responded with a status of 40[13]/.test(m.text())) authConsoleErrors.push(m.text());
      });
      authPage.on("request", (r) => requestUrls.push(r.url()));
      authPage.on("response", (r) => {
        if (new URL(r.url()).pathname === "/api/v1/status") statusAnswers.push(r.status());
      });
      const resp = await authPage.goto(`http://${authHttp}/`, { timeout: T(20_000) });
      expect(resp && resp.status() === 200, `GET / answered ${resp && resp.status()}`);
      expect((await authPage.evaluate(() => sessionStorage.length)) === 0, "sessionStorage is not empty in a fresh context");
      await authPage.waitForSelector('[data-testid="token-form"]', { state: "visible", timeout: T(20_000) });
      // The form shows after the first status answer (401): nothing was loaded.
      expect(statusAnswers.length > 0 && statusAnswers.every((s) => s === 401), `api/v1/status answers: ${statusAnswers.join(",")}`);
      const state = await authPage.evaluate(() => ({
        loaded: document.body.dataset.loaded,
        tiles: !document.getElementById("tiles").hidden,
        total: document.querySelector('[data-testid="total-streams"]').checkVisibility(),
        rows: document.querySelectorAll('[data-testid="worker-row"]').length,
      }));
      expect(state.loaded === "false" && !state.tiles && !state.total && state.rows === 0, `figures shown without a token: ${JSON.stringify(state)}`);
      return `answers ${statusAnswers.join(",")}; heading "${(await authPage.locator('[data-testid="token-form"] h2').innerText()).trim()}"`;
    });

    await check("auth: the worker token is refused as not an admin token (403), the form stays", async () => {
      const n = statusAnswers.length;
      await authPage.fill('[data-testid="token-input"]', WORKER_TOKEN);
      await authPage.click('[data-testid="token-submit"]');
      await authPage.waitForFunction(
        () => document.getElementById("auth-err").textContent === "This token is not an admin token.",
        null,
        { timeout: T(15_000) },
      );
      expect(answersSince(n).includes(403), `api/v1/status answers since the submit: ${answersSince(n).join(",")}`);
      const shown = (await authPage.locator("#auth-err").innerText()).trim();
      expect(shown === "This token is not an admin token.", `visible message ${JSON.stringify(shown)}`);
      expect(await authPage.isVisible('[data-testid="token-form"]'), "the token form is gone");
      expect((await authPage.getAttribute("body", "data-loaded")) === "false", "the page loaded with a worker token");
      expect(await authPage.isHidden('[data-testid="total-streams"]'), "figures shown with a worker token");
      const url = authPage.url();
      expect(!hasToken(url), `the token is in the page URL: ${url}`);
      return `"${shown}" (refresh indicator: "${(await authPage.locator("#refresh-text").innerText()).trim()}")`;
    });

    await check(`auth: the admin token loads the page with ${AUTH_STREAMS} streams, not in the URL`, async () => {
      const n = statusAnswers.length;
      await authPage.fill('[data-testid="token-input"]', ADMIN_TOKEN);
      await authPage.click('[data-testid="token-submit"]');
      await authPage.waitForSelector("body[data-loaded=true]", { timeout: T(20_000) });
      await authPage.waitForFunction(
        (want) => document.querySelector('[data-testid="total-streams"]').textContent.trim() === want,
        String(AUTH_STREAMS),
        { timeout: T(15_000) },
      );
      expect(answersSince(n).includes(200), `api/v1/status answers since the submit: ${answersSince(n).join(",")}`);
      expect(await authPage.isHidden('[data-testid="token-form"]'), "the token form is still shown");
      const url = authPage.url();
      expect(!hasToken(url), `the token is in the page URL: ${url}`);
      expect(new URL(url).search === "", `the page URL has a query: ${url}`);
      const leaked = requestUrls.filter(hasToken);
      expect(leaked.length === 0, `a token is in a request URL: ${leaked.join(" ")}`);
      return `total-streams ${await authPage.locator('[data-testid="total-streams"]').innerText()}, URL ${url}`;
    });

    await check("auth: GET api/v1/status answers 401 + WWW-Authenticate: Bearer without a token, 403 to the worker token, 200 to the admin token", async () => {
      const get = (token) =>
        fetch(`http://${authHttp}/api/v1/status`, {
          headers: token ? { Authorization: `Bearer ${token}` } : {},
          signal: AbortSignal.timeout(T(10_000)),
        });
      const none = await get(null);
      const challenge = none.headers.get("www-authenticate") ?? "";
      expect(none.status === 401, `no token: status ${none.status}`);
      expect(/^Bearer\b/i.test(challenge), `no token: WWW-Authenticate ${JSON.stringify(challenge)}`);
      const worker = await get(WORKER_TOKEN);
      expect(worker.status === 403, `worker token: status ${worker.status}`);
      const admin = await get(ADMIN_TOKEN);
      expect(admin.status === 200, `admin token: status ${admin.status}`);
      const s = await admin.json();
      expect(s.schema === "orchestrator.status.v1", `schema ${JSON.stringify(s.schema)}`);
      expect(s.cluster && s.cluster.total_streams === AUTH_STREAMS, `cluster ${JSON.stringify(s.cluster)}`);
      return `401 (WWW-Authenticate: ${challenge}), 403, 200 (total_streams ${s.cluster.total_streams})`;
    });

    await check("auth: after a reload the page loads again without asking (token kept in sessionStorage)", async () => {
      const stored = await authPage.evaluate(() => Object.keys(sessionStorage).map((k) => sessionStorage.getItem(k)));
      expect(stored.includes(ADMIN_TOKEN), "the admin token is not in sessionStorage");
      const n = statusAnswers.length;
      const resp = await authPage.reload({ timeout: T(20_000) });
      expect(resp && resp.status() === 200, `reload answered ${resp && resp.status()}`);
      await authPage.waitForSelector("body[data-loaded=true]", { timeout: T(20_000) });
      await authPage.waitForFunction(
        (want) => document.querySelector('[data-testid="total-streams"]').textContent.trim() === want,
        String(AUTH_STREAMS),
        { timeout: T(15_000) },
      );
      // The form is shown only on a 401/403 answer: none since the reload means it never was.
      const since = answersSince(n);
      expect(since.length > 0 && since.every((s) => s === 200), `api/v1/status answers since the reload: ${since.join(",")}`);
      expect(await authPage.isHidden('[data-testid="token-form"]'), "the token form is shown after the reload");
      const url = authPage.url();
      expect(!hasToken(url), `the token is in the page URL: ${url}`);
      expect(!requestUrls.some(hasToken), "a token is in a request URL");
      return `answers since the reload: ${since.join(",")}`;
    });

    await check("auth: no script errors in the page, no token in the orchestrator's log", async () => {
      expect(authPageErrors.length === 0, `uncaught errors: ${authPageErrors.join(" | ")}`);
      expect(authConsoleErrors.length === 0, `console errors: ${authConsoleErrors.join(" | ")}`);
      expect(!authOrch.tail.some(hasToken), "a token appears in the orchestrator's output");
    });
  } finally {
    if (failed) {
      if (authPage) {
        mkdirSync(TARGET, { recursive: true });
        await authPage
          .screenshot({ path: path.join(TARGET, "dashboard-auth-failure.png"), fullPage: true, timeout: 5000 })
          .then(() => console.log("screenshot of the failure: target/dashboard-auth-failure.png"))
          .catch(() => {});
      }
      if (authOrch && authOrch.tail.length) {
        const n = 60;
        console.log(`\n--- orchestrator (auth) output (last ${Math.min(n, authOrch.tail.length)} lines; ${authOrch.exited ? `exit ${JSON.stringify(authOrch.exited)}` : "still running"}) ---\n${authOrch.tail.slice(-n).join("\n")}`);
      }
      if (authPageErrors.length || authConsoleErrors.length) console.log(`\n--- page errors (auth) ---\n${[...authPageErrors, ...authConsoleErrors].join("\n")}`);
    }
    if (authContext) await Promise.race([authContext.close().catch(() => {}), sleep(5000)]);
    if (authBrowser) await Promise.race([authBrowser.close().catch(() => {}), sleep(5000)]);
    authBrowser = null;
    await Promise.all(children.map((c) => c.stop()));
    rmSync(authDir, { recursive: true, force: true });
    authDir = null;
  }

  const passed = results.filter((r) => r.status === "passed").length;
  const nFailed = results.filter((r) => r.status === "failed").length;
  const skipped = results.filter((r) => r.status === "skipped").length;
  console.log(`\n${passed} passed, ${nFailed} failed${skipped ? `, ${skipped} skipped` : ""}`);
  return nFailed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(e);
    for (const c of children) c.kill("SIGKILL");
    process.exit(1);
  },
);
