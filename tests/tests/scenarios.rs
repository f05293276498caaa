//! The end-to-end fault scenarios of DESIGN.md, each checking the
//! invariants along the way and printing a timeline if it fails.
//!
//! Timings: heartbeat 100 ms, session timeout 1 s (see `fixtures::engine_config`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fixtures::{
    Checker, FaultProxy, HEARTBEAT, InProcess, Mode, OrchestratorProcess, SESSION_TIMEOUT, Sets, SimWorker, Timeline,
    add_streams, client_builder, eventually, owners, target_dir,
};

const CHUNK: Duration = Duration::from_millis(20);

fn sets(workers: &[&SimWorker]) -> Sets {
    workers.iter().map(|w| (w.id.clone(), w.leases())).collect()
}

async fn worker(url: &str, id: &str, dir: &Path) -> SimWorker {
    SimWorker::start(client_builder(url, id, &dir.join(format!("{id}.db"))), CHUNK).await
}

fn count(owners: &BTreeMap<i64, (String, u64)>, id: &str) -> usize {
    owners.values().filter(|(o, _)| o == id).count()
}

/// 1. Three workers join: balanced. A fourth joins: only the streams balance
/// requires move; the other workers keep every lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_a_join_moves_only_what_balance_requires() {
    let t = Timeline::new();
    let dir = tempfile::tempdir().unwrap();
    let mut o = InProcess::start(&dir.path().join("o.db"), "127.0.0.1:0".parse().unwrap()).await;
    let url = format!("http://{}", o.addr);
    add_streams(o.addr, 1..=12).await;
    let mut ws = Vec::new();
    for id in ["w1", "w2", "w3"] {
        ws.push(worker(&url, id, dir.path()).await);
        t.note(format!("{id} joined"));
    }
    let mut checker = Checker::default();
    eventually!(Duration::from_secs(10), {
        checker.check(o.addr, || sets(&ws.iter().collect::<Vec<_>>()), true).await;
        ws.iter().all(|w| w.leases().len() == 4)
    });
    let before = owners(o.addr).await;
    t.note("balanced 4/4/4");
    ws.push(worker(&url, "w4", dir.path()).await);
    t.note("w4 joined");
    eventually!(Duration::from_secs(10), {
        checker.check(o.addr, || sets(&ws.iter().collect::<Vec<_>>()), true).await;
        ws.iter().all(|w| w.leases().len() == 3)
    });
    let after = owners(o.addr).await;
    let moved: Vec<i64> = after.iter().filter(|(s, (o, _))| before[s].0 != *o).map(|(s, _)| *s).collect();
    assert_eq!(moved.len(), 3, "exactly the three streams w4 needs moved: {moved:?}");
    for (stream, (owner, epoch)) in &after {
        if owner != "w4" {
            assert_eq!(before[stream], (owner.clone(), *epoch), "stream {stream} kept, same epoch");
        }
    }
    for id in ["w1", "w2", "w3"] {
        assert_eq!(count(&after, id), 3);
    }
    checker.finish(2);
    for w in ws {
        w.shutdown().await;
    }
    o.stop().await;
}

