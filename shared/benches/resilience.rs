//! The cost of the resilience crate's hot paths, side by side with the
//! crates users would pick instead: `failsafe` and `tower-resilience`
//! (circuit breakers), `backon` (retry).
//!
//! Run: `cargo bench -p resilience --bench resilience`
//!
//! Every call wraps a trivial async operation that completes at once, so
//! the numbers are the wrapper's own cost. The `2 threads` groups run the
//! calls on two OS threads sharing one breaker; the time shown is the wall
//! time divided by all calls made by both threads.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Service, ServiceExt};

type Runtime = tokio::runtime::Runtime;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// What each contender does once per call.
trait Contender: Clone + Send + 'static {
    fn call(&mut self) -> impl std::future::Future<Output = ()>;
}

/// Runs `iters` calls on `threads` OS threads (each with its own
/// current-thread runtime) and returns the wall time.
fn run<C: Contender>(contender: &C, threads: u64, iters: u64) -> Duration {
    let barrier = Arc::new(Barrier::new(threads as usize + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let mut c = contender.clone();
            let barrier = Arc::clone(&barrier);
            let n = iters / threads;
            std::thread::spawn(move || {
                let rt = runtime();
                barrier.wait();
                rt.block_on(async {
                    for _ in 0..n {
                        c.call().await;
                    }
                });
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().expect("bench thread");
    }
    start.elapsed()
}

// ---------------------------------------------------------------- ours

#[derive(Clone)]
struct Ours(resilience::CircuitBreaker);

impl Contender for Ours {
    async fn call(&mut self) {
        let r = self.0.call(|| async { Ok::<u64, ()>(black_box(1)) }).await;
        let _ = black_box(r);
    }
}

#[derive(Clone)]
struct OursRetry(resilience::Retry);

impl Contender for OursRetry {
    async fn call(&mut self) {
        let r = self.0.execute_with_retry(|| async { Ok::<u64, ()>(black_box(1)) }).await;
        let _ = black_box(r);
    }
}

#[derive(Clone)]
struct OursBoth(resilience::CircuitBreaker, resilience::Retry);

impl Contender for OursBoth {
    async fn call(&mut self) {
        let b = &self.0;
        let r = self.1.execute_with_retry(|| b.call(|| async { Ok::<u64, ()>(black_box(1)) })).await;
        let _ = black_box(r);
    }
}

fn ours(open: bool) -> Ours {
    let b = resilience::CircuitBreaker::new(resilience::CircuitBreakerConfig::default());
    if open {
        b.force_open();
    }
    Ours(b)
}

fn ours_open_by_failures() -> Ours {
    let b = resilience::CircuitBreaker::new(
        resilience::CircuitBreakerConfig::builder()
            .recovery_timeout(Duration::from_secs(86_400))
            .build()
            .expect("config"),
    );
    let rt = runtime();
    rt.block_on(async {
        for _ in 0..5 {
            let _ = b.call(|| async { Err::<(), ()>(()) }).await;
        }
    });
    assert_eq!(b.state(), resilience::CircuitState::Open);
    Ours(b)
}

// ---------------------------------------------------------------- failsafe

type FsBreaker =
    failsafe::StateMachine<failsafe::failure_policy::ConsecutiveFailures<failsafe::backoff::Exponential>, ()>;

#[derive(Clone)]
struct Failsafe(FsBreaker);

impl Contender for Failsafe {
    async fn call(&mut self) {
        use failsafe::futures::CircuitBreaker as _;
        let r = self.0.call(async { Ok::<u64, ()>(black_box(1)) }).await;
        let _ = black_box(r);
    }
}

fn failsafe_breaker(open: bool) -> Failsafe {
    let backoff = failsafe::backoff::exponential(Duration::from_secs(86_400), Duration::from_secs(86_400));
    let b: FsBreaker =
        failsafe::Config::new().failure_policy(failsafe::failure_policy::consecutive_failures(5, backoff)).build();
    if open {
        for _ in 0..5 {
            b.on_error();
        }
        assert!(!b.is_call_permitted());
    }
    Failsafe(b)
}

#[derive(Clone)]
struct FailsafeBackon(FsBreaker, backon::ExponentialBuilder);

impl Contender for FailsafeBackon {
    async fn call(&mut self) {
        use backon::Retryable;
        use failsafe::futures::CircuitBreaker as _;
        let b = &self.0;
        let r = (|| b.call(async { Ok::<u64, ()>(black_box(1)) })).retry(self.1).await;
        let _ = black_box(r);
    }
}

// ---------------------------------------------------------------- tower-resilience

type TrService = tower_resilience::circuitbreaker::CircuitBreaker<
    tower::util::ServiceFn<fn(u64) -> std::future::Ready<Result<u64, &'static str>>>,
    tower_resilience::circuitbreaker::DefaultClassifier,
>;

#[derive(Clone)]
struct TowerResilience(TrService);

impl Contender for TowerResilience {
    async fn call(&mut self) {
        let svc = &mut self.0;
        let r = match ServiceExt::<u64>::ready(svc).await {
            Ok(ready) => ready.call(black_box(1)).await,
            Err(e) => Err(e),
        };
        let _ = black_box(r);
    }
}

fn tower_resilience_breaker(open: bool) -> TowerResilience {
    use tower::Layer;
    let (layer, handle) = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .consecutive_failures(5)
        .wait_duration_in_open(Duration::from_secs(86_400))
        .build_with_handle()
        .expect("tower-resilience config");
    let inner: fn(u64) -> std::future::Ready<Result<u64, &'static str>> = |x| std::future::ready(Ok(x));
    let svc = layer.layer(tower::service_fn(inner));
    if open {
        runtime().block_on(handle.force_open());
    }
    TowerResilience(svc)
}

// ---------------------------------------------------------------- backon

#[derive(Clone)]
struct Backon(backon::ExponentialBuilder);

impl Contender for Backon {
    async fn call(&mut self) {
        use backon::Retryable;
        let r = (|| async { Ok::<u64, ()>(black_box(1)) }).retry(self.0).await;
        let _ = black_box(r);
    }
}

fn backon_builder() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(60))
        .with_max_times(2)
}

fn our_retry() -> resilience::Retry {
    resilience::Retry::new(resilience::RetryConfig::default())
}

// ---------------------------------------------------------------- groups

fn bench_group<C: Contender>(c: &mut Criterion, group: &str, contenders: Vec<(&str, C)>) {
    let mut g = c.benchmark_group(group);
    for threads in [1u64, 2] {
        for (name, contender) in &contenders {
            g.bench_function(format!("{name}/{threads}t"), |b| {
                b.iter_custom(|iters| run(contender, threads, iters.max(threads)))
            });
        }
    }
    g.finish();
}

/// Heterogeneous contenders in one group: boxed behind a closure each.
#[derive(Clone)]
enum AnyBreaker {
    Ours(Ours),
    Failsafe(Failsafe),
    TowerResilience(TowerResilience),
}

impl Contender for AnyBreaker {
    async fn call(&mut self) {
        match self {
            Self::Ours(c) => c.call().await,
            Self::Failsafe(c) => c.call().await,
            Self::TowerResilience(c) => c.call().await,
        }
    }
}

#[derive(Clone)]
enum AnyRetry {
    Ours(OursRetry),
    Backon(Backon),
    OursBoth(OursBoth),
    FailsafeBackon(FailsafeBackon),
}

impl Contender for AnyRetry {
    async fn call(&mut self) {
        match self {
            Self::Ours(c) => c.call().await,
            Self::Backon(c) => c.call().await,
            Self::OursBoth(c) => c.call().await,
            Self::FailsafeBackon(c) => c.call().await,
        }
    }
}

fn breakers(c: &mut Criterion) {
    bench_group(
        c,
        "breaker_success",
        vec![
            ("resilience", AnyBreaker::Ours(ours(false))),
            ("failsafe", AnyBreaker::Failsafe(failsafe_breaker(false))),
            ("tower-resilience", AnyBreaker::TowerResilience(tower_resilience_breaker(false))),
        ],
    );
    bench_group(
        c,
        "breaker_rejected_open",
        vec![
            ("resilience", AnyBreaker::Ours(ours_open_by_failures())),
            ("resilience-forced", AnyBreaker::Ours(ours(true))),
            ("failsafe", AnyBreaker::Failsafe(failsafe_breaker(true))),
            ("tower-resilience", AnyBreaker::TowerResilience(tower_resilience_breaker(true))),
        ],
    );
}

fn retries(c: &mut Criterion) {
    bench_group(
        c,
        "retry_success",
        vec![
            ("resilience", AnyRetry::Ours(OursRetry(our_retry()))),
            ("backon", AnyRetry::Backon(Backon(backon_builder()))),
        ],
    );
    bench_group(
        c,
        "breaker_and_retry_success",
        vec![
            ("resilience", AnyRetry::OursBoth(OursBoth(ours(false).0, our_retry()))),
            ("failsafe+backon", AnyRetry::FailsafeBackon(FailsafeBackon(failsafe_breaker(false).0, backon_builder()))),
        ],
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = breakers, retries
}
criterion_main!(benches);
