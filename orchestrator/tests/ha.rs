//! Replicas on PostgreSQL, as processes: the real `orchestrator` binary
//! twice on one database (a throwaway cluster, `fixtures::postgres`), real
//! worker clients. One leads and serves; the other waits as a standby and
//! takes over when the leader is killed, with nothing moved. A deposed
//! leader's writes are refused (the fencing epoch).
//!
//! The workers are given both replicas' addresses (`orchestrator_url`
//! with two endpoints) and move to the one that answers.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use fixtures::http::get;
use fixtures::postgres::TestCluster;
use fixtures::{LoggedProcess, client_builder, eventually};
use orchestrator::engine::Change;
use orchestrator::store::leader::{Election, Leadership, LeaseTimings};
use orchestrator::store::{Batch, PostgresStore, Store};
use serde_json::json;
use worker_client::Mode;

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");

/// A replica: `serve` on `listen` with the test timings and a 1 s leader
/// lease; waits for `ready` in its log.
fn replica(url: &str, listen: &str, ready: &str) -> LoggedProcess {
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--database", url, "--listen", listen, "--http-listen", "127.0.0.1:0"])
        .args(["--heartbeat-interval", "100ms", "--session-timeout", "1s", "--grace", "5s"])
        .args(["--drain-timeout", "100ms", "--leader-lease", "1s", "--leader-margin", "200ms"])
        .env("RUST_LOG", "info");
    let ready = ready.to_owned();
    LoggedProcess::spawn(command, move |line| line.contains(&ready).then_some(())).0
}

