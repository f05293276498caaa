use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt};

use super::*;
use crate::server::incoming::{ConnInfo, ConnState};

fn limits(worker: usize, admin: usize) -> Limits {
    Limits {
        max_concurrent_requests: worker,
        max_concurrent_admin_requests: admin,
        max_connection_share: 0.25,
        max_message_bytes: 1024,
        request_receive_timeout: Duration::from_secs(10),
        shed: None,
    }
}

/// A gRPC frame holding `message`.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut f = vec![0];
    f.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    f.extend_from_slice(message);
    f
}

fn conn() -> ConnInfo {
    ConnInfo { remote: None, state: Arc::new(ConnState::new()) }
}

fn request(path: &str, body: Body, conn: Option<&ConnInfo>) -> http::Request<Body> {
    let mut r = http::Request::builder().uri(path).body(body).unwrap();
    if let Some(c) = conn {
        r.extensions_mut().insert(c.clone());
    }
    r
}

fn full(bytes: Vec<u8>) -> Body {
    Body::new(http_body_util::Full::new(Bytes::from(bytes)))
}

/// A body that never sends anything.
struct Silent;

impl http_body::Body for Silent {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Poll::Pending
    }
}

/// An inner service that reads the whole request body, sends it on
/// `seen`, then answers when `gate` lets it.
fn gated(
    gate: Arc<Semaphore>,
    seen: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
) -> impl tower::Service<
    http::Request<Body>,
    Response = http::Response<Body>,
    Error = std::convert::Infallible,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |r: http::Request<Body>| {
        let gate = Arc::clone(&gate);
        let seen = seen.clone();
        async move {
            let bytes = r.into_body().collect().await.map(|c| c.to_bytes().to_vec()).unwrap_or_default();
            let _ = seen.send(bytes);
            gate.acquire().await.unwrap().forget();
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
        }
    })
}

fn status_of(response: &http::Response<Body>) -> Option<Status> {
    Status::from_header_map(response.headers())
}

const HEARTBEAT: &str = "/orchestrator.v1.WorkerService/Heartbeat";
const LIST: &str = "/orchestrator.v1.AdminService/ListStreams";
const HEALTH: &str = "/grpc.health.v1.Health/Check";

