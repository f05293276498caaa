//! The tower layers around a real tonic client talking to a real tonic
//! server (the standard health service) over 127.0.0.1.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use resilience::grpc::{GrpcClassifier, PUSHBACK_HEADER, is_circuit_rejection};
use resilience::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, CircuitState, Retry, RetryConfig, RetryLayer,
};
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::{Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceBuilder;

/// A server-side middleware that answers the first `fail` requests itself
/// with `status` (as a real gRPC Trailers-Only response) and passes the rest.
#[derive(Clone)]
struct FailFirst<S> {
    inner: S,
    remaining: Arc<AtomicU32>,
    seen: Arc<AtomicU32>,
    status: fn() -> tonic::Status,
}

impl<S, B> tower::Service<http::Request<B>> for FailFirst<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.seen.fetch_add(1, Ordering::SeqCst);
        let fail = self.remaining.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if fail {
            let response = (self.status)().into_http();
            Box::pin(async move { Ok(response) })
        } else {
            Box::pin(self.inner.call(request))
        }
    }
}

struct TestServer {
    addr: SocketAddr,
    seen: Arc<AtomicU32>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl TestServer {
    async fn start(fail: u32, status: fn() -> tonic::Status) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let remaining = Arc::new(AtomicU32::new(fail));
        let seen = Arc::new(AtomicU32::new(0));
        let (stop, stopped) = oneshot::channel();
        let layer = {
            let (remaining, seen) = (remaining.clone(), seen.clone());
            tower::layer::layer_fn(move |inner| FailFirst {
                inner,
                remaining: remaining.clone(),
                seen: seen.clone(),
                status,
            })
        };
        let server = Server::builder().layer(layer).add_service(health).serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async {
                let _ = stopped.await;
            },
        );
        let done = tokio::spawn(async move { server.await.unwrap() });
        Self { addr, seen, stop: Some(stop), done }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        self.done.await.unwrap();
    }
}

fn breaker(threshold: u32) -> CircuitBreaker {
    CircuitBreaker::new(
        CircuitBreakerConfig::builder()
            .failure_threshold(threshold)
            .recovery_timeout(Duration::from_secs(3600))
            .build()
            .unwrap(),
    )
}

fn retry(max_attempts: u32) -> Retry {
    Retry::new(
        RetryConfig::builder()
            .max_attempts(max_attempts)
            .base_delay(Duration::from_millis(5))
            .max_delay(Duration::from_millis(20))
            .no_budget()
            .build()
            .unwrap(),
    )
}

/// A health client behind retry (outside) and breaker (inside).
fn client(
    addr: SocketAddr,
    breaker: &CircuitBreaker,
    retry: &Retry,
) -> HealthClient<impl tonic::client::GrpcService<tonic::body::Body, ResponseBody = tonic::body::Body> + Clone> {
    let channel =
        Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_timeout(Duration::from_secs(2)).connect_lazy();
    let service = ServiceBuilder::new()
        .layer(RetryLayer::new(retry.clone()))
        .layer(CircuitBreakerLayer::new(breaker.clone()).with_classifier(GrpcClassifier))
        .service(channel);
    HealthClient::new(service)
}

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest { service: service.to_owned() }
}

#[tokio::test]
async fn calls_pass_and_count_as_successes() {
    let server = TestServer::start(0, || tonic::Status::ok("")).await;
    let (b, r) = (breaker(2), retry(3));
    let mut client = client(server.addr, &b, &r);
    for _ in 0..3 {
        client.check(check("")).await.unwrap();
    }
    assert_eq!(b.stats().successful_calls, 3);
    assert_eq!(r.stats().attempts, 3);
    server.stop().await;
}

#[tokio::test]
async fn caller_errors_are_neither_retried_nor_trip_the_breaker() {
    let server = TestServer::start(0, || tonic::Status::ok("")).await;
    let (b, r) = (breaker(2), retry(3));
    let mut client = client(server.addr, &b, &r);
    for _ in 0..5 {
        // The health service answers NOT_FOUND for an unknown service name.
        let status = client.check(check("no.such.Service")).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    }
    assert_eq!(b.state(), CircuitState::Closed);
    assert_eq!(r.stats().attempts, 5, "no retries");
    assert_eq!(server.seen.load(Ordering::SeqCst), 5);
    server.stop().await;
}

#[tokio::test]
async fn unavailable_is_retried_and_the_retry_succeeds() {
    let server = TestServer::start(2, || tonic::Status::unavailable("warming up")).await;
    let (b, r) = (breaker(5), retry(3));
    let mut client = client(server.addr, &b, &r);
    client.check(check("")).await.unwrap();
    assert_eq!(server.seen.load(Ordering::SeqCst), 3);
    let stats = r.stats();
    assert_eq!((stats.attempts, stats.retries), (3, 2));
    let bs = b.stats();
    assert_eq!((bs.failed_calls, bs.successful_calls, bs.state), (2, 1, CircuitState::Closed));
    server.stop().await;
}

#[tokio::test]
async fn server_pushback_is_honoured_over_the_wire() {
    fn busy() -> tonic::Status {
        let mut status = tonic::Status::resource_exhausted("shedding load");
        status.metadata_mut().insert(PUSHBACK_HEADER, "300".parse().unwrap());
        status
    }
    let server = TestServer::start(1, busy).await;
    // The backoff starts at 5 ms; only the pushback explains 300 ms (it is
    // honoured up to max_delay, here 1 s).
    let r = Retry::new(
        RetryConfig::builder()
            .max_attempts(3)
            .base_delay(Duration::from_millis(5))
            .max_delay(Duration::from_secs(1))
            .jitter(false)
            .no_budget()
            .build()
            .unwrap(),
    );
    let b = breaker(5);
    let mut client = client(server.addr, &b, &r);
    let start = Instant::now();
    client.check(check("")).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300), "waited {:?}", start.elapsed());
    assert_eq!(r.stats().retries, 1);
    server.stop().await;
}

#[tokio::test]
async fn a_dead_server_opens_the_breaker_and_refusals_are_not_retried() {
    let server = TestServer::start(0, || tonic::Status::ok("")).await;
    let addr = server.addr;
    server.stop().await; // nothing listens on addr any more
    let (b, r) = (breaker(2), retry(3));
    let mut client = client(addr, &b, &r);

    // Attempts 1 and 2 fail on the connection and open the breaker; the 3rd
    // attempt is refused by it, and that refusal is what the caller gets.
    let status = client.check(check("")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(is_circuit_rejection(&status), "{status:?}");
    assert_eq!(b.state(), CircuitState::Open);
    assert_eq!(r.stats().attempts, 3);
    assert_eq!((b.stats().failed_calls, b.stats().rejected_calls), (2, 1));

    let status = client.check(check("")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(is_circuit_rejection(&status), "{status:?}");
    assert_eq!(r.stats().attempts, 4, "a refusal is not retried");
    assert_eq!(b.stats().rejected_calls, 2);
}
