//! The hot paths allocate nothing per call: the CLOSED success path of the
//! breaker, the breaker's refusal while OPEN, and a retry whose first
//! attempt succeeds. Measured with a counting global allocator (this test
//! binary only): the number of allocations must not grow with the number of
//! calls.

use resilience::{CircuitBreaker, CircuitBreakerConfig, Retry, RetryConfig};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Allocations made by `calls` runs of `f`, inside one `block_on`.
fn allocations<F, Fut>(rt: &tokio::runtime::Runtime, calls: u32, f: F) -> u64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let info = allocation_counter::measure(|| {
        rt.block_on(async {
            for _ in 0..calls {
                f().await;
            }
        })
    });
    info.count_total
}

fn assert_no_allocation_per_call<F, Fut>(what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let rt = runtime();
    allocations(&rt, 10, &f); // warm up thread-locals and the runtime
    let few = allocations(&rt, 100, &f);
    let many = allocations(&rt, 10_000, &f);
    assert_eq!(few, many, "{what}: {few} allocations for 100 calls, {many} for 10,000");
}

#[test]
fn the_closed_success_path_allocates_nothing() {
    let breaker = CircuitBreaker::new(CircuitBreakerConfig::default());
    assert_no_allocation_per_call("breaker success", || async {
        breaker.call(|| async { Ok::<_, ()>(1) }).await.unwrap();
    });
}

#[test]
fn refusing_while_open_allocates_nothing() {
    let breaker = CircuitBreaker::new(CircuitBreakerConfig::builder().failure_threshold(1).build().unwrap());
    runtime().block_on(async {
        let _ = breaker.call(|| async { Err::<(), _>(()) }).await;
    });
    assert_eq!(breaker.state(), resilience::CircuitState::Open);
    assert_no_allocation_per_call("breaker refusal", || async {
        assert!(breaker.call(|| async { Ok::<_, ()>(1) }).await.unwrap_err().is_rejected());
    });
}

#[test]
fn a_retry_that_succeeds_first_time_allocates_nothing() {
    let retry = Retry::new(RetryConfig::default());
    let breaker = CircuitBreaker::new(CircuitBreakerConfig::default());
    assert_no_allocation_per_call("retry + breaker success", || async {
        retry.execute_with_retry(|| breaker.call(|| async { Ok::<_, ()>(1) })).await.unwrap();
    });
}

#[test]
fn the_check_sees_an_allocation_per_call() {
    let rt = runtime();
    let few = allocations(&rt, 100, || async {
        std::hint::black_box(Box::new(1u64));
    });
    let many = allocations(&rt, 10_000, || async {
        std::hint::black_box(Box::new(1u64));
    });
    assert!(many >= few + 9_900, "the counting allocator works: {few} vs {many}");
}
