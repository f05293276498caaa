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

use fixtures::postgres::TestCluster;
use fixtures::{LoggedProcess, client_builder, eventually};
use orchestrator::engine::Change;
use orchestrator::store::leader::{Election, Leadership, LeaseTimings};
use orchestrator::store::{Batch, PostgresStore, Store};
use worker_client::Mode;

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");

/// A replica: `serve` on `listen` with the test timings and a 1 s leader
/// lease; waits for `ready` in its log.
fn replica(url: &str, listen: &str, ready: &str) -> LoggedProcess {
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--database", url, "--listen", listen])
        .args(["--heartbeat-interval", "100ms", "--session-timeout", "1s", "--grace", "5s"])
        .args(["--drain-timeout", "100ms", "--leader-lease", "1s", "--leader-margin", "200ms"])
        .env("RUST_LOG", "info");
    let ready = ready.to_owned();
    LoggedProcess::spawn(command, move |line| line.contains(&ready).then_some(())).0
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// (stream, (owner, lease epoch)) as the admin API lists them.
async fn owners(addr: std::net::SocketAddr) -> BTreeMap<i64, (String, u64)> {
    fixtures::owners(addr).await
}

#[tokio::test]
async fn a_killed_leader_is_replaced_by_the_standby_with_nothing_moved() {
    let Some(cluster) = TestCluster::start() else { return };
    let url = cluster.database("ha");
    let (listen_a, listen_b) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let addr: std::net::SocketAddr = listen_a.parse().unwrap();
    let addr_b: std::net::SocketAddr = listen_b.parse().unwrap();
    let mut a = replica(&url, &listen_a, "orchestrator serving");
    let b = replica(&url, &listen_b, "standby: another replica leads");

    fixtures::add_streams(addr, 1..=30).await;
    let dir = tempfile::tempdir().unwrap();
    // Both replicas, as a fleet would be configured: the standby listens
    // only once it leads, so until then it refuses connections.
    let url_http = format!("http://{listen_b}, http://{listen_a}");
    let mut workers = Vec::new();
    for i in 0..3 {
        let client = client_builder(&url_http, &format!("w{i}"), &dir.path().join(format!("w{i}.db")))
            .max_streams(10)
            .build()
            .await
            .unwrap();
        client.start().await.unwrap();
        workers.push(client);
    }
    eventually!(Duration::from_secs(10), {
        let held: usize = workers.iter().map(|w| w.leases().borrow().len()).sum();
        held == 30 && owners(addr).await.len() == 30
    });
    let before = owners(addr).await;

    // The standby: alive, not serving the services, and naming the leader.
    let standby =
        tonic::transport::Endpoint::from_shared(format!("http://{listen_b}")).unwrap().connect().await.unwrap();
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
    assert_eq!(
        e.metadata().get("orchestrator-leader").and_then(|v| v.to_str().ok()),
        Some(format!("http://{listen_a}").as_str()),
        "{e:?}"
    );

    // SIGKILL the leader: the standby takes over once the lease expires.
    let killed = Instant::now();
    a.kill();
    let took_over = b.wait_log(Duration::from_secs(10), |l| l.contains("orchestrator serving"));
    assert!(took_over.is_ok(), "the standby did not take over: {took_over:?}");
    let failover = killed.elapsed();
    // Lease (1 s) + one renewal interval (200 ms) + loading and binding.
    assert!(failover <= fixtures::patient(Duration::from_secs(3)), "failover took {failover:?}");

    // Every worker back in normal mode, and nothing moved: the same owner
    // at the same epoch for every stream.
    eventually!(Duration::from_secs(10), {
        let mut normal = true;
        for w in &workers {
            normal &= w.health_check().await.mode == Mode::Normal;
        }
        normal
    });
    eventually!(Duration::from_secs(5), owners(addr_b).await == before);
    for w in &workers {
        assert_eq!(w.leases().borrow().len(), 10);
        w.shutdown().await;
    }
    drop(b);
    eprintln!("failover (kill to serving): {failover:?}");
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
async fn losing_postgresql_makes_the_leader_step_down_and_lead_again_when_it_returns() {
    let Some(cluster) = TestCluster::start() else { return };
    let url = cluster.database("outage");
    let listen = format!("127.0.0.1:{}", free_port());
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let a = replica(&url, &listen, "orchestrator serving");
    fixtures::add_streams(addr, 1..=10).await;
    let dir = tempfile::tempdir().unwrap();
    let worker = client_builder(&format!("http://{listen}"), "w0", &dir.path().join("w0.db"))
        .max_streams(10)
        .build()
        .await
        .unwrap();
    worker.start().await.unwrap();
    eventually!(Duration::from_secs(10), worker.leases().borrow().len() == 10);
    let before = owners(addr).await;

    // PostgreSQL down: the leader gives up within its lease and stays up as
    // a follower; the worker rides it out in local mode with its streams.
    cluster.stop().unwrap();
    let stepped = a.wait_log(Duration::from_secs(10), |l| l.contains("back to standby"));
    assert!(stepped.is_ok(), "{stepped:?}");
    eventually!(Duration::from_secs(10), worker.health_check().await.mode == Mode::Local);
    assert_eq!(worker.leases().borrow().len(), 10, "local mode keeps the streams");

    // PostgreSQL back: the same process leads again, nothing moved.
    cluster.start_server().unwrap();
    let led = a.wait_log(Duration::from_secs(15), |l| l.contains("orchestrator serving"));
    assert!(led.is_ok(), "{led:?}");
    eventually!(Duration::from_secs(10), worker.health_check().await.mode == Mode::Normal);
    eventually!(Duration::from_secs(5), owners(addr).await == before);
    worker.shutdown().await;
}
