//! Health: the seed's report, the counters behind it, and the detailed
//! status.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::ResilientWorkerClient;

/// The mode the client is in: what `health_check` reports as `mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Mode {
    /// In touch with the orchestrator: heartbeats, grants and revokes.
    Normal,
    /// The orchestrator is unreachable: processing the streams held,
    /// probing for the orchestrator.
    Local,
    /// In local mode past the local-mode limit: processing stopped until
    /// the orchestrator answers.
    Halted,
    /// Configured without an orchestrator: processing a fixed set of
    /// streams.
    Standalone,
}

impl Mode {
    /// `normal`, `local`, `halted` or `standalone`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Local => "local",
            Self::Halted => "halted",
            Self::Standalone => "standalone",
        }
    }
}

/// The health report, in the original client's JSON shape plus `mode`.
///
/// The keys never contradict each other: `local_mode_active` is true in
/// every mode but `normal`; `orchestrator_available` is true only in
/// `normal` mode, after a call was answered, and false from the first
/// failed or overdue call (in flight longer than a heartbeat interval)
/// until the next answered one; `assigned_streams` counts the streams the
/// worker may process now (0 when `halted`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// This worker.
    pub server_id: String,
    /// `normal`, `local`, `halted` or `standalone`.
    pub mode: Mode,
    /// The orchestrator answered the last call, none is overdue, and the
    /// client is in normal mode.
    pub orchestrator_available: bool,
    /// The client is not in normal mode.
    pub local_mode_active: bool,
    /// Streams the worker may process now.
    pub assigned_streams: usize,
    /// `closed`, `open`, `half_open` (or `forced_open` / `forced_closed`).
    pub circuit_breaker_state: String,
    /// Time of the last successful call, ISO 8601 (UTC), or `null`.
    pub last_orchestrator_contact: Option<String>,
    /// Why the client is not in normal mode (`null` in normal and
    /// standalone mode): the orchestrator unreachable, or its refusal of
    /// this worker's credentials.
    pub local_mode_reason: Option<String>,
    /// Counters.
    pub metrics: HealthMetrics,
}

/// The counters of a [`HealthReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HealthMetrics {
    /// Calls to the orchestrator (each counted once, retries aside).
    pub total_requests: u64,
    /// Calls that succeeded.
    pub successful_requests: u64,
    /// Calls that failed after their retries (or were refused by the breaker).
    pub failed_requests: u64,
    /// Times the breaker opened.
    pub circuit_breaker_trips: u64,
    /// Times the client entered local mode.
    pub local_mode_activations: u64,
    /// Retries made.
    pub retry_attempts: u64,
    /// Processing records made (durable in the state file) since start.
    pub records_made: u64,
    /// Records in the state file the orchestrator has not acknowledged yet
    /// (earlier runs' included).
    pub records_unsynced: u64,
    /// Records the orchestrator acknowledged since start.
    pub records_uploaded: u64,
}

impl HealthReport {
    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// The client's metrics at one moment ([`ResilientWorkerClient::metrics`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct WorkerMetrics {
    /// The mode.
    pub mode: Mode,
    /// As the health report's `orchestrator_available`.
    pub orchestrator_available: bool,
    /// Streams the worker may process now.
    pub assigned_streams: u64,
    /// `closed`, `open`, `half_open`, `forced_open` or `forced_closed`.
    pub circuit_breaker_state: &'static str,
    /// Seconds since the last successful call (`None`: none yet).
    pub seconds_since_contact: Option<f64>,
    /// The health report's counters.
    pub counters: HealthMetrics,
}

/// Reports a client's metrics at each scrape, through a weak handle.
#[cfg(feature = "prometheus")]
#[derive(Debug)]
struct Collector {
    inner: std::sync::Weak<super::Inner>,
}

#[cfg(feature = "prometheus")]
impl Collector {
    fn one(
        encoder: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        counter: bool,
        value: f64,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        if counter {
            let c = ConstCounter::new(value as u64);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
        } else if value.fract() == 0.0 && value.abs() < 1e15 {
            // Whole numbers print as such.
            let g = ConstGauge::new(value as i64);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
        } else {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
        }
    }

    fn states(
        encoder: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        states: &[&'static str],
        current: &str,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::gauge::ConstGauge;
        let mut metric = encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Gauge)?;
        for &state in states {
            ConstGauge::new(i64::from(state == current)).encode(metric.encode_family(&[("state", state)])?)?;
        }
        Ok(())
    }
}

