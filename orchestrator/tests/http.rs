//! The HTTP listener (`serve --http-listen`): `/metrics` with real values
//! from a real fleet, `/api/v1/status` against the admin API, `/healthz`,
//! `/readyz`, the dashboard page, authentication of `/api/*`, metrics
//! switched off, and the binary's flags (`--http-listen`, `--log-format
//! json`, `status --watch`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fixtures::http::{get, sample};
use fixtures::{InProcess, client_builder, engine_config, eventually};
use orchestrator::server::{HttpListen, Security, ServerConfig};
use orchestrator_proto::v1;

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");
const ADMIN: &str = "admin-token-0123456789abcdef";
const W1: &str = "worker-token-w1-0123456789";

fn config(dir: &Path) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: dir.join("o.db"),
        engine: engine_config(),
        drain_timeout: Duration::from_millis(100),
        http: Some(HttpListen { addr: "127.0.0.1:0".parse().unwrap(), if_free: false }),
        ..ServerConfig::default()
    }
}

async fn metrics(http: SocketAddr) -> String {
    let answer = get(http, "/metrics", &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    answer.body
}

#[tokio::test]
async fn metrics_status_and_the_dashboard_show_the_live_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = InProcess::start_with(config(dir.path())).await;
    let http = server.http.expect("an HTTP listener");
    fixtures::add_streams(server.addr, 1..=30).await;
    let mut workers = Vec::new();
    for id in ["w1", "w2"] {
        let w = client_builder(&server.url(), id, &dir.path().join(format!("{id}.db")))
            .max_streams(20)
            .build()
            .await
            .unwrap();
        w.start().await.unwrap();
        workers.push(w);
    }
    // Settled: 15 each (balance moves some of the first worker's), nothing
    // being revoked, so the views compared below cannot race a move.
    eventually!(Duration::from_secs(10), workers.iter().all(|w| w.leases().borrow().len() == 15));
    eventually!(Duration::from_secs(10), {
        let text = metrics(http).await;
        sample(&text, "orchestrator_leases{state=\"revoking\"}") == Some(0.0)
            && sample(&text, "orchestrator_leases{state=\"active\"}") == Some(30.0)
    });

    // The admin API's view, and the status API's: the same figures.
    let mut admin = fixtures::admin(server.addr).await;
    let cluster = admin.get_cluster_status(v1::GetClusterStatusRequest {}).await.unwrap().into_inner();
    let listed = admin.list_workers(v1::ListWorkersRequest::default()).await.unwrap().into_inner().workers;
    let status = get(http, "/api/v1/status", &[]).await;
    assert_eq!(status.status, 200, "{}", status.body);
    assert_eq!(status.header("cache-control"), Some("no-store"));
    let doc = status.json();
    assert_eq!(doc["schema"], "orchestrator.status.v1");
    assert_eq!(doc["role"], "standalone");
    assert_eq!(doc["ready"], true);
    let c = &doc["cluster"];
    assert_eq!(c["live_workers"], cluster.live_workers);
    assert_eq!(c["total_streams"], cluster.total_streams);
    assert_eq!(c["assigned_streams"], cluster.assigned_streams);
    assert_eq!(c["unassigned_streams"], cluster.unassigned_streams);
    assert_eq!(c["total_capacity"], cluster.total_capacity);
    assert_eq!(doc["workers_total"], 2);
    assert_eq!(doc["workers_truncated"], false);
    let shown: Vec<(String, u64)> = doc["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["server_id"].as_str().unwrap().to_owned(), w["assigned_streams"].as_u64().unwrap()))
        .collect();
    let expected: Vec<(String, u64)> =
        listed.iter().map(|w| (w.server_id.clone(), u64::from(w.assigned_streams))).collect();
    assert_eq!(shown, expected);
    assert_eq!(doc["workers"][0]["state"], "live");
    assert_eq!(doc["workers"][0]["max_streams"], 20);
    assert!(doc["workers"][0]["client_version"].as_str().unwrap().starts_with("worker-client/"));
    let events = doc["events"].as_array().unwrap();
    assert!(!events.is_empty() && events.len() <= 50);
    assert!(events.iter().any(|e| e["event"] == "lease_granted"), "{events:?}");
    assert!(events.windows(2).all(|p| p[0]["id"].as_i64() > p[1]["id"].as_i64()), "newest first");
    // Only the first worker, when asked; bad parameters are named.
    let one = get(http, "/api/v1/status?workers=1", &[]).await.json();
    assert_eq!((one["workers"].as_array().unwrap().len(), &one["workers_truncated"]), (1, &serde_json::json!(true)));
    let bad = get(http, "/api/v1/status?workers=0", &[]).await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].as_str().unwrap().starts_with("workers:"), "{}", bad.body);

    // Real values on /metrics.
    let text = metrics(http).await;
    let value = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"));
    assert_eq!(value("orchestrator_sessions{state=\"live\"}"), 2.0);
    assert_eq!(value("orchestrator_leases{state=\"active\"}"), 30.0);
    assert_eq!(value("orchestrator_streams_unassigned"), 0.0);
    assert_eq!(value("orchestrator_brake_engaged"), 0.0);
    assert_eq!(value("orchestrator_grace_active"), 0.0);
    assert_eq!(value("orchestrator_leader"), 1.0);
    // At least one grant per stream (balancing may move some).
    assert!(value("orchestrator_lease_grants_total") >= 30.0);
    assert!(value("orchestrator_rpc_requests_total{method=\"WorkerService/Register\",code=\"OK\"}") >= 2.0);
    assert!(value("orchestrator_rpc_requests_total{method=\"WorkerService/Heartbeat\",code=\"OK\"}") >= 2.0);
    assert!(value("orchestrator_rpc_duration_seconds_count{method=\"WorkerService/Heartbeat\"}") >= 2.0);
    assert!(value("orchestrator_store_commit_duration_seconds_count") >= 1.0);
    assert!(value("orchestrator_store_batch_size_count") >= 1.0);
    assert_eq!(value("orchestrator_requests_shed_total"), 0.0);
    assert_eq!(value(&format!("orchestrator_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))), 1.0);

    // A refused call counts under its code.
    let refused = admin
        .drain_worker(v1::DrainWorkerRequest { server_id: "nobody".into(), request_id: "drain-nobody".into() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound);
    eventually!(
        Duration::from_secs(5),
        sample(
            &metrics(http).await,
            "orchestrator_rpc_requests_total{method=\"AdminService/DrainWorker\",code=\"NOT_FOUND\"}"
        ) == Some(1.0)
    );

    // A drain: moves by reason, revoking streams listed with their reason.
    admin.drain_worker(v1::DrainWorkerRequest { server_id: "w1".into(), request_id: "drain-w1".into() }).await.unwrap();
    eventually!(Duration::from_secs(10), {
        let text = metrics(http).await;
        sample(&text, "orchestrator_moves_total{reason=\"drain\"}").unwrap_or(0.0) >= 1.0
    });
    let drained = get(http, "/api/v1/status", &[]).await.json();
    assert!(
        drained["events"].as_array().unwrap().iter().any(|e| e["event"] == "lease_revoking" && e["detail"] == "drain"),
        "{}",
        drained["events"]
    );

    // A worker gone: an expiry counted, its streams unassigned or moved.
    drop(workers.remove(1));
    eventually!(
        Duration::from_secs(10),
        sample(&metrics(http).await, "orchestrator_session_expiries_total") == Some(1.0)
    );
    let after = get(http, "/api/v1/status", &[]).await.json();
    let w2 = after["workers"].as_array().unwrap().iter().find(|w| w["server_id"] == "w2").unwrap().clone();
    assert_eq!(w2["state"], "expired");
    assert!(
        after["events"].as_array().unwrap().iter().any(|e| e["event"] == "worker_expired" && e["server_id"] == "w2")
    );

    // The page, the probes, an unknown path.
    let page = get(http, "/", &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'sha256-"), "{csp}");
    assert!(page.body.contains("api/v1/status") && !page.body.contains("https://"), "self-contained");
    assert_eq!(get(http, "/healthz", &[]).await.status, 200);
    assert_eq!(get(http, "/readyz", &[]).await.body, "ready\n");
    let missing = get(http, "/nope", &[]).await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("/metrics"), "{}", missing.body);

    server.stop().await;
    assert!(std::net::TcpStream::connect(http).is_err(), "the HTTP listener stops with the server");
}

#[tokio::test]
async fn with_an_auth_file_the_api_needs_an_admin_token_and_the_probes_stay_open() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth");
    std::fs::write(&file, format!("admin ops {ADMIN}\nworker w1 {W1}\n")).unwrap();
    let server = InProcess::start_with(ServerConfig {
        security: Security { auth_file: Some(file), ..Security::default() },
        ..config(dir.path())
    })
    .await;
    let http = server.http.unwrap();
    let none = get(http, "/api/v1/status", &[]).await;
    assert_eq!(none.status, 401, "{}", none.body);
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    assert!(none.json()["error"].as_str().unwrap().contains("Bearer"));
    let wrong = get(http, "/api/v1/status", &[("Authorization", "Bearer not-a-token-at-all-xx")]).await;
    assert_eq!(wrong.status, 401);
    let worker = get(http, "/api/v1/status", &[("Authorization", &format!("Bearer {W1}"))]).await;
    assert_eq!(worker.status, 403, "{}", worker.body);
    assert!(worker.json()["error"].as_str().unwrap().contains("admin token"));
    let admin = get(http, "/api/v1/status", &[("Authorization", &format!("bearer {ADMIN}"))]).await;
    assert_eq!(admin.status, 200, "{}", admin.body);
    assert_eq!(admin.json()["role"], "standalone");
    for open in ["/metrics", "/healthz", "/readyz", "/"] {
        assert_eq!(get(http, open, &[]).await.status, 200, "{open} stays open");
    }
    // No token in anything the listener answers.
    assert!(!metrics(http).await.contains(ADMIN));
}

#[tokio::test]
async fn with_metrics_off_nothing_is_collected_and_the_rest_still_serves() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcess::start_with(ServerConfig { metrics: false, ..config(dir.path()) }).await;
    let http = server.http.unwrap();
    let off = get(http, "/metrics", &[]).await;
    assert_eq!(off.status, 404);
    assert!(off.body.contains("--metrics=false"));
    fixtures::add_streams(server.addr, 1..=3).await;
    let doc = get(http, "/api/v1/status", &[]).await.json();
    assert_eq!(doc["cluster"]["total_streams"], 3);
    assert_eq!(get(http, "/readyz", &[]).await.status, 200);
    // Without authentication, on loopback: only a Host naming this machine
    // reads the API (DNS rebinding).
    let rebound = get(http, "/api/v1/status", &[("Host", "evil.example:50052")]).await;
    assert_eq!(rebound.status, 403, "{}", rebound.body);
    assert!(rebound.body.contains("DNS rebinding"));
    assert_eq!(get(http, "/api/v1/status", &[("Host", "localhost")]).await.status, 200);
}

#[test]
fn the_binary_checks_its_http_flags_and_logs_json() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("o.db");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--database"])
            .arg(&db)
            .args(args)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = run(&["--http-listen", "0.0.0.0:0"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--insecure") && stderr.contains("--http-listen 0.0.0.0:0"), "{stderr}");
    let (code, stderr) = run(&["--http-listen", "somewhere"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--http-listen \"somewhere\": not an address"), "{stderr}");
    assert!(!db.exists(), "refused before anything was created");

    // An explicit address that is taken is an error naming the flag.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = run(&["--http-listen", &addr]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("cannot listen for HTTP on {addr} (--http-listen)")), "{stderr}");
}

#[tokio::test]
async fn json_logs_the_http_listener_and_status_watch_from_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(BIN);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--log-format", "json"])
        // A build without the otel feature ignores an endpoint (often set for
        // a whole environment), with a warning.
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
        .arg("--database")
        .arg(dir.path().join("o.db"))
        .env("RUST_LOG", "info");
    let field = |line: &str, message: &str| {
        let doc: serde_json::Value = serde_json::from_str(line).ok()?;
        doc["message"].as_str()?.starts_with(message).then(|| doc["addr"].as_str()?.parse::<SocketAddr>().ok())?
    };
    let (mut process, grpc) = fixtures::LoggedProcess::spawn(command, |line| field(line, "orchestrator serving"));
    // Every start-up line is one JSON object with a level and a message.
    for line in &process.startup {
        let doc: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(doc["level"].is_string() && doc["message"].is_string(), "{line}");
    }
    let http = process.startup.iter().find_map(|l| field(l, "HTTP listening")).expect("the HTTP address in the log");
    if !cfg!(feature = "otel") {
        assert!(
            process.startup.iter().any(|l| l.contains("WARN")
                && l.contains("http://127.0.0.1:9 ignored")
                && l.contains("--features otel")),
            "{:#?}",
            process.startup
        );
    }
    assert_eq!(get(http, "/healthz", &[]).await.status, 200);

    // `status --watch` appends a reading per interval when not on a terminal.
    let mut watch = std::process::Command::new(BIN)
        .args(["--addr", &format!("http://{grpc}"), "--json", "status", "--watch", "100ms"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(fixtures::patient(Duration::from_millis(800))).await;
    let _ = watch.kill();
    let out = watch.wait_with_output().unwrap();
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() >= 2, "{lines:?}");
    assert!(lines.iter().all(|d| d["total_streams"] == 0 && d["live_workers"] == 0), "{lines:?}");
    process.kill();
}
