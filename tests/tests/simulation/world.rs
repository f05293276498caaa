//! One simulated world: the orchestrator and N worker clients on turmoil
//! hosts, a fault schedule drawn from the seed, and the invariants checked
//! after every step.
//!
//! Everything that could make two runs of a seed differ is pinned: turmoil
//! steps every host on this thread in a fixed order on simulated time; the
//! orchestrator's committer and the workers' state writers run as tasks on
//! their host's runtime (the product's simulation seams); both sides read
//! the simulated wall clock; every random choice (turmoil's, the fault
//! schedule's, the clients' jitter through `fastrand`) comes from the seed.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use orchestrator::engine::{EngineConfig, LeaseState};
use orchestrator::server::{Environment, OrchestratorServer, ServerConfig, StoreDriver};
use orchestrator::service::Orchestrator;
use orchestrator::store::{Batch, Loaded, RecordsOutcome, SqliteStore, Store, StoreError};
use tokio::sync::watch;
use worker_client::{LeaseSet, ResilientWorkerClient};

use super::net::{SimListener, connector};

/// Simulated time per step.
pub(crate) const TICK: Duration = Duration::from_millis(10);
/// The orchestrator's heartbeat interval.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);
/// The orchestrator's session timeout.
pub(crate) const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// The restart grace period.
pub(crate) const GRACE: Duration = Duration::from_secs(5);
/// The clients' `local_mode_after`.
pub(crate) const LOCAL_MODE_AFTER: Duration = Duration::from_secs(3);
/// The clients' `local_mode_limit` in the strict worlds: below the session
/// timeout, so a cut-off worker stops before its streams can move.
pub(crate) const LOCAL_MODE_LIMIT: Duration = Duration::from_secs(5);
/// The clients' breaker recovery timeout and reconnect backoff ceiling: the
/// longest a probe waits.
pub(crate) const PROBE_MAX: Duration = Duration::from_secs(2);
/// How often the worker application processes each of its streams.
pub(crate) const PROCESS_EVERY: Duration = Duration::from_millis(500);
/// The orchestrator's host name and port.
pub(crate) const ORCHESTRATOR: &str = "orchestrator";
const PORT: u16 = 50051;
const URL: &str = "http://orchestrator:50051";
/// Network latency outside faults.
const BASE_LATENCY: Duration = Duration::from_millis(5);
/// Slack on timing bounds: a few steps and the slowest normal round trip.
const SLACK: Duration = Duration::from_millis(500);

/// The simulated wall clock both sides read: turmoil's, on a fixed epoch.
pub(crate) fn sim_wall() -> SystemTime {
    UNIX_EPOCH + turmoil::since_epoch().unwrap_or(EPOCH)
}
const EPOCH: Duration = Duration::from_secs(1_800_000_000);

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The world's shape, drawn from the seed.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Worker hosts.
    pub(crate) workers: usize,
    /// Streams in the catalog (`--demo-streams`).
    pub(crate) streams: u32,
    /// Each worker's `max_streams`.
    pub(crate) max_streams: u32,
    /// Simulated time of the run.
    pub(crate) duration: Duration,
    /// Faults start before this; afterwards everything heals and the world
    /// must settle.
    pub(crate) faults_until: Duration,
    /// The clients' `local_mode_limit`; with one below the session timeout
    /// no stream is ever processed by two workers at once.
    pub(crate) local_mode_limit: Option<Duration>,
    /// Draw faults at all.
    pub(crate) faults: bool,
}

impl Settings {
    /// The shape for `seed`.
    pub(crate) fn for_seed(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed_5e77_1165);
        Self {
            workers: rng.usize(3..=5),
            streams: rng.u32(5..=20),
            max_streams: 10,
            duration: Duration::from_secs(60),
            faults_until: Duration::from_secs(38),
            local_mode_limit: if rng.u8(0..4) == 0 { None } else { Some(LOCAL_MODE_LIMIT) },
            faults: true,
        }
    }

    fn name(i: usize) -> String {
        format!("w{i}")
    }
}

/// A fault, applied for a window of time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Fault {
    /// Cut one worker from the orchestrator.
    Partition(usize),
    /// Cut the orchestrator from every worker.
    Isolate,
    /// Cut these workers (a part of the fleet) from the orchestrator.
    Split(Vec<usize>),
    /// Hold a worker's messages, delivered when the hold ends.
    Hold(usize),
    /// Slow a worker's link.
    Latency(usize, Duration),
    /// Crash the orchestrator; restart it (state kept) at the end.
    CrashOrchestrator,
    /// Crash a worker; restart it (state file kept) at the end.
    CrashWorker(usize),
    /// Pause a worker past the session timeout: its network held and its
    /// application stopped (its timers run: turmoil cannot stop one host's
    /// clock).
    Pause(usize),
    /// Each group commit of the orchestrator's store waits this long.
    SlowStorage(Duration),
}

