//! A replica on PostgreSQL: one listener for the process's life, and terms.
//!
//! While a replica does not lead it is a **follower**: health answers (the
//! overall `""` service SERVING: the process is alive;
//! `orchestrator.v1.WorkerService` and `orchestrator.v1.AdminService`
//! NOT_SERVING), and every worker and admin RPC is answered UNAVAILABLE
//! with ErrorInfo reason `NOT_LEADER` and the leader's advertised address
//! in the trailer `orchestrator-leader`, so clients move there at once.
//! Meanwhile it tries to take the leader lease (`store::leader`) every
//! lease / 5.
//!
//! Once it wins, it loads the state from PostgreSQL and **leads** (the
//! usual [`OrchestratorServer`], with a grace period when the store knows
//! workers: they re-register with their leases and keep them), its commits
//! fenced by the lease's epoch. When it loses the lease, or PostgreSQL
//! fails, it steps down (NOT_SERVING at once, the heartbeat fast path
//! included), finishes its term, and becomes a follower again: losing the
//! database is not fatal for a replica.
//!
//! Connections are accepted by one task and handed to the current term's
//! server (a new leader's term gets them from the moment it is elected,
//! queued while the state loads). Connections opened in an earlier term
//! stay with it: a follower's keep answering NOT_LEADER (naming this
//! replica once it leads), a stepped-down leader's answer UNAVAILABLE to
//! everything but health; either way the client opens a fresh connection.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tonic::Status;
use tonic::body::Body;

use super::incoming::{Incoming, Listener};
use super::{Environment, OrchestratorServer, ServeError, ServerConfig};
use crate::auth::{AuthLayer, Authenticator};
use crate::http::Site;
use crate::metrics::Role;
use crate::service::Orchestrator;
use crate::store::PostgresStore;
use crate::store::leader::{Election, Leadership, LeaseTimings};

/// What makes a replica a replica.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// The PostgreSQL URL.
    pub url: String,
    /// The leader lease's timings.
    pub timings: LeaseTimings,
    /// The address other replicas name as this one's when it leads.
    pub advertise: String,
}

/// The connections of the current term.
type Conns = mpsc::Sender<(TcpStream, SocketAddr)>;

/// Accepts on the one listener and hands each connection to the current
/// term.
#[derive(Debug, Clone)]
struct Acceptor {
    current: Arc<Mutex<Option<Conns>>>,
    addr: SocketAddr,
}

impl Acceptor {
    fn spawn(listener: TcpListener) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let current: Arc<Mutex<Option<Conns>>> = Arc::default();
        let target = Arc::clone(&current);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(10);
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        backoff = Duration::from_millis(10);
                        let _ = stream.set_nodelay(true);
                        let tx = target.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        if let Some(tx) = tx {
                            let _ = tx.try_send((stream, peer));
                        }
                    }
                    Err(e) => {
                        tracing::warn!("cannot accept a connection ({e}); retrying in {backoff:?}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
            }
        });
        Ok(Self { current, addr })
    }

    /// The listener of a new term; the previous term gets no more
    /// connections.
    fn term(&self) -> TermListener {
        let (tx, rx) = mpsc::channel(1024);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        TermListener { rx, addr: self.addr }
    }
}

/// The connections handed to one term.
#[derive(Debug)]
struct TermListener {
    rx: mpsc::Receiver<(TcpStream, SocketAddr)>,
    addr: SocketAddr,
}

impl Listener for TermListener {
    type Io = TcpStream;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<(TcpStream, SocketAddr)>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(conn)) => Poll::Ready(Ok(conn)),
            // A later term took over: nothing more comes; the term ends.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// Serves as a replica on PostgreSQL until `shutdown` fires: follower,
