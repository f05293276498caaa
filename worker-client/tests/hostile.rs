//! A fake orchestrator that answers with malformed or hostile data: the
//! client ignores what it cannot trust, never panics, never exceeds its
//! `max_streams`, and keeps its state consistent.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use orchestrator_proto::v1;
use orchestrator_proto::v1::worker_service_server::WorkerService;
use tonic::{Request, Response, Status};
use worker_client::ResilientWorkerClient;

#[derive(Default)]
struct Hostile {
    heartbeats: AtomicU32,
}

fn lease(stream_id: i64, lease_epoch: u64) -> v1::Lease {
    v1::Lease { stream_id, lease_epoch }
}

fn revoke(l: v1::Lease) -> v1::LeaseDecision {
    v1::LeaseDecision {
        lease: Some(l),
        kind: v1::LeaseDecisionKind::Revoke as i32,
        reason: v1::RevokeReason::Rebalance as i32,
    }
}

#[tonic::async_trait]
impl WorkerService for Hostile {
    async fn register(&self, r: Request<v1::RegisterRequest>) -> Result<Response<v1::RegisterResponse>, Status> {
        let r = r.into_inner();
        Ok(Response::new(v1::RegisterResponse {
            session: Some(v1::SessionRef { server_id: r.server_id, session_id: "s".into(), worker_epoch: 1 }),
            // A KEEP for a lease the worker never presented, and one with no lease at all.
            held_lease_decisions: vec![
                v1::LeaseDecision { lease: Some(lease(77, 1)), kind: v1::LeaseDecisionKind::Keep as i32, reason: 0 },
                v1::LeaseDecision { lease: None, kind: v1::LeaseDecisionKind::Keep as i32, reason: 0 },
            ],
            // Absurd intervals are clamped.
            heartbeat_interval: Some(prost_types::Duration { seconds: -5, nanos: 0 }),
            session_timeout: None,
            // An absurd watermark: the client's numbering must not overflow.
            acknowledged_through_sequence: u64::MAX,
        }))
    }

    async fn heartbeat(&self, _: Request<v1::HeartbeatRequest>) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let n = self.heartbeats.fetch_add(1, Ordering::SeqCst);
        let mut assign = vec![lease(0, 1), lease(-5, 1), lease(3, 0)];
        assign.extend((10..20).map(|s| lease(s, 1))); // far beyond max_streams = 3
        assign.push(lease(10, 1)); // duplicate
        let revoke = vec![revoke(lease(999, 1)), revoke(lease(10, 42))]; // unknown stream, wrong epoch
        Ok(Response::new(v1::HeartbeatResponse {
            assign: if n < 3 { assign } else { vec![] },
            revoke,
            next_heartbeat_interval: Some(prost_types::Duration { seconds: 0, nanos: 1 }),
            draining: false,
        }))
    }

    async fn request_streams(
        &self,
        _: Request<v1::RequestStreamsRequest>,
    ) -> Result<Response<v1::RequestStreamsResponse>, Status> {
        Ok(Response::new(v1::RequestStreamsResponse { granted: (100..10_100).map(|s| lease(s, 1)).collect() }))
    }

    async fn release_streams(
        &self,
        r: Request<v1::ReleaseStreamsRequest>,
    ) -> Result<Response<v1::ReleaseStreamsResponse>, Status> {
        // Claims to have released everything and more.
        let mut released = r.into_inner().leases;
        released.push(lease(12345, 9));
        Ok(Response::new(v1::ReleaseStreamsResponse { released, not_held: vec![lease(-1, 0)] }))
    }

    async fn sync_local_state(
        &self,
        _: Request<v1::SyncLocalStateRequest>,
    ) -> Result<Response<v1::SyncLocalStateResponse>, Status> {
        Ok(Response::new(v1::SyncLocalStateResponse {
            decisions: vec![revoke(lease(555, 1))],
            acknowledged_through_sequence: u64::MAX,
            stale_records: u32::MAX,
        }))
    }

    async fn deregister(&self, _: Request<v1::DeregisterRequest>) -> Result<Response<v1::DeregisterResponse>, Status> {
        Err(Status::internal("boom"))
    }
}

#[tokio::test]
async fn hostile_answers_are_ignored_or_refused_never_trusted() {
    let addr = fixtures::serve_fake(Hostile::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let client = ResilientWorkerClient::builder(format!("http://{addr}"), "w1")
        .max_streams(3)
        .state_path(dir.path().join("w1.db"))
        .retry_base_delay(Duration::from_millis(5))
        .retry_max_delay(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    assert!(client.register().await.unwrap());
    assert!(client.leases().borrow().is_empty(), "a KEEP for a lease never presented is ignored");
    for _ in 0..4 {
        assert!(client.send_heartbeat().await.unwrap());
        let set = client.leases().borrow().clone();
        assert!(set.len() <= 3, "never beyond max_streams: {set:?}");
        assert!(set.iter().all(|(s, e)| s > 0 && e > 0), "no invalid lease: {set:?}");
    }
    let held: Vec<i64> = client.leases().borrow().iter().map(|(s, _)| s).collect();
    assert_eq!(held, [10, 11, 12], "the first valid grants within capacity; bogus revokes ignored");
    // A flood of grants is capped too.
    let granted = client.request_streams(3).await.unwrap();
    assert!(granted.is_empty(), "{granted:?}");
    assert_eq!(client.leases().borrow().len(), 3);
    // Records: the orchestrator claims to acknowledge more than was sent.
    client.record_stream_processing(10).await.unwrap();
    client.record_stream_processing(11).await.unwrap();
    assert!(client.register().await.unwrap());
    let status = client.detailed_status().await;
    assert_eq!(status["local_state"]["unsynced_records"], 0);
    assert_eq!(status["local_state"]["next_sequence"], 3, "sequence numbers are the client's own");
    client.shutdown().await;
    assert!(client.leases().borrow().is_empty());
}
