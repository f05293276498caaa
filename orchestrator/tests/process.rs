//! The real `orchestrator` binary as a process: restart after SIGKILL with
//! zero moves, bad database files, and the admin CLI against a live server.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fixtures::OrchestratorProcess;
use orchestrator_proto::v1;
use orchestrator_proto::v1::admin_service_client::AdminServiceClient;
use orchestrator_proto::v1::worker_service_client::WorkerServiceClient;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");

/// Starts `orchestrator serve` on a free port with `extra` flags.
fn start(db: &Path, extra: &[&str]) -> OrchestratorProcess {
    OrchestratorProcess::start_binary(Path::new(BIN), db, extra)
}

async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

fn rid() -> String {
    format!("p-{:016x}", fastrand::u64(..))
}

async fn assignments(admin: &mut AdminServiceClient<Channel>) -> Vec<(String, i64, u64)> {
    let r = admin
        .list_assignments(v1::ListAssignmentsRequest {
            server_id: String::new(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    r.assignments
        .into_iter()
        .map(|a| {
            let l = a.lease.unwrap();
            (a.server_id, l.stream_id, l.lease_epoch)
        })
        .collect()
}

/// Registers, then heartbeats (acknowledging, releasing) until it holds `want`.
async fn settle(w: &mut WorkerServiceClient<Channel>, session: &v1::SessionRef, want: usize) -> Vec<v1::Lease> {
    let mut held: Vec<v1::Lease> = Vec::new();
    let mut ack = Vec::new();
    let deadline = std::time::Instant::now() + fixtures::patient(Duration::from_secs(5));
    while std::time::Instant::now() < deadline {
        let r = w
            .heartbeat(v1::HeartbeatRequest {
                session: Some(session.clone()),
                processing_count: held.len() as u32,
                acknowledged: std::mem::take(&mut ack),
            })
            .await
            .unwrap()
            .into_inner();
        held.extend(r.assign.iter().copied());
        ack = r.assign;
        let revoked: Vec<v1::Lease> = r.revoke.iter().filter_map(|d| d.lease).collect();
        if !revoked.is_empty() {
            w.release_streams(v1::ReleaseStreamsRequest {
                session: Some(session.clone()),
                leases: revoked.clone(),
                request_id: rid(),
            })
            .await
            .unwrap();
            held.retain(|l| !revoked.contains(l));
        }
        if held.len() == want && ack.is_empty() {
            return held;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("did not settle at {want} streams: {held:?}");
}

#[tokio::test]
async fn a_sigkilled_orchestrator_restarts_with_zero_moves() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orchestrator.db");
    let flags =
        ["--heartbeat-interval", "200ms", "--session-timeout", "3s", "--grace", "20s", "--drain-timeout", "500ms"];
    let p1 = start(&db, &flags);
    let mut admin = AdminServiceClient::new(channel(p1.addr).await);
    let streams = (1..=6).map(|stream_id| v1::StreamSpec { stream_id, name: String::new(), source_url: String::new() });
    admin.add_streams(v1::AddStreamsRequest { streams: streams.collect(), request_id: rid() }).await.unwrap();
    let mut w = WorkerServiceClient::new(channel(p1.addr).await);
    let mut held = Vec::new();
    for id in ["a", "b"] {
        let r = w
            .register(v1::RegisterRequest {
                server_id: id.into(),
                max_streams: 3,
                request_id: rid(),
                held_leases: vec![],
                client_version: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let session = r.session.unwrap();
        held.push((id, session.clone(), settle(&mut w, &session, 3).await));
    }
    let before = assignments(&mut admin).await;
    assert_eq!(before.len(), 6);

    p1.kill(); // SIGKILL

    let mut p2 = start(&db, &flags);
    let mut admin = AdminServiceClient::new(channel(p2.addr).await);
    let status = admin.get_cluster_status(v1::GetClusterStatusRequest {}).await.unwrap().into_inner();
    assert!(status.in_grace_period, "{status:?}");
    let mut w = WorkerServiceClient::new(channel(p2.addr).await);
    for (id, old, leases) in &held {
        let err = w
            .heartbeat(v1::HeartbeatRequest { session: Some(old.clone()), processing_count: 3, acknowledged: vec![] })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "sessions do not survive a restart");
        let r = w
            .register(v1::RegisterRequest {
                server_id: (*id).into(),
                max_streams: 3,
                request_id: rid(),
                held_leases: leases.clone(),
                client_version: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.session.unwrap().worker_epoch > old.worker_epoch);
        assert!(
            r.held_lease_decisions.iter().all(|d| d.kind == v1::LeaseDecisionKind::Keep as i32),
            "{id}: {:?}",
            r.held_lease_decisions
        );
    }
    let after = assignments(&mut admin).await;
    assert_eq!(after, before, "zero streams moved, epochs unchanged");
    let status = admin.get_cluster_status(v1::GetClusterStatusRequest {}).await.unwrap().into_inner();
    assert!(!status.in_grace_period, "grace ends once every known worker is back");

    // SIGTERM: graceful shutdown, exit 0.
    let pid = p2.process.child().id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let code = p2.process.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    let logged = p2.process.wait_log(Duration::from_secs(5), |l| l.contains("stopped cleanly"));
    assert!(logged.is_ok(), "{logged:?}");
}

/// Runs the binary to completion; returns (exit code, stdout, stderr).
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN).args(args).env("RUST_LOG", "warn").output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_corrupt_database_is_refused_with_a_clear_error_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orchestrator.db");
    let garbage = b"definitely not SQLite ".repeat(200);
    std::fs::write(&db, &garbage).unwrap();
    let (code, _, stderr) =
        run(&["serve", "--listen", "127.0.0.1:0", "--http-listen", "off", "--database", db.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is unusable") && stderr.contains("orchestrator.db"), "{stderr}");
    assert!(stderr.contains("not modified"), "{stderr}");
    assert_eq!(std::fs::read(&db).unwrap(), garbage, "the file is left as it was");
}

#[test]
fn an_unusable_database_path_is_named() {
    let (code, _, stderr) =
        run(&["serve", "--listen", "127.0.0.1:0", "--http-listen", "off", "--database", "/nonexistent-dir/o.db"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("/nonexistent-dir does not exist"), "{stderr}");
}

#[test]
fn bad_flags_are_refused_before_anything_starts() {
    let (code, _, stderr) = run(&["serve", "--session-timeout", "1s", "--heartbeat-interval", "5s"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--session-timeout"), "{stderr}");
    let (code, _, stderr) = run(&["serve", "--heartbeat-interval", "soon"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--heartbeat-interval"), "{stderr}");
}

#[tokio::test]
async fn the_admin_cli_talks_to_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = start(&dir.path().join("o.db"), &["--demo-streams", "5"]);
    let addr = format!("http://{}", p.addr);
    let (code, out, err) = run(&["--addr", &addr, "streams", "add", "6-8"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("added 3 stream(s)"), "{out}");
    let (code, out, _) = run(&["--addr", &addr, "--json", "status"]);
    assert_eq!(code, Some(0));
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["total_streams"], 8);
    let (code, out, _) = run(&["--addr", &addr, "streams", "list"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("demo-1") && out.lines().count() >= 9, "{out}");
    let (code, out, _) = run(&["--addr", &addr, "rebalancing", "pause", "--reason", "test"]);
    assert_eq!((code, out.trim()), (Some(0), "rebalancing paused"));
    let logged = p.process.wait_log(Duration::from_secs(5), |l| l.contains("rebalancing paused:"));
    assert!(logged.as_ref().is_ok_and(|l| l.contains("reason=test")), "{logged:?}");
    let (code, _, err) = run(&["--addr", &addr, "drain", "nobody"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("NotFound"), "{err}");
    // `--json` failures are JSON on stdout, with the address and the code.
    let (code, out, _) = run(&["--addr", &addr, "--json", "drain", "nobody"]);
    assert_eq!(code, Some(1));
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!((doc["code"].as_str(), doc["address"].as_str()), (Some("NOT_FOUND"), Some(addr.as_str())), "{doc}");
    p.process.kill();
    let (code, _, err) = run(&["--addr", &addr, "status"]);
    assert_eq!(code, Some(1));
    assert!(err.contains(&format!("cannot reach the orchestrator at {addr}")), "{err}");
    let (code, out, _) = run(&["--addr", &addr, "--json", "status"]);
    assert_eq!(code, Some(1));
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(doc["error"].as_str().is_some_and(|e| e.contains("cannot reach")), "{doc}");
    assert_eq!(doc["address"].as_str(), Some(addr.as_str()), "{doc}");
    // Usage errors keep exit code 2, as clap's own.
    let (code, out, _) = run(&["--addr", "nonsense", "--json", "status"]);
    assert_eq!(code, Some(2));
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(doc["error"].as_str().is_some_and(|e| e.contains("invalid --addr")), "{doc}");
    assert!(doc.get("address").is_none(), "no connection was tried: {doc}");
    let (code, out, _) = run(&["--json", "streams", "add", "0"]);
    assert_eq!(code, Some(2));
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(doc["error"].as_str().is_some_and(|e| e.contains("stream ids start at 1")), "{doc}");
    let (code, out, err) = run(&["--json", "workers", "--no-such-flag"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok(), "clap's errors are JSON too: {out}");
}

#[test]
fn demo_streams_on_a_full_catalog_are_ignored_out_loud() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("o.db");
    drop(start(&db, &["--demo-streams", "3"]));
    let p = start(&db, &["--demo-streams", "10"]);
    let startup = &p.process.startup;
    let line = startup.iter().find(|l| l.contains("--demo-streams ignored"));
    assert!(line.is_some_and(|l| l.contains("already has 3 stream(s)")), "{startup:?}");
}
