use std::time::Duration;

use crate::{ConfigError, Result};

/// How a retry delay is randomised around the exponential value `d`.
///
/// Randomising spreads the retries of many clients that failed together
/// (a restart, a partition) so they do not come back in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Exactly `d`.
    None,
    /// Uniform in `[0, d]` ("full jitter"): the widest spread, the default.
    #[default]
    Full,
    /// Uniform in `[d/2, d]` ("equal jitter"): never less than half.
    Equal,
    /// Uniform in `[base_delay, min(max_delay, 3 × previous delay)]`
    /// ("decorrelated jitter"), starting from `base_delay`.
    Decorrelated,
}

/// The retry budget: a token bucket shared by the calls of one [`Retry`](super::Retry),
/// as in gRPC's retry throttling. Each failed attempt takes one token, each
/// success gives back `token_ratio`; a retry is allowed only while more than
/// half of `max_tokens` remain. During a broad outage retries stop while
/// first attempts still go out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Bucket size, at least 1 (default 10).
    pub max_tokens: u32,
    /// Tokens returned per success, in `(0, max_tokens]`, with up to three
    /// decimal places (default 0.1).
    pub token_ratio: f64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self { max_tokens: 10, token_ratio: 0.1 }
    }
}

/// Configuration of a [`Retry`](super::Retry).
///
/// Names and defaults are the original client's: `max_attempts` 3,
/// `base_delay` 1 s, `max_delay` 60 s, `exponential_base` 2.0, `jitter` on
/// ([`Jitter::Full`]). Retry `n` (0 for the first retry) waits
/// `min(max_delay, base_delay × exponential_base^n)` before jitter; no
/// delay ever exceeds `max_delay`.
///
/// ```
/// use std::time::Duration;
/// use resilience::{Jitter, RetryConfig};
///
/// let config = RetryConfig::builder()
///     .max_attempts(5)
///     .base_delay(Duration::from_millis(500))
///     .jitter(false)
///     .build()?;
/// assert_eq!(config.delay_without_jitter(0), Duration::from_millis(500));
/// assert_eq!(config.delay_without_jitter(2), Duration::from_secs(2));
/// # Ok::<(), resilience::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    pub(crate) max_attempts: u32,
    pub(crate) base_delay: Duration,
    pub(crate) max_delay: Duration,
    pub(crate) exponential_base: f64,
    pub(crate) jitter: Jitter,
    pub(crate) budget: Option<BudgetConfig>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            exponential_base: 2.0,
            jitter: Jitter::Full,
            budget: Some(BudgetConfig::default()),
        }
    }
}

impl RetryConfig {
    /// A builder that starts from the defaults.
    pub fn builder() -> RetryConfigBuilder {
        RetryConfigBuilder { config: Self::default() }
    }

    /// Attempts in all, the first one included (default 3).
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Delay before the first retry, before jitter (default 1 s).
    pub fn base_delay(&self) -> Duration {
        self.base_delay
    }

    /// Upper bound of every delay (default 60 s).
    pub fn max_delay(&self) -> Duration {
        self.max_delay
    }

    /// Growth factor of the delay per retry (default 2.0).
    pub fn exponential_base(&self) -> f64 {
        self.exponential_base
    }

    /// The jitter kind (default [`Jitter::Full`]).
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The retry budget, if any (default: 10 tokens, ratio 0.1).
    pub fn budget(&self) -> Option<BudgetConfig> {
        self.budget
    }

    /// The delay before retry `n` (0 for the first) without jitter:
    /// `min(max_delay, base_delay × exponential_base^n)`. Saturates at
    /// `max_delay` for any `n`; never overflows or panics.
    pub fn delay_without_jitter(&self, n: u32) -> Duration {
        let exponent = i32::try_from(n).unwrap_or(i32::MAX);
        let secs = self.base_delay.as_secs_f64() * self.exponential_base.powi(exponent);
        if secs.is_finite() && secs < self.max_delay.as_secs_f64() {
            Duration::from_secs_f64(secs).min(self.max_delay)
        } else {
            self.max_delay
        }
    }
}

/// Builds a validated [`RetryConfig`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RetryConfigBuilder {
    config: RetryConfig,
}

