use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::Transition;
use crate::{ConfigError, Result};

/// A function told of every state change, after the change took effect.
pub(crate) type Listener = Arc<dyn Fn(&Transition) + Send + Sync>;

/// Configuration of a [`CircuitBreaker`](super::CircuitBreaker).
///
/// The names and defaults are those of the original client:
/// `failure_threshold` 5, `recovery_timeout` 60 s, `success_threshold` 3,
/// `timeout` 30 s. Build one with [`CircuitBreakerConfig::builder`]; the
/// builder validates every field.
///
/// ```
/// use std::time::Duration;
/// use resilience::CircuitBreakerConfig;
///
/// let config = CircuitBreakerConfig::builder()
///     .failure_threshold(3)
///     .recovery_timeout(Duration::from_secs(30))
///     .build()?;
/// assert_eq!(config.success_threshold(), 3);
/// # Ok::<(), resilience::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct CircuitBreakerConfig {
    pub(crate) failure_threshold: u32,
    pub(crate) recovery_timeout: Duration,
    pub(crate) success_threshold: u32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) half_open_max_calls: u32,
    pub(crate) failure_rate: Option<FailureRate>,
    pub(crate) recovery_backoff: f64,
    pub(crate) max_recovery_timeout: Duration,
    pub(crate) history_capacity: usize,
    pub(crate) listener: Option<Listener>,
}

/// The optional failure-rate trip: over the last `window` calls, once at
/// least `minimum_calls` were made, a failure share of `threshold` or more
/// opens the breaker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureRate {
    /// Share of failed calls, in `(0, 1]`, that opens the breaker.
    pub threshold: f64,
    /// Number of most recent calls the rate is computed over.
    pub window: u32,
    /// Below this many calls in the window the rate is not computed.
    pub minimum_calls: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            recovery_timeout: Duration::from_secs(60),
            success_threshold: 3,
            timeout: Some(Duration::from_secs(30)),
            half_open_max_calls: 1,
            failure_rate: None,
            recovery_backoff: 1.0,
            max_recovery_timeout: Duration::from_secs(600),
            history_capacity: 32,
            listener: None,
        }
    }
}

impl CircuitBreakerConfig {
    /// A builder that starts from the defaults.
    pub fn builder() -> CircuitBreakerConfigBuilder {
        CircuitBreakerConfigBuilder { config: Self::default() }
    }

    /// Consecutive failures that open a closed breaker (default 5).
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold
    }

    /// How long the breaker stays open before it admits probes (default 60 s).
    pub fn recovery_timeout(&self) -> Duration {
        self.recovery_timeout
    }

    /// Successful probes that close a half-open breaker (default 3).
    pub fn success_threshold(&self) -> u32 {
        self.success_threshold
    }

    /// Time after which a call counts as failed (default 30 s; `None`: no limit).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Probes admitted at the same time while half-open (default 1).
    pub fn half_open_max_calls(&self) -> u32 {
        self.half_open_max_calls
    }

    /// The failure-rate trip, if enabled (default: off).
    pub fn failure_rate(&self) -> Option<FailureRate> {
        self.failure_rate
    }

    /// Factor by which the open duration grows on each trip in a row
    /// (default 1.0: no growth).
    pub fn recovery_backoff(&self) -> f64 {
        self.recovery_backoff
    }

    /// Cap of the grown open duration (default 600 s; only used with a
    /// `recovery_backoff` above 1).
    pub fn max_recovery_timeout(&self) -> Duration {
        self.max_recovery_timeout
    }

    /// Number of state changes kept in the history (default 32).
    pub fn history_capacity(&self) -> usize {
        self.history_capacity
    }

    /// The open duration for the `trips_in_a_row`-th trip without a close in
    /// between (0 for the first): `recovery_timeout * recovery_backoff^n`,
    /// capped at `max_recovery_timeout`. Saturates, never panics.
    pub(crate) fn open_duration(&self, trips_in_a_row: u32) -> Duration {
        if self.recovery_backoff == 1.0 || trips_in_a_row == 0 {
            return self.recovery_timeout;
        }
        let exponent = i32::try_from(trips_in_a_row).unwrap_or(i32::MAX);
        let secs = self.recovery_timeout.as_secs_f64() * self.recovery_backoff.powi(exponent);
        let cap = self.max_recovery_timeout.max(self.recovery_timeout);
        if secs.is_finite() && secs < cap.as_secs_f64() { Duration::from_secs_f64(secs) } else { cap }
    }
}

