//! Retry with exponential backoff, jitter, server pushback, a caller
//! deadline and a retry budget shared across calls.
//!
//! One call through [`Retry::execute`] goes like this: run the operation; on
//! an error ask the classifier for a [`RetryAction`]; stop if the error is
//! not retryable, if `max_attempts` are used up, if the wait would end past
//! the caller's deadline, or if the shared [`RetryBudget`] is spent;
//! otherwise wait (the server's pushback if it sent one, else the next
//! [`Backoff`] delay) and run it again. The last error is returned as it is.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use resilience::{Retry, RetryAction, RetryConfig};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let retry = Retry::new(RetryConfig::builder().max_attempts(3).build()?);
//! let mut calls = 0;
//! let value = retry
//!     .execute(&|e: &&str| if *e == "busy" { RetryAction::Retry } else { RetryAction::DoNotRetry }, None, || {
//!         calls += 1;
//!         let result = if calls < 3 { Err("busy") } else { Ok(calls) };
//!         async move { result }
//!     })
//!     .await?;
//! assert_eq!(value, 3);
//! assert_eq!(retry.stats().retries, 2);
//! # Ok(())
//! # }
//! ```

mod backoff;
mod budget;
mod config;
#[cfg(feature = "grpc")]
mod layer;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

pub use backoff::Backoff;
pub use budget::RetryBudget;
pub use config::{BudgetConfig, Jitter, RetryConfig, RetryConfigBuilder};
#[cfg(feature = "grpc")]
pub use layer::{ClassifyRetry, ResponseFuture, RetryLayer, RetryService};

use crate::counter::StripedCounter;

/// What to do after a failed attempt, as a classifier decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAction {
    /// Retry after the next backoff delay.
    Retry,
    /// Retry after exactly this long (the server's pushback), clamped to
    /// `max_delay`; still bounded by `max_attempts`, the deadline and the
    /// budget.
    RetryAfter(Duration),
    /// Give the error back to the caller now.
    DoNotRetry,
}

/// Counters of a [`Retry`] (shared by its clones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RetryStats {
    /// Attempts made, first attempts included.
    pub attempts: u64,
    /// Attempts that were retries.
    pub retries: u64,
    /// Calls that ended with a retryable error: attempts used up, deadline
    /// or budget reached.
    pub give_ups: u64,
    /// The part of `give_ups` refused by the retry budget.
    pub budget_exhausted: u64,
    /// The part of `give_ups` whose wait would have overrun the deadline.
    pub deadline_exceeded: u64,
}

/// One call in progress under a [`Retry`], from [`Retry::begin`].
#[derive(Debug)]
pub struct RetryCall {
    retry: Retry,
    /// Made at the first failure: a call that succeeds at once draws no
    /// random seed.
    backoff: Option<Backoff>,
    attempt: u32,
}

impl RetryCall {
    /// The attempt succeeded: the budget earns its share back.
    pub fn succeeded(self) {
        if let Some(budget) = &self.retry.inner.budget {
            budget.on_success();
        }
    }

    /// The attempt failed as `action` classifies it: the wait before the
    /// next attempt (counted now), or `None` to give up (attempts, budget
    /// or `deadline` exhausted, or `action` says not to retry).
    pub fn failed(&mut self, action: RetryAction, deadline: Option<Instant>) -> Option<Duration> {
        let retry = &self.retry;
        let backoff = self.backoff.get_or_insert_with(|| retry.new_backoff());
        let wait = retry.next_wait(action, self.attempt, backoff, deadline)?;
        self.attempt += 1;
        retry.inner.attempts.increment();
        Some(wait)
    }

    /// The attempt being made, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// Runs operations again when they fail with a retryable error. Cheap to
/// clone; clones share the counters, the budget and the random source.
#[derive(Clone)]
pub struct Retry {
    inner: Arc<Inner>,
}

struct Inner {
    config: RetryConfig,
    budget: Option<Arc<RetryBudget>>,
    /// Seeds the per-call backoffs; locked only when a call retries.
    rng: Mutex<fastrand::Rng>,
    attempts: StripedCounter,
    retries: AtomicU64,
    give_ups: AtomicU64,
    budget_exhausted: AtomicU64,
    deadline_exceeded: AtomicU64,
}

impl Retry {
    /// A retry with its own budget (if the configuration has one) and a
    /// random source seeded from the system.
    pub fn new(config: RetryConfig) -> Self {
        Self::build(config, fastrand::Rng::new())
    }

    /// As [`new`](Self::new) with a seeded random source: the same seed and
    /// the same failures give the same delays.
    pub fn with_seed(config: RetryConfig, seed: u64) -> Self {
        Self::build(config, fastrand::Rng::with_seed(seed))
    }

    fn build(config: RetryConfig, rng: fastrand::Rng) -> Self {
        let budget = config.budget.map(|b| Arc::new(RetryBudget::new(b)));
        Self {
            inner: Arc::new(Inner {
                config,
                budget,
                rng: Mutex::new(rng),
                attempts: StripedCounter::default(),
                retries: AtomicU64::new(0),
                give_ups: AtomicU64::new(0),
                budget_exhausted: AtomicU64::new(0),
                deadline_exceeded: AtomicU64::new(0),
            }),
        }
    }