/// Where a replica's HTTP listener is (from its start-up log).
fn http_addr(process: &LoggedProcess) -> std::net::SocketAddr {
    process
        .startup
        .iter()
        .find_map(|line| fixtures::orchestrator::logged_addr(line, "HTTP listening"))
        .expect("the replica logs its HTTP address")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Two replicas on `url` (`a` leads, `b` stands by), 10 streams, and one
/// worker given both addresses, holding all 10.
struct Pair {
    a: LoggedProcess,
    b: LoggedProcess,
    addrs: [std::net::SocketAddr; 2],
    worker: worker_client::ResilientWorkerClient,
    /// The worker's state file lives here.
    dir: tempfile::TempDir,
}

impl Pair {
    async fn start(url: &str) -> Self {
        let (listen_a, listen_b) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
        let addrs = [listen_a.parse().unwrap(), listen_b.parse().unwrap()];
        let a = replica(url, &listen_a, "orchestrator serving");
        let b = replica(url, &listen_b, "standby: another replica leads");
        fixtures::add_streams(addrs[0], 1..=10).await;
        let dir = tempfile::tempdir().unwrap();
        let worker = client_builder(&format!("http://{listen_a},http://{listen_b}"), "w0", &dir.path().join("w0.db"))
            .max_streams(10)
            .build()
            .await
            .unwrap();
        worker.start().await.unwrap();
        eventually!(Duration::from_secs(10), worker.leases().borrow().len() == 10);
        Self { a, b, addrs, worker, dir }
    }
}

/// (stream, (owner, lease epoch)) as the admin API lists them.
async fn owners(addr: std::net::SocketAddr) -> BTreeMap<i64, (String, u64)> {
    fixtures::owners(addr).await
}

#[tokio::test]
async fn a_killed_leader_is_replaced_by_a_standby_with_nothing_moved_or_lost() {
    let Some(cluster) = TestCluster::start() else { return };
    let url = cluster.database("ha");
    let listens: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let addrs: Vec<std::net::SocketAddr> = listens.iter().map(|l| l.parse().unwrap()).collect();
    let mut a = replica(&url, &listens[0], "orchestrator serving");
    let standbys: Vec<LoggedProcess> =
        listens[1..].iter().map(|l| replica(&url, l, "standby: another replica leads")).collect();

    // The standby answers health, refuses the services and names the leader.
    let standby =
        tonic::transport::Endpoint::from_shared(format!("http://{}", listens[1])).unwrap().connect().await.unwrap();
    let health = |service: &str| {
        let mut h = tonic_health::pb::health_client::HealthClient::new(standby.clone());
        let request = tonic_health::pb::HealthCheckRequest { service: service.to_owned() };
        async move { h.check(request).await.unwrap().into_inner().status }
    };
    use tonic_health::pb::health_check_response::ServingStatus;
    assert_eq!(health("").await, ServingStatus::Serving as i32);
    assert_eq!(health("orchestrator.v1.WorkerService").await, ServingStatus::NotServing as i32);
    assert_eq!(health("orchestrator.v1.AdminService").await, ServingStatus::NotServing as i32);
    let e = orchestrator_proto::v1::admin_service_client::AdminServiceClient::new(standby.clone())
        .list_workers(orchestrator_proto::v1::ListWorkersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    use tonic_types::StatusExt;
    assert_eq!(e.get_error_details().error_info().map(|i| i.reason.clone()).as_deref(), Some("NOT_LEADER"));
    let leader_a = format!("http://{}", listens[0]);
    assert_eq!(e.metadata().get("orchestrator-leader").and_then(|v| v.to_str().ok()), Some(leader_a.as_str()));

    // Over HTTP: the leader is ready and shows the fleet; the standby is
    // alive, not ready, and names the leader.
    let (leader_http, standby_http) = (http_addr(&a), http_addr(&standbys[0]));
    assert_eq!(get(leader_http, "/readyz", &[]).await.status, 200);
    let standby_ready = get(standby_http, "/readyz", &[]).await;
    assert_eq!(standby_ready.status, 503);
    assert!(
        standby_ready.body.contains("follower") && standby_ready.body.contains(&leader_a),
        "{}",
        standby_ready.body
    );
    assert_eq!(get(standby_http, "/healthz", &[]).await.status, 200);
    let status = get(standby_http, "/api/v1/status", &[]).await.json();
    assert_eq!(
        (&status["role"], &status["leader"], &status["cluster"]),
        (&json!("follower"), &json!(leader_a), &json!(null))
    );
    assert_eq!(get(leader_http, "/api/v1/status", &[]).await.json()["role"], "leader");
    let standby_metrics = get(standby_http, "/metrics", &[]).await.body;
    assert_eq!(fixtures::http::sample(&standby_metrics, "orchestrator_leader"), Some(0.0), "{standby_metrics}");
    assert!(!standby_metrics.contains("orchestrator_sessions"), "a follower has no fleet to report");
    assert_eq!(
        fixtures::http::sample(
            &standby_metrics,
            "orchestrator_rpc_requests_total{method=\"AdminService/ListWorkers\",code=\"UNAVAILABLE\"}"
        ),
        Some(1.0),
        "the calls a follower refuses are counted: {standby_metrics}"
    );

    // 10 workers, 200 streams, every worker given all three addresses
    // (standbys first: they are told where the leader is).
    fixtures::add_streams(addrs[0], 1..=200).await;
    let dir = tempfile::tempdir().unwrap();
    let endpoints: Vec<String> = listens.iter().rev().map(|l| format!("http://{l}")).collect();
    let mut workers = Vec::new();
    for i in 0..10 {
        let builder = client_builder(&endpoints.join(","), &format!("w{i}"), &dir.path().join(format!("w{i}.db")))
            .max_streams(40);
        workers.push(fixtures::SimWorker::start(builder, Duration::from_millis(50)).await);
    }
    eventually!(Duration::from_secs(20), {
        let held: usize = workers.iter().map(|w| w.leases().len()).sum();
        held == 200 && owners(addrs[0]).await.len() == 200
    });
    let before = owners(addrs[0]).await;

    // The admin CLI, given only a standby, follows it to the leader.
    let out = Command::new(BIN).args(["--addr", &format!("http://{}", listens[1]), "workers"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("w9"), "{text} {}", String::from_utf8_lossy(&out.stderr));

    // What the leader acknowledged (committed) before it dies.
    let stored = |url: String, ids: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let mut store = PostgresStore::connect(&url).unwrap();
            ids.iter()
                .map(|id| store.records_of(id).unwrap().iter().map(|r| r.0).collect::<Vec<u64>>())
                .collect::<Vec<_>>()
        })
    };
    let ids: Vec<String> = workers.iter().map(|w| w.id.clone()).collect();
    eventually!(Duration::from_secs(10), stored(url.clone(), ids.clone()).await.unwrap().iter().all(|r| !r.is_empty()));
    let before_kill = stored(url.clone(), ids.clone()).await.unwrap();

    // SIGKILL the leader: a standby takes over once the lease expires.
    let killed = Instant::now();
    a.kill();
    let deadline = Instant::now() + fixtures::patient(Duration::from_secs(10));
    let new_leader = loop {
        let found = standbys
            .iter()
            .position(|s| s.wait_log(Duration::from_millis(20), |l| l.contains("orchestrator serving")).is_ok());
        if let Some(i) = found {
            break i + 1;
        }
        assert!(Instant::now() < deadline, "no standby took over");
    };
    let failover = killed.elapsed();
    // Lease (1 s) + one renewal interval (200 ms), plus loading and binding
    // (allowed 600 ms here; under 100 ms measured).
    assert!(failover <= fixtures::patient(Duration::from_millis(1800)), "failover took {failover:?}");

    // Every worker back in normal mode within that plus a heartbeat (100
    // ms) and a reconnect probe (at most 200 ms), and nothing moved: the
    // same owner at the same epoch for every stream.
    eventually!(Duration::from_secs(10), {
        let mut normal = true;
        for w in &workers {
            normal &= w.client.health_check().await.mode == Mode::Normal;
        }
        normal
    });
    let all_normal = killed.elapsed();
    assert!(all_normal <= fixtures::patient(Duration::from_millis(2500)), "workers back after {all_normal:?}");
    eventually!(Duration::from_secs(5), owners(addrs[new_leader]).await == before);
    // Nothing lost: every record acknowledged before the kill is still
    // there, uploads go on through the new leader, and nothing is stored
    // that a worker did not make, or twice.
    eventually!(Duration::from_secs(10), {
        let now = stored(url.clone(), ids.clone()).await.unwrap();
        now.iter().zip(&before_kill).all(|(n, b)| n.len() > b.len())
    });
    let after = stored(url.clone(), ids.clone()).await.unwrap();
    for ((w, before), after) in workers.iter().zip(&before_kill).zip(&after) {
        let made: std::collections::BTreeSet<u64> = w.acked.lock().unwrap().iter().copied().collect();
        assert!(before.iter().all(|s| after.contains(s)), "{}: a record acknowledged before the kill is missing", w.id);
        assert!(after.iter().all(|s| made.contains(s)), "{}: a record nobody made is stored", w.id);
        assert!(after.windows(2).all(|p| p[0] < p[1]), "{}: stored once each", w.id);
    }
    for w in workers {
        w.shutdown().await;
    }
    drop(standbys);
    eprintln!("failover (kill to serving): {failover:?}; every worker normal after {all_normal:?}");
}

