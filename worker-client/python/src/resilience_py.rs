//! The `resilience` crate for the application's own calls: the seed's
//! `CircuitBreakerConfig`, `CircuitBreaker`, `RetryConfig` and retry
//! handler. The state machine, backoff, jitter and retry budget are the
//! crate's; the Python package awaits the calls on the application's event
//! loop (`CircuitBreaker.call`, `RetryHandler.execute_with_retry` in
//! `_resilience.py`) and reports each end here.

use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use pyo3::prelude::*;
use pyo3::types::PyDict;
use resilience::{CallError, CircuitBreaker, ConfigError, Outcome, OwnedPermit, Retry, RetryAction, RetryCall};

use crate::convert::{count, int, seconds};
use crate::errors;

fn config_error(e: &ConfigError) -> PyErr {
    let field = match e {
        ConfigError::Zero { field }
        | ConfigError::ZeroDuration { field }
        | ConfigError::OutOfRange { field, .. }
        | ConfigError::Exceeds { field, .. } => *field,
        _ => "configuration",
    };
    errors::config(field, e.to_string().replace('`', ""))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The seed's `CircuitBreakerConfig`: open after `failure_threshold`
/// consecutive failures, admit probes after `recovery_timeout` seconds,
/// close after `success_threshold` successful probes; a call longer than
/// `timeout` seconds counts as a failure (`None`: no timeout).
#[pyclass(module = "resilient_worker_client._native", frozen, from_py_object)]
#[derive(Debug, Clone)]
pub(crate) struct CircuitBreakerConfig {
    inner: resilience::CircuitBreakerConfig,
}

#[pymethods]
impl CircuitBreakerConfig {
    #[new]
    #[pyo3(signature = (failure_threshold = 5, recovery_timeout = 60.0, success_threshold = 3, timeout = 30.0))]
    fn new(
        #[pyo3(from_py_with = int)] failure_threshold: i128,
        recovery_timeout: f64,
        #[pyo3(from_py_with = int)] success_threshold: i128,
        timeout: Option<f64>,
    ) -> PyResult<Self> {
        let inner = resilience::CircuitBreakerConfig::builder()
            .failure_threshold(count("failure_threshold", failure_threshold)?)
            .recovery_timeout(seconds("recovery_timeout", recovery_timeout)?)
            .success_threshold(count("success_threshold", success_threshold)?)
            .timeout(timeout.map(|t| seconds("timeout", t)).transpose()?)
            .build()
            .map_err(|e| config_error(&e))?;
        Ok(Self { inner })
    }

    #[getter]
    fn failure_threshold(&self) -> u32 {
        self.inner.failure_threshold()
    }

    #[getter]
    fn recovery_timeout(&self) -> f64 {
        self.inner.recovery_timeout().as_secs_f64()
    }

    #[getter]
    fn success_threshold(&self) -> u32 {
        self.inner.success_threshold()
    }

    #[getter]
    fn timeout(&self) -> Option<f64> {
        self.inner.timeout().map(|t| t.as_secs_f64())
    }

    fn __repr__(&self) -> String {
        format!(
            "CircuitBreakerConfig(failure_threshold={}, recovery_timeout={}, success_threshold={}, timeout={})",
            self.failure_threshold(),
            self.recovery_timeout(),
            self.success_threshold(),
            self.timeout().map_or("None".to_owned(), |t| t.to_string()),
        )
    }
}

/// The breaker's state machine; `CircuitBreaker` in Python adds `call`.
#[pyclass(module = "resilient_worker_client._native", subclass, frozen)]
#[derive(Debug)]
pub(crate) struct CircuitBreakerCore {
    breaker: CircuitBreaker,
    name: String,
}

#[pymethods]
impl CircuitBreakerCore {
    #[new]
    #[pyo3(signature = (config = None, name = "circuit_breaker".to_owned(), *_args, **_kwargs))]
    fn new(
        config: Option<CircuitBreakerConfig>,
        name: String,
        _args: &Bound<'_, pyo3::types::PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> Self {
        let config = config.map_or_else(resilience::CircuitBreakerConfig::default, |c| c.inner);
        Self { breaker: CircuitBreaker::new(config), name }
    }

    /// The right to make one call, or `CircuitBreakerOpenError`.
    fn try_acquire(&self, py: Python<'_>) -> PyResult<CircuitPermit> {
        match self.breaker.try_acquire_owned::<()>() {
            Ok(permit) => Ok(CircuitPermit { permit: Mutex::new(Some(permit)) }),
            Err(CallError::Rejected { state }) => {
                let stats = self.breaker.stats();
                let retry_after = stats.open_remaining.filter(|d| *d != Duration::MAX).map(|d| d.as_secs_f64());
                let message = match retry_after {
                    Some(s) => format!("circuit breaker {:?} is {state}: calls fail fast for {s:.1}s more", self.name),
                    None => format!("circuit breaker {:?} is {state}: calls fail fast", self.name),
                };
                Err(errors::new_error(py, "CircuitBreakerOpenError", (message, state.as_str(), retry_after)))
            }
            Err(_) => unreachable!("try_acquire only rejects"),
        }
    }

    /// `closed`, `open`, `half_open`, `forced_open` or `forced_closed`.
    #[getter]
    fn state(&self) -> &'static str {
        self.breaker.state().as_str()
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// The configured call timeout in seconds, or `None`.
    #[getter]
    fn timeout(&self) -> Option<f64> {
        self.breaker.config().timeout().map(|t| t.as_secs_f64())
    }

    #[getter]
    fn config(&self) -> CircuitBreakerConfig {
        CircuitBreakerConfig { inner: self.breaker.config().clone() }
    }

    /// The counters, the state and its history (the seed's statistics).
    fn get_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.breaker.stats();
        let d = PyDict::new(py);
        d.set_item("name", &self.name)?;
        d.set_item("state", s.state.as_str())?;
        d.set_item("total_calls", s.total_calls)?;
        d.set_item("successful_calls", s.successful_calls)?;
        d.set_item("failed_calls", s.failed_calls)?;
        d.set_item("rejected_calls", s.rejected_calls)?;
        d.set_item("timed_out_calls", s.timed_out_calls)?;
        d.set_item("trips", s.trips)?;
        d.set_item("consecutive_failures", s.consecutive_failures)?;
        d.set_item("time_in_state", s.time_in_state.as_secs_f64())?;
        d.set_item("open_remaining", s.open_remaining.filter(|d| *d != Duration::MAX).map(|d| d.as_secs_f64()))?;
        let changes = pyo3::types::PyList::empty(py);
        for t in self.breaker.history() {
            let c = PyDict::new(py);
            c.set_item("at", t.at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64())?;
            c.set_item("from", t.from.as_str())?;
            c.set_item("to", t.to.as_str())?;
            c.set_item("cause", t.cause.to_string())?;
            changes.append(c)?;
        }
        d.set_item("state_changes", changes)?;
        Ok(d)
    }

    /// Back to CLOSED, the state machine's counters cleared.
    fn reset(&self) {
        self.breaker.reset();
    }

    /// Refuse every call until `reset()`.
    fn force_open(&self) {
        self.breaker.force_open();
    }

    /// Admit every call, whatever fails, until `reset()`.
    fn force_closed(&self) {
        self.breaker.force_closed();
    }

    fn __repr__(&self) -> String {
        format!("<CircuitBreaker {:?} {}>", self.name, self.state())
    }
}