/// 2. A worker process is SIGKILLed: its streams are re-placed within
/// session_timeout + one heartbeat interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_a_killed_worker_process_is_replaced_in_time() {
    let t = Timeline::new();
    let dir = tempfile::tempdir().unwrap();
    let mut o = InProcess::start(&dir.path().join("o.db"), "127.0.0.1:0".parse().unwrap()).await;
    let url = format!("http://{}", o.addr);
    add_streams(o.addr, 1..=6).await;
    let bin = target_dir().join("examples").join("worker");
    assert!(bin.exists(), "{} missing: `cargo test --workspace` builds it", bin.display());
    let mut child = Command::new(&bin)
        .args(["--server-id", "proc", "--orchestrator-url", &url, "--chunk-interval", "50ms", "--state"])
        .arg(dir.path().join("proc.db"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let w2 = worker(&url, "w2", dir.path()).await;
    eventually!(Duration::from_secs(10), {
        let o = owners(o.addr).await;
        count(&o, "proc") == 3 && w2.leases().len() == 3
    });
    t.note("balanced 3/3; SIGKILL the worker process");
    let killed = Instant::now();
    child.kill().unwrap();
    child.wait().unwrap();
    // Session timeout + one heartbeat, plus the ticker period and scheduling slack.
    let bound = SESSION_TIMEOUT + HEARTBEAT + Duration::from_millis(600);
    eventually!(bound, w2.leases().len() == 6);
    t.note(format!("re-placed after {:?}", killed.elapsed()));
    w2.shutdown().await;
    o.stop().await;
}

/// 3. The orchestrator process is SIGKILLed and restarted on the same
/// database: every worker enters local mode and keeps processing,
/// reconnects, zero streams move, every record arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_an_orchestrator_restart_moves_nothing_and_loses_no_record() {
    let t = Timeline::new();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("o.db");
    let p1 = OrchestratorProcess::start(&db);
    let proxy = FaultProxy::start(p1.addr).await;
    add_streams(p1.addr, 1..=6).await;
    let ws = vec![worker(&proxy.url(), "w1", dir.path()).await, worker(&proxy.url(), "w2", dir.path()).await];
    eventually!(Duration::from_secs(10), ws.iter().all(|w| w.leases().len() == 3));
    let before = owners(p1.addr).await;
    t.note("balanced; SIGKILL the orchestrator");
    p1.kill();
    eventually!(Duration::from_secs(10), ws.iter().all(|w| w.leases().local_mode()));
    t.note("both workers in local mode");
    let acked_before: Vec<usize> = ws.iter().map(|w| w.acked.lock().unwrap().len()).collect();
    eventually!(
        Duration::from_secs(5),
        ws.iter().zip(&acked_before).all(|(w, n)| w.acked.lock().unwrap().len() > n + 5)
    );
    t.note("processing continued in local mode");
    let p2 = OrchestratorProcess::start(&db);
    proxy.set_upstream(p2.addr);
    t.note("orchestrator restarted on the same database");
    eventually!(Duration::from_secs(10), ws.iter().all(|w| !w.leases().local_mode()));
    t.note("both workers back in normal mode");
    assert_eq!(owners(p2.addr).await, before, "zero streams moved, same epochs");
    // Stop processing (after the chunk in progress), shut down cleanly: the
    // records the orchestrator stored are exactly the records produced.
    let mut produced = Vec::new();
    for w in ws {
        let id = w.id.clone();
        produced.push((id, w.shutdown().await));
    }
    let store = orchestrator::store::SqliteStore::open(&db).unwrap();
    for (id, produced) in produced {
        let stored: BTreeSet<u64> = store.records_of(&id).unwrap().iter().map(|r| r.0).collect();
        let missing: Vec<&u64> = produced.difference(&stored).collect();
        let unknown: Vec<&u64> = stored.difference(&produced).collect();
        assert!(missing.is_empty(), "{id}: records produced but not stored: {missing:?}");
        assert!(unknown.is_empty(), "{id}: records stored but never produced: {unknown:?}");
    }
}

