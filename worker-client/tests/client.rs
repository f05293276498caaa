//! The worker client against the real orchestrator served in-process on
//! 127.0.0.1:0 (real gRPC, real SQLite files on both sides). Timing uses
//! short timeouts and polls with a deadline.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fixtures::{InProcess, add_streams, assignments, client_builder, eventually};
use orchestrator::engine::EngineConfig;
use orchestrator::server::ServerConfig;
use orchestrator_proto::v1;
use tonic::transport::Channel;
use worker_client::connector::BoxError;
use worker_client::{ClientBuilder, Connector, Error, Mode, ResilientWorkerClient, TcpConnector};

/// The orchestrator in-process: heartbeat 50 ms, session timeout 600 ms.
async fn orchestrator(db: &Path, listen: SocketAddr, max_streams_limit: u32) -> InProcess {
    orchestrator_with(db, listen, EngineConfig { max_streams_limit, ..fast_engine() }).await
}

/// The engine timings of [`orchestrator`].
fn fast_engine() -> EngineConfig {
    EngineConfig { heartbeat_interval: 50, session_timeout: 600, grace_period: 5_000, ..EngineConfig::default() }
}

async fn orchestrator_with(db: &Path, listen: SocketAddr, engine: EngineConfig) -> InProcess {
    InProcess::start_with(ServerConfig {
        listen,
        database: db.to_path_buf(),
        engine,
        drain_timeout: Duration::from_millis(100),
        ..ServerConfig::default()
    })
    .await
}

/// The fixtures' test timings, five streams at most, and a breaker that
/// opens on one failed call (two attempts) so that a start-up without the
/// orchestrator goes to local mode at once.
fn fast(url: &str, id: &str, state: &Path) -> ClientBuilder {
    client_builder(url, id, state).max_streams(5).circuit_failure_threshold(2)
}

#[tokio::test]
async fn every_method_in_normal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = orchestrator(&dir.path().join("o.db"), "127.0.0.1:0".parse().unwrap(), 100).await;
    add_streams(o.addr, 1..=8).await;
    let client = fast(&o.url(), "w1", &dir.path().join("w1.db")).build().await.unwrap();
    let mut leases = client.leases();
    client.start().await.unwrap();
    // Grants arrive through the heartbeat loop and the watch channel.
    eventually!(Duration::from_secs(5), leases.borrow_and_update().len() == 5);
    let held: Vec<i64> = leases.borrow().iter().map(|(s, _)| s).collect();
    assert!(client.can_process_stream(held[0]));
    assert!(!client.can_process_stream(999));
    let seq = client.record_stream_processing(held[0]).await.unwrap();
    assert_eq!(client.record_stream_processing(held[0]).await.unwrap(), seq + 1);
    assert!(matches!(client.record_stream_processing(999).await, Err(Error::NotLeased(999))));

    assert!(client.send_heartbeat().await.unwrap());
    assert!(client.request_streams(1).await.unwrap().is_empty(), "already at max_streams");
    assert!(client.release_streams(&held[..2]).await.unwrap());
    assert!(!client.can_process_stream(held[0]));
    eventually!(
        Duration::from_secs(5),
        assignments(o.addr, "w1").await.len() == 5 && client.leases().borrow().len() == 5
    );

    let health = client.health_check().await.to_json();
    let keys: Vec<&str> = health.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "assigned_streams",
            "circuit_breaker_state",
            "last_orchestrator_contact",
            "local_mode_active",
            "local_mode_reason",
            "metrics",
            "mode",
            "orchestrator_available",
            "server_id"
        ],
        "the seed's keys plus mode and local_mode_reason"
    );
    assert_eq!(health["server_id"], "w1");
    assert_eq!(health["mode"], "normal");
    assert_eq!(health["orchestrator_available"], true);
    assert_eq!(health["local_mode_active"], false);
    assert_eq!(health["circuit_breaker_state"], "closed");
    assert_eq!(health["assigned_streams"], 5);
    let metrics: Vec<&str> = health["metrics"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        metrics,
        [
            "circuit_breaker_trips",
            "failed_requests",
            "local_mode_activations",
            "records_made",
            "records_unsynced",
            "records_uploaded",
            "retry_attempts",
            "successful_requests",
            "total_requests"
        ]
    );
    let detailed = client.detailed_status().await;
    assert_eq!(detailed["configuration"]["max_streams"], 5);
    assert!(detailed["circuit_breaker"]["history"].is_array());

    client.shutdown().await;
    assert!(assignments(o.addr, "w1").await.is_empty(), "shutdown releases and deregisters");
    assert!(client.leases().borrow().is_empty());
    assert!(matches!(client.send_heartbeat().await, Err(Error::ShutDown)));
    o.stop().await;
}