/// One admitted call: report how it ended exactly once. Dropped unreported
/// (the call was cancelled), it records nothing.
#[pyclass(module = "resilient_worker_client._native", frozen)]
#[derive(Debug)]
pub(crate) struct CircuitPermit {
    permit: Mutex<Option<OwnedPermit>>,
}

#[pymethods]
impl CircuitPermit {
    fn record_success(&self) {
        if let Some(p) = lock(&self.permit).take() {
            p.record(Outcome::Success);
        }
    }

    fn record_failure(&self) {
        if let Some(p) = lock(&self.permit).take() {
            p.record(Outcome::Failure);
        }
    }

    fn record_timeout(&self) {
        if let Some(p) = lock(&self.permit).take() {
            p.record_timeout();
        }
    }

    /// The call was cancelled: nothing is recorded.
    fn release(&self) {
        lock(&self.permit).take();
    }
}

/// The seed's `RetryConfig`: at most `max_attempts` attempts, waiting
/// `base_delay * exponential_base ** n` seconds (at most `max_delay`)
/// between them, with full jitter when `jitter`.
#[pyclass(module = "resilient_worker_client._native", frozen, from_py_object)]
#[derive(Debug, Clone)]
pub(crate) struct RetryConfig {
    inner: resilience::RetryConfig,
}