#[cfg(feature = "prometheus")]
impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(inner) = self.inner.upgrade() else { return Ok(()) };
        let m = ResilientWorkerClient { inner, life: None }.metrics();
        let c = &m.counters;
        Self::states(
            &mut encoder,
            "worker_client_mode",
            "1 for the client's current mode",
            &["normal", "local", "halted", "standalone"],
            m.mode.as_str(),
        )?;
        Self::states(
            &mut encoder,
            "worker_client_circuit_breaker_state",
            "1 for the circuit breaker's current state",
            &["closed", "open", "half_open", "forced_open", "forced_closed"],
            m.circuit_breaker_state,
        )?;
        let gauges: [(&str, &str, f64); 4] = [
            (
                "worker_client_orchestrator_available",
                "1 while the orchestrator answers",
                f64::from(u8::from(m.orchestrator_available)),
            ),
            ("worker_client_assigned_streams", "Streams the worker may process now", m.assigned_streams as f64),
            (
                "worker_client_records_unsynced",
                "Processing records not yet acknowledged by the orchestrator",
                c.records_unsynced as f64,
            ),
            (
                "worker_client_seconds_since_contact",
                "Seconds since the last successful call to the orchestrator (-1: none yet)",
                m.seconds_since_contact.unwrap_or(-1.0),
            ),
        ];
        for (name, help, value) in gauges {
            Self::one(&mut encoder, name, help, false, value)?;
        }
        let counters: [(&str, &str, u64); 8] = [
            ("worker_client_requests", "Calls to the orchestrator (retries aside)", c.total_requests),
            ("worker_client_failed_requests", "Calls that failed after their retries", c.failed_requests),
            ("worker_client_retries", "Retries made", c.retry_attempts),
            ("worker_client_circuit_breaker_trips", "Times the circuit breaker opened", c.circuit_breaker_trips),
            ("worker_client_local_mode_activations", "Times the client entered local mode", c.local_mode_activations),
            ("worker_client_records_made", "Processing records made since start", c.records_made),
            ("worker_client_records_uploaded", "Processing records acknowledged since start", c.records_uploaded),
            ("worker_client_successful_requests", "Calls that succeeded", c.successful_requests),
        ];
        for (name, help, value) in counters {
            Self::one(&mut encoder, name, help, true, value as f64)?;
        }
        Ok(())
    }
}

/// The client's own counters (the breaker and retry keep theirs).
#[derive(Debug, Default)]
pub(super) struct Metrics {
    pub(super) total: AtomicU64,
    pub(super) successful: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) local_mode_activations: AtomicU64,
    pub(super) records_made: AtomicU64,
    pub(super) records_unsynced: AtomicU64,
    pub(super) records_uploaded: AtomicU64,
}

impl ResilientWorkerClient {
    /// The seed's health report, plus `mode` and the record counters.
    /// Answers at once from published state, never behind a call in
    /// flight.
    pub async fn health_check(&self) -> HealthReport {
        self.health_report()
    }

    /// The client's metrics as a typed value, read at once from published
    /// state (for an application's own metrics system; see
    /// [`register_metrics`](Self::register_metrics) for Prometheus).
    pub fn metrics(&self) -> WorkerMetrics {
        let health = self.health_report();
        let last = *self.inner.last_contact.lock().unwrap_or_else(|p| p.into_inner());
        WorkerMetrics {
            mode: health.mode,
            orchestrator_available: health.orchestrator_available,
            assigned_streams: health.assigned_streams as u64,
            circuit_breaker_state: self.inner.breaker.stats().state.as_str(),
            seconds_since_contact: last
                .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
                .map(|d| d.as_secs_f64()),
            counters: health.metrics,
        }
    }