#[tokio::test]
async fn an_outage_goes_to_local_mode_and_back_with_every_record_synced_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("o.db");
    let mut o = orchestrator(&db, "127.0.0.1:0".parse().unwrap(), 100).await;
    add_streams(o.addr, 1..=3).await;
    let client = fast(&o.url(), "w1", &dir.path().join("w1.db")).build().await.unwrap();
    let mut leases = client.leases();
    client.start().await.unwrap();
    eventually!(Duration::from_secs(5), leases.borrow_and_update().len() == 3);
    let before: Vec<(i64, u64)> = leases.borrow().iter().collect();
    let mut recorded = Vec::new();
    for (s, _) in &before {
        recorded.push(client.record_stream_processing(*s).await.unwrap());
    }

    let addr = o.addr;
    o.stop().await;
    // Local mode within the configured bound; processing continues.
    eventually!(Duration::from_secs(5), leases.borrow_and_update().local_mode());
    assert!(client.health_check().await.local_mode_active);
    assert!(!client.send_heartbeat().await.unwrap(), "in local mode a heartbeat reports false");
    assert_eq!(client.request_streams(2).await.unwrap(), before.iter().map(|(s, _)| *s).collect::<Vec<_>>());
    for (s, _) in &before {
        assert!(client.can_process_stream(*s));
        recorded.push(client.record_stream_processing(*s).await.unwrap());
    }
    // A release while away is recorded locally.
    assert!(!client.release_streams(&[before[2].0]).await.unwrap());

    // The orchestrator comes back on the same address and database.
    let mut o = orchestrator(&db, addr, 100).await;
    eventually!(Duration::from_secs(10), !leases.borrow_and_update().local_mode());
    assert_eq!(client.health_check().await.metrics.local_mode_activations, 1);
    eventually!(Duration::from_secs(5), o.records("w1").len() == recorded.len());
    let stored: Vec<u64> = o.records("w1").iter().map(|r| r.0).collect();
    assert_eq!(stored, recorded, "every record reached the orchestrator exactly once");
    let kept: Vec<(i64, u64)> = client.leases().borrow().iter().collect();
    assert_eq!(kept, before[..2], "kept with the same epochs; the released one stays released");
    // The orchestrator stores before the client reads its answer: poll.
    eventually!(Duration::from_secs(5), client.detailed_status().await["local_state"]["unsynced_records"] == 0);
    client.shutdown().await;
    o.stop().await;
}

#[tokio::test]
async fn an_expired_session_is_fenced_and_the_client_registers_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = orchestrator(&dir.path().join("o.db"), "127.0.0.1:0".parse().unwrap(), 100).await;
    add_streams(o.addr, 1..=2).await;
    // No background task: the client stays silent past the session timeout.
    let client = fast(&o.url(), "w1", &dir.path().join("w1.db"))
        .local_mode_after(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    assert!(client.register().await.unwrap());
    assert!(client.send_heartbeat().await.unwrap());
    assert_eq!(client.leases().borrow().len(), 2);
    // Silent until the orchestrator expired the session (600 ms).
    eventually!(Duration::from_secs(5), {
        let workers = fixtures::admin(o.addr).await.list_workers(v1::ListWorkersRequest::default()).await.unwrap();
        workers.into_inner().workers.iter().any(|w| w.state == v1::WorkerState::Expired as i32)
    });
    assert!(client.send_heartbeat().await.unwrap() || client.send_heartbeat().await.unwrap());
    let detailed = client.detailed_status().await;
    assert_eq!(detailed["local_state"]["session"]["worker_epoch"], 2, "registered again");
    // It kept its streams: nobody else could take them.
    assert_eq!(client.leases().borrow().len(), 2);
    client.shutdown().await;
    o.stop().await;
}

