//! Fixtures for the end-to-end tests: the orchestrator in-process and as a
//! real process, workers (in-process clients that simulate processing, or
//! the example worker binary), a fault-injecting TCP proxy, an invariant
//! checker that reads the admin API and every worker's lease set, a
//! timeline printed when a test fails, and [`eventually!`].
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

pub mod proxy;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orchestrator::engine::EngineConfig;
use orchestrator::server::{OrchestratorServer, ServerConfig};
use orchestrator_proto::v1;
use orchestrator_proto::v1::admin_service_client::AdminServiceClient;
use tonic::transport::Channel;
use worker_client::{ClientBuilder, LeaseSet, ResilientWorkerClient};

pub use proxy::{FaultProxy, Mode};

/// Orchestrator timings for tests: heartbeat 100 ms, session timeout 1 s.
pub const HEARTBEAT: Duration = Duration::from_millis(100);
/// See [`HEARTBEAT`].
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(1);

/// Polls `$check` every 10 ms until it holds or `$limit` passes.
#[macro_export]
macro_rules! eventually {
    ($limit:expr, $check:expr) => {{
        let deadline = std::time::Instant::now() + $limit;
        loop {
            if $check {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "not in time ({:?}): {}", $limit, stringify!($check));
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }};
}

/// What happened, with times, printed if the test fails.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    start: Option<Instant>,
    events: Arc<Mutex<Vec<(Duration, String)>>>,
}

impl Timeline {
    /// A timeline starting now.
    pub fn new() -> Self {
        Self { start: Some(Instant::now()), events: Arc::default() }
    }

    /// Notes an event.
    pub fn note(&self, event: impl Into<String>) {
        let at = self.start.map(|s| s.elapsed()).unwrap_or_default();
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push((at, event.into()));
    }

    /// The events so far, one per line.
    pub fn render(&self) -> String {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.iter().map(|(at, e)| format!("{:>8.3}s  {e}", at.as_secs_f64())).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Timeline {
    fn drop(&mut self) {
        if std::thread::panicking() && Arc::strong_count(&self.events) == 1 {
            eprintln!("---- timeline ----\n{}\n------------------", self.render());
        }
    }
}

/// The engine configuration the tests use.
pub fn engine_config() -> EngineConfig {
    EngineConfig {
        heartbeat_interval: HEARTBEAT.as_millis() as u64,
        session_timeout: SESSION_TIMEOUT.as_millis() as u64,
        grace_period: 3_000,
        ..EngineConfig::default()
    }
}

/// An orchestrator served in-process on 127.0.0.1 (port 0 the first time,
/// the same address on restart), with its database in a temp dir.
#[derive(Debug)]
pub struct InProcess {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its database.
    pub db: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl InProcess {
    /// Starts on `listen` (use port 0 for a fresh one).
    pub async fn start(db: &Path, listen: SocketAddr) -> Self {
        let config = ServerConfig {
            listen,
            database: db.to_path_buf(),
            engine: engine_config(),
            drain_timeout: Duration::from_millis(100),
            ..ServerConfig::default()
        };
        let server = OrchestratorServer::bind(config).await.expect("orchestrator binds");
        let addr = server.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            server
                .serve(async {
                    let _ = stopped.await;
                })
                .await
                .expect("orchestrator serves");
        });
        Self { addr, db: db.to_path_buf(), stop: Some(stop), done: Some(done) }
    }

    /// Stops it gracefully.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}

/// The workspace's target directory (where `cargo test --workspace` built
/// the binaries and examples).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

/// The real orchestrator binary as a child process.
#[derive(Debug)]
pub struct OrchestratorProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl OrchestratorProcess {
    /// Starts `orchestrator serve` on a free port with the test timings.
    ///
    /// # Panics
    ///
    /// If the binary is missing or does not report its address in time.
    #[allow(clippy::zombie_processes)] // waited for in Drop
    pub fn start(db: &Path) -> Self {
        let bin = target_dir().join("orchestrator");
        assert!(
            bin.exists(),
            "{} missing: run `cargo build -p orchestrator` (cargo test --workspace does)",
            bin.display()
        );
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--heartbeat-interval", "100ms", "--session-timeout", "1s"])
            .args(["--grace", "5s", "--drain-timeout", "100ms", "--database"])
            .arg(db)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start orchestrator");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let line =
                rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("orchestrator address");
            if line.contains("orchestrator serving")
                && let Some(addr) = line.split_whitespace().find_map(|w| w.strip_prefix("addr="))
            {
                return Self { child, addr: addr.parse().expect("address") };
            }
        }
    }

    /// SIGKILL.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OrchestratorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An admin client.
pub async fn admin(addr: SocketAddr) -> AdminServiceClient<Channel> {
    AdminServiceClient::connect(format!("http://{addr}")).await.expect("admin connects")
}

/// Adds streams `ids`.
pub async fn add_streams(addr: SocketAddr, ids: impl IntoIterator<Item = i64>) {
    let streams =
        ids.into_iter().map(|stream_id| v1::StreamSpec { stream_id, name: String::new(), source_url: String::new() });
    admin(addr)
        .await
        .add_streams(v1::AddStreamsRequest {
            streams: streams.collect(),
            request_id: format!("e2e-{:x}", fastrand::u64(..)),
        })
        .await
        .expect("add streams");
}

/// A client builder with timings that fit the test orchestrator.
pub fn client_builder(url: &str, server_id: &str, state: &Path) -> ClientBuilder {
    ResilientWorkerClient::builder(url, server_id)
        .max_streams(100)
        .state_path(state)
        .circuit_failure_threshold(3)
        .circuit_recovery_timeout(Duration::from_millis(300))
        .circuit_success_threshold(1)
        .circuit_timeout(Duration::from_millis(500))
        .retry_max_attempts(2)
        .retry_base_delay(Duration::from_millis(20))
        .retry_max_delay(Duration::from_millis(100))
        .local_mode_after(Duration::from_millis(500))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(200))
}

/// An in-process worker: a client plus a task that "processes" each leased
/// stream every `chunk` by recording a processing record, keeping the
/// sequence numbers it was acknowledged.
#[derive(Debug)]
pub struct SimWorker {
    /// Its server id.
    pub id: String,
    /// The client.
    pub client: ResilientWorkerClient,
    /// Sequences acknowledged (durable locally).
    pub acked: Arc<Mutex<Vec<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SimWorker {
    /// Builds, starts, and processes.
    pub async fn start(builder: ClientBuilder, chunk: Duration) -> Self {
        let client = builder.build().await.expect("client builds");
        let id = client.config().server_id().to_owned();
        client.start().await.expect("client starts");
        let acked = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (client, acked) = (client.clone(), Arc::clone(&acked));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(chunk).await;
                    let set = client.leases().borrow().clone();
                    for (stream, _) in set.iter() {
                        if let Ok(seq) = client.record_stream_processing(stream).await {
                            acked.lock().unwrap_or_else(|p| p.into_inner()).push(seq);
                        }
                    }
                }
            })
        };
        Self { id, client, acked, task }
    }

    /// The lease set now.
    pub fn leases(&self) -> LeaseSet {
        self.client.leases().borrow().clone()
    }

    /// Stops processing and shuts the client down cleanly.
    pub async fn shutdown(self) {
        self.task.abort();
        self.client.shutdown().await;
    }

    /// Simulates a crash: processing stops, nothing is released.
    pub fn crash(self) {
        self.task.abort();
        drop(self.client);
    }
}

