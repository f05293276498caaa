//! The assignment engine: a pure, synchronous state machine that decides
//! which worker processes which stream.
//!
//! The gRPC layer drives it with events (a worker registers, heartbeats,
//! requests or releases streams, syncs after local mode, deregisters; an
//! operator adds or removes streams, drains a worker, pauses rebalancing;
//! the clock ticks) and gets back decisions (leases granted, leases revoked,
//! keep/revoke answers, epochs). It never does I/O and never reads a clock:
//! every event carries `now`. So it can be tested exhaustively, and the
//! service can make its [`Change`]s durable before answering.
//!
//! # Rules
//!
//! * **Balanced and capacity-aware.** Among live, non-draining workers the
//!   targets come from water filling (`balance::targets`): never above a worker's
//!   `max_streams`, within one of each other below it.
//! * **Sticky and minimal.** A worker above its target gives up only its
//!   excess; a worker not above its target keeps every lease. A stream freed
//!   for balance never goes back to the worker it just left while another
//!   worker can take it (no A→B→A). Moves per round can be capped.
//! * **Release before reassign.** A revoked lease stays with its owner
//!   (state [`LeaseState::Revoking`]) until the owner releases it or its
//!   session expires; only then can the stream be granted again.
//! * **Fencing.** `worker_epoch` grows per `server_id` with each new session;
//!   calls from an older session are refused. `lease_epoch` grows per stream
//!   with each new owner. A retried call with the same `request_id` gets the
//!   same answer and changes nothing.
//! * **Liveness.** A session without a heartbeat for `session_timeout`
//!   expires; its leases stay recorded but become assignable. If the worker
//!   comes back before anyone else got a stream, it keeps it with the same
//!   epoch. A mass-failure brake stops reassigning those streams when more
//!   than a configured share of sessions expired within one timeout window.
//! * **Restart.** [`Engine::restore`] rebuilds the engine from persisted
//!   state and opens a grace period in which nothing moves and known workers
//!   re-register, presenting their leases, and keep them.

mod balance;
mod types;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

pub use types::{
    Change, EngineError, HeartbeatReply, Lease, LeaseDecision, LeaseState, Millis, Registered, Released, RevokeReason,
    SessionRef, StreamId, WorkerState,
};

use balance::Slot;

/// Limits and timings of the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// A session without a heartbeat for this long expires (default 30 s).
    pub session_timeout: Millis,
    /// How often workers should heartbeat (default 5 s); told to them.
    pub heartbeat_interval: Millis,
    /// Length of the grace period after a restart (default: `session_timeout`).
    pub grace_period: Millis,
    /// Largest `max_streams` a worker may declare (default 10,000).
    pub max_streams_limit: u32,
    /// Longest list in one call (default 10,000).
    pub max_list_len: usize,
    /// Revocations for balance or drain per round; `None`: no cap.
    pub max_moves_per_round: Option<u32>,
    /// Share of sessions that may expire within one `session_timeout`
    /// window before the brake stops reassigning their streams (default 0.5).
    pub mass_failure_threshold: f64,
    /// The brake needs at least this many sessions in the window (default 3).
    pub mass_failure_min_sessions: usize,
    /// Distinguishes this engine's session ids from another instance's.
    pub instance_id: u64,
    /// At most one placement round per this many milliseconds (0: after
    /// every event). A round costs O(streams); on a large fleet, where
    /// thousands of events arrive per second, the server batches them. The
    /// ticker runs the deferred round; `request_streams` never waits.
    pub min_rebalance_interval: Millis,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            session_timeout: 30_000,
            heartbeat_interval: 5_000,
            grace_period: 30_000,
            max_streams_limit: 10_000,
            max_list_len: 10_000,
            max_moves_per_round: None,
            mass_failure_threshold: 0.5,
            mass_failure_min_sessions: 3,
            instance_id: 0,
            min_rebalance_interval: 0,
        }
    }
}

/// How many answers to mutating calls each worker (and the admin side)
/// remembers for `request_id` idempotence.
const REMEMBERED_REQUESTS: usize = 64;

/// A remembered answer, keyed by request id with a fingerprint of the
/// request it answered.
#[derive(Debug, Clone)]
enum Answer {
    Registered(Registered),
    Granted(Vec<Lease>),
    Released(Released),
    Synced(Vec<LeaseDecision>),
    Done,
    Added(Vec<StreamId>, Vec<StreamId>),
    Removed(Vec<StreamId>, Vec<StreamId>),
    Drained(u32),
    Paused(bool),
}

#[derive(Debug, Default, Clone)]
struct Answers {
    recent: VecDeque<(String, u64, Answer)>,
}

impl Answers {
    fn get(&self, request_id: &str, fingerprint: u64) -> Result<Option<Answer>, EngineError> {
        match self.recent.iter().find(|(id, _, _)| id == request_id) {
            Some((_, f, answer)) if *f == fingerprint => Ok(Some(answer.clone())),
            Some(_) => Err(invalid("request_id", "already used for a different request")),
            None => Ok(None),
        }
    }

    fn put(&mut self, request_id: &str, fingerprint: u64, answer: Answer) {
        if self.recent.len() == REMEMBERED_REQUESTS {
            self.recent.pop_front();
        }
        self.recent.push_back((request_id.to_owned(), fingerprint, answer));
    }
}

#[derive(Debug, Clone)]
struct Worker {
    worker_epoch: u64,
    session_id: String,
    max_streams: u32,
    state: WorkerState,
    last_heartbeat: Millis,
    /// Streams whose lease names this worker (active, revoking or orphaned).
    owned: BTreeSet<StreamId>,
    /// The part of `owned` being revoked (kept so that a round need not
    /// look at every lease).
    revoking: BTreeSet<StreamId>,
    /// Granted leases the worker has not acknowledged yet.
    unacknowledged: BTreeSet<StreamId>,
    answers: Answers,
}

#[derive(Debug, Clone)]
struct LeaseRecord {
    owner: String,
    epoch: u64,
    state: LeaseState,
}