/// A fault and when it applies.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    /// Start.
    pub(crate) from: Duration,
    /// End.
    pub(crate) to: Duration,
    /// What.
    pub(crate) fault: Fault,
}

/// The fault schedule of a seed.
pub(crate) fn schedule(seed: u64, s: &Settings) -> Vec<Window> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0xfa17_5c4e_d01e);
    let mut windows = Vec::new();
    if !s.faults {
        return windows;
    }
    let mut t = Duration::from_secs(2);
    loop {
        t += Duration::from_millis(rng.u64(1_000..5_000));
        if t >= s.faults_until {
            break;
        }
        let w = rng.usize(0..s.workers);
        let mut length = Duration::from_millis(rng.u64(500..10_000));
        let fault = match rng.u8(0..100) {
            0..20 => Fault::Partition(w),
            20..30 => Fault::Isolate,
            30..40 => {
                let part: Vec<usize> = (0..s.workers).filter(|_| rng.bool()).collect();
                if part.is_empty() { Fault::Partition(w) } else { Fault::Split(part) }
            }
            40..50 => Fault::Hold(w),
            50..58 => Fault::Latency(w, Duration::from_millis(rng.u64(100..1_500))),
            58..70 => Fault::CrashOrchestrator,
            70..82 => Fault::CrashWorker(w),
            82..90 => {
                length = SESSION_TIMEOUT + Duration::from_millis(rng.u64(500..5_000));
                Fault::Pause(w)
            }
            _ => Fault::SlowStorage(Duration::from_millis(rng.u64(50..800))),
        };
        let to = (t + length).min(s.faults_until);
        windows.push(Window { from: t, to, fault });
    }
    windows
}

/// A processing record the application made (the client said it is
/// durable in the worker's state).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Made {
    worker: usize,
    stream: i64,
    epoch: u64,
    at_ms: i64,
}

/// What a worker host publishes for the checker.
#[derive(Debug, Default)]
struct Slot {
    running: bool,
    incarnation: u32,
    leases: Option<watch::Receiver<LeaseSet>>,
    paused: bool,
    unsynced: Option<u64>,
}

/// State shared by the hosts and the checker (all on this thread).
#[derive(Default)]
struct Shared {
    workers: Vec<Slot>,
    orchestrator: Option<Orchestrator>,
    made: Vec<Made>,
}

/// The orchestrator's durable store: SQLite in memory, owned by the
/// harness, so it outlives the orchestrator's crashes as a disk would.
/// Commits are whole or absent (one transaction, on the host's thread).
#[derive(Clone)]
pub(crate) struct Disk(Arc<Mutex<SqliteStore>>);

impl Disk {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(SqliteStore::in_memory().expect("an in-memory store"))))
    }

    fn read(&self) -> Loaded {
        self.0.lock().unwrap().load().expect("read the store")
    }
}

impl Store for Disk {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        self.0.lock().unwrap().load()
    }

    fn commit(&mut self, batches: &[Batch]) -> Result<Vec<Option<RecordsOutcome>>, StoreError> {
        self.0.lock().unwrap().commit(batches)
    }

    fn recent_events(&mut self, limit: usize) -> Result<Vec<orchestrator::store::AuditEvent>, StoreError> {
        self.0.lock().unwrap().recent_events(limit)
    }
}

/// What one run found.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The seed.
    pub(crate) seed: u64,
    /// Everything that happened, one line per event, with simulated times.
    pub(crate) trace: String,
    /// Invariants that did not hold (empty: the run passed).
    pub(crate) violations: Vec<String>,
}

impl Outcome {
    /// The failure report: seed, how to replay, violations, the trace.
    pub(crate) fn report(&self) -> String {
        format!(
            "simulation seed {seed} failed; replay it with SIM_SEED={seed} cargo test -p e2e --test simulation \
             replay\n\nviolations:\n  {}\n\ntrace:\n{}",
            self.violations.join("\n  "),
            self.trace,
            seed = self.seed
        )
    }
}

/// The state of a worker's link to the orchestrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    /// Slower than usual (a latency fault): neither lost nor back.
    Slow,
    Held,
    Cut,
}

/// The fault bookkeeping: overlapping windows are counted, so a link heals
/// only when every fault on it has ended.
struct Faults {
    cut: Vec<u32>,
    isolated: u32,
    held: Vec<u32>,
    link: Vec<Link>,
    orchestrator_down: bool,
    worker_down: Vec<bool>,
    slow: Vec<Duration>,
    /// Latency faults per worker, and the latency in force.
    delayed: Vec<u32>,
    latency: Vec<Duration>,
    /// Windows not applied (a crash of something already down).
    skipped: BTreeSet<usize>,
}

