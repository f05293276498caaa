//! A circuit breaker: stop calling a service that keeps failing, probe it
//! after a while, resume when it answers again.
//!
//! ```text
//!            failure_threshold consecutive failures
//!            (or failure rate over the window)
//!   CLOSED ───────────────────────────────────────────▶ OPEN
//!     ▲                                                  │  recovery_timeout
//!     │ success_threshold probe successes                ▼  (grows on repeated trips)
//!     └─────────────────────────────────────────── HALF_OPEN ──▶ OPEN on any probe failure
//!                                         (at most half_open_max_calls probes at once)
//! ```
//!
//! # Concurrency and cost
//!
//! The state lives in one atomic word (state + generation). A call in the
//! CLOSED state loads that word, runs, and on success bumps one counter: no
//! lock, no allocation. A call refused while OPEN loads the word, reads the
//! coarse clock (the last kernel tick: see below) and bumps the rejection
//! counter: no lock, no allocation. Failures, half-open probes and state
//! changes take a short mutex.
//!
//! # Clock
//!
//! On Linux and FreeBSD the refusal reads `CLOCK_MONOTONIC_COARSE`, about 5 ns
//! against about 25 ns for the precise clock, and the recovery timeout may end
//! up to one kernel tick (1–4 ms) late, never early. That clock does not know
//! `tokio::time::pause`: tests that pause time and expect a breaker to
//! recover enable this crate's `paused-clock` feature (as tokio's own
//! `test-util`), which makes every read tokio's clock.
//!
//! Every admitted call carries the generation it was admitted in. When its
//! result arrives after the breaker has changed state, the result counts in
//! the statistics but does not move the state machine: a slow call from an
//! earlier cycle can neither close nor reopen the breaker. A half-open probe
//! that is dropped before it finishes gives its slot back and records nothing.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use resilience::{CallError, CircuitBreaker, CircuitBreakerConfig, CircuitState};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), resilience::ConfigError> {
//! let breaker = CircuitBreaker::new(CircuitBreakerConfig::builder().failure_threshold(2).build()?);
//! for _ in 0..2 {
//!     let _ = breaker.call(|| async { Err::<(), _>("connection refused") }).await;
//! }
//! assert_eq!(breaker.state(), CircuitState::Open);
//! let refused = breaker.call(|| async { Ok::<_, &str>(1) }).await;
//! assert!(matches!(refused, Err(CallError::Rejected { state: CircuitState::Open })));
//! # Ok(())
//! # }
//! ```

mod clock;
mod config;
mod error;
mod future;
mod layer;
mod state;
mod window;

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

pub use config::{CircuitBreakerConfig, CircuitBreakerConfigBuilder, FailureRate};
pub use error::CallError;
pub use future::ResponseFuture;
pub use layer::{AnyError, CircuitBreakerLayer, CircuitBreakerService, ClassifyResponse};
pub use state::{CircuitBreakerStats, CircuitState, Transition, TransitionCause};

use self::clock::Clock;
use self::future::Timed;
use self::state::STATE_BITS;
use self::window::Window;
use crate::counter::StripedCounter;

/// How one admitted call ended, as far as the breaker is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The callee answered: this includes answers that are errors of the
    /// caller's making (for gRPC: `INVALID_ARGUMENT`, `NOT_FOUND`, ...).
    Success,
    /// The callee failed or could not be reached.
    Failure,
}

/// A circuit breaker, cheap to clone: clones share one state.
///
/// See the [module documentation](self) for the state machine and its costs.
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

/// Keeps a value on its own cache line so that counters bumped by every call
/// do not slow down the read-mostly state word.
#[derive(Debug, Default)]
#[repr(align(128))]
struct CachePadded<T>(T);

#[derive(Debug, Default)]
struct Counters {
    /// Bumped by every successful call from every thread: striped.
    successful: StripedCounter,
    /// Bumped by every refused call while open: striped.
    rejected: StripedCounter,
    failed: AtomicU64,
    timed_out: AtomicU64,
}

struct Inner {
    /// `state | generation << STATE_BITS`; changed only under `slow`.
    word: CachePadded<AtomicU64>,
    /// Nanoseconds on `clock` at which an OPEN breaker admits probes.
    open_until: AtomicU64,
    consecutive_failures: CachePadded<AtomicU32>,
    counters: Counters,
    window: Option<Window>,
    slow: Mutex<Slow>,
    config: CircuitBreakerConfig,
    clock: Clock,
    changes: watch::Sender<CircuitState>,
}

