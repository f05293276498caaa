use std::sync::atomic::{AtomicU64, Ordering};

use super::BudgetConfig;

/// Tokens are kept in thousandths so that a `token_ratio` such as 0.1 is
/// exact (gRPC allows three decimal places; no truncation to zero).
const MILLI: u64 = 1000;

/// A retry budget shared by many calls: gRPC's retry throttling.
///
/// The bucket starts full with `max_tokens`. Every failed attempt that could
/// be retried takes one token, every success returns `token_ratio`; a retry
/// may go out only while more than `max_tokens / 2` remain. So during an
/// outage each client stops retrying after about `max_tokens / 2` failures,
/// while first attempts still go out and refill the bucket as soon as the
/// service answers again. Lock-free; a success with a full bucket only reads.
///
/// ```
/// use resilience::retry::{BudgetConfig, RetryBudget};
///
/// let budget = RetryBudget::new(BudgetConfig { max_tokens: 4, token_ratio: 0.5 });
/// budget.on_failure(); // 3 tokens left: more than half, retries allowed
/// assert!(budget.can_retry());
/// budget.on_failure(); // 2 left: exactly half, retries stop
/// assert!(!budget.can_retry());
/// budget.on_success(); // 2.5
/// assert!(budget.can_retry());
/// ```
#[derive(Debug)]
pub struct RetryBudget {
    tokens: AtomicU64,
    max: u64,
    ratio: u64,
}

impl RetryBudget {
    /// A full bucket. The configuration is expected to be validated (it is
    /// when it comes from [`RetryConfig`](super::RetryConfig)); out-of-range
    /// values are clamped.
    pub fn new(config: BudgetConfig) -> Self {
        let max = u64::from(config.max_tokens.max(1)) * MILLI;
        let ratio = ((config.token_ratio * MILLI as f64).round() as u64).clamp(1, max);
        Self { tokens: AtomicU64::new(max), max, ratio }
    }

    /// Records a success: returns `token_ratio` tokens.
    #[inline]
    pub fn on_success(&self) {
        if self.tokens.load(Ordering::Relaxed) >= self.max {
            return;
        }
        let _ =
            self.tokens.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| Some((t + self.ratio).min(self.max)));
    }

    /// Records a failed attempt: takes one token.
    pub fn on_failure(&self) {
        let _ = self.tokens.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| Some(t.saturating_sub(MILLI)));
    }

    /// Whether a retry may go out now.
    pub fn can_retry(&self) -> bool {
        self.tokens.load(Ordering::Relaxed) * 2 > self.max
    }

    /// Tokens left.
    pub fn tokens(&self) -> f64 {
        self.tokens.load(Ordering::Relaxed) as f64 / MILLI as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fractional_ratio_is_not_truncated() {
        let budget = RetryBudget::new(BudgetConfig { max_tokens: 10, token_ratio: 0.1 });
        for _ in 0..5 {
            budget.on_failure();
        }
        assert!(!budget.can_retry(), "5 of 10 left is not more than half");
        budget.on_success();
        assert!((budget.tokens() - 5.1).abs() < 1e-9);
        assert!(budget.can_retry());
    }

    #[test]
    fn tokens_stay_within_zero_and_max() {
        let budget = RetryBudget::new(BudgetConfig { max_tokens: 2, token_ratio: 1.0 });
        for _ in 0..10 {
            budget.on_failure();
        }
        assert_eq!(budget.tokens(), 0.0);
        for _ in 0..10 {
            budget.on_success();
        }
        assert_eq!(budget.tokens(), 2.0);
    }
}