#[tokio::test]
async fn invalid_arguments_come_back_to_the_caller_and_never_trip_the_breaker() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = orchestrator(&dir.path().join("o.db"), "127.0.0.1:0".parse().unwrap(), 3).await;
    let client = fast(&o.url(), "w1", &dir.path().join("w1.db")).max_streams(5).build().await.unwrap();
    for _ in 0..5 {
        match client.register().await {
            Err(Error::Rejected { code, message, .. }) => {
                assert_eq!(code, tonic::Code::InvalidArgument);
                assert!(message.contains("max_streams"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    let err = client.register().await.unwrap_err();
    let source = std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default();
    assert!(source.contains("max_streams"), "the status is the error's source: {source:?}");
    let health = client.health_check().await;
    assert_eq!(health.circuit_breaker_state, "closed");
    assert_eq!(health.metrics.retry_attempts, 0, "never retried");
    o.stop().await;
}

#[tokio::test]
async fn a_worker_restarted_during_an_outage_processes_from_its_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("w1.db");
    let mut o = orchestrator(&dir.path().join("o.db"), "127.0.0.1:0".parse().unwrap(), 100).await;
    add_streams(o.addr, 1..=2).await;
    {
        let client = fast(&o.url(), "w1", &state).build().await.unwrap();
        client.start().await.unwrap();
        eventually!(Duration::from_secs(5), client.leases().borrow().len() == 2);
        // The worker dies without shutting down (no release, no deregister).
    }
    let url = o.url();
    o.stop().await;
    let client = fast(&url, "w1", &state).build().await.unwrap();
    client.start().await.unwrap();
    let set = client.leases().borrow().clone();
    assert!(set.local_mode(), "started in local mode from the state file");
    assert_eq!(set.len(), 2);
    assert!(client.can_process_stream(set.iter().next().unwrap().0));
    client.shutdown().await;
}

#[tokio::test]
async fn the_local_mode_limit_stops_processing() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = orchestrator(&dir.path().join("o.db"), "127.0.0.1:0".parse().unwrap(), 100).await;
    add_streams(o.addr, 1..=2).await;
    let client = fast(&o.url(), "w1", &dir.path().join("w1.db"))
        .local_mode_limit(Duration::from_millis(400))
        .build()
        .await
        .unwrap();
    let mut leases = client.leases();
    client.start().await.unwrap();
    eventually!(Duration::from_secs(5), leases.borrow_and_update().len() == 2);
    o.stop().await;
    // Within the limit (counted from the last contact) plus scheduling slack,
    // below the orchestrator's 600 ms session timeout (times patience).
    eventually!(Duration::from_millis(600), leases.borrow_and_update().is_empty());
    assert!(client.health_check().await.local_mode_active || client.leases().borrow().is_empty());
    client.shutdown().await;
}

#[tokio::test]
async fn a_state_file_of_another_worker_or_not_a_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    drop(ResilientWorkerClient::builder("http://127.0.0.1:1", "a").state_path(&state).build().await.unwrap());
    let err = ResilientWorkerClient::builder("http://127.0.0.1:1", "b").state_path(&state).build().await.unwrap_err();
    assert!(err.to_string().contains("belongs to server_id \"a\""), "{err}");
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"not sqlite at all, not even close ".repeat(50)).unwrap();
    let before = std::fs::read(&junk).unwrap();
    let err = ResilientWorkerClient::builder("http://127.0.0.1:1", "a").state_path(&junk).build().await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("junk.db") && text.contains("move the file aside"), "{text}");
    assert_eq!(std::fs::read(&junk).unwrap(), before, "left as it was");
}