struct Slow {
    probes_in_flight: u32,
    probe_successes: u32,
    trips_in_a_row: u32,
    trips: u64,
    /// Nanoseconds on the clock.
    entered_at: u64,
    history: VecDeque<Transition>,
}

/// The right to run one call, handed out by [`CircuitBreaker::try_acquire`].
///
/// Report the call's end with [`Permit::record`]. Dropping a permit without
/// recording (the call was cancelled) records nothing and frees a half-open
/// probe slot.
#[must_use = "a permit must be recorded or dropped"]
pub struct Permit<'a> {
    breaker: &'a Inner,
    ticket: Ticket,
}

/// What an admitted call remembers: the state word it was admitted under.
#[derive(Debug, Clone, Copy)]
struct Ticket {
    word: u64,
    probe: bool,
}

fn pack(state: CircuitState, generation: u64) -> u64 {
    state.to_bits() | (generation << STATE_BITS)
}

impl CircuitBreaker {
    /// A breaker in the CLOSED state.
    pub fn new(config: CircuitBreakerConfig) -> Self {
        let clock = Clock::start();
        let window = config.failure_rate.map(|rate| Window::new(rate.window));
        let (changes, _) = watch::channel(CircuitState::Closed);
        let slow = Slow {
            probes_in_flight: 0,
            probe_successes: 0,
            trips_in_a_row: 0,
            trips: 0,
            entered_at: clock.now(),
            history: VecDeque::with_capacity(config.history_capacity.min(64)),
        };
        Self {
            inner: Arc::new(Inner {
                word: CachePadded(AtomicU64::new(pack(CircuitState::Closed, 0))),
                open_until: AtomicU64::new(0),
                consecutive_failures: CachePadded(AtomicU32::new(0)),
                counters: Counters::default(),
                window,
                slow: Mutex::new(slow),
                config,
                clock,
                changes,
            }),
        }
    }

