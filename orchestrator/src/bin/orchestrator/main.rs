//! The `orchestrator` binary: `serve` runs the orchestrator; the other
//! subcommands talk to a running one through its admin service
//! ([`admin`]: arguments, connecting, errors, rendering).

mod admin;
mod otel;

use otel::Telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use admin::{AdminArgs, AdminCommand};
use clap::{Args, Parser, Subcommand};
use orchestrator::engine::EngineConfig;
use orchestrator::server::{HttpListen, OrchestratorServer, Security, ServerConfig, TlsFiles};

/// Balances long-lived media streams across a fleet of workers.
///
/// Start it with `orchestrator serve`, add streams with
/// `orchestrator streams add 1-100`, and point workers at it. Every flag can
/// also be set with the environment variable shown in its help.
#[derive(Debug, Parser)]
#[command(name = "orchestrator", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    admin: AdminArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the orchestrator: gRPC worker and admin services, health and
    /// reflection on one listener, state in one SQLite file.
    Serve(Box<ServeArgs>),
    #[command(flatten)]
    Admin(AdminCommand),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on (host:port; port 0 picks a free port).
    #[arg(long, env = "ORCHESTRATOR_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Where state lives: a SQLite file (created if missing), or a
    /// PostgreSQL URL (`postgres://user@host:port/db`), which several
    /// replicas may share: one leads and serves, the others wait as
    /// standbys (see --leader-lease). Holds the catalog, workers, leases,
    /// processing records and the audit log.
    #[arg(long, env = "ORCHESTRATOR_DATABASE", default_value = "./orchestrator.db", value_name = "PATH|URL")]
    database: String,
    /// With PostgreSQL: how long the leader lease lasts; the leader renews
    /// it every fifth of this, and a standby takes over once it expires.
    #[arg(long, env = "ORCHESTRATOR_LEADER_LEASE", default_value = "10s", value_parser = humantime::parse_duration)]
    leader_lease: Duration,
    /// With PostgreSQL: the leader stops serving this long before its lease
    /// could expire (measured on its own clock from its last successful
    /// renewal), so that two replicas never serve at once.
    #[arg(long, env = "ORCHESTRATOR_LEADER_MARGIN", default_value = "2s", value_parser = humantime::parse_duration)]
    leader_margin: Duration,
    /// With PostgreSQL: the address other replicas name as the leader's
    /// (default: http:// or https:// and --listen).
    #[arg(long, env = "ORCHESTRATOR_ADVERTISE", value_name = "URL")]
    advertise: Option<String>,
    /// How often workers heartbeat (told to them in every response).
    #[arg(long, env = "ORCHESTRATOR_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// A worker session with no heartbeat for this long expires and its
    /// streams move. Keep it several heartbeat intervals long.
    #[arg(long, env = "ORCHESTRATOR_SESSION_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    session_timeout: Duration,
    /// After a restart, how long known workers have to re-register and keep
    /// their leases; nothing moves meanwhile. Default: --session-timeout
    /// plus 60 s, so a worker whose circuit breaker waits its default 60 s
    /// recovery timeout before probing still makes it.
    #[arg(long, env = "ORCHESTRATOR_GRACE", value_parser = humantime::parse_duration)]
    grace: Option<Duration>,
    /// Largest max_streams a worker may declare.
    #[arg(long, env = "ORCHESTRATOR_MAX_STREAMS_LIMIT", default_value_t = 10_000)]
    max_streams_limit: u32,
    /// Longest list in one request (stream ids, leases, records).
    #[arg(long, env = "ORCHESTRATOR_MAX_LIST_LEN", default_value_t = 10_000)]
    max_list_len: usize,
    /// A worker gone this long (expired or deregistered, holding no stream)
    /// is forgotten: removed from memory and from the database. A forgotten
    /// server_id may register again; its old sessions stay fenced.
    #[arg(long, env = "ORCHESTRATOR_WORKER_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    worker_retention: Duration,
    /// Cap on streams revoked per rebalancing round (0: no cap).
    #[arg(long, env = "ORCHESTRATOR_MAX_MOVES_PER_ROUND", default_value_t = 0)]
    max_moves_per_round: u32,
    /// Share of sessions expiring within one session timeout above which
    /// their streams are held back (the mass-failure brake).
    #[arg(long, env = "ORCHESTRATOR_MASS_FAILURE_THRESHOLD", default_value_t = 0.5)]
    mass_failure_threshold: f64,
    /// Worker calls handled at once; more are refused at once with
    /// UNAVAILABLE (reason OVERLOADED) and a retry pushback. A request takes
    /// a permit only once its message has arrived.
    #[arg(long, env = "ORCHESTRATOR_MAX_CONCURRENT_REQUESTS", default_value_t = 4096)]
    max_concurrent_requests: usize,
    /// Admin and reflection calls handled at once: their own pool, so
    /// operators can act while worker calls are shed. Health checks take no
    /// permit.
    #[arg(long, env = "ORCHESTRATOR_MAX_CONCURRENT_ADMIN_REQUESTS", default_value_t = 64)]
    max_concurrent_admin_requests: usize,
    /// Share of a pool's permits one connection may hold, in (0, 1]: one
    /// connection cannot take them all. Limits apply per connection, not per
    /// address, so a fleet behind one NAT address is not limited as one.
    #[arg(long, env = "ORCHESTRATOR_MAX_CONNECTION_SHARE", default_value_t = 0.25)]
    max_connection_share: f64,
    /// HTTP/2 streams (calls) one connection may have open at once,
    /// advertised to clients as SETTINGS_MAX_CONCURRENT_STREAMS.
    #[arg(long, env = "ORCHESTRATOR_MAX_STREAMS_PER_CONNECTION", default_value_t = 256)]
    max_streams_per_connection: u32,
    /// A request whose message has not arrived within this is answered
    /// DEADLINE_EXCEEDED (it holds no permit while it waits).
    #[arg(long, env = "ORCHESTRATOR_REQUEST_RECEIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    request_receive_timeout: Duration,
    /// A connection with no call in progress for this long is closed; 0
    /// keeps idle connections open. Workers heartbeat far more often.
    #[arg(long, env = "ORCHESTRATOR_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// How often the server sends an HTTP/2 PING on each connection, to find
    /// peers that vanished without closing it; 0 disables the pings.
    #[arg(long, env = "ORCHESTRATOR_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    keepalive_interval: Duration,
    /// A connection whose PING is not answered within this is closed.
    #[arg(long, env = "ORCHESTRATOR_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    keepalive_timeout: Duration,
    /// Largest gRPC message, bytes.
    #[arg(long, env = "ORCHESTRATOR_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    max_message_bytes: usize,
    /// Add streams 1..=N (named demo-N) to an empty catalog, to try it out.
    #[arg(long, env = "ORCHESTRATOR_DEMO_STREAMS", default_value_t = 0)]
    demo_streams: u32,
    /// On shutdown (SIGTERM, ctrl-c), how long in-flight calls get before
    /// open connections are closed.
    #[arg(long, env = "ORCHESTRATOR_DRAIN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    /// Clients then use https:// addresses.
    #[arg(long, env = "ORCHESTRATOR_TLS_CERT", value_name = "PATH", requires = "tls_key", help_heading = "Security")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "ORCHESTRATOR_TLS_KEY", value_name = "PATH", requires = "tls_cert", help_heading = "Security")]
    tls_key: Option<PathBuf>,
    /// Verify client certificates against these CA certificates (PEM;
    /// mTLS) and authenticate by their URI SAN:
    /// urn:orchestrator:worker:<server_id> or urn:orchestrator:admin:<name>.
    /// A client without a certificate can still check health, and needs a
    /// token (--auth-file) for anything else.
    #[arg(
        long,
        env = "ORCHESTRATOR_TLS_CLIENT_CA",
        value_name = "PATH",
        requires = "tls_cert",
        help_heading = "Security"
    )]
    tls_client_ca: Option<PathBuf>,
    /// Bearer tokens, one per line: `admin <name> <token>` or
    /// `worker <server_id> <token>` (`#` comments; several lines per
    /// identity for rotation). Clients send `authorization: Bearer
    /// <token>`. Read again on SIGHUP; keep it mode 600.
    #[arg(long, env = "ORCHESTRATOR_AUTH_FILE", value_name = "PATH", help_heading = "Security")]
    auth_file: Option<PathBuf>,
    /// Serve gRPC server reflection (open to anyone when on, like health;
    /// with --reflection=false it is not served at all).
    #[arg(long, env = "ORCHESTRATOR_REFLECTION", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL", help_heading = "Security")]
    reflection: bool,
    /// Allow listening on a non-loopback address without TLS or an auth
    /// file: anyone who can reach the port can then act as any worker or
    /// operator. Also allows a non-loopback --http-listen (plain HTTP).
    #[arg(long, env = "ORCHESTRATOR_INSECURE", help_heading = "Security")]
    insecure: bool,
    /// The HTTP listener: the dashboard at /, /metrics (Prometheus),
    /// /healthz, /readyz and /api/v1/status; `off` for none; port 0 picks a
    /// free port (logged). Plain HTTP, separate from gRPC so it can stay
    /// internal: a non-loopback address needs --insecure. With
    /// authentication on, /api/* needs an admin token from --auth-file.
    /// [default: 127.0.0.1:50052, or none if that port is taken]
    #[arg(long, env = "ORCHESTRATOR_HTTP_LISTEN", value_name = "ADDR|off", help_heading = "Observability")]
    http_listen: Option<String>,
    /// Collect metrics; with false, /metrics answers 404 and nothing is
    /// counted.
    #[arg(long, env = "ORCHESTRATOR_METRICS", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL", help_heading = "Observability")]
    metrics: bool,
    /// Log lines as `text` (for people) or `json` (one object per line, for
    /// log pipelines). The level is set by RUST_LOG (default info).
    #[arg(long, env = "ORCHESTRATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, help_heading = "Observability")]
    log_format: LogFormat,
    /// Export traces over OTLP/gRPC to this collector (e.g.
    /// http://127.0.0.1:4317): a span per gRPC call. Needs a binary built
    /// with `--features otel`; other builds ignore it with a warning.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL", help_heading = "Observability")]
    otlp_endpoint: Option<String>,
    /// With --otlp-endpoint: the share of calls traced, in [0, 1] (a busy
    /// fleet makes tens of thousands of heartbeats a second; e.g. 0.01).
    #[arg(
        long,
        env = "OTEL_TRACES_SAMPLER_ARG",
        default_value_t = 1.0,
        value_name = "RATIO",
        help_heading = "Observability"
    )]
    otlp_sample_ratio: f64,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The binary's default HTTP listen address.
