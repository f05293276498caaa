//! The example worker as a real process, SIGKILLed in the middle of
//! recording and restarted from its state file: no acknowledged record is
//! lost or duplicated on its way to the orchestrator.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use orchestrator::engine::EngineConfig;
use orchestrator::server::{OrchestratorServer, ServerConfig};
use orchestrator_proto::v1;

/// The example binary, built by `cargo test` next to the test binaries.
fn worker_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = dir.join("examples").join("worker");
    assert!(
        bin.exists(),
        "the example worker is not built at {}: run `cargo build -p worker-client --example worker` first (`cargo test --workspace` builds it)",
        bin.display()
    );
    bin
}

struct Worker {
    child: Child,
    acks: mpsc::Receiver<u64>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(clippy::zombie_processes)] // waited for by `Worker`'s `Drop`
fn start_worker(url: &str, state: &std::path::Path) -> Worker {
    let mut child = Command::new(worker_binary())
        .args(["--server-id", "w1", "--orchestrator-url", url, "--chunk-interval", "2ms", "--print-acks", "--state"])
        .arg(state)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, acks) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(seq) = line.strip_prefix("ack ").and_then(|s| s.parse().ok())
                && tx.send(seq).is_err()
            {
                break;
            }
        }
    });
    Worker { child, acks }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_worker_loses_and_duplicates_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("o.db");
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: db.clone(),
        engine: EngineConfig {
            heartbeat_interval: 100,
            session_timeout: 2_000,
            grace_period: 2_000,
            ..EngineConfig::default()
        },
        drain_timeout: Duration::from_millis(100),
        ..ServerConfig::default()
    };
    let server = OrchestratorServer::bind(config).await.unwrap();
    let url = format!("http://{}", server.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    let mut admin = v1::admin_service_client::AdminServiceClient::connect(url.clone()).await.unwrap();
    let streams = (1..=3).map(|stream_id| v1::StreamSpec { stream_id, name: String::new(), source_url: String::new() });
    admin.add_streams(v1::AddStreamsRequest { streams: streams.collect(), request_id: "add".into() }).await.unwrap();

    let state = dir.path().join("w1.db");
    let mut acked = Vec::new();
    {
        let worker = start_worker(&url, &state);
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.len() < 200 {
            let left = deadline.saturating_duration_since(Instant::now());
            acked.push(worker.acks.recv_timeout(left).expect("the worker did not record in time"));
        }
        // SIGKILL mid-run (Drop kills it); keep what it printed before dying.
        drop(worker);
    }

    // Restarted from its state file, it re-registers and uploads what it
    // had not synced yet.
    let worker = start_worker(&url, &state);
    let expected: std::collections::BTreeSet<u64> = acked.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let store = orchestrator::store::SqliteStore::open(&db).unwrap();
        let stored: Vec<u64> = store.records_of("w1").unwrap().iter().map(|r| r.0).collect();
        if expected.iter().all(|s| stored.binary_search(s).is_ok()) {
            break stored;
        }
        assert!(Instant::now() < deadline, "acknowledged records missing: {} of {}", expected.len(), stored.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let unique: std::collections::BTreeSet<u64> = stored.iter().copied().collect();
    assert_eq!(unique.len(), stored.len(), "no record stored twice");
    assert!(stored.windows(2).all(|w| w[0] < w[1]));
    drop(worker);
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
}