/// Per worker, what the checker remembers between steps.
#[derive(Debug, Default, Clone)]
struct Seen {
    set: BTreeMap<i64, u64>,
    local: bool,
    incarnation: u32,
    /// Since when the worker cannot reach the orchestrator.
    lost_since: Option<Duration>,
    /// Since when it can again.
    back_since: Option<Duration>,
    /// When it last entered local mode.
    local_since: Option<Duration>,
    /// When this incarnation started.
    started: Duration,
}

struct Checker {
    settings: Settings,
    violations: Vec<String>,
    trace: String,
    seen: Vec<Seen>,
    /// Per stream, the highest epoch any worker was seen holding, and who.
    epochs: BTreeMap<i64, (u64, usize)>,
    /// Per stream, the store's epoch at the last read.
    stored_epochs: BTreeMap<i64, u64>,
    /// Holders in the store when the orchestrator last restarted, while its
    /// grace period lasts.
    grace_holders: Option<BTreeMap<i64, String>>,
    was_in_grace: bool,
    /// Streams that changed holder since the world was last settled.
    moves: u64,
    /// Per stream, the last worker seen holding it.
    last_holder: BTreeMap<i64, usize>,
    settled: Option<(Duration, u64)>,
    last_change: Duration,
}

impl Checker {
    fn log(&mut self, now: Duration, line: impl std::fmt::Display) {
        let _ = writeln!(self.trace, "{:>8.3}s {line}", now.as_secs_f64());
    }

    fn violation(&mut self, now: Duration, what: String) {
        self.log(now, format_args!("VIOLATION {what}"));
        if self.violations.len() < 20 {
            self.violations.push(format!("at {:.3}s: {what}", now.as_secs_f64()));
        }
    }

    /// The invariants over the workers' lease sets, after every step.
    fn after_step(&mut self, now: Duration, shared: &Shared, faults: &Faults) {
        let strict = self.settings.local_mode_limit.is_some_and(|l| l < SESSION_TIMEOUT);
        let grace = shared
            .orchestrator
            .as_ref()
            .and_then(|o| o.status().ok())
            .is_some_and(|status| status.grace_until.is_some());
        if self.was_in_grace && !grace {
            self.log(now, "orchestrator: grace over");
            self.grace_holders = None;
        }
        self.was_in_grace = grace;
        let mut holders: BTreeMap<i64, Vec<(usize, u64, bool)>> = BTreeMap::new();
        for (i, slot) in shared.workers.iter().enumerate() {
            let Some(rx) = slot.leases.as_ref().filter(|_| slot.running) else {
                continue;
            };
            let set = rx.borrow().clone();
            let fresh = self.seen[i].incarnation != slot.incarnation;
            if fresh {
                self.seen[i] = Seen { incarnation: slot.incarnation, started: now, ..Seen::default() };
                self.log(now, format_args!("w{i}: incarnation {} up", slot.incarnation));
            }
            let current: BTreeMap<i64, u64> = set.iter().collect();
            let gained: Vec<(i64, u64)> =
                current.iter().filter(|(s, e)| self.seen[i].set.get(s) != Some(e)).map(|(&s, &e)| (s, e)).collect();
            let lost: Vec<i64> = self.seen[i].set.keys().filter(|s| !current.contains_key(s)).copied().collect();
            if !gained.is_empty() || !lost.is_empty() {
                self.log(now, format_args!("w{i}: +{gained:?} -{lost:?}"));
                self.last_change = now;
                // A move is a stream changing hands (or placed for the
                // first time); a worker dropping a stream and getting it
                // back is none.
                for &(stream, _) in &gained {
                    if self.last_holder.insert(stream, i) != Some(i) {
                        self.moves += 1;
                    }
                }
            }
            // Grants are what the orchestrator decided: they only grow, and
            // never repeat an epoch for another worker. (A worker in local
            // mode may hold an old epoch: fencing marks its records stale.)
            let granted = if set.local_mode() { &[][..] } else { &gained[..] };
            for &(stream, epoch) in granted {
                match self.epochs.get(&stream).copied() {
                    Some((top, _)) if epoch < top => {
                        self.violation(now, format!("w{i} holds stream {stream} at epoch {epoch} after epoch {top}"));
                    }
                    Some((top, holder)) if epoch == top && holder != i => self.violation(
                        now,
                        format!("w{i} holds stream {stream} at epoch {epoch}, which w{holder} held: fencing broken"),
                    ),
                    _ => {
                        self.epochs.insert(stream, (epoch, i));
                    }
                }
                if let Some(before) = &self.grace_holders
                    && before.get(&stream).is_none_or(|h| *h != Settings::name(i))
                {
                    self.violation(
                        now,
                        format!(
                            "w{i} got stream {stream} during the grace period (held by {:?} at the restart)",
                            before.get(&stream)
                        ),
                    );
                }
            }
            if set.local_mode() != self.seen[i].local {
                self.log(now, format_args!("w{i}: {}", if set.local_mode() { "local mode" } else { "normal mode" }));
                if set.local_mode() {
                    self.seen[i].local_since = Some(now);
                }
            }
            self.seen[i].set = current;
            self.seen[i].local = set.local_mode();
            for (stream, epoch) in set.iter() {
                holders.entry(stream).or_default().push((i, epoch, set.local_mode()));
            }
            self.check_timing(now, i, faults);
        }
        for (stream, held) in holders.iter().filter(|(_, h)| h.len() > 1) {
            let normal = held.iter().filter(|h| !h.2).count();
            let epochs: BTreeSet<u64> = held.iter().map(|h| h.1).collect();
            if epochs.len() < held.len() {
                self.violation(now, format!("stream {stream} held by two workers under one epoch: {held:?}"));
            } else if strict {
                self.violation(now, format!("stream {stream} processed by two workers at once: {held:?}"));
            } else if normal > 1 {
                self.violation(
                    now,
                    format!("stream {stream} held by two workers in normal mode: reassigned before release: {held:?}"),
                );
            }
        }
    }

