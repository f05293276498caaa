//! The `orchestrator.v1` gRPC services.
//!
//! Every RPC follows the same path: validate what the engine does not,
//! lock the engine, apply the event, take the engine's [`Change`]s, submit
//! them to the store while still holding the lock (so the disk sees the
//! decisions in order), unlock, wait until the batch is durable, answer.
//! Calls that change nothing (most heartbeats) wait only for batches
//! submitted before them, so no answer reports a decision that is not yet
//! on disk. A storage failure is fatal: the answer is `INTERNAL` and the
//! server shuts down (a restart rebuilds everything from the store).

mod liveness;
mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use orchestrator_proto::v1;
use orchestrator_proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use orchestrator_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::engine::{Change, Engine, EngineConfig, EngineError, Millis, Overview, StreamId, WorkerView};
use crate::metrics::Metrics;
use crate::store::{
    AuditEvent, Batch, Loaded, RecordRow, RecordUpload, RecordsOutcome, StoreError, StoreHandle, StreamMeta,
};

/// Limits of the service beyond the engine's.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The engine's timings and limits.
    pub engine: EngineConfig,
    /// The wall clock: read once at start (the service's wall time is that
    /// reading plus the monotonic time since) and for `server_time`.
    /// `SystemTime::now`, except in the simulation, which runs on simulated
    /// time.
    pub wall_clock: fn() -> SystemTime,
    /// Where to count grants, moves and expiries (`None`: not counted).
    pub metrics: Option<Arc<Metrics>>,
}

impl ServiceConfig {
    /// The engine's settings with the system's wall clock.
    pub fn new(engine: EngineConfig) -> Self {
        Self { engine, wall_clock: SystemTime::now, metrics: None }
    }
}

/// The system clock, Unix milliseconds.
pub(crate) fn unix_now_ms() -> i64 {
    status::unix_ms(SystemTime::now())
}

/// What the dashboard shows of the fleet (`GET /api/v1/status`), copied
/// under the engine lock in O(workers + shown).
#[derive(Debug, Clone)]
pub struct FleetView {
    /// Counts and the first unassigned and revoking streams.
    pub overview: Overview,
    /// The first workers by server_id, each with its client version and
    /// last heartbeat (Unix ms).
    pub workers: Vec<(WorkerView, String, i64)>,
    /// Every worker the engine knows.
    pub workers_total: usize,
    /// The orchestrator's clock, Unix ms.
    pub server_time_ms: i64,
    /// End of the restart grace period, Unix ms.
    pub grace_ends_at_ms: Option<i64>,
}

/// The state behind both services. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Orchestrator {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    store: StoreHandle,
    started: tokio::time::Instant,
    started_wall_ms: i64,
    fatal: watch::Sender<Option<String>>,
    /// The heartbeat fast path's view of the live sessions.
    sessions: liveness::Sessions,
    heartbeat_interval: Duration,
    metrics: Option<Arc<Metrics>>,
}

#[derive(Debug)]
struct State {
    engine: Engine,
    meta: HashMap<StreamId, StreamMeta>,
    versions: HashMap<String, String>,
}

const MAX_NAME: usize = 256;
const MAX_URL: usize = 2048;
const MAX_VERSION: usize = 256;
const MAX_REASON: usize = 1024;
const DEFAULT_PAGE: usize = 1000;
const MAX_PAGE: usize = 10_000;

