//! A gRPC client riding out a server outage with the resilience layers.
//!
//! Starts a real tonic health server on 127.0.0.1, calls it through
//! `RetryLayer` + `CircuitBreakerLayer`, stops the server, keeps calling
//! (retries, then the breaker opens and refuses calls at once), restarts the
//! server on the same port and shows the breaker probing and closing.
//!
//! Run: `cargo run -p resilience --example outage`

#![allow(clippy::print_stdout)] // a demo that talks to its user

use std::net::SocketAddr;
use std::time::Duration;

use resilience::grpc::{GrpcClassifier, is_circuit_rejection};
use resilience::{CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, Retry, RetryConfig, RetryLayer};
use tonic::transport::{Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceBuilder;

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn serve(addr: SocketAddr) -> Result<(tokio::sync::oneshot::Sender<()>, SocketAddr), Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder().add_service(health).serve_with_incoming_shutdown(
        tonic::transport::server::TcpIncoming::from(listener),
        async {
            let _ = stopped.await;
        },
    );
    tokio::spawn(server);
    Ok((stop, addr))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (stop, addr) = serve("127.0.0.1:0".parse()?).await?;
    println!("server listening on {addr}");

    let breaker = CircuitBreaker::new(
        CircuitBreakerConfig::builder()
            .failure_threshold(3)
            .recovery_timeout(Duration::from_millis(500))
            .success_threshold(2)
            .timeout(Duration::from_secs(2))
            .on_state_change(|t| println!("  breaker: {t}"))
            .build()?,
    );
    let retry = Retry::new(
        RetryConfig::builder()
            .max_attempts(3)
            .base_delay(Duration::from_millis(50))
            .max_delay(Duration::from_millis(200))
            .build()?,
    );
    let channel =
        Endpoint::from_shared(format!("http://{addr}"))?.connect_timeout(Duration::from_millis(200)).connect_lazy();
    let service = ServiceBuilder::new()
        .layer(RetryLayer::new(retry.clone()))
        .layer(CircuitBreakerLayer::new(breaker.clone()).with_classifier(GrpcClassifier))
        .service(channel);
    let mut client = HealthClient::new(service);

    let mut call = async |label: &str| {
        let outcome = match client.check(HealthCheckRequest { service: String::new() }).await {
            Ok(_) => "ok".to_owned(),
            Err(status) if is_circuit_rejection(&status) => "refused by the open breaker (not sent)".to_owned(),
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
        };
        println!("{label:<28} -> {outcome}   [breaker {}, retries so far {}]", breaker.state(), retry.stats().retries);
    };

    call("server up").await;
    let _ = stop.send(());
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!("server stopped");
    for i in 1..=3 {
        call(&format!("server down, call {i}")).await;
    }
    let (_stop, _) = serve(addr).await?;
    println!("server restarted on {addr}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    for i in 1..=3 {
        call(&format!("after recovery timeout, {i}")).await;
    }
    let stats = breaker.stats();
    println!(
        "breaker: {} calls, {} ok, {} failed, {} refused, {} trips",
        stats.total_calls, stats.successful_calls, stats.failed_calls, stats.rejected_calls, stats.trips
    );
    Ok(())
}