#[tokio::test]
async fn requests_over_the_pool_are_shed_with_unavailable_and_pushback() {
    let gate = Arc::new(Semaphore::new(0));
    let (seen, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut svc = AdmissionLayer::new(limits(1, 1)).layer(gated(Arc::clone(&gate), seen));
    let first = tokio::spawn(svc.ready().await.unwrap().call(request(HEARTBEAT, full(frame(b"a")), None)));
    seen_rx.recv().await.unwrap();
    let shed = svc.ready().await.unwrap().call(request(HEARTBEAT, full(frame(b"b")), None)).await.unwrap();
    let status = status_of(&shed).expect("a status");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(shed.headers()["grpc-retry-pushback-ms"], "250");
    assert!(status.message().contains("all 1 worker permits are taken"), "{status:?}");

    // Health takes no permit; admin calls have their own pool.
    let health = tokio::spawn(svc.ready().await.unwrap().call(request(HEALTH, full(frame(b"")), None)));
    assert_eq!(seen_rx.recv().await.unwrap(), frame(b""));
    let admin = tokio::spawn(svc.ready().await.unwrap().call(request(LIST, full(frame(b"c")), None)));
    assert_eq!(seen_rx.recv().await.unwrap(), frame(b"c"));
    gate.add_permits(3);
    for call in [first, health, admin] {
        assert!(status_of(&call.await.unwrap().unwrap()).is_none());
    }
    // The permit is back: the next request passes.
    gate.add_permits(1);
    let next = svc.ready().await.unwrap().call(request(HEARTBEAT, full(frame(b"d")), None)).await.unwrap();
    assert!(status_of(&next).is_none());
}

#[tokio::test]
async fn one_connection_holds_at_most_its_share_of_a_pool() {
    let gate = Arc::new(Semaphore::new(0));
    let (seen, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    // 8 permits, share 0.25: two per connection.
    let mut svc = AdmissionLayer::new(limits(8, 8)).layer(gated(Arc::clone(&gate), seen));
    let (a, b) = (conn(), conn());
    let mut held = Vec::new();
    for i in 0..2u8 {
        held.push(tokio::spawn(svc.ready().await.unwrap().call(request(HEARTBEAT, full(frame(&[i])), Some(&a)))));
        seen_rx.recv().await.unwrap();
    }
    let third = svc.ready().await.unwrap().call(request(HEARTBEAT, full(frame(b"3")), Some(&a))).await.unwrap();
    let status = status_of(&third).expect("shed");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("its share"), "{status:?}");
    assert_eq!(a.state.permits[0].load(Ordering::Acquire), 2, "the refused request gave its count back");

    // Another connection is not limited by the first one's share.
    held.push(tokio::spawn(svc.ready().await.unwrap().call(request(HEARTBEAT, full(frame(b"b")), Some(&b)))));
    assert_eq!(seen_rx.recv().await.unwrap(), frame(b"b"));
    gate.add_permits(3);
    for call in held {
        assert!(status_of(&call.await.unwrap().unwrap()).is_none());
    }
    assert_eq!(a.state.permits[0].load(Ordering::Acquire), 0);
    assert_eq!(a.state.requests.load(Ordering::Acquire), 0, "answered requests no longer count as activity");
}

#[tokio::test(start_paused = true)]
async fn a_request_whose_message_never_arrives_holds_no_permit_and_times_out() {
    let gate = Arc::new(Semaphore::new(100));
    let (seen, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut svc = AdmissionLayer::new(limits(1, 1)).layer(gated(gate, seen));
    let c = conn();
    let silent = tokio::spawn(svc.ready().await.unwrap().call(request(HEARTBEAT, Body::new(Silent), Some(&c))));
    tokio::task::yield_now().await;
    assert_eq!(c.state.requests.load(Ordering::Acquire), 1, "a request awaiting its message is activity");
    // The only permit is free for a request whose message did arrive.
    let ok = svc.ready().await.unwrap().call(request(HEARTBEAT, full(frame(b"x")), None)).await.unwrap();
    assert!(status_of(&ok).is_none());
    assert_eq!(seen_rx.recv().await.unwrap(), frame(b"x"));

    let answer = silent.await.unwrap().unwrap();
    let status = status_of(&answer).expect("a status");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    assert!(status.message().contains("--request-receive-timeout"), "{status:?}");
    assert_eq!(c.state.requests.load(Ordering::Acquire), 0);
}

#[tokio::test]
async fn malformed_framing_is_invalid_argument_and_too_large_is_resource_exhausted() {
    let gate = Arc::new(Semaphore::new(100));
    let (seen, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut svc = AdmissionLayer::new(limits(4, 4)).layer(gated(gate, seen));
    let mut truncated = frame(&[7; 10]);
    truncated.truncate(9);
    let mut too_large = vec![0];
    too_large.extend_from_slice(&2000u32.to_be_bytes());
    too_large.extend_from_slice(&[1; 100]);
    let cases: [(Vec<u8>, tonic::Code, &str); 4] = [
        (vec![], tonic::Code::InvalidArgument, "no message"),
        (vec![0, 0], tonic::Code::InvalidArgument, "5-byte message header"),
        (truncated, tonic::Code::InvalidArgument, "declares 10 bytes, 4 arrived"),
        (too_large, tonic::Code::ResourceExhausted, "2000 bytes; this server accepts at most 1024"),
    ];
    for (body, code, says) in cases {
        let answer = svc.ready().await.unwrap().call(request(HEARTBEAT, full(body), None)).await.unwrap();
        let status = status_of(&answer).expect("a status");
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(says), "{status:?}");
    }
    assert!(seen_rx.try_recv().is_err(), "no malformed request reached the service");

    // A unary call carries one message: more is refused; a bad flag too.
    let mut two = frame(b"first");
    two.extend_from_slice(&frame(b"second"));
    let answer = svc.ready().await.unwrap().call(request(LIST, full(two.clone()), None)).await.unwrap();
    let status = status_of(&answer).expect("a status");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("exactly one message"), "{status:?}");
    let mut flagged = frame(b"x");
    flagged[0] = 7;
    let answer = svc.ready().await.unwrap().call(request(LIST, full(flagged), None)).await.unwrap();
    assert!(status_of(&answer).unwrap().message().contains("compression flag 7"));
    let mut compressed = frame(b"x");
    compressed[0] = 1;
    let answer = svc.ready().await.unwrap().call(request(LIST, full(compressed), None)).await.unwrap();
    assert!(status_of(&answer).unwrap().message().contains("without a grpc-encoding"));
    assert!(seen_rx.try_recv().is_err(), "no malformed request reached the service");

    // A stream (reflection) is replayed to the service intact, every message.
    let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
    let answer = svc.ready().await.unwrap().call(request(reflection, full(two.clone()), None)).await.unwrap();
    assert!(status_of(&answer).is_none());
    assert_eq!(seen_rx.recv().await.unwrap(), two);
}

/// A body that sends one whole message and then never ends.
struct OneMessageNoEnd(Option<Bytes>);

impl http_body::Body for OneMessageNoEnd {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        match self.0.take() {
            Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            None => Poll::Pending,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_unary_call_whose_body_never_ends_holds_no_permit_and_times_out() {
    let gate = Arc::new(Semaphore::new(100));
    let (seen, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut svc = AdmissionLayer::new(limits(1, 1)).layer(gated(gate, seen));
    let body = Body::new(OneMessageNoEnd(Some(Bytes::from(frame(b"whole")))));
    let parked = tokio::spawn(svc.ready().await.unwrap().call(request(HEARTBEAT, body, None)));
    tokio::task::yield_now().await;
    // The only permit is still free.
    let ok = svc.ready().await.unwrap().call(request(HEARTBEAT, full(frame(b"x")), None)).await.unwrap();
    assert!(status_of(&ok).is_none());
    assert_eq!(seen_rx.recv().await.unwrap(), frame(b"x"));
    let status = status_of(&parked.await.unwrap().unwrap()).expect("a status");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(seen_rx.try_recv().is_err(), "the parked call never reached the service");
}