/// 4 and 5. One worker is partitioned (blackhole) for longer than the
/// session timeout. Without a local-mode limit its streams are re-placed
/// and, when it heals, its stale leases are revoked and its local records
/// are uploaded and marked stale. With a limit below the session timeout,
/// at no sampled moment do two workers process the same stream.
async fn partition(limit: Option<Duration>) {
    let t = Timeline::new();
    let dir = tempfile::tempdir().unwrap();
    let mut o = InProcess::start(&dir.path().join("o.db"), "127.0.0.1:0".parse().unwrap()).await;
    let url = format!("http://{}", o.addr);
    add_streams(o.addr, 1..=4).await;
    let proxy = FaultProxy::start(o.addr).await;
    let mut b1 = client_builder(&proxy.url(), "w1", &dir.path().join("w1.db"));
    if let Some(limit) = limit {
        b1 = b1.local_mode_limit(limit);
    }
    let w1 = SimWorker::start(b1, CHUNK).await;
    let w2 = worker(&url, "w2", dir.path()).await;
    let mut checker = Checker::default();
    let strict = limit.is_some();
    eventually!(Duration::from_secs(10), w1.leases().len() == 2 && w2.leases().len() == 2);
    let w1_before: Vec<(i64, u64)> = w1.leases().iter().collect();
    t.note("balanced 2/2; blackhole w1");
    proxy.set(Mode::Blackhole);
    // Until w1's session expired and its streams moved to w2 (and, with a
    // limit, w1 stopped), checking the invariants all along.
    eventually!(SESSION_TIMEOUT * 3, {
        checker.check(o.addr, || sets(&[&w1, &w2]), strict).await;
        w2.leases().len() == 4 && w1.leases().local_mode() && (!strict || w1.leases().is_empty())
    });
    t.note("w1's streams re-placed on w2");
    if !strict {
        assert_eq!(w1.leases().iter().collect::<Vec<_>>(), w1_before, "w1 kept processing in local mode");
    }
    t.note("heal");
    proxy.set(Mode::Pass);
    eventually!(Duration::from_secs(10), {
        checker.check(o.addr, || sets(&[&w1, &w2]), strict).await;
        !w1.leases().local_mode() && w1.leases().len() == 2 && w2.leases().len() == 2
    });
    // w1 got streams back under new epochs: its old leases were revoked.
    for (stream, epoch) in w1.leases().iter() {
        assert!(!w1_before.contains(&(stream, epoch)), "w1 still holds an old lease {stream}@{epoch}");
    }
    let owners_now = owners(o.addr).await;
    assert_eq!(owners_now.len(), 4, "every stream has exactly one current owner");
    if !strict {
        let store = orchestrator::store::SqliteStore::open(&dir.path().join("o.db")).unwrap();
        eventually!(Duration::from_secs(5), store.records_of("w1").unwrap().iter().any(|r| r.3));
        t.note("w1's records from the partition are marked stale");
    }
    checker.finish(10);
    w1.shutdown().await;
    w2.shutdown().await;
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_a_partitioned_worker_is_replaced_and_reconciled() {
    partition(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_with_a_local_mode_limit_no_stream_is_processed_twice() {
    partition(Some(Duration::from_millis(600))).await;
}

/// 6. A flapping link: the breaker limits the call rate, retries stay
/// within the budget, nothing is corrupted, the worker settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_a_flapping_link_settles() {
    let t = Timeline::new();
    let dir = tempfile::tempdir().unwrap();
    let mut o = InProcess::start(&dir.path().join("o.db"), "127.0.0.1:0".parse().unwrap()).await;
    add_streams(o.addr, 1..=4).await;
    let proxy = FaultProxy::start(o.addr).await;
    let w1 = SimWorker::start(client_builder(&proxy.url(), "w1", &dir.path().join("w1.db")), CHUNK).await;
    let w2 = worker(&format!("http://{}", o.addr), "w2", dir.path()).await;
    eventually!(Duration::from_secs(10), w1.leases().len() == 2 && w2.leases().len() == 2);
    let mut checker = Checker::default();
    let mut rng = fastrand::Rng::with_seed(6);
    // Four flaps: refuse until the breaker opens (threshold 3), a little
    // longer, then pass until w1 is back in normal mode. Each stretch lasts
    // as long as it takes, so a loaded machine changes the timing, not the
    // outcome.
    for flap in 0..4 {
        let trips = w1.client.health_check().await.metrics.circuit_breaker_trips;
        proxy.set(Mode::Refuse);
        t.note(format!("flap {flap}: link refuses"));
        eventually!(Duration::from_secs(5), {
            checker.check(o.addr, || sets(&[&w1, &w2]), false).await;
            w1.client.health_check().await.metrics.circuit_breaker_trips > trips
        });
        t.note("breaker open");
        tokio::time::sleep(Duration::from_millis(rng.u64(0..=200))).await;
        proxy.set(Mode::Pass);
        t.note(format!("flap {flap}: link passes"));
        eventually!(Duration::from_secs(5), {
            checker.check(o.addr, || sets(&[&w1, &w2]), false).await;
            !w1.leases().local_mode() && w1.client.health_check().await.orchestrator_available
        });
        t.note("w1 back in normal mode");
    }
    t.note("link stable");
    let health = w1.client.health_check().await;
    let detailed = w1.client.detailed_status().await;
    assert!(
        health.metrics.circuit_breaker_trips >= 4,
        "the breaker opened once per flap: {health:?} {}",
        detailed["circuit_breaker"]
    );
    let s = health.metrics.successful_requests;
    assert!(
        health.metrics.retry_attempts <= 6 + s / 10,
        "retries within the budget (5 tokens + 0.1 per success): {health:?}"
    );
    eventually!(Duration::from_secs(10), {
        checker.check(o.addr, || sets(&[&w1, &w2]), false).await;
        !w1.leases().local_mode() && w1.leases().len() + w2.leases().len() == 4 && owners(o.addr).await.len() == 4
    });
    checker.finish(8);
    w1.shutdown().await;
    w2.shutdown().await;
    o.stop().await;
}

/// 7. Seeded random chaos: kills of either side, partitions, delays, joins,
/// leaves, stream additions and removals. Invariants hold throughout; a
/// failure prints the seed and the event list. Replay with `E2E_SEED=<seed>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_seeded_chaos() {
    let seed = std::env::var("E2E_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    let t = Timeline::new();
    t.note(format!("seed {seed} (replay: E2E_SEED={seed} cargo test -p e2e --test scenarios s7)"));
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("o.db");
    let mut o = InProcess::start(&db, "127.0.0.1:0".parse().unwrap()).await;
    let addr = o.addr;
    add_streams(addr, 1..=10).await;
    let mut next_stream = 11;
    const N: usize = 4;
    let mut proxies = Vec::new();
    for _ in 0..N {
        proxies.push(FaultProxy::start(addr).await);
    }
    let mut workers: Vec<Option<SimWorker>> = Vec::new();
    let mut all_acked: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for (i, proxy) in proxies.iter().enumerate().take(3) {
        let id = format!("w{i}");
        workers.push(Some(
            SimWorker::start(client_builder(&proxy.url(), &id, &dir.path().join(format!("{id}.db"))), CHUNK).await,
        ));
    }
    workers.push(None);
    let mut checker = Checker::default();
    let end = Instant::now() + Duration::from_secs(8);
    while Instant::now() < end {
        let i = rng.usize(..N);
        let id = format!("w{i}");
        match rng.u8(..10) {
            0 | 1 => {
                if let Some(w) = workers[i].take() {
                    all_acked.entry(id.clone()).or_default().extend(w.acked.lock().unwrap().iter().copied());
                    t.note(format!("crash {id}"));
                    w.crash();
                } else {
                    t.note(format!("start {id}"));
                    let b = client_builder(&proxies[i].url(), &id, &dir.path().join(format!("{id}.db")));
                    workers[i] = Some(SimWorker::start(b, CHUNK).await);
                }
            }
            2 => {
                let mode =
                    [Mode::Blackhole, Mode::Refuse, Mode::Delay(Duration::from_millis(50)), Mode::Pass][rng.usize(..4)];
                t.note(format!("link of {id}: {mode:?}"));
                proxies[i].set(mode);
            }
            3 | 4 => {
                t.note(format!("heal {id}"));
                proxies[i].set(Mode::Pass);
            }
            5 => {
                if let Some(w) = workers[i].take() {
                    t.note(format!("{id} leaves"));
                    all_acked.entry(id.clone()).or_default().extend(w.shutdown().await);
                }
            }
            6 => {
                let n = rng.i64(1..=3);
                t.note(format!("add streams {next_stream}..{}", next_stream + n));
                add_streams(addr, next_stream..next_stream + n).await;
                next_stream += n;
            }
            7 => {
                let victim = rng.i64(1..next_stream);
                t.note(format!("remove stream {victim}"));
                let mut admin = fixtures::admin(addr).await;
                let _ = admin
                    .remove_streams(orchestrator_proto::v1::RemoveStreamsRequest {
                        stream_ids: vec![victim],
                        request_id: format!("rm-{}", rng.u64(..)),
                    })
                    .await;
            }
            8 if rng.u8(..4) == 0 => {
                t.note("restart the orchestrator");
                o.stop().await;
                tokio::time::sleep(Duration::from_millis(rng.u64(50..400))).await;
                o = InProcess::start(&db, addr).await;
            }
            _ => {}
        }
        for _ in 0..rng.u64(2..8) {
            let live: Vec<&SimWorker> = workers.iter().flatten().collect();
            checker.check(addr, || sets(&live), false).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    t.note("heal everything, restart every worker");
    for (i, proxy) in proxies.iter().enumerate() {
        proxy.set(Mode::Pass);
        if workers[i].is_none() {
            let id = format!("w{i}");
            workers[i] = Some(
                SimWorker::start(client_builder(&proxy.url(), &id, &dir.path().join(format!("{id}.db"))), CHUNK).await,
            );
        }
    }
    // Coverage: every catalog stream placed on a live worker.
    eventually!(Duration::from_secs(15), {
        let live: Vec<&SimWorker> = workers.iter().flatten().collect();
        checker.check(addr, || sets(&live), false).await;
        let status = fixtures::admin(addr)
            .await
            .get_cluster_status(orchestrator_proto::v1::GetClusterStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        status.unassigned_streams == 0 && !status.in_grace_period && live.iter().all(|w| !w.leases().local_mode())
    });
    t.note("covered; shutting down");
    checker.finish(20);
    for w in workers.into_iter().flatten() {
        let id = w.id.clone();
        all_acked.entry(id).or_default().extend(w.shutdown().await);
    }
    // No loss: every acknowledged record reached the orchestrator (once: the
    // primary key is (server_id, sequence)).
    o.stop().await;
    let store = orchestrator::store::SqliteStore::open(&db).unwrap();
    for (id, acked) in &all_acked {
        let stored: BTreeSet<u64> = store.records_of(id).unwrap().iter().map(|r| r.0).collect();
        let missing: Vec<&u64> = acked.iter().filter(|s| !stored.contains(s)).collect();
        assert!(missing.is_empty(), "seed {seed}: {id} lost acknowledged records {missing:?}");
    }
}