const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:50052";

impl ServeArgs {
    fn into_config(self) -> Result<ServerConfig, String> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if self.heartbeat_interval.is_zero() {
            return Err("--heartbeat-interval must be greater than zero".into());
        }
        if self.session_timeout <= self.heartbeat_interval {
            return Err(format!(
                "--session-timeout ({:?}) must be longer than --heartbeat-interval ({:?}); several times longer is best",
                self.session_timeout, self.heartbeat_interval
            ));
        }
        if !(self.mass_failure_threshold > 0.0 && self.mass_failure_threshold <= 1.0) {
            return Err("--mass-failure-threshold must be in (0, 1]".into());
        }
        if self.max_streams_limit == 0
            || self.max_list_len == 0
            || self.max_concurrent_requests == 0
            || self.max_concurrent_admin_requests == 0
            || self.max_streams_per_connection == 0
        {
            return Err("--max-streams-limit, --max-list-len, --max-concurrent-requests, \
                        --max-concurrent-admin-requests and --max-streams-per-connection must be at least 1"
                .into());
        }
        if !(self.max_connection_share > 0.0 && self.max_connection_share <= 1.0) {
            return Err("--max-connection-share must be in (0, 1], e.g. 0.25".into());
        }
        if self.request_receive_timeout.is_zero() || self.keepalive_timeout.is_zero() {
            return Err("--request-receive-timeout and --keepalive-timeout must be greater than zero".into());
        }
        let security = self.security()?;
        let http = self.http()?;
        let grace = self.grace.unwrap_or(self.session_timeout + Duration::from_secs(60));
        Ok(ServerConfig {
            listen: self.listen,
            database: PathBuf::from(if is_postgres(&self.database) {
                orchestrator::store::redact_url(&self.database)
            } else {
                self.database.clone()
            }),
            engine: EngineConfig {
                session_timeout: ms(self.session_timeout),
                heartbeat_interval: ms(self.heartbeat_interval),
                grace_period: ms(grace),
                max_streams_limit: self.max_streams_limit,
                max_list_len: self.max_list_len,
                max_moves_per_round: (self.max_moves_per_round > 0).then_some(self.max_moves_per_round),
                mass_failure_threshold: self.mass_failure_threshold,
                instance_id: fastrand::u64(..),
                // Batch placement rounds on busy fleets: a grant waits at
                // most a twentieth of a heartbeat interval.
                min_rebalance_interval: ms(self.heartbeat_interval) / 20,
                worker_retention: ms(self.worker_retention),
                ..EngineConfig::default()
            },
            max_concurrent_requests: self.max_concurrent_requests,
            max_concurrent_admin_requests: self.max_concurrent_admin_requests,
            max_connection_share: self.max_connection_share,
            max_streams_per_connection: self.max_streams_per_connection,
            request_receive_timeout: self.request_receive_timeout,
            idle_timeout: (!self.idle_timeout.is_zero()).then_some(self.idle_timeout),
            keepalive_interval: (!self.keepalive_interval.is_zero()).then_some(self.keepalive_interval),
            keepalive_timeout: self.keepalive_timeout,
            max_message_bytes: self.max_message_bytes,
            demo_streams: self.demo_streams,
            drain_timeout: self.drain_timeout,
            security,
            http,
            metrics: self.metrics,
            // Set by `serve` once it knows whether traces are exported.
            trace_requests: false,
        })
    }

    /// The HTTP listener: off, the default (skipped if its port is taken),
    /// or an address given; a non-loopback one needs --insecure.
    fn http(&self) -> Result<Option<HttpListen>, String> {
        let (text, if_free) = match self.http_listen.as_deref().map(str::trim) {
            None => (DEFAULT_HTTP_LISTEN, true),
            Some(off) if off.eq_ignore_ascii_case("off") => return Ok(None),
            Some(addr) => (addr, false),
        };
        let literal = match text.strip_prefix("localhost:") {
            Some(port) => format!("127.0.0.1:{port}"),
            None => text.to_owned(),
        };
        let addr: SocketAddr = literal.parse().map_err(|_| {
            format!(
                "--http-listen {text:?}: not an address; give ip:port or localhost:port (e.g. 127.0.0.1:50052, port 0 \
                 for any) or off"
            )
        })?;
        if !addr.ip().is_loopback() && !self.insecure {
            return Err(format!(
                "refusing --http-listen {addr} (not a loopback address) without --insecure: the HTTP listener is plain \
                 HTTP, so the status API (and, with --auth-file, the admin token sent to it) would cross the network \
                 in clear. Keep it on loopback behind a proxy, or add --insecure if the network itself is trusted"
            ));
        }
        Ok(Some(HttpListen { addr, if_free }))
    }

    /// The PostgreSQL settings, when --database is a PostgreSQL URL.
    fn postgres(&self) -> Result<Option<orchestrator::server::replica::ReplicaConfig>, String> {
        if !is_postgres(&self.database) {
            return Ok(None);
        }
        if self.leader_lease < Duration::from_millis(500) {
            return Err("--leader-lease must be at least 500ms".into());
        }
        if self.leader_margin.is_zero() || self.leader_margin * 2 > self.leader_lease {
            return Err(format!(
                "--leader-margin ({:?}) must be greater than zero and at most half of --leader-lease ({:?})",
                self.leader_margin, self.leader_lease
            ));
        }
        if self.advertise.is_none() && (self.listen.ip().is_unspecified() || self.listen.port() == 0) {
            return Err(format!(
                "--listen {} is not an address other replicas and clients can call: give --advertise URL \
                 (e.g. http://10.0.0.2:50051), the address standbys name as the leader's",
                self.listen
            ));
        }
        let scheme = if self.tls_cert.is_some() { "https" } else { "http" };
        Ok(Some(orchestrator::server::replica::ReplicaConfig {
            url: self.database.clone(),
            timings: orchestrator::store::leader::LeaseTimings { lease: self.leader_lease, margin: self.leader_margin },
            advertise: self.advertise.clone().unwrap_or_else(|| format!("{scheme}://{}", self.listen)),
        }))
    }

    /// TLS and authentication; refuses an unprotected public listener.
    fn security(&self) -> Result<Security, String> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                Some(TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: self.tls_client_ca.clone() })
            }
            _ => None,
        };
        let security = Security { tls, auth_file: self.auth_file.clone(), reflection: self.reflection };
        let ip = self.listen.ip();
        if !ip.is_loopback() && security.tls.is_none() && security.auth_file.is_none() {
            if !self.insecure {
                return Err(format!(
                    "refusing to listen on {} (not a loopback address) without protection: anyone who can reach it \
                     could act as any worker or operator. Add --auth-file PATH (bearer tokens) and/or --tls-cert PATH \
                     --tls-key PATH [--tls-client-ca PATH], or --insecure if the network itself is trusted",
                    self.listen
                ));
            }
            tracing::warn!(listen = %self.listen, "--insecure: no TLS and no authentication on a non-loopback address");
        } else if !ip.is_loopback() && security.tls.is_none() {
            tracing::warn!(
                listen = %self.listen,
                "--auth-file without TLS on a non-loopback address: bearer tokens cross the network in clear; add \
                 --tls-cert and --tls-key"
            );
        } else if !ip.is_loopback() && !security.authenticates() {
            tracing::warn!(
                listen = %self.listen,
                "TLS without --auth-file or --tls-client-ca: the traffic is encrypted, but anyone who can connect may \
                 act as any worker or operator"
            );
        }
        Ok(security)
    }
}