    /// Local mode within `local_mode_after` + one heartbeat of losing the
    /// orchestrator; back within one probe of its return.
    fn check_timing(&mut self, now: Duration, i: usize, faults: &Faults) {
        let link = if faults.orchestrator_down { Link::Cut } else { faults.link[i] };
        let seen = &mut self.seen[i];
        if link == Link::Slow {
            seen.lost_since = None;
            seen.back_since = None;
        } else if link == Link::Up {
            seen.lost_since = None;
            if seen.back_since.is_none() {
                seen.back_since = Some(now);
            }
        } else {
            seen.back_since = None;
            if seen.lost_since.is_none() {
                // Answers already on the wire still arrive.
                seen.lost_since = Some(now + faults.latency[i]);
            }
        }
        let (local, started) = (seen.local, seen.started);
        if let Some(lost) = seen.lost_since
            && !local
            && lost >= started + LOCAL_MODE_AFTER + HEARTBEAT
            && now > lost + LOCAL_MODE_AFTER + HEARTBEAT + SLACK
        {
            let lost = lost.as_secs_f64();
            self.violation(now, format!("w{i} still in normal mode {lost:.3}s after losing the orchestrator"));
            self.seen[i].lost_since = Some(now);
        }
        let seen = &self.seen[i];
        if let (Some(back), Some(entered)) = (seen.back_since, seen.local_since)
            && local
            && now > back.max(entered) + PROBE_MAX + HEARTBEAT + SLACK
        {
            let back = back.as_secs_f64();
            self.violation(now, format!("w{i} still in local mode though the orchestrator is back since {back:.3}s"));
            self.seen[i].back_since = Some(now);
        }
    }

    /// The store's epochs only grow; read once a simulated second.
    fn check_store(&mut self, now: Duration, disk: &Disk, shared: &Shared, records: bool) {
        self.check_epochs(now, disk);
        if !records {
            return;
        }
        let stored = stored_records(disk, self.settings.workers);
        let made: BTreeSet<&Made> = shared.made.iter().collect();
        if let Some((m, n)) = stored.iter().find(|(_, n)| **n > 1) {
            self.violation(now, format!("record stored {n} times: {m:?}"));
        }
        if let Some(m) = stored.keys().find(|k| !made.contains(k)) {
            self.violation(now, format!("record stored that no application made: {m:?}"));
        }
        // Fencing, from the records: one epoch of a stream, one worker.
        let mut processors: BTreeMap<(i64, u64), usize> = BTreeMap::new();
        for m in stored.keys() {
            if let Some(other) = processors.insert((m.stream, m.epoch), m.worker)
                && other != m.worker
            {
                self.violation(
                    now,
                    format!("stream {} processed under epoch {} by w{other} and w{}", m.stream, m.epoch, m.worker),
                );
                break;
            }
        }
    }

    /// The store's epochs only grow.
    fn check_epochs(&mut self, now: Duration, disk: &Disk) {
        let loaded = disk.read();
        for stream in &loaded.state.streams {
            let before = self.stored_epochs.insert(stream.stream_id, stream.epoch);
            if let Some(before) = before
                && stream.epoch < before
            {
                self.violation(
                    now,
                    format!("stream {}: stored epoch went from {before} to {}", stream.stream_id, stream.epoch),
                );
            }
        }
    }

