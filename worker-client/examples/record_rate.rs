//! `record_stream_processing` calls per second from Rust, for comparison
//! with the same loop from Python (`worker-client/python/bench/record_rate.py`
//! runs both, alternating, against one orchestrator).
//!
//! ```sh
//! cargo run --release -p worker-client --example record_rate -- \
//!     --url http://127.0.0.1:50051 --streams 8 --concurrency 8 --seconds 2 --state-path /tmp/rate.db
//! ```
//!
//! Prints one JSON line: `{"calls": N, "seconds": S, "calls_per_second": R}`.
#![allow(clippy::print_stdout)] // a benchmark that reports its result

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use worker_client::ResilientWorkerClient;

/// `record_stream_processing` calls per second from Rust.
#[derive(Debug, Parser)]
struct Args {
    /// The orchestrator.
    #[arg(long)]
    url: String,
    /// This worker's id.
    #[arg(long, default_value = "rate-rust")]
    server_id: String,
    /// Streams to lease (the orchestrator must have at least this many free).
    #[arg(long, default_value_t = 8)]
    streams: u32,
    /// Concurrent recorders (each loops over the streams).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// How long to measure.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// The state file.
    #[arg(long)]
    state_path: PathBuf,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let client = ResilientWorkerClient::builder(&args.url, &args.server_id)
        .max_streams(args.streams)
        .state_path(&args.state_path)
        .build()
        .await?;
    client.start().await?;
    let mut leases = client.leases();
    let deadline = Instant::now() + Duration::from_secs(30);
    while leases.borrow_and_update().len() < args.streams as usize {
        tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), leases.changed())
            .await
            .map_err(|_| "the streams were not granted within 30 s")??;
    }
    let streams: Vec<i64> = leases.borrow().iter().map(|(s, _)| s).collect();
    let measure = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.concurrency {
        let client = client.clone();
        let streams = streams.clone();
        tasks.push(tokio::spawn(async move {
            let mut calls = 0u64;
            let mut n = i;
            while start.elapsed() < measure {
                client.record_stream_processing(streams[n % streams.len()]).await.expect("record");
                calls += 1;
                n += 1;
            }
            calls
        }));
    }
    let mut calls = 0;
    for t in tasks {
        calls += t.await?;
    }
    let seconds = start.elapsed().as_secs_f64();
    client.shutdown().await;
    println!("{{\"calls\": {calls}, \"seconds\": {seconds:.3}, \"calls_per_second\": {:.0}}}", calls as f64 / seconds);
    Ok(())
}
