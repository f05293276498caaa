//! `record_stream_processing` throughput with its durability rule (each
//! call returns once its record is committed to the WAL), for 1, 16 and 64
//! concurrent recorders, against a real orchestrator served in-process.
//!
//! Run: `cargo bench -p worker-client --bench records`

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use orchestrator::engine::EngineConfig;
use orchestrator::server::{OrchestratorServer, ServerConfig};
use orchestrator_proto::v1;
use worker_client::ResilientWorkerClient;

const STREAMS: i64 = 16;

struct Setup {
    rt: tokio::runtime::Runtime,
    client: ResilientWorkerClient,
    streams: Vec<i64>,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let (client, streams) = rt.block_on(async {
        let config = ServerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            database: dir.path().join("o.db"),
            engine: EngineConfig { heartbeat_interval: 1000, ..EngineConfig::default() },
            ..ServerConfig::default()
        };
        let server = OrchestratorServer::bind(config).await.expect("orchestrator");
        let url = format!("http://{}", server.local_addr().expect("addr"));
        tokio::spawn(server.serve(std::future::pending()));
        let mut admin = v1::admin_service_client::AdminServiceClient::connect(url.clone()).await.expect("admin");
        let specs =
            (1..=STREAMS).map(|stream_id| v1::StreamSpec { stream_id, name: String::new(), source_url: String::new() });
        admin
            .add_streams(v1::AddStreamsRequest { streams: specs.collect(), request_id: "bench".into() })
            .await
            .expect("add");
        let client = ResilientWorkerClient::builder(url, "bench")
            .max_streams(STREAMS as u32)
            .state_path(dir.path().join("worker.db"))
            .build()
            .await
            .expect("client");
        client.start().await.expect("start");
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.leases().borrow().len() < STREAMS as usize {
            assert!(Instant::now() < deadline, "no leases");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let streams = client.leases().borrow().iter().map(|(s, _)| s).collect();
        (client, streams)
    });
    Setup { rt, client, streams, _dir: dir }
}

fn records(c: &mut Criterion) {
    let s = setup();
    let mut g = c.benchmark_group("record_stream_processing");
    g.throughput(Throughput::Elements(1));
    for concurrency in [1usize, 16, 64] {
        g.bench_function(format!("{concurrency} concurrent"), |b| {
            b.iter_custom(|iters| {
                s.rt.block_on(async {
                    let per = iters.div_ceil(concurrency as u64);
                    let start = Instant::now();
                    let tasks: Vec<_> = (0..concurrency)
                        .map(|k| {
                            let client = s.client.clone();
                            let stream = s.streams[k % s.streams.len()];
                            tokio::spawn(async move {
                                for _ in 0..per {
                                    client.record_stream_processing(stream).await.expect("record");
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.expect("task");
                    }
                    start.elapsed().mul_f64(iters as f64 / (per * concurrency as u64) as f64)
                })
            });
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3)).sample_size(20);
    targets = records
}
criterion_main!(benches);
