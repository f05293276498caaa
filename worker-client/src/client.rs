//! The client: calls, modes, the background task, health.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use orchestrator_proto::v1;
use orchestrator_proto::v1::worker_service_client::WorkerServiceClient;
use resilience::grpc;
use resilience::{CallError, CircuitBreaker, CircuitState, Outcome, Retry};
use serde::Serialize;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::config::{ClientBuilder, ClientConfig};
use crate::state::{Op, Record, StateHandle};
use crate::{Error, LeaseSet};

/// Records uploaded per `SyncLocalState` call.
const SYNC_BATCH: usize = 1000;

/// A resilient client for one worker. Cheap to clone; clones share
/// everything. See the [crate documentation](crate).
#[derive(Debug, Clone)]
pub struct ResilientWorkerClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    grpc: WorkerServiceClient<Channel>,
    breaker: CircuitBreaker,
    retry: Retry,
    state: StateHandle,
    core: Mutex<Core>,
    leases: watch::Sender<LeaseSet>,
    next_sequence: AtomicU64,
    /// Records written since the last upload.
    records_waiting: AtomicBool,
    local: AtomicBool,
    /// Processing stopped by the local-mode limit.
    halted: AtomicBool,
    metrics: Metrics,
    last_contact: StdMutex<Option<SystemTime>>,
    started_at: tokio::time::Instant,
    stop: watch::Sender<bool>,
    task: StdMutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct Metrics {
    total: AtomicU64,
    successful: AtomicU64,
    failed: AtomicU64,
    local_mode_activations: AtomicU64,
}

/// The protocol state, changed by one operation at a time.
#[derive(Debug)]
struct Core {
    session: Option<v1::SessionRef>,
    /// Leases held (also while processing is stopped by the local-mode limit).
    leases: BTreeMap<i64, u64>,
    /// Grants to acknowledge in the next heartbeat.
    to_ack: Vec<v1::Lease>,
    /// Releases made while the orchestrator was unreachable.
    pending_releases: BTreeMap<i64, u64>,
    heartbeat_interval: Duration,
    stopped: bool,
}

/// How a call to the orchestrator failed.
#[derive(Debug)]
enum Failure {
    /// The session is fenced, expired or unknown: register again.
    Session,
    /// The orchestrator refused the call as invalid.
    Rejected(Status),
    /// The orchestrator could not be reached (or the breaker is open).
    Unreachable(String),
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn request_id() -> String {
    format!("wc-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

fn is_session_error(status: &Status) -> bool {
    status.code() == Code::FailedPrecondition
        && status
            .get_error_details()
            .error_info()
            .is_some_and(|info| orchestrator_proto::reason::is_session_reason(&info.reason))
}

/// Creates a client with the original Python factory's arguments.
///
/// ```no_run
/// # async fn run() -> Result<(), worker_client::Error> {
/// use std::time::Duration;
/// let client = worker_client::create_resilient_worker_client(
///     "http://orchestrator:50051", "worker-prod-01", 50,
///     3, Duration::from_secs(30), 5, Duration::from_millis(500),
/// ).await?;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// As [`ClientBuilder::build`].
#[allow(clippy::too_many_arguments)]
pub async fn create_resilient_worker_client(
    orchestrator_url: &str,
    server_id: &str,
    max_streams: u32,
    circuit_failure_threshold: u32,
    circuit_recovery_timeout: Duration,
    retry_max_attempts: u32,
    retry_base_delay: Duration,
) -> Result<ResilientWorkerClient, Error> {
    ResilientWorkerClient::builder(orchestrator_url, server_id)
        .max_streams(max_streams)
        .circuit_failure_threshold(circuit_failure_threshold)
        .circuit_recovery_timeout(circuit_recovery_timeout)
        .retry_max_attempts(retry_max_attempts)
        .retry_base_delay(retry_base_delay)
        .build()
        .await
}

/// The health report, in the original client's JSON shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    /// This worker.
    pub server_id: String,
    /// The last call to the orchestrator succeeded and the client is in
    /// normal mode.
    pub orchestrator_available: bool,
    /// The client is in local mode.
    pub local_mode_active: bool,
    /// Streams the worker may process now.
    pub assigned_streams: usize,
    /// `closed`, `open`, `half_open` (or `forced_open` / `forced_closed`).
    pub circuit_breaker_state: String,
    /// Time of the last successful call, ISO 8601 (UTC), or `null`.
    pub last_orchestrator_contact: Option<String>,
    /// Counters.
    pub metrics: HealthMetrics,
}

/// The counters of a [`HealthReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HealthMetrics {
    /// Calls to the orchestrator (each counted once, retries aside).
    pub total_requests: u64,
    /// Calls that succeeded.
    pub successful_requests: u64,
    /// Calls that failed after their retries (or were refused by the breaker).
    pub failed_requests: u64,
    /// Times the breaker opened.
    pub circuit_breaker_trips: u64,
    /// Times the client entered local mode.
    pub local_mode_activations: u64,
    /// Retries made.
    pub retry_attempts: u64,
}

impl HealthReport {
    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

impl ResilientWorkerClient {
    /// A builder with the original client's defaults.
    pub fn builder(orchestrator_url: impl Into<String>, server_id: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(orchestrator_url, server_id)
    }

