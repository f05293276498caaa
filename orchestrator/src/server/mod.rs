//! Binding and serving: the worker and admin services, `grpc.health.v1`
//! and server reflection on one listener, with per-connection limits and
//! admission (`admission.rs`), accepting that survives running out of file
//! descriptors (`incoming.rs`), the liveness ticker and graceful shutdown.
//!
//! Bind first, then serve: [`OrchestratorServer::bind`] opens the store,
//! rebuilds the engine and binds the listener (port 0 allowed);
//! [`OrchestratorServer::local_addr`] tells where; [`OrchestratorServer::serve`]
//! serves until the shutdown future fires, then reports NOT_SERVING, stops
//! accepting, finishes in-flight calls and flushes the store.
//!
//! [`OrchestratorServer::with_store`] is the seam the deterministic
//! simulation uses: any [`Store`], any [`Listener`] (a simulated network's),
//! and an [`Environment`] that runs the committer on the runtime and reads a
//! simulated wall clock.
//!
//! Every request passes, in order: TLS (tonic's, when [`Security::tls`] is
//! set), the `AuthLayer` (`crate::auth`: a caller, or UNAUTHENTICATED /
//! PERMISSION_DENIED), the `StoppedLayer` (once the orchestrator stopped
//! serving, UNAVAILABLE for everything but health, on open connections
//! too), then admission. Replicas on PostgreSQL are served by
//! [`replica::serve_replica`], which runs this server for each leader term.

mod admission;
mod incoming;
pub mod replica;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub(crate) use incoming::{ConnInfo, conn_info};
pub use incoming::{Listener, raise_fd_limit};
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::auth::{AuthLayer, Authenticator, Credentials};
use crate::http::Site;
pub use crate::metrics::Role;

use crate::engine::EngineConfig;
use crate::service::{Orchestrator, ServiceConfig};
use crate::store::{CommitDelay, SqliteStore, Store, StoreError, StoreHandle, StoreRunner};

/// Everything `orchestrator serve` can be told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// The SQLite database file.
    pub database: PathBuf,
    /// The engine's timings and limits.
    pub engine: EngineConfig,
    /// Worker calls handled at once before new ones are shed with
    /// UNAVAILABLE.
    pub max_concurrent_requests: usize,
    /// Admin and reflection calls handled at once (their own pool, so
    /// operators can act while worker calls are shed). Health checks take
    /// no permit.
    pub max_concurrent_admin_requests: usize,
    /// Share of a pool's permits one connection may hold, in (0, 1].
    pub max_connection_share: f64,
    /// HTTP/2 streams one connection may have open at once (advertised as
    /// SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams_per_connection: u32,
    /// How long a request's message may take to arrive before the request
    /// is answered DEADLINE_EXCEEDED; it holds no permit meanwhile.
    pub request_receive_timeout: Duration,
    /// A connection with no request for this long is closed (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// HTTP/2 PING interval on each connection (`None`: no pings).
    pub keepalive_interval: Option<Duration>,
    /// A connection whose PING is not answered within this is closed.
    pub keepalive_timeout: Duration,
    /// Largest request or response message, bytes.
    pub max_message_bytes: usize,
    /// Streams 1..=N to add to an empty catalog, for trying things out.
    pub demo_streams: u32,
    /// On shutdown, how long in-flight calls and open connections get
    /// before they are closed.
    pub drain_timeout: Duration,
    /// TLS, client certificates, tokens, reflection.
    pub security: Security,
    /// The HTTP listener (`/metrics`, `/healthz`, `/readyz`, the status API
    /// and the dashboard; see [`crate::http`]); `None`: none.
    pub http: Option<HttpListen>,
    /// Collect metrics (`false`: `/metrics` answers 404, nothing is
    /// counted; for measuring what collection costs).
    pub metrics: bool,
    /// Open an info-level span (`grpc`, with the method's path) around
    /// every call, for trace export (the binary's `--otlp-endpoint`). Off,
    /// calls make no span of their own.
    pub trace_requests: bool,
}

/// Where the HTTP listener binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpListen {
    /// The address (port 0: any free port; the bound one is logged).
    pub addr: SocketAddr,
    /// If the address is taken, serve without the HTTP listener (with a
    /// warning) instead of failing: the binary's default address, so a
    /// second orchestrator on one machine still starts.
    pub if_free: bool,
}