impl fmt::Debug for CircuitBreakerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerConfig")
            .field("failure_threshold", &self.failure_threshold)
            .field("recovery_timeout", &self.recovery_timeout)
            .field("success_threshold", &self.success_threshold)
            .field("timeout", &self.timeout)
            .field("half_open_max_calls", &self.half_open_max_calls)
            .field("failure_rate", &self.failure_rate)
            .field("recovery_backoff", &self.recovery_backoff)
            .field("max_recovery_timeout", &self.max_recovery_timeout)
            .field("history_capacity", &self.history_capacity)
            .field("listener", &self.listener.as_ref().map(|_| "Fn(&Transition)"))
            .finish()
    }
}

/// Builds a validated [`CircuitBreakerConfig`].
#[derive(Debug, Clone)]
#[must_use]
pub struct CircuitBreakerConfigBuilder {
    config: CircuitBreakerConfig,
}

impl CircuitBreakerConfigBuilder {
    /// Consecutive failures that open the breaker; at least 1.
    pub fn failure_threshold(mut self, n: u32) -> Self {
        self.config.failure_threshold = n;
        self
    }

    /// Time the breaker stays open before admitting probes; above zero.
    pub fn recovery_timeout(mut self, d: Duration) -> Self {
        self.config.recovery_timeout = d;
        self
    }

    /// Successful probes needed to close; at least 1.
    pub fn success_threshold(mut self, n: u32) -> Self {
        self.config.success_threshold = n;
        self
    }

    /// Per-call time limit; a call that exceeds it counts as a failure.
    /// `None` disables it. The limit needs a tokio runtime with time enabled.
    pub fn timeout(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.config.timeout = d.into();
        self
    }

    /// Probes admitted at the same time while half-open; at least 1.
    pub fn half_open_max_calls(mut self, n: u32) -> Self {
        self.config.half_open_max_calls = n;
        self
    }

    /// Also open when the failure share over the last `window` calls reaches
    /// `threshold`, once at least `minimum_calls` calls are in the window.
    pub fn failure_rate(mut self, threshold: f64, window: u32, minimum_calls: u32) -> Self {
        self.config.failure_rate = Some(FailureRate { threshold, window, minimum_calls });
        self
    }

    /// Grow the open duration by `factor` on each trip in a row (a trip from
    /// half-open), up to `max`. `factor` must be at least 1.
    pub fn recovery_backoff(mut self, factor: f64, max: Duration) -> Self {
        self.config.recovery_backoff = factor;
        self.config.max_recovery_timeout = max;
        self
    }

    /// Number of state changes kept in the history; at least 1.
    pub fn history_capacity(mut self, n: usize) -> Self {
        self.config.history_capacity = n;
        self
    }

    /// Call `listener` after every state change. It runs on the thread that
    /// caused the change, outside the breaker's lock; keep it short.
    pub fn on_state_change(mut self, listener: impl Fn(&Transition) + Send + Sync + 'static) -> Self {
        self.config.listener = Some(Arc::new(listener));
        self
    }

