//! The client's metrics: the typed value and the Prometheus registration,
//! against a real orchestrator, through an outage.

use std::time::Duration;

use fixtures::{InProcess, client_builder, eventually};
use worker_client::Mode;

fn encode(registry: &prometheus_client::registry::Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry).unwrap();
    text
}

fn sample(text: &str, series: &str) -> Option<f64> {
    fixtures::http::sample(text, series)
}

#[tokio::test]
async fn metrics_follow_the_client_through_an_outage_and_stop_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = InProcess::start(&dir.path().join("o.db"), "127.0.0.1:0".parse().unwrap()).await;
    fixtures::add_streams(server.addr, 1..=5).await;
    let client = client_builder(&server.url(), "w1", &dir.path().join("w1.db")).max_streams(5).build().await.unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    client.register_metrics(&mut registry);
    client.start().await.unwrap();
    eventually!(Duration::from_secs(10), client.leases().borrow().len() == 5);
    for stream in 1..=5 {
        client.record_stream_processing(stream).await.unwrap();
    }

    let m = client.metrics();
    assert_eq!((m.mode, m.assigned_streams, m.circuit_breaker_state), (Mode::Normal, 5, "closed"));
    assert!(m.orchestrator_available && m.counters.successful_requests >= 2);
    assert!(m.seconds_since_contact.is_some_and(|s| (0.0..5.0).contains(&s)));
    assert_eq!(m.counters.records_made, 5);
    let text = encode(&registry);
    assert_eq!(sample(&text, "worker_client_mode{state=\"normal\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "worker_client_mode{state=\"local\"}"), Some(0.0));
    assert_eq!(sample(&text, "worker_client_circuit_breaker_state{state=\"closed\"}"), Some(1.0));
    assert_eq!(sample(&text, "worker_client_assigned_streams"), Some(5.0));
    assert_eq!(sample(&text, "worker_client_records_made_total"), Some(5.0));
    assert_eq!(sample(&text, "worker_client_orchestrator_available"), Some(1.0));
    assert!(sample(&text, "worker_client_requests_total").unwrap() >= 2.0);

    // The orchestrator gone: local mode, the streams kept, the records
    // waiting; the metrics say so.
    server.stop().await;
    eventually!(Duration::from_secs(15), client.metrics().mode == Mode::Local);
    for stream in 1..=5 {
        client.record_stream_processing(stream).await.unwrap();
    }
    let m = client.metrics();
    assert_eq!(m.assigned_streams, 5);
    assert!(!m.orchestrator_available);
    assert!(m.counters.local_mode_activations >= 1 && m.counters.records_unsynced >= 5, "{m:?}");
    let text = encode(&registry);
    assert_eq!(sample(&text, "worker_client_mode{state=\"local\"}"), Some(1.0), "{text}");
    assert!(sample(&text, "worker_client_local_mode_activations_total").unwrap() >= 1.0);
    assert!(sample(&text, "worker_client_records_unsynced").unwrap() >= 5.0);

    // The registry does not keep the client alive: once it is dropped,
    // nothing is reported.
    // (The aborted background task lets go of it a moment later.)
    drop(client);
    eventually!(Duration::from_secs(5), !encode(&registry).contains("worker_client_"));
}