/// Logs to stderr as `format`; with `otlp` (the `otel` feature), traces
/// are exported too. Returns what must live until exit.
fn init_tracing(format: LogFormat, otlp: Option<&str>, sample_ratio: f64) -> Result<Telemetry, String> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let lines = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let (traces, telemetry) = otel::layer(otlp, sample_ratio)?;
    tracing_subscriber::registry().with(filter).with(lines).with(traces).init();
    Ok(telemetry)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received ctrl-c"),
        () = term => tracing::info!("received SIGTERM"),
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    if !(0.0..=1.0).contains(&args.otlp_sample_ratio) {
        eprintln!("error: --otlp-sample-ratio must be in [0, 1], e.g. 0.01");
        return ExitCode::from(2);
    }
    let telemetry = match init_tracing(args.log_format, args.otlp_endpoint.as_deref(), args.otlp_sample_ratio) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let exporting = otel::exporting(&telemetry);
    let postgres_settings = match args.postgres() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match args.into_config() {
        Ok(c) => ServerConfig { trace_requests: exporting, ..c },
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let reload_on_sighup = config.security.auth_file.is_some();
    let postgres = postgres_settings;
    if let Some(limit) = orchestrator::server::raise_fd_limit() {
        // A worker holds one connection; keep headroom for the database,
        // the listener and the admin CLI.
        tracing::info!(
            limit,
            "open-file limit {limit}: room for about {} worker connections",
            limit.saturating_sub(64)
        );
    }
    // Listened for before the (possibly long) load, so that an early SIGHUP
    // does not end the process.
    #[cfg(unix)]
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    // A replica on PostgreSQL: follower and leader terms on one listener.
    if let Some(replica) = postgres {
        let auth = match orchestrator::server::authenticator(&config.security) {
            Ok(a) => std::sync::Arc::new(a),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        #[cfg(unix)]
        reload_on(hangups, std::sync::Arc::clone(&auth), reload_on_sighup);
        return match orchestrator::server::replica::serve_replica(config, replica, auth, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let server = match OrchestratorServer::bind(config).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    #[cfg(unix)]
    reload_on(hangups, server.authenticator(), reload_on_sighup);
    match server.serve(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGHUP reads the auth file again; without one it is logged and ignored
/// (not the default action, which would end the process).
#[cfg(unix)]
fn reload_on(
    hangups: std::io::Result<tokio::signal::unix::Signal>,
    auth: std::sync::Arc<orchestrator::auth::Authenticator>,
    reload: bool,
) {
    match hangups {
        Ok(mut hangups) => {
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    if !reload {
                        tracing::info!("SIGHUP ignored: there is no --auth-file to read again");
                        continue;
                    }
                    match auth.reload() {
                        Ok(c) => tracing::info!(
                            admins = c.admins(),
                            workers = c.workers(),
                            "SIGHUP: auth file read again; the new credentials are in force"
                        ),
                        Err(e) => tracing::error!("SIGHUP: {e}; the previous credentials stay in force"),
                    }
                }
            });
        }
        Err(e) => tracing::warn!("cannot listen for SIGHUP ({e}): the auth file is read only at start"),
    }
}

fn is_postgres(database: &str) -> bool {
    let lower = database.to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// A command line clap refused. With `--json` (and not `serve`) the error
/// is JSON on stdout like every other failure, `{"error": "..."}`, exit 2;
/// otherwise clap's own text (and help and version as usual).
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--json") && !args.iter().any(|a| a == "serve");
    let informational = matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if !json || informational {
        e.exit();
    }
    // clap's first line, without its "error: " prefix and usage hints.
    let text = e.to_string();
    let message = text.lines().next().unwrap_or_default().trim_start_matches("error: ");
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "{:#}", serde_json::json!({ "error": message }));
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Admin(command) => {
            let mut out = std::io::stdout().lock();
            match admin::run(&cli.admin, command, &mut out).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    if cli.admin.json {
                        // `--json` means JSON, failures included: on stdout,
                        // where a script reads the answer.
                        use std::io::Write as _;
                        let _ = writeln!(out, "{:#}", e.to_json());
                    } else {
                        eprintln!("error: {e}");
                    }
                    ExitCode::from(e.exit_code())
                }
            }
        }
    }
}