    /// Validates and returns the configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first field that cannot work: a zero
    /// threshold, count or duration, a failure rate outside `(0, 1]`, a
    /// window smaller than its minimum, or a backoff factor below 1 or NaN.
    pub fn build(self) -> Result<CircuitBreakerConfig> {
        let c = self.config;
        if c.failure_threshold == 0 {
            return Err(ConfigError::Zero { field: "failure_threshold" });
        }
        if c.success_threshold == 0 {
            return Err(ConfigError::Zero { field: "success_threshold" });
        }
        if c.half_open_max_calls == 0 {
            return Err(ConfigError::Zero { field: "half_open_max_calls" });
        }
        if c.history_capacity == 0 {
            return Err(ConfigError::Zero { field: "history_capacity" });
        }
        if c.recovery_timeout.is_zero() {
            return Err(ConfigError::ZeroDuration { field: "recovery_timeout" });
        }
        if c.timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::ZeroDuration { field: "timeout" });
        }
        if !(c.recovery_backoff >= 1.0 && c.recovery_backoff.is_finite()) {
            return Err(ConfigError::OutOfRange {
                field: "recovery_backoff",
                expected: "a finite number >= 1",
                value: c.recovery_backoff,
            });
        }
        if c.recovery_backoff > 1.0 && c.max_recovery_timeout < c.recovery_timeout {
            return Err(ConfigError::Exceeds { field: "recovery_timeout", limit: "max_recovery_timeout" });
        }
        if let Some(rate) = c.failure_rate {
            if !(rate.threshold > 0.0 && rate.threshold <= 1.0) {
                return Err(ConfigError::OutOfRange {
                    field: "failure_rate_threshold",
                    expected: "in (0, 1]",
                    value: rate.threshold,
                });
            }
            if rate.window == 0 {
                return Err(ConfigError::Zero { field: "sliding_window_size" });
            }
            if rate.minimum_calls == 0 {
                return Err(ConfigError::Zero { field: "minimum_calls" });
            }
            if rate.minimum_calls > rate.window {
                return Err(ConfigError::Exceeds { field: "minimum_calls", limit: "sliding_window_size" });
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seed_defaults() {
        let c = CircuitBreakerConfig::default();
        assert_eq!(c.failure_threshold(), 5);
        assert_eq!(c.recovery_timeout(), Duration::from_secs(60));
        assert_eq!(c.success_threshold(), 3);
        assert_eq!(c.timeout(), Some(Duration::from_secs(30)));
        assert_eq!(c.half_open_max_calls(), 1);
        assert!(c.failure_rate().is_none());
    }

    #[test]
    fn invalid_fields_are_named() {
        let b = CircuitBreakerConfig::builder;
        assert_eq!(b().failure_threshold(0).build().unwrap_err(), ConfigError::Zero { field: "failure_threshold" });
        assert_eq!(b().success_threshold(0).build().unwrap_err(), ConfigError::Zero { field: "success_threshold" });
        assert_eq!(b().half_open_max_calls(0).build().unwrap_err(), ConfigError::Zero { field: "half_open_max_calls" });
        assert_eq!(
            b().recovery_timeout(Duration::ZERO).build().unwrap_err(),
            ConfigError::ZeroDuration { field: "recovery_timeout" }
        );
        assert_eq!(b().timeout(Duration::ZERO).build().unwrap_err(), ConfigError::ZeroDuration { field: "timeout" });
        assert!(b().timeout(None).build().is_ok());
        let err = b().failure_rate(f64::NAN, 10, 5).build().unwrap_err();
        assert!(err.to_string().contains("failure_rate_threshold"), "{err}");
        assert!(b().failure_rate(1.5, 10, 5).build().is_err());
        assert!(b().failure_rate(0.5, 10, 11).build().is_err());
        assert!(b().recovery_backoff(f64::NAN, Duration::from_secs(600)).build().is_err());
        assert!(b().recovery_backoff(0.5, Duration::from_secs(600)).build().is_err());
        assert!(b().recovery_backoff(2.0, Duration::from_secs(1)).build().is_err());
        // Without growth the cap does not apply.
        assert!(b().recovery_timeout(Duration::from_secs(3600)).build().is_ok());
    }

    #[test]
    fn open_duration_grows_and_saturates_at_the_cap() {
        let c = CircuitBreakerConfig::builder()
            .recovery_timeout(Duration::from_secs(10))
            .recovery_backoff(2.0, Duration::from_secs(60))
            .build()
            .unwrap();
        assert_eq!(c.open_duration(0), Duration::from_secs(10));
        assert_eq!(c.open_duration(1), Duration::from_secs(20));
        assert_eq!(c.open_duration(2), Duration::from_secs(40));
        assert_eq!(c.open_duration(3), Duration::from_secs(60));
        assert_eq!(c.open_duration(u32::MAX), Duration::from_secs(60));
    }
}