#[test]
fn a_deposed_leaders_writes_are_refused_and_one_replica_leads() {
    let Some(cluster) = TestCluster::start() else { return };
    let url = cluster.database("fencing");
    let timings = LeaseTimings { lease: Duration::from_millis(600), margin: Duration::from_millis(100) };
    let store = PostgresStore::connect(&url).unwrap();
    let mut first = Leadership::connect(&url, "first", "http://first", timings).unwrap();
    let mut second = Leadership::connect(&url, "second", "http://second", timings).unwrap();
    let Election::Won { epoch: e1, .. } = first.try_acquire().unwrap() else { panic!("the first wins a free lease") };
    let Election::Lost(held) = second.try_acquire().unwrap() else { panic!("only one leads") };
    assert_eq!((held.holder.as_str(), held.address.as_str(), held.epoch), ("first", "http://first", e1));
    assert!(first.renew(e1).unwrap());

    let mut old = store.fenced("first", e1);
    let batch = |id: i64| Batch { at_ms: 1, changes: vec![Change::StreamAdded { stream_id: id }], ..Batch::default() };
    old.commit(&[batch(1)]).expect("the leader writes");

    // The first stops renewing (paused, partitioned); its lease expires and
    // the second takes over at a higher epoch.
    std::thread::sleep(Duration::from_millis(700));
    let Election::Won { epoch: e2, .. } = second.try_acquire().unwrap() else { panic!("the lease expired") };
    assert_eq!(e2, e1 + 1);
    assert!(!first.renew(e1).unwrap(), "the first's renewal is refused");
    let e = old.commit(&[batch(2)]).unwrap_err().to_string();
    assert!(e.contains("leadership lost") && e.contains("second"), "{e}");
    let mut new = PostgresStore::connect(&url).unwrap().fenced("second", e2);
    new.commit(&[batch(3)]).expect("the new leader writes");
    let ids: Vec<i64> = new.load().unwrap().state.streams.iter().map(|s| s.stream_id).collect();
    assert_eq!(ids, vec![1, 3], "nothing of the deposed leader's late commit was written");
}

