use std::time::Duration;

use super::{Jitter, RetryConfig};

/// The sequence of delays of one retried operation: exponential, capped at
/// `max_delay`, randomised by the configured [`Jitter`].
///
/// [`Retry`](super::Retry) makes one per call; it is public for loops that
/// pace themselves, such as a reconnect probe. Seed it for reproducible
/// delays in tests.
///
/// ```
/// use std::time::Duration;
/// use resilience::{retry::Backoff, RetryConfig};
///
/// let config = RetryConfig::default(); // base 1 s, ×2, max 60 s, full jitter
/// let mut backoff = Backoff::with_seed(config, 7);
/// for n in 0..10 {
///     let d = backoff.next_delay();
///     assert!(d <= config.delay_without_jitter(n));
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    config: RetryConfig,
    attempt: u32,
    previous: Duration,
    rng: fastrand::Rng,
}

impl Backoff {
    /// A backoff seeded from the system's entropy.
    pub fn new(config: RetryConfig) -> Self {
        Self::from_rng(config, fastrand::Rng::new())
    }

    /// A backoff whose jitter is reproducible.
    pub fn with_seed(config: RetryConfig, seed: u64) -> Self {
        Self::from_rng(config, fastrand::Rng::with_seed(seed))
    }

    pub(crate) fn from_rng(config: RetryConfig, rng: fastrand::Rng) -> Self {
        Self { config, attempt: 0, previous: config.base_delay, rng }
    }

    /// The next delay; never more than `max_delay`.
    pub fn next_delay(&mut self) -> Duration {
        let c = self.config;
        let exponential = c.delay_without_jitter(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let delay = match c.jitter {
            Jitter::None => exponential,
            Jitter::Full => self.uniform(Duration::ZERO, exponential),
            Jitter::Equal => self.uniform(exponential / 2, exponential),
            Jitter::Decorrelated => {
                let high = self.previous.saturating_mul(3).min(c.max_delay).max(c.base_delay);
                self.uniform(c.base_delay, high)
            }
        };
        self.previous = delay;
        delay.min(c.max_delay)
    }

    /// Starts the sequence again from `base_delay`.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.previous = self.config.base_delay;
    }

    /// Number of delays handed out since the start or the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Uniform in `[low, high]` at nanosecond resolution.
    fn uniform(&mut self, low: Duration, high: Duration) -> Duration {
        let low_ns = u64::try_from(low.as_nanos()).unwrap_or(u64::MAX);
        let high_ns = u64::try_from(high.as_nanos()).unwrap_or(u64::MAX);
        if high_ns <= low_ns {
            return low;
        }
        Duration::from_nanos(self.rng.u64(low_ns..=high_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(jitter: Jitter, base_ms: u64, max_ms: u64, factor: f64) -> RetryConfig {
        RetryConfig::builder()
            .base_delay(Duration::from_millis(base_ms))
            .max_delay(Duration::from_millis(max_ms))
            .exponential_base(factor)
            .jitter_kind(jitter)
            .build()
            .unwrap()
    }

    #[test]
    fn without_jitter_the_delays_are_exact() {
        let mut b = Backoff::with_seed(config(Jitter::None, 1000, 60_000, 2.0), 1);
        let secs: Vec<u64> = (0..8).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn the_same_seed_gives_the_same_delays() {
        let c = config(Jitter::Full, 100, 10_000, 2.0);
        let a: Vec<_> = {
            let mut b = Backoff::with_seed(c, 42);
            (0..20).map(|_| b.next_delay()).collect()
        };
        let b: Vec<_> = {
            let mut b = Backoff::with_seed(c, 42);
            (0..20).map(|_| b.next_delay()).collect()
        };
        assert_eq!(a, b);
        let other: Vec<_> = {
            let mut b = Backoff::with_seed(c, 43);
            (0..20).map(|_| b.next_delay()).collect()
        };
        assert_ne!(a, other);
    }

    fn any_jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![Just(Jitter::None), Just(Jitter::Full), Just(Jitter::Equal), Just(Jitter::Decorrelated)]
    }

    proptest! {
        /// Every delay lies in its documented interval and never exceeds `max_delay`.
        #[test]
        fn every_jittered_delay_is_in_its_interval(
            jitter in any_jitter(),
            base_ms in 0u64..5_000,
            extra_ms in 0u64..120_000,
            factor in 1.0f64..10.0,
            seed in any::<u64>(),
            steps in 1usize..80,
        ) {
            let c = config(jitter, base_ms, base_ms + extra_ms.max(1), factor);
            let mut b = Backoff::with_seed(c, seed);
            let mut previous = c.base_delay();
            for n in 0..steps {
                let d = b.next_delay();
                let exp = c.delay_without_jitter(n as u32);
                prop_assert!(d <= c.max_delay());
                match jitter {
                    Jitter::None => prop_assert_eq!(d, exp),
                    Jitter::Full => prop_assert!(d <= exp),
                    Jitter::Equal => prop_assert!(d >= exp / 2 && d <= exp),
                    Jitter::Decorrelated => {
                        let high = (previous * 3).min(c.max_delay()).max(c.base_delay());
                        prop_assert!(d >= c.base_delay() && d <= high, "{:?} not in [{:?}, {:?}]", d, c.base_delay(), high);
                    }
                }
                previous = d;
            }
        }
    }
}
