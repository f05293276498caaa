//! Gray failures (DESIGN.md invariant 13): the orchestrator hangs (SIGSTOP
//! of the real binary), a link drops every packet, the orchestrator answers
//! too slowly, connections are refused. Every worker enters local mode
//! within `local_mode_after` + one heartbeat interval, is back in normal
//! mode within one reconnect probe + one heartbeat of the heal, and its
//! health never contradicts itself at any sample.
//!
//! Timings: heartbeat 100 ms, session timeout 3 s; clients with
//! `local_mode_after` 500 ms, breaker recovery 300 ms, reconnect backoff up
//! to 200 ms (see `fixtures::client_builder`). Each outage (about 0.6 s to
//! local mode, up to 0.5 s back) is shorter than the session timeout, so
//! nothing moves.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fixtures::{
    Checker, FaultProxy, HEARTBEAT, LOCAL_MODE_AFTER, Mode, OrchestratorProcess, RECONNECT_MAX, RECOVERY_TIMEOUT, Sets,
    SimWorker, Timeline, add_streams, client_builder, eventually, health_consistent, owners, patient, target_dir,
};

const CHUNK: Duration = Duration::from_millis(20);

/// The real binary with heartbeat 100 ms and a session timeout (3 s) that
/// outlasts every outage here.
fn orchestrator(dir: &Path) -> OrchestratorProcess {
    let flags =
        ["--heartbeat-interval", "100ms", "--session-timeout", "3s", "--grace", "5s", "--drain-timeout", "100ms"];
    OrchestratorProcess::start_binary(&target_dir().join("orchestrator"), &dir.join("o.db"), &flags)
}
/// Scheduling slack on top of each bound (stretched by `TEST_PATIENCE`).
const SLACK: Duration = Duration::from_millis(300);

fn sets(workers: &[SimWorker]) -> Sets {
    workers.iter().map(|w| (w.id.clone(), w.leases())).collect()
}

async fn workers(url: &str, ids: &[&str], dir: &Path) -> Vec<SimWorker> {
    let mut ws = Vec::new();
    for id in ids {
        ws.push(SimWorker::start(client_builder(url, id, &dir.join(format!("{id}.db"))), CHUNK).await);
    }
    ws
}