#[tokio::test]
async fn the_connector_seam_makes_every_channel_and_a_call_without_answer_gets_a_fresh_one() {
    let dir = tempfile::tempdir().unwrap();
    let made = Arc::new(AtomicUsize::new(0));
    let counting = |made: Arc<AtomicUsize>| {
        move |uri: &str| -> Result<Channel, BoxError> {
            made.fetch_add(1, Ordering::SeqCst);
            TcpConnector::default().connect(uri)
        }
    };
    // Nothing listens on port 1: every attempt is refused.
    let client = fast("http://127.0.0.1:1", "w1", &dir.path().join("w1.db"))
        .connector(counting(Arc::clone(&made)))
        .build()
        .await
        .unwrap();
    assert_eq!(made.load(Ordering::SeqCst), 1, "one channel when built, none dialled yet");
    let health = client.health_check().await;
    assert!(!health.orchestrator_available, "no call answered yet: {}", health.to_json());
    assert!(!client.register().await.unwrap());
    assert_eq!(made.load(Ordering::SeqCst), 3, "each of the two refused attempts dropped its connection");
    let health = client.health_check().await;
    assert!(!health.orchestrator_available && health.metrics.failed_requests == 1, "{}", health.to_json());
    drop(client);

    // Through the same seam to a real orchestrator.
    let mut o = orchestrator(&dir.path().join("o.db"), "127.0.0.1:0".parse().unwrap(), 100).await;
    let made = Arc::new(AtomicUsize::new(0));
    let client =
        fast(&o.url(), "w2", &dir.path().join("w2.db")).connector(counting(Arc::clone(&made))).build().await.unwrap();
    assert!(client.register().await.unwrap());
    assert!(client.send_heartbeat().await.unwrap());
    assert_eq!(made.load(Ordering::SeqCst), 1, "answered calls keep their connection");
    let health = client.health_check().await;
    assert!(health.orchestrator_available && health.mode == Mode::Normal, "{}", health.to_json());
    client.shutdown().await;
    o.stop().await;
}

#[tokio::test]
async fn a_dropped_client_stops_and_its_session_expires() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = orchestrator(&dir.path().join("o.db"), "127.0.0.1:0".parse().unwrap(), 100).await;
    add_streams(o.addr, 1..=2).await;
    let state = dir.path().join("w1.db");
    let client = fast(&o.url(), "w1", &state).build().await.unwrap();
    client.start().await.unwrap();
    eventually!(Duration::from_secs(5), client.leases().borrow().len() == 2);
    let worker_state = |o: std::net::SocketAddr| async move {
        let workers = fixtures::admin(o).await.list_workers(v1::ListWorkersRequest::default()).await.unwrap();
        workers.into_inner().workers.into_iter().find(|w| w.server_id == "w1").map(|w| w.state)
    };
    assert_eq!(worker_state(o.addr).await, Some(v1::WorkerState::Live as i32));
    // Dropped without shutdown: a crash. No more heartbeats: the session
    // expires (600 ms) and nothing was released or deregistered.
    drop(client);
    eventually!(Duration::from_secs(5), worker_state(o.addr).await == Some(v1::WorkerState::Expired as i32));
    // The state file kept the leases: the next run presents them.
    let again = fast(&o.url(), "w1", &state).build().await.unwrap();
    assert_eq!(again.detailed_status().await["local_state"]["leases"].as_array().map(Vec::len), Some(2));
    again.shutdown().await;
    o.stop().await;
}

#[tokio::test]
async fn shutdown_deregisters_in_one_call_and_leaves_a_tidy_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = orchestrator(&dir.path().join("o.db"), "127.0.0.1:0".parse().unwrap(), 100).await;
    add_streams(o.addr, 1..=3).await;
    let state = dir.path().join("w1.db");
    let client = fast(&o.url(), "w1", &state).build().await.unwrap();
    client.start().await.unwrap();
    eventually!(Duration::from_secs(5), client.leases().borrow().len() == 3);
    let held: Vec<(i64, u64)> = client.leases().borrow().iter().collect();
    for (stream, _) in &held {
        client.record_stream_processing(*stream).await.unwrap();
    }
    let report = client.shutdown().await;
    assert!(report.deregistered && !report.timed_out, "{report:?}");
    assert_eq!(report.records_unsynced, 0, "uploaded before leaving");
    assert_eq!(o.records("w1").len(), 3);
    assert!(assignments(o.addr, "w1").await.is_empty(), "Deregister released everything");
    // No churn: nothing was released before the Deregister, so no stream was
    // granted back to the leaving worker in between (a release first would
    // have the engine re-grant it at once: the only live worker).
    let grants: i64 = rusqlite::Connection::open(dir.path().join("o.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM lease_history WHERE server_id = 'w1'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(grants, held.len() as i64, "one grant per stream, none during the shutdown");
    let wal = dir.path().join("w1.db-wal");
    assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0, "the WAL was folded into the file");
    assert!(matches!(client.send_heartbeat().await, Err(Error::ShutDown)));
    o.stop().await;
}

