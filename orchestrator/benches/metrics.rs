//! What the RPC metrics layer adds to one call: a unary gRPC answer
//! (data, then trailers with `grpc-status: 0`) through a bare service and
//! through the same service wrapped in [`RpcMetricsLayer`], side by side.
//! The server's heartbeat costs tens of microseconds of CPU (see
//! docs/BENCHMARKS.md §9); the layer's few hundred nanoseconds are the
//! metrics' share of it.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt as _;
use orchestrator::metrics::{Fleet, Metrics, RpcMetricsLayer};
use tonic::body::Body;
use tower::{Layer as _, Service as _, ServiceExt as _};

fn answer() -> http::Response<Body> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let body = http_body_util::Full::new(Bytes::from_static(&[0, 0, 0, 0, 4, 8, 1, 16, 1]))
        .with_trailers(async move { Some(Ok(trailers)) });
    http::Response::new(Body::new(body))
}

fn request() -> http::Request<Body> {
    http::Request::builder().uri("/orchestrator.v1.WorkerService/Heartbeat").body(Body::empty()).expect("a request")
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    let bare = tower::service_fn(|_: http::Request<Body>| async { Ok::<_, Infallible>(answer()) });
    let metered = RpcMetricsLayer::new(Arc::new(Metrics::new(Arc::new(Fleet::default())))).layer(bare);
    let mut group = c.benchmark_group("unary call");
    group.bench_function("without metrics", |b| {
        b.to_async(&runtime).iter(|| async {
            let mut s = bare;
            let response = s.ready().await.unwrap().call(request()).await.unwrap();
            response.into_body().collect().await.unwrap()
        });
    });
    group.bench_function("with metrics", |b| {
        b.to_async(&runtime).iter(|| {
            let mut s = metered.clone();
            async move {
                let response = s.ready().await.unwrap().call(request()).await.unwrap();
                response.into_body().collect().await.unwrap()
            }
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