#[derive(Debug, Clone)]
struct Stream {
    /// The highest lease epoch ever issued for this stream.
    epoch: u64,
    lease: Option<LeaseRecord>,
    /// Removed from the catalog; deleted once its lease ends.
    removed: bool,
    /// The worker it last left for balance or drain: not granted back to it
    /// while another worker can take it.
    left: Option<String>,
}

/// A worker as persisted by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedWorker {
    /// The worker.
    pub server_id: String,
    /// Its latest epoch.
    pub worker_epoch: u64,
    /// Its declared capacity.
    pub max_streams: u32,
}

/// A stream as persisted by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedStream {
    /// The stream.
    pub stream_id: StreamId,
    /// The highest lease epoch issued.
    pub epoch: u64,
    /// Its current lease: owner, epoch, state.
    pub lease: Option<(String, u64, LeaseState)>,
}

/// Everything the engine needs to restart.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PersistedState {
    /// Known workers.
    pub workers: Vec<PersistedWorker>,
    /// The catalog with leases.
    pub streams: Vec<PersistedStream>,
    /// Whether an operator paused rebalancing.
    pub rebalancing_paused: bool,
    /// The last lease epoch of each deleted stream that ever had one.
    pub retired_epochs: Vec<(StreamId, u64)>,
}

/// A worker as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerView {
    /// The worker.
    pub server_id: String,
    /// Its current epoch.
    pub worker_epoch: u64,
    /// Its state.
    pub state: WorkerState,
    /// Its declared capacity.
    pub max_streams: u32,
    /// Leases naming it.
    pub owned: u32,
    /// Time of its last heartbeat.
    pub last_heartbeat: Millis,
}

/// A lease as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    /// The owner.
    pub server_id: String,
    /// The lease.
    pub lease: Lease,
    /// Its state.
    pub state: LeaseState,
    /// Whether the owner's session is live (false: orphaned, assignable).
    pub owner_live: bool,
}

/// Cluster-wide figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// Live (or draining) sessions.
    pub live_workers: u32,
    /// Streams in the catalog.
    pub total_streams: u64,
    /// Streams with a lease held by a live session.
    pub assigned_streams: u64,
    /// Sum of live, non-draining workers' capacities.
    pub total_capacity: u64,
    /// Paused by an operator.
    pub rebalancing_paused: bool,
    /// The mass-failure brake is on.
    pub brake_engaged: bool,
    /// End of the restart grace period, if in it.
    pub grace_until: Option<Millis>,
}

/// The assignment engine. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Engine {
    config: EngineConfig,
    workers: BTreeMap<String, Worker>,
    streams: BTreeMap<StreamId, Stream>,
    /// Catalog streams with no lease.
    unassigned: BTreeSet<StreamId>,
    /// The last epoch of deleted streams, so that a stream added again
    /// continues from it: lease epochs never go down.
    retired: BTreeMap<StreamId, u64>,
    /// Streams removed from the catalog whose lease has not ended yet.
    removed: BTreeSet<StreamId>,
    admin_answers: Answers,
    rebalancing_paused: bool,
    grace_until: Option<Millis>,
    brake: bool,
    /// Times of recent session expiries, for the brake.
    expiries: VecDeque<Millis>,
    changes: Vec<Change>,
    /// Something changed that may call for placements or moves.
    dirty: bool,
    /// When the last placement round ran.
    last_round: Option<Millis>,
}

fn invalid(field: &'static str, problem: impl Into<String>) -> EngineError {
    EngineError::InvalidArgument { field, problem: problem.into() }
}

fn fingerprint(parts: &impl std::hash::Hash) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(parts)
}

