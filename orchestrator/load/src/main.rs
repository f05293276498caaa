//! `orchestrator-load`: simulates many workers against an orchestrator and
//! reports throughput and latency percentiles (HDR histograms).
//!
//! ```sh
//! orchestrator-load heartbeat --target http://127.0.0.1:50051 --workers 1000
//! orchestrator-load compare            # orchestrator vs a bare tonic echo server, same payload
//! orchestrator-load compare --security # plaintext vs TLS vs tokens vs TLS + tokens
//! orchestrator-load compare --postgres postgres://user@host/db   # SQLite vs PostgreSQL
//! orchestrator-load compare --metrics   # metrics collected vs --metrics=false, alternating
//! orchestrator-load scale --workers 10000 --streams 500000
//! orchestrator-load storm --workers 1000
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool that reports

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use orchestrator::engine::EngineConfig;
use orchestrator::server::{OrchestratorServer, Security, ServerConfig, TlsFiles};
use orchestrator_proto::v1;
use orchestrator_proto::v1::admin_service_client::AdminServiceClient;
use orchestrator_proto::v1::worker_service_client::WorkerServiceClient;
use orchestrator_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Load generator for the stream orchestrator.
#[derive(Debug, Parser)]
#[command(name = "orchestrator-load", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register N workers on a running orchestrator, then send heartbeats as
    /// fast as `--concurrency` in-flight calls allow, for `--duration`.
    Heartbeat(HeartbeatArgs),
    /// Side by side in one run: an in-process orchestrator and a bare tonic
    /// echo server answering heartbeats with the same payload; serial and
    /// concurrent; prints the ratios.
    Compare(CompareArgs),
    /// Scale: N workers heartbeating at their interval over S streams:
    /// time to balanced, heartbeat p99, memory per stream, time to re-place
    /// the streams of a share of workers that stop.
    Scale(ScaleArgs),
    /// Restart storm: N workers reconnect after an orchestrator restart,
    /// each pacing itself as the worker client's reconnect probe does (wait
    /// a backoff delay, then try), with full jitter and without; attempts
    /// and time until all are registered.
    Storm(StormArgs),
}

#[derive(Debug, Args, Clone)]
struct Load {
    /// Simulated workers.
    #[arg(long, default_value_t = 1000)]
    workers: usize,
    /// gRPC connections (HTTP/2) the workers share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long to measure.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Warm-up before measuring.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
}

#[derive(Debug, Args)]
struct HeartbeatArgs {
    /// The orchestrator to load (https:// with --tls-ca).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// CA certificate (PEM) of an orchestrator serving TLS.
    #[arg(long, value_name = "PATH")]
    tls_ca: Option<std::path::PathBuf>,
    /// The orchestrator's auth file: each simulated worker `load-<i>` sends
    /// the token of its `worker load-<i> <token>` line.
    #[arg(long, value_name = "PATH")]
    auth_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    load: Load,
}

#[derive(Debug, Args)]
struct CompareArgs {
    #[command(flatten)]
    load: Load,
    /// Streams in the catalog (spread over the workers).
    #[arg(long, default_value_t = 5000)]
    streams: i64,
    /// Instead of the echo comparison: the orchestrator in plaintext, with
    /// TLS, with bearer tokens and with both, side by side (the cost of
    /// security on heartbeat throughput).
    #[arg(long)]
    security: bool,
    /// Instead of the echo comparison: the orchestrator on SQLite and on
    /// this PostgreSQL database (an empty one: the schema is created),
    /// side by side.
    #[arg(long, value_name = "URL", conflicts_with = "security")]
    postgres: Option<String>,
    /// Instead of the echo comparison: the orchestrator with metrics
    /// collected and with --metrics=false, alternating, --runs times each
    /// (the cost of collection on heartbeat throughput; medians compared).
    #[arg(long, conflicts_with_all = ["security", "postgres"])]
    metrics: bool,
    /// With --metrics: runs of each configuration.
    #[arg(long, default_value_t = 3, requires = "metrics")]
    runs: usize,
}

impl CompareArgs {
    /// What every comparison starts from: each worker's `max_streams` (room
    /// for its share of the catalog), the engine's settings, a temp dir.
    fn setup(&self) -> Result<(u32, EngineConfig, tempfile::TempDir), Error> {
        let per_worker = (self.streams as usize).div_ceil(self.load.workers.max(1)) as u32 + 1;
        let engine = EngineConfig { max_streams_limit: per_worker.max(10_000), ..EngineConfig::default() };
        Ok((per_worker, engine, tempfile::Builder::new().prefix("orchestrator-load-").tempdir()?))
    }
}

