//! Property tests of the assignment engine: random sequences of joins,
//! leaves, crashes, partitions, heartbeats, stream additions and removals,
//! requests, releases, retries and reconnects, with DESIGN.md's invariants
//! 1–7 checked after every step. A failing case shrinks to a short, readable
//! list of `Op`s.
//!
//! The workers are simulated as the worker client behaves: a worker
//! processes what it was assigned until it has released it; a partitioned
//! worker keeps processing (local mode) but cannot call; a crashed worker
//! processes nothing and forgets its leases; a worker told its session is
//! gone registers again, presenting what it processes.

use std::collections::{BTreeMap, BTreeSet};

use orchestrator::engine::{
    Change, Engine, EngineConfig, EngineError, Lease, LeaseDecision, LeaseState, Millis, SessionRef, StreamId,
    WorkerState,
};
use proptest::prelude::*;

const WORKERS: usize = 4;
const TIMEOUT: Millis = 30_000;
const HEARTBEAT: Millis = 5_000;

#[derive(Debug, Clone)]
enum Op {
    Join(usize),
    Heartbeat(usize),
    Request(usize, u32),
    Crash(usize),
    Partition(usize),
    Heal(usize),
    Leave(usize),
    AddStreams(u8),
    RemoveStream(u8),
    /// Adds back a stream id that was used before (removed or not).
    ReAdd(u8),
    Advance(Millis),
    RetryLast,
    Drain(usize),
    Pause(bool),
}