impl Orchestrator {
    /// Builds the engine from what the store loaded: a fresh engine for an
    /// empty database, otherwise a restored one in its grace period.
    pub fn new(config: ServiceConfig, loaded: Loaded, store: StoreHandle) -> Self {
        let started = tokio::time::Instant::now();
        // Anything persisted (even only a pause, or the epoch floor) is restored.
        let fresh = loaded.state.workers.is_empty()
            && loaded.state.streams.is_empty()
            && loaded.state.worker_epoch_floor == 0
            && !loaded.state.rebalancing_paused;
        let engine = if fresh {
            Engine::new(config.engine.clone())
        } else {
            Engine::restore(config.engine.clone(), loaded.state, 0)
        };
        let (fatal, _) = watch::channel(None);
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State { engine, meta: loaded.meta, versions: loaded.client_versions }),
                store,
                started,
                started_wall_ms: status::unix_ms((config.wall_clock)()),
                fatal,
                sessions: liveness::Sessions::default(),
                heartbeat_interval: Duration::from_millis(config.engine.heartbeat_interval),
                metrics: config.metrics,
            }),
        }
    }

    /// The worker-facing gRPC service.
    pub fn worker_service(&self) -> WorkerServiceServer<WorkerApi> {
        WorkerServiceServer::new(WorkerApi { o: self.clone() })
    }

    /// The admin gRPC service.
    pub fn admin_service(&self) -> AdminServiceServer<AdminApi> {
        AdminServiceServer::new(AdminApi { o: self.clone() })
    }

    /// Fires with a reason when the orchestrator must stop (storage failed).
    pub fn fatal(&self) -> watch::Receiver<Option<String>> {
        self.shared.fatal.subscribe()
    }

    /// Commits what the store has queued and stops it (shutdown).
    pub fn close_store(&self) {
        self.shared.store.close();
    }

    /// Cluster figures, for logs and tests.
    ///
    /// # Errors
    ///
    /// INTERNAL if the engine lock is poisoned (the server is stopping).
    pub fn status(&self) -> Result<crate::engine::ClusterStatus, Status> {
        Ok(self.lock()?.engine.status())
    }

    /// Fleet counts and the first `list` unassigned and revoking streams
    /// (see [`Overview`]).
    ///
    /// # Errors
    ///
    /// INTERNAL if the engine lock is poisoned (the server is stopping).
    pub fn overview(&self, list: usize) -> Result<Overview, Status> {
        Ok(self.lock()?.engine.overview(list))
    }

    /// The dashboard's view: the overview with `list` streams of each kind
    /// and the first `workers` workers.
    ///
    /// # Errors
    ///
    /// INTERNAL if the engine lock is poisoned (the server is stopping).
    pub fn fleet_view(&self, workers: usize, list: usize) -> Result<FleetView, Status> {
        let st = self.lock()?;
        let overview = st.engine.overview(list);
        let (page, _) = st.engine.workers_page(None, workers);
        let workers = page
            .into_iter()
            .map(|w| {
                let stamp = self.shared.sessions.stamp(&w.server_id);
                let last = self.wall_ms(stamp.map_or(w.last_heartbeat, |s| s.max(w.last_heartbeat)));
                let version = st.versions.get(&w.server_id).cloned().unwrap_or_default();
                (w, version, last)
            })
            .collect();
        let workers_total = overview.workers_by_state.iter().map(|&n| n as usize).sum();
        let grace_ends_at_ms = overview.status.grace_until.map(|t| self.wall_ms(t));
        drop(st);
        Ok(FleetView {
            overview,
            workers,
            workers_total,
            server_time_ms: self.wall_ms(self.now_ms()),
            grace_ends_at_ms,
        })
    }

    /// The newest `limit` audit events, newest first (a bounded store
    /// read, queued behind the commits before it).
    ///
    /// # Errors
    ///
    /// The store's error.
    pub async fn recent_events(&self, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        self.shared.store.recent_events(limit).await
    }

    /// Whether the orchestrator stopped serving (storage failed, the lease
    /// was lost, the engine lock was poisoned).
    pub fn stopped(&self) -> bool {
        self.shared.fatal.borrow().is_some()
    }

    /// Advances the engine's clock: expiries, the brake, the end of grace,
    /// placements. The server calls it on a timer.
    ///
    /// # Errors
    ///
    /// A `Status` if the store failed (the server then shuts down).
    pub async fn tick(&self) -> Result<(), Status> {
        self.run(|st, now| {
            // Heartbeats answered on the fast path count before anyone expires.
            self.shared.sessions.fold(&mut st.engine, now);
            st.engine.tick(now);
            Ok(((), Batch::default()))
        })
        .await
        .map(|_| ())
    }

    /// The engine lock. A poisoned lock (a panic while it was held) may
    /// guard a half-updated engine: that is fatal, like a storage failure.
    /// The call gets INTERNAL, the server reports NOT_SERVING and stops, and
    /// a restart rebuilds the engine from the store.
    fn lock(&self) -> Result<MutexGuard<'_, State>, Status> {
        self.shared.state.lock().map_err(|_| {
            let reason = "internal error: a panic while the engine lock was held; the state in memory cannot be \
                          trusted, restart to rebuild it from the store";
            self.stop_serving(reason);
            Status::internal(format!("{reason}; the orchestrator is shutting down"))
        })
    }

    /// Stops serving because this replica no longer leads (see
    /// [`crate::store::leader`]): at once, the heartbeat fast path
    /// included, as for a storage failure; the server shuts down.
    pub fn step_down(&self, reason: &str) {
        self.stop_serving(reason);
    }

    /// Something fatal happened (storage failed, the engine lock is
    /// poisoned): the heartbeat fast path stops answering, and the server
    /// is told to stop (NOT_SERVING, shut down; a restart rebuilds from the
    /// store). The first reason wins.
    fn stop_serving(&self, reason: &str) {
        self.shared.sessions.close();
        if self.shared.fatal.borrow().is_none() {
            tracing::error!("{reason}; shutting down");
            self.shared.fatal.send_replace(Some(reason.to_owned()));
        }
    }

    fn now_ms(&self) -> Millis {
        u64::try_from(self.shared.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn wall_ms(&self, engine_ms: Millis) -> i64 {
        self.shared.started_wall_ms.saturating_add(i64::try_from(engine_ms).unwrap_or(i64::MAX))
    }

    fn heartbeat_interval(st: &State) -> Duration {
        Duration::from_millis(st.engine.config().heartbeat_interval)
    }

    /// Applies one event under the lock, submits its changes, waits for
    /// durability, and returns the event's value.
    async fn run<T>(
        &self,
        event: impl FnOnce(&mut State, Millis) -> Result<(T, Batch), EngineError>,
    ) -> Result<(T, Option<RecordsOutcome>), Status> {
        self.run_reporting(event, |_| true).await
    }

    /// As [`run`](Self::run); `reports_decisions` says whether the answer
    /// carries decisions made by other calls. An event that changed nothing
    /// and reports nothing (a heartbeat with no assignment or revocation,
    /// the common case) does not wait for other calls' batches.
    async fn run_reporting<T>(
        &self,
        event: impl FnOnce(&mut State, Millis) -> Result<(T, Batch), EngineError>,
        reports_decisions: impl FnOnce(&T) -> bool,
    ) -> Result<(T, Option<RecordsOutcome>), Status> {
        let (result, pending, own_changes) = {
            let mut st = self.lock()?;
            let now = self.now_ms();
            // The event's batch is moved, not copied: it may carry thousands
            // of processing records, and this runs under the engine lock.
            let (result, mut batch) = match event(&mut st, now) {
                Ok((value, batch)) => (Ok(value), batch),
                Err(e) => (Err(e), Batch::default()),
            };
            batch.changes = st.engine.take_changes();
            log_changes(&batch.changes);
            if let Some(metrics) = &self.shared.metrics {
                metrics.observe_changes(&batch.changes);
            }
            self.shared.sessions.publish_changes(&st.engine, &batch.changes);
            for change in &batch.changes {
                if let Change::WorkerPruned { server_id } = change {
                    st.versions.remove(server_id);
                }
            }
            batch.at_ms = self.wall_ms(now);
            let own_changes = !batch.is_empty();
            (result, self.shared.store.submit(batch), own_changes)
        };
        if !own_changes && result.as_ref().is_ok_and(|value| !reports_decisions(value)) {
            return Ok((result.map_err(status::engine_error)?, None));
        }
        let outcome = pending.wait().await.map_err(|e| {
            self.stop_serving(&format!("storage failed: {e}"));
            status::store_error(&e)
        })?;
        Ok((result.map_err(status::engine_error)?, outcome))
    }
}

fn log_changes(changes: &[Change]) {
    for c in changes {
        match c {
            Change::WorkerRegistered { server_id, worker_epoch, max_streams } => {
                tracing::info!(%server_id, worker_epoch, max_streams, "worker registered");
            }
            Change::WorkerExpired { server_id } => tracing::warn!(%server_id, "worker session expired"),
            Change::WorkerLeft { server_id } => tracing::info!(%server_id, "worker deregistered"),
            Change::GraceEnded { missing } if missing.is_empty() => {
                tracing::info!("grace period over: every known worker re-registered");
            }
            Change::GraceEnded { missing } => {
                const SHOWN: usize = 20;
                let names = missing.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
                let more = missing.len().saturating_sub(SHOWN);
                tracing::warn!(
                    missing = missing.len(),
                    "grace period over: {} known worker(s) did not re-register ({names}{}); their sessions are \
                     expired and their streams are placed on the live workers (unless the mass-failure brake holds them)",
                    missing.len(),
                    if more > 0 { format!(" and {more} more") } else { String::new() }
                );
            }
            Change::WorkerPruned { server_id } => {
                tracing::debug!(%server_id, "worker forgotten after the retention period");
            }
            Change::LeaseGranted { server_id, lease } => tracing::debug!(%server_id, %lease, "lease granted"),
            Change::LeaseRevoking { server_id, lease, reason } => {
                tracing::debug!(%server_id, %lease, ?reason, "lease revoked, waiting for release");
            }
            Change::LeaseEnded { server_id, lease } => tracing::debug!(%server_id, %lease, "lease ended"),
            Change::StreamAdded { stream_id } => tracing::debug!(stream_id, "stream added"),
            Change::StreamRemoved { stream_id } => tracing::debug!(stream_id, "stream removed, deleted when released"),
            Change::StreamRestored { stream_id } => {
                tracing::debug!(stream_id, "stream added back before its removal completed")
            }
            Change::StreamDeleted { stream_id } => tracing::debug!(stream_id, "stream deleted"),
            Change::RebalancingPaused { paused } => tracing::info!(paused, "rebalancing paused changed"),
            Change::BrakeChanged { engaged: true } => tracing::warn!(
                "mass-failure brake engaged: many sessions expired together; their streams are held back until the \
                 workers return or an operator resumes rebalancing"
            ),
            Change::BrakeChanged { engaged: false } => tracing::info!("mass-failure brake released"),
        }
    }
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.len() > max {
        return Err(status::invalid(field, &format!("at most {max} bytes")));
    }
    // PostgreSQL's TEXT refuses NUL: a text the store could not keep is
    // refused here, with every backend, before anything changes.
    if value.contains('\0') {
        return Err(status::invalid(field, "must not contain NUL characters"));
    }
    Ok(())
}

/// Checks the caller may act as the session's server_id (see
/// [`crate::auth::authorize_worker`]). A missing session names server_id
/// "", which no worker credential names: PERMISSION_DENIED under
/// authentication, INVALID_ARGUMENT from the validation without it.
#[allow(clippy::result_large_err)]
fn authorize_session<T>(request: &Request<T>, session: Option<&v1::SessionRef>) -> Result<(), Status> {
    crate::auth::authorize_worker(request.extensions(), session.map_or("", |s| s.server_id.as_str()))
}

/// The worker-facing service.
#[derive(Debug, Clone)]
pub struct WorkerApi {
    o: Orchestrator,
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    #[tracing::instrument(skip_all, fields(server_id = %request.get_ref().server_id))]
    async fn register(&self, request: Request<v1::RegisterRequest>) -> Result<Response<v1::RegisterResponse>, Status> {
        crate::auth::authorize_worker(request.extensions(), &request.get_ref().server_id)?;
        let r = request.into_inner();
        check_len("client_version", &r.client_version, MAX_VERSION)?;
        let held = status::leases_in(&r.held_leases);
        let ((registered, interval, timeout), _) = self
            .o
            .run(|st, now| {
                let registered = st.engine.register(now, &r.server_id, r.max_streams, &r.request_id, &held)?;
                let interval = Orchestrator::heartbeat_interval(st);
                let timeout = Duration::from_millis(st.engine.config().session_timeout);
                let mut batch = Batch::default();
                if st.versions.get(&r.server_id) != Some(&r.client_version) && !r.client_version.is_empty() {
                    st.versions.insert(r.server_id.clone(), r.client_version.clone());
                    batch.client_version = Some((r.server_id.clone(), r.client_version.clone()));
                }
                Ok(((registered, interval, timeout), batch))
            })
            .await?;
        // Read after this registration's batch is durable: every upload
        // submitted before it is counted (the store commits in order).
        let acknowledged = self.o.shared.store.acknowledged_through(&r.server_id);
        Ok(Response::new(v1::RegisterResponse {
            session: Some(status::session_out(registered.session)),
            held_lease_decisions: registered.decisions.into_iter().map(status::decision_out).collect(),
            heartbeat_interval: Some(status::duration_out(interval)),
            session_timeout: Some(status::duration_out(timeout)),
            acknowledged_through_sequence: acknowledged,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        authorize_session(&request, request.get_ref().session.as_ref())?;
        let r = request.into_inner();
        let session = status::session(r.session)?;
        // The fast path: nothing to acknowledge, nothing waiting (see
        // `liveness.rs`): answered without the engine lock.
        if r.acknowledged.is_empty()
            && let Some(draining) = self.o.shared.sessions.beat(&session, self.o.now_ms())
        {
            return Ok(Response::new(v1::HeartbeatResponse {
                assign: Vec::new(),
                revoke: Vec::new(),
                next_heartbeat_interval: Some(status::duration_out(self.o.shared.heartbeat_interval)),
                draining,
            }));
        }
        let acknowledged = status::leases_in(&r.acknowledged);
        let sessions = &self.o.shared.sessions;
        let ((reply, interval), _) = self
            .o
            .run_reporting(
                |st, now| {
                    let reply = st.engine.heartbeat(now, &session, &acknowledged)?;
                    // Acknowledgements may leave it with nothing waiting.
                    sessions.publish(&st.engine, &session.server_id);
                    Ok(((reply, Orchestrator::heartbeat_interval(st)), Batch::default()))
                },
                |(reply, _)| !reply.assign.is_empty() || !reply.revoke.is_empty(),
            )
            .await?;
        Ok(Response::new(v1::HeartbeatResponse {
            assign: reply.assign.into_iter().map(status::lease_out).collect(),
            revoke: reply
                .revoke
                .into_iter()
                .map(|(l, reason)| status::decision_out(crate::engine::LeaseDecision::Revoke(l, reason)))
                .collect(),
            next_heartbeat_interval: Some(status::duration_out(interval)),
            draining: reply.draining,
        }))
    }

    async fn request_streams(
        &self,
        request: Request<v1::RequestStreamsRequest>,
    ) -> Result<Response<v1::RequestStreamsResponse>, Status> {
        authorize_session(&request, request.get_ref().session.as_ref())?;
        let r = request.into_inner();
        let session = status::session(r.session)?;
        let (granted, _) = self
            .o
            .run(|st, now| Ok((st.engine.request_streams(now, &session, r.count, &r.request_id)?, Batch::default())))
            .await?;
        Ok(Response::new(v1::RequestStreamsResponse { granted: granted.into_iter().map(status::lease_out).collect() }))
    }

    async fn release_streams(
        &self,
        request: Request<v1::ReleaseStreamsRequest>,
    ) -> Result<Response<v1::ReleaseStreamsResponse>, Status> {
        authorize_session(&request, request.get_ref().session.as_ref())?;
        let r = request.into_inner();
        let session = status::session(r.session)?;
        let leases = status::leases_in(&r.leases);
        let (released, _) = self
            .o
            .run(|st, now| Ok((st.engine.release_streams(now, &session, &leases, &r.request_id)?, Batch::default())))
            .await?;
        Ok(Response::new(v1::ReleaseStreamsResponse {
            released: released.released.into_iter().map(status::lease_out).collect(),
            not_held: released.not_held.into_iter().map(status::lease_out).collect(),
        }))
    }

    async fn sync_local_state(
        &self,
        request: Request<v1::SyncLocalStateRequest>,
    ) -> Result<Response<v1::SyncLocalStateResponse>, Status> {
        authorize_session(&request, request.get_ref().session.as_ref())?;
        let r = request.into_inner();
        let session = status::session(r.session)?;
        let held = status::leases_in(&r.held_leases);
        let records = validate_records(&r.records, self.o.lock()?.engine.config().max_list_len)?;
        if r.synced_below_sequence > i64::MAX as u64 {
            return Err(status::invalid("synced_below_sequence", "must be at most 9223372036854775807"));
        }
        if let Some(first) = records.first()
            && r.synced_below_sequence > first.sequence
        {
            return Err(status::invalid(
                "synced_below_sequence",
                "must not exceed the sequence of the first record of the batch",
            ));
        }
        let synced_below = r.synced_below_sequence;
        let upload =
            (!records.is_empty()).then(|| RecordUpload { server_id: session.server_id.clone(), records, synced_below });
        let (decisions, outcome) = self
            .o
            .run(|st, now| {
                let decisions = st.engine.sync_local_state(now, &session, &held, &r.request_id)?;
                // Reconciling may offer a lease again without a change.
                self.o.shared.sessions.publish(&st.engine, &session.server_id);
                Ok((decisions, Batch { records: upload, ..Batch::default() }))
            })
            .await?;
        let acknowledged = self.o.shared.store.acknowledged_through(&session.server_id);
        let outcome = outcome.unwrap_or_default();
        if outcome.stale > 0 {
            tracing::info!(server_id = %session.server_id, stale = outcome.stale, "records made under an old lease epoch");
        }
        Ok(Response::new(v1::SyncLocalStateResponse {
            decisions: decisions.into_iter().map(status::decision_out).collect(),
            acknowledged_through_sequence: acknowledged,
            stale_records: outcome.stale,
        }))
    }

    async fn deregister(
        &self,
        request: Request<v1::DeregisterRequest>,
    ) -> Result<Response<v1::DeregisterResponse>, Status> {
        authorize_session(&request, request.get_ref().session.as_ref())?;
        let r = request.into_inner();
        let session = status::session(r.session)?;
        self.o.run(|st, now| Ok((st.engine.deregister(now, &session, &r.request_id)?, Batch::default()))).await?;
        Ok(Response::new(v1::DeregisterResponse {}))
    }
}

fn validate_records(records: &[v1::ProcessingRecord], max: usize) -> Result<Vec<RecordRow>, Status> {
    if records.len() > max {
        return Err(status::invalid("records", &format!("at most {max} per call; upload in batches")));
    }
    let mut previous = 0u64;
    let mut rows = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let field = |name: &str| format!("records[{i}].{name}");
        if r.stream_id <= 0 {
            return Err(status::invalid(&field("stream_id"), "must be greater than 0"));
        }
        if r.lease_epoch == 0 {
            return Err(status::invalid(&field("lease_epoch"), "must be at least 1"));
        }
        if r.sequence > i64::MAX as u64 {
            return Err(status::invalid(&field("sequence"), "must be 1..=9223372036854775807"));
        }
        if r.sequence <= previous {
            return Err(status::invalid(
                &field("sequence"),
                "must be at least 1 and greater than the previous record's",
            ));
        }
        previous = r.sequence;
        let processed_at = r
            .processed_at
            .as_ref()
            .and_then(status::timestamp_in)
            .ok_or_else(|| status::invalid(&field("processed_at"), "required, a valid timestamp"))?;
        rows.push(RecordRow {
            stream_id: r.stream_id,
            lease_epoch: r.lease_epoch,
            processed_at_ms: processed_at,
            sequence: r.sequence,
            local_mode: r.local_mode,
        });
    }
    Ok(rows)
}

/// The admin service.
#[derive(Debug, Clone)]
pub struct AdminApi {
    o: Orchestrator,
}

impl From<Orchestrator> for AdminApi {
    fn from(o: Orchestrator) -> Self {
        Self { o }
    }
}

/// A list RPC's `page_size`: 0 is the default, anything above the maximum
/// is the maximum.
fn page_size(size: u32) -> usize {
    match size as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

fn bad_page_token() -> Status {
    status::invalid("page_token", "not a token this server returned")
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn add_streams(
        &self,
        request: Request<v1::AddStreamsRequest>,
    ) -> Result<Response<v1::AddStreamsResponse>, Status> {
        let r = request.into_inner();
        for (i, s) in r.streams.iter().enumerate() {
            check_len(&format!("streams[{i}].name"), &s.name, MAX_NAME)?;
            check_len(&format!("streams[{i}].source_url"), &s.source_url, MAX_URL)?;
        }
        if r.streams.is_empty() {
            return Err(status::invalid("streams", "must not be empty"));
        }
        let ids: Vec<StreamId> = r.streams.iter().map(|s| s.stream_id).collect();
        let ((added, present), _) = self
            .o
            .run(|st, now| {
                let (added, present) = st.engine.add_streams(now, &ids, &r.request_id)?;
                let mut batch = Batch::default();
                for s in r.streams.iter().filter(|s| added.contains(&s.stream_id)) {
                    if !s.name.is_empty() || !s.source_url.is_empty() {
                        let meta = StreamMeta { name: s.name.clone(), source_url: s.source_url.clone() };
                        st.meta.insert(s.stream_id, meta.clone());
                        batch.meta.push((s.stream_id, meta));
                    }
                }
                Ok(((added, present), batch))
            })
            .await?;
        if !added.is_empty() {
            tracing::info!(added = added.len(), "streams added");
        }
        Ok(Response::new(v1::AddStreamsResponse { added, already_present: present }))
    }

    async fn remove_streams(
        &self,
        request: Request<v1::RemoveStreamsRequest>,
    ) -> Result<Response<v1::RemoveStreamsResponse>, Status> {
        let r = request.into_inner();
        if r.stream_ids.is_empty() {
            return Err(status::invalid("stream_ids", "must not be empty"));
        }
        let ((removed, not_found), _) = self
            .o
            .run(|st, now| {
                let out = st.engine.remove_streams(now, &r.stream_ids, &r.request_id)?;
                for id in &out.0 {
                    st.meta.remove(id);
                }
                Ok((out, Batch::default()))
            })
            .await?;
        if !removed.is_empty() {
            tracing::info!(removed = removed.len(), "streams removed");
        }
        Ok(Response::new(v1::RemoveStreamsResponse { removed, not_found }))
    }

    async fn list_streams(
        &self,
        request: Request<v1::ListStreamsRequest>,
    ) -> Result<Response<v1::ListStreamsResponse>, Status> {
        let r = request.into_inner();
        let size = page_size(r.page_size);
        // The token is the last stream id returned.
        let after = if r.page_token.is_empty() { 0 } else { r.page_token.parse().map_err(|_| bad_page_token())? };
        let st = self.o.lock()?;
        let (page, more) = st.engine.streams_page(after, size);
        let streams: Vec<v1::StreamInfo> = page
            .into_iter()
            .map(|(id, lease)| {
                let meta = st.meta.get(&id).cloned().unwrap_or_default();
                v1::StreamInfo {
                    spec: Some(v1::StreamSpec { stream_id: id, name: meta.name, source_url: meta.source_url }),
                    owner_server_id: lease
                        .as_ref()
                        .filter(|l| l.owner_live)
                        .map(|l| l.server_id.clone())
                        .unwrap_or_default(),
                    lease_epoch: lease.as_ref().map_or(0, |l| l.lease.lease_epoch),
                    state: lease
                        .as_ref()
                        .map_or(v1::StreamState::Unassigned, |l| status::stream_state(l.state, l.owner_live))
                        as i32,
                }
            })
            .collect();
        let next =
            if more { streams.last().and_then(|s| s.spec.as_ref()).map(|s| s.stream_id.to_string()) } else { None };
        Ok(Response::new(v1::ListStreamsResponse { streams, next_page_token: next.unwrap_or_default() }))
    }

    async fn list_workers(
        &self,
        request: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        let r = request.into_inner();
        let size = page_size(r.page_size);
        // The token is the last server_id returned.
        let after = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
        if let Some(token) = after {
            crate::engine::validate_server_id(token).map_err(|_| bad_page_token())?;
        }
        let st = self.o.lock()?;
        let (page, more) = st.engine.workers_page(after, size);
        let workers: Vec<v1::WorkerInfo> = page
            .into_iter()
            .map(|w| {
                // Heartbeats answered on the fast path are folded lazily.
                let stamp = self.o.shared.sessions.stamp(&w.server_id);
                let last_heartbeat = stamp.map_or(w.last_heartbeat, |s| s.max(w.last_heartbeat));
                v1::WorkerInfo {
                    client_version: st.versions.get(&w.server_id).cloned().unwrap_or_default(),
                    server_id: w.server_id,
                    worker_epoch: w.worker_epoch,
                    state: status::worker_state(w.state) as i32,
                    max_streams: w.max_streams,
                    assigned_streams: w.owned,
                    last_heartbeat: Some(status::timestamp_ms(self.o.wall_ms(last_heartbeat))),
                }
            })
            .collect();
        let next = if more { workers.last().map(|w| w.server_id.clone()) } else { None };
        Ok(Response::new(v1::ListWorkersResponse { workers, next_page_token: next.unwrap_or_default() }))
    }

    async fn list_assignments(
        &self,
        request: Request<v1::ListAssignmentsRequest>,
    ) -> Result<Response<v1::ListAssignmentsResponse>, Status> {
        let r = request.into_inner();
        let size = page_size(r.page_size);
        if !r.server_id.is_empty() {
            crate::engine::validate_server_id(&r.server_id).map_err(status::engine_error)?;
        }
        // The token is the last (server_id, stream_id) returned.
        let after = if r.page_token.is_empty() {
            None
        } else {
            let (id, stream) = r.page_token.rsplit_once('/').ok_or_else(bad_page_token)?;
            let stream: StreamId = stream.parse().map_err(|_| bad_page_token())?;
            crate::engine::validate_server_id(id).map_err(|_| bad_page_token())?;
            Some((id, stream))
        };
        let filter = (!r.server_id.is_empty()).then_some(r.server_id.as_str());
        let st = self.o.lock()?;
        let (page, more) = st.engine.assignments_page(filter, after, size);
        drop(st);
        let next = if more { page.last().map(|l| format!("{}/{}", l.server_id, l.lease.stream_id)) } else { None };
        let assignments: Vec<v1::Assignment> = page
            .into_iter()
            .map(|l| v1::Assignment {
                server_id: l.server_id,
                lease: Some(status::lease_out(l.lease)),
                state: status::stream_state(l.state, true) as i32,
            })
            .collect();
        Ok(Response::new(v1::ListAssignmentsResponse { assignments, next_page_token: next.unwrap_or_default() }))
    }

    async fn get_cluster_status(
        &self,
        _: Request<v1::GetClusterStatusRequest>,
    ) -> Result<Response<v1::GetClusterStatusResponse>, Status> {
        let s = self.o.status()?;
        Ok(Response::new(v1::GetClusterStatusResponse {
            live_workers: s.live_workers,
            total_streams: s.total_streams,
            assigned_streams: s.assigned_streams,
            unassigned_streams: s.total_streams - s.assigned_streams,
            rebalancing_paused: s.rebalancing_paused,
            mass_failure_brake_engaged: s.brake_engaged,
            in_grace_period: s.grace_until.is_some(),
            grace_ends_at: s.grace_until.map(|t| status::timestamp_ms(self.o.wall_ms(t))),
            // On the same clock as `grace_ends_at`, so the two compare.
            server_time: Some(status::timestamp_ms(self.o.wall_ms(self.o.now_ms()))),
            total_capacity: s.total_capacity,
        }))
    }

    async fn drain_worker(
        &self,
        request: Request<v1::DrainWorkerRequest>,
    ) -> Result<Response<v1::DrainWorkerResponse>, Status> {
        let r = request.into_inner();
        if r.server_id.is_empty() {
            return Err(status::invalid("server_id", "required"));
        }
        let sessions = &self.o.shared.sessions;
        let (n, _) = self
            .o
            .run(|st, now| {
                let n = st.engine.drain(now, &r.server_id, &r.request_id)?;
                // Its heartbeats now say draining (a drain of a worker with
                // no stream changes no lease).
                sessions.publish(&st.engine, &r.server_id);
                Ok((n, Batch::default()))
            })
            .await?;
        tracing::info!(server_id = %r.server_id, streams = n, "draining worker");
        Ok(Response::new(v1::DrainWorkerResponse { streams_to_move: n }))
    }

    async fn pause_rebalancing(
        &self,
        request: Request<v1::PauseRebalancingRequest>,
    ) -> Result<Response<v1::PauseRebalancingResponse>, Status> {
        let r = request.into_inner();
        check_len("reason", &r.reason, MAX_REASON)?;
        let (paused, _) = self
            .o
            .run(|st, now| Ok((st.engine.set_rebalancing_paused(now, true, &r.request_id)?, Batch::default())))
            .await?;
        let reason = if r.reason.is_empty() { "(none given)" } else { r.reason.as_str() };
        tracing::info!(reason = %reason, "rebalancing paused: no moves for balance until resumed");
        Ok(Response::new(v1::PauseRebalancingResponse { paused }))
    }

    async fn resume_rebalancing(
        &self,
        request: Request<v1::ResumeRebalancingRequest>,
    ) -> Result<Response<v1::ResumeRebalancingResponse>, Status> {
        let r = request.into_inner();
        let (paused, _) = self
            .o
            .run(|st, now| Ok((st.engine.set_rebalancing_paused(now, false, &r.request_id)?, Batch::default())))
            .await?;
        tracing::info!("rebalancing resumed");
        Ok(Response::new(v1::ResumeRebalancingResponse { paused }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SqliteStore, Store};

    /// A panic while the engine lock is held poisons it; the next call gets
    /// INTERNAL and the orchestrator is told to stop (fatal), instead of
    /// reusing an engine that may be half-updated.
    #[tokio::test]
    async fn a_poisoned_engine_lock_is_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("o.db")).unwrap();
        let loaded = store.load().unwrap();
        let (handle, runner) = StoreHandle::spawn(store, loaded.acknowledged_through.clone()).unwrap();
        let o = Orchestrator::new(ServiceConfig::new(EngineConfig::default()), loaded, handle);
        let fatal = o.fatal();
        assert!(o.tick().await.is_ok());
        let worker = WorkerApi { o: o.clone() };
        let register = v1::RegisterRequest {
            server_id: "w".into(),
            max_streams: 1,
            request_id: "r".into(),
            held_leases: vec![],
            client_version: String::new(),
        };
        let session = worker.register(Request::new(register)).await.unwrap().into_inner().session;
        let beat = || v1::HeartbeatRequest { session: session.clone(), processing_count: 0, acknowledged: vec![] };
        assert!(worker.heartbeat(Request::new(beat())).await.is_ok(), "answered on the fast path");

        let poisoner = o.clone();
        let panicked = std::thread::spawn(move || {
            let _guard = poisoner.shared.state.lock().unwrap();
            panic!("a bug while the engine lock is held");
        })
        .join();
        assert!(panicked.is_err());

        let err = o.tick().await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal);
        assert!(err.message().contains("shutting down"), "{err:?}");
        assert!(fatal.borrow().as_deref().is_some_and(|r| r.contains("panic")), "the server is told to stop");
        let refused = worker.heartbeat(Request::new(beat())).await;
        assert_eq!(refused.unwrap_err().code(), tonic::Code::Internal, "no fast answer once stopping");
        let admin = AdminApi::from(o.clone());
        let listed = admin.list_workers(Request::new(v1::ListWorkersRequest::default())).await;
        assert_eq!(listed.unwrap_err().code(), tonic::Code::Internal, "no call reuses the poisoned engine");
        o.close_store();
        runner.join().await;
    }
}