/// Who may reach what (see the [`auth`](crate::auth) module and
/// `SECURITY.md`). The default is plaintext with no authentication, for
/// loopback.
#[derive(Debug, Clone)]
pub struct Security {
    /// Serve TLS with this certificate (and client CAs, for mTLS).
    pub tls: Option<TlsFiles>,
    /// Bearer tokens: `admin <name> <token>` / `worker <server_id> <token>`
    /// lines, read again by [`Authenticator::reload`] (SIGHUP in the binary).
    pub auth_file: Option<PathBuf>,
    /// Serve server reflection (open to anyone, like health).
    pub reflection: bool,
}

impl Default for Security {
    fn default() -> Self {
        Self { tls: None, auth_file: None, reflection: true }
    }
}

impl Security {
    /// Whether requests need a credential (an auth file or client CAs).
    pub fn authenticates(&self) -> bool {
        self.auth_file.is_some() || self.tls.as_ref().is_some_and(|t| t.client_ca.is_some())
    }
}

/// PEM files for TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// CA certificates that client certificates are verified against
    /// (mTLS). A client may still connect without one (health stays
    /// reachable), but then needs a token for anything else.
    pub client_ca: Option<PathBuf>,
}

/// The time a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl TlsFiles {
    fn server_config(&self) -> Result<ServerTlsConfig, ServeError> {
        let read = |flag: &str, path: &PathBuf| {
            let pem = std::fs::read(path).map_err(|e| ServeError::Tls(format!("{flag} {}: {e}", path.display())))?;
            if !pem.windows(10).any(|w| w == b"-----BEGIN") {
                return Err(ServeError::Tls(format!("{flag} {}: not a PEM file (no -----BEGIN line)", path.display())));
            }
            Ok(pem)
        };
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(read("--tls-cert", &self.cert)?, read("--tls-key", &self.key)?))
            .timeout(TLS_HANDSHAKE_TIMEOUT);
        if let Some(ca) = &self.client_ca {
            config =
                config.client_ca_root(Certificate::from_pem(read("--tls-client-ca", ca)?)).client_auth_optional(true);
        }
        // Built once here so that a bad key or certificate stops the start,
        // naming the files.
        tonic::transport::Server::builder().tls_config(config.clone()).map_err(|e| {
            ServeError::Tls(format!(
                "--tls-cert {} / --tls-key {}{}: {}",
                self.cert.display(),
                self.key.display(),
                self.client_ca.as_ref().map(|c| format!(" / --tls-client-ca {}", c.display())).unwrap_or_default(),
                error_chain(&e)
            ))
        })?;
        Ok(config)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            database: PathBuf::from("orchestrator.db"),
            engine: EngineConfig::default(),
            max_concurrent_requests: 4096,
            max_concurrent_admin_requests: 64,
            max_connection_share: 0.25,
            max_streams_per_connection: 256,
            request_receive_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(300)),
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(10),
            max_message_bytes: 4 * 1024 * 1024,
            demo_streams: 0,
            drain_timeout: Duration::from_secs(5),
            security: Security::default(),
            http: None,
            metrics: true,
            trace_requests: false,
        }
    }
}

/// Why the server could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store could not be opened or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be set up (a broken descriptor set).
    #[error("server reflection: {0}")]
    Reflection(String),
    /// The demo streams could not be added.
    #[error("adding demo streams: {0}")]
    Demo(String),
    /// The TLS files are missing or unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The auth file is missing or unusable.
    #[error("{0}")]
    Auth(String),
    /// The HTTP listen address could not be bound.
    #[error("cannot listen for HTTP on {addr} (--http-listen): {source}")]
    HttpBind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Where the committer runs (see [`StoreHandle`]).
#[derive(Clone, Default)]
pub enum StoreDriver {
    /// A thread of its own (the default: SQLite calls block).
    #[default]
    Thread,
    /// A task on the current runtime that waits `commit_delay()` before
    /// each group commit: deterministic under a simulated clock.
    Task {
        /// The simulated storage latency.
        commit_delay: CommitDelay,
    },
}

impl std::fmt::Debug for StoreDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Thread => "Thread",
            Self::Task { .. } => "Task",
        })
    }
}