    /// Runs `f` if the breaker admits a call, counting every error as a
    /// failure.
    ///
    /// # Errors
    ///
    /// [`CallError::Rejected`] if the breaker is open (`f` is not called),
    /// [`CallError::Timeout`] if the call exceeds the configured timeout,
    /// [`CallError::Inner`] with the call's own error.
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, CallError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_with(|_: &E| true, f).await
    }

    /// Runs `f` if the breaker admits a call; `is_failure` decides which
    /// errors count as failures. Errors it rejects count as successes (the
    /// callee answered) and are still returned as [`CallError::Inner`].
    ///
    /// ```
    /// use resilience::{CircuitBreaker, CircuitBreakerConfig, CircuitState};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), resilience::ConfigError> {
    /// let breaker = CircuitBreaker::new(CircuitBreakerConfig::builder().failure_threshold(1).build()?);
    /// // "bad request" is the caller's mistake, not the callee's failure.
    /// let _ = breaker.call_with(|e: &&str| *e != "bad request", || async { Err::<(), _>("bad request") }).await;
    /// assert_eq!(breaker.state(), CircuitState::Closed);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call).
    pub async fn call_with<F, Fut, T, E, P>(&self, is_failure: P, f: F) -> Result<T, CallError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        P: FnOnce(&E) -> bool,
    {
        let permit = self.try_acquire()?;
        match Timed::new(f(), self.inner.config.timeout).await {
            Ok(Ok(value)) => {
                permit.record(Outcome::Success);
                Ok(value)
            }
            Ok(Err(e)) => {
                let outcome = if is_failure(&e) { Outcome::Failure } else { Outcome::Success };
                permit.record(outcome);
                Err(CallError::Inner(e))
            }
            Err(timeout) => {
                permit.record_timeout();
                Err(CallError::Timeout { timeout })
            }
        }
    }

    /// Asks for the right to make one call, for callers that run the call
    /// themselves (the tower layer does).
    ///
    /// # Errors
    ///
    /// [`CallError::Rejected`] when the breaker is open or every half-open
    /// probe slot is taken. It carries no payload and allocates nothing.
    pub fn try_acquire<E>(&self) -> Result<Permit<'_>, CallError<E>> {
        match self.inner.acquire() {
            Ok(ticket) => Ok(Permit { breaker: &self.inner, ticket }),
            Err(state) => Err(CallError::Rejected { state }),
        }
    }

    /// As [`try_acquire`](Self::try_acquire), with a permit that owns a
    /// handle to the breaker (for a call that outlives this borrow).
    ///
    /// # Errors
    ///
    /// [`CallError::Rejected`], as `try_acquire`.
    pub fn try_acquire_owned<E>(&self) -> Result<OwnedPermit, CallError<E>> {
        match self.inner.acquire() {
            Ok(ticket) => Ok(OwnedPermit { breaker: self.clone(), ticket: Some(ticket) }),
            Err(state) => Err(CallError::Rejected { state }),
        }
    }

    /// The current state. An OPEN breaker whose recovery timeout has passed
    /// reports OPEN until the next call moves it to HALF_OPEN.
    pub fn state(&self) -> CircuitState {
        CircuitState::from_bits(self.inner.word.0.load(Ordering::Acquire))
    }

    /// A snapshot of the counters and the state.
    pub fn stats(&self) -> CircuitBreakerStats {
        let inner = &*self.inner;
        let slow = inner.lock();
        let word = inner.word.0.load(Ordering::Acquire);
        let state = CircuitState::from_bits(word);
        let c = &inner.counters;
        let successful = c.successful.get();
        let failed = c.failed.load(Ordering::Relaxed);
        let rejected = c.rejected.get();
        let now = inner.clock.now();
        let open_remaining = (state == CircuitState::Open).then(|| match inner.open_until.load(Ordering::Relaxed) {
            u64::MAX => Duration::MAX,
            until => Duration::from_nanos(until.saturating_sub(now)),
        });
        CircuitBreakerStats {
            state,
            total_calls: successful + failed + rejected,
            successful_calls: successful,
            failed_calls: failed,
            rejected_calls: rejected,
            timed_out_calls: c.timed_out.load(Ordering::Relaxed),
            trips: slow.trips,
            consecutive_failures: inner.consecutive_failures.0.load(Ordering::Relaxed),
            time_in_state: Duration::from_nanos(now.saturating_sub(slow.entered_at)),
            open_remaining,
        }
    }

    /// The most recent state changes, oldest first, at most
    /// `history_capacity` of them.
    pub fn history(&self) -> Vec<Transition> {
        self.inner.lock().history.iter().copied().collect()
    }

    /// A receiver that sees every state change (the latest state; use the
    /// history or a listener for every cause).
    pub fn subscribe(&self) -> watch::Receiver<CircuitState> {
        self.inner.changes.subscribe()
    }

    /// The configuration this breaker was built with.
    pub fn config(&self) -> &CircuitBreakerConfig {
        &self.inner.config
    }

    /// Holds the breaker open: every call is refused until [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.inner.force(CircuitState::ForcedOpen, TransitionCause::ForcedOpen);
    }

    /// Holds the breaker closed: every call passes and nothing opens it
    /// until [`reset`](Self::reset).
    pub fn force_closed(&self) {
        self.inner.force(CircuitState::ForcedClosed, TransitionCause::ForcedClosed);
    }

    /// Returns to CLOSED with the state machine's counters cleared (the
    /// statistics are kept).
    pub fn reset(&self) {
        self.inner.force(CircuitState::Closed, TransitionCause::Reset);
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Permit<'_> {
    /// Reports how the call ended.
    pub fn record(self, outcome: Outcome) {
        let ticket = self.ticket;
        let breaker = self.breaker;
        std::mem::forget(self);
        match outcome {
            Outcome::Success => breaker.on_success(ticket),
            Outcome::Failure => breaker.on_failure(ticket, false),
        }
    }

    /// Reports that the call exceeded the timeout (a failure).
    pub fn record_timeout(self) {
        let ticket = self.ticket;
        let breaker = self.breaker;
        std::mem::forget(self);
        breaker.on_failure(ticket, true);
    }

    /// Whether this permit is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.ticket.probe
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.breaker.on_cancel(self.ticket);
    }
}

impl fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("state", &CircuitState::from_bits(self.ticket.word))
            .field("probe", &self.ticket.probe)
            .finish()
    }
}

/// A [`Permit`] that owns a handle to its breaker, for calls whose end is
/// reported from elsewhere: a `'static` future (the tower service's), or a
/// language binding whose caller awaits the call itself
/// ([`CircuitBreaker::try_acquire_owned`]). Dropping it unrecorded records
/// nothing and frees a half-open probe slot, as [`Permit`].
#[must_use = "a permit must be recorded or dropped"]
pub struct OwnedPermit {
    breaker: CircuitBreaker,
    /// `None` once recorded.
    ticket: Option<Ticket>,
}