#[derive(Debug, Args)]
struct ScaleArgs {
    /// Simulated workers.
    #[arg(long, default_value_t = 10_000)]
    workers: usize,
    /// Streams.
    #[arg(long, default_value_t = 500_000)]
    streams: i64,
    /// gRPC connections the workers share.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Heartbeat interval.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// Session timeout.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    session_timeout: Duration,
    /// Share of workers that stop, for the re-placement measurement.
    #[arg(long, default_value_t = 0.1)]
    stop_share: f64,
    /// Steady-state time over which heartbeat latency is measured.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    steady: Duration,
}

#[derive(Debug, Args)]
struct StormArgs {
    /// Workers reconnecting.
    #[arg(long, default_value_t = 1000)]
    workers: usize,
    /// Requests the orchestrator handles at once (more are shed).
    #[arg(long, default_value_t = 32)]
    max_concurrent: usize,
    /// First reconnect delay.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    base_delay: Duration,
    /// Largest reconnect delay.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    max_delay: Duration,
    /// gRPC connections the workers share.
    #[arg(long, default_value_t = 8)]
    connections: usize,
}

fn percentile(h: &Histogram<u64>, q: f64) -> Duration {
    Duration::from_micros(h.value_at_quantile(q))
}

/// How the simulated clients reach a secured orchestrator: TLS, and the
/// bearer tokens of the admin and of each worker `load-<i>`.
#[derive(Debug, Clone, Default)]
struct Access {
    tls: Option<ClientTlsConfig>,
    admin: Option<MetadataValue<Ascii>>,
    workers: Option<Arc<Vec<MetadataValue<Ascii>>>>,
}

fn bearer(token: &str) -> Result<MetadataValue<Ascii>, Error> {
    let mut value: MetadataValue<Ascii> = format!("Bearer {token}").parse()?;
    value.set_sensitive(true);
    Ok(value)
}

impl Access {
    /// `message` with worker `i`'s token, if there are tokens.
    fn worker<T>(&self, i: usize, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(tokens) = &self.workers {
            request.metadata_mut().insert("authorization", tokens[i % tokens.len()].clone());
        }
        request
    }

    /// The tokens of an auth file's `worker load-<i>` lines, for `workers`
    /// workers.
    fn from_auth_file(path: &std::path::Path, workers: usize) -> Result<Vec<MetadataValue<Ascii>>, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut tokens = std::collections::HashMap::new();
        for line in text.lines() {
            if let ["worker", id, token, ..] = line.split_whitespace().collect::<Vec<_>>()[..] {
                tokens.insert(id.to_owned(), token.to_owned());
            }
        }
        (0..workers)
            .map(|i| {
                let token = tokens
                    .get(&format!("load-{i}"))
                    .ok_or_else(|| format!("{}: no `worker load-{i} <token>` line", path.display()))?;
                bearer(token)
            })
            .collect()
    }
}

async fn channels(url: &str, n: usize, access: &Access) -> Result<Vec<Channel>, Error> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let mut endpoint = Endpoint::from_shared(url.to_owned())?.tcp_nodelay(true);
        if let Some(tls) = &access.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        out.push(endpoint.connect().await?);
    }
    Ok(out)
}

async fn register_all(
    channels: &[Channel],
    workers: usize,
    max_streams: u32,
    access: &Access,
) -> Result<Vec<v1::SessionRef>, Error> {
    let mut sessions = Vec::with_capacity(workers);
    for i in 0..workers {
        let mut c = WorkerServiceClient::new(channels[i % channels.len()].clone());
        let r = c
            .register(access.worker(
                i,
                v1::RegisterRequest {
                    server_id: format!("load-{i}"),
                    max_streams,
                    request_id: format!("load-reg-{i}-{}", fastrand::u64(..)),
                    held_leases: vec![],
                    client_version: "orchestrator-load".into(),
                },
            ))
            .await?
            .into_inner();
        sessions.push(r.session.ok_or("register answered without a session")?);
    }
    Ok(sessions)
}

struct Report {
    calls: u64,
    errors: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
    /// CPU time of this whole process (load and, in-process, the
    /// orchestrator) in the measured window.
    cpu: Duration,
}

/// The CPU time this process has used so far.
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(u64::try_from(t.tv_sec).unwrap_or(0), u32::try_from(t.tv_nsec).unwrap_or(0))
}

impl Report {
    fn throughput(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }

    /// CPU time per call, microseconds (both sides, when in-process).
    fn cpu_per_call_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.calls.max(1) as f64
    }

    fn line(&self, label: &str) -> String {
        format!(
            "{label:<28} {:>10.0} calls/s  p50 {:>8.1?}  p99 {:>8.1?}  p99.9 {:>8.1?}  cpu/call {:>6.1}µs  errors {}",
            self.throughput(),
            percentile(&self.hist, 0.5),
            percentile(&self.hist, 0.99),
            percentile(&self.hist, 0.999),
            self.cpu_per_call_us(),
            self.errors
        )
    }
}

