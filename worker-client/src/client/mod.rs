//! The client's public API: [`ResilientWorkerClient`], its construction and
//! its methods. The rest of the client, one concern a file:
//!
//! - `rpc.rs`: the one path to the orchestrator (retry, breaker,
//!   classification) and what a failure means;
//! - `protocol.rs`: the protocol steps under the protocol lock (register,
//!   heartbeat, request, release, upload records) and the mode changes;
//! - `leases.rs`: the protocol state (`Core`) and its pure transitions;
//! - `background.rs`: the task the client owns (heartbeats, reconnect
//!   probes, the local-mode limit);
//! - `health.rs`: the seed's health report and the detailed status.

mod background;
mod health;
mod leases;
mod protocol;
mod rpc;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use orchestrator_proto::v1;
use orchestrator_proto::v1::worker_service_client::WorkerServiceClient;
use resilience::{CircuitBreaker, Retry};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use health::Metrics;
pub use health::{HealthMetrics, HealthReport, Mode, WorkerMetrics};
use leases::Core;
use rpc::request_id;

use crate::config::{ClientBuilder, ClientConfig};
use crate::state::{NewRecord, Op, StateHandle};
use crate::{Error, LeaseSet};

/// A resilient client for one worker. Cheap to clone; clones share
/// everything. See the [crate documentation](crate).
///
/// **Dropping is a crash.** When the last handle is dropped without
/// [`shutdown`](Self::shutdown), the background work stops at once: no
/// more heartbeats, no release, no deregistration. The orchestrator sees
/// the session expire after its `session_timeout` and moves the streams;
/// the state file keeps the leases and unsynced records, and the next run
/// presents and uploads them. Call `shutdown` for a clean stop.
#[derive(Debug, Clone)]
pub struct ResilientWorkerClient {
    inner: Arc<Inner>,
    /// Held by the application's handles, not by the background task: the
    /// last one dropped stops the background work.
    life: Option<Arc<Lifetime>>,
}

/// The background task, aborted when the last application handle goes.
#[derive(Debug, Default)]
struct Lifetime {
    task: StdMutex<Option<JoinHandle<()>>>,
}

impl Drop for Lifetime {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

/// What [`ResilientWorkerClient::shutdown`] did, and what it could not do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// The orchestrator confirmed `Deregister`: the worker's streams are
    /// free for others at once, and the state file holds no lease. When
    /// false (orchestrator unreachable, local mode, deadline) the session
    /// expires after the orchestrator's session timeout, and the state file
    /// keeps the leases for the next run to present.
    pub deregistered: bool,
    /// Processing records the orchestrator has not acknowledged; they stay
    /// in the state file and the next run uploads them (in standalone mode
    /// records are never uploaded and this is 0).
    pub records_unsynced: u64,
    /// The deadline passed before everything was done.
    pub timed_out: bool,
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    /// The channel calls go over; replaced by a fresh one from the
    /// connector after a call that got no answer.
    grpc: StdMutex<WorkerServiceClient<Channel>>,
    breaker: CircuitBreaker,
    retry: Retry,
    state: StateHandle,
    core: Mutex<Core>,
    leases: watch::Sender<LeaseSet>,
    next_sequence: AtomicU64,
    /// Records written since the last upload.
    records_waiting: AtomicBool,
    /// This state file has registered with an orchestrator before (it had
    /// a session when opened, or registered in this run).
    ever_registered: AtomicBool,
    /// A Register of this run succeeded: the leases held are the ones the
    /// orchestrator kept.
    confirmed: AtomicBool,
    /// `shutdown` has begun: nothing is published or registered any more,
    /// even if it cannot take the protocol lock in time.
    stopping: AtomicBool,
    local: AtomicBool,
    /// Index in `config.endpoints` of the endpoint calls go to.
    endpoint: std::sync::atomic::AtomicUsize,
    /// Why the client is in local mode (the health report's
    /// `local_mode_reason`).
    local_reason: StdMutex<Option<String>>,
    /// Processing stopped by the local-mode limit.
    halted: AtomicBool,
    metrics: Metrics,
    /// The orchestrator answered the last call (false from the first call
    /// it did not answer until the next it does).
    last_call_answered: AtomicBool,
    /// When the attempt in flight started, if one is.
    in_flight_since: StdMutex<Option<tokio::time::Instant>>,
    /// The protocol state as last published, for `detailed_status` while a
    /// call holds the protocol lock.
    view: StdMutex<CoreView>,
    /// The last successful call, by the wall clock (for the health report).
    last_contact: StdMutex<Option<SystemTime>>,
    /// The last successful call of this run, by the monotonic clock: what
    /// `local_mode_after` and the local-mode limit count from (a wall-clock
    /// step cannot shorten or disable them).
    contact_at: StdMutex<Option<tokio::time::Instant>>,
    /// Silence already accumulated at start: the wall time since the
    /// earlier run's last contact (read once).
    silent_at_start: Duration,
    started_at: tokio::time::Instant,
    stop: watch::Sender<bool>,
}