fn is_printable(s: &str) -> bool {
    s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

fn validate_server_id(server_id: &str) -> Result<(), EngineError> {
    if server_id.is_empty() || server_id.len() > 128 || !is_printable(server_id) {
        return Err(invalid("server_id", "must be 1..=128 printable ASCII bytes"));
    }
    Ok(())
}

fn validate_request_id(request_id: &str) -> Result<(), EngineError> {
    if request_id.is_empty() || request_id.len() > 64 || !is_printable(request_id) {
        return Err(invalid("request_id", "must be 1..=64 printable ASCII bytes"));
    }
    Ok(())
}

impl Engine {
    /// An empty engine.
    pub fn new(config: EngineConfig) -> Self {
        Self {
            config,
            workers: BTreeMap::new(),
            streams: BTreeMap::new(),
            unassigned: BTreeSet::new(),
            retired: BTreeMap::new(),
            removed: BTreeSet::new(),
            admin_answers: Answers::default(),
            rebalancing_paused: false,
            grace_until: None,
            brake: false,
            expiries: VecDeque::new(),
            changes: Vec::new(),
            dirty: false,
            last_round: None,
        }
    }

    /// Rebuilds the engine from persisted state and opens the grace period:
    /// until `now + grace_period` (or until every known worker is back)
    /// nothing moves, and known workers that re-register presenting their
    /// leases keep them.
    pub fn restore(config: EngineConfig, state: PersistedState, now: Millis) -> Self {
        let mut engine = Self::new(config);
        engine.rebalancing_paused = state.rebalancing_paused;
        engine.retired = state.retired_epochs.into_iter().collect();
        for w in state.workers {
            engine.workers.insert(
                w.server_id,
                Worker {
                    worker_epoch: w.worker_epoch,
                    session_id: String::new(),
                    max_streams: w.max_streams,
                    state: WorkerState::AwaitingReregistration,
                    last_heartbeat: now,
                    owned: BTreeSet::new(),
                    revoking: BTreeSet::new(),
                    unacknowledged: BTreeSet::new(),
                    answers: Answers::default(),
                },
            );
        }
        for s in state.streams {
            let lease = s.lease.and_then(|(owner, epoch, state)| {
                let worker = engine.workers.get_mut(&owner)?;
                worker.owned.insert(s.stream_id);
                if matches!(state, LeaseState::Revoking(_)) {
                    worker.revoking.insert(s.stream_id);
                }
                Some(LeaseRecord { owner, epoch, state })
            });
            if lease.is_none() {
                engine.unassigned.insert(s.stream_id);
            }
            engine.streams.insert(s.stream_id, Stream { epoch: s.epoch, lease, removed: false, left: None });
        }
        let known = engine.workers.values().any(|w| w.state == WorkerState::AwaitingReregistration);
        engine.grace_until = known.then_some(now + engine.config.grace_period);
        engine.dirty = true;
        engine
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The durable changes made since the last call, oldest first.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    // ------------------------------------------------------------ worker calls

    /// Opens a new session for `server_id` (fencing any older one) and
    /// decides, for each lease the worker presents, keep or revoke. Leases
    /// the engine has for this worker that it does not present are freed.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidArgument`] for a bad `server_id`, `max_streams`,
    /// `request_id` or lease list.
    pub fn register(
        &mut self,
        now: Millis,
        server_id: &str,
        max_streams: u32,
        request_id: &str,
        held: &[Lease],
    ) -> Result<Registered, EngineError> {
        validate_server_id(server_id)?;
        validate_request_id(request_id)?;
        if max_streams == 0 || max_streams > self.config.max_streams_limit {
            return Err(invalid("max_streams", format!("must be 1..={}", self.config.max_streams_limit)));
        }
        self.validate_leases("held_leases", held)?;
        let print = fingerprint(&(max_streams, held));
        if let Some(worker) = self.workers.get(server_id)
            && let Some(Answer::Registered(r)) = worker.answers.get(request_id, print)?
        {
            return Ok(r);
        }

        let instance = self.config.instance_id;
        let worker = self.workers.entry(server_id.to_owned()).or_insert_with(|| Worker {
            worker_epoch: 0,
            session_id: String::new(),
            max_streams,
            state: WorkerState::Expired,
            last_heartbeat: now,
            owned: BTreeSet::new(),
            revoking: BTreeSet::new(),
            unacknowledged: BTreeSet::new(),
            answers: Answers::default(),
        });
        worker.worker_epoch += 1;
        worker.session_id = format!("{instance:x}.{}", worker.worker_epoch);
        worker.max_streams = max_streams;
        // A drain survives re-registration; it ends with the session's
        // expiry or deregistration.
        worker.state = if worker.state == WorkerState::Draining { WorkerState::Draining } else { WorkerState::Live };
        worker.last_heartbeat = now;
        worker.unacknowledged.clear();
        let session = SessionRef {
            server_id: server_id.to_owned(),
            session_id: worker.session_id.clone(),
            worker_epoch: worker.worker_epoch,
        };
        self.changes.push(Change::WorkerRegistered {
            server_id: server_id.to_owned(),
            worker_epoch: session.worker_epoch,
            max_streams,
        });

        let decisions = self.reconcile(server_id, held);
        // Leases of this worker it did not present: it is not processing them.
        let presented: BTreeSet<StreamId> = held.iter().map(|l| l.stream_id).collect();
        let forgotten: Vec<StreamId> = self.workers[server_id].owned.difference(&presented).copied().collect();
        for stream_id in forgotten {
            self.end_lease(stream_id);
        }
        let registered = Registered { session, decisions };
        if let Some(w) = self.workers.get_mut(server_id) {
            w.answers.put(request_id, print, Answer::Registered(registered.clone()));
        }
        self.dirty = true;
        self.end_grace_if_everyone_is_back();
        self.rebalance(now);
        Ok(registered)
    }

    /// Records a heartbeat: acknowledges the leases the worker lists, and
    /// answers the leases to start (granted, not yet acknowledged) and to
    /// stop (revoked).
    ///
    /// # Errors
    ///
    /// Fencing errors for an old, expired or unknown session;
    /// [`EngineError::InvalidArgument`] for a bad lease list.
    pub fn heartbeat(
        &mut self,
        now: Millis,
        session: &SessionRef,
        acknowledged: &[Lease],
    ) -> Result<HeartbeatReply, EngineError> {
        self.check_session(session)?;
        self.validate_leases("acknowledged", acknowledged)?;
        let server_id = session.server_id.as_str();
        for lease in acknowledged {
            if self.is_current_for(server_id, *lease)
                && let Some(w) = self.workers.get_mut(server_id)
            {
                w.unacknowledged.remove(&lease.stream_id);
            }
        }
        if let Some(w) = self.workers.get_mut(server_id) {
            w.last_heartbeat = now;
        }
        self.rebalance(now);
        Ok(self.pending_for(server_id))
    }

    /// Grants up to `count` streams to a worker that pulls: first its
    /// granted-but-unacknowledged leases, then new ones within its balanced
    /// share. Returned leases count as acknowledged.
    ///
    /// # Errors
    ///
    /// Fencing errors; [`EngineError::InvalidArgument`] for a bad `count`
    /// or `request_id`.
    pub fn request_streams(
        &mut self,
        now: Millis,
        session: &SessionRef,
        count: u32,
        request_id: &str,
    ) -> Result<Vec<Lease>, EngineError> {
        self.check_session(session)?;
        validate_request_id(request_id)?;
        let max = self.workers[&session.server_id].max_streams;
        if count == 0 || count > max {
            return Err(invalid("count", format!("must be 1..={max} (the worker's max_streams)")));
        }
        let print = fingerprint(&("request", count));
        if let Some(Answer::Granted(g)) = self.workers[&session.server_id].answers.get(request_id, print)? {
            return Ok(g);
        }
        self.touch(session, now);
        self.last_round = None; // a pull does not wait for the batching interval
        self.rebalance(now);
        let server_id = session.server_id.as_str();
        let granted: Vec<Lease> = self.pending_for(server_id).assign.into_iter().take(count as usize).collect();
        if let Some(w) = self.workers.get_mut(server_id) {
            for lease in &granted {
                w.unacknowledged.remove(&lease.stream_id);
            }
            w.answers.put(request_id, print, Answer::Granted(granted.clone()));
        }
        Ok(granted)
    }

    /// Ends the leases the worker gives back. A lease it does not hold at
    /// that epoch is reported in `not_held` and left alone.
    ///
    /// # Errors
    ///
    /// Fencing errors; [`EngineError::InvalidArgument`] for a bad lease list
    /// or `request_id`.
    pub fn release_streams(
        &mut self,
        now: Millis,
        session: &SessionRef,
        leases: &[Lease],
        request_id: &str,
    ) -> Result<Released, EngineError> {
        self.check_session(session)?;
        validate_request_id(request_id)?;
        self.validate_leases("leases", leases)?;
        if leases.is_empty() {
            return Err(invalid("leases", "must not be empty"));
        }
        let print = fingerprint(&("release", leases));
        if let Some(Answer::Released(r)) = self.workers[&session.server_id].answers.get(request_id, print)? {
            return Ok(r);
        }
        self.touch(session, now);
        let mut out = Released::default();
        for lease in leases {
            if self.is_current_for(&session.server_id, *lease) {
                self.end_lease(lease.stream_id);
                out.released.push(*lease);
            } else {
                out.not_held.push(*lease);
            }
        }
        if let Some(w) = self.workers.get_mut(&session.server_id) {
            w.answers.put(request_id, print, Answer::Released(out.clone()));
        }
        self.dirty = true;
        self.rebalance(now);
        Ok(out)
    }

    /// Reconciles the leases a worker held in local mode: per lease, keep
    /// (still current for this worker at that epoch) or revoke (moved,
    /// removed, stale). Deterministic whatever order workers return in.
    ///
    /// # Errors
    ///
    /// Fencing errors; [`EngineError::InvalidArgument`] for a bad lease list
    /// or `request_id`.
    pub fn sync_local_state(
        &mut self,
        now: Millis,
        session: &SessionRef,
        held: &[Lease],
        request_id: &str,
    ) -> Result<Vec<LeaseDecision>, EngineError> {
        self.check_session(session)?;
        validate_request_id(request_id)?;
        self.validate_leases("held_leases", held)?;
        let print = fingerprint(&("sync", held));
        if let Some(Answer::Synced(d)) = self.workers[&session.server_id].answers.get(request_id, print)? {
            return Ok(d);
        }
        self.touch(session, now);
        let decisions = self.reconcile(&session.server_id, held);
        if let Some(w) = self.workers.get_mut(&session.server_id) {
            w.answers.put(request_id, print, Answer::Synced(decisions.clone()));
        }
        self.dirty = true;
        self.rebalance(now);
        Ok(decisions)
    }

    /// Ends the session cleanly: the worker has stopped processing, so its
    /// streams are assignable at once.
    ///
    /// # Errors
    ///
    /// Fencing errors; [`EngineError::InvalidArgument`] for a bad `request_id`.
    pub fn deregister(&mut self, now: Millis, session: &SessionRef, request_id: &str) -> Result<(), EngineError> {
        validate_request_id(request_id)?;
        if let Some(w) = self.workers.get(&session.server_id)
            && w.worker_epoch == session.worker_epoch
            && w.answers.get(request_id, 0)?.is_some()
        {
            return Ok(());
        }
        self.check_session(session)?;
        let owned: Vec<StreamId> = self.workers[&session.server_id].owned.iter().copied().collect();
        for stream_id in owned {
            self.end_lease(stream_id);
        }
        if let Some(w) = self.workers.get_mut(&session.server_id) {
            w.state = WorkerState::Expired;
            w.unacknowledged.clear();
            // The session is gone, not merely expired: later calls with it
            // get `SessionUnknown`, as the contract says.
            w.session_id.clear();
            w.answers.put(request_id, 0, Answer::Done);
        }
        self.changes.push(Change::WorkerLeft { server_id: session.server_id.clone() });
        self.dirty = true;
        self.rebalance(now);
        Ok(())
    }

    // ------------------------------------------------------------ admin calls

    /// Adds streams to the catalog; they are placed on live workers.
    /// Returns `(added, already_present)`.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidArgument`] for a bad id list or `request_id`.
    pub fn add_streams(
        &mut self,
        now: Millis,
        stream_ids: &[StreamId],
        request_id: &str,
    ) -> Result<(Vec<StreamId>, Vec<StreamId>), EngineError> {
        validate_request_id(request_id)?;
        self.validate_ids("stream_ids", stream_ids)?;
        let print = fingerprint(&("add", stream_ids));
        if let Some(Answer::Added(a, b)) = self.admin_answers.get(request_id, print)? {
            return Ok((a, b));
        }
        let (mut added, mut present) = (Vec::new(), Vec::new());
        for &id in stream_ids {
            match self.streams.get(&id) {
                Some(s) if !s.removed => present.push(id),
                Some(_) => {
                    // Removed but its lease has not ended yet: take it back.
                    if let Some(s) = self.streams.get_mut(&id) {
                        s.removed = false;
                    }
                    self.removed.remove(&id);
                    added.push(id);
                }
                None => {
                    let epoch = self.retired.remove(&id).unwrap_or(0);
                    self.streams.insert(id, Stream { epoch, lease: None, removed: false, left: None });
                    self.unassigned.insert(id);
                    self.changes.push(Change::StreamAdded { stream_id: id });
                    added.push(id);
                }
            }
        }
        self.admin_answers.put(request_id, print, Answer::Added(added.clone(), present.clone()));
        self.dirty = true;
        self.rebalance(now);
        Ok((added, present))
    }

    /// Removes streams from the catalog. A leased stream is revoked from its
    /// owner and deleted once released. Returns `(removed, not_found)`.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidArgument`] for a bad id list or `request_id`.
    pub fn remove_streams(
        &mut self,
        now: Millis,
        stream_ids: &[StreamId],
        request_id: &str,
    ) -> Result<(Vec<StreamId>, Vec<StreamId>), EngineError> {
        validate_request_id(request_id)?;
        self.validate_ids("stream_ids", stream_ids)?;
        let print = fingerprint(&("remove", stream_ids));
        if let Some(Answer::Removed(a, b)) = self.admin_answers.get(request_id, print)? {
            return Ok((a, b));
        }
        let (mut removed, mut missing) = (Vec::new(), Vec::new());
        for &id in stream_ids {
            let Some(stream) = self.streams.get_mut(&id) else {
                missing.push(id);
                continue;
            };
            stream.removed = true;
            self.removed.insert(id);
            removed.push(id);
            match stream.lease.clone() {
                None => self.delete_stream(id),
                Some(lease) if !self.is_live(&lease.owner) => self.end_lease(id),
                Some(_) => self.revoke(id, RevokeReason::StreamRemoved),
            }
        }
        self.admin_answers.put(request_id, print, Answer::Removed(removed.clone(), missing.clone()));
        self.dirty = true;
        self.rebalance(now);
        Ok((removed, missing))
    }

    /// Drains a worker: its streams move away (release before reassign) and
    /// it gets no new ones. Returns how many streams it has to give up.
    ///
    /// # Errors
    ///
    /// [`EngineError::UnknownWorker`] if the engine does not know it.
    pub fn drain(&mut self, now: Millis, server_id: &str, request_id: &str) -> Result<u32, EngineError> {
        validate_request_id(request_id)?;
        let print = fingerprint(&("drain", server_id));
        if let Some(Answer::Drained(n)) = self.admin_answers.get(request_id, print)? {
            return Ok(n);
        }
        let worker = self
            .workers
            .get_mut(server_id)
            .ok_or_else(|| EngineError::UnknownWorker { server_id: server_id.to_owned() })?;
        if worker.state == WorkerState::Live {
            worker.state = WorkerState::Draining;
        }
        let n = u32::try_from(worker.owned.len()).unwrap_or(u32::MAX);
        self.admin_answers.put(request_id, print, Answer::Drained(n));
        self.dirty = true;
        self.rebalance(now);
        Ok(n)
    }

    /// Pauses (`true`) or resumes (`false`) moves for balance. While paused,
    /// unassigned and orphaned streams are still placed (coverage wins) and
    /// drains go on. Resuming also releases the mass-failure brake: the
    /// operator has judged the silent workers gone.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidArgument`] for a bad `request_id`.
    pub fn set_rebalancing_paused(&mut self, now: Millis, paused: bool, request_id: &str) -> Result<bool, EngineError> {
        validate_request_id(request_id)?;
        let print = fingerprint(&("pause", paused));
        if let Some(Answer::Paused(p)) = self.admin_answers.get(request_id, print)? {
            return Ok(p);
        }
        if self.rebalancing_paused != paused {
            self.changes.push(Change::RebalancingPaused { paused });
        }
        self.rebalancing_paused = paused;
        if !paused {
            self.brake = false;
            self.expiries.clear();
        }
        self.admin_answers.put(request_id, print, Answer::Paused(paused));
        self.dirty = true;
        self.rebalance(now);
        Ok(paused)
    }

    // ------------------------------------------------------------ the clock

    /// Advances the engine's view of time: expires silent sessions, engages
    /// or releases the mass-failure brake, ends the grace period, places and
    /// moves streams.
    pub fn tick(&mut self, now: Millis) {
        let timeout = self.config.session_timeout;
        if let Some(until) = self.grace_until
            && now >= until
        {
            self.end_grace();
        }
        let silent: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| matches!(w.state, WorkerState::Live | WorkerState::Draining))
            .filter(|(_, w)| now.saturating_sub(w.last_heartbeat) >= timeout)
            .map(|(id, _)| id.clone())
            .collect();
        if !silent.is_empty() {
            while self.expiries.front().is_some_and(|&t| now.saturating_sub(t) >= timeout) {
                self.expiries.pop_front();
            }
            let live = self.workers.values().filter(|w| self.is_live_state(w.state)).count();
            let window = self.expiries.len() + live;
            let expiring = self.expiries.len() + silent.len();
            if window >= self.config.mass_failure_min_sessions
                && expiring as f64 > self.config.mass_failure_threshold * window as f64
                && !self.brake
            {
                self.brake = true;
            }
            for id in silent {
                self.expire(&id, now);
            }
        }
        if self.brake && !self.brake_still_needed() {
            self.brake = false;
            self.dirty = true;
        }
        self.rebalance(now);
    }

    // ------------------------------------------------------------ queries

    /// The workers the engine knows.
    pub fn workers(&self) -> Vec<WorkerView> {
        self.workers
            .iter()
            .map(|(id, w)| WorkerView {
                server_id: id.clone(),
                worker_epoch: w.worker_epoch,
                state: w.state,
                max_streams: w.max_streams,
                owned: u32::try_from(w.owned.len()).unwrap_or(u32::MAX),
                last_heartbeat: w.last_heartbeat,
            })
            .collect()
    }

    /// Every lease, by stream id.
    pub fn leases(&self) -> Vec<LeaseView> {
        self.streams
            .iter()
            .filter_map(|(&stream_id, s)| {
                let l = s.lease.as_ref()?;
                Some(LeaseView {
                    server_id: l.owner.clone(),
                    lease: Lease { stream_id, lease_epoch: l.epoch },
                    state: l.state,
                    owner_live: self.is_live(&l.owner),
                })
            })
            .collect()
    }

    /// The catalog's stream ids (streams being removed excluded).
    pub fn stream_ids(&self) -> Vec<StreamId> {
        self.streams.iter().filter(|(_, s)| !s.removed).map(|(&id, _)| id).collect()
    }

    /// Whether `lease` is the current lease of `server_id` (used to flag
    /// processing records made under an old epoch).
    pub fn is_current_for(&self, server_id: &str, lease: Lease) -> bool {
        self.streams
            .get(&lease.stream_id)
            .and_then(|s| s.lease.as_ref())
            .is_some_and(|l| l.owner == server_id && l.epoch == lease.lease_epoch)
    }

    /// Cluster-wide figures.
    pub fn status(&self) -> ClusterStatus {
        let live = self.workers.values().filter(|w| self.is_live_state(w.state)).count();
        let capacity = self.workers.values().filter(|w| w.state == WorkerState::Live).map(|w| u64::from(w.max_streams));
        // Through the workers and the few removed streams: O(workers).
        let held_live: usize =
            self.workers.values().filter(|w| self.is_live_state(w.state)).map(|w| w.owned.len()).sum();
        let removed_live = self
            .removed
            .iter()
            .filter(|id| self.streams.get(id).and_then(|s| s.lease.as_ref()).is_some_and(|l| self.is_live(&l.owner)))
            .count();
        ClusterStatus {
            live_workers: u32::try_from(live).unwrap_or(u32::MAX),
            total_streams: (self.streams.len() - self.removed.len()) as u64,
            assigned_streams: (held_live - removed_live) as u64,
            total_capacity: capacity.sum(),
            rebalancing_paused: self.rebalancing_paused,
            brake_engaged: self.brake,
            grace_until: self.grace_until,
        }
    }

    /// The engine's durable state, as the store keeps it.
    pub fn snapshot(&self) -> PersistedState {
        PersistedState {
            workers: self
                .workers
                .iter()
                .map(|(id, w)| PersistedWorker {
                    server_id: id.clone(),
                    worker_epoch: w.worker_epoch,
                    max_streams: w.max_streams,
                })
                .collect(),
            streams: self
                .streams
                .iter()
                .filter(|(_, s)| !s.removed)
                .map(|(&stream_id, s)| PersistedStream {
                    stream_id,
                    epoch: s.epoch,
                    lease: s.lease.as_ref().map(|l| (l.owner.clone(), l.epoch, l.state)),
                })
                .collect(),
            rebalancing_paused: self.rebalancing_paused,
            retired_epochs: self.retired.iter().map(|(&id, &epoch)| (id, epoch)).collect(),
        }
    }

    // ------------------------------------------------------------ internals

    fn is_live_state(&self, state: WorkerState) -> bool {
        matches!(state, WorkerState::Live | WorkerState::Draining)
    }

    fn is_live(&self, server_id: &str) -> bool {
        self.workers.get(server_id).is_some_and(|w| self.is_live_state(w.state))
    }

    fn check_session(&self, session: &SessionRef) -> Result<(), EngineError> {
        let server_id = session.server_id.clone();
        let Some(w) = self.workers.get(&session.server_id) else {
            return Err(EngineError::SessionUnknown { server_id });
        };
        if session.worker_epoch < w.worker_epoch {
            return Err(EngineError::SessionFenced { server_id, current_epoch: w.worker_epoch });
        }
        if session.worker_epoch > w.worker_epoch || session.session_id != w.session_id {
            return Err(EngineError::SessionUnknown { server_id });
        }
        if !self.is_live_state(w.state) {
            return Err(EngineError::SessionExpired { server_id });
        }
        Ok(())
    }

    fn touch(&mut self, session: &SessionRef, now: Millis) {
        if let Some(w) = self.workers.get_mut(&session.server_id) {
            w.last_heartbeat = now;
        }
    }

    fn validate_ids(&self, field: &'static str, ids: &[StreamId]) -> Result<(), EngineError> {
        if ids.len() > self.config.max_list_len {
            return Err(invalid(field, format!("at most {} entries", self.config.max_list_len)));
        }
        let mut seen = BTreeSet::new();
        for &id in ids {
            if id <= 0 {
                return Err(invalid(field, format!("stream id {id} must be greater than 0")));
            }
            if !seen.insert(id) {
                return Err(invalid(field, format!("stream id {id} appears twice")));
            }
        }
        Ok(())
    }

    fn validate_leases(&self, field: &'static str, leases: &[Lease]) -> Result<(), EngineError> {
        if let Some(l) = leases.iter().find(|l| l.lease_epoch == 0) {
            return Err(invalid(field, format!("stream {}: lease_epoch must be at least 1", l.stream_id)));
        }
        let ids: Vec<StreamId> = leases.iter().map(|l| l.stream_id).collect();
        self.validate_ids(field, &ids)
    }

    /// Keep or revoke for each presented lease. Beyond the worker's
    /// `max_streams` the first leases in the order given are kept and the
    /// rest revoked as over capacity (reserved until released).
    fn reconcile(&mut self, server_id: &str, held: &[Lease]) -> Vec<LeaseDecision> {
        let max = self.workers.get(server_id).map_or(0, |w| w.max_streams) as usize;
        let mut kept = 0;
        let mut decisions = Vec::with_capacity(held.len());
        for &lease in held {
            let decision = match self.streams.get(&lease.stream_id) {
                None => LeaseDecision::Revoke(lease, RevokeReason::StreamRemoved),
                Some(s) if s.removed => LeaseDecision::Revoke(lease, RevokeReason::StreamRemoved),
                Some(s) => match &s.lease {
                    Some(l) if l.owner == server_id && l.epoch == lease.lease_epoch => match l.state {
                        LeaseState::Active => LeaseDecision::Keep(lease),
                        LeaseState::Revoking(reason) => LeaseDecision::Revoke(lease, reason),
                    },
                    Some(l) if l.owner == server_id => LeaseDecision::Revoke(lease, RevokeReason::StaleEpoch),
                    Some(_) => LeaseDecision::Revoke(lease, RevokeReason::Moved),
                    None if s.epoch > lease.lease_epoch => LeaseDecision::Revoke(lease, RevokeReason::Moved),
                    None => LeaseDecision::Revoke(lease, RevokeReason::StaleEpoch),
                },
            };
            let decision = match decision {
                LeaseDecision::Keep(lease) if kept == max => {
                    self.revoke(lease.stream_id, RevokeReason::OverCapacity);
                    LeaseDecision::Revoke(lease, RevokeReason::OverCapacity)
                }
                LeaseDecision::Keep(lease) => {
                    kept += 1;
                    LeaseDecision::Keep(lease)
                }
                revoke => revoke,
            };
            decisions.push(decision);
        }
        decisions
    }

    /// Leases to start and to stop for a worker, as a heartbeat answers.
    fn pending_for(&self, server_id: &str) -> HeartbeatReply {
        let Some(w) = self.workers.get(server_id) else {
            return HeartbeatReply::default();
        };
        let mut reply = HeartbeatReply { draining: w.state == WorkerState::Draining, ..HeartbeatReply::default() };
        for &stream_id in &w.owned {
            let Some(l) = self.streams.get(&stream_id).and_then(|s| s.lease.as_ref()) else { continue };
            let lease = Lease { stream_id, lease_epoch: l.epoch };
            match l.state {
                LeaseState::Active if w.unacknowledged.contains(&stream_id) => reply.assign.push(lease),
                LeaseState::Active => {}
                LeaseState::Revoking(reason) => reply.revoke.push((lease, reason)),
            }
        }
        reply
    }

    fn expire(&mut self, server_id: &str, now: Millis) {
        if let Some(w) = self.workers.get_mut(server_id) {
            w.state = WorkerState::Expired;
            w.unacknowledged.clear();
            self.expiries.push_back(now);
            self.changes.push(Change::WorkerExpired { server_id: server_id.to_owned() });
            self.dirty = true;
        }
    }

    /// The brake stays on while the workers whose streams it holds back are
    /// more than the threshold share of the sessions.
    fn brake_still_needed(&self) -> bool {
        let orphaned = self.workers.values().filter(|w| w.state == WorkerState::Expired && !w.owned.is_empty()).count();
        let live = self.workers.values().filter(|w| self.is_live_state(w.state)).count();
        let total = orphaned + live;
        total >= self.config.mass_failure_min_sessions
            && orphaned as f64 > self.config.mass_failure_threshold * total as f64
    }

    fn end_grace_if_everyone_is_back(&mut self) {
        if self.grace_until.is_some() && !self.workers.values().any(|w| w.state == WorkerState::AwaitingReregistration)
        {
            self.end_grace();
        }
    }

    fn end_grace(&mut self) {
        self.grace_until = None;
        let missing: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| w.state == WorkerState::AwaitingReregistration)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &missing {
            if let Some(w) = self.workers.get_mut(id) {
                w.state = WorkerState::Expired;
            }
        }
        let live = self.workers.values().filter(|w| self.is_live_state(w.state)).count();
        let window = missing.len() + live;
        if window >= self.config.mass_failure_min_sessions
            && missing.len() as f64 > self.config.mass_failure_threshold * window as f64
        {
            self.brake = true;
        }
        self.dirty = true;
    }

    fn grant(&mut self, stream_id: StreamId, server_id: &str) {
        let Some(stream) = self.streams.get_mut(&stream_id) else { return };
        if let Some(old) = stream.lease.take()
            && let Some(w) = self.workers.get_mut(&old.owner)
        {
            w.owned.remove(&stream_id);
            w.revoking.remove(&stream_id);
            w.unacknowledged.remove(&stream_id);
        }
        stream.epoch += 1;
        stream.left = None;
        let lease = Lease { stream_id, lease_epoch: stream.epoch };
        stream.lease =
            Some(LeaseRecord { owner: server_id.to_owned(), epoch: stream.epoch, state: LeaseState::Active });
        self.unassigned.remove(&stream_id);
        if let Some(w) = self.workers.get_mut(server_id) {
            w.owned.insert(stream_id);
            w.unacknowledged.insert(stream_id);
        }
        self.changes.push(Change::LeaseGranted { server_id: server_id.to_owned(), lease });
    }

    fn revoke(&mut self, stream_id: StreamId, reason: RevokeReason) {
        let Some(l) = self.streams.get_mut(&stream_id).and_then(|s| s.lease.as_mut()) else { return };
        if l.state != LeaseState::Active {
            return;
        }
        l.state = LeaseState::Revoking(reason);
        let change = Change::LeaseRevoking {
            server_id: l.owner.clone(),
            lease: Lease { stream_id, lease_epoch: l.epoch },
            reason,
        };
        let owner = l.owner.clone();
        if let Some(w) = self.workers.get_mut(&owner) {
            w.unacknowledged.remove(&stream_id);
            w.revoking.insert(stream_id);
        }
        self.changes.push(change);
    }

    /// The lease ends: released, forgotten, or its owner deregistered.
    fn end_lease(&mut self, stream_id: StreamId) {
        let Some(stream) = self.streams.get_mut(&stream_id) else { return };
        let Some(l) = stream.lease.take() else { return };
        if matches!(l.state, LeaseState::Revoking(RevokeReason::Rebalance | RevokeReason::Drain)) {
            stream.left = Some(l.owner.clone());
        }
        let removed = stream.removed;
        if let Some(w) = self.workers.get_mut(&l.owner) {
            w.owned.remove(&stream_id);
            w.revoking.remove(&stream_id);
            w.unacknowledged.remove(&stream_id);
        }
        self.changes.push(Change::LeaseEnded { server_id: l.owner, lease: Lease { stream_id, lease_epoch: l.epoch } });
        if removed {
            self.delete_stream(stream_id);
        } else {
            self.unassigned.insert(stream_id);
        }
        self.dirty = true;
    }

    fn delete_stream(&mut self, stream_id: StreamId) {
        self.removed.remove(&stream_id);
        if let Some(stream) = self.streams.remove(&stream_id)
            && stream.epoch > 0
        {
            self.retired.insert(stream_id, stream.epoch);
        }
        self.unassigned.remove(&stream_id);
        self.changes.push(Change::StreamDeleted { stream_id });
    }

    /// Debug builds (and so every test) check that the per-worker caches
    /// agree with the lease records.
    #[cfg(debug_assertions)]
    fn check_caches(&self) {
        for (id, w) in &self.workers {
            for sid in &w.owned {
                let l = self.streams.get(sid).and_then(|s| s.lease.as_ref());
                assert!(l.is_some_and(|l| &l.owner == id), "{id} owns {sid} without its lease");
                let revoking = l.is_some_and(|l| matches!(l.state, LeaseState::Revoking(_)));
                assert_eq!(w.revoking.contains(sid), revoking, "revoking cache of {id} wrong for {sid}");
            }
            assert!(w.revoking.is_subset(&w.owned));
        }
        let removed: BTreeSet<StreamId> = self.streams.iter().filter(|(_, s)| s.removed).map(|(&id, _)| id).collect();
        assert_eq!(removed, self.removed, "removed cache wrong");
    }

    /// One round of placements and moves, when something changed.
    fn rebalance(&mut self, now: Millis) {
        if !self.dirty || self.grace_until.is_some() {
            return;
        }
        if let Some(last) = self.last_round
            && now < last.saturating_add(self.config.min_rebalance_interval)
        {
            return; // batched: the ticker runs it
        }
        self.last_round = Some(now);
        self.dirty = false;
        #[cfg(debug_assertions)]
        self.check_caches();

        // Streams whose lease names a worker that is not live are orphaned:
        // removed ones end now; the others may be placed unless the brake
        // holds them. Found through the workers, not by scanning streams:
        // a round costs O(workers + streams that move).
        let orphans: Vec<StreamId> = self
            .workers
            .values()
            .filter(|w| !self.is_live_state(w.state))
            .flat_map(|w| w.owned.iter().copied())
            .collect();
        let mut placeable: Vec<StreamId> = Vec::new();
        for id in orphans {
            if self.streams.get(&id).is_some_and(|s| s.removed) {
                self.end_lease(id);
            } else if !self.brake {
                placeable.push(id);
            }
        }
        placeable.extend(self.unassigned.iter().copied());
        placeable.sort_unstable();
        placeable.dedup();

        // Eligible workers and their targets.
        let eligible: Vec<String> =
            self.workers.iter().filter(|(_, w)| w.state == WorkerState::Live).map(|(id, _)| id.clone()).collect();
        let slots: Vec<Slot> = eligible
            .iter()
            .map(|id| {
                let w = &self.workers[id];
                Slot { capacity: w.max_streams, current: (w.owned.len() - w.revoking.len()) as u32 }
            })
            .collect();
        let total = (self.streams.len() - self.removed.len()) as u64;
        let targets = balance::targets(&slots, total);
        let mut moves_left = self.config.max_moves_per_round.unwrap_or(u32::MAX);

        // Drains: every active lease of a draining worker goes.
        let draining: Vec<String> =
            self.workers.iter().filter(|(_, w)| w.state == WorkerState::Draining).map(|(id, _)| id.clone()).collect();
        for id in draining {
            let w = &self.workers[&id];
            let owned: Vec<StreamId> = w.owned.iter().rev().filter(|s| !w.revoking.contains(s)).copied().collect();
            for stream_id in owned {
                if moves_left == 0 {
                    break;
                }
                if self.streams[&stream_id].lease.as_ref().is_some_and(|l| l.state == LeaseState::Active) {
                    self.revoke(stream_id, RevokeReason::Drain);
                    moves_left -= 1;
                }
            }
        }

        // Excess: above capacity always, above target unless paused.
        for (i, id) in eligible.iter().enumerate() {
            let w = &self.workers[id];
            // Leases already being revoked are on their way out.
            let over_capacity = slots[i].current.saturating_sub(w.max_streams);
            let over_target = if self.rebalancing_paused { 0 } else { slots[i].current.saturating_sub(targets[i]) };
            let excess = over_capacity.max(over_target);
            if excess == 0 {
                continue;
            }
            let reason =
                if over_capacity >= over_target { RevokeReason::OverCapacity } else { RevokeReason::Rebalance };
            // Give up the most recently granted first (highest epochs), so
            // long-held streams stay put.
            let mut candidates: Vec<(u64, StreamId)> = w
                .owned
                .iter()
                .filter_map(|&sid| {
                    let l = self.streams[&sid].lease.as_ref()?;
                    (l.state == LeaseState::Active).then_some((l.epoch, sid))
                })
                .collect();
            candidates.sort_unstable_by(|a, b| b.cmp(a));
            for (_, sid) in candidates.into_iter().take(excess as usize) {
                if reason == RevokeReason::Rebalance && moves_left == 0 {
                    break;
                }
                self.revoke(sid, reason);
                if reason == RevokeReason::Rebalance {
                    moves_left -= 1;
                }
            }
        }

        // Placements: fill the workers furthest below their targets. A heap
        // keeps this O(streams × log workers).
        let mut room: BinaryHeap<(u32, Reverse<u32>, Reverse<String>)> = eligible
            .iter()
            .enumerate()
            .filter_map(|(i, id)| {
                let w = &self.workers[id];
                let by_target = targets[i].saturating_sub(slots[i].current);
                let by_capacity = w.max_streams.saturating_sub(w.owned.len() as u32);
                let room = by_target.min(by_capacity);
                (room > 0).then(|| (room, Reverse(slots[i].current), Reverse(id.clone())))
            })
            .collect();
        for stream_id in placeable {
            // The most room first; then the least loaded; then by id. Not back
            // to the worker the stream just left, if anyone else can take it.
            let Some(mut pick) = room.pop() else { break };
            if self.streams[&stream_id].left.as_deref() == Some(pick.2.0.as_str())
                && let Some(other) = room.pop()
            {
                room.push(pick);
                pick = other;
            }
            let (space, Reverse(current), Reverse(server_id)) = pick;
            self.grant(stream_id, &server_id);
            if space > 1 {
                room.push((space - 1, Reverse(current + 1), Reverse(server_id)));
            }
        }
    }
}

#[cfg(test)]
mod tests;