/// Polls every 10 ms until `done` holds for every worker, checking every
/// worker's health for consistency at every sample; returns when each
/// worker first satisfied `done`, from `since`.
///
/// # Panics
///
/// On an inconsistent health report, or if `limit` (stretched by patience)
/// passes first.
async fn watch(
    ws: &[SimWorker],
    since: Instant,
    limit: Duration,
    what: &str,
    done: impl Fn(&SimWorker, &worker_client::HealthReport) -> bool,
) -> BTreeMap<String, Duration> {
    let deadline = since + patient(limit);
    let mut when = BTreeMap::new();
    loop {
        for w in ws {
            let health = w.client.health_check().await;
            if let Err(e) = health_consistent(&health) {
                panic!("{}: health contradicts itself: {e}", w.id);
            }
            if !when.contains_key(&w.id) && done(w, &health) {
                when.insert(w.id.clone(), since.elapsed());
            }
        }
        if when.len() == ws.len() {
            return when;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?} (x patience); so far {when:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn slowest(when: &BTreeMap<String, Duration>) -> Duration {
    when.values().copied().max().unwrap_or_default()
}

fn normal(w: &SimWorker, h: &worker_client::HealthReport) -> bool {
    !w.leases().local_mode() && h.orchestrator_available
}

fn local(w: &SimWorker, h: &worker_client::HealthReport) -> bool {
    w.leases().local_mode() && h.local_mode_active && !h.orchestrator_available
}

/// The bound for entering local mode, counted from the fault.
fn to_local_bound() -> Duration {
    LOCAL_MODE_AFTER + HEARTBEAT + SLACK
}

/// The bound for coming back, counted from the heal: a reconnect probe
/// (no earlier than the breaker admits it) and a heartbeat.
fn back_bound() -> Duration {
    RECOVERY_TIMEOUT.max(RECONNECT_MAX) + LOCAL_MODE_AFTER + HEARTBEAT + SLACK
}

/// 8. The orchestrator process is stopped (SIGSTOP: connections accepted,
/// nothing answered), then continued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_a_hung_orchestrator_sends_every_worker_to_local_mode_on_time() {
    let t = Timeline::new();
    let dir = tempfile::tempdir().unwrap();
    let mut p = orchestrator(dir.path());
    add_streams(p.addr, 1..=6).await;
    let ws = workers(&p.url(), &["w1", "w2", "w3"], dir.path()).await;
    let mut checker = Checker::default();
    eventually!(Duration::from_secs(10), {
        checker.check(p.addr, || sets(&ws), false).await;
        ws.iter().all(|w| w.leases().len() == 2)
    });
    watch(&ws, Instant::now(), Duration::from_secs(5), "all available", normal).await;
    let before = owners(p.addr).await;
    let pid = p.process.child().id().to_string();

    t.note("SIGSTOP the orchestrator");
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    let stopped = Instant::now();
    let to_local = watch(&ws, stopped, to_local_bound(), "local mode after SIGSTOP", local).await;
    t.note(format!("every worker in local mode: {to_local:?}"));
    let processed: Vec<usize> = ws.iter().map(|w| w.acked.lock().unwrap().len()).collect();
    eventually!(Duration::from_secs(2), ws.iter().zip(&processed).all(|(w, n)| w.acked.lock().unwrap().len() > n + 3));
    t.note("processing goes on in local mode");
    // A reconnect probe hangs on the stopped orchestrator, holding the
    // protocol lock: health and detailed status still answer at once. Poll
    // until a status shows a call in flight, each answer within 100 ms.
    for w in &ws {
        let quick = patient(Duration::from_millis(100));
        eventually!(Duration::from_secs(3), {
            let status = tokio::time::timeout(quick, w.client.detailed_status()).await;
            let status = status.unwrap_or_else(|_| panic!("{}: detailed_status waited behind a hung call", w.id));
            assert_eq!(status["health"]["mode"], "local", "{}: {status}", w.id);
            assert!(tokio::time::timeout(quick, w.client.health_check()).await.is_ok(), "{}: health waited", w.id);
            status["local_state"]["call_in_flight_ms"].is_u64()
        });
    }
    t.note("health and status answered while a probe was in flight");

    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    let continued = Instant::now();
    let back = watch(&ws, continued, back_bound(), "normal mode after SIGCONT", normal).await;
    t.note(format!("every worker back in normal mode: {back:?}"));
    eprintln!(
        "s8 hung orchestrator: local mode after {:?} (bound {:?}), back after {:?} (bound {:?})",
        slowest(&to_local),
        to_local_bound(),
        slowest(&back),
        back_bound()
    );
    eventually!(Duration::from_secs(5), {
        checker.check(p.addr, || sets(&ws), false).await;
        ws.iter().all(|w| w.leases().len() == 2)
    });
    assert_eq!(owners(p.addr).await, before, "the outage moved nothing");
    checker.finish(2);
    for w in ws {
        w.shutdown().await;
    }
    p.process.kill();
}

/// 9. Through a proxy, every other kind of failure in turn: a blackholed
/// link, a hung peer, an orchestrator slower than `local_mode_after`,
/// refused connections. A worker connected directly stays in normal mode
/// throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_blackholed_slow_or_refused_local_mode_on_time_back_within_a_probe() {
    let t = Timeline::new();
    let dir = tempfile::tempdir().unwrap();
    let p = orchestrator(dir.path());
    add_streams(p.addr, 1..=6).await;
    let proxy = FaultProxy::start(p.addr).await;
    let ws = workers(&proxy.url(), &["w1", "w2"], dir.path()).await;
    let direct = workers(&p.url(), &["w3"], dir.path()).await;
    let mut checker = Checker::default();
    let all = |ws: &[SimWorker], direct: &[SimWorker]| -> Sets {
        let mut s = sets(ws);
        s.extend(sets(direct));
        s
    };
    eventually!(Duration::from_secs(10), {
        checker.check(p.addr, || all(&ws, &direct), false).await;
        ws.iter().chain(&direct).all(|w| w.leases().len() == 2)
    });
    watch(&ws, Instant::now(), Duration::from_secs(5), "all available", normal).await;
    let before = owners(p.addr).await;
    let slow = Mode::Delay(LOCAL_MODE_AFTER + Duration::from_millis(300));
    for mode in [Mode::Blackhole, Mode::Hang, slow, Mode::Refuse] {
        t.note(format!("link {mode:?}"));
        proxy.set(mode);
        let fault = Instant::now();
        let to_local = watch(&ws, fault, to_local_bound(), &format!("local mode under {mode:?}"), local).await;
        t.note(format!("local mode under {mode:?}: {to_local:?}"));
        let h = direct[0].client.health_check().await;
        assert!(h.orchestrator_available && !h.local_mode_active, "the direct worker is unaffected: {}", h.to_json());
        proxy.set(Mode::Pass);
        let healed = Instant::now();
        let back = watch(&ws, healed, back_bound(), &format!("normal mode after {mode:?}"), normal).await;
        t.note(format!("back after {mode:?}: {back:?}"));
        eprintln!(
            "s9 {mode:?}: local mode after {:?} (bound {:?}), back after {:?} (bound {:?})",
            slowest(&to_local),
            to_local_bound(),
            slowest(&back),
            back_bound()
        );
        eventually!(Duration::from_secs(5), {
            checker.check(p.addr, || all(&ws, &direct), false).await;
            ws.iter().all(|w| w.leases().len() == 2)
        });
    }
    assert_eq!(owners(p.addr).await, before, "no outage moved anything");
    checker.finish(4);
    for w in ws.into_iter().chain(direct) {
        w.shutdown().await;
    }
}