/// What `detailed_status` shows of the protocol state.
#[derive(Debug, Clone, Default)]
struct CoreView {
    session: Option<(String, u64)>,
    leases: Vec<(i64, u64)>,
    pending_releases: Vec<i64>,
    heartbeat_interval: Duration,
}

impl CoreView {
    fn of(core: &Core) -> Self {
        Self {
            session: core.session.as_ref().map(|s| (s.session_id.clone(), s.worker_epoch)),
            leases: core.leases.iter().map(|(&s, &e)| (s, e)).collect(),
            pending_releases: core.pending_releases.keys().copied().collect(),
            heartbeat_interval: core.heartbeat_interval,
        }
    }
}

/// Marks an attempt in flight for as long as it lives (also when the
/// attempt is cancelled).
struct InFlight<'a>(&'a StdMutex<Option<tokio::time::Instant>>);

impl<'a> InFlight<'a> {
    fn start(slot: &'a StdMutex<Option<tokio::time::Instant>>) -> Self {
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(tokio::time::Instant::now());
        Self(slot)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
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

impl ResilientWorkerClient {
    /// A builder with the original client's defaults.
    pub fn builder(orchestrator_url: impl Into<String>, server_id: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(orchestrator_url, server_id)
    }

    /// A builder for **standalone mode** (the seed's "orchestrator
    /// disabled"): no orchestrator at all. The worker processes exactly
    /// `streams` (no lease epochs: they read as 0), records stay durable in
    /// the state file, `health_check` reports `mode: standalone`, and no
    /// call leaves the process: `register` and `send_heartbeat` answer
    /// `false`, `request_streams` the streams, `release_streams` drops
    /// streams locally.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), worker_client::Error> {
    /// let client = worker_client::ResilientWorkerClient::standalone("worker-01", (1..=10).collect())
    ///     .state_path("/var/lib/worker/state.db")
    ///     .build()
    ///     .await?;
    /// client.start().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn standalone(server_id: impl Into<String>, streams: Vec<i64>) -> ClientBuilder {
        ClientBuilder::standalone(server_id, streams)
    }

    pub(super) fn is_standalone(&self) -> bool {
        self.inner.config.standalone.is_some()
    }

    pub(crate) async fn from_config(config: ClientConfig) -> Result<Self, Error> {
        for endpoint in config.endpoints.iter().skip(1) {
            // Each must be usable; only the first is dialled (lazily) now.
            config.connector.0.connect(endpoint).map_err(|e| Error::Config {
                setting: "orchestrator_url",
                problem: format!("{endpoint}: the connector cannot make a channel: {e}"),
                source: Some(Arc::from(e)),
            })?;
        }
        let channel = config.connector.0.connect(&config.endpoints[0]).map_err(|e| Error::Config {
            setting: "orchestrator_url",
            problem: format!("the connector cannot make a channel: {e}"),
            source: Some(Arc::from(e)),
        })?;
        let (path, id, sync_full) = (config.state_path.clone(), config.server_id.clone(), config.state_sync_full);
        let (delay, history) = (config.state_write_delay, config.state_history);
        let (state, snapshot) = if config.state_on_runtime {
            StateHandle::open(&path, &id, sync_full, delay, history, true)?
        } else {
            tokio::task::spawn_blocking(move || StateHandle::open(&path, &id, sync_full, delay, history, false))
                .await
                .map_err(|e| Error::State {
                    path: config.state_path.clone(),
                    reason: e.to_string(),
                    source: Some(Arc::new(e)),
                })??
        };
        if snapshot.from_earlier_run {
            tracing::info!(
                path = %config.state_path.display(),
                leases = snapshot.leases.len(),
                unsynced_records = snapshot.unsynced,
                "resuming from the state file of an earlier run"
            );
        }
        let heartbeat_interval = config.heartbeat_interval.unwrap_or(Duration::from_secs(5));
        let ever_registered = snapshot.session.is_some();
        let session = snapshot.session.map(|(session_id, worker_epoch)| v1::SessionRef {
            server_id: config.server_id.clone(),
            session_id,
            worker_epoch,
        });
        let last_contact = snapshot
            .last_contact_ms
            .and_then(|ms| u64::try_from(ms).ok())
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
        let silent_at_start =
            last_contact.map_or(Duration::ZERO, |t| (config.wall_clock)().duration_since(t).unwrap_or_default());
        // Nothing is processable before this run has heard from the
        // orchestrator or entered local mode: the state file's leases may
        // have moved to another worker while this one was down (found by
        // the simulation: a restarted worker showed them for one round
        // trip, in normal mode, while their new owner processed them).
        let (leases, _) = watch::channel(LeaseSet::default());
        let (stop, _) = watch::channel(false);
        let held = match &config.standalone {
            Some(streams) => streams.iter().map(|&s| (s, 0)).collect(),
            None => snapshot.leases,
        };
        let core = Core {
            session,
            leases: held,
            to_ack: Vec::new(),
            pending_releases: snapshot.pending_releases,
            heartbeat_interval,
            stopped: false,
            sync_batch: protocol::SYNC_BATCH,
        };
        let metrics = Metrics::default();
        metrics.records_unsynced.store(snapshot.unsynced, Ordering::Relaxed);
        Ok(Self {
            inner: Arc::new(Inner {
                breaker: CircuitBreaker::new(config.breaker.clone()),
                retry: Retry::new(config.retry),
                grpc: StdMutex::new(WorkerServiceClient::new(channel)),
                state,
                view: StdMutex::new(CoreView::of(&core)),
                core: Mutex::new(core),
                leases,
                next_sequence: AtomicU64::new(snapshot.next_sequence),
                records_waiting: AtomicBool::new(snapshot.unsynced > 0),
                ever_registered: AtomicBool::new(ever_registered),
                confirmed: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                local: AtomicBool::new(false),
                endpoint: std::sync::atomic::AtomicUsize::new(0),
                local_reason: StdMutex::new(None),
                halted: AtomicBool::new(false),
                metrics,
                last_call_answered: AtomicBool::new(false),
                in_flight_since: StdMutex::new(None),
                last_contact: StdMutex::new(last_contact),
                contact_at: StdMutex::new(None),
                silent_at_start,
                started_at: tokio::time::Instant::now(),
                stop,
                config,
            }),
            life: Some(Arc::new(Lifetime::default())),
        })
    }

    /// Now on the configured wall clock, Unix milliseconds.
    pub(super) fn now_ms(&self) -> i64 {
        unix_ms((self.inner.config.wall_clock)())
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
        if self.is_standalone() {
            let core = self.inner.core.lock().await;
            self.publish(&core);
            tracing::info!(streams = core.leases.len(), "standalone mode: no orchestrator");
            return Ok(());
        }
        self.register().await?;
        let Some(life) = &self.life else { return Ok(()) };
        let mut task = life.task.lock().unwrap_or_else(|p| p.into_inner());
        if task.is_none() {
            // The task's handle does not keep the client alive.
            let client = Self { inner: Arc::clone(&self.inner), life: None };
            *task = Some(tokio::spawn(async move {
                let watchdog = client.limit_watchdog();
                // Biased: the watchdog first when both are ready, and the
                // same order on every run (a deterministic simulation
                // replays it).
                tokio::select! {
                    biased;
                    () = watchdog => {}
                    () = client.background() => {}
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
        if self.is_local() || self.is_standalone() {
            return Ok(core.leases.keys().copied().collect());
        }
        if core.session.is_none() && !self.register_locked(&mut core).await? {
            return Ok(core.leases.keys().copied().collect());
        }
        self.request_streams_locked(&mut core, count).await
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
            core.drop_lease(l.stream_id);
        }
        self.publish(&core);
        if self.is_standalone() {
            return Ok(true);
        }
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
        let standalone = self.is_standalone();
        let record =
            NewRecord { stream_id, lease_epoch, processed_at_ms: self.now_ms(), local_mode: local, synced: standalone };
        // The state thread numbers records in commit order: no gap below a
        // committed sequence, so an upload never skips a record.
        let m = &self.inner.metrics;
        if standalone {
            // Durable, never to be uploaded: written as synced, so the
            // history limit keeps the file bounded and a later orchestrated
            // run with this file has nothing of epoch 0 to upload.
            let sequence = self.inner.state.record(record).await?;
            m.records_made.fetch_add(1, Ordering::Relaxed);
            return Ok(sequence);
        }
        // Counted before the write, so that an upload of the record cannot
        // come before its count (the counter would drift upwards).
        m.records_unsynced.fetch_add(1, Ordering::Relaxed);
        let sequence = match self.inner.state.record(record).await {
            Ok(sequence) => sequence,
            Err(e) => {
                m.records_unsynced.fetch_sub(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        self.inner.next_sequence.fetch_max(sequence + 1, Ordering::Relaxed);
        m.records_made.fetch_add(1, Ordering::Relaxed);
        self.inner.records_waiting.store(true, Ordering::Release);
        Ok(sequence)
    }

    /// Stops cleanly within the configured
    /// [`shutdown_timeout`](crate::ClientBuilder::shutdown_timeout)
    /// (default 10 s): stops the background task, stops processing
    /// (the lease set becomes empty), uploads the records not synced yet,
    /// and deregisters, which releases every stream at once. Nothing is
    /// released before the `Deregister`, so no stream is granted back to
    /// this worker in between. The state file is closed (checkpointed: no
    /// WAL left beside it). Later calls fail with [`Error::ShutDown`].
    ///
    /// In local mode, or if the orchestrator does not answer in time, the
    /// session expires on its own and the state file keeps the leases and
    /// records for the next run; the report says what was not done.
    pub async fn shutdown(&self) -> ShutdownReport {
        self.shutdown_within(self.inner.config.shutdown_timeout).await
    }

    /// [`shutdown`](Self::shutdown) with a deadline of its own.
    pub async fn shutdown_within(&self, limit: Duration) -> ShutdownReport {
        let deadline = tokio::time::Instant::now() + limit;
        // From here on nothing is published or registered, whoever holds
        // the protocol lock: processing stops now, deadline or not.
        self.inner.stopping.store(true, Ordering::Release);
        self.inner.leases.send_if_modified(|set| {
            let changed = !set.leases.is_empty();
            set.leases.clear();
            changed
        });
        self.inner.stop.send_replace(true);
        if let Some(task) = self.life.as_ref().and_then(|l| l.task.lock().unwrap_or_else(|p| p.into_inner()).take()) {
            // A call in flight would hold the protocol lock until its own
            // deadline: stop the task now.
            task.abort();
            let _ = task.await;
        }
        let mut report = ShutdownReport::default();
        let steps = async {
            let mut core = self.inner.core.lock().await;
            if core.stopped {
                return;
            }
            core.stopped = true;
            self.publish(&core); // stop processing first
            if self.is_local() || self.is_standalone() || core.session.is_none() {
                return;
            }
            // Upload what was recorded, while the leases are still ours.
            if let Err(e) = self.sync_records(&mut core).await {
                tracing::warn!(error = %e, "could not upload the last processing records; they stay in the state file");
            }
            let Some(session) = core.session.clone() else { return };
            let request = v1::DeregisterRequest { session: Some(session), request_id: request_id() };
            match self.call(request, |mut grpc, request| async move { grpc.deregister(request).await }).await {
                Ok(_) => {
                    tracing::info!("deregistered: every stream released");
                    core.leases.clear();
                    core.to_ack.clear();
                    let released: Vec<i64> = std::mem::take(&mut core.pending_releases).into_keys().collect();
                    let ops = vec![Op::Leases(BTreeMap::new()), Op::ReleasesDone(released)];
                    match self.inner.state.write(ops).await {
                        Ok(()) => report.deregistered = true,
                        Err(e) => tracing::warn!(error = %e, "deregistered, but could not record it in the state file"),
                    }
                }
                Err(f) => tracing::warn!(failure = ?f, "could not deregister; the session will expire"),
            }
        };
        if tokio::time::timeout_at(deadline, steps).await.is_err() {
            report.timed_out = true;
            tracing::warn!(?limit, "shutdown did not finish in time; the session will expire");
        }
        // From the state file itself (the counter is approximate when the
        // background task was stopped in the middle of an upload).
        let m = &self.inner.metrics;
        if let Ok((_, unsynced)) = self.inner.state.counts().await {
            m.records_unsynced.store(unsynced, Ordering::Relaxed);
        }
        report.records_unsynced = m.records_unsynced.load(Ordering::Relaxed);
        // Closing gets what is left of the deadline, and at least 100 ms.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(100));
        if let Err(e) = self.inner.state.close_and_wait(left).await {
            tracing::warn!(error = %e, "the state file was not closed cleanly");
        }
        report
    }

    // ------------------------------------------------------------ internals

    fn is_local(&self) -> bool {
        self.inner.local.load(Ordering::Acquire)
    }

    /// The mode, from published state.
    fn mode(&self) -> Mode {
        if self.is_standalone() {
            Mode::Standalone
        } else if self.inner.halted.load(Ordering::Acquire) {
            Mode::Halted
        } else if self.is_local() {
            Mode::Local
        } else {
            Mode::Normal
        }
    }

    /// How long the attempt in flight has been, if one is.
    fn in_flight_for(&self) -> Option<Duration> {
        self.inner.in_flight_since.lock().unwrap_or_else(|p| p.into_inner()).map(|t| t.elapsed())
    }

    /// An attempt has been in flight longer than a heartbeat interval (or
    /// `local_mode_after`, if shorter).
    fn call_overdue(&self) -> bool {
        let interval = self.inner.view.lock().unwrap_or_else(|p| p.into_inner()).heartbeat_interval;
        self.in_flight_for().is_some_and(|d| d > interval.min(self.inner.config.local_mode_after))
    }

    /// The protocol state now, or as last published while a call holds it.
    fn core_view(&self) -> CoreView {
        match self.inner.core.try_lock() {
            Ok(core) => CoreView::of(&core),
            Err(_) => self.inner.view.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// A handle on the current channel.
    fn grpc(&self) -> WorkerServiceClient<Channel> {
        self.inner.grpc.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Drops the current connection: the next call goes over a fresh
    /// channel from the connector (a connection stuck on a dead link, or to
    /// a hung peer, is never reused), to the next endpoint when there are
    /// several.
    fn fresh_connection(&self) {
        let endpoints = &self.inner.config.endpoints;
        let next = (self.inner.endpoint.load(Ordering::Acquire) + 1) % endpoints.len();
        match self.inner.config.connector.0.connect(&endpoints[next]) {
            Ok(channel) => {
                *self.inner.grpc.lock().unwrap_or_else(|p| p.into_inner()) = WorkerServiceClient::new(channel);
                self.inner.endpoint.store(next, Ordering::Release);
                tracing::debug!(endpoint = %endpoints[next], "dropped the connection; the next call opens a fresh one");
            }
            Err(e) => tracing::warn!(error = %e, "the connector could not make a fresh channel; keeping the old one"),
        }
    }

    /// Calls go to `url` from now on (the leader a standby named): one of
    /// the endpoints, or an address the client was not given.
    fn switch_to(&self, url: &str) {
        let endpoints = &self.inner.config.endpoints;
        let known = endpoints.iter().position(|e| e.trim_end_matches('/') == url.trim_end_matches('/'));
        match self.inner.config.connector.0.connect(known.map_or(url, |i| endpoints[i].as_str())) {
            Ok(channel) => {
                *self.inner.grpc.lock().unwrap_or_else(|p| p.into_inner()) = WorkerServiceClient::new(channel);
                if let Some(i) = known {
                    self.inner.endpoint.store(i, Ordering::Release);
                }
                tracing::info!(leader = %url, "following the leader's address");
            }
            Err(e) => {
                tracing::warn!(leader = %url, error = %e, "cannot connect to the leader named; trying the next endpoint");
                self.fresh_connection();
            }
        }
    }

    /// Publishes the lease set the application may process.
    fn publish(&self, core: &Core) {
        *self.inner.view.lock().unwrap_or_else(|p| p.into_inner()) = CoreView::of(core);
        self.inner.leases.send_if_modified(|set| {
            // The flags are read under the watch's lock, where the
            // local-mode limit's watchdog sets them: a halt is never undone
            // by a publish that read them before it.
            let local = self.is_local();
            let halted = self.inner.halted.load(Ordering::Acquire);
            let stopping = self.inner.stopping.load(Ordering::Acquire);
            // Past the local-mode limit nothing is processable, even before
            // the watchdog has noticed (a worker restarted after a long
            // silence enters local mode already past it).
            let standalone = self.is_standalone();
            let over_limit = !standalone && self.inner.config.local_mode_limit.is_some_and(|l| self.silent_for() >= l);
            // In normal mode, nothing before this run's first registration:
            // the state file's leases are only presented, not yet kept.
            let unconfirmed = !local && !standalone && !self.inner.confirmed.load(Ordering::Acquire);
            let leases = if halted || over_limit || unconfirmed || core.stopped || stopping {
                BTreeMap::new()
            } else {
                core.leases.clone()
            };
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
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.state.close();
    }
}