/// leader, follower again, as the lease goes.
///
/// # Errors
///
/// [`ServeError::Bind`] if the listener cannot be bound,
/// [`ServeError::Tls`] for unusable TLS files. Losing PostgreSQL or the
/// lease is not an error: the replica becomes a follower.
pub async fn serve_replica(
    config: ServerConfig,
    replica: ReplicaConfig,
    auth: Arc<Authenticator>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls = config.security.tls.as_ref().map(super::TlsFiles::server_config).transpose()?;
    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| ServeError::Bind { addr: config.listen, source })?;
    let acceptor = Acceptor::spawn(listener).map_err(|source| ServeError::Bind { addr: config.listen, source })?;
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let holder = format!("{}-{}-{:08x}", hostname(), std::process::id(), fastrand::u32(..));
    let hint: Arc<RwLock<Option<String>>> = Arc::default();
    // One HTTP listener and one set of metrics for the process's life.
    let site = Site::new(config.metrics, Arc::clone(&auth));
    let http = match config.http {
        Some(listen) => super::bind_http(listen).await?,
        None => None,
    };
    tracing::info!(addr = %acceptor.addr, holder = %holder, "replica started: standby until elected");
    // Served until this function returns (dropped: stopped).
    let _http = http.map(|listener| super::HttpTask::spawn(listener, Arc::clone(&site)));
    loop {
        site.fleet().set(None, Role::Follower { leader: hint.read().unwrap_or_else(|p| p.into_inner()).clone() });
        // Follower.
        let (end_follower, follower_stopped) = watch::channel(false);
        let follower = tokio::spawn(serve_follower(
            acceptor.term(),
            config.clone(),
            tls.clone(),
            (Arc::clone(&auth), site.metrics().cloned()),
            Arc::clone(&hint),
            follower_stopped,
        ));
        let won = elect(&replica, &holder, &hint, &site, stop.clone()).await;
        let Some((leadership, epoch, started)) = won else {
            let _ = end_follower.send(true);
            let _ = follower.await;
            tracing::info!("replica stopped");
            return Ok(());
        };
        // Leader. Renewing starts at once (before the follower term has
        // drained and the state is loaded), and new connections queue for
        // the leader term from now on.
        tracing::info!(epoch, holder = %holder, "elected leader; loading the state from PostgreSQL");
        let slot: Arc<Mutex<(Option<Orchestrator>, Option<String>)>> = Arc::default();
        let keeper = {
            let slot = Arc::clone(&slot);
            leadership.keep(epoch, started, move |why| {
                let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
                match &slot.0 {
                    Some(o) => o.step_down(&why),
                    None => slot.1 = Some(why),
                }
            })
        };
        let leader_listener = acceptor.term();
        let _ = end_follower.send(true);
        tokio::spawn(follower);
        let url = replica.url.clone();
        let store = match tokio::task::spawn_blocking(move || PostgresStore::connect(&url)).await {
            Ok(Ok(store)) => store.fenced(&holder, epoch),
            Ok(Err(e)) => {
                tracing::error!("cannot open the store after winning the lease ({e}); standing down");
                let _ = tokio::task::spawn_blocking(move || keeper.stop(true)).await;
                continue;
            }
            Err(e) => return Err(ServeError::Store(crate::store::StoreError::Io(e.to_string()))),
        };
        let env = Environment {
            authenticator: Some(Arc::clone(&auth)),
            site: Some(Arc::clone(&site)),
            role: Role::Leader,
            ..Environment::default()
        };
        let server = match OrchestratorServer::with_store(config.clone(), store, leader_listener, env).await {
            Ok(server) => server,
            Err(e) => {
                tracing::error!("cannot load the state after winning the lease ({e}); standing down");
                let _ = tokio::task::spawn_blocking(move || keeper.stop(true)).await;
                continue;
            }
        };
        {
            let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
            slot.0 = Some(server.orchestrator().clone());
            if let Some(why) = slot.1.take() {
                server.orchestrator().step_down(&why);
            }
        }
        *hint.write().unwrap_or_else(|p| p.into_inner()) = Some(replica.advertise.clone());
        let mut term_stop = stop.clone();
        let result = server
            .serve(async move {
                let _ = term_stop.wait_for(|s| *s).await;
            })
            .await;
        let stopping = *stop.borrow();
        // Always released: guarded by holder and epoch, it can only end our
        // own lease, and a standby need not wait for it to expire.
        let _ = tokio::task::spawn_blocking(move || keeper.stop(true)).await;
        *hint.write().unwrap_or_else(|p| p.into_inner()) = None;
        if stopping {
            return result;
        }
        match result {
            Ok(()) => tracing::warn!("the term ended; back to standby"),
            Err(e) => tracing::warn!("stepped down ({e}); back to standby, rejoining the election"),
        }
    }
}

