//! Every RPC of the orchestrator through a real tonic client over
//! 127.0.0.1:0, against a real server with a SQLite file in a temp dir.
//! Timing tests use short timeouts and poll with a deadline.

use std::net::SocketAddr;
use std::time::Duration;

use fixtures::{InProcess, eventually};
use orchestrator::engine::EngineConfig;
use orchestrator::server::ServerConfig;
use orchestrator_proto::v1;
use orchestrator_proto::v1::admin_service_client::AdminServiceClient;
use orchestrator_proto::v1::worker_service_client::WorkerServiceClient;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

struct Fixture {
    orchestrator: InProcess,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start(engine: EngineConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let orchestrator = InProcess::start_with(ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            database: dir.path().join("orchestrator.db"),
            engine,
            ..ServerConfig::default()
        })
        .await;
        Self { addr: orchestrator.addr, orchestrator, _dir: dir }
    }

    async fn fast() -> Self {
        Self::start(EngineConfig {
            heartbeat_interval: 50,
            session_timeout: 400,
            grace_period: 400,
            ..EngineConfig::default()
        })
        .await
    }

    async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap()
    }

    async fn worker(&self) -> WorkerServiceClient<Channel> {
        WorkerServiceClient::new(self.channel().await)
    }

    async fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel().await)
    }

    async fn stop(mut self) {
        self.orchestrator.stop().await;
    }
}

fn rid() -> String {
    format!("t-{:016x}", fastrand::u64(..))
}

async fn add_streams(admin: &mut AdminServiceClient<Channel>, ids: std::ops::RangeInclusive<i64>) {
    let streams =
        ids.map(|stream_id| v1::StreamSpec { stream_id, name: format!("s{stream_id}"), source_url: String::new() });
    admin.add_streams(v1::AddStreamsRequest { streams: streams.collect(), request_id: rid() }).await.unwrap();
}

