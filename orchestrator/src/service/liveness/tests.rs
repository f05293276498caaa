use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::*;
use crate::engine::{EngineConfig, Lease, WorkerState};

const TIMEOUT: Millis = 300;

fn engine() -> Engine {
    Engine::new(EngineConfig { session_timeout: TIMEOUT, heartbeat_interval: 100, ..EngineConfig::default() })
}

fn register(e: &mut Engine, sessions: &Sessions, id: &str, now: Millis, rid: &str) -> SessionRef {
    let session = e.register(now, id, 10, rid, &[]).unwrap().session;
    let changes = e.take_changes();
    sessions.publish_changes(e, &changes);
    session
}

fn tick(e: &mut Engine, sessions: &Sessions, now: Millis) {
    sessions.fold(e, now);
    e.tick(now);
    let changes = e.take_changes();
    sessions.publish_changes(e, &changes);
}

fn state(e: &Engine, id: &str) -> Option<WorkerState> {
    e.workers().into_iter().find(|w| w.server_id == id).map(|w| w.state)
}

#[test]
fn a_busy_session_takes_the_slow_path_until_it_has_acknowledged() {
    let (mut e, sessions) = (engine(), Sessions::default());
    let s = register(&mut e, &sessions, "a", 0, "r");
    assert_eq!(sessions.beat(&s, 10), Some(false), "nothing waiting: fast");
    e.add_streams(20, &[1, 2], "add").unwrap();
    let changes = e.take_changes();
    sessions.publish_changes(&e, &changes);
    assert_eq!(sessions.beat(&s, 30), None, "grants waiting: through the engine");
    let reply = e.heartbeat(30, &s, &[]).unwrap();
    assert_eq!(reply.assign.len(), 2);
    e.heartbeat(40, &s, &reply.assign).unwrap();
    sessions.publish(&e, "a");
    assert_eq!(sessions.beat(&s, 50), Some(false), "acknowledged: fast again");
    // Another session of the same id (or an old one) never takes the fast path.
    let stale = SessionRef { worker_epoch: s.worker_epoch + 1, ..s.clone() };
    assert_eq!(sessions.beat(&stale, 60), None);
    // Draining: revocations go through the engine; once released, the fast
    // path answers with the draining flag.
    e.drain(70, "a", "d").unwrap();
    let changes = e.take_changes();
    sessions.publish_changes(&e, &changes);
    sessions.publish(&e, "a");
    let reply = e.heartbeat(80, &s, &[]).unwrap();
    assert!(reply.draining);
    if !reply.revoke.is_empty() {
        assert_eq!(sessions.beat(&s, 80), None, "revocations waiting");
        let leases: Vec<Lease> = reply.revoke.iter().map(|(l, _)| *l).collect();
        e.release_streams(85, &s, &leases, "rel").unwrap();
        let changes = e.take_changes();
        sessions.publish_changes(&e, &changes);
    }
    assert_eq!(sessions.beat(&s, 90), Some(true), "draining, nothing waiting: fast, with the flag");
}

#[test]
fn a_stamped_heartbeat_is_folded_before_expiry_and_an_expired_session_leaves_the_fast_path() {
    let (mut e, sessions) = (engine(), Sessions::default());
    let s = register(&mut e, &sessions, "a", 0, "r");
    // Only fast-path heartbeats: the engine never saw one.
    for t in (100..=1_000).step_by(100) {
        assert_eq!(sessions.beat(&s, t), Some(false));
        tick(&mut e, &sessions, t + 50);
        assert_eq!(state(&e, "a"), Some(WorkerState::Live), "beaten at {t}, ticked at {}", t + 50);
    }
    assert_eq!(sessions.stamp("a"), Some(1_000));
    // Silence: expired once the timeout has passed since the last stamp.
    tick(&mut e, &sessions, 1_299);
    assert_eq!(state(&e, "a"), Some(WorkerState::Live));
    tick(&mut e, &sessions, 1_300);
    assert_eq!(state(&e, "a"), Some(WorkerState::Expired));
    assert_eq!(sessions.beat(&s, 1_301), None, "an expired session goes to the engine");
    assert!(e.heartbeat(1_301, &s, &[]).is_err());
    assert_eq!(sessions.len(), 0);
}