    /// A retry drawing on a budget shared with other `Retry` values (for
    /// example one per RPC kind); `None` turns the budget off whatever the
    /// configuration says.
    pub fn with_shared_budget(config: RetryConfig, budget: Option<Arc<RetryBudget>>) -> Self {
        let mut retry = Self::new(config);
        if let Some(inner) = Arc::get_mut(&mut retry.inner) {
            inner.budget = budget;
        }
        retry
    }

    /// Runs `f` until it succeeds, retrying every error, as the original
    /// client's `execute_with_retry`.
    ///
    /// # Errors
    ///
    /// The last error once attempts, budget or deadline are exhausted.
    pub async fn execute_with_retry<F, Fut, T, E>(&self, f: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.execute(&|_: &E| RetryAction::Retry, None, f).await
    }

    /// Runs `f`, retrying the errors `classify` calls retryable, and never
    /// waiting past `deadline`.
    ///
    /// # Errors
    ///
    /// A non-retryable error at once; otherwise the last error once
    /// `max_attempts` are used, the budget is spent, or the next wait would
    /// end after `deadline`.
    pub async fn execute<F, Fut, T, E, C>(&self, classify: &C, deadline: Option<Instant>, mut f: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        C: Fn(&E) -> RetryAction + ?Sized,
    {
        let mut call = self.begin();
        loop {
            let error = match f().await {
                Ok(value) => {
                    call.succeeded();
                    return Ok(value);
                }
                Err(error) => error,
            };
            match call.failed(classify(&error), deadline) {
                Some(wait) => tokio::time::sleep(wait).await,
                None => return Err(error),
            }
        }
    }

    /// Starts one call whose attempts the caller runs and waits for itself
    /// (a language binding awaiting on its own event loop): report each
    /// attempt's end to the [`RetryCall`]; it says how long to wait before
    /// the next, with the same backoff, budget and counters as
    /// [`execute`](Self::execute). The first attempt is counted now.
    pub fn begin(&self) -> RetryCall {
        self.inner.attempts.increment();
        RetryCall { retry: self.clone(), backoff: None, attempt: 1 }
    }

    /// The wait before the next attempt, or `None` to stop. Counts the
    /// failure against the budget, and the retry or the give-up reason.
    pub(crate) fn next_wait(
        &self,
        action: RetryAction,
        attempt: u32,
        backoff: &mut Backoff,
        deadline: Option<Instant>,
    ) -> Option<Duration> {
        let inner = &*self.inner;
        let wait = match action {
            RetryAction::DoNotRetry => return None,
            RetryAction::Retry => backoff.next_delay(),
            // The server's pushback is honoured up to `max_delay`: a server
            // cannot make the caller wait without bound.
            RetryAction::RetryAfter(pushback) => pushback.min(inner.config.max_delay()),
        };
        if let Some(budget) = &inner.budget {
            budget.on_failure();
        }
        let give_up = |reason: Option<&AtomicU64>| {
            inner.give_ups.fetch_add(1, Ordering::Relaxed);
            if let Some(counter) = reason {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            None
        };
        if attempt >= inner.config.max_attempts {
            return give_up(None);
        }
        if deadline.is_some_and(|deadline| Instant::now().checked_add(wait).is_none_or(|end| end >= deadline)) {
            tracing::debug!(?wait, "not retrying: the wait would overrun the caller's deadline");
            return give_up(Some(&inner.deadline_exceeded));
        }
        if inner.budget.as_ref().is_some_and(|budget| !budget.can_retry()) {
            tracing::debug!("not retrying: the retry budget is spent");
            return give_up(Some(&inner.budget_exhausted));
        }
        inner.retries.fetch_add(1, Ordering::Relaxed);
        Some(wait)
    }

    pub(crate) fn new_backoff(&self) -> Backoff {
        let seed = self.inner.rng.lock().unwrap_or_else(|p| p.into_inner()).u64(..);
        Backoff::with_seed(self.inner.config, seed)
    }

    /// The counters.
    pub fn stats(&self) -> RetryStats {
        let inner = &*self.inner;
        RetryStats {
            attempts: inner.attempts.get(),
            retries: inner.retries.load(Ordering::Relaxed),
            give_ups: inner.give_ups.load(Ordering::Relaxed),
            budget_exhausted: inner.budget_exhausted.load(Ordering::Relaxed),
            deadline_exceeded: inner.deadline_exceeded.load(Ordering::Relaxed),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RetryConfig {
        &self.inner.config
    }

    /// The budget this retry draws on, if any.
    pub fn budget(&self) -> Option<&Arc<RetryBudget>> {
        self.inner.budget.as_ref()
    }
}

impl fmt::Debug for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("config", &self.inner.config)
            .field("budget", &self.inner.budget)
            .field("stats", &self.stats())
            .finish()
    }
}

#[cfg(test)]
mod tests;