impl RetryConfigBuilder {
    /// Attempts in all, the first included; at least 1 (1 means no retry).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.config.max_attempts = n;
        self
    }

    /// Delay before the first retry; at most `max_delay`.
    pub fn base_delay(mut self, d: Duration) -> Self {
        self.config.base_delay = d;
        self
    }

    /// Upper bound of every delay.
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.config.max_delay = d;
        self
    }

    /// Growth factor per retry; finite and at least 1.
    pub fn exponential_base(mut self, factor: f64) -> Self {
        self.config.exponential_base = factor;
        self
    }

    /// `true` (the default) for [`Jitter::Full`], `false` for [`Jitter::None`],
    /// as the original client's `jitter` flag.
    pub fn jitter(mut self, on: bool) -> Self {
        self.config.jitter = if on { Jitter::Full } else { Jitter::None };
        self
    }

    /// A specific jitter kind.
    pub fn jitter_kind(mut self, kind: Jitter) -> Self {
        self.config.jitter = kind;
        self
    }

    /// The retry budget (see [`BudgetConfig`]).
    pub fn budget(mut self, max_tokens: u32, token_ratio: f64) -> Self {
        self.config.budget = Some(BudgetConfig { max_tokens, token_ratio });
        self
    }

    /// No retry budget: every retryable error is retried up to `max_attempts`.
    pub fn no_budget(mut self) -> Self {
        self.config.budget = None;
        self
    }

    /// Validates and returns the configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the field: zero `max_attempts`,
    /// `base_delay > max_delay`, zero `max_delay`, an `exponential_base`
    /// below 1 or not finite, a budget with zero tokens or a ratio outside
    /// `(0, max_tokens]` (or below 0.001).
    pub fn build(self) -> Result<RetryConfig> {
        let c = self.config;
        if c.max_attempts == 0 {
            return Err(ConfigError::Zero { field: "max_attempts" });
        }
        if c.max_delay.is_zero() {
            return Err(ConfigError::ZeroDuration { field: "max_delay" });
        }
        if c.base_delay > c.max_delay {
            return Err(ConfigError::Exceeds { field: "base_delay", limit: "max_delay" });
        }
        if !(c.exponential_base.is_finite() && c.exponential_base >= 1.0) {
            return Err(ConfigError::OutOfRange {
                field: "exponential_base",
                expected: "a finite number >= 1",
                value: c.exponential_base,
            });
        }
        if let Some(budget) = c.budget {
            if budget.max_tokens == 0 {
                return Err(ConfigError::Zero { field: "max_tokens" });
            }
            let ratio = budget.token_ratio;
            if !(ratio.is_finite() && ratio >= 0.001 && ratio <= f64::from(budget.max_tokens)) {
                return Err(ConfigError::OutOfRange {
                    field: "token_ratio",
                    expected: "in [0.001, max_tokens]",
                    value: ratio,
                });
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
        let c = RetryConfig::default();
        assert_eq!(c.max_attempts(), 3);
        assert_eq!(c.base_delay(), Duration::from_secs(1));
        assert_eq!(c.max_delay(), Duration::from_secs(60));
        assert_eq!(c.exponential_base(), 2.0);
        assert_eq!(c.jitter(), Jitter::Full);
    }

    #[test]
    fn delays_without_jitter_double_and_cap() {
        let c = RetryConfig::default();
        let secs: Vec<u64> = (0..8).map(|n| c.delay_without_jitter(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn huge_attempt_numbers_saturate_to_max_delay() {
        let c = RetryConfig::builder().exponential_base(1e300).build().unwrap();
        for n in [64, 1_000, u32::MAX / 2, u32::MAX] {
            assert_eq!(c.delay_without_jitter(n), Duration::from_secs(60));
        }
        let flat = RetryConfig::builder().exponential_base(1.0).build().unwrap();
        assert_eq!(flat.delay_without_jitter(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn invalid_configuration_is_refused_with_the_field_named() {
        let b = RetryConfig::builder;
        assert_eq!(b().max_attempts(0).build().unwrap_err(), ConfigError::Zero { field: "max_attempts" });
        assert_eq!(
            b().base_delay(Duration::from_secs(61)).build().unwrap_err(),
            ConfigError::Exceeds { field: "base_delay", limit: "max_delay" }
        );
        for bad in [0.5, f64::NAN, f64::INFINITY, -2.0] {
            let err = b().exponential_base(bad).build().unwrap_err();
            assert!(err.to_string().contains("exponential_base"), "{err}");
        }
        assert_eq!(b().budget(0, 0.1).build().unwrap_err(), ConfigError::Zero { field: "max_tokens" });
        assert!(b().budget(10, 0.0).build().is_err());
        assert!(b().budget(10, f64::NAN).build().is_err());
        assert!(b().budget(10, 11.0).build().is_err());
        assert!(b().max_delay(Duration::ZERO).base_delay(Duration::ZERO).build().is_err());
    }
}
