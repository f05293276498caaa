use std::fmt;
use std::time::{Duration, SystemTime};

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls pass; consecutive failures are counted.
    Closed,
    /// Calls are refused until the recovery timeout has passed.
    Open,
    /// A bounded number of probe calls pass; their outcome closes or reopens.
    HalfOpen,
    /// Held open by an operator ([`force_open`](super::CircuitBreaker::force_open)):
    /// every call is refused until [`reset`](super::CircuitBreaker::reset).
    ForcedOpen,
    /// Held closed by an operator
    /// ([`force_closed`](super::CircuitBreaker::force_closed)): every call
    /// passes and failures never open it, until [`reset`](super::CircuitBreaker::reset).
    ForcedClosed,
}

impl CircuitState {
    pub(crate) const fn to_bits(self) -> u64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
            Self::ForcedOpen => 3,
            Self::ForcedClosed => 4,
        }
    }

    pub(crate) const fn from_bits(bits: u64) -> Self {
        match bits & STATE_MASK {
            0 => Self::Closed,
            1 => Self::Open,
            2 => Self::HalfOpen,
            3 => Self::ForcedOpen,
            _ => Self::ForcedClosed,
        }
    }

    /// The lower-case name used in health reports: `closed`, `open`,
    /// `half_open`, `forced_open`, `forced_closed`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::ForcedOpen => "forced_open",
            Self::ForcedClosed => "forced_closed",
        }
    }

    /// Whether calls are refused in this state without looking at the clock.
    pub const fn is_open(self) -> bool {
        matches!(self, Self::Open | Self::ForcedOpen)
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bits of the state word that hold the [`CircuitState`]; the rest count
/// state changes (the generation).
pub(crate) const STATE_BITS: u32 = 3;
pub(crate) const STATE_MASK: u64 = (1 << STATE_BITS) - 1;

/// Why the breaker changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransitionCause {
    /// `failure_threshold` consecutive failures while closed.
    ConsecutiveFailures {
        /// The number of consecutive failures seen.
        failures: u32,
    },
    /// The failure share over the sliding window reached its threshold.
    FailureRate {
        /// Failed calls in the window.
        failures: u32,
        /// Calls in the window.
        calls: u32,
    },
    /// The open duration has passed; probes are admitted.
    RecoveryTimeoutElapsed,
    /// A probe failed while half-open.
    ProbeFailed,
    /// `success_threshold` probes succeeded while half-open.
    ProbesSucceeded {
        /// The number of successful probes.
        successes: u32,
    },
    /// An operator called [`force_open`](super::CircuitBreaker::force_open).
    ForcedOpen,
    /// An operator called [`force_closed`](super::CircuitBreaker::force_closed).
    ForcedClosed,
    /// An operator called [`reset`](super::CircuitBreaker::reset).
    Reset,
}

impl fmt::Display for TransitionCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConsecutiveFailures { failures } => write!(f, "{failures} consecutive failures"),
            Self::FailureRate { failures, calls } => write!(f, "{failures} of the last {calls} calls failed"),
            Self::RecoveryTimeoutElapsed => f.write_str("recovery timeout elapsed"),
            Self::ProbeFailed => f.write_str("a half-open probe failed"),
            Self::ProbesSucceeded { successes } => write!(f, "{successes} half-open probes succeeded"),
            Self::ForcedOpen => f.write_str("forced open by an operator"),
            Self::ForcedClosed => f.write_str("forced closed by an operator"),
            Self::Reset => f.write_str("reset by an operator"),
        }
    }
}

/// One state change, as kept in the breaker's history and passed to
/// listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Wall-clock time of the change.
    pub at: SystemTime,
    /// The state before.
    pub from: CircuitState,
    /// The state after.
    pub to: CircuitState,
    /// Why it changed.
    pub cause: TransitionCause,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}: {}", self.from, self.to, self.cause)
    }
}

/// A snapshot of a breaker's counters and state.
///
/// `total_calls = successful_calls + failed_calls + rejected_calls`;
/// `timed_out_calls` is the part of `failed_calls` that hit the timeout.
/// Calls dropped before they finished are in none of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CircuitBreakerStats {
    /// The current state.
    pub state: CircuitState,
    /// Calls made, admitted or not.
    pub total_calls: u64,
    /// Admitted calls that succeeded (by the classifier's judgement).
    pub successful_calls: u64,
    /// Admitted calls that failed, timeouts included.
    pub failed_calls: u64,
    /// Calls refused because the breaker was open or its probes were taken.
    pub rejected_calls: u64,
    /// Admitted calls that exceeded the timeout.
    pub timed_out_calls: u64,
    /// Times the breaker opened on its own (forced opens not included).
    pub trips: u64,
    /// Consecutive failures counted while closed.
    pub consecutive_failures: u32,
    /// Time spent in the current state.
    pub time_in_state: Duration,
    /// While open: time left before probes are admitted.
    pub open_remaining: Option<Duration>,
}