    /// Quiescence: every stream placed once, balance within one, minimal
    /// and settled moves, and every record stored exactly once.
    fn finish(&mut self, now: Duration, shared: &Shared, disk: &Disk) {
        self.check_store(now, disk, shared, true);
        let s = self.settings.clone();
        let loaded = disk.read();
        let catalog: BTreeSet<i64> = loaded.state.streams.iter().map(|p| p.stream_id).collect();
        let mut owner: BTreeMap<i64, usize> = BTreeMap::new();
        let mut counts = vec![0u32; s.workers];
        let mut problems = Vec::new();
        for (i, seen) in self.seen.iter().enumerate() {
            if seen.local {
                problems.push(format!("w{i} still in local mode at the end"));
            }
            for &stream in seen.set.keys() {
                counts[i] += 1;
                if let Some(other) = owner.insert(stream, i) {
                    problems.push(format!("stream {stream} held by w{other} and w{i} at the end"));
                }
            }
        }
        let placed: BTreeSet<i64> = owner.keys().copied().collect();
        if placed != catalog {
            problems
                .push(format!("at the end, unplaced streams {:?}", catalog.difference(&placed).collect::<Vec<_>>()));
        }
        for p in &loaded.state.streams {
            let stored = p.lease.as_ref().map(|l| l.0.clone());
            let held = owner.get(&p.stream_id).map(|&i| Settings::name(i));
            if stored != held {
                problems.push(format!("stream {}: the store says {stored:?}, the workers {held:?}", p.stream_id));
            }
        }
        let (min, max) = (counts.iter().min().copied().unwrap_or(0), counts.iter().max().copied().unwrap_or(0));
        if max - min > 1 {
            problems.push(format!("unbalanced at the end: {counts:?}"));
        }
        if now.saturating_sub(self.last_change) < Duration::from_secs(5) {
            problems.push(format!("still moving {:.3}s before the end", (now - self.last_change).as_secs_f64()));
        }
        match self.settled {
            None => problems.push("never settled after the faults ended".into()),
            Some((at, bound)) if self.moves > bound => problems.push(format!(
                "{} moves after settling at {:.3}s, where {bound} were needed",
                self.moves,
                at.as_secs_f64()
            )),
            Some(_) => {}
        }
        // Records: every one the application made is stored once, none
        // other is.
        for (i, w) in shared.workers.iter().enumerate() {
            if w.unsynced != Some(0) {
                problems.push(format!("w{i} has {:?} records not uploaded at the end", w.unsynced));
            }
        }
        let stored = stored_records(disk, s.workers);
        let made: BTreeSet<&Made> = shared.made.iter().collect();
        let lost: Vec<&&Made> = made.iter().filter(|m| !stored.contains_key(m)).take(5).collect();
        if !lost.is_empty() {
            problems.push(format!("records made but not stored (first 5): {lost:?}"));
        }
        // Every record made, in order, folded into the trace: a replay that
        // differs in any record differs here.
        let digest = shared.made.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, m| {
            let h = (h ^ m.worker as u64).wrapping_mul(0x100_0000_01b3);
            let h = (h ^ m.stream as u64).wrapping_mul(0x100_0000_01b3);
            let h = (h ^ m.epoch).wrapping_mul(0x100_0000_01b3);
            (h ^ m.at_ms as u64).wrapping_mul(0x100_0000_01b3)
        });
        let summary = format!(
            "end: holders {counts:?}, {} records made (digest {digest:016x}), {} stored, {} moves after settling",
            shared.made.len(),
            stored.len(),
            self.moves
        );
        self.log(now, summary);
        for p in problems {
            self.violation(now, p);
        }
    }

    /// After the faults: once every worker is back in normal mode and the
    /// grace period is over, the moves still to come are bounded by the
    /// excess of the workers above their share.
    fn maybe_settled(&mut self, now: Duration, shared: &Shared, disk: &Disk) {
        if self.settled.is_some() || now < self.settings.faults_until {
            return;
        }
        let all_back = shared.workers.iter().all(|w| w.running && w.leases.is_some())
            && self.seen.iter().all(|s| !s.local)
            && !self.was_in_grace
            && shared.orchestrator.is_some();
        if !all_back {
            return;
        }
        // Moves already decided when the world settles (leases revoking, or
        // granted and not yet seen by their owner) happen anyway; after
        // them, the fewest moves to balance: the workers holding most keep
        // the larger shares, each moves only its excess.
        let holder: BTreeMap<i64, String> = self
            .seen
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.set.keys().map(move |&k| (k, Settings::name(i))))
            .collect();
        let mut decided = 0u64;
        let mut counts: BTreeMap<String, u64> = (0..self.settings.workers).map(|i| (Settings::name(i), 0)).collect();
        for p in &disk.read().state.streams {
            let Some((owner, _, state)) = &p.lease else { continue };
            if *state != LeaseState::Active || holder.get(&p.stream_id) != Some(owner) {
                decided += 1;
            }
            if *state == LeaseState::Active
                && let Some(n) = counts.get_mut(owner)
            {
                *n += 1;
            }
        }
        let (streams, workers) = (u64::from(self.settings.streams), self.settings.workers as u64);
        let mut counts: Vec<u64> = counts.into_values().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let (floor, larger) = (streams / workers, (streams % workers) as usize);
        let excess: u64 =
            counts.iter().enumerate().map(|(k, &c)| c.saturating_sub(if k < larger { floor + 1 } else { floor })).sum();
        let bound = decided + excess + streams.saturating_sub(counts.iter().sum());
        self.log(now, format_args!("settled: {bound} moves at most from here"));
        self.settled = Some((now, bound));
        self.moves = 0;
    }
}