/// What the server takes from its surroundings besides its configuration:
/// the defaults in production; the simulation substitutes both.
#[derive(Debug, Clone)]
pub struct Environment {
    /// Where the store's committer runs.
    pub store: StoreDriver,
    /// The wall clock (see [`ServiceConfig::wall_clock`]).
    pub wall_clock: fn() -> SystemTime,
    /// The credentials to check (`None`: made from `config.security`); a
    /// replica shares one across its terms, so a SIGHUP reload holds.
    pub authenticator: Option<Arc<Authenticator>>,
    /// The metrics and the HTTP listener's view (`None`: made here, and
    /// the listener of `config.http` bound here); a replica keeps one
    /// across its terms and serves the HTTP listener itself.
    pub site: Option<Arc<Site>>,
    /// What this server is, for `/readyz` and the dashboard.
    pub role: Role,
}

impl Default for Environment {
    fn default() -> Self {
        Self {
            store: StoreDriver::Thread,
            wall_clock: SystemTime::now,
            authenticator: None,
            site: None,
            role: Role::Standalone,
        }
    }
}

/// Binds the HTTP listener; `None` if it is `if_free` and the address is
/// taken.
///
/// # Errors
///
/// [`ServeError::HttpBind`].
pub async fn bind_http(listen: HttpListen) -> Result<Option<TcpListener>, ServeError> {
    match TcpListener::bind(listen.addr).await {
        Ok(listener) => Ok(Some(listener)),
        Err(source) if listen.if_free && source.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::warn!(
                addr = %listen.addr,
                "the default HTTP address is in use (another orchestrator on this machine?): serving without \
                 /metrics and the dashboard; pass --http-listen ADDR (127.0.0.1:0 picks a free port) or off"
            );
            Ok(None)
        }
        Err(source) => Err(ServeError::HttpBind { addr: listen.addr, source }),
    }
}

/// A bound, ready-to-serve orchestrator.
#[derive(Debug)]
pub struct OrchestratorServer<L: Listener = TcpListener> {
    config: ServerConfig,
    listener: L,
    orchestrator: Orchestrator,
    store_runner: StoreRunner,
    tls: Option<ServerTlsConfig>,
    auth: Arc<Authenticator>,
    site: Arc<Site>,
    /// This server's own HTTP listener, served from the moment it is bound
    /// (`/healthz` answers while the state loads); a replica serves its own.
    http: Option<HttpTask>,
    role: Role,
}

/// The HTTP listener, served by a task until stopped (or dropped: a server
/// that fails to load stops it too).
#[derive(Debug)]
pub(crate) struct HttpTask {
    addr: Option<SocketAddr>,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl HttpTask {
    /// Serves `site` on `listener` (and logs where).
    pub(crate) fn spawn(listener: TcpListener, site: Arc<Site>) -> Self {
        let addr = listener.local_addr().ok();
        if let Some(addr) = addr {
            site.bound_to(addr);
            tracing::info!(%addr, "HTTP listening: dashboard at http://{addr}/, /metrics, /healthz, /readyz, /api/v1/status");
        }
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            if let Err(e) = crate::http::serve(listener, site, shutdown).await {
                tracing::error!("the HTTP listener failed: {e}");
            }
        });
        Self { addr, stop, task: Some(task) }
    }

    /// Stops serving and waits until it has.
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for HttpTask {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Clears what the HTTP listener shows when a term's serving ends, however
/// it ends (an early error too): no stale engine is shown, or kept alive.
struct FleetReset {
    site: Arc<Site>,
    role: Role,
}

impl Drop for FleetReset {
    fn drop(&mut self) {
        self.site.fleet().set(None, self.role.clone());
    }
}

impl OrchestratorServer<TcpListener> {
    /// Opens the store, rebuilds the engine (with a grace period if the
    /// database knows workers) and binds the listener.
    ///
    /// # Errors
    ///
    /// [`ServeError::Store`] for a database that cannot be opened or is not
    /// usable (the file is left as it was), [`ServeError::Bind`].
    pub async fn bind(config: ServerConfig) -> Result<Self, ServeError> {
        let path = config.database.clone();
        let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
            .await
            .map_err(|e| StoreError::Io(e.to_string()))??;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServeError::Bind { addr: config.listen, source })?;
        Self::with_store(config, store, listener, Environment::default()).await
    }
}