/// Tries for the lease every lease / 5 until won (or `stop`); keeps `hint`
/// on the current leader's address. Reconnects after database failures.
async fn elect(
    replica: &ReplicaConfig,
    holder: &str,
    hint: &Arc<RwLock<Option<String>>>,
    site: &Site,
    mut stop: watch::Receiver<bool>,
) -> Option<(Leadership, u64, Instant)> {
    let mut leadership: Option<Leadership> = None;
    let mut seen: Option<(String, u64)> = None;
    let mut failing = false;
    loop {
        if *stop.borrow() {
            drop_off_runtime(leadership);
            return None;
        }
        let (url, id, address, timings) =
            (replica.url.clone(), holder.to_owned(), replica.advertise.clone(), replica.timings);
        let current = leadership.take();
        let attempt = tokio::task::spawn_blocking(move || {
            let mut l = match current {
                Some(l) => l,
                None => {
                    // The schema must exist before the lease row does.
                    PostgresStore::connect(&url).map_err(|e| e.to_string())?;
                    Leadership::connect(&url, &id, &address, timings)?
                }
            };
            let result = l.try_acquire();
            Ok::<_, String>((l, result))
        })
        .await;
        match attempt {
            Ok(Ok((l, Ok(Election::Won { epoch, started })))) => return Some((l, epoch, started)),
            Ok(Ok((l, Ok(Election::Lost(h))))) => {
                if failing {
                    tracing::info!("PostgreSQL reachable again");
                    failing = false;
                }
                // Not our own address: a lease we just gave up is not a leader.
                let address =
                    (!h.address.is_empty() && h.expires_in_ms > 0 && h.holder != holder).then(|| h.address.clone());
                site.fleet().set(None, Role::Follower { leader: address.clone() });
                *hint.write().unwrap_or_else(|p| p.into_inner()) = address;
                if seen.as_ref() != Some(&(h.holder.clone(), h.epoch)) {
                    tracing::info!(
                        leader = %h.holder,
                        leader_address = %h.address,
                        epoch = h.epoch,
                        "standby: another replica leads; taking over when its lease expires (in {} ms unless renewed)",
                        h.expires_in_ms.max(0)
                    );
                    seen = Some((h.holder, h.epoch));
                }
                leadership = Some(l);
            }
            Ok(Ok((l, Err(e)))) => {
                // A fresh connection next time; this one may be broken.
                drop_off_runtime(Some(l));
                if !failing {
                    tracing::warn!("leader election failed ({e}); retrying every {:?}", replica.timings.renew_every());
                    failing = true;
                }
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!("leader election failed ({e}); retrying every {:?}", replica.timings.renew_every());
                    failing = true;
                }
            }
            Err(e) => tracing::warn!("leader election task failed: {e}"),
        }
        tokio::select! {
            () = tokio::time::sleep(replica.timings.renew_every()) => {}
            _ = stop.wait_for(|s| *s) => {
                drop_off_runtime(leadership);
                return None;
            }
        }
    }
}

/// Drops a synchronous PostgreSQL client on a thread of its own: its drop
/// blocks on a runtime of its own, which must not happen on the async
/// runtime's threads (it panics there).
fn drop_off_runtime<T: Send + 'static>(value: Option<T>) {
    if let Some(value) = value {
        std::thread::spawn(move || drop(value));
    }
}