/// A heartbeat racing the ticker from another thread: every heartbeat the
/// fast path answered OK at `t` is followed by no expiry of its session
/// before `t + timeout` (the property the CAS on the stamp gives).
#[test]
fn no_session_answered_ok_is_expired_within_the_timeout_under_races() {
    let e = Arc::new(Mutex::new(engine()));
    let sessions = Arc::new(Sessions::default());
    let clock = Arc::new(AtomicU64::new(0));
    let first = register(&mut e.lock().unwrap(), &sessions, "a", 0, "r0");
    let current = Arc::new(Mutex::new(first));
    let done = Arc::new(AtomicBool::new(false));

    let beater = {
        let (sessions, clock, current, done) =
            (Arc::clone(&sessions), Arc::clone(&clock), Arc::clone(&current), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut ok: BTreeMap<u64, Millis> = BTreeMap::new(); // epoch -> last OK stamp
            let mut rng = fastrand::Rng::with_seed(7);
            while !done.load(Ordering::Acquire) {
                let s = current.lock().unwrap().clone();
                let t = clock.load(Ordering::Acquire);
                if sessions.beat(&s, t).is_some() {
                    let last = ok.entry(s.worker_epoch).or_default();
                    *last = (*last).max(t);
                }
                // Now and then fall silent for a while, so expiries happen.
                if rng.u8(..) == 0 {
                    std::thread::sleep(std::time::Duration::from_micros(u64::from(rng.u8(..)) * 20));
                }
            }
            ok
        })
    };

    let mut expired_at: BTreeMap<u64, Millis> = BTreeMap::new(); // epoch -> tick that expired it
    for i in 1..=20_000u64 {
        let now = clock.fetch_add(7, Ordering::AcqRel) + 7;
        let mut engine = e.lock().unwrap();
        tick(&mut engine, &sessions, now);
        let s = current.lock().unwrap().clone();
        if state(&engine, "a") == Some(WorkerState::Expired) {
            expired_at.insert(s.worker_epoch, now);
            let again = register(&mut engine, &sessions, "a", now, &format!("r{i}"));
            *current.lock().unwrap() = again;
        }
    }
    done.store(true, Ordering::Release);
    let ok = beater.join().unwrap();
    assert!(!expired_at.is_empty(), "the test made sessions expire");
    assert!(ok.len() > 1, "heartbeats were answered on the fast path in several sessions");
    for (epoch, expired) in &expired_at {
        if let Some(last_ok) = ok.get(epoch) {
            assert!(expired - last_ok >= TIMEOUT, "epoch {epoch}: answered OK at {last_ok}, expired at {expired}");
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Fast(usize),
    Slow(usize),
    Advance(u64),
    Tick,
    Grant,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize).prop_map(Op::Fast),
        1 => (0..3usize).prop_map(Op::Slow),
        3 => (1..200u64).prop_map(Op::Advance),
        3 => Just(Op::Tick),
        1 => Just(Op::Grant),
    ]
}

proptest! {
    /// A model: whatever the interleaving of fast and slow heartbeats,
    /// grants and ticks, a session is expired exactly when no heartbeat
    /// answered OK (fast or slow) in the last `session_timeout`, and the
    /// fast path never answers a session that has decisions waiting.
    #[test]
    fn liveness_follows_the_answered_heartbeats(ops in proptest::collection::vec(op(), 1..200)) {
        let (mut e, sessions) = (engine(), Sessions::default());
        let ids = ["a", "b", "c"];
        let mut now = 0;
        let mut sessions_of: Vec<SessionRef> = ids.iter().map(|id| register(&mut e, &sessions, id, 0, "r")).collect();
        let mut last_ok = [0u64; 3];
        let mut next_stream = 1;
        for op in ops {
            match op {
                Op::Fast(w) => {
                    let busy = e.session_view(ids[w]).is_some_and(|v| v.busy);
                    if let Some(_draining) = sessions.beat(&sessions_of[w], now) {
                        prop_assert!(!busy, "the fast path answered {} with decisions waiting", ids[w]);
                        last_ok[w] = now;
                    }
                }
                Op::Slow(w) => {
                    if let Ok(reply) = e.heartbeat(now, &sessions_of[w], &[]) {
                        last_ok[w] = now;
                        let _ = e.heartbeat(now, &sessions_of[w], &reply.assign);
                        sessions.publish(&e, ids[w]);
                    }
                    let changes = e.take_changes();
                    sessions.publish_changes(&e, &changes);
                }
                Op::Advance(dt) => now += dt,
                Op::Tick => {
                    tick(&mut e, &sessions, now);
                    for (w, id) in ids.iter().enumerate() {
                        let expired = state(&e, id) == Some(WorkerState::Expired);
                        prop_assert_eq!(expired, now - last_ok[w] >= TIMEOUT, "{} at {}", id, now);
                        if expired {
                            sessions_of[w] = register(&mut e, &sessions, id, now, &format!("r{now}"));
                            last_ok[w] = now;
                        }
                    }
                }
                Op::Grant => {
                    e.add_streams(now, &[next_stream], &format!("add{next_stream}")).unwrap();
                    next_stream += 1;
                    let changes = e.take_changes();
                    sessions.publish_changes(&e, &changes);
                }
            }
        }
    }
}