fn op() -> impl Strategy<Value = Op> {
    let w = 0..WORKERS;
    prop_oneof![
        3 => w.clone().prop_map(Op::Join),
        8 => w.clone().prop_map(Op::Heartbeat),
        2 => (w.clone(), 1u32..4).prop_map(|(w, n)| Op::Request(w, n)),
        1 => w.clone().prop_map(Op::Crash),
        1 => w.clone().prop_map(Op::Partition),
        2 => w.clone().prop_map(Op::Heal),
        1 => w.clone().prop_map(Op::Leave),
        2 => (1u8..5).prop_map(Op::AddStreams),
        1 => (1u8..20).prop_map(Op::RemoveStream),
        1 => (1u8..20).prop_map(Op::ReAdd),
        4 => prop_oneof![Just(HEARTBEAT), Just(TIMEOUT), 1_000u64..40_000].prop_map(Op::Advance),
        2 => Just(Op::RetryLast),
        1 => w.clone().prop_map(Op::Drain),
        1 => any::<bool>().prop_map(Op::Pause),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Process {
    Down,
    Up,
    Partitioned,
}

#[derive(Debug)]
struct SimWorker {
    id: String,
    max: u32,
    process: Process,
    session: Option<SessionRef>,
    /// Leases the worker processes now.
    processing: BTreeSet<Lease>,
    /// Revoked leases it will release on its next call.
    to_release: Vec<Lease>,
    /// Assigned leases it will acknowledge on its next heartbeat.
    to_ack: Vec<Lease>,
    /// Leases RequestStreams returned that no heartbeat has listed yet.
    pulled: Vec<Lease>,
    /// Leases this session's heartbeats have handed out in `assign`.
    shown: BTreeSet<Lease>,
}

/// The last mutating call, to retry with the same request id.
#[derive(Debug, Clone)]
enum LastCall {
    Register(usize, String, Vec<Lease>, orchestrator::engine::Registered),
    Request(usize, String, u32, Vec<Lease>),
    Release(usize, String, Vec<Lease>, orchestrator::engine::Released),
}

struct Sim {
    e: Engine,
    now: Millis,
    workers: Vec<SimWorker>,
    next_stream: StreamId,
    requests: u64,
    last: Option<LastCall>,
    /// Highest lease epoch seen per stream, and worker epoch per worker.
    stream_epochs: BTreeMap<StreamId, u64>,
    worker_epochs: BTreeMap<String, u64>,
    /// Grants per stream: (owner, generation of membership at grant time).
    grants: BTreeMap<StreamId, Vec<(String, u64)>>,
    /// Bumped by anything that may legitimately change the targets.
    generation: u64,
    log: Vec<String>,
}

impl Sim {
    fn new() -> Self {
        let config = EngineConfig {
            session_timeout: TIMEOUT,
            heartbeat_interval: HEARTBEAT,
            grace_period: TIMEOUT,
            ..EngineConfig::default()
        };
        let workers = (0..WORKERS)
            .map(|i| SimWorker {
                id: format!("w{i}"),
                max: [3, 5, 8, 13][i % 4],
                process: Process::Down,
                session: None,
                processing: BTreeSet::new(),
                to_release: Vec::new(),
                to_ack: Vec::new(),
                pulled: Vec::new(),
                shown: BTreeSet::new(),
            })
            .collect();
        let mut sim = Self {
            e: Engine::new(config),
            now: 0,
            workers,
            next_stream: 1,
            requests: 0,
            last: None,
            stream_epochs: BTreeMap::new(),
            worker_epochs: BTreeMap::new(),
            grants: BTreeMap::new(),
            generation: 0,
            log: Vec::new(),
        };
        sim.add_streams(8);
        sim
    }

    fn rid(&mut self) -> String {
        self.requests += 1;
        format!("req-{}", self.requests)
    }

    fn add_streams(&mut self, n: u8) {
        let ids: Vec<StreamId> = (0..i64::from(n)).map(|i| self.next_stream + i).collect();
        self.next_stream += i64::from(n);
        let rid = self.rid();
        self.e.add_streams(self.now, &ids, &rid).expect("add streams");
        self.generation += 1;
    }

    fn register(&mut self, w: usize) {
        let rid = self.rid();
        let held: Vec<Lease> = self.workers[w].processing.iter().copied().collect();
        let (id, max) = (self.workers[w].id.clone(), self.workers[w].max);
        let r = self.e.register(self.now, &id, max, &rid, &held).expect("register");
        self.apply_decisions(w, &r.decisions);
        self.workers[w].session = Some(r.session.clone());
        self.workers[w].to_release.clear();
        self.workers[w].to_ack.clear();
        self.workers[w].pulled.clear();
        self.workers[w].shown.clear();
        self.last = Some(LastCall::Register(w, rid, held, r));
        self.generation += 1;
    }

    fn apply_decisions(&mut self, w: usize, decisions: &[LeaseDecision]) {
        for d in decisions {
            if let LeaseDecision::Revoke(l, _) = d {
                self.workers[w].processing.remove(l);
            }
        }
    }

    /// Handles a fencing error the way the client does: register again.
    fn on_error(&mut self, w: usize, err: EngineError) {
        match err {
            EngineError::SessionExpired { .. }
            | EngineError::SessionFenced { .. }
            | EngineError::SessionUnknown { .. } => self.register(w),
            other => panic!("unexpected error for {}: {other}", self.workers[w].id),
        }
    }

    fn heartbeat(&mut self, w: usize) {
        let Some(session) = self.workers[w].session.clone() else { return self.register(w) };
        // Release what was revoked last time: stop processing it now.
        let releases = std::mem::take(&mut self.workers[w].to_release);
        if !releases.is_empty() {
            let rid = self.rid();
            match self.e.release_streams(self.now, &session, &releases, &rid) {
                Ok(r) => {
                    for l in &releases {
                        self.workers[w].processing.remove(l);
                    }
                    self.last = Some(LastCall::Release(w, rid, releases, r));
                }
                Err(e) => return self.on_error(w, e),
            }
        }
        let acks = std::mem::take(&mut self.workers[w].to_ack);
        match self.e.heartbeat(self.now, &session, &acks) {
            Ok(reply) => {
                // The contract: a pulled lease is repeated in `assign` until
                // acknowledged (unless it has been revoked or moved since).
                let id = self.workers[w].id.clone();
                for l in std::mem::take(&mut self.workers[w].pulled) {
                    let revoked = reply.revoke.iter().any(|(r, _)| *r == l);
                    if self.e.is_current_for(&id, l) && !revoked {
                        assert!(reply.assign.contains(&l), "pulled lease {l:?} missing from assign");
                    }
                }
                for l in &reply.assign {
                    self.workers[w].processing.insert(*l);
                    self.workers[w].shown.insert(*l);
                }
                self.workers[w].to_ack = reply.assign;
                self.workers[w].to_release = reply.revoke.iter().map(|(l, _)| *l).collect();
            }
            Err(e) => self.on_error(w, e),
        }
    }

    fn step(&mut self, op: &Op) {
        self.log.push(format!("t={} {op:?}", self.now));
        match *op {
            Op::Join(w) => {
                if self.workers[w].process == Process::Down {
                    self.workers[w].process = Process::Up;
                    self.register(w);
                }
            }
            Op::Heartbeat(w) if self.workers[w].process == Process::Up => self.heartbeat(w),
            Op::Heartbeat(_) => {}
            Op::Request(w, n) => {
                if self.workers[w].process != Process::Up {
                    return;
                }
                let Some(session) = self.workers[w].session.clone() else { return };
                let n = n.min(self.workers[w].max);
                let rid = self.rid();
                match self.e.request_streams(self.now, &session, n, &rid) {
                    Ok(granted) => {
                        // Processed at once, acknowledged in a heartbeat
                        // like any grant (they stay in `assign` until then).
                        self.workers[w].processing.extend(granted.iter().copied());
                        self.workers[w].pulled.extend(granted.iter().copied());
                        for l in &granted {
                            assert!(
                                !self.workers[w].shown.contains(l),
                                "RequestStreams returned {l:?}, already in assign"
                            );
                        }
                        self.last = Some(LastCall::Request(w, rid, n, granted));
                    }
                    Err(e) => self.on_error(w, e),
                }
            }
            Op::Crash(w) => {
                let worker = &mut self.workers[w];
                worker.process = Process::Down;
                worker.processing.clear();
                worker.to_ack.clear();
                worker.pulled.clear();
                worker.shown.clear();
                worker.to_release.clear();
                worker.session = None;
                self.generation += 1;
            }
            Op::Partition(w) => {
                if self.workers[w].process == Process::Up {
                    self.workers[w].process = Process::Partitioned;
                    self.generation += 1;
                }
            }
            Op::Heal(w) => {
                if self.workers[w].process == Process::Partitioned {
                    self.workers[w].process = Process::Up;
                    self.generation += 1;
                    self.heartbeat(w);
                }
            }
            Op::Leave(w) => {
                if self.workers[w].process != Process::Up {
                    return;
                }
                if let Some(session) = self.workers[w].session.take() {
                    let rid = self.rid();
                    if let Err(e) = self.e.deregister(self.now, &session, &rid) {
                        assert!(!matches!(e, EngineError::InvalidArgument { .. }), "{e}");
                    }
                }
                let worker = &mut self.workers[w];
                worker.process = Process::Down;
                worker.processing.clear();
                worker.to_ack.clear();
                worker.pulled.clear();
                worker.shown.clear();
                worker.to_release.clear();
                self.generation += 1;
            }
            Op::AddStreams(n) => self.add_streams(n),
            Op::RemoveStream(k) => {
                let ids = self.e.stream_ids();
                if let Some(&id) = ids.get(usize::from(k) % ids.len().max(1)) {
                    let rid = self.rid();
                    self.e.remove_streams(self.now, &[id], &rid).expect("remove");
                    self.generation += 1;
                }
            }
            Op::ReAdd(k) => {
                let id = 1 + i64::from(k) % (self.next_stream - 1).max(1);
                let rid = self.rid();
                self.e.add_streams(self.now, &[id], &rid).expect("add again");
                self.generation += 1;
            }
            Op::Advance(ms) => {
                self.now += ms;
                self.e.tick(self.now);
            }
            Op::RetryLast => self.retry_last(),
            Op::Drain(w) => {
                let id = self.workers[w].id.clone();
                let rid = self.rid();
                if self.e.drain(self.now, &id, &rid).is_ok() {
                    self.generation += 1;
                }
            }
            Op::Pause(p) => {
                let rid = self.rid();
                self.e.set_rebalancing_paused(self.now, p, &rid).expect("pause");
                self.generation += 1;
            }
        }
    }

    /// Invariant 7: the same request id gets the same answer and changes nothing.
    fn retry_last(&mut self) {
        let Some(last) = self.last.clone() else { return };
        let before = self.e.leases();
        let changes_before = self.e.take_changes();
        self.record(&changes_before);
        match last {
            LastCall::Register(w, rid, held, answer) => {
                let id = self.workers[w].id.clone();
                let again = self.e.register(self.now, &id, self.workers[w].max, &rid, &held).expect("retried register");
                assert_eq!(again, answer, "a retried register gets the same session");
            }
            LastCall::Request(w, rid, n, granted) => {
                let Some(s) = self.workers[w].session.clone() else { return };
                match self.e.request_streams(self.now, &s, n, &rid) {
                    Ok(again) => assert_eq!(again, granted, "a retried request gets the same leases"),
                    Err(e) => assert!(!matches!(e, EngineError::InvalidArgument { .. }), "{e}"),
                }
            }
            LastCall::Release(w, rid, leases, released) => {
                let Some(s) = self.workers[w].session.clone() else { return };
                match self.e.release_streams(self.now, &s, &leases, &rid) {
                    Ok(again) => assert_eq!(again, released, "a retried release gets the same answer"),
                    Err(e) => assert!(!matches!(e, EngineError::InvalidArgument { .. }), "{e}"),
                }
            }
        }
        assert_eq!(self.e.leases(), before, "a retry changed the leases");
        assert!(self.e.take_changes().is_empty(), "a retry made durable changes");
    }

    fn live_session(&self, w: usize) -> bool {
        let Some(s) = &self.workers[w].session else { return false };
        self.e.workers().iter().any(|v| {
            v.server_id == s.server_id
                && v.worker_epoch == s.worker_epoch
                && matches!(v.state, WorkerState::Live | WorkerState::Draining)
        })
    }

    fn record(&mut self, changes: &[Change]) {
        for c in changes {
            match c {
                Change::LeaseGranted { server_id, lease } => {
                    let max = self.stream_epochs.entry(lease.stream_id).or_insert(0);
                    assert!(lease.lease_epoch > *max, "invariant 2: epoch of {} did not grow", lease.stream_id);
                    *max = lease.lease_epoch;
                    let seq = self.grants.entry(lease.stream_id).or_default();
                    seq.push((server_id.clone(), self.generation));
                    // Invariant 6: no A -> B -> A without a membership change in between.
                    if let [.., (a, g1), (b, _), (c, g3)] = seq.as_slice() {
                        assert!(
                            !(a == c && a != b && g1 == g3),
                            "invariant 6: stream {} bounced {a} -> {b} -> {c}",
                            lease.stream_id
                        );
                    }
                }
                Change::WorkerRegistered { server_id, worker_epoch, .. } => {
                    let prev = self.worker_epochs.insert(server_id.clone(), *worker_epoch).unwrap_or(0);
                    assert!(*worker_epoch > prev, "worker epoch of {server_id} did not grow");
                }
                Change::WorkerExpired { .. } | Change::WorkerLeft { .. } => self.generation += 1,
                _ => {}
            }
        }
    }

    fn check(&mut self) {
        let changes = self.e.take_changes();
        self.record(&changes);
        let leases = self.e.leases();
        // Invariant 1: at most one live session processes a stream, and what
        // a live session processes is its current lease.
        let mut processed_by: BTreeMap<StreamId, Vec<String>> = BTreeMap::new();
        for (w, worker) in self.workers.iter().enumerate() {
            if worker.process == Process::Down || !self.live_session(w) {
                continue;
            }
            for l in &worker.processing {
                processed_by.entry(l.stream_id).or_default().push(worker.id.clone());
                assert!(
                    self.e.is_current_for(&worker.id, *l),
                    "invariant 1: {} processes {l} which is not its lease",
                    worker.id
                );
            }
        }
        for (stream, owners) in processed_by {
            assert!(owners.len() <= 1, "invariant 1: stream {stream} processed by {owners:?}");
        }
        // Invariant 3: capacity.
        for v in self.e.workers() {
            assert!(v.owned <= v.max_streams, "invariant 3: {} holds {} > {}", v.server_id, v.owned, v.max_streams);
        }
        // Leases only name known streams; epochs only grow.
        for l in &leases {
            let seen = self.stream_epochs.get(&l.lease.stream_id).copied().unwrap_or(0);
            assert!(l.lease.lease_epoch <= seen.max(l.lease.lease_epoch));
        }
    }

    /// Heals everyone, lets time pass with every worker heartbeating, until
    /// nothing changes.
    fn settle(&mut self) {
        for w in 0..WORKERS {
            if self.workers[w].process == Process::Partitioned {
                self.workers[w].process = Process::Up;
            }
        }
        let rid = self.rid();
        self.e.set_rebalancing_paused(self.now, false, &rid).expect("resume");
        self.generation += 1;
        for _ in 0..(2 * TIMEOUT / HEARTBEAT + 10) {
            for w in 0..WORKERS {
                if self.workers[w].process == Process::Up {
                    self.heartbeat(w);
                }
            }
            self.check();
            self.now += HEARTBEAT;
            self.e.tick(self.now);
            self.check();
        }
    }

    fn loads(&self) -> Vec<(String, u32, u32)> {
        let views = self.e.workers();
        views
            .iter()
            .filter(|v| v.state == WorkerState::Live)
            .map(|v| (v.server_id.clone(), v.owned, v.max_streams))
            .collect()
    }
}

fn run(ops: &[Op]) -> Sim {
    let mut sim = Sim::new();
    for op in ops {
        sim.step(op);
        sim.check();
    }
    sim
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Invariants 1, 2, 3, 6 and 7 hold after every step of any sequence.
    #[test]
    fn invariants_hold_after_every_step(ops in proptest::collection::vec(op(), 1..80)) {
        run(&ops);
    }

    /// Invariants 4 and 5: once the fleet is stable, every stream is placed
    /// (capacity allowing), the load is balanced, and nothing moves any more.
    #[test]
    fn a_stable_fleet_covers_balances_and_stays_put(ops in proptest::collection::vec(op(), 1..60)) {
        let mut sim = run(&ops);
        sim.settle();
        let status = sim.e.status();
        let loads = sim.loads();
        if !status.brake_engaged {
            // Coverage: every stream assigned to a live, non-draining worker, if capacity allows.
            let live_capacity: u64 = loads.iter().map(|(_, _, max)| u64::from(*max)).sum();
            {
                let expected = status.total_streams.min(live_capacity);
                prop_assert_eq!(status.assigned_streams, expected, "invariant 4: loads {:?}", loads);
                // Balanced: below capacity, within one of every other.
                let below: Vec<u32> = loads.iter().filter(|(_, n, max)| n < max).map(|(_, n, _)| *n).collect();
                let highest = loads.iter().map(|(_, n, _)| *n).max().unwrap_or(0);
                if let Some(&lowest) = below.iter().min() {
                    prop_assert!(highest - lowest <= 1, "unbalanced: {:?}", loads);
                }
            }
            // Every lease of a live worker is acknowledged and processed by it.
            for l in sim.e.leases().into_iter().filter(|l| l.owner_live) {
                prop_assert_eq!(l.state, LeaseState::Active);
                let w = sim.workers.iter().find(|w| w.id == l.server_id).expect("owner");
                prop_assert!(w.processing.contains(&l.lease), "{} does not process {}", w.id, l.lease);
            }
        }
        // Invariant 5: no membership change, no moves.
        let before = sim.e.leases();
        for _ in 0..5 {
            for w in 0..WORKERS {
                if sim.workers[w].process == Process::Up {
                    sim.heartbeat(w);
                }
            }
            sim.now += HEARTBEAT;
            sim.e.tick(sim.now);
            sim.check();
        }
        prop_assert_eq!(sim.e.leases(), before, "invariant 5: leases moved without a membership change");
    }

    /// Invariant 6, minimal moves: a worker joining a settled fleet takes
    /// streams only from workers above the new share; nobody else gains or
    /// loses, and the number moved is exactly what the newcomer gains.
    #[test]
    fn a_join_moves_only_what_balance_requires(caps in proptest::collection::vec(1u32..12, 1..5), streams in 1i64..40, newcomer in 1u32..12) {
        let mut e = Engine::new(EngineConfig::default());
        let ids: Vec<StreamId> = (1..=streams).collect();
        e.add_streams(0, &ids, "add").unwrap();
        let mut sessions = Vec::new();
        for (i, cap) in caps.iter().enumerate() {
            sessions.push(e.register(0, &format!("w{i}"), *cap, "join", &[]).unwrap().session);
        }
        let settle = |e: &mut Engine, sessions: &[SessionRef]| {
            for _ in 0..20 {
                for s in sessions {
                    let r = e.heartbeat(0, s, &[]).unwrap();
                    e.heartbeat(0, s, &r.assign).unwrap();
                    if !r.revoke.is_empty() {
                        let leases: Vec<Lease> = r.revoke.iter().map(|(l, _)| *l).collect();
                        e.release_streams(0, s, &leases, &format!("rel-{}", leases[0])).unwrap();
                    }
                }
            }
        };
        settle(&mut e, &sessions);
        let owned = |e: &Engine| -> BTreeMap<String, BTreeSet<StreamId>> {
            let mut m: BTreeMap<String, BTreeSet<StreamId>> = BTreeMap::new();
            for l in e.leases() { m.entry(l.server_id).or_default().insert(l.lease.stream_id); }
            m
        };
        let before = owned(&e);
        let unassigned_before = streams as usize - before.values().map(BTreeSet::len).sum::<usize>();
        e.take_changes();
        sessions.push(e.register(0, "new", newcomer, "join", &[]).unwrap().session);
        settle(&mut e, &sessions);
        let after = owned(&e);
        let moves = e.take_changes().iter().filter(|c| matches!(c, Change::LeaseRevoking { .. })).count();
        let gained = after.get("new").map_or(0, BTreeSet::len);
        let mut lost = 0;
        for (id, old) in &before {
            let now = after.get(id).cloned().unwrap_or_default();
            prop_assert!(now.is_subset(old), "{} gained streams on someone else's join", id);
            lost += old.len() - now.len();
        }
        prop_assert_eq!(moves, lost, "every move is a stream the newcomer takes");
        prop_assert!(gained >= lost && gained - lost <= unassigned_before, "the newcomer gets the moved and some unplaced streams");

    }

    /// Invariant 5 across a restart: rebuilt from its snapshot, the engine
    /// moves nothing during grace, and every worker that re-registers
    /// presenting what it processes keeps all of it at the same epochs.
    #[test]
    fn a_restart_within_grace_moves_nothing(ops in proptest::collection::vec(op(), 1..60)) {
        let mut sim = run(&ops);
        sim.settle();
        let before = sim.e.leases();
        let config = sim.e.config().clone();
        let mut e = Engine::restore(config, sim.e.snapshot(), sim.now);
        e.tick(sim.now + 1);
        prop_assert!(e.take_changes().is_empty(), "something moved during grace");
        let mut back = BTreeSet::new();
        for w in sim.workers.iter().filter(|w| w.process == Process::Up && sim.e.workers().iter().any(|v| v.server_id == w.id && v.state == WorkerState::Live)) {
            let held: Vec<Lease> = w.processing.iter().copied().collect();
            let r = e.register(sim.now + 2, &w.id, w.max, "after-restart", &held).unwrap();
            prop_assert!(r.decisions.iter().all(|d| matches!(d, LeaseDecision::Keep(_))), "{} lost {:?}", w.id, r.decisions);
            back.insert(w.id.clone());
        }
        e.tick(sim.now + 3);
        let kept = |leases: Vec<orchestrator::engine::LeaseView>| -> Vec<(String, Lease)> {
            leases.into_iter().filter(|l| back.contains(&l.server_id)).map(|l| (l.server_id, l.lease)).collect()
        };
        prop_assert_eq!(kept(e.leases()), kept(before), "a returning worker lost a lease or an epoch changed");
    }
}
