//! Several orchestrator endpoints: the client follows a standby's
//! NOT_LEADER hint to the leader at once, never counts NOT_LEADER against
//! its circuit breaker, and moves past an endpoint that refuses
//! connections. The standby here is a fake that answers every call as the
//! real follower does (`orchestrator::server::replica::not_leader`); the
//! leader is the real orchestrator in-process.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fixtures::{InProcess, add_streams, client_builder, eventually};
use orchestrator::server::replica::not_leader;
use orchestrator_proto::v1;
use orchestrator_proto::v1::worker_service_server::WorkerService;
use tonic::{Request, Response, Status};
use worker_client::Mode;

/// Answers every call NOT_LEADER, naming `leader`.
#[derive(Clone)]
struct Standby {
    leader: String,
    calls: Arc<AtomicUsize>,
}

impl Standby {
    fn refuse<T>(&self) -> Result<Response<T>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(not_leader(Some(&self.leader)))
    }
}

#[tonic::async_trait]
impl WorkerService for Standby {
    async fn register(&self, _: Request<v1::RegisterRequest>) -> Result<Response<v1::RegisterResponse>, Status> {
        self.refuse()
    }
    async fn heartbeat(&self, _: Request<v1::HeartbeatRequest>) -> Result<Response<v1::HeartbeatResponse>, Status> {
        self.refuse()
    }
    async fn request_streams(
        &self,
        _: Request<v1::RequestStreamsRequest>,
    ) -> Result<Response<v1::RequestStreamsResponse>, Status> {
        self.refuse()
    }
    async fn release_streams(
        &self,
        _: Request<v1::ReleaseStreamsRequest>,
    ) -> Result<Response<v1::ReleaseStreamsResponse>, Status> {
        self.refuse()
    }
    async fn sync_local_state(
        &self,
        _: Request<v1::SyncLocalStateRequest>,
    ) -> Result<Response<v1::SyncLocalStateResponse>, Status> {
        self.refuse()
    }
    async fn deregister(&self, _: Request<v1::DeregisterRequest>) -> Result<Response<v1::DeregisterResponse>, Status> {
        self.refuse()
    }
}

#[tokio::test]
async fn a_standby_sends_the_client_to_the_leader_and_the_breaker_never_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = InProcess::start(&dir.path().join("o.db"), "127.0.0.1:0".parse().unwrap()).await;
    add_streams(leader.addr, 1..=4).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let standby = fixtures::serve_fake(Standby { leader: leader.url(), calls: Arc::clone(&calls) }).await;
    // A dead endpoint first, the standby second; the leader is not listed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let urls = [format!("http://{dead}"), format!("http://{standby}")];
    let client = client_builder("unused", "w1", &dir.path().join("w1.db"))
        .orchestrator_urls(&urls)
        .max_streams(4)
        .circuit_failure_threshold(1)
        .build()
        .await
        .unwrap();
    assert!(client.register().await.unwrap(), "registered through the hint in one call");
    assert!(calls.load(Ordering::SeqCst) >= 1, "the standby was asked");
    client.start().await.unwrap();
    eventually!(Duration::from_secs(10), client.leases().borrow().len() == 4);
    let health = client.health_check().await;
    assert_eq!(health.mode, Mode::Normal);
    assert_eq!(health.metrics.circuit_breaker_trips, 0, "neither the dead endpoint nor NOT_LEADER tripped it");
    client.shutdown().await;
    leader.stop().await;
}