/// Serves a follower term: health and NOT_LEADER answers, until `stop`.
async fn serve_follower(
    listener: TermListener,
    config: ServerConfig,
    tls: Option<tonic::transport::ServerTlsConfig>,
    (auth, metrics): (Arc<Authenticator>, Option<Arc<crate::metrics::Metrics>>),
    hint: Arc<RwLock<Option<String>>>,
    mut stop: watch::Receiver<bool>,
) {
    use orchestrator_proto::v1::admin_service_server::AdminServiceServer;
    use orchestrator_proto::v1::worker_service_server::WorkerServiceServer;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_not_serving::<WorkerServiceServer<crate::service::WorkerApi>>().await;
    reporter.set_not_serving::<AdminServiceServer<crate::service::AdminApi>>().await;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        match builder.tls_config(tls) {
            Ok(b) => builder = b,
            Err(e) => {
                tracing::error!("TLS: {e}");
                return;
            }
        }
    }
    let mut stopped = stop.clone();
    // Calls a follower refuses are counted too (NOT_LEADER is UNAVAILABLE).
    let serving = builder
        .layer(tower::util::option_layer(metrics.map(crate::metrics::RpcMetricsLayer::new)))
        .layer(AuthLayer::new(auth))
        .layer(NotLeaderLayer { hint })
        .add_service(health)
        .serve_with_incoming_shutdown(Incoming::new(listener, config.idle_timeout), async move {
            let _ = stop.wait_for(|s| *s).await;
        });
    // Clients keep their connections open (workers asking, being told
    // NOT_LEADER): once the term ends they get `drain_timeout`, then the
    // connections are closed, so a new leader is not held up.
    tokio::select! {
        _ = serving => {}
        () = async {
            let _ = stopped.wait_for(|s| *s).await;
            tokio::time::sleep(config.drain_timeout).await;
        } => {}
    }
}

/// Answers every call but health with NOT_LEADER.
#[derive(Debug, Clone)]
struct NotLeaderLayer {
    hint: Arc<RwLock<Option<String>>>,
}

impl<S> tower::Layer<S> for NotLeaderLayer {
    type Service = NotLeader<S>;

    fn layer(&self, inner: S) -> Self::Service {
        NotLeader { inner, hint: Arc::clone(&self.hint) }
    }
}

#[derive(Debug, Clone)]
struct NotLeader<S> {
    inner: S,
    hint: Arc<RwLock<Option<String>>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<Body>> for NotLeader<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path();
        if path.starts_with("/grpc.health.v1.Health/") {
            let future = self.inner.call(request);
            return Box::pin(future);
        }
        let hint = self.hint.read().unwrap_or_else(|p| p.into_inner()).clone();
        let status = not_leader(hint.as_deref());
        Box::pin(async move { Ok(status.into_http()) })
    }
}

/// UNAVAILABLE, ErrorInfo `NOT_LEADER`, the leader's address in the
/// `orchestrator-leader` trailer when known.
pub fn not_leader(leader: Option<&str>) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let mut metadata = std::collections::HashMap::new();
    if let Some(leader) = leader {
        metadata.insert("leader".to_owned(), leader.to_owned());
    }
    let details = ErrorDetails::with_error_info(
        orchestrator_proto::reason::NOT_LEADER,
        orchestrator_proto::ERROR_DOMAIN,
        metadata,
    );
    let message = match leader {
        Some(l) => format!("this replica does not lead; the leader is {l}"),
        None => "this replica does not lead, and no leader is known yet (an election is under way)".to_owned(),
    };
    let mut status = Status::with_error_details(tonic::Code::Unavailable, message, details);
    if let Some(l) = leader
        && let Ok(value) = l.parse()
    {
        status.metadata_mut().insert(orchestrator_proto::LEADER_HEADER, value);
    }
    status
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "orchestrator".to_owned())
}
