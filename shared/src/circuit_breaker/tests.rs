//! State-machine tests. Time is tokio's paused clock: `advance` moves it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::advance;

use super::*;

fn breaker(threshold: u32) -> CircuitBreaker {
    CircuitBreaker::new(
        CircuitBreakerConfig::builder()
            .failure_threshold(threshold)
            .recovery_timeout(Duration::from_secs(60))
            .success_threshold(3)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
    )
}

async fn ok(b: &CircuitBreaker) -> Result<(), CallError<&'static str>> {
    b.call(|| async { Ok(()) }).await
}

async fn fail(b: &CircuitBreaker) -> Result<(), CallError<&'static str>> {
    b.call(|| async { Err("boom") }).await
}

fn causes(b: &CircuitBreaker) -> Vec<(CircuitState, CircuitState, TransitionCause)> {
    b.history().into_iter().map(|t| (t.from, t.to, t.cause)).collect()
}

async fn open(b: &CircuitBreaker) {
    for _ in 0..b.config().failure_threshold() {
        let _ = fail(b).await;
    }
    assert_eq!(b.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_success_between_failures_resets_the_count() {
    let b = breaker(5);
    for _ in 0..4 {
        let _ = fail(&b).await;
    }
    ok(&b).await.unwrap();
    for _ in 0..4 {
        let _ = fail(&b).await;
    }
    assert_eq!(b.state(), CircuitState::Closed, "F F F F S F F F F keeps it closed");
    assert_eq!(b.stats().consecutive_failures, 4);
    let _ = fail(&b).await;
    assert_eq!(b.state(), CircuitState::Open, "the 5th consecutive failure opens it");
    assert_eq!(
        causes(&b),
        [(CircuitState::Closed, CircuitState::Open, TransitionCause::ConsecutiveFailures { failures: 5 })]
    );
}

#[tokio::test(start_paused = true)]
async fn open_rejects_without_calling_until_the_recovery_timeout() {
    let b = breaker(2);
    open(&b).await;
    let called = std::cell::Cell::new(false);
    let r = b
        .call(|| {
            called.set(true);
            async { Ok::<_, &str>(()) }
        })
        .await;
    assert_eq!(r, Err(CallError::Rejected { state: CircuitState::Open }));
    assert!(!called.get(), "a refused call is never started");

    advance(Duration::from_secs(59)).await;
    assert!(ok(&b).await.unwrap_err().is_rejected());
    assert_eq!(b.stats().open_remaining, Some(Duration::from_secs(1)));

    advance(Duration::from_secs(1)).await;
    ok(&b).await.unwrap();
    assert_eq!(b.state(), CircuitState::HalfOpen);
    let stats = b.stats();
    assert_eq!(stats.rejected_calls, 2);
    assert_eq!(stats.trips, 1);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_exactly_max_calls_of_k_concurrent_callers() {
    let b = CircuitBreaker::new(
        CircuitBreakerConfig::builder()
            .failure_threshold(1)
            .half_open_max_calls(3)
            .success_threshold(10)
            .build()
            .unwrap(),
    );
    open(&b).await;
    advance(Duration::from_secs(60)).await;

    // Ten callers arrive together; each admitted one holds its permit until
    // the gate opens.
    let (release, gate) = tokio::sync::watch::channel(false);
    let started = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let b = b.clone();
        let mut gate = gate.clone();
        let started = Arc::clone(&started);
        tasks.push(tokio::spawn(async move {
            b.call(|| async move {
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = gate.wait_for(|open| *open).await;
                Ok::<_, &str>(())
            })
            .await
        }));
    }
    // Let every caller reach the breaker before any permit is released.
    for _ in 0..1000 {
        if started.load(std::sync::atomic::Ordering::SeqCst) + b.stats().rejected_calls == 10 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst) + b.stats().rejected_calls, 10);
    release.send_replace(true);
    let mut admitted = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => admitted += 1,
            Err(CallError::Rejected { state: CircuitState::HalfOpen }) => refused += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!((admitted, refused), (3, 7));
}

#[tokio::test(start_paused = true)]
async fn one_failure_in_half_open_reopens() {
    let b = breaker(1);
    open(&b).await;
    advance(Duration::from_secs(60)).await;
    ok(&b).await.unwrap();
    assert_eq!(b.state(), CircuitState::HalfOpen);
    let _ = fail(&b).await;
    assert_eq!(b.state(), CircuitState::Open);
    assert_eq!(
        causes(&b),
        [
            (CircuitState::Closed, CircuitState::Open, TransitionCause::ConsecutiveFailures { failures: 1 }),
            (CircuitState::Open, CircuitState::HalfOpen, TransitionCause::RecoveryTimeoutElapsed),
            (CircuitState::HalfOpen, CircuitState::Open, TransitionCause::ProbeFailed),
        ]
    );
    assert!(ok(&b).await.unwrap_err().is_rejected(), "a fresh recovery timeout runs");
}

#[tokio::test(start_paused = true)]
async fn success_threshold_probes_close_and_reset_the_counters() {
    let b = breaker(3);
    let _ = fail(&b).await;
    let _ = fail(&b).await;
    let _ = fail(&b).await;
    advance(Duration::from_secs(60)).await;
    for i in 0..3 {
        assert_eq!(b.state(), if i == 0 { CircuitState::Open } else { CircuitState::HalfOpen });
        ok(&b).await.unwrap();
    }
    assert_eq!(b.state(), CircuitState::Closed);
    assert_eq!(
        causes(&b).last(),
        Some(&(CircuitState::HalfOpen, CircuitState::Closed, TransitionCause::ProbesSucceeded { successes: 3 }))
    );
    assert_eq!(b.stats().consecutive_failures, 0);
    // The count starts again from zero: two failures do not reopen it.
    let _ = fail(&b).await;
    let _ = fail(&b).await;
    assert_eq!(b.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_probe_dropped_mid_flight_frees_its_permit_and_records_nothing() {
    let b = breaker(1);
    open(&b).await;
    advance(Duration::from_secs(60)).await;
    let probe = b.call(|| async {
        std::future::pending::<()>().await;
        Ok::<(), &str>(())
    });
    // Poll the probe once so it takes the only permit, then drop it.
    let mut probe = Box::pin(probe);
    let done = std::future::poll_fn(|cx| std::task::Poll::Ready(probe.as_mut().poll(cx).is_ready())).await;
    assert!(!done);
    assert!(ok(&b).await.unwrap_err().is_rejected(), "the permit is taken while the probe runs");
    drop(probe);
    assert_eq!(b.state(), CircuitState::HalfOpen, "a cancelled probe records nothing");
    ok(&b).await.unwrap();
    let stats = b.stats();
    assert_eq!(stats.successful_calls, 1);
    assert_eq!(stats.failed_calls, 1, "only the failure that opened it");
}

#[tokio::test(start_paused = true)]
async fn a_late_result_from_an_earlier_cycle_is_ignored() {
    let b = breaker(1);
    open(&b).await;
    advance(Duration::from_secs(60)).await;
    // The probe is admitted in this half-open cycle...
    let permit = b.try_acquire::<()>().unwrap();
    assert!(permit.is_probe());
    // ...an operator resets the breaker and it trips again, twice over...
    b.reset();
    let _ = fail(&b).await;
    advance(Duration::from_secs(60)).await;
    ok(&b).await.unwrap();
    assert_eq!(b.state(), CircuitState::HalfOpen);
    // ...then the old probe's failure arrives: it must not reopen the new cycle.
    permit.record(Outcome::Failure);
    assert_eq!(b.state(), CircuitState::HalfOpen);
    ok(&b).await.unwrap();
    ok(&b).await.unwrap();
    assert_eq!(b.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_slow_closed_call_cannot_reopen_after_a_later_cycle() {
    let b = breaker(1);
    let permit = b.try_acquire::<()>().unwrap();
    let _ = fail(&b).await; // opens
    advance(Duration::from_secs(60)).await;
    for _ in 0..3 {
        ok(&b).await.unwrap();
    }
    assert_eq!(b.state(), CircuitState::Closed);
    permit.record(Outcome::Failure);
    assert_eq!(b.state(), CircuitState::Closed, "a failure from before the trip is stale");
}

#[tokio::test(start_paused = true)]
async fn a_call_over_the_timeout_is_a_timed_out_failure() {
    let b = breaker(1);
    let r = b
        .call(|| async {
            tokio::time::sleep(Duration::from_secs(31)).await;
            Ok::<_, &str>(())
        })
        .await;
    assert_eq!(r, Err(CallError::Timeout { timeout: Duration::from_secs(30) }));
    assert_eq!(b.state(), CircuitState::Open);
    let stats = b.stats();
    assert_eq!((stats.failed_calls, stats.timed_out_calls), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_call_within_the_timeout_completes() {
    let b = breaker(1);
    let r = b
        .call(|| async {
            tokio::time::sleep(Duration::from_secs(29)).await;
            Ok::<_, &str>(7)
        })
        .await;
    assert_eq!(r, Ok(7));
}

#[tokio::test(start_paused = true)]
async fn errors_the_classifier_excuses_never_trip() {
    let b = breaker(2);
    for _ in 0..10 {
        let r = b.call_with(|e: &&str| *e != "invalid argument", || async { Err::<(), _>("invalid argument") }).await;
        assert_eq!(r, Err(CallError::Inner("invalid argument")));
    }
    assert_eq!(b.state(), CircuitState::Closed);
    assert_eq!(b.stats().successful_calls, 10);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_opens_once_the_minimum_calls_are_reached() {
    let b = CircuitBreaker::new(
        CircuitBreakerConfig::builder().failure_threshold(100).failure_rate(0.5, 10, 6).build().unwrap(),
    );
    // F S F S F: 3 of 5, below the minimum number of calls.
    for i in 0..5 {
        let _ = if i % 2 == 0 { fail(&b).await } else { ok(&b).await };
    }
    assert_eq!(b.state(), CircuitState::Closed);
    ok(&b).await.unwrap(); // 3 of 6 recorded by a success: the rate is checked on failures
    let _ = fail(&b).await; // 4 of 7 >= 0.5
    assert_eq!(b.state(), CircuitState::Open);
    assert_eq!(causes(&b)[0].2, TransitionCause::FailureRate { failures: 4, calls: 7 });
}

#[tokio::test(start_paused = true)]
async fn repeated_trips_grow_the_open_duration_up_to_the_cap() {
    let b = CircuitBreaker::new(
        CircuitBreakerConfig::builder()
            .failure_threshold(1)
            .recovery_timeout(Duration::from_secs(10))
            .recovery_backoff(2.0, Duration::from_secs(30))
            .build()
            .unwrap(),
    );
    open(&b).await;
    let mut open_for = Vec::new();
    for _ in 0..4 {
        open_for.push(b.stats().open_remaining.unwrap().as_secs());
        advance(b.stats().open_remaining.unwrap()).await;
        let _ = fail(&b).await; // the probe fails: trip again
    }
    assert_eq!(open_for, [10, 20, 30, 30]);
    // Closing resets the growth.
    advance(Duration::from_secs(30)).await;
    for _ in 0..3 {
        ok(&b).await.unwrap();
    }
    let _ = fail(&b).await;
    assert_eq!(b.stats().open_remaining, Some(Duration::from_secs(10)));
}

#[tokio::test(start_paused = true)]
async fn operators_can_force_open_force_closed_and_reset() {
    let b = breaker(1);
    b.force_open();
    advance(Duration::from_secs(3600)).await;
    assert_eq!(ok(&b).await, Err(CallError::Rejected { state: CircuitState::ForcedOpen }));
    b.force_closed();
    for _ in 0..10 {
        let _ = fail(&b).await;
    }
    assert_eq!(b.state(), CircuitState::ForcedClosed, "failures never open a forced-closed breaker");
    b.reset();
    assert_eq!(b.state(), CircuitState::Closed);
    assert_eq!(b.stats().consecutive_failures, 0);
    let tos: Vec<_> = b.history().iter().map(|t| (t.to, t.cause)).collect();
    assert_eq!(
        tos,
        [
            (CircuitState::ForcedOpen, TransitionCause::ForcedOpen),
            (CircuitState::ForcedClosed, TransitionCause::ForcedClosed),
            (CircuitState::Closed, TransitionCause::Reset),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn stats_add_up() {
    let b = breaker(2);
    ok(&b).await.unwrap();
    let _ = fail(&b).await;
    let _ = fail(&b).await;
    let _ = ok(&b).await;
    let s = b.stats();
    assert_eq!(s.total_calls, s.successful_calls + s.failed_calls + s.rejected_calls);
    assert_eq!((s.successful_calls, s.failed_calls, s.rejected_calls, s.trips), (1, 2, 1, 1));
    assert_eq!(s.state, CircuitState::Open);
    advance(Duration::from_secs(5)).await;
    assert_eq!(b.stats().time_in_state, Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn history_is_bounded_and_keeps_the_newest() {
    let b = CircuitBreaker::new(CircuitBreakerConfig::builder().history_capacity(2).build().unwrap());
    b.force_open();
    b.force_closed();
    b.reset();
    let h = b.history();
    assert_eq!(h.len(), 2);
    assert_eq!((h[0].to, h[1].to), (CircuitState::ForcedClosed, CircuitState::Closed));
}

#[tokio::test(start_paused = true)]
async fn state_changes_reach_subscribers_and_the_listener() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let b = CircuitBreaker::new(
        CircuitBreakerConfig::builder()
            .failure_threshold(1)
            .on_state_change(move |t| sink.lock().unwrap().push((t.from, t.to)))
            .build()
            .unwrap(),
    );
    let mut rx = b.subscribe();
    let _ = fail(&b).await;
    rx.changed().await.unwrap();
    assert_eq!(*rx.borrow_and_update(), CircuitState::Open);
    assert_eq!(*seen.lock().unwrap(), [(CircuitState::Closed, CircuitState::Open)]);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, Copy)]
    enum Step {
        Ok,
        Fail,
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![4 => Just(Step::Ok), 4 => Just(Step::Fail), 1 => (1u64..90).prop_map(Step::Wait)]
    }

    proptest! {
        /// Against a plain model of the state machine, any sequence of
        /// sequential successes, failures and waits gives the same state.
        #[test]
        fn follows_the_model(steps in proptest::collection::vec(step(), 1..60), threshold in 1u32..6, successes in 1u32..4) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            rt.block_on(async {
                let b = CircuitBreaker::new(CircuitBreakerConfig::builder()
                    .failure_threshold(threshold)
                    .success_threshold(successes)
                    .recovery_timeout(Duration::from_secs(60))
                    .build().unwrap());
                let mut model = (CircuitState::Closed, 0u32, 0u32, 0u64); // state, failures, successes, open-until
                let mut now = 0u64;
                for s in steps {
                    match s {
                        Step::Wait(secs) => { advance(Duration::from_secs(secs)).await; now += secs; }
                        Step::Ok | Step::Fail => {
                            let failed = matches!(s, Step::Fail);
                            if model.0 == CircuitState::Open && now >= model.3 {
                                model = (CircuitState::HalfOpen, 0, 0, 0);
                            }
                            let r = if failed { fail(&b).await } else { ok(&b).await };
                            match model.0 {
                                CircuitState::Open => prop_assert!(r.unwrap_err().is_rejected()),
                                CircuitState::Closed => {
                                    prop_assert!(!r.as_ref().is_err_and(CallError::is_rejected), "refused in {:?}", model.0);
                                    if failed { model.1 += 1 } else { model.1 = 0 }
                                    if model.1 >= threshold { model = (CircuitState::Open, 0, 0, now + 60) }
                                }
                                _ => {
                                    prop_assert!(!r.as_ref().is_err_and(CallError::is_rejected), "refused in {:?}", model.0);
                                    if failed { model = (CircuitState::Open, 0, 0, now + 60) }
                                    else {
                                        model.2 += 1;
                                        if model.2 >= successes { model = (CircuitState::Closed, 0, 0, 0) }
                                    }
                                }
                            }
                            prop_assert_eq!(b.state(), model.0);
                        }
                    }
                }
                Ok(())
            })?;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_recovery_timeout_near_duration_max_opens_for_ever_without_panicking() {
    for (recovery, backoff) in [(Duration::MAX, 1.0), (Duration::MAX / 2, 2.0), (Duration::from_secs(1), 1e300)] {
        let config = CircuitBreakerConfig::builder()
            .failure_threshold(1)
            .recovery_timeout(recovery)
            .recovery_backoff(backoff, Duration::MAX)
            .build()
            .unwrap();
        let b = CircuitBreaker::new(config);
        let _ = b.call(|| async { Err::<(), _>("down") }).await;
        if recovery < Duration::from_secs(3600) {
            // A failed probe: the open duration grows past every bound.
            tokio::time::advance(recovery + Duration::from_millis(1)).await;
            let _ = b.call(|| async { Err::<(), _>("down") }).await;
        }
        assert_eq!(b.state(), CircuitState::Open, "{recovery:?} x{backoff}");
        let remaining = b.stats().open_remaining;
        assert!(remaining.is_some_and(|d| d > Duration::from_secs(3600)), "{recovery:?} x{backoff}: {remaining:?}");
        tokio::time::advance(Duration::from_secs(3600 * 24 * 365)).await;
        assert!(b.call(|| async { Ok::<_, &str>(()) }).await.is_err_and(|e| e.is_rejected()), "still open");
    }
}