fn server_config(settings: &Settings, seed: u64) -> ServerConfig {
    ServerConfig {
        engine: EngineConfig {
            heartbeat_interval: HEARTBEAT.as_millis() as u64,
            session_timeout: SESSION_TIMEOUT.as_millis() as u64,
            grace_period: GRACE.as_millis() as u64,
            instance_id: seed,
            min_rebalance_interval: HEARTBEAT.as_millis() as u64 / 20,
            ..EngineConfig::default()
        },
        demo_streams: settings.streams,
        drain_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    }
}

fn client(settings: &Settings, name: &str, path: &Path) -> worker_client::ClientBuilder {
    let mut b = ResilientWorkerClient::builder(URL, name)
        .max_streams(settings.max_streams)
        .connector(connector(Duration::from_secs(1)))
        .state_path(path)
        .state_on_runtime(true)
        .wall_clock(sim_wall)
        .local_mode_after(LOCAL_MODE_AFTER)
        .circuit_failure_threshold(3)
        .circuit_recovery_timeout(PROBE_MAX)
        .circuit_timeout(Duration::from_millis(1_500))
        .retry_base_delay(Duration::from_millis(200))
        .retry_max_delay(Duration::from_secs(1))
        .reconnect_backoff(Duration::from_millis(250), PROBE_MAX)
        .connect_timeout(Duration::from_secs(1));
    if let Some(limit) = settings.local_mode_limit {
        b = b.local_mode_limit(limit);
    }
    b
}

/// Runs one seed with its fault schedule and checks every invariant.
pub(crate) fn run(seed: u64, settings: &Settings) -> Outcome {
    run_with(seed, settings, &schedule(seed, settings))
}

/// Runs one seed with the given fault schedule.
pub(crate) fn run_with(seed: u64, settings: &Settings, windows: &[Window]) -> Outcome {
    fastrand::seed(seed);
    let dir = tempfile::tempdir().expect("a directory for the workers' state files");
    let disk = Disk::new();
    let shared = Rc::new(RefCell::new(Shared {
        workers: (0..settings.workers).map(|_| Slot::default()).collect(),
        ..Shared::default()
    }));
    let delay = Arc::new(AtomicU64::new(0));
    let mut sim = turmoil::Builder::new()
        .simulation_duration(settings.duration + Duration::from_secs(60))
        .tick_duration(TICK)
        .epoch(UNIX_EPOCH + EPOCH)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(BASE_LATENCY)
        .rng_seed(seed)
        .build();

    orchestrator_host(&mut sim, &shared, &disk, &delay, server_config(settings, seed));
    for i in 0..settings.workers {
        let (shared, settings) = (Rc::clone(&shared), settings.clone());
        let path: PathBuf = dir.path().join(format!("{}.db", Settings::name(i)));
        sim.host(Settings::name(i), move || {
            let (shared, settings, path) = (Rc::clone(&shared), settings.clone(), path.clone());
            async move { worker(i, shared, settings, path).await }
        });
    }

    let mut faults = Faults {
        cut: vec![0; settings.workers],
        isolated: 0,
        held: vec![0; settings.workers],
        link: vec![Link::Up; settings.workers],
        orchestrator_down: false,
        worker_down: vec![false; settings.workers],
        slow: Vec::new(),
        delayed: vec![0; settings.workers],
        latency: vec![BASE_LATENCY; settings.workers],
        skipped: BTreeSet::new(),
    };
    let mut checker = Checker {
        settings: settings.clone(),
        violations: Vec::new(),
        trace: String::new(),
        seen: vec![Seen::default(); settings.workers],
        epochs: BTreeMap::new(),
        stored_epochs: BTreeMap::new(),
        grace_holders: None,
        was_in_grace: false,
        moves: 0,
        last_holder: BTreeMap::new(),
        settled: None,
        last_change: Duration::ZERO,
    };
    checker.log(Duration::ZERO, format_args!("seed {seed}: {settings:?}"));
    // Start and end events, in time order (ends first at the same time).
    let mut events: Vec<(Duration, bool, usize)> = Vec::new();
    for (k, w) in windows.iter().enumerate() {
        events.push((w.from, true, k));
        events.push((w.to, false, k));
    }
    events.sort_by_key(|&(t, start, k)| (t, start, k));
    let mut next_event = 0;
    let mut next_store_check = Duration::from_secs(1);
    loop {
        let now = sim.elapsed();
        if now >= settings.duration {
            break;
        }
        while next_event < events.len() && events[next_event].0 <= now {
            let (_, start, k) = events[next_event];
            next_event += 1;
            apply(&mut sim, &mut faults, &mut checker, &shared, &disk, &delay, &windows[k], k, start, now);
        }
        if let Err(e) = sim.step() {
            checker.violation(now, format!("host software failed: {e}"));
            break;
        }
        let now = sim.elapsed();
        checker.after_step(now, &shared.borrow(), &faults);
        checker.maybe_settled(now, &shared.borrow(), &disk);
        if now >= next_store_check {
            let records = next_store_check.as_secs().is_multiple_of(5);
            checker.check_store(now, &disk, &shared.borrow(), records);
            next_store_check += Duration::from_secs(1);
        }
    }
    let now = sim.elapsed();
    checker.finish(now, &shared.borrow(), &disk);
    drop(sim);
    Outcome { seed, trace: checker.trace, violations: checker.violations }
}