impl<L: Listener> OrchestratorServer<L> {
    /// Loads `store`, rebuilds the engine (with a grace period if the store
    /// knows workers) and serves on `listener` once [`serve`](Self::serve)
    /// is called. `config.listen` and `config.database` are only named in
    /// logs. [`bind`](OrchestratorServer::bind) is this with SQLite, TCP and
    /// the default [`Environment`].
    ///
    /// # Errors
    ///
    /// [`ServeError::Store`] if the store cannot be loaded,
    /// [`ServeError::Demo`].
    pub async fn with_store(
        config: ServerConfig,
        mut store: impl Store,
        listener: L,
        env: Environment,
    ) -> Result<Self, ServeError> {
        let tls = config.security.tls.as_ref().map(TlsFiles::server_config).transpose()?;
        let auth = match &env.authenticator {
            Some(auth) => Arc::clone(auth),
            None => Arc::new(authenticator(&config.security)?),
        };
        let (site, http) = match env.site {
            Some(site) => (site, None),
            None => {
                let site = Site::new(config.metrics, Arc::clone(&auth));
                let http = match config.http {
                    Some(listen) => bind_http(listen).await?.map(|l| HttpTask::spawn(l, Arc::clone(&site))),
                    None => None,
                };
                (site, http)
            }
        };
        let metrics = site.metrics().cloned();
        let store_metrics = metrics.as_ref().map(|m| m.store());
        let (handle, store_runner, loaded) = match env.store {
            StoreDriver::Thread => {
                let (store, loaded) = tokio::task::spawn_blocking(move || store.load().map(|loaded| (store, loaded)))
                    .await
                    .map_err(|e| StoreError::Io(e.to_string()))??;
                let (handle, runner) =
                    StoreHandle::spawn_observed(store, loaded.acknowledged_through.clone(), store_metrics)?;
                (handle, runner, loaded)
            }
            StoreDriver::Task { commit_delay } => {
                let loaded = store.load()?;
                let (handle, runner) =
                    StoreHandle::spawn_task(store, loaded.acknowledged_through.clone(), commit_delay, store_metrics);
                (handle, runner, loaded)
            }
        };
        let workers = loaded.state.workers.len();
        let streams = loaded.state.streams.len();
        let orchestrator = Orchestrator::new(
            ServiceConfig { engine: config.engine.clone(), wall_clock: env.wall_clock, metrics },
            loaded,
            handle,
        );
        if workers > 0 {
            tracing::info!(
                workers,
                streams,
                grace = ?Duration::from_millis(config.engine.grace_period),
                "restored from {}; known workers may re-register and keep their leases during the grace period",
                config.database.display()
            );
        } else if streams == 0 && config.demo_streams == 0 {
            tracing::info!(
                "the catalog is empty: add streams with `orchestrator streams add 1-100` (or start with --demo-streams 100)"
            );
        }
        if config.demo_streams > 0 && streams == 0 {
            orchestrator.add_demo_streams(config.demo_streams).await.map_err(|s| ServeError::Demo(s.to_string()))?;
            tracing::info!(streams = config.demo_streams, "added demo streams 1..={}", config.demo_streams);
        } else if config.demo_streams > 0 {
            tracing::info!(
                streams,
                demo_streams = config.demo_streams,
                "--demo-streams ignored: the catalog in {} already has {streams} stream(s); it only fills an empty \
                 catalog (use `orchestrator streams add` / `streams remove`, or start with a fresh --database)",
                config.database.display()
            );
        }
        Ok(Self { config, listener, orchestrator, store_runner, tls, auth, site, http, role: env.role })
    }