/// Heartbeats from `sessions`, `concurrency` in flight, for `duration`
/// after `warmup`; acknowledges grants so the payload stays steady.
async fn drive(
    channels: &[Channel],
    sessions: Arc<Vec<v1::SessionRef>>,
    load: &Load,
    label: &str,
    access: &Access,
) -> Report {
    let next = Arc::new(AtomicUsize::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for k in 0..load.concurrency.max(1) {
        let mut client = WorkerServiceClient::new(channels[k % channels.len()].clone());
        let (next, measuring, stop, calls, errors, sessions, access) = (
            next.clone(),
            measuring.clone(),
            stop.clone(),
            calls.clone(),
            errors.clone(),
            sessions.clone(),
            access.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut acks: Vec<Vec<v1::Lease>> = vec![Vec::new(); sessions.len()];
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed) % sessions.len();
                let request = v1::HeartbeatRequest {
                    session: Some(sessions[i].clone()),
                    processing_count: 0,
                    acknowledged: std::mem::take(&mut acks[i]),
                };
                let start = Instant::now();
                let result = client.heartbeat(access.worker(i, request)).await;
                let took = start.elapsed();
                if measuring.load(Ordering::Relaxed) {
                    calls.fetch_add(1, Ordering::Relaxed);
                    let _ = hist.record(took.as_micros().max(1) as u64);
                }
                match result {
                    Ok(r) => acks[i] = r.into_inner().assign,
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            hist
        }));
    }
    tokio::time::sleep(load.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let cpu_start = process_cpu();
    let mut last = 0;
    while start.elapsed() < load.duration {
        tokio::time::sleep(Duration::from_secs(1).min(load.duration)).await;
        let now = calls.load(Ordering::Relaxed);
        eprintln!("  {label}: t={:>4.1}s  {:>8} calls/s", start.elapsed().as_secs_f64(), now - last);
        last = now;
    }
    measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed();
    let cpu = process_cpu().saturating_sub(cpu_start);
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    for t in tasks {
        if let Ok(h) = t.await {
            let _ = hist.add(h);
        }
    }
    Report { calls: calls.load(Ordering::Relaxed), errors: errors.load(Ordering::Relaxed), elapsed, hist, cpu }
}

/// The transport's floor: answers heartbeats with the payload the
/// orchestrator sends in steady state, doing nothing else.
#[derive(Debug, Default)]
struct Echo;

#[tonic::async_trait]
impl WorkerService for Echo {
    async fn register(&self, r: Request<v1::RegisterRequest>) -> Result<Response<v1::RegisterResponse>, Status> {
        let r = r.into_inner();
        Ok(Response::new(v1::RegisterResponse {
            session: Some(v1::SessionRef { server_id: r.server_id, session_id: "0.1".into(), worker_epoch: 1 }),
            held_lease_decisions: vec![],
            heartbeat_interval: Duration::from_secs(5).try_into().ok(),
            session_timeout: Duration::from_secs(30).try_into().ok(),
            acknowledged_through_sequence: 0,
        }))
    }

    async fn heartbeat(&self, _: Request<v1::HeartbeatRequest>) -> Result<Response<v1::HeartbeatResponse>, Status> {
        Ok(Response::new(v1::HeartbeatResponse {
            assign: vec![],
            revoke: vec![],
            next_heartbeat_interval: Duration::from_secs(5).try_into().ok(),
            draining: false,
        }))
    }

    async fn request_streams(
        &self,
        _: Request<v1::RequestStreamsRequest>,
    ) -> Result<Response<v1::RequestStreamsResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn release_streams(
        &self,
        _: Request<v1::ReleaseStreamsRequest>,
    ) -> Result<Response<v1::ReleaseStreamsResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn sync_local_state(
        &self,
        _: Request<v1::SyncLocalStateRequest>,
    ) -> Result<Response<v1::SyncLocalStateResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn deregister(&self, _: Request<v1::DeregisterRequest>) -> Result<Response<v1::DeregisterResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
}

async fn start_echo() -> Result<SocketAddr, Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkerServiceServer::new(Echo))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))),
    );
    Ok(addr)
}