/// Checks DESIGN.md's invariants from the outside: the admin API and every
/// worker's published lease set.
#[derive(Debug, Default)]
pub struct Checker {
    epochs: BTreeMap<i64, u64>,
}

/// A worker's published lease set, by server id.
pub type Sets = BTreeMap<String, LeaseSet>;

impl Checker {
    /// One check. `sample` reads every worker's lease set; it is called
    /// twice, and an overlap counts only if both samples show it (so that
    /// the skew between reading two workers cannot fake one).
    ///
    /// Invariant 1 is checked on what the workers hold: no two workers hold
    /// the same stream at the same lease epoch (a current lease has exactly
    /// one holder). With `strict`, no two workers hold the same stream at
    /// all, whatever the epoch (the local-mode-limit guarantee). A worker
    /// partitioned without a limit keeps processing under its old epoch:
    /// that is the documented trade-off, visible to sinks by the epoch.
    ///
    /// # Panics
    ///
    /// On a violated invariant, naming it.
    pub async fn check(&mut self, addr: SocketAddr, sample: impl Fn() -> Sets, strict: bool) {
        let first = sample();
        let second = sample();
        let mut admin = admin(addr).await;
        let Ok(workers) = admin.list_workers(v1::ListWorkersRequest {}).await else { return };
        let workers = workers.into_inner().workers;
        // 1. Single owner.
        let holders = |sets: &Sets| {
            let mut by_key: BTreeMap<(i64, u64), BTreeSet<String>> = BTreeMap::new();
            for (id, set) in sets {
                for (stream, epoch) in set.iter() {
                    let key = if strict { (stream, 0) } else { (stream, epoch) };
                    by_key.entry(key).or_default().insert(id.clone());
                }
            }
            by_key
        };
        let (a, b) = (holders(&first), holders(&second));
        for (key, who) in &a {
            if who.len() > 1
                && let Some(again) = b.get(key)
            {
                let both: BTreeSet<&String> = who.intersection(again).collect();
                assert!(both.len() <= 1, "invariant 1: stream {} (epoch {}) held by {both:?} at once", key.0, key.1);
            }
        }
        // 3. Capacity.
        for w in &workers {
            assert!(
                w.assigned_streams <= w.max_streams,
                "invariant 3: {} holds {} > {}",
                w.server_id,
                w.assigned_streams,
                w.max_streams
            );
        }
        // 2. Epochs only grow.
        let Ok(assignments) = admin
            .list_assignments(v1::ListAssignmentsRequest {
                server_id: String::new(),
                page_size: 0,
                page_token: String::new(),
            })
            .await
        else {
            return;
        };
        for a in assignments.into_inner().assignments {
            let Some(l) = a.lease else { continue };
            let seen = self.epochs.entry(l.stream_id).or_insert(0);
            assert!(
                l.lease_epoch >= *seen,
                "invariant 2: epoch of stream {} went from {} to {}",
                l.stream_id,
                seen,
                l.lease_epoch
            );
            *seen = l.lease_epoch;
        }
    }
}

/// Every stream's current owner, from the admin API.
pub async fn owners(addr: SocketAddr) -> BTreeMap<i64, (String, u64)> {
    let r = admin(addr)
        .await
        .list_assignments(v1::ListAssignmentsRequest {
            server_id: String::new(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("list assignments")
        .into_inner();
    r.assignments.into_iter().filter_map(|a| a.lease.map(|l| (l.stream_id, (a.server_id, l.lease_epoch)))).collect()
}