async fn register(w: &mut WorkerServiceClient<Channel>, id: &str, max: u32) -> v1::SessionRef {
    let r = w
        .register(v1::RegisterRequest {
            server_id: id.into(),
            max_streams: max,
            request_id: rid(),
            held_leases: vec![],
            client_version: "test/1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    r.session.unwrap()
}

/// One heartbeat that acknowledges what the previous one assigned and
/// releases what it revoked, like a well-behaved worker.
struct Sim {
    session: v1::SessionRef,
    held: Vec<v1::Lease>,
    ack: Vec<v1::Lease>,
}

impl Sim {
    async fn beat(&mut self, w: &mut WorkerServiceClient<Channel>) -> Result<v1::HeartbeatResponse, tonic::Status> {
        let r = w
            .heartbeat(v1::HeartbeatRequest {
                session: Some(self.session.clone()),
                processing_count: self.held.len() as u32,
                acknowledged: std::mem::take(&mut self.ack),
            })
            .await?
            .into_inner();
        self.held.extend(r.assign.iter().copied());
        self.ack = r.assign.clone();
        let revoked: Vec<v1::Lease> = r.revoke.iter().filter_map(|d| d.lease).collect();
        if !revoked.is_empty() {
            w.release_streams(v1::ReleaseStreamsRequest {
                session: Some(self.session.clone()),
                leases: revoked.clone(),
                request_id: rid(),
            })
            .await?;
            self.held.retain(|l| !revoked.contains(l));
        }
        Ok(r)
    }
}

async fn assignments(admin: &mut AdminServiceClient<Channel>, server_id: &str) -> Vec<v1::Lease> {
    admin
        .list_assignments(v1::ListAssignmentsRequest {
            server_id: server_id.into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .assignments
        .into_iter()
        .filter_map(|a| a.lease)
        .collect()
}

fn reason(status: &tonic::Status) -> Option<String> {
    status.get_error_details().error_info().map(|i| i.reason.clone())
}

#[tokio::test]
async fn a_worker_lifecycle_through_every_worker_rpc() {
    let f = Fixture::start(EngineConfig::default()).await;
    let (mut w, mut admin) = (f.worker().await, f.admin().await);
    add_streams(&mut admin, 1..=6).await;

    let reg = w
        .register(v1::RegisterRequest {
            server_id: "w1".into(),
            max_streams: 4,
            request_id: "reg-1".into(),
            held_leases: vec![],
            client_version: "test/1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let session = reg.session.clone().unwrap();
    assert_eq!(session.worker_epoch, 1);
    assert_eq!(reg.heartbeat_interval.unwrap().seconds, 5);
    assert_eq!(reg.session_timeout.unwrap().seconds, 30);

    // Heartbeat: four grants (capacity), repeated until acknowledged.
    let hb = |ack: Vec<v1::Lease>| v1::HeartbeatRequest {
        session: Some(session.clone()),
        processing_count: 0,
        acknowledged: ack,
    };
    let first = w.heartbeat(hb(vec![])).await.unwrap().into_inner();
    assert_eq!(first.assign.len(), 4);
    assert_eq!(first.next_heartbeat_interval.unwrap().seconds, 5);
    let again = w.heartbeat(hb(vec![])).await.unwrap().into_inner();
    assert_eq!(again.assign, first.assign, "unacknowledged grants are repeated");
    let acked = w.heartbeat(hb(first.assign.clone())).await.unwrap().into_inner();
    assert!(acked.assign.is_empty());

    // Release one (idempotent by request id), then pull it back with RequestStreams.
    let one = first.assign[0];
    let release =
        v1::ReleaseStreamsRequest { session: Some(session.clone()), leases: vec![one], request_id: "rel-1".into() };
    let released = w.release_streams(release.clone()).await.unwrap().into_inner();
    assert_eq!(released.released, [one]);
    assert_eq!(w.release_streams(release).await.unwrap().into_inner(), released, "a retry gets the same answer");
    // The release's placement round granted a replacement (back to the
    // capacity of 4) that no answer has shown the worker: the pull hands it
    // out, and it is still repeated in `assign` until acknowledged.
    let pull = v1::RequestStreamsRequest { session: Some(session.clone()), count: 2, request_id: "pull-1".into() };
    let granted = w.request_streams(pull.clone()).await.unwrap().into_inner().granted;
    assert_eq!(granted.len(), 1, "back to its capacity of 4");
    assert_eq!(w.request_streams(pull).await.unwrap().into_inner().granted, granted, "a retry never grants twice");
    let repeated = w.heartbeat(hb(vec![])).await.unwrap().into_inner();
    assert_eq!(repeated.assign, granted, "a pulled grant is repeated in assign until acknowledged");
    assert!(w.heartbeat(hb(granted.clone())).await.unwrap().into_inner().assign.is_empty());
    let again = v1::RequestStreamsRequest { session: Some(session.clone()), count: 2, request_id: "pull-2".into() };
    assert_eq!(w.request_streams(again).await.unwrap().into_inner().granted, [], "at capacity: nothing it holds");

    // Sync after "local mode": leases keep, records are stored once.
    let held: Vec<v1::Lease> = assignments(&mut admin, "w1").await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let records: Vec<v1::ProcessingRecord> = (1..=3)
        .map(|sequence| v1::ProcessingRecord {
            stream_id: held[0].stream_id,
            lease_epoch: held[0].lease_epoch,
            processed_at: Some(prost_types::Timestamp { seconds: now.as_secs() as i64, nanos: 0 }),
            sequence,
            local_mode: true,
        })
        .collect();
    let sync = v1::SyncLocalStateRequest {
        synced_below_sequence: 0,
        session: Some(session.clone()),
        held_leases: held.clone(),
        records: records.clone(),
        request_id: "sync-1".into(),
    };
    let synced = w.sync_local_state(sync.clone()).await.unwrap().into_inner();
    assert_eq!(synced.acknowledged_through_sequence, 3);
    assert_eq!(synced.stale_records, 0);
    assert!(synced.decisions.iter().all(|d| d.kind == v1::LeaseDecisionKind::Keep as i32));
    let resent = w.sync_local_state(sync).await.unwrap().into_inner();
    assert_eq!(resent.acknowledged_through_sequence, 3, "a re-upload is acknowledged, not stored twice");

    // Deregister frees everything at once.
    w.deregister(v1::DeregisterRequest { session: Some(session.clone()), request_id: "bye".into() }).await.unwrap();
    assert!(assignments(&mut admin, "w1").await.is_empty());
    let err = w.heartbeat(hb(vec![])).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err).as_deref(), Some("SESSION_UNKNOWN"), "a deregistered session is gone");
    f.stop().await;
}

#[tokio::test]
async fn an_old_session_is_fenced_with_error_info() {
    let f = Fixture::start(EngineConfig::default()).await;
    let mut w = f.worker().await;
    let old = register(&mut w, "w1", 5).await;
    let new = register(&mut w, "w1", 5).await;
    assert_eq!(new.worker_epoch, old.worker_epoch + 1);
    let err = w
        .heartbeat(v1::HeartbeatRequest { session: Some(old), processing_count: 0, acknowledged: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let info = err.get_error_details().error_info().cloned().expect("ErrorInfo detail");
    assert_eq!(info.reason, "SESSION_FENCED");
    assert_eq!(info.domain, "orchestrator.v1");
    assert_eq!(info.metadata.get("server_id").map(String::as_str), Some("w1"));
    let unknown = v1::SessionRef { server_id: "ghost".into(), session_id: "x".into(), worker_epoch: 1 };
    let err = w
        .heartbeat(v1::HeartbeatRequest { session: Some(unknown), processing_count: 0, acknowledged: vec![] })
        .await
        .unwrap_err();
    assert_eq!(reason(&err).as_deref(), Some("SESSION_UNKNOWN"));
    f.stop().await;
}

#[tokio::test]
async fn a_retried_register_returns_the_same_session() {
    let f = Fixture::start(EngineConfig::default()).await;
    let mut w = f.worker().await;
    let req = v1::RegisterRequest {
        server_id: "w1".into(),
        max_streams: 3,
        request_id: "same".into(),
        held_leases: vec![],
        client_version: String::new(),
    };
    let a = w.register(req.clone()).await.unwrap().into_inner();
    let b = w.register(req).await.unwrap().into_inner();
    assert_eq!(a.session, b.session);
    let session = a.session.unwrap();
    w.heartbeat(v1::HeartbeatRequest { session: Some(session), processing_count: 0, acknowledged: vec![] })
        .await
        .expect("a retried register does not fence its sender");
    f.stop().await;
}

#[tokio::test]
async fn a_silent_worker_expires_and_its_streams_move() {
    let f = Fixture::fast().await;
    let (mut w, mut admin) = (f.worker().await, f.admin().await);
    add_streams(&mut admin, 1..=4).await;
    let mut a = Sim { session: register(&mut w, "a", 10).await, held: vec![], ack: vec![] };
    a.beat(&mut w).await.unwrap();
    a.beat(&mut w).await.unwrap();
    assert_eq!(a.held.len(), 4);
    let mut b = Sim { session: register(&mut w, "b", 10).await, held: vec![], ack: vec![] };
    // a goes silent without releasing: b gets everything once a expires.
    eventually!(Duration::from_secs(5), {
        b.beat(&mut w).await.unwrap();
        b.held.len() == 4
    });
    for l in &b.held {
        assert!(a.held.iter().any(|old| old.stream_id == l.stream_id && old.lease_epoch < l.lease_epoch));
    }
    let err = a.beat(&mut w).await.unwrap_err();
    assert_eq!(reason(&err).as_deref(), Some("SESSION_EXPIRED"));
    f.stop().await;
}

#[tokio::test]
async fn a_join_rebalances_through_heartbeat_revokes_and_grants() {
    let f = Fixture::start(EngineConfig::default()).await;
    let (mut w, mut admin) = (f.worker().await, f.admin().await);
    add_streams(&mut admin, 1..=6).await;
    let mut a = Sim { session: register(&mut w, "a", 10).await, held: vec![], ack: vec![] };
    a.beat(&mut w).await.unwrap();
    a.beat(&mut w).await.unwrap();
    let mut b = Sim { session: register(&mut w, "b", 10).await, held: vec![], ack: vec![] };
    let r = a.beat(&mut w).await.unwrap();
    assert_eq!(r.revoke.len(), 3);
    assert!(r.revoke.iter().all(|d| d.reason == v1::RevokeReason::Rebalance as i32));
    b.beat(&mut w).await.unwrap();
    assert_eq!((a.held.len(), b.held.len()), (3, 3));
    f.stop().await;
}

#[tokio::test]
async fn drain_and_pause_resume_through_the_admin_service() {
    let f = Fixture::start(EngineConfig::default()).await;
    let (mut w, mut admin) = (f.worker().await, f.admin().await);
    add_streams(&mut admin, 1..=4).await;
    let mut a = Sim { session: register(&mut w, "a", 10).await, held: vec![], ack: vec![] };
    a.beat(&mut w).await.unwrap();
    let paused = admin
        .pause_rebalancing(v1::PauseRebalancingRequest { reason: "maintenance".into(), request_id: rid() })
        .await
        .unwrap()
        .into_inner();
    assert!(paused.paused);
    let mut b = Sim { session: register(&mut w, "b", 10).await, held: vec![], ack: vec![] };
    a.beat(&mut w).await.unwrap();
    b.beat(&mut w).await.unwrap();
    assert_eq!((a.held.len(), b.held.len()), (4, 0), "paused: nothing moves");
    let status = admin.get_cluster_status(v1::GetClusterStatusRequest {}).await.unwrap().into_inner();
    assert!(status.rebalancing_paused);
    admin.resume_rebalancing(v1::ResumeRebalancingRequest { request_id: rid() }).await.unwrap();
    a.beat(&mut w).await.unwrap();
    b.beat(&mut w).await.unwrap();
    assert_eq!((a.held.len(), b.held.len()), (2, 2));

    let drained =
        admin.drain_worker(v1::DrainWorkerRequest { server_id: "a".into(), request_id: rid() }).await.unwrap();
    assert_eq!(drained.into_inner().streams_to_move, 2);
    let r = a.beat(&mut w).await.unwrap();
    assert!(r.draining);
    assert!(r.revoke.iter().all(|d| d.reason == v1::RevokeReason::Drain as i32));
    b.beat(&mut w).await.unwrap();
    assert_eq!((a.held.len(), b.held.len()), (0, 4));
    let workers = admin.list_workers(v1::ListWorkersRequest::default()).await.unwrap().into_inner().workers;
    let a_info = workers.iter().find(|x| x.server_id == "a").unwrap();
    assert_eq!(a_info.state, v1::WorkerState::Draining as i32);
    assert_eq!(a_info.client_version, "test/1");
    let err =
        admin.drain_worker(v1::DrainWorkerRequest { server_id: "nobody".into(), request_id: rid() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    f.stop().await;
}

#[tokio::test]
async fn streams_can_be_listed_page_by_page_and_removed() {
    let f = Fixture::start(EngineConfig::default()).await;
    let mut admin = f.admin().await;
    add_streams(&mut admin, 1..=25).await;
    let mut token = String::new();
    let mut seen = Vec::new();
    loop {
        let page = admin
            .list_streams(v1::ListStreamsRequest { page_size: 10, page_token: token.clone() })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.streams.iter().map(|s| s.spec.as_ref().unwrap().stream_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, (1..=25).collect::<Vec<_>>());
    let removed = admin
        .remove_streams(v1::RemoveStreamsRequest { stream_ids: vec![3, 99], request_id: rid() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((removed.removed, removed.not_found), (vec![3], vec![99]));
    let first = admin.list_streams(v1::ListStreamsRequest { page_size: 3, page_token: String::new() }).await.unwrap();
    let ids: Vec<i64> = first.into_inner().streams.iter().map(|s| s.spec.as_ref().unwrap().stream_id).collect();
    assert_eq!(ids, [1, 2, 4]);
    f.stop().await;
}

fn expect<T>(result: Result<tonic::Response<T>, tonic::Status>, field: &str) {
    match result {
        Err(s) => {
            assert_eq!(s.code(), Code::InvalidArgument, "{field}: {s:?}");
            assert!(s.message().starts_with(field), "message {:?} should name {field}", s.message());
        }
        Ok(_) => panic!("{field}: accepted"),
    }
}

/// Each bad input: INVALID_ARGUMENT and a message naming the field.
#[tokio::test]
async fn bad_input_gets_invalid_argument_naming_the_field() {
    let f = Fixture::start(EngineConfig::default()).await;
    let (mut w, mut admin) = (f.worker().await, f.admin().await);
    let reg = |server_id: &str, max: u32, request_id: &str| v1::RegisterRequest {
        server_id: server_id.into(),
        max_streams: max,
        request_id: request_id.into(),
        held_leases: vec![],
        client_version: String::new(),
    };
    expect(w.register(reg("", 1, "r")).await, "server_id");
    expect(w.register(reg(&"x".repeat(129), 1, "r")).await, "server_id");
    expect(w.register(reg("bad id", 1, "r")).await, "server_id");
    expect(w.register(reg("w", 0, "r")).await, "max_streams");
    expect(w.register(reg("w", 10_001, "r")).await, "max_streams");
    expect(w.register(reg("w", 1, "")).await, "request_id");
    let mut dup = reg("w", 5, "r");
    dup.held_leases = vec![v1::Lease { stream_id: 1, lease_epoch: 1 }, v1::Lease { stream_id: 1, lease_epoch: 2 }];
    expect(w.register(dup).await, "held_leases[1].stream_id");
    let mut version = reg("w", 5, "r");
    version.client_version = "v".repeat(300);
    expect(w.register(version).await, "client_version");

    expect(
        w.heartbeat(v1::HeartbeatRequest { session: None, processing_count: 0, acknowledged: vec![] }).await,
        "session",
    );
    let session = register(&mut w, "w", 5).await;
    let count = |n| v1::RequestStreamsRequest { session: Some(session.clone()), count: n, request_id: rid() };
    expect(w.request_streams(count(0)).await, "count");
    expect(w.request_streams(count(6)).await, "count");
    let release = |leases| v1::ReleaseStreamsRequest { session: Some(session.clone()), leases, request_id: rid() };
    expect(w.release_streams(release(vec![])).await, "leases");
    expect(w.release_streams(release(vec![v1::Lease { stream_id: -1, lease_epoch: 1 }])).await, "leases[0].stream_id");
    let second_bad = vec![v1::Lease { stream_id: 1, lease_epoch: 1 }, v1::Lease { stream_id: 2, lease_epoch: 0 }];
    expect(w.release_streams(release(second_bad)).await, "leases[1].lease_epoch");
    let ack = |acknowledged| v1::HeartbeatRequest { session: Some(session.clone()), processing_count: 0, acknowledged };
    let third_bad = vec![
        v1::Lease { stream_id: 1, lease_epoch: 1 },
        v1::Lease { stream_id: 2, lease_epoch: 1 },
        v1::Lease { stream_id: 2, lease_epoch: 1 },
    ];
    expect(w.heartbeat(ack(third_bad)).await, "acknowledged[2].stream_id");
    let record = |sequence| v1::ProcessingRecord {
        stream_id: 1,
        lease_epoch: 1,
        processed_at: Some(prost_types::Timestamp { seconds: 1, nanos: 0 }),
        sequence,
        local_mode: false,
    };
    let sync = |records| v1::SyncLocalStateRequest {
        synced_below_sequence: 0,
        session: Some(session.clone()),
        held_leases: vec![],
        records,
        request_id: rid(),
    };
    expect(w.sync_local_state(sync(vec![record(2), record(1)])).await, "records[1].sequence");
    let mut no_time = record(1);
    no_time.processed_at = None;
    expect(w.sync_local_state(sync(vec![no_time])).await, "records[0].processed_at");
    let mut claim_past_the_batch = sync(vec![record(3)]);
    claim_past_the_batch.synced_below_sequence = 4;
    expect(w.sync_local_state(claim_past_the_batch).await, "synced_below_sequence");

    let add = |stream_id, name: String| v1::AddStreamsRequest {
        streams: vec![v1::StreamSpec { stream_id, name, source_url: String::new() }],
        request_id: rid(),
    };
    expect(admin.add_streams(add(0, String::new())).await, "streams[0].stream_id");
    expect(admin.add_streams(add(1, "n".repeat(300))).await, "streams[0].name");
    // NUL: PostgreSQL's TEXT cannot keep it; refused on every backend.
    expect(admin.add_streams(add(1, "radio\0one".into())).await, "streams[0].name");
    expect(admin.add_streams(v1::AddStreamsRequest { streams: vec![], request_id: rid() }).await, "streams");
    expect(
        admin.remove_streams(v1::RemoveStreamsRequest { stream_ids: vec![], request_id: rid() }).await,
        "stream_ids",
    );
    expect(
        admin.drain_worker(v1::DrainWorkerRequest { server_id: String::new(), request_id: rid() }).await,
        "server_id",
    );
    expect(
        admin.drain_worker(v1::DrainWorkerRequest { server_id: "not printable".into(), request_id: rid() }).await,
        "server_id",
    );
    let assignments = |server_id: &str| v1::ListAssignmentsRequest {
        server_id: server_id.into(),
        page_size: 0,
        page_token: String::new(),
    };
    expect(admin.list_assignments(assignments(&"x".repeat(129))).await, "server_id");
    expect(admin.list_assignments(assignments("tab\there")).await, "server_id");
    expect(
        admin.list_streams(v1::ListStreamsRequest { page_size: 1, page_token: "garbage".into() }).await,
        "page_token",
    );
    let status = admin.get_cluster_status(v1::GetClusterStatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.total_streams, 0, "nothing bad got in");
    f.stop().await;
}

#[tokio::test]
async fn health_serves_and_reflection_lists_the_services() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let f = Fixture::start(EngineConfig::default()).await;
    let mut health = HealthClient::new(f.channel().await);
    for service in ["", "orchestrator.v1.WorkerService", "orchestrator.v1.AdminService"] {
        let r =
            health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status(), tonic_health::pb::health_check_response::ServingStatus::Serving, "{service:?}");
    }
    let mut reflection = ServerReflectionClient::new(f.channel().await);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        reflection.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else { panic!("{response:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["orchestrator.v1.WorkerService", "orchestrator.v1.AdminService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    f.stop().await;
}

/// ListWorkers and ListAssignments page through the fleet; assignments come
/// by ascending (server_id, stream_id) as the contract says; each item once.
#[tokio::test]
async fn workers_and_assignments_are_listed_page_by_page_in_contract_order() {
    let f = Fixture::start(EngineConfig::default()).await;
    let (mut w, mut admin) = (f.worker().await, f.admin().await);
    add_streams(&mut admin, 1..=30).await;
    let mut sessions = Vec::new();
    for id in ["c", "a", "b"] {
        sessions.push(register(&mut w, id, 10).await);
    }
    let mut workers = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_workers(v1::ListWorkersRequest { page_size: 2, page_token: token.clone() })
            .await
            .unwrap()
            .into_inner();
        assert!(page.workers.len() <= 2);
        workers.extend(page.workers.into_iter().map(|w| w.server_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(workers, ["a", "b", "c"]);

    let mut listed = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = admin
            .list_assignments(v1::ListAssignmentsRequest {
                server_id: String::new(),
                page_size: 7,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        listed.extend(page.assignments.into_iter().map(|a| (a.server_id, a.lease.unwrap().stream_id)));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(listed.len(), 30, "every lease once");
    assert_eq!(pages, 5);
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "by ascending (server_id, stream_id)");
    let err = admin.list_workers(v1::ListWorkersRequest { page_size: 0, page_token: "bad id".into() }).await;
    assert_eq!(err.unwrap_err().code(), Code::InvalidArgument);
    for bad in ["garbage", "a/x", "bad id/3"] {
        let request = v1::ListAssignmentsRequest { server_id: String::new(), page_size: 0, page_token: bad.into() };
        assert_eq!(admin.list_assignments(request).await.unwrap_err().code(), Code::InvalidArgument, "{bad}");
    }
    f.stop().await;
}

/// After a restart, before the workers re-register, the admin views count
/// their streams as assigned (the contract: ASSIGNED covers workers awaiting
/// re-registration). When grace ends without them, it is audited.
#[tokio::test]
async fn during_grace_the_admin_views_show_the_streams_held() {
    let dir = tempfile::tempdir().unwrap();
    let config = || ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: dir.path().join("o.db"),
        engine: EngineConfig {
            grace_period: u64::try_from(fixtures::patient(Duration::from_secs(3)).as_millis()).unwrap(),
            ..EngineConfig::default()
        },
        drain_timeout: Duration::from_millis(100),
        ..ServerConfig::default()
    };
    let mut o = InProcess::start_with(config()).await;
    let mut admin =
        AdminServiceClient::new(tonic::transport::Endpoint::from_shared(o.url()).unwrap().connect().await.unwrap());
    add_streams(&mut admin, 1..=4).await;
    let mut w =
        WorkerServiceClient::new(tonic::transport::Endpoint::from_shared(o.url()).unwrap().connect().await.unwrap());
    register(&mut w, "w1", 10).await;
    o.stop().await;

    let mut o = InProcess::start_with(config()).await;
    let mut admin =
        AdminServiceClient::new(tonic::transport::Endpoint::from_shared(o.url()).unwrap().connect().await.unwrap());
    let status = admin.get_cluster_status(v1::GetClusterStatusRequest {}).await.unwrap().into_inner();
    assert!(status.in_grace_period);
    assert_eq!((status.assigned_streams, status.unassigned_streams), (4, 0));
    let listed = admin
        .list_assignments(v1::ListAssignmentsRequest {
            server_id: "w1".into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.assignments.len(), 4);
    let streams = admin
        .list_streams(v1::ListStreamsRequest { page_size: 0, page_token: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert!(streams.streams.iter().all(|s| s.owner_server_id == "w1" && s.state == v1::StreamState::Assigned as i32));

    // Grace ends without w1: audited, and the streams are no longer its.
    eventually!(Duration::from_secs(10), {
        let s = admin.get_cluster_status(v1::GetClusterStatusRequest {}).await.unwrap().into_inner();
        !s.in_grace_period
    });
    let db = rusqlite::Connection::open(dir.path().join("o.db")).unwrap();
    let audited = |event: &str| -> i64 {
        db.query_row("SELECT COUNT(*) FROM audit_log WHERE event = ?1", [event], |r| r.get(0)).unwrap()
    };
    eventually!(Duration::from_secs(5), audited("grace_ended") == 1);
    let missing: String = db
        .query_row("SELECT server_id FROM audit_log WHERE event = 'worker_expired' ORDER BY id DESC LIMIT 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(missing, "w1");
    o.stop().await;
}
