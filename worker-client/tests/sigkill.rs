//! The example worker as a real process, SIGKILLed in the middle of
//! recording and restarted from its state file: no acknowledged record is
//! lost or duplicated on its way to the orchestrator.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fixtures::InProcess;
use orchestrator::engine::EngineConfig;
use orchestrator::server::ServerConfig;

/// The example binary, built by `cargo test` next to the test binaries.
fn worker_binary() -> PathBuf {
    let bin = fixtures::target_dir().join("examples").join("worker");
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
    let mut o = InProcess::start_with(ServerConfig {
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
    })
    .await;
    let url = o.url();
    fixtures::add_streams(o.addr, 1..=3).await;

    let state = dir.path().join("w1.db");
    let deadline = Instant::now() + fixtures::patient(Duration::from_secs(30));
    let mut before_kill = BTreeSet::new();
    {
        let mut worker = start_worker(&url, &state);
        while before_kill.len() < 200 {
            let left = deadline.saturating_duration_since(Instant::now());
            let seq = worker.acks.recv_timeout(left).expect("the worker did not record in time");
            assert!(before_kill.insert(seq), "sequence {seq} acknowledged twice");
        }
        // SIGKILL mid-run; keep everything it printed before dying.
        worker.child.kill().unwrap();
        worker.child.wait().unwrap();
        for seq in worker.acks.iter() {
            assert!(before_kill.insert(seq), "sequence {seq} acknowledged twice");
        }
    }

    // Restarted from its state file, it re-registers and uploads what it
    // had not synced yet; it goes on recording. Stop it cleanly (SIGTERM)
    // after a while and collect every record it acknowledged.
    let mut worker = start_worker(&url, &state);
    let mut after_restart = BTreeSet::new();
    while after_restart.len() < 100 {
        let left = deadline.saturating_duration_since(Instant::now());
        let seq = worker.acks.recv_timeout(left).expect("the restarted worker did not record in time");
        assert!(after_restart.insert(seq), "sequence {seq} acknowledged twice");
    }
    let pid = worker.child.id().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = worker.child.wait().unwrap();
    assert!(status.success(), "the worker stops cleanly on SIGTERM: {status:?}");
    // Everything it printed before exiting (the reader ends at end of file).
    for seq in worker.acks.iter() {
        assert!(after_restart.insert(seq), "sequence {seq} acknowledged twice");
    }

    // What the orchestrator stored is what the worker produced: every
    // acknowledged record, and nothing else but the records made durable
    // in the instant before the SIGKILL and not printed yet: at most one
    // per stream (3), all before the restarted run's first sequence.
    let produced: BTreeSet<u64> = before_kill.union(&after_restart).copied().collect();
    let stored: BTreeSet<u64> = o.records("w1").iter().map(|r| r.0).collect();
    let missing: Vec<&u64> = produced.difference(&stored).collect();
    assert!(missing.is_empty(), "acknowledged records missing: {missing:?}");
    let first_after = after_restart.first().copied().unwrap();
    let unknown: Vec<&u64> = stored.difference(&produced).collect();
    assert!(
        unknown.len() <= 3 && unknown.iter().all(|&&s| s < first_after),
        "records stored that the worker never made: {unknown:?}"
    );
    o.stop().await;
}