#[tokio::test]
async fn shutdown_is_bounded_when_the_orchestrator_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = orchestrator(&dir.path().join("o.db"), "127.0.0.1:0".parse().unwrap(), 100).await;
    add_streams(o.addr, 1..=2).await;
    let proxy = fixtures::FaultProxy::start(o.addr).await;
    let client = fast(&proxy.url(), "w1", &dir.path().join("w1.db")).build().await.unwrap();
    client.start().await.unwrap();
    eventually!(Duration::from_secs(5), client.leases().borrow().len() == 2);
    proxy.set(fixtures::Mode::Hang);
    let started = std::time::Instant::now();
    let report = client.shutdown_within(Duration::from_millis(300)).await;
    let took = started.elapsed();
    assert!(!report.deregistered && report.timed_out, "{report:?}");
    assert!(took < fixtures::patient(Duration::from_secs(2)), "shutdown took {took:?}");
    assert!(client.leases().borrow().is_empty(), "processing stopped anyway");
    o.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_recorders_on_slow_storage_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = orchestrator(&dir.path().join("o.db"), "127.0.0.1:0".parse().unwrap(), 100).await;
    add_streams(o.addr, 1..=4).await;
    // Slow storage: every group commit waits 2 ms, so records queue up while
    // the heartbeat loop uploads what is committed.
    // A call deadline that a 1,000-record upload meets on a loaded machine:
    // this test is about exactly-once, not timing.
    let client = fast(&o.url(), "w1", &dir.path().join("w1.db"))
        .state_write_delay(Duration::from_millis(2))
        .local_mode_after(fixtures::patient(Duration::from_secs(10)))
        .build()
        .await
        .unwrap();
    client.start().await.unwrap();
    eventually!(Duration::from_secs(5), client.leases().borrow().len() == 4);
    let streams: Vec<i64> = client.leases().borrow().iter().map(|(s, _)| s).collect();
    let mut recorders = Vec::new();
    for i in 0..64 {
        let (client, stream) = (client.clone(), streams[i % streams.len()]);
        recorders.push(tokio::spawn(async move {
            let mut made = Vec::new();
            for _ in 0..20 {
                made.push(client.record_stream_processing(stream).await.unwrap());
            }
            made
        }));
    }
    let mut produced = std::collections::BTreeSet::new();
    for r in recorders {
        for sequence in r.await.unwrap() {
            assert!(produced.insert(sequence), "sequence {sequence} given twice");
        }
    }
    assert_eq!(produced, (1..=64 * 20).collect(), "numbered in commit order without a gap");
    let report = client.shutdown().await;
    assert_eq!(report.records_unsynced, 0, "{report:?}");
    let stored: std::collections::BTreeSet<u64> = o.records("w1").iter().map(|r| r.0).collect();
    assert_eq!(stored, produced, "stored == produced, as sets");
    o.stop().await;
}

#[tokio::test]
async fn a_lost_state_file_starts_after_the_orchestrators_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = orchestrator(&dir.path().join("o.db"), "127.0.0.1:0".parse().unwrap(), 100).await;
    add_streams(o.addr, 1..=2).await;
    let state = dir.path().join("w1.db");
    let record_some = |n: usize| {
        let (url, state) = (o.url(), state.clone());
        async move {
            let client = fast(&url, "w1", &state).build().await.unwrap();
            client.start().await.unwrap();
            eventually!(Duration::from_secs(5), client.leases().borrow().len() == 2);
            let stream = client.leases().borrow().iter().next().unwrap().0;
            let mut made = Vec::new();
            for _ in 0..n {
                made.push(client.record_stream_processing(stream).await.unwrap());
            }
            assert_eq!(client.shutdown().await.records_unsynced, 0);
            made
        }
    };
    let first = record_some(10).await;
    assert_eq!(first, (1..=10).collect::<Vec<u64>>());
    // The disk is lost: a fresh state file, the same server id.
    for f in ["w1.db", "w1.db-wal", "w1.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    let second = record_some(5).await;
    assert_eq!(second, (11..=15).collect::<Vec<u64>>(), "numbered after what the orchestrator has");
    let stored: Vec<u64> = o.records("w1").iter().map(|r| r.0).collect();
    assert_eq!(stored, (1..=15).collect::<Vec<u64>>(), "no record dropped as a duplicate");
    o.stop().await;
}

