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
//!
//! # Where each concern lives
//!
//! This file holds [`Engine`], its events (worker calls, admin calls) and
//! its queries. `config.rs`: [`EngineConfig`]. `memory.rs`: the idempotence
//! memory (answers by `request_id`). `views.rs`: the persisted and admin
//! views. `validate.rs`: argument checks. `liveness.rs`: [`Engine::tick`],
//! session checks, expiry, the brake, the grace period. `placement.rs`:
//! grant, revoke, end a lease, and the placement round; `balance.rs`: the
//! water-filling targets. `types.rs`: the vocabulary (leases, decisions,
//! changes, errors).

mod balance;
mod config;
mod liveness;
mod memory;
mod placement;
mod types;
mod validate;
mod views;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;

pub use types::{
    Change, EngineError, HeartbeatReply, Lease, LeaseDecision, LeaseState, Millis, Registered, Released, RevokeReason,
    SessionRef, StreamId, WorkerState,
};

pub use config::EngineConfig;
use memory::{Answer, Answers, fingerprint};
pub(crate) use validate::validate_server_id;
use validate::{invalid, validate_request_id};
pub use views::{
    ClusterStatus, LeaseView, Overview, PersistedState, PersistedStream, PersistedWorker, RevokingLease, SessionView,
    WorkerView,
};

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
    /// The part of `unacknowledged` no answer has shown the worker yet
    /// (granted by a round after its last heartbeat): what RequestStreams
    /// may hand out as new.
    undelivered: BTreeSet<StreamId>,
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
    /// The highest worker epoch ever issued (see `PersistedState`).
    worker_epoch_floor: u64,
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
            worker_epoch_floor: 0,
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
        engine.worker_epoch_floor =
            state.workers.iter().map(|w| w.worker_epoch).fold(state.worker_epoch_floor, u64::max);
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
                    undelivered: BTreeSet::new(),
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
        // A server_id the engine does not know (new, or forgotten after the
        // retention) starts above every epoch ever issued: an old session of
        // a forgotten worker stays fenced.
        let floor = self.worker_epoch_floor;
        let worker = self.workers.entry(server_id.to_owned()).or_insert_with(|| Worker {
            worker_epoch: floor,
            session_id: String::new(),
            max_streams,
            state: WorkerState::Expired,
            last_heartbeat: now,
            owned: BTreeSet::new(),
            revoking: BTreeSet::new(),
            unacknowledged: BTreeSet::new(),
            undelivered: BTreeSet::new(),
            answers: Answers::default(),
        });
        worker.worker_epoch += 1;
        self.worker_epoch_floor = self.worker_epoch_floor.max(worker.worker_epoch);
        worker.session_id = format!("{instance:x}.{}", worker.worker_epoch);
        worker.max_streams = max_streams;
        // A drain survives re-registration; it ends with the session's
        // expiry or deregistration.
        worker.state = if worker.state == WorkerState::Draining { WorkerState::Draining } else { WorkerState::Live };
        worker.last_heartbeat = now;
        worker.unacknowledged.clear();
        worker.undelivered.clear();
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
                w.undelivered.remove(&lease.stream_id);
            }
        }
        if let Some(w) = self.workers.get_mut(server_id) {
            w.last_heartbeat = now;
        }
        self.rebalance(now);
        let reply = self.pending_for(server_id);
        if let Some(w) = self.workers.get_mut(server_id)
            && !w.undelivered.is_empty()
        {
            for lease in &reply.assign {
                w.undelivered.remove(&lease.stream_id);
            }
        }
        Ok(reply)
    }

    /// Grants up to `count` streams to a worker that pulls, from the streams
    /// nobody holds, within its balanced share: grants no answer has shown
    /// the worker yet (made by this call's placement round or an earlier
    /// one since its last heartbeat), never a lease a heartbeat already
    /// handed it. Like every grant they stay in Heartbeat `assign` until
    /// acknowledged there.
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
        let server_id = session.server_id.as_str();
        self.last_round = None; // a pull does not wait for the batching interval
        self.rebalance(now);
        let undelivered = &self.workers[server_id].undelivered;
        let granted: Vec<Lease> = self
            .pending_for(server_id)
            .assign
            .into_iter()
            .filter(|l| undelivered.contains(&l.stream_id))
            .take(count as usize)
            .collect();
        if let Some(w) = self.workers.get_mut(server_id) {
            for lease in &granted {
                w.undelivered.remove(&lease.stream_id);
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
            w.undelivered.clear();
            // The session is gone, not merely expired: later calls with it
            // get `SessionUnknown`, as the contract says.
            w.session_id.clear();
            // The retention counts from here.
            w.last_heartbeat = now;
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
        self.validate_ids("streams", ".stream_id", stream_ids)?;
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
                    // Durable again, with its lease (the store retired the
                    // stream at removal).
                    self.changes.push(Change::StreamRestored { stream_id: id });
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
        self.validate_ids("stream_ids", "", stream_ids)?;
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
                Some(_) => {
                    // Durable now, whatever state the lease is in; the
                    // stream is deleted when the lease ends.
                    self.changes.push(Change::StreamRemoved { stream_id: id });
                    self.revoke(id, RevokeReason::StreamRemoved);
                }
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
    /// [`EngineError::InvalidArgument`] for a malformed `server_id` or
    /// `request_id`, [`EngineError::UnknownWorker`] if the engine does not
    /// know it.
    pub fn drain(&mut self, now: Millis, server_id: &str, request_id: &str) -> Result<u32, EngineError> {
        validate_server_id(server_id)?;
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
            self.set_brake(false);
            self.expiries.clear();
        }
        self.admin_answers.put(request_id, print, Answer::Paused(paused));
        self.dirty = true;
        self.rebalance(now);
        Ok(paused)
    }

    // ------------------------------------------------------------ queries

    /// The current session of `server_id` as the heartbeat fast path sees
    /// it; `None` for a worker the engine does not know. O(log workers).
    pub fn session_view(&self, server_id: &str) -> Option<SessionView> {
        let w = self.workers.get(server_id)?;
        Some(SessionView {
            session_id: w.session_id.clone(),
            worker_epoch: w.worker_epoch,
            live: self.is_live_state(w.state),
            busy: !w.unacknowledged.is_empty() || !w.revoking.is_empty(),
            draining: w.state == WorkerState::Draining,
            last_heartbeat: w.last_heartbeat,
        })
    }

    /// The workers the engine knows.
    pub fn workers(&self) -> Vec<WorkerView> {
        self.workers.iter().map(|(id, w)| Self::worker_view(id, w)).collect()
    }

    fn worker_view(id: &str, w: &Worker) -> WorkerView {
        WorkerView {
            server_id: id.to_owned(),
            worker_epoch: w.worker_epoch,
            state: w.state,
            max_streams: w.max_streams,
            owned: u32::try_from(w.owned.len()).unwrap_or(u32::MAX),
            revoking: u32::try_from(w.revoking.len()).unwrap_or(u32::MAX),
            last_heartbeat: w.last_heartbeat,
        }
    }

    /// Up to `limit` workers after `after` (by server_id), and whether more
    /// follow. A range read: O(limit), whatever the fleet's size.
    pub fn workers_page(&self, after: Option<&str>, limit: usize) -> (Vec<WorkerView>, bool) {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut page: Vec<WorkerView> = self
            .workers
            .range::<str, _>((start, Bound::Unbounded))
            .take(limit + 1)
            .map(|(id, w)| Self::worker_view(id, w))
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        (page, more)
    }

    fn lease_view(&self, stream_id: StreamId, l: &LeaseRecord) -> LeaseView {
        LeaseView {
            server_id: l.owner.clone(),
            lease: Lease { stream_id, lease_epoch: l.epoch },
            state: l.state,
            owner_live: self.holds(&l.owner),
        }
    }

    /// Every lease, by stream id.
    pub fn leases(&self) -> Vec<LeaseView> {
        self.streams.iter().filter_map(|(&id, s)| Some(self.lease_view(id, s.lease.as_ref()?))).collect()
    }

    /// Up to `limit` catalog streams with id above `after`, each with its
    /// lease, and whether more follow. A range read: O(limit) (plus the few
    /// streams being removed), whatever the catalog's size.
    pub fn streams_page(&self, after: StreamId, limit: usize) -> (Vec<(StreamId, Option<LeaseView>)>, bool) {
        let mut page: Vec<(StreamId, Option<LeaseView>)> = self
            .streams
            .range((Bound::Excluded(after), Bound::Unbounded))
            .filter(|(_, s)| !s.removed)
            .take(limit + 1)
            .map(|(&id, s)| (id, s.lease.as_ref().map(|l| self.lease_view(id, l))))
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        (page, more)
    }

    /// Up to `limit` current leases (held by a live worker, or during grace
    /// by one awaiting re-registration) by ascending (server_id, stream_id),
    /// after the position `after`, only `server_id`'s if given; and whether
    /// more follow. Walks the workers' own lease sets from the position:
    /// O(limit + workers passed that hold nothing), never O(streams).
    pub fn assignments_page(
        &self,
        server_id: Option<&str>,
        after: Option<(&str, StreamId)>,
        limit: usize,
    ) -> (Vec<LeaseView>, bool) {
        let start = after.map_or(Bound::Unbounded, |(id, _)| Bound::Included(id));
        let workers: Box<dyn Iterator<Item = (&String, &Worker)>> = match server_id {
            Some(id) => Box::new(self.workers.get_key_value(id).into_iter()),
            None => Box::new(self.workers.range::<str, _>((start, Bound::Unbounded))),
        };
        let mut page = Vec::new();
        for (id, w) in workers.filter(|(_, w)| Self::holds_state(w.state)) {
            let from = match after {
                Some((after_id, stream)) if after_id == id.as_str() => Bound::Excluded(stream),
                Some((after_id, _)) if id.as_str() < after_id => continue,
                _ => Bound::Unbounded,
            };
            for &stream_id in w.owned.range((from, Bound::Unbounded)) {
                if let Some(l) = self.streams.get(&stream_id).and_then(|s| s.lease.as_ref()) {
                    if page.len() == limit {
                        return (page, true);
                    }
                    page.push(self.lease_view(stream_id, l));
                }
            }
        }
        (page, false)
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
        // Holders: live workers, and during the grace period those awaiting
        // re-registration (the contract counts their streams as ASSIGNED).
        let held_live: usize =
            self.workers.values().filter(|w| Self::holds_state(w.state)).map(|w| w.owned.len()).sum();
        let removed_live = self
            .removed
            .iter()
            .filter(|id| self.streams.get(id).and_then(|s| s.lease.as_ref()).is_some_and(|l| self.holds(&l.owner)))
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

    /// Counts over the whole fleet and the first `list` unassigned and
    /// revoking streams (see [`Overview`]). O(workers) plus, for each
    /// worker that is gone, its streams up to the `list` smallest kept so
    /// far (and the removed ones among them): no walk of the catalog.
    pub fn overview(&self, list: usize) -> Overview {
        let mut o = Overview { status: self.status(), ..Overview::default() };
        for w in self.workers.values() {
            o.workers_by_state[w.state as usize] += 1;
            if Self::holds_state(w.state) {
                o.leases_revoking += w.revoking.len() as u64;
                o.leases_active += (w.owned.len() - w.revoking.len()) as u64;
            } else {
                o.leases_orphaned += w.owned.len() as u64;
            }
        }
        if list == 0 {
            return o;
        }
        // Unassigned: catalog streams with no lease, and those whose holder
        // is gone; the `list` smallest ids of the union. Each holder's set
        // is sorted, so its walk stops at the first id above the `list`
        // kept so far.
        let mut first: BTreeSet<StreamId> = self.unassigned.iter().take(list).copied().collect();
        for w in self.workers.values().filter(|w| !Self::holds_state(w.state)) {
            for &id in &w.owned {
                if first.len() == list && first.last().is_some_and(|&max| id > max) {
                    break;
                }
                if !self.removed.contains(&id) {
                    first.insert(id);
                    if first.len() > list {
                        first.pop_last();
                    }
                }
            }
        }
        o.unassigned_first = first.into_iter().collect();
        'workers: for (id, w) in self.workers.iter().filter(|(_, w)| Self::holds_state(w.state)) {
            for &stream_id in &w.revoking {
                if o.revoking_first.len() == list {
                    break 'workers;
                }
                if let Some(l) = self.streams.get(&stream_id).and_then(|s| s.lease.as_ref())
                    && let LeaseState::Revoking(reason) = l.state
                {
                    o.revoking_first.push(RevokingLease {
                        server_id: id.clone(),
                        lease: Lease { stream_id, lease_epoch: l.epoch },
                        reason,
                    });
                }
            }
        }
        o
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
            worker_epoch_floor: self.worker_epoch_floor,
        }
    }

    // ------------------------------------------------------------ internals

    /// Keep or revoke for each presented lease. Beyond the worker's
    /// `max_streams` the first leases in the order given are kept and the
    /// rest revoked as over capacity (reserved until released).
    fn reconcile(&mut self, server_id: &str, held: &[Lease]) -> Vec<LeaseDecision> {
        let max = self.workers.get(server_id).map_or(0, |w| w.max_streams) as usize;
        let mut kept = 0;
        let mut reoffer = Vec::new();
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
                    Some(l) if l.owner == server_id => {
                        // Its lease of the stream is at another epoch (an
                        // answer that granted it was lost): stop the one
                        // presented; the current one is offered again below.
                        reoffer.push(lease.stream_id);
                        LeaseDecision::Revoke(lease, RevokeReason::StaleEpoch)
                    }
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
        // The worker's current lease of a stream it presented at another
        // epoch: in `assign` again (within its capacity), or ended (it is
        // not processing it at the current epoch, and has no room for it).
        for stream_id in reoffer {
            let active = self
                .streams
                .get(&stream_id)
                .and_then(|s| s.lease.as_ref())
                .is_some_and(|l| l.owner == server_id && l.state == LeaseState::Active);
            if !active {
                continue;
            }
            if kept < max {
                kept += 1;
                if let Some(w) = self.workers.get_mut(server_id) {
                    w.unacknowledged.insert(stream_id);
                    w.undelivered.insert(stream_id);
                }
            } else {
                self.end_lease(stream_id);
            }
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
}

#[cfg(test)]
mod tests;
