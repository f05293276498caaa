//! Retry loop tests on tokio's paused clock: elapsed time is exact.

use std::cell::Cell;
use std::time::Duration;

use tokio::time::Instant;

use super::*;

fn config() -> RetryConfigBuilder {
    RetryConfig::builder().jitter(false).no_budget()
}

type Attempt = std::future::Ready<Result<u32, &'static str>>;

/// An operation that fails `failures` times with `error`, then succeeds;
/// returns it with its call counter.
fn flaky(failures: u32, error: &'static str) -> (Cell<u32>, impl Fn(&Cell<u32>) -> Attempt) {
    (Cell::new(0), move |calls: &Cell<u32>| {
        calls.set(calls.get() + 1);
        std::future::ready(if calls.get() <= failures { Err(error) } else { Ok(calls.get()) })
    })
}

#[tokio::test(start_paused = true)]
async fn retries_with_exact_exponential_delays() {
    let retry = Retry::new(config().max_attempts(4).build().unwrap());
    let (calls, op) = flaky(3, "unavailable");
    let start = Instant::now();
    let value = retry.execute_with_retry(|| op(&calls)).await.unwrap();
    assert_eq!(value, 4);
    assert_eq!(start.elapsed(), Duration::from_secs(1 + 2 + 4));
    let stats = retry.stats();
    assert_eq!((stats.attempts, stats.retries, stats.give_ups), (4, 3, 0));
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_attempts_with_the_last_error() {
    let retry = Retry::new(config().build().unwrap());
    let (calls, op) = flaky(10, "unavailable");
    let start = Instant::now();
    assert_eq!(retry.execute_with_retry(|| op(&calls)).await, Err("unavailable"));
    assert_eq!(calls.get(), 3, "max_attempts counts the first attempt");
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(retry.stats().give_ups, 1);
}

#[tokio::test(start_paused = true)]
async fn a_non_retryable_error_returns_at_once() {
    let retry = Retry::new(config().build().unwrap());
    let (calls, op) = flaky(10, "invalid argument");
    let classify = |e: &&str| if *e == "invalid argument" { RetryAction::DoNotRetry } else { RetryAction::Retry };
    let start = Instant::now();
    assert_eq!(retry.execute(&classify, None, || op(&calls)).await, Err("invalid argument"));
    assert_eq!((calls.get(), start.elapsed()), (1, Duration::ZERO));
    assert_eq!(retry.stats().give_ups, 0, "not a give-up: nothing to retry");
}

#[tokio::test(start_paused = true)]
async fn server_pushback_is_waited_exactly_up_to_max_delay() {
    let retry =
        Retry::new(config().max_delay(Duration::from_secs(5)).base_delay(Duration::from_secs(1)).build().unwrap());
    let (calls, op) = flaky(1, "busy");
    let start = Instant::now();
    let classify = |_: &&str| RetryAction::RetryAfter(Duration::from_millis(4_250));
    assert_eq!(retry.execute(&classify, None, || op(&calls)).await, Ok(2));
    assert_eq!(start.elapsed(), Duration::from_millis(4_250), "exactly, not the backoff");
    // A longer pushback is clamped to max_delay: a server cannot make the
    // caller wait without bound.
    let (calls, op) = flaky(1, "busy");
    let start = Instant::now();
    let classify = |_: &&str| RetryAction::RetryAfter(Duration::from_secs(3_600));
    assert_eq!(retry.execute(&classify, None, || op(&calls)).await, Ok(2));
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    // And never past the caller's deadline: it gives up instead.
    let (calls, op) = flaky(1, "busy");
    let deadline = Instant::now() + Duration::from_secs(2);
    let classify = |_: &&str| RetryAction::RetryAfter(Duration::from_secs(3));
    assert_eq!(retry.execute(&classify, Some(deadline), || op(&calls)).await, Err("busy"));
}

#[tokio::test(start_paused = true)]
async fn extreme_configurations_saturate_instead_of_overflowing() {
    // Waits near Duration::MAX: the deadline arithmetic must not panic.
    let retry = Retry::new(
        config().base_delay(Duration::MAX / 2).max_delay(Duration::MAX).jitter(false).no_budget().build().unwrap(),
    );
    let (calls, op) = flaky(5, "down");
    let deadline = Instant::now() + Duration::from_secs(1);
    let retry_all = |_: &&str| RetryAction::Retry;
    assert_eq!(retry.execute(&retry_all, Some(deadline), || op(&calls)).await, Err("down"));
    assert_eq!(calls.get(), 1, "a wait past the deadline is not made");
    let classify = |_: &&str| RetryAction::RetryAfter(Duration::MAX);
    let (calls, op) = flaky(5, "down");
    assert_eq!(retry.execute(&classify, Some(deadline), || op(&calls)).await, Err("down"));
}

#[cfg(feature = "grpc")]
#[tokio::test(start_paused = true)]
async fn a_negative_or_malformed_pushback_means_do_not_retry() {
    let retry = Retry::new(config().build().unwrap());
    for value in ["-1", "later"] {
        let calls = Cell::new(0);
        let result: Result<(), tonic::Status> = retry
            .execute(&crate::grpc::retry_action, None, || {
                calls.set(calls.get() + 1);
                let mut status = tonic::Status::unavailable("overloaded");
                status.metadata_mut().insert(crate::grpc::PUSHBACK_HEADER, value.parse().unwrap());
                std::future::ready(Err(status))
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls.get(), 1, "pushback {value:?} forbids a retry");
    }
}

#[tokio::test(start_paused = true)]
async fn no_retry_whose_wait_would_overrun_the_deadline() {
    let retry = Retry::new(config().max_attempts(10).build().unwrap());
    let (calls, op) = flaky(10, "unavailable");
    let start = Instant::now();
    // Waits 1 s and 2 s fit in 5 s; the next wait (4 s) would end at 7 s.
    let deadline = start + Duration::from_secs(5);
    let classify = |_: &&str| RetryAction::Retry;
    assert_eq!(retry.execute(&classify, Some(deadline), || op(&calls)).await, Err("unavailable"));
    assert_eq!(calls.get(), 3);
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    let stats = retry.stats();
    assert_eq!((stats.give_ups, stats.deadline_exceeded), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn the_budget_stops_retries_during_an_outage_but_not_first_attempts() {
    let retry = Retry::new(RetryConfig::builder().jitter(false).max_attempts(3).budget(4, 1.0).build().unwrap());
    let down = |calls: &Cell<u32>| {
        calls.set(calls.get() + 1);
        std::future::ready(Err::<(), _>("unavailable"))
    };
    // 4 tokens: the 1st failure leaves 3 (retry allowed), the 2nd leaves 2
    // (half: no more retries).
    let first = Cell::new(0);
    let _ = retry.execute_with_retry(|| down(&first)).await;
    assert_eq!(first.get(), 2);
    for _ in 0..5 {
        let calls = Cell::new(0);
        let _ = retry.execute_with_retry(|| down(&calls)).await;
        assert_eq!(calls.get(), 1, "first attempts still go out, retries do not");
    }
    let stats = retry.stats();
    assert_eq!(stats.budget_exhausted, 6);
    assert_eq!(stats.retries, 1);
    // The service comes back: successes refill the bucket (0 -> 4 tokens)
    // and retries resume.
    for _ in 0..4 {
        retry.execute_with_retry(|| std::future::ready(Ok::<_, &str>(()))).await.unwrap();
    }
    let (calls, op) = flaky(1, "unavailable");
    assert!(retry.execute_with_retry(|| op(&calls)).await.is_ok());
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn one_budget_can_be_shared_by_several_retries() {
    let budget = Arc::new(RetryBudget::new(BudgetConfig { max_tokens: 2, token_ratio: 1.0 }));
    let a = Retry::with_shared_budget(config().build().unwrap(), Some(Arc::clone(&budget)));
    let b = Retry::with_shared_budget(config().build().unwrap(), Some(Arc::clone(&budget)));
    let (calls, op) = flaky(10, "unavailable");
    let _ = a.execute_with_retry(|| op(&calls)).await;
    assert_eq!(calls.get(), 1, "2 tokens: one failure leaves half, no retry");
    let (calls, op) = flaky(10, "unavailable");
    let _ = b.execute_with_retry(|| op(&calls)).await;
    assert_eq!(calls.get(), 1, "the other retry sees the same empty budget");
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_gives_the_same_waits() {
    let run = |seed| async move {
        let retry = Retry::with_seed(RetryConfig::builder().no_budget().max_attempts(6).build().unwrap(), seed);
        let (calls, op) = flaky(5, "unavailable");
        let start = Instant::now();
        retry.execute_with_retry(|| op(&calls)).await.unwrap();
        start.elapsed()
    };
    let a = run(9).await;
    assert_eq!(a, run(9).await);
    assert!(a <= Duration::from_secs(1 + 2 + 4 + 8 + 16), "full jitter never waits longer than the exponential delay");
}