struct Local {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

async fn start_orchestrator(
    engine: EngineConfig,
    max_concurrent: usize,
    dir: &std::path::Path,
    listen: SocketAddr,
    security: Security,
    metrics: bool,
) -> Result<Local, Error> {
    let config = ServerConfig {
        listen,
        database: dir.join("orchestrator.db"),
        engine,
        max_concurrent_requests: max_concurrent,
        drain_timeout: Duration::from_millis(200),
        security,
        metrics,
        ..ServerConfig::default()
    };
    run_server(OrchestratorServer::bind(config).await?)
}

/// Serves `server` in a task until `Local::stop` fires.
fn run_server(server: OrchestratorServer) -> Result<Local, Error> {
    let addr = server.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        let _ = server
            .serve(async {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(Local { addr, stop, done })
}

async fn add_streams(url: &str, count: i64, access: &Access) -> Result<(), Error> {
    let channel = channels(url, 1, access).await?.remove(0);
    let mut admin = AdminServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let mut first = 1;
    while first <= count {
        let last = (first + 9_999).min(count);
        let streams = (first..=last).map(|stream_id| v1::StreamSpec {
            stream_id,
            name: String::new(),
            source_url: String::new(),
        });
        let mut request =
            Request::new(v1::AddStreamsRequest { streams: streams.collect(), request_id: format!("load-add-{first}") });
        if let Some(token) = &access.admin {
            request.metadata_mut().insert("authorization", token.clone());
        }
        admin.add_streams(request).await?;
        first = last + 1;
    }
    Ok(())
}

/// One configuration's result: its label, serial and concurrent runs.
type Row = (&'static str, Report, Report);

/// Registers the workers, then drives heartbeats serially and with
/// `load.concurrency` in flight.
async fn measure(label: &'static str, url: &str, load: &Load, per_worker: u32, access: &Access) -> Result<Row, Error> {
    let ch = channels(url, load.connections, access).await?;
    let sessions = Arc::new(register_all(&ch, load.workers, per_worker, access).await?);
    let serial = Load { concurrency: 1, ..load.clone() };
    let s = drive(&ch, Arc::clone(&sessions), &serial, &format!("{label} serial"), access).await;
    let c = drive(&ch, sessions, load, &format!("{label} x{}", load.concurrency), access).await;
    Ok((label, s, c))
}

/// Fills the catalog of the orchestrator `local` serves at `url`, measures
/// it (see [`measure`]) and stops it.
async fn measure_served(
    label: &'static str,
    local: Local,
    url: &str,
    args: &CompareArgs,
    per_worker: u32,
    access: &Access,
) -> Result<Row, Error> {
    add_streams(url, args.streams, access).await?;
    let row = measure(label, url, &args.load, per_worker, access).await?;
    let _ = local.stop.send(());
    let _ = local.done.await;
    Ok(row)
}

/// The table of rows, then `a / b` ratios.
fn print_rows(rows: &[Row], load: &Load, streams: i64) {
    println!("\nheartbeat, {} workers, {streams} streams, {} connections", load.workers, load.connections);
    for (label, s, c) in rows {
        println!("{}", s.line(&format!("{label} serial")));
        println!("{}", c.line(&format!("{label} concurrency {}", load.concurrency)));
    }
}

/// `a / b`: throughput at `concurrency`, serial p50 and p99.
fn ratios(a: &Row, b: &Row) -> (f64, f64, f64) {
    let ratio = |q: f64| percentile(&a.1.hist, q).as_secs_f64() / percentile(&b.1.hist, q).as_secs_f64();
    (a.2.throughput() / b.2.throughput(), ratio(0.5), ratio(0.99))
}

async fn compare(args: CompareArgs) -> Result<(), Error> {
    if args.security {
        return compare_security(args).await;
    }
    if let Some(url) = args.postgres.clone() {
        return compare_postgres(args, url).await;
    }
    if args.metrics {
        return compare_metrics(args).await;
    }
    let load = args.load.clone();
    let (per_worker, engine, dir) = args.setup()?;
    let none = Access::default();
    let orch =
        start_orchestrator(engine, 100_000, dir.path(), "127.0.0.1:0".parse()?, Security::default(), true).await?;
    let orch_url = format!("http://{}", orch.addr);
    add_streams(&orch_url, args.streams, &none).await?;
    let echo_url = format!("http://{}", start_echo().await?);

    let mut rows = Vec::new();
    for (label, url) in [("orchestrator", &orch_url), ("echo", &echo_url)] {
        rows.push(measure(label, url, &load, per_worker, &none).await?);
    }
    print_rows(&rows, &load, args.streams);
    let (t, p50, p99) = ratios(&rows[0], &rows[1]);
    println!(
        "\nratios (orchestrator / echo): throughput x{}: {t:.2}   serial p50: {p50:.2}   serial p99: {p99:.2}",
        load.concurrency
    );
    let _ = orch.stop.send(());
    let _ = orch.done.await;
    Ok(())
}

/// The same heartbeat load with metrics collected and not, alternating
/// (on, off, off, on, …) so that drift of a noisy machine falls on both;
/// medians of the runs compared.
async fn compare_metrics(args: CompareArgs) -> Result<(), Error> {
    let load = args.load.clone();
    let (per_worker, engine, dir) = args.setup()?;
    let none = Access::default();
    let mut rows = Vec::new();
    for run in 0..args.runs.max(1) {
        // On, off, off, on, …: neither configuration always runs first.
        let order = if run % 2 == 0 { [true, false] } else { [false, true] };
        for (label, metrics) in order.map(|m| (if m { "metrics on" } else { "metrics off" }, m)) {
            let data = dir.path().join(format!("run-{run}-{metrics}"));
            std::fs::create_dir_all(&data)?;
            let orch = start_orchestrator(
                engine.clone(),
                100_000,
                &data,
                "127.0.0.1:0".parse()?,
                Security::default(),
                metrics,
            )
            .await?;
            let url = format!("http://{}", orch.addr);
            rows.push(measure_served(label, orch, &url, &args, per_worker, &none).await?);
        }
    }
    print_rows(&rows, &load, args.streams);
    let median = |label: &str, f: &dyn Fn(&Row) -> f64| {
        let mut v: Vec<f64> = rows.iter().filter(|r| r.0 == label).map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let throughput = |r: &Row| r.2.throughput();
    let p50 = |r: &Row| percentile(&r.1.hist, 0.5).as_secs_f64();
    let cpu = |r: &Row| r.2.cpu_per_call_us();
    let (on, off) = (median("metrics on", &throughput), median("metrics off", &throughput));
    let (on50, off50) = (median("metrics on", &p50), median("metrics off", &p50));
    let (on_cpu, off_cpu) = (median("metrics on", &cpu), median("metrics off", &cpu));
    println!(
        "\nmedians of {} runs each: throughput x{} on {on:.0}/s, off {off:.0}/s: on / off {:.3} ({:+.1}%)   \
         serial p50 on / off {:.3}\n\
         CPU per call x{} (load and orchestrator, one process): on {on_cpu:.1} µs, off {off_cpu:.1} µs: on / off {:.3} ({:+.1}%)",
        args.runs.max(1),
        load.concurrency,
        on / off,
        (on / off - 1.0) * 100.0,
        on50 / off50,
        load.concurrency,
        on_cpu / off_cpu,
        (on_cpu / off_cpu - 1.0) * 100.0,
    );
    if rows.iter().any(|(_, s, c)| s.errors + c.errors > 0) {
        return Err("some heartbeats failed (see the errors column)".into());
    }
    Ok(())
}

/// The same heartbeat load on the orchestrator with SQLite and with
/// PostgreSQL, one after the other in one run.
async fn compare_postgres(args: CompareArgs, url: String) -> Result<(), Error> {
    let load = args.load.clone();
    let (per_worker, engine, dir) = args.setup()?;
    let none = Access::default();
    let mut rows = Vec::new();
    for label in ["sqlite", "postgres"] {
        let config = ServerConfig {
            listen: "127.0.0.1:0".parse()?,
            database: dir.path().join("orchestrator.db"),
            engine: engine.clone(),
            max_concurrent_requests: 100_000,
            drain_timeout: Duration::from_millis(200),
            ..ServerConfig::default()
        };
        let server = if label == "sqlite" {
            OrchestratorServer::bind(config).await?
        } else {
            let u = url.clone();
            let store = tokio::task::spawn_blocking(move || orchestrator::store::PostgresStore::connect(&u)).await??;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            OrchestratorServer::with_store(config, store, listener, orchestrator::server::Environment::default())
                .await?
        };
        let local = run_server(server)?;
        let orch_url = format!("http://{}", local.addr);
        rows.push(measure_served(label, local, &orch_url, &args, per_worker, &none).await?);
    }
    print_rows(&rows, &load, args.streams);
    let (t, p50, p99) = ratios(&rows[1], &rows[0]);
    println!(
        "\nratios (postgres / sqlite): throughput x{}: {t:.2}   serial p50: {p50:.2}   serial p99: {p99:.2}",
        load.concurrency
    );
    Ok(())
}

/// The same heartbeat load on four in-process orchestrators, one after the
/// other in one run: plaintext, TLS, bearer tokens (an auth file with a
/// line per worker), TLS and tokens. Certificates from a fresh test CA.
async fn compare_security(args: CompareArgs) -> Result<(), Error> {
    let load = args.load.clone();
    let (per_worker, engine, dir) = args.setup()?;
    let pki = fixtures::certs::generate(&dir.path().join("pki"), "orchestrator-load CA", &[], &[])?;
    let token = |who: &str| format!("{who}-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let admin = token("admin");
    let workers: Vec<String> = (0..load.workers).map(|i| token(&format!("w{i}"))).collect();
    let auth = dir.path().join("auth");
    let mut text = format!("admin load {admin}\n");
    for (i, t) in workers.iter().enumerate() {
        text.push_str(&format!("worker load-{i} {t}\n"));
    }
    std::fs::write(&auth, text)?;
    let tls_files = TlsFiles { cert: pki.server_cert.clone(), key: pki.server_key.clone(), client_ca: None };
    let client_tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pki.ca_pem())).domain_name("localhost");
    let tokens = Access {
        tls: None,
        admin: Some(bearer(&admin)?),
        workers: Some(Arc::new(workers.iter().map(|t| bearer(t)).collect::<Result<_, _>>()?)),
    };
    let configs = [
        ("plaintext", Security::default(), Access::default()),
        (
            "tls",
            Security { tls: Some(tls_files.clone()), ..Security::default() },
            Access { tls: Some(client_tls.clone()), ..Access::default() },
        ),
        ("tokens", Security { auth_file: Some(auth.clone()), ..Security::default() }, tokens.clone()),
        (
            "tls+tokens",
            Security { tls: Some(tls_files), auth_file: Some(auth), ..Security::default() },
            Access { tls: Some(client_tls), ..tokens },
        ),
    ];
    let mut rows = Vec::new();
    for (i, (label, security, access)) in configs.into_iter().enumerate() {
        let data = dir.path().join(format!("run-{i}"));
        std::fs::create_dir_all(&data)?;
        let tls = security.tls.is_some();
        let orch = start_orchestrator(engine.clone(), 100_000, &data, "127.0.0.1:0".parse()?, security, true).await?;
        let url = format!("{}://localhost:{}", if tls { "https" } else { "http" }, orch.addr.port());
        rows.push(measure_served(label, orch, &url, &args, per_worker, &access).await?);
    }
    print_rows(&rows, &load, args.streams);
    println!("\nratios to plaintext:");
    for row in &rows[1..] {
        let (t, p50, p99) = ratios(row, &rows[0]);
        println!(
            "  {:<11} throughput x{}: {t:.2}   serial p50: {p50:.2}   serial p99: {p99:.2}   errors {}",
            row.0,
            load.concurrency,
            row.1.errors + row.2.errors,
        );
    }
    if rows.iter().any(|(_, s, c)| s.errors + c.errors > 0) {
        return Err("some heartbeats failed (see the errors column)".into());
    }
    Ok(())
}

async fn heartbeat(args: HeartbeatArgs) -> Result<(), Error> {
    let mut access = Access::default();
    if let Some(ca) = &args.tls_ca {
        let pem = std::fs::read(ca).map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
        access.tls = Some(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)));
    }
    if let Some(file) = &args.auth_file {
        access.workers = Some(Arc::new(Access::from_auth_file(file, args.load.workers)?));
    }
    let ch = channels(&args.target, args.load.connections, &access).await?;
    let sessions = Arc::new(register_all(&ch, args.load.workers, 100, &access).await?);
    let r = drive(&ch, sessions, &args.load, "heartbeat", &access).await;
    println!("{}", r.line(&format!("heartbeat x{}", args.load.concurrency)));
    Ok(())
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// One simulated worker: heartbeats at its interval, acknowledges grants,
/// releases revokes; records its heartbeat latencies while `measuring`.
async fn paced_worker(
    channel: Channel,
    session: v1::SessionRef,
    interval: Duration,
    alive: Arc<AtomicBool>,
    measuring: Arc<AtomicBool>,
) -> Vec<u64> {
    // A few samples per worker: a Vec, not a histogram per task (10,000
    // histograms would be the biggest thing in the process).
    let mut samples = Vec::new();
    let mut client = WorkerServiceClient::new(channel);
    let mut ack = Vec::new();
    tokio::time::sleep(interval.mul_f64(fastrand::f64())).await;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while alive.load(Ordering::Relaxed) {
        tick.tick().await;
        if !alive.load(Ordering::Relaxed) {
            break;
        }
        let start = Instant::now();
        let r = client
            .heartbeat(v1::HeartbeatRequest {
                session: Some(session.clone()),
                processing_count: 0,
                acknowledged: std::mem::take(&mut ack),
            })
            .await;
        if measuring.load(Ordering::Relaxed) {
            samples.push(start.elapsed().as_micros().max(1) as u64);
        }
        let Ok(r) = r else { continue };
        let r = r.into_inner();
        ack = r.assign;
        let revoked: Vec<v1::Lease> = r.revoke.iter().filter_map(|d| d.lease).collect();
        if !revoked.is_empty() {
            let _ = client
                .release_streams(v1::ReleaseStreamsRequest {
                    session: Some(session.clone()),
                    leases: revoked,
                    request_id: format!("rel-{}", fastrand::u64(..)),
                })
                .await;
        }
    }
    samples
}

async fn status(admin: &mut AdminServiceClient<Channel>) -> Result<v1::GetClusterStatusResponse, Error> {
    Ok(admin.get_cluster_status(v1::GetClusterStatusRequest {}).await?.into_inner())
}

async fn scale(args: ScaleArgs) -> Result<(), Error> {
    let ms = |d: Duration| d.as_millis() as u64;
    let per_worker = (args.streams as usize).div_ceil(args.workers.max(1)) as u32 * 2 + 1;
    let engine = EngineConfig {
        heartbeat_interval: ms(args.heartbeat_interval),
        session_timeout: ms(args.session_timeout),
        grace_period: ms(args.session_timeout),
        max_streams_limit: per_worker.max(10_000),
        min_rebalance_interval: ms(args.heartbeat_interval) / 20,
        ..EngineConfig::default()
    };
    let rss0 = rss_bytes();
    let dir = tempfile::Builder::new().prefix("orchestrator-load-").tempdir()?;
    let orch =
        start_orchestrator(engine, 1_000_000, dir.path(), "127.0.0.1:0".parse()?, Security::default(), true).await?;
    let url = format!("http://{}", orch.addr);
    let t = Instant::now();
    add_streams(&url, args.streams, &Access::default()).await?;
    let rss_streams = rss_bytes();
    eprintln!("added {} streams in {:?}", args.streams, t.elapsed());
    let ch = channels(&url, args.connections, &Access::default()).await?;
    // Every worker registers (64 at a time, as a fleet starting up would)
    // and starts heartbeating right away.
    let cold = Instant::now();
    let measuring = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let registered = Arc::new(AtomicUsize::new(0));
    let mut alive = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..args.workers {
        let flag = Arc::new(AtomicBool::new(true));
        alive.push(Arc::clone(&flag));
        let (channel, gate, registered, measuring) =
            (ch[i % ch.len()].clone(), Arc::clone(&gate), Arc::clone(&registered), Arc::clone(&measuring));
        let interval = args.heartbeat_interval;
        tasks.push(tokio::spawn(async move {
            let session = {
                let _permit = gate.acquire().await;
                let mut c = WorkerServiceClient::new(channel.clone());
                let r = c
                    .register(v1::RegisterRequest {
                        server_id: format!("load-{i}"),
                        max_streams: per_worker,
                        request_id: format!("load-reg-{i}"),
                        held_leases: vec![],
                        client_version: "orchestrator-load".into(),
                    })
                    .await;
                match r.ok().and_then(|r| r.into_inner().session) {
                    Some(s) => s,
                    None => return Vec::new(),
                }
            };
            registered.fetch_add(1, Ordering::Relaxed);
            paced_worker(channel, session, interval, flag, measuring).await
        }));
    }
    while registered.load(Ordering::Relaxed) < args.workers {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("registered {} workers in {:?}", args.workers, cold.elapsed());
    let mut admin = AdminServiceClient::new(ch[0].clone());
    loop {
        let s = status(&mut admin).await?;
        if s.assigned_streams == s.total_streams {
            break;
        }
        eprintln!("  {:>5.1}s  assigned {} of {}", cold.elapsed().as_secs_f64(), s.assigned_streams, s.total_streams);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let balanced = cold.elapsed();
    // Let the moves of the cold start finish (revoked leases are released
    // at the owners' next heartbeat) before measuring the steady state.
    eprintln!("balanced after {balanced:?}; settling for two heartbeat intervals");
    tokio::time::sleep(args.heartbeat_interval * 2).await;
    eprintln!("measuring steady state for {:?}", args.steady);
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(args.steady).await;
    measuring.store(false, Ordering::Relaxed);
    let rss_steady = rss_bytes();
    let stop_n = ((args.workers as f64) * args.stop_share).round() as usize;
    for flag in alive.iter().take(stop_n) {
        flag.store(false, Ordering::Relaxed);
    }
    let stopped = Instant::now();
    // Wait until no stopped worker owns a stream any more (its session
    // expired and every stream it had went to a live worker) and every
    // stream is assigned.
    let stopped_ids: std::collections::HashSet<String> = (0..stop_n).map(|i| format!("load-{i}")).collect();
    loop {
        let workers = admin.list_workers(v1::ListWorkersRequest::default()).await?.into_inner().workers;
        let left: u32 = workers.iter().filter(|w| stopped_ids.contains(&w.server_id)).map(|w| w.assigned_streams).sum();
        let s = status(&mut admin).await?;
        if left == 0 && s.assigned_streams == s.total_streams {
            break;
        }
        if stopped.elapsed() > args.session_timeout * 4 {
            eprintln!(
                "re-placement did not finish in {:?}: {left} streams still on stopped workers; {s:?}",
                stopped.elapsed()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let replaced = stopped.elapsed();
    for flag in &alive {
        flag.store(false, Ordering::Relaxed);
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    for t in tasks {
        for sample in t.await.unwrap_or_default() {
            let _ = hist.record(sample);
        }
    }
    println!(
        "\nscale: {} workers, {} streams, heartbeat {:?}, session timeout {:?}",
        args.workers, args.streams, args.heartbeat_interval, args.session_timeout
    );
    println!("cold start to balanced:        {balanced:?}");
    println!(
        "steady heartbeat latency:      p50 {:?}  p99 {:?}  p99.9 {:?}  ({} samples)",
        percentile(&hist, 0.5),
        percentile(&hist, 0.99),
        percentile(&hist, 0.999),
        hist.len()
    );
    println!(
        "memory: +{:.1} MiB for the catalog ({:.0} B/stream), {:.1} MiB process total in steady state ({:.0} B/stream, load generator included)",
        (rss_streams.saturating_sub(rss0)) as f64 / 1048576.0,
        rss_streams.saturating_sub(rss0) as f64 / args.streams as f64,
        rss_steady as f64 / 1048576.0,
        rss_steady.saturating_sub(rss0) as f64 / args.streams as f64
    );
    println!(
        "re-placing the streams of {stop_n} stopped workers: {replaced:?} (session timeout + one heartbeat = {:?})",
        args.session_timeout + args.heartbeat_interval
    );
    let _ = orch.stop.send(());
    let _ = orch.done.await;
    Ok(())
}

async fn storm_once(args: &StormArgs, jitter: bool) -> Result<(u64, Duration), Error> {
    let dir = tempfile::Builder::new().prefix("orchestrator-load-").tempdir()?;
    let engine = EngineConfig::default();
    let orch =
        start_orchestrator(engine.clone(), 100_000, dir.path(), "127.0.0.1:0".parse()?, Security::default(), true)
            .await?;
    let addr = orch.addr;
    let url = format!("http://{addr}");
    let ch = channels(&url, args.connections, &Access::default()).await?;
    register_all(&ch, args.workers, 10, &Access::default()).await?;
    // Restart: same database and address, now shedding above max_concurrent.
    let _ = orch.stop.send(());
    let _ = orch.done.await;
    let restarted =
        start_orchestrator(engine, args.max_concurrent, dir.path(), addr, Security::default(), true).await?;
    let ch = channels(&url, args.connections, &Access::default()).await?;
    let attempts = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let config = resilience::RetryConfig::builder()
        .base_delay(args.base_delay)
        .max_delay(args.max_delay)
        .jitter(jitter)
        .max_attempts(u32::MAX)
        .no_budget()
        .build()?;
    let mut tasks = Vec::new();
    for i in 0..args.workers {
        let mut client = WorkerServiceClient::new(ch[i % ch.len()].clone());
        let attempts = Arc::clone(&attempts);
        tasks.push(tokio::spawn(async move {
            let mut backoff = resilience::retry::Backoff::with_seed(config, i as u64);
            loop {
                // As the worker client's reconnect probe: wait, then try.
                tokio::time::sleep(backoff.next_delay()).await;
                attempts.fetch_add(1, Ordering::Relaxed);
                let r = client
                    .register(v1::RegisterRequest {
                        server_id: format!("load-{i}"),
                        max_streams: 10,
                        request_id: format!("storm-{i}-{}", attempts.load(Ordering::Relaxed)),
                        held_leases: vec![],
                        client_version: String::new(),
                    })
                    .await;
                if r.is_ok() {
                    return;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let took = start.elapsed();
    let _ = restarted.stop.send(());
    let _ = restarted.done.await;
    Ok((attempts.load(Ordering::Relaxed), took))
}

async fn storm(args: StormArgs) -> Result<(), Error> {
    let (a_j, t_j) = storm_once(&args, true).await?;
    let (a_n, t_n) = storm_once(&args, false).await?;
    println!(
        "\nrestart storm: {} workers, orchestrator sheds above {} concurrent requests",
        args.workers, args.max_concurrent
    );
    println!("full jitter:  {a_j:>6} register attempts, all registered after {t_j:?}");
    println!("no jitter:    {a_n:>6} register attempts, all registered after {t_n:?}");
    println!(
        "ratio jitter / no jitter: attempts {:.2}, time {:.2}",
        a_j as f64 / a_n as f64,
        t_j.as_secs_f64() / t_n.as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Heartbeat(a) => heartbeat(a).await,
        Command::Compare(a) => compare(a).await,
        Command::Scale(a) => scale(a).await,
        Command::Storm(a) => storm(a).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
