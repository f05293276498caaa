//! An example worker: registers with the orchestrator, heartbeats, and
//! "processes" each stream it is assigned (simulated work that records a
//! processing record per chunk), following lease and mode changes. It logs
//! every change, prints its health JSON on SIGUSR1 (and every
//! `--health-every`), serves `/metrics` (Prometheus) and `/health` (the
//! health JSON) with `--http-listen`, and on ctrl-c / SIGTERM releases its
//! streams, deregisters and exits.
//!
//! ```sh
//! cargo run -p worker-client --example worker -- --server-id worker-1
//! # with /metrics and /health on port 9101:
//! cargo run -p worker-client --example worker -- --server-id worker-1 --http-listen 127.0.0.1:9101
//! # without an orchestrator:
//! cargo run -p worker-client --example worker -- --server-id worker-1 --standalone --streams 1-10
//! ```
#![allow(clippy::print_stdout)] // a demo that reports to its user

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use tokio::task::JoinHandle;
use worker_client::ResilientWorkerClient;

/// An example worker that processes the streams the orchestrator assigns it.
#[derive(Debug, Parser)]
#[command(name = "worker")]
struct Args {
    /// This worker's stable id (unique in the fleet).
    #[arg(long, env = "WORKER_SERVER_ID")]
    server_id: String,
    /// The orchestrator's gRPC address; several replicas comma-separated
    /// (the client moves to the next when one does not answer).
    #[arg(long, env = "WORKER_ORCHESTRATOR_URL", default_value = "http://127.0.0.1:50051")]
    orchestrator_url: String,
    /// Most streams processed at once.
    #[arg(long, env = "WORKER_MAX_STREAMS", default_value_t = 10)]
    max_streams: u32,
    /// State file (default ./worker-state-<server-id>.db).
    #[arg(long, env = "WORKER_STATE")]
    state: Option<PathBuf>,
    /// Simulated time to process one chunk of a stream.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    chunk_interval: Duration,
    /// Stop processing after this long without the orchestrator (default: never).
    #[arg(long, value_parser = humantime::parse_duration)]
    local_mode_limit: Option<Duration>,
    /// Enter local mode after this long without a successful call; also
    /// the longest any one call waits. However the orchestrator fails, the
    /// worker is in local mode within this plus one heartbeat.
    #[arg(long, env = "WORKER_LOCAL_MODE_AFTER", default_value = "30s", value_parser = humantime::parse_duration)]
    local_mode_after: Duration,
    /// Circuit breaker recovery timeout: after the breaker opened, the first
    /// reconnect probe waits this long.
    #[arg(long, env = "WORKER_CIRCUIT_RECOVERY_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    circuit_recovery_timeout: Duration,
    /// Print the health JSON this often (0: only on SIGUSR1).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    health_every: Duration,
    /// Print "ack <sequence>" on stdout after each durable processing record
    /// (for tests).
    #[arg(long)]
    print_acks: bool,
    /// Run without an orchestrator: process exactly --streams, keep
    /// processing records in the state file (the seed's "orchestrator
    /// disabled" mode).
    #[arg(long, env = "WORKER_STANDALONE", requires = "streams")]
    standalone: bool,
    /// With --standalone: the streams to process, N or A-B, separated by
    /// commas or spaces (e.g. "1-10" or "1,5-9").
    #[arg(long, env = "WORKER_STREAMS", value_parser = parse_streams)]
    streams: Option<Streams>,
    /// CA certificate (PEM) that signed the orchestrator's TLS certificate;
    /// use an https:// --orchestrator-url.
    #[arg(long, env = "WORKER_TLS_CA", value_name = "PATH")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS, with --tls-key; its URI SAN is
    /// urn:orchestrator:worker:<server-id>.
    #[arg(long, env = "WORKER_TLS_CERT", value_name = "PATH", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "WORKER_TLS_KEY", value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Bearer token (a `worker <server-id> <token>` line of the
    /// orchestrator's auth file). Prefer the environment variable: a flag
    /// shows in `ps`.
    #[arg(long, env = "WORKER_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    token: Option<Secret>,
    /// Serve /metrics (Prometheus text format) and /health (the health
    /// JSON) on this address (port 0: any free port, logged).
    #[arg(long, env = "WORKER_HTTP_LISTEN", value_name = "ADDR")]
    http_listen: Option<std::net::SocketAddr>,
}

/// A token from the command line or the environment; its `Debug` hides it.
#[derive(Clone)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Stream ids for --streams.
#[derive(Debug, Clone)]
struct Streams(Vec<i64>);

