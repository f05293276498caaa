use std::time::Duration;

use super::CircuitState;
use crate::RetryAction;

/// Why a call through a [`CircuitBreaker`](super::CircuitBreaker) did not
/// return a value.
///
/// The three cases are kept apart so callers can react to each: a refused
/// call was never sent, a timed-out call may or may not have taken effect,
/// and an inner error is the callee's own answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError<E> {
    /// The breaker refused the call without running it: it is open, or
    /// half-open with every probe slot taken. Building this allocates nothing.
    #[error("circuit breaker is {state}: call not attempted")]
    Rejected {
        /// The state that refused the call.
        state: CircuitState,
    },
    /// The call ran longer than the breaker's `timeout` and was dropped; it
    /// counts as a failure.
    #[error("call timed out after {timeout:?}")]
    Timeout {
        /// The limit that was exceeded.
        timeout: Duration,
    },
    /// The call itself failed.
    #[error(transparent)]
    Inner(E),
}

impl<E> CallError<E> {
    /// The inner error, if the call ran and failed by itself.
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Inner(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the breaker refused the call.
    pub fn is_rejected(&self) -> bool {
        matches!(self, Self::Rejected { .. })
    }

    /// Whether the call hit the breaker's timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }

    /// A retry classifier for calls made through a breaker: a refused call is
    /// not retried (the breaker said the callee is down), a timed-out call is,
    /// and an inner error is judged by `inner`.
    ///
    /// ```
    /// use resilience::{CallError, RetryAction};
    ///
    /// let classify = CallError::retry_action(|_: &std::io::Error| RetryAction::Retry);
    /// let refused = CallError::<std::io::Error>::Rejected { state: resilience::CircuitState::Open };
    /// assert_eq!(classify(&refused), RetryAction::DoNotRetry);
    /// ```
    pub fn retry_action(inner: impl Fn(&E) -> RetryAction) -> impl Fn(&Self) -> RetryAction {
        move |err| match err {
            Self::Rejected { .. } => RetryAction::DoNotRetry,
            Self::Timeout { .. } => RetryAction::Retry,
            Self::Inner(e) => inner(e),
        }
    }
}