/// The processing records in the store, with how often each is there.
fn stored_records(disk: &Disk, workers: usize) -> BTreeMap<Made, u32> {
    let store = disk.0.lock().unwrap();
    let mut stored: BTreeMap<Made, u32> = BTreeMap::new();
    for worker in 0..workers {
        for r in store.record_rows(&Settings::name(worker)).expect("read records") {
            let key = Made { worker, stream: r.stream_id, epoch: r.lease_epoch, at_ms: r.processed_at_ms };
            *stored.entry(key).or_default() += 1;
        }
    }
    stored
}

/// The orchestrator's host: the real server on the simulated network, its
/// committer a task that waits `delay` per group commit, the store `disk`.
fn orchestrator_host(
    sim: &mut turmoil::Sim<'_>,
    shared: &Rc<RefCell<Shared>>,
    disk: &Disk,
    delay: &Arc<AtomicU64>,
    config: ServerConfig,
) {
    let (shared, disk, delay) = (Rc::clone(shared), disk.clone(), Arc::clone(delay));
    sim.host(ORCHESTRATOR, move || {
        let (shared, disk, delay, config) = (Rc::clone(&shared), disk.clone(), Arc::clone(&delay), config.clone());
        async move {
            let listener = SimListener::bind(PORT).await?;
            let commit_delay = Arc::new(move || Duration::from_millis(delay.load(Ordering::Relaxed)));
            let env = Environment {
                store: StoreDriver::Task { commit_delay },
                wall_clock: sim_wall,
                ..Environment::default()
            };
            let server = OrchestratorServer::with_store(config, disk, listener, env).await?;
            shared.borrow_mut().orchestrator = Some(server.orchestrator().clone());
            server.serve(std::future::pending()).await?;
            Ok(())
        }
    });
}

/// The finding of the first turmoil experiment, reproduced: a health check
/// over a plain tonic channel (no keepalive) before, during and after a
/// partition of 4 s to 10 s. Returns whether, after the heal, the channel
/// made before the partition answered, and whether a new one did.
pub(crate) fn plain_channel_across_a_heal(seed: u64) -> (bool, bool) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    fastrand::seed(seed);
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(60))
        .tick_duration(TICK)
        .epoch(UNIX_EPOCH + EPOCH)
        .max_message_latency(BASE_LATENCY)
        .rng_seed(seed)
        .build();
    let settings = Settings { faults: false, ..Settings::for_seed(seed) };
    let shared = Rc::new(RefCell::new(Shared::default()));
    orchestrator_host(&mut sim, &shared, &Disk::new(), &Arc::new(AtomicU64::new(0)), server_config(&settings, seed));
    let result = Rc::new(RefCell::new((false, false)));
    let out = Rc::clone(&result);
    sim.client("probe", async move {
        let check = |channel: tonic::transport::Channel| async move {
            let mut client = HealthClient::new(channel);
            let call = client.check(HealthCheckRequest::default());
            tokio::time::timeout(Duration::from_secs(2), call).await.is_ok_and(|r| r.is_ok())
        };
        let old = super::net::plain_channel(URL);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(check(old.clone()).await, "the orchestrator answers before the partition");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!check(old.clone()).await, "no answer during the partition");
        tokio::time::sleep(Duration::from_secs(7)).await;
        let old_ok = check(old).await;
        let new_ok = check(super::net::plain_channel(URL)).await;
        *out.borrow_mut() = (old_ok, new_ok);
        Ok(())
    });
    let mut cut = false;
    while sim.elapsed() < Duration::from_secs(20) {
        let t = sim.elapsed();
        if !cut && t >= Duration::from_secs(4) && t < Duration::from_secs(10) {
            sim.partition(ORCHESTRATOR, "probe");
            cut = true;
        } else if cut && t >= Duration::from_secs(10) {
            sim.repair(ORCHESTRATOR, "probe");
            cut = false;
        }
        if sim.step().expect("the simulation runs") {
            break;
        }
    }
    *result.borrow()
}

