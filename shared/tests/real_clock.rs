//! The breaker on the real (coarse) clock, as built without the
//! `paused-clock` feature: an OPEN breaker refuses calls until its recovery
//! timeout has passed, never admits a probe before it, and does admit one
//! soon after. Real time, so the upper bound scales with `TEST_PATIENCE`.

use std::time::{Duration, Instant};

use resilience::{CallError, CircuitBreaker, CircuitBreakerConfig, CircuitState};

fn patience() -> u32 {
    std::env::var("TEST_PATIENCE").ok().and_then(|p| p.parse().ok()).unwrap_or(1).max(1)
}

#[tokio::test]
async fn an_open_breaker_recovers_on_time_never_early() {
    let recovery = Duration::from_millis(30);
    let breaker = CircuitBreaker::new(
        CircuitBreakerConfig::builder()
            .failure_threshold(1)
            .recovery_timeout(recovery)
            .success_threshold(1)
            .build()
            .unwrap(),
    );
    let before_trip = Instant::now();
    let _ = breaker.call(|| async { Err::<(), _>("refused") }).await;
    assert_eq!(breaker.state(), CircuitState::Open);

    let deadline = before_trip + recovery + Duration::from_secs(5) * patience();
    let mut refused = 0u64;
    let admitted_at = loop {
        match breaker.call(|| async { Ok::<_, &str>(()) }).await {
            Ok(()) => break Instant::now(),
            Err(CallError::Rejected { state: CircuitState::Open }) => refused += 1,
            Err(other) => panic!("unexpected answer while open: {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "still open {:?} after a {recovery:?} recovery timeout",
            before_trip.elapsed()
        );
        tokio::task::yield_now().await;
    };
    assert!(
        admitted_at.duration_since(before_trip) >= recovery,
        "a probe was admitted {:?} after the trip, before the {recovery:?} recovery timeout",
        admitted_at.duration_since(before_trip)
    );
    assert!(refused > 0, "no call was refused while open");
    assert_eq!(breaker.stats().rejected_calls, refused);
    assert_eq!(breaker.state(), CircuitState::Closed, "one successful probe closes it (success_threshold 1)");
}

#[tokio::test]
async fn stats_count_down_the_open_time_on_the_real_clock() {
    let recovery = Duration::from_secs(60);
    let breaker = CircuitBreaker::new(
        CircuitBreakerConfig::builder().failure_threshold(1).recovery_timeout(recovery).build().unwrap(),
    );
    let _ = breaker.call(|| async { Err::<(), _>("refused") }).await;
    let remaining = breaker.stats().open_remaining.expect("open");
    assert!(remaining <= recovery && remaining > recovery - Duration::from_secs(5) * patience(), "{remaining:?}");
}
