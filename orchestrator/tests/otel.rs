//! OpenTelemetry export (the `otel` feature): the real binary, given
//! `--otlp-endpoint`, sends its spans over OTLP/gRPC to a collector, here a
//! minimal one that keeps every `Export` request it receives. Run with
//! `cargo test -p orchestrator --features otel --test otel` (CI does).
#![cfg(feature = "otel")]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use fixtures::{LoggedProcess, eventually};
use http_body_util::BodyExt as _;
use tonic::body::Body;

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");

/// A collector's `TraceService`: keeps the request bodies, answers OK.
#[derive(Clone, Default)]
struct Collector {
    exports: Arc<Mutex<Vec<(String, Vec<u8>)>>>,
}

impl tonic::server::NamedService for Collector {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl tower::Service<http::Request<Body>> for Collector {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let exports = Arc::clone(&self.exports);
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            let body = request.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
            exports.lock().unwrap().push((path, body));
            // An empty ExportTraceServiceResponse: one frame of length 0.
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let frame = http_body_util::Full::new(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]))
                .with_trailers(async move { Some(Ok(trailers)) });
            let mut response = http::Response::new(Body::new(frame));
            response.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
            Ok(response)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_grpc_calls_reach_the_collector() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let serving = collector.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(serving)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });

    let dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(BIN);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--http-listen", "off", "--otlp-endpoint", &endpoint])
        .arg("--database")
        .arg(dir.path().join("o.db"))
        .env("RUST_LOG", "info");
    let (mut process, addr) =
        LoggedProcess::spawn(command, |line| fixtures::orchestrator::logged_addr(line, "orchestrator serving"));
    fixtures::add_streams(addr, 1..=3).await;
    let mut admin = fixtures::admin(addr).await;
    admin.get_cluster_status(orchestrator_proto::v1::GetClusterStatusRequest {}).await.unwrap();
    // SIGTERM: the provider is shut down on exit, which flushes the batch.
    let pid = process.child().id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert_eq!(process.wait_exit(Duration::from_secs(10)), Some(0));
    eventually!(Duration::from_secs(5), !collector.exports.lock().unwrap().is_empty());
    let exports = collector.exports.lock().unwrap().clone();
    assert!(exports.iter().all(|(path, _)| path == "/opentelemetry.proto.collector.trace.v1.TraceService/Export"));
    eprintln!("{} export request(s), {} bytes", exports.len(), exports.iter().map(|e| e.1.len()).sum::<usize>());
    let bytes: Vec<u8> = exports.into_iter().flat_map(|(_, body)| body).collect();
    let has = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(has("orchestrator"), "the resource's service.name");
    assert!(has("/orchestrator.v1.AdminService/GetClusterStatus"), "a span per call, with the method");
    assert!(has("/orchestrator.v1.AdminService/AddStreams"));
}