fn parse_streams(text: &str) -> Result<Streams, String> {
    let mut ids = Vec::new();
    for part in text.split([',', ' ']).filter(|p| !p.is_empty()) {
        let one = |s: &str| -> Result<i64, String> {
            match s.trim().parse::<i64>() {
                Ok(id) if id > 0 => Ok(id),
                _ => Err(format!("{s:?} is not a stream id (an integer from 1)")),
            }
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (one(a)?, one(b)?);
                if a > b || b - a >= 100_000 {
                    return Err(format!("{part:?}: expected A-B with A <= B and at most 100000 ids"));
                }
                ids.extend(a..=b);
            }
            None => ids.push(one(part)?),
        }
    }
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Err("no stream ids given (e.g. --streams 1-10)".into());
    }
    Ok(Streams(ids))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), worker_client::Error> {
    let mut builder = match (&args.standalone, &args.streams) {
        (true, Some(streams)) => ResilientWorkerClient::standalone(&args.server_id, streams.0.clone()),
        _ => ResilientWorkerClient::builder(&args.orchestrator_url, &args.server_id).max_streams(args.max_streams),
    };
    builder = builder
        .local_mode_after(args.local_mode_after)
        .circuit_recovery_timeout(args.circuit_recovery_timeout)
        .client_version("example-worker/0.1");
    if let Some(path) = &args.state {
        builder = builder.state_path(path);
    }
    if let Some(limit) = args.local_mode_limit {
        builder = builder.local_mode_limit(limit);
    }
    if let Some(ca) = &args.tls_ca {
        let identity = args.tls_cert.as_ref().zip(args.tls_key.as_ref());
        let tls = worker_client::ClientTls::from_files(ca, identity).map_err(|e| worker_client::Error::Config {
            setting: "tls",
            problem: e.to_string(),
            source: None,
        })?;
        builder = builder.tls(tls);
    }
    if let Some(token) = &args.token {
        builder = builder.auth_token(&token.0);
    }
    let client = builder.build().await?;
    client.start().await?;
    if let Some(addr) = args.http_listen {
        serve_http(addr, &client).await?;
    }
    if args.standalone {
        tracing::info!(server_id = %args.server_id, "worker started in standalone mode (no orchestrator)");
    } else {
        tracing::info!(server_id = %args.server_id, orchestrator = %args.orchestrator_url, "worker started");
    }

    let mut leases = client.leases();
    let mut running: BTreeMap<i64, JoinHandle<()>> = BTreeMap::new();
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).ok();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut health_tick = (!args.health_every.is_zero()).then(|| tokio::time::interval(args.health_every));
    let mut local = false;
    // Set on shutdown: each stream's task finishes the chunk in progress
    // (its record is durable and acknowledged) and stops.
    let stopping = Arc::new(AtomicBool::new(false));
    loop {
        // Start what is new, stop what is gone.
        let set = leases.borrow_and_update().clone();
        if set.local_mode() != local {
            local = set.local_mode();
            tracing::warn!(local_mode = local, "mode changed");
        }
        running.retain(|stream_id, task| {
            let keep = set.contains(*stream_id);
            if !keep {
                task.abort();
                tracing::info!(stream_id, "stopped processing");
            }
            keep
        });
        for (stream_id, epoch) in set.iter() {
            running.entry(stream_id).or_insert_with(|| {
                tracing::info!(stream_id, lease_epoch = epoch, "started processing");
                let (client, stopping) = (client.clone(), Arc::clone(&stopping));
                let (every, print) = (args.chunk_interval, args.print_acks);
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(every).await;
                        if stopping.load(Ordering::Acquire) {
                            return;
                        }
                        match client.record_stream_processing(stream_id).await {
                            Ok(sequence) if print => println!("ack {sequence}"),
                            Ok(_) => {}
                            Err(e) => {
                                tracing::debug!(stream_id, error = %e, "stopped recording");
                                return;
                            }
                        }
                    }
                })
            });
        }
        tokio::select! {
            changed = leases.changed() => if changed.is_err() { break },
            _ = tokio::signal::ctrl_c() => { tracing::info!("ctrl-c: shutting down"); break }
            Some(()) = async { match term.as_mut() { Some(t) => t.recv().await, None => std::future::pending().await } } => {
                tracing::info!("SIGTERM: shutting down");
                break;
            }
            Some(()) = async { match usr1.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => {
                println!("{}", client.health_check().await.to_json());
            }
            _ = async { match health_tick.as_mut() { Some(t) => t.tick().await, None => std::future::pending().await } } => {
                println!("{}", client.health_check().await.to_json());
            }
        }
    }
    // A revoked stream stops at once (above); on shutdown the chunks in
    // progress finish first, so every record made was acknowledged.
    stopping.store(true, Ordering::Release);
    for (_, task) in running {
        let _ = task.await;
    }
    let report = client.shutdown().await;
    tracing::info!(
        deregistered = report.deregistered,
        unsynced_records = report.records_unsynced,
        timed_out = report.timed_out,
        "worker stopped"
    );
    Ok(())
}

/// `/metrics` and `/health` on `addr`, for as long as the process runs.
async fn serve_http(addr: std::net::SocketAddr, client: &ResilientWorkerClient) -> Result<(), worker_client::Error> {
    use axum::http::header::CONTENT_TYPE;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| worker_client::Error::Config {
        setting: "http_listen",
        problem: format!("cannot listen on {addr}: {e}"),
        source: None,
    })?;
    let mut registry = prometheus_client::registry::Registry::default();
    client.register_metrics(&mut registry);
    let registry = Arc::new(registry);
    let health_client = client.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let registry = Arc::clone(&registry);
                async move {
                    let mut text = String::new();
                    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
                    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
                }
            }),
        )
        .route(
            "/health",
            axum::routing::get(move || {
                let client = health_client.clone();
                async move { axum::Json(client.health_check().await.to_json()) }
            }),
        );
    if let Ok(bound) = listener.local_addr() {
        tracing::info!(addr = %bound, "HTTP listening: /metrics, /health");
    }
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the HTTP listener failed: {e}");
        }
    });
    Ok(())
}