#[tokio::test]
async fn standalone_mode_processes_its_streams_without_an_orchestrator() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("w1.db");
    // A local-mode limit means nothing without an orchestrator: it never
    // stops a standalone worker.
    let client = ResilientWorkerClient::standalone("w1", vec![1, 2, 3])
        .state_path(&state)
        .local_mode_limit(Duration::from_millis(1))
        .build()
        .await
        .unwrap();
    client.start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let set = client.leases().borrow().clone();
    assert_eq!(set.iter().map(|(s, _)| s).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(client.can_process_stream(2) && !client.can_process_stream(4));
    assert_eq!(client.record_stream_processing(2).await.unwrap(), 1, "records stay durable");
    assert!(!client.register().await.unwrap() && !client.send_heartbeat().await.unwrap(), "no calls");
    assert_eq!(client.request_streams(5).await.unwrap(), [1, 2, 3]);
    assert!(client.release_streams(&[3]).await.unwrap());
    assert!(!client.can_process_stream(3) && client.can_process_stream(1), "the rest still processable");
    let health = client.health_check().await;
    assert_eq!(health.mode, Mode::Standalone);
    assert!(health.local_mode_active && !health.orchestrator_available, "{}", health.to_json());
    assert_eq!((health.assigned_streams, health.metrics.total_requests), (2, 0), "{}", health.to_json());
    let status = client.detailed_status().await;
    assert_eq!(status["local_state"]["records"], 1, "durable: {status}");
    assert_eq!(status["local_state"]["unsynced_records"], 0, "never to be uploaded: {status}");
    let report = client.shutdown().await;
    assert!(!report.deregistered && report.records_unsynced == 0, "{report:?}");
    let err = ResilientWorkerClient::standalone("w1", vec![]).build().await.unwrap_err();
    assert!(matches!(err, Error::Config { setting: "streams", .. }), "{err}");
}

/// An orchestrator that takes at most 100 records per call: 250 records
/// made in local mode are uploaded when it comes back; the first batch is
/// refused as too large and the client halves its batches until they pass.
/// Every record arrives once, and the refusals are not taken for an outage.
#[tokio::test]
async fn uploads_are_split_when_the_orchestrator_refuses_a_batch_as_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("o.db");
    let start =
        |listen: SocketAddr| orchestrator_with(&db, listen, EngineConfig { max_list_len: 100, ..fast_engine() });
    let mut o = start("127.0.0.1:0".parse().unwrap()).await;
    add_streams(o.addr, 1..=2).await;
    let client = fast(&o.url(), "w1", &dir.path().join("w1.db")).build().await.unwrap();
    let mut leases = client.leases();
    client.start().await.unwrap();
    eventually!(Duration::from_secs(5), leases.borrow_and_update().len() == 2);
    let stream = leases.borrow().iter().next().unwrap().0;
    let addr = o.addr;
    o.stop().await;
    eventually!(Duration::from_secs(5), leases.borrow_and_update().local_mode());
    let mut made = Vec::new();
    for _ in 0..250 {
        made.push(client.record_stream_processing(stream).await.unwrap());
    }
    let mut o = start(addr).await;
    eventually!(Duration::from_secs(10), o.records("w1").len() == made.len());
    let stored: Vec<u64> = o.records("w1").iter().map(|r| r.0).collect();
    assert_eq!(stored, made, "every record once, in order");
    eventually!(Duration::from_secs(5), client.detailed_status().await["local_state"]["unsynced_records"] == 0);
    assert!(!leases.borrow().local_mode(), "the refusals did not send the client back to local mode");
    assert_eq!(client.health_check().await.metrics.local_mode_activations, 1, "only the real outage");
    client.shutdown().await;
    o.stop().await;
}