    /// The address the HTTP listener is bound to, if this server has one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|h| h.addr)
    }

    /// The metrics and the HTTP listener's view.
    pub fn site(&self) -> Arc<Site> {
        Arc::clone(&self.site)
    }

    /// The credentials in force; [`Authenticator::reload`] reads the auth
    /// file again (the binary calls it on SIGHUP).
    pub fn authenticator(&self) -> Arc<Authenticator> {
        Arc::clone(&self.auth)
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    ///
    /// The OS error if the socket has no local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The orchestrator behind the services (for tests and embedding).
    pub fn orchestrator(&self) -> &Orchestrator {
        &self.orchestrator
    }

    /// Serves until `shutdown` fires (or storage fails), then shuts down
    /// gracefully and flushes the store.
    ///
    /// # Errors
    ///
    /// [`ServeError::Transport`] if the server fails, [`ServeError::Store`]
    /// if storage failed while serving.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        let Self { config, listener, orchestrator, store_runner, tls, auth, site, http, role } = self;
        let addr = listener.local_addr().ok();
        site.fleet().set(Some(orchestrator.clone()), role.clone());
        let _reset = FleetReset { site: Arc::clone(&site), role: role.clone() };
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_not_serving::<orchestrator_proto::v1::worker_service_server::WorkerServiceServer<crate::service::WorkerApi>>().await;
        reporter.set_not_serving::<orchestrator_proto::v1::admin_service_server::AdminServiceServer<crate::service::AdminApi>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(orchestrator_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ServeError::Reflection(e.to_string()))?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(orchestrator_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| ServeError::Reflection(e.to_string()))?;

        let max = config.max_message_bytes;
        let worker = orchestrator.worker_service().max_decoding_message_size(max).max_encoding_message_size(max);
        let admin = orchestrator.admin_service().max_decoding_message_size(max).max_encoding_message_size(max);

        // The liveness ticker: expiries, grace, placements.
        let tick_every = Duration::from_millis((config.engine.heartbeat_interval / 5).clamp(10, 1000));
        // Aborted however serving ends (an early error too), so a finished
        // term leaves no engine ticking.
        let ticker = {
            let o = orchestrator.clone();
            AbortOnDrop(tokio::spawn(async move {
                let mut interval = tokio::time::interval(tick_every);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    interval.tick().await;
                    if o.tick().await.is_err() {
                        return;
                    }
                }
            }))
        };

        let mut fatal = orchestrator.fatal();
        let stop_reporter = reporter.clone();
        let (stop_site, stop_role) = (Arc::clone(&site), role.clone());
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<Option<String>>();
        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            let reason = tokio::select! {
                () = shutdown => None,
                r = fatal.wait_for(Option::is_some) => r.ok().and_then(|r| r.clone()),
            };
            tracing::info!("shutting down: health NOT_SERVING, finishing in-flight calls");
            stop_site.fleet().set(None, stop_role);
            stop_reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
            stop_reporter
                .set_not_serving::<orchestrator_proto::v1::worker_service_server::WorkerServiceServer<crate::service::WorkerApi>>()
                .await;
            stop_reporter
                .set_not_serving::<orchestrator_proto::v1::admin_service_server::AdminServiceServer<crate::service::AdminApi>>()
                .await;
            let _ = stopped_tx.send(reason);
            let _ = draining_tx.send(());
        };

        reporter.set_serving::<orchestrator_proto::v1::worker_service_server::WorkerServiceServer<crate::service::WorkerApi>>().await;
        reporter
            .set_serving::<orchestrator_proto::v1::admin_service_server::AdminServiceServer<crate::service::AdminApi>>()
            .await;
        if let Some(addr) = addr {
            let tls_mode = match &config.security.tls {
                None => "off",
                Some(TlsFiles { client_ca: None, .. }) => "on",
                Some(_) => "on, client certificates verified",
            };
            tracing::info!(
                %addr,
                database = %config.database.display(),
                tls = tls_mode,
                authentication = auth.enabled(),
                "orchestrator serving"
            );
        }
        let admission = admission::AdmissionLayer::new(admission::Limits {
            max_concurrent_requests: config.max_concurrent_requests,
            max_concurrent_admin_requests: config.max_concurrent_admin_requests,
            max_connection_share: config.max_connection_share,
            max_message_bytes: config.max_message_bytes,
            request_receive_timeout: config.request_receive_timeout,
            shed: site.metrics().map(|m| m.shed()),
        });
        let rpc_metrics = site.metrics().map(|m| crate::metrics::RpcMetricsLayer::new(Arc::clone(m)));
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls)?;
        }
        if config.trace_requests {
            builder = builder.trace_fn(|request| tracing::info_span!("grpc", method = %request.uri().path()));
        }
        let reflection_on = config.security.reflection;
        let serving = builder
            .max_concurrent_streams(config.max_streams_per_connection.max(1))
            .http2_keepalive_interval(config.keepalive_interval)
            .http2_keepalive_timeout(Some(config.keepalive_timeout))
            .layer(tower::util::option_layer(rpc_metrics))
            .layer(AuthLayer::new(auth))
            .layer(StoppedLayer { fatal: orchestrator.fatal() })
            .layer(admission)
            .add_service(health)
            .add_optional_service(reflection_on.then_some(reflection))
            .add_optional_service(reflection_on.then_some(reflection_alpha))
            .add_service(worker)
            .add_service(admin)
            .serve_with_incoming_shutdown(incoming::Incoming::new(listener, config.idle_timeout), signal);
        // Graceful shutdown waits for clients to close their connections;
        // workers keep theirs open, so bound the wait.
        let drain = config.drain_timeout;
        tokio::select! {
            result = serving => result?,
            () = async {
                let _ = draining_rx.await;
                tokio::time::sleep(drain).await;
            } => tracing::info!(?drain, "closing the connections still open after the drain timeout"),
        }
        drop(ticker);
        // Commit what is queued, then stop the store thread.
        orchestrator.close_store();
        store_runner.join().await;
        site.fleet().set(None, role);
        if let Some(http) = http {
            http.stop().await;
        }
        match stopped_rx.await.ok().flatten() {
            Some(reason) => Err(ServeError::Store(StoreError::Io(reason))),
            None => {
                tracing::info!("orchestrator stopped cleanly");
                Ok(())
            }
        }
    }
}