impl fmt::Debug for OwnedPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedPermit")
            .field("state", &self.ticket.map(|t| CircuitState::from_bits(t.word)))
            .field("probe", &self.is_probe())
            .finish()
    }
}

impl OwnedPermit {
    /// Whether this permit is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.ticket.is_some_and(|t| t.probe)
    }

    /// Reports how the call ended.
    pub fn record(mut self, outcome: Outcome) {
        if let Some(ticket) = self.ticket.take() {
            match outcome {
                Outcome::Success => self.breaker.inner.on_success(ticket),
                Outcome::Failure => self.breaker.inner.on_failure(ticket, false),
            }
        }
    }

    /// Reports that the call exceeded the timeout (a failure).
    pub fn record_timeout(mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.inner.on_failure(ticket, true);
        }
    }
}

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket {
            self.breaker.inner.on_cancel(ticket);
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Slow> {
        // A listener that panicked cannot leave `Slow` half-updated (it runs
        // outside the lock), so a poisoned lock still holds consistent data.
        self.slow.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The admission decision. Lock-free for CLOSED, FORCED_CLOSED,
    /// FORCED_OPEN and an OPEN breaker still inside its recovery timeout.
    #[inline]
    fn acquire(&self) -> Result<Ticket, CircuitState> {
        let word = self.word.0.load(Ordering::Acquire);
        match CircuitState::from_bits(word) {
            CircuitState::Closed | CircuitState::ForcedClosed => Ok(Ticket { word, probe: false }),
            CircuitState::Open => {
                // The coarse clock: one tick late at worst, never early.
                if self.clock.recent() < self.open_until.load(Ordering::Relaxed) {
                    self.reject(CircuitState::Open)
                } else {
                    self.acquire_slow()
                }
            }
            CircuitState::HalfOpen => self.acquire_slow(),
            CircuitState::ForcedOpen => self.reject(CircuitState::ForcedOpen),
        }
    }

    fn reject(&self, state: CircuitState) -> Result<Ticket, CircuitState> {
        self.counters.rejected.increment();
        Err(state)
    }

    #[cold]
    fn acquire_slow(&self) -> Result<Ticket, CircuitState> {
        let mut slow = self.lock();
        let mut word = self.word.0.load(Ordering::Acquire);
        let mut changed = None;
        if CircuitState::from_bits(word) == CircuitState::Open {
            if self.clock.now() < self.open_until.load(Ordering::Relaxed) {
                drop(slow);
                return self.reject(CircuitState::Open);
            }
            changed = Some(self.transition(&mut slow, CircuitState::HalfOpen, TransitionCause::RecoveryTimeoutElapsed));
            word = self.word.0.load(Ordering::Acquire);
        }
        let result = match CircuitState::from_bits(word) {
            CircuitState::HalfOpen if slow.probes_in_flight < self.config.half_open_max_calls => {
                slow.probes_in_flight += 1;
                Ok(Ticket { word, probe: true })
            }
            CircuitState::Closed | CircuitState::ForcedClosed => Ok(Ticket { word, probe: false }),
            state => Err(state),
        };
        drop(slow);
        self.notify(changed);
        match result {
            Ok(ticket) => Ok(ticket),
            Err(state) => self.reject(state),
        }
    }

    #[inline]
    fn on_success(&self, ticket: Ticket) {
        self.counters.successful.increment();
        if ticket.probe {
            return self.on_probe_end(ticket, Outcome::Success);
        }
        if CircuitState::from_bits(ticket.word) != CircuitState::Closed
            || self.word.0.load(Ordering::Relaxed) != ticket.word
        {
            return;
        }
        if self.consecutive_failures.0.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.0.store(0, Ordering::Relaxed);
        }
        if let Some(window) = &self.window {
            window.record(false);
        }
    }

    fn on_failure(&self, ticket: Ticket, timed_out: bool) {
        let counters = &self.counters;
        counters.failed.fetch_add(1, Ordering::Relaxed);
        if timed_out {
            counters.timed_out.fetch_add(1, Ordering::Relaxed);
        }
        if ticket.probe {
            return self.on_probe_end(ticket, Outcome::Failure);
        }
        if CircuitState::from_bits(ticket.word) != CircuitState::Closed
            || self.word.0.load(Ordering::Relaxed) != ticket.word
        {
            return;
        }
        let failures = self.consecutive_failures.0.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let cause = if failures >= self.config.failure_threshold {
            Some(TransitionCause::ConsecutiveFailures { failures })
        } else {
            self.window.as_ref().and_then(|window| {
                let (failed, calls) = window.record(true);
                let rate = self.config.failure_rate?;
                let tripped = calls >= rate.minimum_calls && f64::from(failed) >= rate.threshold * f64::from(calls);
                tripped.then_some(TransitionCause::FailureRate { failures: failed, calls })
            })
        };
        if let Some(cause) = cause {
            let mut slow = self.lock();
            // Another failure may have opened it already.
            let changed = (self.word.0.load(Ordering::Acquire) == ticket.word)
                .then(|| self.transition(&mut slow, CircuitState::Open, cause));
            drop(slow);
            self.notify(changed);
        }
    }

    fn on_probe_end(&self, ticket: Ticket, outcome: Outcome) {
        let mut slow = self.lock();
        if self.word.0.load(Ordering::Acquire) != ticket.word {
            // A result from an earlier half-open cycle: ignored.
            return;
        }
        slow.probes_in_flight = slow.probes_in_flight.saturating_sub(1);
        let changed = match outcome {
            Outcome::Failure => Some(self.transition(&mut slow, CircuitState::Open, TransitionCause::ProbeFailed)),
            Outcome::Success => {
                slow.probe_successes += 1;
                let successes = slow.probe_successes;
                (successes >= self.config.success_threshold).then(|| {
                    self.transition(&mut slow, CircuitState::Closed, TransitionCause::ProbesSucceeded { successes })
                })
            }
        };
        drop(slow);
        self.notify(changed);
    }

    fn on_cancel(&self, ticket: Ticket) {
        if !ticket.probe {
            return;
        }
        let mut slow = self.lock();
        if self.word.0.load(Ordering::Acquire) == ticket.word {
            slow.probes_in_flight = slow.probes_in_flight.saturating_sub(1);
        }
    }

    fn force(&self, to: CircuitState, cause: TransitionCause) {
        let mut slow = self.lock();
        let changed = self.transition(&mut slow, to, cause);
        drop(slow);
        self.notify(Some(changed));
    }

    /// Moves to `to` and bumps the generation. Called with the lock held.
    fn transition(&self, slow: &mut Slow, to: CircuitState, cause: TransitionCause) -> Transition {
        let word = self.word.0.load(Ordering::Acquire);
        let from = CircuitState::from_bits(word);
        let generation = (word >> STATE_BITS).wrapping_add(1);
        let now = self.clock.now();
        match to {
            CircuitState::Open => {
                let open_for = self.config.open_duration(slow.trips_in_a_row);
                // Saturates: an open duration near `Duration::MAX` means
                // "open until forced closed", never an overflow panic.
                let until = now.saturating_add(clock::nanos(open_for));
                self.open_until.store(until, Ordering::Relaxed);
                slow.trips += 1;
                slow.trips_in_a_row = slow.trips_in_a_row.saturating_add(1);
            }
            CircuitState::HalfOpen => {
                slow.probes_in_flight = 0;
                slow.probe_successes = 0;
            }
            CircuitState::Closed | CircuitState::ForcedClosed | CircuitState::ForcedOpen => {
                slow.probes_in_flight = 0;
                slow.probe_successes = 0;
                slow.trips_in_a_row = 0;
                self.consecutive_failures.0.store(0, Ordering::Relaxed);
                if let Some(window) = &self.window {
                    window.reset();
                }
            }
        }
        slow.entered_at = now;
        self.word.0.store(pack(to, generation), Ordering::Release);
        let transition = Transition { at: SystemTime::now(), from, to, cause };
        if slow.history.len() == self.config.history_capacity {
            slow.history.pop_front();
        }
        slow.history.push_back(transition);
        transition
    }

    /// Tells watchers, the listener and the log; called without the lock.
    fn notify(&self, transition: Option<Transition>) {
        let Some(t) = transition else { return };
        match t.to {
            CircuitState::Open | CircuitState::ForcedOpen => {
                tracing::warn!(from = %t.from, to = %t.to, cause = %t.cause, "circuit breaker opened");
            }
            _ => tracing::info!(from = %t.from, to = %t.to, cause = %t.cause, "circuit breaker state changed"),
        }
        self.changes.send_replace(t.to);
        if let Some(listener) = &self.config.listener {
            listener(&t);
        }
    }
}

#[cfg(test)]
mod tests;