    /// Registers the client's metrics into `registry` (names
    /// `worker_client_*`, read at each scrape; the list is in
    /// `docs/HTTP-API.md`). The registry holds no handle that keeps the
    /// client running: once the application drops its handles, the metrics
    /// are no longer reported. For several clients in one process, give
    /// each a sub-registry with a label of its own:
    /// `client.register_metrics(registry.sub_registry_with_label(("server_id".into(), id.into())))`.
    #[cfg(feature = "prometheus")]
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(Collector { inner: std::sync::Arc::downgrade(&self.inner) }));
    }

    /// [`health_check`](Self::health_check) without the `async`.
    pub(super) fn health_report(&self) -> HealthReport {
        let mode = self.mode();
        let last = *self.inner.last_contact.lock().unwrap_or_else(|p| p.into_inner());
        let breaker = self.inner.breaker.stats();
        let m = &self.inner.metrics;
        let answered = self.inner.last_call_answered.load(Ordering::Acquire) && !self.call_overdue();
        HealthReport {
            server_id: self.inner.config.server_id.clone(),
            mode,
            orchestrator_available: mode == Mode::Normal && answered,
            local_mode_active: mode != Mode::Normal,
            assigned_streams: self.inner.leases.borrow().len(),
            circuit_breaker_state: breaker.state.as_str().to_owned(),
            last_orchestrator_contact: last.map(|t| humantime::format_rfc3339_millis(t).to_string()),
            local_mode_reason: matches!(mode, Mode::Local | Mode::Halted)
                .then(|| self.inner.local_reason.lock().unwrap_or_else(|p| p.into_inner()).clone())
                .flatten(),
            metrics: HealthMetrics {
                total_requests: m.total.load(Ordering::Relaxed),
                successful_requests: m.successful.load(Ordering::Relaxed),
                failed_requests: m.failed.load(Ordering::Relaxed),
                circuit_breaker_trips: breaker.trips,
                local_mode_activations: m.local_mode_activations.load(Ordering::Relaxed),
                retry_attempts: self.inner.retry.stats().retries,
                records_made: m.records_made.load(Ordering::Relaxed),
                records_unsynced: m.records_unsynced.load(Ordering::Relaxed),
                records_uploaded: m.records_uploaded.load(Ordering::Relaxed),
            },
        }
    }

    /// The health report plus configuration, local state, breaker
    /// statistics and history, and retry counters, as JSON.
    pub async fn detailed_status(&self) -> serde_json::Value {
        let health = self.health_check().await;
        let view = self.core_view();
        let counts = self.inner.state.counts().await.ok();
        let b = self.inner.breaker.stats();
        let r = self.inner.retry.stats();
        let c = &self.inner.config;
        serde_json::json!({
            "health": health.to_json(),
            "configuration": {
                "orchestrator_url": c.orchestrator_url,
                "server_id": c.server_id,
                "max_streams": c.max_streams,
                "circuit_failure_threshold": c.breaker.failure_threshold(),
                "circuit_recovery_timeout_ms": c.breaker.recovery_timeout().as_millis() as u64,
                "circuit_success_threshold": c.breaker.success_threshold(),
                "retry_max_attempts": c.retry.max_attempts(),
                "retry_base_delay_ms": c.retry.base_delay().as_millis() as u64,
                "retry_max_delay_ms": c.retry.max_delay().as_millis() as u64,
                "state_path": c.state_path.display().to_string(),
                "local_mode_after_ms": c.local_mode_after.as_millis() as u64,
                "local_mode_limit_ms": c.local_mode_limit.map(|d| d.as_millis() as u64),
            },
            "local_state": {
                "session": view.session.as_ref().map(|(session_id, worker_epoch)| serde_json::json!({"session_id": session_id, "worker_epoch": worker_epoch})),
                "leases": view.leases.iter().map(|(s, e)| serde_json::json!({"stream_id": s, "lease_epoch": e})).collect::<Vec<_>>(),
                "pending_releases": view.pending_releases,
                "processing_halted": self.inner.halted.load(Ordering::Relaxed),
                "records": counts.map(|c| c.0),
                "unsynced_records": counts.map(|c| c.1),
                "next_sequence": self.inner.next_sequence.load(Ordering::Relaxed),
                "heartbeat_interval_ms": view.heartbeat_interval.as_millis() as u64,
                "call_in_flight_ms": self.in_flight_for().map(|d| d.as_millis() as u64),
            },
            "circuit_breaker": {
                "state": b.state.as_str(),
                "total_calls": b.total_calls,
                "successful_calls": b.successful_calls,
                "failed_calls": b.failed_calls,
                "rejected_calls": b.rejected_calls,
                "timed_out_calls": b.timed_out_calls,
                "trips": b.trips,
                "time_in_state_ms": b.time_in_state.as_millis() as u64,
                "history": self.inner.breaker.history().iter().map(|t| serde_json::json!({
                    "at": humantime::format_rfc3339_millis(t.at).to_string(),
                    "from": t.from.as_str(), "to": t.to.as_str(), "cause": t.cause.to_string(),
                })).collect::<Vec<_>>(),
            },
            "retry": { "attempts": r.attempts, "retries": r.retries, "give_ups": r.give_ups, "budget_exhausted": r.budget_exhausted },
        })
    }
}