    pub(crate) async fn from_config(config: ClientConfig) -> Result<Self, Error> {
        let endpoint = Endpoint::from_shared(config.orchestrator_url.clone())
            .map_err(|e| Error::Config { setting: "orchestrator_url", problem: e.to_string() })?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true);
        let channel = endpoint.connect_lazy();
        let (path, id, sync_full) = (config.state_path.clone(), config.server_id.clone(), config.state_sync_full);
        let (state, snapshot) =
            tokio::task::spawn_blocking(move || StateHandle::open(&path, &id, sync_full))
                .await
                .map_err(|e| Error::State { path: config.state_path.clone(), reason: e.to_string() })??;
        if snapshot.from_earlier_run {
            tracing::info!(
                path = %config.state_path.display(),
                leases = snapshot.leases.len(),
                unsynced_records = snapshot.unsynced,
                "resuming from the state file of an earlier run"
            );
        }
        let heartbeat_interval = config.heartbeat_interval.unwrap_or(Duration::from_secs(5));
        let session = snapshot.session.map(|(session_id, worker_epoch)| v1::SessionRef {
            server_id: config.server_id.clone(),
            session_id,
            worker_epoch,
        });
        let last_contact = snapshot
            .last_contact_ms
            .and_then(|ms| u64::try_from(ms).ok())
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
        let (leases, _) = watch::channel(LeaseSet { leases: snapshot.leases.clone(), local_mode: false });
        let (stop, _) = watch::channel(false);
        Ok(Self {
            inner: Arc::new(Inner {
                breaker: CircuitBreaker::new(config.breaker.clone()),
                retry: Retry::new(config.retry),
                grpc: WorkerServiceClient::new(channel),
                state,
                core: Mutex::new(Core {
                    session,
                    leases: snapshot.leases,
                    to_ack: Vec::new(),
                    pending_releases: snapshot.pending_releases,
                    heartbeat_interval,
                    stopped: false,
                }),
                leases,
                next_sequence: AtomicU64::new(snapshot.next_sequence),
                records_waiting: AtomicBool::new(snapshot.unsynced > 0),
                local: AtomicBool::new(false),
                halted: AtomicBool::new(false),
                metrics: Metrics::default(),
                last_contact: StdMutex::new(last_contact),
                started_at: tokio::time::Instant::now(),
                stop,
                task: StdMutex::new(None),
                config,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Registers (or enters local mode if the orchestrator is unreachable)
    /// and starts the background task that heartbeats in normal mode and
    /// probes for the orchestrator in local mode. Idempotent.
    ///
    /// # Errors
    ///
    /// [`Error::Rejected`] if the orchestrator refuses the registration
    /// (for example a `max_streams` above its limit); [`Error::State`].
    pub async fn start(&self) -> Result<(), Error> {
        self.register().await?;
        let mut task = self.inner.task.lock().unwrap_or_else(|p| p.into_inner());
        if task.is_none() {
            let client = self.clone();
            *task = Some(tokio::spawn(async move {
                let watchdog = client.limit_watchdog();
                tokio::select! {
                    () = client.background() => {}
                    () = watchdog => {}
                }
            }));
        }
        Ok(())
    }

    /// The current lease set, updated on every change. Stop processing a
    /// stream as soon as it leaves the set.
    pub fn leases(&self) -> watch::Receiver<LeaseSet> {
        self.inner.leases.subscribe()
    }

    /// Registers with the orchestrator presenting the leases held (from an
    /// earlier session or run), applies its keep/revoke answer, uploads
    /// unsynced processing records, and returns to normal mode.
    ///
    /// Returns `true` when registered, `false` when the orchestrator is
    /// unreachable (the client is then in local mode if it holds leases or
    /// has been out of touch for `local_mode_after`).
    ///
    /// # Errors
    ///
    /// [`Error::Rejected`] if the orchestrator refuses the request as
    /// invalid; [`Error::State`] if the state file fails; [`Error::ShutDown`].
    pub async fn register(&self) -> Result<bool, Error> {
        let mut core = self.inner.core.lock().await;
        self.register_locked(&mut core).await
    }

    /// Sends one heartbeat and applies the answer: new grants are added to
    /// the lease set (and acknowledged next time), revocations are removed
    /// from it and released. In local mode it returns `false` without an
    /// error, as the original client did.
    ///
    /// # Errors
    ///
    /// [`Error::Rejected`], [`Error::State`], [`Error::ShutDown`].
    pub async fn send_heartbeat(&self) -> Result<bool, Error> {
        let mut core = self.inner.core.lock().await;
        self.heartbeat_locked(&mut core).await
    }

    /// Asks for up to `count` more streams and returns the ids granted. In
    /// local mode it returns the streams held, as the original client did.
    ///
    /// # Errors
    ///
    /// [`Error::Rejected`] (for example `count` above `max_streams`),
    /// [`Error::State`], [`Error::ShutDown`].
    pub async fn request_streams(&self, count: u32) -> Result<Vec<i64>, Error> {
        let mut core = self.inner.core.lock().await;
        if core.stopped {
            return Err(Error::ShutDown);
        }
        if self.is_local() {
            return Ok(core.leases.keys().copied().collect());
        }
        if core.session.is_none() && !self.register_locked(&mut core).await? {
            return Ok(core.leases.keys().copied().collect());
        }
        self.request_streams_locked(&mut core, count).await
    }

    async fn request_streams_locked(&self, core: &mut Core, count: u32) -> Result<Vec<i64>, Error> {
        let Some(session) = core.session.clone() else { return Ok(Vec::new()) };
        let request = v1::RequestStreamsRequest { session: Some(session), count, request_id: request_id() };
        let answer = self.call(request, |mut grpc, request| async move { grpc.request_streams(request).await });
        match answer.await {
            Ok(r) => {
                let granted = self.accept_grants(core, &r.granted);
                self.persist_leases(core).await?;
                self.publish(core);
                Ok(granted.iter().map(|l| l.stream_id).collect())
            }
            Err(failure) => self.on_failure(core, failure).await.map(|()| Vec::new()),
        }
    }

    /// Gives streams back. They leave the lease set at once. Returns `true`
    /// when the orchestrator confirmed, `false` when the release was recorded
    /// locally (orchestrator unreachable) and will be replayed.
    ///
    /// # Errors
    ///
    /// [`Error::Rejected`], [`Error::State`], [`Error::ShutDown`].
    pub async fn release_streams(&self, stream_ids: &[i64]) -> Result<bool, Error> {
        let mut core = self.inner.core.lock().await;
        if core.stopped {
            return Err(Error::ShutDown);
        }
        let leases: Vec<v1::Lease> = stream_ids
            .iter()
            .filter_map(|id| core.leases.get(id).map(|&epoch| v1::Lease { stream_id: *id, lease_epoch: epoch }))
            .collect();
        if leases.is_empty() {
            return Ok(true);
        }
        for l in &leases {
            core.leases.remove(&l.stream_id);
            core.to_ack.retain(|a| a.stream_id != l.stream_id);
        }
        self.publish(&core);
        self.persist_leases(&core).await?;
        self.release_locked(&mut core, leases).await
    }

    /// Whether this worker may process `stream_id` now: it holds a lease and
    /// processing has not been stopped by the local-mode limit.
    pub fn can_process_stream(&self, stream_id: i64) -> bool {
        self.inner.leases.borrow().contains(stream_id)
    }

    /// Records that a chunk of `stream_id` was processed, under its current
    /// lease epoch, with the next sequence number. Returns the sequence once
    /// the record is durable in the state file (see the durability rule in
    /// the crate's `state` documentation: it survives a SIGKILL of the
    /// worker). Records reach the orchestrator with the next sync; each
    /// exactly once.
    ///
    /// Concurrent calls are committed together, so calling this for every
    /// processed chunk is cheap.
    ///
    /// # Errors
    ///
    /// [`Error::NotLeased`] if the stream is not in the lease set;
    /// [`Error::State`] if the write fails.
    pub async fn record_stream_processing(&self, stream_id: i64) -> Result<u64, Error> {
        let (epoch, local) = {
            let set = self.inner.leases.borrow();
            (set.epoch(stream_id), set.local_mode())
        };
        let Some(lease_epoch) = epoch else { return Err(Error::NotLeased(stream_id)) };
        let sequence = self.inner.next_sequence.fetch_add(1, Ordering::Relaxed);
        let record = Record { sequence, stream_id, lease_epoch, processed_at_ms: now_ms(), local_mode: local };
        self.inner.state.write(vec![Op::Record(record)]).await?;
        self.inner.records_waiting.store(true, Ordering::Release);
        Ok(sequence)
    }

    /// The seed's health report.
    pub async fn health_check(&self) -> HealthReport {
        let local = self.is_local();
        let last = *self.inner.last_contact.lock().unwrap_or_else(|p| p.into_inner());
        let breaker = self.inner.breaker.stats();
        let m = &self.inner.metrics;
        HealthReport {
            server_id: self.inner.config.server_id.clone(),
            orchestrator_available: !local && breaker.state == CircuitState::Closed && last.is_some(),
            local_mode_active: local,
            assigned_streams: self.inner.leases.borrow().len(),
            circuit_breaker_state: breaker.state.as_str().to_owned(),
            last_orchestrator_contact: last.map(|t| humantime::format_rfc3339_millis(t).to_string()),
            metrics: HealthMetrics {
                total_requests: m.total.load(Ordering::Relaxed),
                successful_requests: m.successful.load(Ordering::Relaxed),
                failed_requests: m.failed.load(Ordering::Relaxed),
                circuit_breaker_trips: breaker.trips,
                local_mode_activations: m.local_mode_activations.load(Ordering::Relaxed),
                retry_attempts: self.inner.retry.stats().retries,
            },
        }
    }

    /// The health report plus configuration, local state, breaker
    /// statistics and history, and retry counters, as JSON.
    pub async fn detailed_status(&self) -> serde_json::Value {
        let health = self.health_check().await;
        let core = self.inner.core.lock().await;
        let counts = self.inner.state.counts().await.ok();
        let b = self.inner.breaker.stats();
        let r = self.inner.retry.stats();
        let c = &self.inner.config;
        serde_json::json!({
            "health": health.to_json(),
            "configuration": {
                "orchestrator_url": c.orchestrator_url,
                "server_id": c.server_id,
                "max_streams": c.max_streams,
                "circuit_failure_threshold": c.breaker.failure_threshold(),
                "circuit_recovery_timeout_ms": c.breaker.recovery_timeout().as_millis() as u64,
                "circuit_success_threshold": c.breaker.success_threshold(),
                "retry_max_attempts": c.retry.max_attempts(),
                "retry_base_delay_ms": c.retry.base_delay().as_millis() as u64,
                "retry_max_delay_ms": c.retry.max_delay().as_millis() as u64,
                "state_path": c.state_path.display().to_string(),
                "local_mode_after_ms": c.local_mode_after.as_millis() as u64,
                "local_mode_limit_ms": c.local_mode_limit.map(|d| d.as_millis() as u64),
            },
            "local_state": {
                "session": core.session.as_ref().map(|s| serde_json::json!({"session_id": s.session_id, "worker_epoch": s.worker_epoch})),
                "leases": core.leases.iter().map(|(s, e)| serde_json::json!({"stream_id": s, "lease_epoch": e})).collect::<Vec<_>>(),
                "pending_releases": core.pending_releases.keys().collect::<Vec<_>>(),
                "processing_halted": self.inner.halted.load(Ordering::Relaxed),
                "records": counts.map(|c| c.0),
                "unsynced_records": counts.map(|c| c.1),
                "next_sequence": self.inner.next_sequence.load(Ordering::Relaxed),
                "heartbeat_interval_ms": core.heartbeat_interval.as_millis() as u64,
            },
            "circuit_breaker": {
                "state": b.state.as_str(),
                "total_calls": b.total_calls,
                "successful_calls": b.successful_calls,
                "failed_calls": b.failed_calls,
                "rejected_calls": b.rejected_calls,
                "timed_out_calls": b.timed_out_calls,
                "trips": b.trips,
                "time_in_state_ms": b.time_in_state.as_millis() as u64,
                "history": self.inner.breaker.history().iter().map(|t| serde_json::json!({
                    "at": humantime::format_rfc3339_millis(t.at).to_string(),
                    "from": t.from.as_str(), "to": t.to.as_str(), "cause": t.cause.to_string(),
                })).collect::<Vec<_>>(),
            },
            "retry": { "attempts": r.attempts, "retries": r.retries, "give_ups": r.give_ups, "budget_exhausted": r.budget_exhausted },
        })
    }

    /// Stops the background task, releases every stream (or records the
    /// release locally), deregisters, and flushes the state file. The
    /// heartbeat keeps the session alive until the streams are released.
    pub async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        let task = self.inner.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let mut core = self.inner.core.lock().await;
        if core.stopped {
            return;
        }
        // Upload what was recorded, while the leases are still ours.
        if !self.is_local()
            && core.session.is_some()
            && let Err(e) = self.sync_records(&mut core).await
        {
            tracing::warn!(error = %e, "could not upload the last processing records; they stay in the state file");
        }
        let leases: Vec<v1::Lease> =
            core.leases.iter().map(|(&stream_id, &lease_epoch)| v1::Lease { stream_id, lease_epoch }).collect();
        core.leases.clear();
        core.to_ack.clear();
        self.publish(&core);
        if let Err(e) = self.persist_leases(&core).await {
            tracing::warn!(error = %e, "could not record the released leases");
        }
        if !leases.is_empty()
            && let Err(e) = self.release_locked(&mut core, leases).await
        {
            tracing::warn!(error = %e, "could not release the streams");
        }
        if !self.is_local()
            && let Some(session) = core.session.clone()
        {
            let request = v1::DeregisterRequest { session: Some(session), request_id: request_id() };
            let result = self.call(request, |mut grpc, request| async move { grpc.deregister(request).await }).await;
            match result {
                Ok(_) => tracing::info!("deregistered"),
                Err(f) => tracing::warn!(failure = ?f, "could not deregister; the session will expire"),
            }
        }
        core.stopped = true;
        self.inner.state.close();
    }

    // ------------------------------------------------------------ internals

    fn is_local(&self) -> bool {
        self.inner.local.load(Ordering::Acquire)
    }

    /// Publishes the lease set the application may process.
    fn publish(&self, core: &Core) {
        let local = self.is_local();
        let halted = self.inner.halted.load(Ordering::Acquire);
        let leases = if halted || core.stopped { BTreeMap::new() } else { core.leases.clone() };
        self.inner.leases.send_if_modified(|set| {
            let next = LeaseSet { leases, local_mode: local };
            if *set == next {
                false
            } else {
                *set = next;
                true
            }
        });
    }

    async fn persist_leases(&self, core: &Core) -> Result<(), Error> {
        self.inner.state.write(vec![Op::Leases(core.leases.clone())]).await
    }

    /// One RPC through retry and breaker, classified for gRPC. `rpc` makes
    /// one attempt from a client handle and a copy of `request` (the same
    /// request, so the same `request_id`, on every attempt).
    async fn call<Req, T, F, Fut>(&self, request: Req, rpc: F) -> Result<T, Failure>
    where
        Req: Clone,
        F: Fn(WorkerServiceClient<Channel>, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let f = || rpc(self.inner.grpc.clone(), request.clone());
        let m = &self.inner.metrics;
        m.total.fetch_add(1, Ordering::Relaxed);
        let breaker = &self.inner.breaker;
        let is_failure = |s: &Status| grpc::breaker_outcome(grpc::status_code(s)) == Outcome::Failure;
        let classify = CallError::retry_action(grpc::retry_action);
        let result = self.inner.retry.execute(&classify, None, || breaker.call_with(is_failure, &f)).await;
        match result {
            Ok(response) => {
                m.successful.fetch_add(1, Ordering::Relaxed);
                *self.inner.last_contact.lock().unwrap_or_else(|p| p.into_inner()) = Some(SystemTime::now());
                Ok(response.into_inner())
            }
            Err(e) => {
                m.failed.fetch_add(1, Ordering::Relaxed);
                Err(match e {
                    CallError::Inner(status) if is_session_error(&status) => Failure::Session,
                    CallError::Inner(status) if grpc::is_caller_error(grpc::status_code(&status)) => {
                        Failure::Rejected(status)
                    }
                    other => Failure::Unreachable(other.to_string()),
                })
            }
        }
    }

    /// What a failed call means for the client.
    async fn on_failure(&self, core: &mut Core, failure: Failure) -> Result<(), Error> {
        match failure {
            Failure::Rejected(status) => {
                Err(Error::Rejected { code: status.code(), message: status.message().to_owned() })
            }
            Failure::Session => {
                tracing::info!("session no longer valid; registering again");
                core.session = None;
                Box::pin(self.register_locked(core)).await.map(|_| ())
            }
            Failure::Unreachable(why) => {
                tracing::debug!(%why, "orchestrator unreachable");
                self.maybe_enter_local(core, &why).await
            }
        }
    }

    async fn maybe_enter_local(&self, core: &mut Core, why: &str) -> Result<(), Error> {
        if self.is_local() {
            return Ok(());
        }
        let open = self.inner.breaker.state().is_open();
        let silent_for = self.silent_for();
        let holding = !core.leases.is_empty() && core.session.is_none();
        if open || silent_for >= self.inner.config.local_mode_after || holding {
            self.inner.local.store(true, Ordering::Release);
            self.inner.metrics.local_mode_activations.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(reason = %why, leases = core.leases.len(), "orchestrator unreachable: entering local mode");
            self.inner
                .state
                .write(vec![Op::Transition { at_ms: now_ms(), mode: "local", reason: why.to_owned() }])
                .await?;
            self.publish(core);
        }
        Ok(())
    }

    async fn leave_local(&self) -> Result<(), Error> {
        if !self.is_local() {
            return Ok(());
        }
        self.inner.local.store(false, Ordering::Release);
        self.inner.halted.store(false, Ordering::Release);
        tracing::info!("orchestrator reachable again: back to normal mode");
        self.inner
            .state
            .write(vec![Op::Transition { at_ms: now_ms(), mode: "normal", reason: "reconnected".into() }])
            .await
    }

    async fn register_locked(&self, core: &mut Core) -> Result<bool, Error> {
        if core.stopped {
            return Err(Error::ShutDown);
        }
        let held: Vec<v1::Lease> =
            core.leases.iter().map(|(&stream_id, &lease_epoch)| v1::Lease { stream_id, lease_epoch }).collect();
        let request = v1::RegisterRequest {
            server_id: self.inner.config.server_id.clone(),
            max_streams: self.inner.config.max_streams,
            request_id: request_id(),
            held_leases: held.clone(),
            client_version: self.inner.config.client_version.clone(),
        };
        let answer = self.call(request, |mut grpc, request| async move { grpc.register(request).await }).await;
        let r = match answer {
            Ok(r) => r,
            Err(Failure::Session) => return Ok(false), // cannot happen for Register
            Err(Failure::Rejected(s)) => {
                return Err(Error::Rejected { code: s.code(), message: s.message().to_owned() });
            }
            Err(Failure::Unreachable(why)) => {
                self.maybe_enter_local(core, &why).await?;
                self.publish(core);
                return Ok(false);
            }
        };
        let Some(session) =
            r.session.filter(|s| s.server_id == self.inner.config.server_id && !s.session_id.is_empty())
        else {
            tracing::warn!("the orchestrator answered Register without a usable session; ignoring the answer");
            return Ok(false);
        };
        // Keep what the orchestrator confirmed; a lease without a decision is dropped.
        let kept: BTreeMap<i64, u64> = r
            .held_lease_decisions
            .iter()
            .filter(|d| d.kind == v1::LeaseDecisionKind::Keep as i32)
            .filter_map(|d| d.lease)
            .filter(|l| core.leases.get(&l.stream_id) == Some(&l.lease_epoch))
            .map(|l| (l.stream_id, l.lease_epoch))
            .collect();
        let dropped: Vec<v1::Lease> = core
            .leases
            .iter()
            .filter(|(s, _)| !kept.contains_key(s))
            .map(|(&stream_id, &lease_epoch)| v1::Lease { stream_id, lease_epoch })
            .collect();
        if !dropped.is_empty() {
            tracing::info!(
                dropped = dropped.len(),
                kept = kept.len(),
                "the orchestrator revoked leases held from before"
            );
        }
        core.leases = kept;
        core.to_ack.clear();
        // Releases made while away were not presented: the orchestrator
        // already counts them as released.
        let released: Vec<i64> = std::mem::take(&mut core.pending_releases).into_keys().collect();
        if let Some(interval) = r.heartbeat_interval.and_then(|d| Duration::try_from(d).ok()) {
            core.heartbeat_interval = self
                .inner
                .config
                .heartbeat_interval
                .unwrap_or(interval.clamp(Duration::from_millis(10), Duration::from_secs(300)));
        }
        core.session = Some(session.clone());
        self.inner
            .state
            .write(vec![
                Op::Session { session_id: session.session_id.clone(), worker_epoch: session.worker_epoch },
                Op::Contact { at_ms: now_ms() },
                Op::Leases(core.leases.clone()),
                Op::ReleasesDone(released),
            ])
            .await?;
        tracing::info!(worker_epoch = session.worker_epoch, leases = core.leases.len(), "registered");
        self.inner.halted.store(false, Ordering::Release);
        self.leave_local().await?;
        self.publish(core);
        // Revoked leases may still be reserved for us (over capacity, a
        // removed stream): release them so they can move. For leases that
        // moved already the orchestrator answers `not_held`.
        if !dropped.is_empty() {
            self.release_locked(core, dropped).await?;
        }
        self.sync_records(core).await?;
        Ok(true)
    }

    /// Uploads unsynced records in batches; marks them synced once the
    /// orchestrator acknowledged them. Runs after every registration and,
    /// in normal mode, once per heartbeat when something was recorded.
    async fn sync_records(&self, core: &mut Core) -> Result<(), Error> {
        loop {
            let batch = self.inner.state.unsynced(SYNC_BATCH).await?;
            if batch.is_empty() {
                return Ok(());
            }
            let Some(session) = core.session.clone() else { return Ok(()) };
            let held: Vec<v1::Lease> =
                core.leases.iter().map(|(&stream_id, &lease_epoch)| v1::Lease { stream_id, lease_epoch }).collect();
            let records: Vec<v1::ProcessingRecord> = batch
                .iter()
                .map(|r| v1::ProcessingRecord {
                    stream_id: r.stream_id,
                    lease_epoch: r.lease_epoch,
                    processed_at: Some(prost_types::Timestamp {
                        seconds: r.processed_at_ms.div_euclid(1000),
                        nanos: (r.processed_at_ms.rem_euclid(1000) * 1_000_000) as i32,
                    }),
                    sequence: r.sequence,
                    local_mode: r.local_mode,
                })
                .collect();
            let last = batch.last().map_or(0, |r| r.sequence);
            let request = v1::SyncLocalStateRequest {
                session: Some(session),
                held_leases: held,
                records,
                request_id: request_id(),
            };
            let answer =
                self.call(request, |mut grpc, request| async move { grpc.sync_local_state(request).await }).await;
            match answer {
                Ok(r) => {
                    let revoked = self.apply_decisions(core, &r.decisions);
                    let through = r.acknowledged_through_sequence.min(last);
                    if r.stale_records > 0 {
                        tracing::info!(stale = r.stale_records, "uploaded records made under an old lease epoch");
                    }
                    self.inner.state.write(vec![Op::SyncedThrough(through), Op::Leases(core.leases.clone())]).await?;
                    // Stop first (publish), then release: the orchestrator
                    // waits for the release before it reassigns.
                    self.publish(core);
                    if !revoked.is_empty() {
                        self.release_locked(core, revoked).await?;
                    }
                    if through < last {
                        tracing::warn!(
                            through,
                            last,
                            "the orchestrator acknowledged fewer records than sent; will retry"
                        );
                        self.inner.records_waiting.store(true, Ordering::Release);
                        return Ok(());
                    }
                }
                Err(failure) => {
                    self.inner.records_waiting.store(true, Ordering::Release);
                    return self.on_failure(core, failure).await;
                }
            }
        }
    }

    /// Drops the leases the orchestrator revoked; returns them, to be
    /// released once the application has been told to stop.
    fn apply_decisions(&self, core: &mut Core, decisions: &[v1::LeaseDecision]) -> Vec<v1::Lease> {
        let mut revoked = Vec::new();
        for d in decisions {
            if d.kind != v1::LeaseDecisionKind::Keep as i32
                && let Some(l) = d.lease
                && core.leases.get(&l.stream_id) == Some(&l.lease_epoch)
            {
                core.leases.remove(&l.stream_id);
                core.to_ack.retain(|a| a.stream_id != l.stream_id);
                revoked.push(l);
            }
        }
        revoked
    }

    /// Adds valid grants, within `max_streams`; returns the ones added.
    fn accept_grants(&self, core: &mut Core, grants: &[v1::Lease]) -> Vec<v1::Lease> {
        let mut accepted = Vec::new();
        for l in grants {
            if l.stream_id <= 0 || l.lease_epoch == 0 {
                tracing::warn!(stream_id = l.stream_id, lease_epoch = l.lease_epoch, "ignoring an invalid grant");
                continue;
            }
            match core.leases.get(&l.stream_id) {
                Some(&epoch) if epoch >= l.lease_epoch => {
                    // Already held at this epoch (a repeated grant), or a stale one.
                    if epoch == l.lease_epoch {
                        accepted.push(*l);
                    }
                    continue;
                }
                Some(_) => {}
                None if core.leases.len() >= self.inner.config.max_streams as usize => {
                    tracing::warn!(stream_id = l.stream_id, "ignoring a grant beyond max_streams");
                    continue;
                }
                None => {}
            }
            core.leases.insert(l.stream_id, l.lease_epoch);
            accepted.push(*l);
        }
        accepted
    }

    async fn heartbeat_locked(&self, core: &mut Core) -> Result<bool, Error> {
        if core.stopped {
            return Err(Error::ShutDown);
        }
        if self.is_local() {
            return Ok(false);
        }
        let Some(session) = core.session.clone() else {
            return self.register_locked(core).await;
        };
        let acknowledged = std::mem::take(&mut core.to_ack);
        let request = v1::HeartbeatRequest {
            session: Some(session),
            processing_count: core.leases.len() as u32,
            acknowledged: acknowledged.clone(),
        };
        let answer = self.call(request, |mut grpc, request| async move { grpc.heartbeat(request).await }).await;
        let r = match answer {
            Ok(r) => r,
            Err(failure) => {
                core.to_ack = acknowledged;
                self.on_failure(core, failure).await?;
                return Ok(false);
            }
        };
        // The session is alive: processing may resume if the limit stopped it.
        self.inner.halted.store(false, Ordering::Release);
        if let Some(next) = r.next_heartbeat_interval.and_then(|d| Duration::try_from(d).ok())
            && self.inner.config.heartbeat_interval.is_none()
        {
            core.heartbeat_interval = next.clamp(Duration::from_millis(10), Duration::from_secs(300));
        }
        let before = core.leases.len();
        core.to_ack = self.accept_grants(core, &r.assign);
        // Every revoke is released, also of a lease this worker never
        // started (granted and revoked between two heartbeats): the
        // orchestrator waits for that release before it moves the stream.
        let mut revoked: Vec<v1::Lease> =
            r.revoke.iter().filter_map(|d| d.lease).filter(|l| l.stream_id > 0 && l.lease_epoch > 0).collect();
        revoked.sort_by_key(|l| l.stream_id);
        revoked.dedup_by_key(|l| l.stream_id);
        for l in &revoked {
            if core.leases.get(&l.stream_id) == Some(&l.lease_epoch) {
                core.leases.remove(&l.stream_id);
            }
            core.to_ack.retain(|a| a.stream_id != l.stream_id);
        }
        if core.leases.len() != before || !revoked.is_empty() {
            tracing::info!(
                assigned = r.assign.len(),
                revoked = revoked.len(),
                held = core.leases.len(),
                "leases changed"
            );
            self.persist_leases(core).await?;
        }
        // Stop first (publish), then release.
        self.publish(core);
        if !revoked.is_empty() {
            self.release_locked(core, revoked).await?;
        }
        if !core.pending_releases.is_empty() {
            let pending: Vec<v1::Lease> = core
                .pending_releases
                .iter()
                .map(|(&stream_id, &lease_epoch)| v1::Lease { stream_id, lease_epoch })
                .collect();
            self.release_locked(core, pending).await?;
        }
        Ok(true)
    }

    /// Releases leases already removed from the lease set; records them
    /// locally if the orchestrator cannot be told now.
    async fn release_locked(&self, core: &mut Core, leases: Vec<v1::Lease>) -> Result<bool, Error> {
        let session = if self.is_local() { None } else { core.session.clone() };
        if let Some(session) = session {
            let request =
                v1::ReleaseStreamsRequest { session: Some(session), leases: leases.clone(), request_id: request_id() };
            let answer =
                self.call(request, |mut grpc, request| async move { grpc.release_streams(request).await }).await;
            match answer {
                Ok(_) => {
                    let done: Vec<i64> = leases.iter().map(|l| l.stream_id).collect();
                    for id in &done {
                        core.pending_releases.remove(id);
                    }
                    self.inner.state.write(vec![Op::ReleasesDone(done)]).await?;
                    return Ok(true);
                }
                Err(Failure::Rejected(s)) => {
                    return Err(Error::Rejected { code: s.code(), message: s.message().to_owned() });
                }
                Err(failure) => {
                    // Fencing or unreachable: keep the release for later.
                    let mut ops = Vec::new();
                    for l in &leases {
                        core.pending_releases.insert(l.stream_id, l.lease_epoch);
                        ops.push(Op::PendingRelease { stream_id: l.stream_id, lease_epoch: l.lease_epoch });
                    }
                    self.inner.state.write(ops).await?;
                    self.on_failure(core, failure).await?;
                    return Ok(false);
                }
            }
        }
        let ops = leases
            .iter()
            .map(|l| {
                core.pending_releases.insert(l.stream_id, l.lease_epoch);
                Op::PendingRelease { stream_id: l.stream_id, lease_epoch: l.lease_epoch }
            })
            .collect();
        self.inner.state.write(ops).await?;
        Ok(false)
    }

    /// The background task: heartbeats in normal mode, a reconnect probe
    /// with jittered backoff in local mode, the local-mode limit.
    async fn background(&self) {
        let mut stop = self.inner.stop.subscribe();
        let mut backoff = resilience::retry::Backoff::new(self.inner.config.reconnect);
        loop {
            let wait = {
                let core = self.inner.core.lock().await;
                if self.is_local() { self.next_probe(&mut backoff) } else { core.heartbeat_interval }
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(wait) => {}
            }
            let mut core = self.inner.core.lock().await;
            if core.stopped {
                return;
            }
            let result = if self.is_local() {
                let r = self.register_locked(&mut core).await;
                if matches!(r, Ok(true)) {
                    backoff.reset();
                }
                r.map(|_| ())
            } else {
                match self.heartbeat_locked(&mut core).await {
                    // Upload what was recorded since the last time, once per heartbeat.
                    Ok(true) if !self.is_local() && self.inner.records_waiting.swap(false, Ordering::AcqRel) => {
                        self.sync_records(&mut core).await
                    }
                    other => other.map(|_| ()),
                }
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "background call failed");
            }
        }
    }

    /// How long to wait before the next reconnect probe in local mode: the
    /// jittered backoff, but no earlier than the circuit breaker admits a
    /// call (a probe it would refuse proves nothing). Logged at info, so an
    /// operator sees the worker is trying, and when it tries next.
    fn next_probe(&self, backoff: &mut resilience::retry::Backoff) -> Duration {
        let delay = backoff.next_delay();
        let open_for = self.inner.breaker.stats().open_remaining.unwrap_or_default();
        let wait = delay.max(open_for);
        let secs = wait.as_secs_f64();
        if open_for > delay {
            tracing::info!(
                "orchestrator unreachable; next probe in {secs:.1} s, when the circuit breaker lets a call through"
            );
        } else {
            tracing::info!("orchestrator unreachable; next probe in {secs:.1} s");
        }
        wait
    }

    /// Time since the last successful call (or since start, if none).
    fn silent_for(&self) -> Duration {
        match *self.inner.last_contact.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(t) => t.elapsed().unwrap_or_default(),
            None => self.inner.started_at.elapsed(),
        }
    }

    /// Enforces the local-mode limit on its own clock, so that a call stuck
    /// on a dead link (holding the protocol lock) cannot delay it. The limit
    /// counts from the last successful call, the same instant the
    /// orchestrator's session timeout counts from: with a limit below
    /// `session_timeout` the worker stops before its streams can move.
    async fn limit_watchdog(&self) {
        let Some(limit) = self.inner.config.local_mode_limit else {
            return std::future::pending().await;
        };
        loop {
            let silent = self.silent_for();
            if silent >= limit {
                if !self.inner.halted.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        ?limit,
                        "local-mode limit reached: stopping processing until the orchestrator answers"
                    );
                    self.inner.leases.send_if_modified(|set| {
                        let changed = !set.leases.is_empty();
                        set.leases.clear();
                        changed
                    });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            } else {
                tokio::time::sleep(limit - silent).await;
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.state.close();
    }
}
