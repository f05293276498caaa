//! Resilience for calls to a remote service: a [circuit breaker](circuit_breaker),
//! [retry] with exponential backoff, jitter and a shared retry budget,
//! and the classification that tells which errors count as failures and which
//! may be retried.
//!
//! Each part has two faces:
//!
//! * plain async calls, named as in the original Python client:
//!   [`CircuitBreaker::call`] and [`Retry::execute_with_retry`];
//! * tower layers, [`CircuitBreakerLayer`] and [`RetryLayer`], that wrap any
//!   `tower::Service`, for example a tonic `Channel` (feature `grpc`, on by
//!   default).
//!
//! The crate knows nothing about protobuf or storage. With the `grpc` feature
//! it understands gRPC status codes and the `grpc-retry-pushback-ms` trailer
//! ([`grpc`] module).
//!
//! # Example
//!
//! A breaker around a retried call; the breaker sees each attempt, the retry
//! stops as soon as the breaker refuses a call.
//!
//! ```
//! use std::time::Duration;
//! use resilience::{CallError, CircuitBreaker, CircuitBreakerConfig, Retry, RetryAction, RetryConfig};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let breaker = CircuitBreaker::new(CircuitBreakerConfig::builder().failure_threshold(5).build()?);
//! let retry = Retry::new(RetryConfig::builder().max_attempts(3).base_delay(Duration::from_millis(100)).build()?);
//!
//! let answer: Result<u32, CallError<std::io::Error>> = retry
//!     .execute(&CallError::retry_action(|_io: &std::io::Error| RetryAction::Retry), None, || {
//!         breaker.call(|| async { Ok::<_, std::io::Error>(42) })
//!     })
//!     .await;
//! assert_eq!(answer?, 42);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

pub mod circuit_breaker;
mod counter;
mod error;
#[cfg(feature = "grpc")]
pub mod grpc;
pub mod retry;

pub use circuit_breaker::{
    CallError, CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, CircuitBreakerStats, CircuitState, Outcome,
    OwnedPermit, Transition, TransitionCause,
};
pub use error::{ConfigError, Result};

/// The error type of this crate's tower services, as in tower itself.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
#[cfg(feature = "grpc")]
pub use retry::RetryLayer;
pub use retry::{Jitter, Retry, RetryAction, RetryBudget, RetryCall, RetryConfig, RetryStats};