#[tokio::test]
async fn losing_postgresql_makes_the_leader_step_down_and_service_resumes_when_it_returns() {
    let Some(cluster) = TestCluster::start() else { return };
    let url = cluster.database("outage");
    let Pair { mut a, mut b, addrs, worker, dir: _dir } = Pair::start(&url).await;
    let before = owners(addrs[0]).await;

    // PostgreSQL down: the leader gives up within its lease and stays up as
    // a follower, the standby stays up too; the worker rides it out in
    // local mode with its streams.
    cluster.stop().unwrap();
    let stepped = a.wait_log(Duration::from_secs(10), |l| l.contains("back to standby"));
    assert!(stepped.is_ok(), "{stepped:?}");
    eventually!(Duration::from_secs(10), worker.health_check().await.mode == Mode::Local);
    assert_eq!(worker.leases().borrow().len(), 10, "local mode keeps the streams");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(a.child().try_wait().unwrap(), None, "the old leader is still running");
    assert_eq!(b.child().try_wait().unwrap(), None, "the standby is still running");

    // PostgreSQL back: one of them leads again, nothing moved.
    cluster.start_server().unwrap();
    eventually!(Duration::from_secs(15), worker.health_check().await.mode == Mode::Normal);
    let mut leader = None;
    for addr in &addrs {
        let e = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let ok = orchestrator_proto::v1::admin_service_client::AdminServiceClient::new(e)
            .list_workers(orchestrator_proto::v1::ListWorkersRequest::default())
            .await
            .is_ok();
        if ok {
            leader = Some(*addr);
        }
    }
    let leader = leader.expect("a replica leads");
    eventually!(Duration::from_secs(5), owners(leader).await == before);
    worker.shutdown().await;
    // SIGTERM the standby: it stops cleanly (its database client is
    // dropped off the async runtime).
    let follower = if leader == addrs[0] { &mut b } else { &mut a };
    let pid = follower.child().id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert_eq!(follower.wait_exit(Duration::from_secs(10)), Some(0));
}

#[tokio::test]
async fn a_paused_leader_resumed_after_losing_its_lease_steps_down() {
    let Some(cluster) = TestCluster::start() else { return };
    let url = cluster.database("paused");
    let Pair { mut a, b, addrs, worker, dir: _dir } = Pair::start(&url).await;
    let addr_b = addrs[1];

    // SIGSTOP the leader past its lease: the standby takes over.
    let pid = a.child().id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let took_over = b.wait_log(Duration::from_secs(10), |l| l.contains("orchestrator serving"));
    assert!(took_over.is_ok(), "{took_over:?}");
    eventually!(Duration::from_secs(10), worker.health_check().await.mode == Mode::Normal);
    let with_b = owners(addr_b).await;
    assert_eq!(with_b.len(), 10);

    // Resumed: it finds its lease gone, steps down and becomes a standby;
    // it changes nothing (its writes would be refused by the epoch).
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    let down = a.wait_log(Duration::from_secs(10), |l| l.contains("standby: another replica leads"));
    assert!(down.is_ok(), "{down:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(owners(addr_b).await, with_b, "nothing moved");
    assert_eq!(worker.health_check().await.mode, Mode::Normal);
    worker.shutdown().await;
    a.kill();
}