/// Applies (`start`) or ends a fault window.
#[allow(clippy::too_many_arguments)]
fn apply(
    sim: &mut turmoil::Sim<'_>,
    f: &mut Faults,
    checker: &mut Checker,
    shared: &Rc<RefCell<Shared>>,
    disk: &Disk,
    delay: &AtomicU64,
    window: &Window,
    k: usize,
    start: bool,
    now: Duration,
) {
    if !start && f.skipped.contains(&k) {
        return;
    }
    let step: i32 = if start { 1 } else { -1 };
    let bump = |n: &mut u32| *n = n.saturating_add_signed(step);
    match &window.fault {
        Fault::Partition(w) => bump(&mut f.cut[*w]),
        Fault::Isolate => bump(&mut f.isolated),
        Fault::Split(ws) => ws.iter().for_each(|&w| bump(&mut f.cut[w])),
        Fault::Hold(w) => bump(&mut f.held[*w]),
        Fault::Latency(w, d) => {
            bump(&mut f.delayed[*w]);
            let latency = if f.delayed[*w] > 0 { *d } else { BASE_LATENCY };
            f.latency[*w] = latency;
            sim.set_link_latency(ORCHESTRATOR, Settings::name(*w), latency);
        }
        Fault::CrashOrchestrator => {
            if start && f.orchestrator_down {
                f.skipped.insert(k);
                return;
            }
            f.orchestrator_down = start;
            if start {
                sim.crash(ORCHESTRATOR);
                shared.borrow_mut().orchestrator = None;
            } else {
                let holders: BTreeMap<i64, String> = disk
                    .read()
                    .state
                    .streams
                    .iter()
                    .filter_map(|p| p.lease.as_ref().map(|l| (p.stream_id, l.0.clone())))
                    .collect();
                checker.grace_holders = Some(holders);
                sim.bounce(ORCHESTRATOR);
            }
        }
        Fault::CrashWorker(w) => {
            if start && f.worker_down[*w] {
                f.skipped.insert(k);
                return;
            }
            f.worker_down[*w] = start;
            if start {
                sim.crash(Settings::name(*w));
                let mut sh = shared.borrow_mut();
                sh.workers[*w].running = false;
                sh.workers[*w].leases = None;
            } else {
                sim.bounce(Settings::name(*w));
            }
        }
        Fault::Pause(w) => {
            bump(&mut f.held[*w]);
            shared.borrow_mut().workers[*w].paused = start;
        }
        Fault::SlowStorage(d) => {
            if start {
                f.slow.push(*d);
            } else if let Some(pos) = f.slow.iter().position(|x| x == d) {
                f.slow.remove(pos);
            }
            delay.store(f.slow.iter().max().map_or(0, |d| d.as_millis() as u64), Ordering::Relaxed);
        }
    }
    checker.log(now, format_args!("{} {:?}", if start { "fault" } else { "heal" }, window.fault));
    for w in 0..f.link.len() {
        let want = if f.cut[w] > 0 || f.isolated > 0 {
            Link::Cut
        } else if f.held[w] > 0 {
            Link::Held
        } else if f.delayed[w] > 0 {
            Link::Slow
        } else {
            Link::Up
        };
        let (from, name) = (f.link[w], Settings::name(w));
        if from == want {
            continue;
        }
        match from {
            Link::Cut => sim.repair(ORCHESTRATOR, name.as_str()),
            Link::Held => sim.release(ORCHESTRATOR, name.as_str()),
            Link::Up | Link::Slow => {}
        }
        match want {
            Link::Cut => sim.partition(ORCHESTRATOR, name.as_str()),
            Link::Held => sim.hold(ORCHESTRATOR, name.as_str()),
            Link::Up | Link::Slow => {}
        }
        f.link[w] = want;
    }
}

/// A worker host: the worker client and an application that records a
/// processing record for each stream it may process, every
/// [`PROCESS_EVERY`].
async fn worker(i: usize, shared: Rc<RefCell<Shared>>, settings: Settings, path: PathBuf) -> turmoil::Result {
    let name = Settings::name(i);
    let client = client(&settings, &name, &path).build().await?;
    {
        let mut sh = shared.borrow_mut();
        let slot = &mut sh.workers[i];
        slot.incarnation += 1;
        slot.running = true;
        slot.leases = Some(client.leases());
    }
    client.start().await?;
    loop {
        tokio::time::sleep(PROCESS_EVERY).await;
        let health = client.health_check().await;
        shared.borrow_mut().workers[i].unsynced = Some(health.metrics.records_unsynced);
        // Paused, or the last seconds: nothing new, so every record can be
        // uploaded before the end.
        let quiet = turmoil::sim_elapsed().unwrap_or_default() + Duration::from_secs(6) >= settings.duration;
        if quiet || shared.borrow().workers[i].paused {
            continue;
        }
        let set = client.leases().borrow().clone();
        for (stream, epoch) in set.iter() {
            if !client.can_process_stream(stream) {
                continue;
            }
            let at_ms = unix_ms(sim_wall());
            if client.record_stream_processing(stream).await.is_ok() {
                shared.borrow_mut().made.push(Made { worker: i, stream, epoch, at_ms });
            }
        }
    }
}