#[pymethods]
impl RetryConfig {
    #[new]
    #[pyo3(signature = (max_attempts = 3, base_delay = 1.0, max_delay = 60.0, exponential_base = 2.0, jitter = true))]
    fn new(
        #[pyo3(from_py_with = int)] max_attempts: i128,
        base_delay: f64,
        max_delay: f64,
        exponential_base: f64,
        jitter: bool,
    ) -> PyResult<Self> {
        let inner = resilience::RetryConfig::builder()
            .max_attempts(count("max_attempts", max_attempts)?)
            .base_delay(seconds("base_delay", base_delay)?)
            .max_delay(seconds("max_delay", max_delay)?)
            .exponential_base(exponential_base)
            .jitter(jitter)
            .build()
            .map_err(|e| config_error(&e))?;
        Ok(Self { inner })
    }

    #[getter]
    fn max_attempts(&self) -> u32 {
        self.inner.max_attempts()
    }

    #[getter]
    fn base_delay(&self) -> f64 {
        self.inner.base_delay().as_secs_f64()
    }

    #[getter]
    fn max_delay(&self) -> f64 {
        self.inner.max_delay().as_secs_f64()
    }

    #[getter]
    fn exponential_base(&self) -> f64 {
        self.inner.exponential_base()
    }

    #[getter]
    fn jitter(&self) -> bool {
        self.inner.jitter() != resilience::Jitter::None
    }

    fn __repr__(&self) -> String {
        format!(
            "RetryConfig(max_attempts={}, base_delay={}, max_delay={}, exponential_base={}, jitter={})",
            self.max_attempts(),
            self.base_delay(),
            self.max_delay(),
            self.exponential_base(),
            if self.jitter() { "True" } else { "False" },
        )
    }
}

/// Backoff, jitter, retry budget and counters; `RetryHandler` in Python
/// adds `execute_with_retry`.
#[pyclass(module = "resilient_worker_client._native", subclass, frozen)]
#[derive(Debug)]
pub(crate) struct RetryCore {
    retry: Retry,
}

#[pymethods]
impl RetryCore {
    #[new]
    #[pyo3(signature = (config = None, *_args, **_kwargs))]
    fn new(
        config: Option<RetryConfig>,
        _args: &Bound<'_, pyo3::types::PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> Self {
        Self { retry: Retry::new(config.map_or_else(resilience::RetryConfig::default, |c| c.inner)) }
    }

    /// Starts one call: its first attempt is counted.
    fn begin(&self) -> RetryAttempts {
        RetryAttempts { call: Mutex::new(Some(self.retry.begin())) }
    }

    #[getter]
    fn config(&self) -> RetryConfig {
        RetryConfig { inner: *self.retry.config() }
    }

    /// `attempts`, `retries`, `give_ups` and `budget_exhausted` so far, and
    /// the retry budget's `budget_tokens`.
    fn get_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.retry.stats();
        let d = PyDict::new(py);
        d.set_item("attempts", s.attempts)?;
        d.set_item("retries", s.retries)?;
        d.set_item("give_ups", s.give_ups)?;
        d.set_item("budget_exhausted", s.budget_exhausted)?;
        d.set_item("budget_tokens", self.retry.budget().map(|b| b.tokens()))?;
        Ok(d)
    }
}

/// The attempts of one call.
#[pyclass(module = "resilient_worker_client._native", frozen)]
#[derive(Debug)]
pub(crate) struct RetryAttempts {
    call: Mutex<Option<RetryCall>>,
}

#[pymethods]
impl RetryAttempts {
    /// The attempt failed: seconds to wait before the next one, or `None`
    /// to give up (attempts or budget spent).
    fn failed(&self) -> Option<f64> {
        let mut call = lock(&self.call);
        let wait = call.as_mut()?.failed(RetryAction::Retry, None);
        if wait.is_none() {
            call.take();
        }
        wait.map(|w| w.as_secs_f64())
    }

    /// The attempt succeeded.
    fn succeeded(&self) {
        if let Some(call) = lock(&self.call).take() {
            call.succeeded();
        }
    }

    /// The attempt being made, from 1.
    #[getter]
    fn attempt(&self) -> u32 {
        lock(&self.call).as_ref().map_or(0, RetryCall::attempt)
    }
}