impl Orchestrator {
    async fn add_demo_streams(&self, n: u32) -> Result<(), tonic::Status> {
        use orchestrator_proto::v1::admin_service_server::AdminService;
        let api = crate::service::AdminApi::from(self.clone());
        let ids: Vec<i64> = (1..=i64::from(n)).collect();
        for (i, chunk) in ids.chunks(10_000).enumerate() {
            let streams = chunk
                .iter()
                .map(|&id| orchestrator_proto::v1::StreamSpec {
                    stream_id: id,
                    name: format!("demo-{id}"),
                    source_url: String::new(),
                })
                .collect();
            let request = orchestrator_proto::v1::AddStreamsRequest { streams, request_id: format!("demo-{i}") };
            api.add_streams(tonic::Request::new(request)).await?;
        }
        Ok(())
    }
}

/// The authenticator `security` asks for; logs what it accepts.
///
/// # Errors
///
/// [`ServeError::Auth`] for an auth file that cannot be used.
pub fn authenticator(security: &Security) -> Result<Authenticator, ServeError> {
    let certificates = security.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    let tokens = match &security.auth_file {
        Some(path) => {
            let (tokens, warning) = Credentials::load(path).map_err(ServeError::Auth)?;
            if let Some(w) = warning {
                tracing::warn!("{w}");
            }
            tracing::info!(
                admins = tokens.admins(),
                workers = tokens.workers(),
                "bearer tokens from {} (send SIGHUP to read it again)",
                path.display()
            );
            tokens
        }
        None => Credentials::default(),
    };
    if certificates {
        tracing::info!(
            "client certificates verified: URI SAN urn:orchestrator:worker:<server_id> or urn:orchestrator:admin:<name>"
        );
    }
    Ok(Authenticator::new(security.auth_file.clone(), tokens, certificates).reflection_open(security.reflection))
}

/// An error with its causes, `a: b: c`.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = cause.source();
    }
    text
}

/// Once the orchestrator stopped serving (storage failed; a replica lost its
/// lease), every call but health is answered UNAVAILABLE at once, on
/// connections already open too: a deposed leader must not answer a
/// heartbeat from memory while another replica leads.
#[derive(Debug, Clone)]
struct StoppedLayer {
    fatal: tokio::sync::watch::Receiver<Option<String>>,
}

impl<S> tower::Layer<S> for StoppedLayer {
    type Service = Stopped<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Stopped { inner, fatal: self.fatal.clone() }
    }
}

#[derive(Debug, Clone)]
struct Stopped<S> {
    inner: S,
    fatal: tokio::sync::watch::Receiver<Option<String>>,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for Stopped<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let stopped = self.fatal.borrow().clone();
        match stopped {
            Some(reason) if !request.uri().path().starts_with("/grpc.health.v1.Health/") => {
                let status = tonic::Status::unavailable(format!("this orchestrator stopped serving: {reason}"));
                Box::pin(async move { Ok(status.into_http()) })
            }
            _ => Box::pin(self.inner.call(request)),
        }
    }
}
