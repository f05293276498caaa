//! Prometheus metrics (`prometheus-client`), served at `/metrics` by the
//! HTTP listener (`crate::http`).
//!
//! Every handle the hot path touches is resolved once: an RPC's counter and
//! histogram are found by an index into fixed arrays (the method by a
//! `match` on the request path, the code by its number), never by a label
//! lookup per call, and updated with three atomic adds in the calling
//! thread's own shard (no lock, no cache line shared between threads; not
//! `prometheus-client`'s locked histogram), summed when Prometheus scrapes. The fleet's gauges (sessions
//! and leases by state, unassigned streams, the brake, grace) are computed
//! when Prometheus scrapes, from the engine's [`Overview`] (O(workers)),
//! so nothing on the hot path maintains them.
//!
//! `--metrics=false` builds no [`Metrics`] at all: no layer, no counter
//! touched, for measuring what collection costs (`docs/BENCHMARKS.md`).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::Frame;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::engine::{Overview, RevokeReason, WorkerState};
use crate::service::Orchestrator;

/// The RPCs counted by name; anything else is `other`.
const METHODS: [&str; 19] = [
    "WorkerService/Register",
    "WorkerService/Heartbeat",
    "WorkerService/RequestStreams",
    "WorkerService/ReleaseStreams",
    "WorkerService/SyncLocalState",
    "WorkerService/Deregister",
    "AdminService/AddStreams",
    "AdminService/RemoveStreams",
    "AdminService/ListStreams",
    "AdminService/ListWorkers",
    "AdminService/ListAssignments",
    "AdminService/GetClusterStatus",
    "AdminService/DrainWorker",
    "AdminService/PauseRebalancing",
    "AdminService/ResumeRebalancing",
    "Health/Check",
    "Health/Watch",
    "ServerReflection/ServerReflectionInfo",
    "other",
];

/// The index of a request path in [`METHODS`].
fn method_index(path: &str) -> usize {
    let short =
        path.strip_prefix("/orchestrator.v1.").or_else(|| path.strip_prefix("/grpc.health.v1.")).or_else(|| {
            path.strip_prefix("/grpc.reflection.v1.").or_else(|| path.strip_prefix("/grpc.reflection.v1alpha."))
        });
    let Some(short) = short else { return OTHER };
    match short {
        "WorkerService/Register" => 0,
        "WorkerService/Heartbeat" => 1,
        "WorkerService/RequestStreams" => 2,
        "WorkerService/ReleaseStreams" => 3,
        "WorkerService/SyncLocalState" => 4,
        "WorkerService/Deregister" => 5,
        "AdminService/AddStreams" => 6,
        "AdminService/RemoveStreams" => 7,
        "AdminService/ListStreams" => 8,
        "AdminService/ListWorkers" => 9,
        "AdminService/ListAssignments" => 10,
        "AdminService/GetClusterStatus" => 11,
        "AdminService/DrainWorker" => 12,
        "AdminService/PauseRebalancing" => 13,
        "AdminService/ResumeRebalancing" => 14,
        "Health/Check" => 15,
        "Health/Watch" => 16,
        "ServerReflection/ServerReflectionInfo" => 17,
        _ => OTHER,
    }
}

/// The index of `other` in [`METHODS`].
const OTHER: usize = 18;

/// gRPC status codes by number, as Prometheus labels.
use resilience::grpc::CODE_NAMES as CODES;

/// The index of a reason in [`REASONS`] (exhaustive: a new reason must be
/// added here).
fn reason_index(reason: RevokeReason) -> usize {
    match reason {
        RevokeReason::Rebalance => 0,
        RevokeReason::Moved => 1,
        RevokeReason::StreamRemoved => 2,
        RevokeReason::Drain => 3,
        RevokeReason::StaleEpoch => 4,
        RevokeReason::OverCapacity => 5,
    }
}

const REASONS: [RevokeReason; 6] = [
    RevokeReason::Rebalance,
    RevokeReason::Moved,
    RevokeReason::StreamRemoved,
    RevokeReason::Drain,
    RevokeReason::StaleEpoch,
    RevokeReason::OverCapacity,
];

/// A revocation reason as a label: the name the audit log and the status
/// API use.
pub fn reason_label(reason: RevokeReason) -> &'static str {
    crate::store::reason_name(reason)
}

/// Buckets of RPC durations, seconds: 50 µs to 10 s.
const RPC_BUCKETS: [f64; 16] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Buckets of group-commit durations, seconds: 100 µs to 10 s.
const COMMIT_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0];

/// Buckets of group-commit sizes, batches.
const BATCH_BUCKETS: [f64; 11] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

type Labels = Vec<(&'static str, &'static str)>;

/// The orchestrator's metrics: one per process, shared by the gRPC layer,
/// the service, the store thread and the HTTP listener; a replica keeps it
/// across its terms, so counters never go back.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Per method: calls by code and the duration histogram, in shards
    /// (see [`RpcStats`]); encoded at scrape time.
    rpc: Arc<Vec<RpcStats>>,
    moves: [Counter; 6],
    grants: Counter,
    expiries: Counter,
    shed: Counter,
    store: StoreMetrics,
}

/// The store thread's handles.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    commit_seconds: Histogram,
    batch_size: Histogram,
}

impl StoreMetrics {
    /// One group commit: how long it took and how many batches it wrote.
    pub fn observe_commit(&self, seconds: f64, batches: usize) {
        self.commit_seconds.observe(seconds);
        self.batch_size.observe(batches as f64);
    }
}

/// What this process is, for the HTTP listener.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Role {
    /// One orchestrator on SQLite.
    #[default]
    Standalone,
    /// The replica holding the leader lease.
    Leader,
    /// A replica waiting for the lease; `leader` is the leader's
    /// advertised address, when known.
    Follower {
        /// The leader's address.
        leader: Option<String>,
    },
}

/// The orchestrator being served, if any (none on a follower, before the
/// first term, or once stopped), and the process's role: where the
/// scrape-time gauges and the dashboard read from.
#[derive(Debug, Default)]
pub struct Fleet {
    current: RwLock<(Option<Orchestrator>, Role)>,
}

impl Fleet {
    /// Serves from `orchestrator` in `role` (a term started, a follower's
    /// hint changed), or from nothing (`None`: stopped; a follower).
    pub fn set(&self, orchestrator: Option<Orchestrator>, role: Role) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (orchestrator, role);
    }

    /// The orchestrator being served, if any.
    pub fn current(&self) -> Option<Orchestrator> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    /// The orchestrator being served, if any, and the role.
    pub fn get(&self) -> (Option<Orchestrator>, Role) {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Metrics {
    /// Builds every metric and resolves its handles; the fleet's gauges
    /// are read from `fleet` at each scrape.
    pub fn new(fleet: Arc<Fleet>) -> Self {
        let mut registry = Registry::default();
        let rpc: Arc<Vec<RpcStats>> = Arc::new(METHODS.iter().map(|_| RpcStats::default()).collect());
        registry.register_collector(Box::new(RpcCollector(Arc::clone(&rpc))));

        let moves_family = Family::<Labels, Counter>::default();
        registry.register(
            "orchestrator_moves",
            "Leases revoked (a stream leaving its worker), by reason",
            moves_family.clone(),
        );
        let moves =
            std::array::from_fn(|i| moves_family.get_or_create_owned(&vec![("reason", reason_label(REASONS[i]))]));
        let grants = Counter::default();
        registry.register("orchestrator_lease_grants", "Leases granted", grants.clone());
        let expiries = Counter::default();
        registry.register(
            "orchestrator_session_expiries",
            "Worker sessions expired (no heartbeat within the session timeout, or not back within the grace period)",
            expiries.clone(),
        );
        let shed = Counter::default();
        registry.register(
            "orchestrator_requests_shed",
            "Calls refused UNAVAILABLE by admission control (pools or buffers full)",
            shed.clone(),
        );
        let commit_seconds = Histogram::new(COMMIT_BUCKETS.iter().copied());
        registry.register(
            "orchestrator_store_commit_duration_seconds",
            "Group commit duration (one transaction)",
            commit_seconds.clone(),
        );
        let batch_size = Histogram::new(BATCH_BUCKETS.iter().copied());
        registry.register("orchestrator_store_batch_size", "Batches written per group commit", batch_size.clone());
        let info = Family::<Labels, Gauge>::default();
        info.get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))]).set(1);
        registry.register("orchestrator_build_info", "Always 1; the orchestrator's version as a label", info);
        registry.register_collector(Box::new(FleetCollector(fleet)));
        Self { registry, rpc, moves, grants, expiries, shed, store: StoreMetrics { commit_seconds, batch_size } }
    }

    /// The store thread's handles.
    pub fn store(&self) -> StoreMetrics {
        self.store.clone()
    }

    /// The counter of shed calls (admission control).
    pub(crate) fn shed(&self) -> Counter {
        self.shed.clone()
    }

    /// Counts what one engine event changed.
    pub(crate) fn observe_changes(&self, changes: &[crate::engine::Change]) {
        use crate::engine::Change;
        for change in changes {
            match change {
                Change::LeaseGranted { .. } => {
                    self.grants.inc();
                }
                Change::LeaseRevoking { reason, .. } => {
                    self.moves[reason_index(*reason)].inc();
                }
                Change::WorkerExpired { .. } => {
                    self.expiries.inc();
                }
                Change::GraceEnded { missing } => {
                    self.expiries.inc_by(missing.len() as u64);
                }
                _ => {}
            }
        }
    }

    /// The registry in the Prometheus text format (version 0.0.4).
    ///
    /// # Errors
    ///
    /// Only if formatting fails (it does not, into a `String`).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    fn record(&self, method: usize, code: usize, started: Instant) {
        // A code beyond the known ones counts as UNKNOWN.
        let code = if code < CODES.len() { code } else { 2 };
        self.rpc[method].record(code, started.elapsed());
    }
}

/// Shards of each method's counters: a thread adds to its own shard, so
/// threads answering calls at once never write to the same cache line (up
/// to this many threads; beyond, threads share shards, still correctly).
const SHARDS: usize = 32;

/// The shard of the current thread (threads take shards in turn).
fn shard() -> usize {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static SHARD: usize = (NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS as u64) as usize;
    }
    SHARD.with(|s| *s)
}

/// One shard of a method's counters, on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    /// Calls by status code.
    codes: [AtomicU64; 17],
    /// Calls per bucket of [`RPC_BUCKETS`], the last one above them all.
    buckets: [AtomicU64; RPC_BUCKETS.len() + 1],
    /// Total duration, nanoseconds.
    sum_nanos: AtomicU64,
}

/// One method's calls by code and its duration histogram: three atomic
/// adds per call, no lock, in the calling thread's shard; summed when
/// Prometheus scrapes. Series appear once a (method, code) has happened.
#[derive(Debug, Default)]
struct RpcStats {
    shards: [Shard; SHARDS],
}

impl RpcStats {
    fn record(&self, code: usize, d: std::time::Duration) {
        let s = &self.shards[shard()];
        let seconds = d.as_secs_f64();
        let bucket = RPC_BUCKETS.iter().position(|&b| seconds <= b).unwrap_or(RPC_BUCKETS.len());
        s.codes[code].fetch_add(1, Ordering::Relaxed);
        s.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        s.sum_nanos.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn sum(&self, pick: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| pick(s).load(Ordering::Relaxed)).sum()
    }
}

/// Encodes the RPC counters and duration histograms of the methods that
/// were called.
#[derive(Debug)]
struct RpcCollector(Arc<Vec<RpcStats>>);

impl Collector for RpcCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(
            "orchestrator_rpc_requests",
            "gRPC calls answered, by method and status code",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (method, stats) in METHODS.iter().zip(self.0.iter()) {
            for (c, code) in CODES.iter().enumerate() {
                let n = stats.sum(|s| &s.codes[c]);
                if n > 0 {
                    let labels = [("method", *method), ("code", *code)];
                    prometheus_client::metrics::counter::ConstCounter::new(n).encode(metric.encode_family(&labels)?)?;
                }
            }
        }
        let mut metric = encoder.encode_descriptor(
            "orchestrator_rpc_duration_seconds",
            "gRPC call duration, from the request's arrival to the end of the answer (admission included)",
            None,
            prometheus_client::metrics::MetricType::Histogram,
        )?;
        for (method, stats) in METHODS.iter().zip(self.0.iter()) {
            let counts: Vec<u64> = (0..=RPC_BUCKETS.len()).map(|b| stats.sum(|s| &s.buckets[b])).collect();
            let count: u64 = counts.iter().sum();
            if count == 0 {
                continue;
            }
            let buckets: Vec<(f64, u64)> =
                RPC_BUCKETS.iter().copied().chain(std::iter::once(f64::INFINITY)).zip(counts).collect();
            let sum = stats.sum(|s| &s.sum_nanos) as f64 / 1e9;
            let labels = [("method", *method)];
            metric
                .encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }
}

/// The scrape-time gauges.
#[derive(Debug)]
struct FleetCollector(Arc<Fleet>);

impl FleetCollector {
    fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: i64) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(value);
        let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
        gauge.encode(metric)
    }

    fn by_label(
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        label: &'static str,
        values: &[(&'static str, i64)],
    ) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Gauge)?;
        for &(value, n) in values {
            let labels = [(label, value)];
            ConstGauge::new(n).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Collector for FleetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let overview = self.0.current().and_then(|o| o.overview(0).ok());
        Self::gauge(
            &mut encoder,
            "orchestrator_leader",
            "1 while this process serves the fleet (a standalone orchestrator, or the leading replica); 0 on a follower",
            i64::from(overview.is_some()),
        )?;
        let Some(Overview { status, workers_by_state: w, leases_active, leases_revoking, leases_orphaned, .. }) =
            overview
        else {
            return Ok(());
        };
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Self::by_label(
            &mut encoder,
            "orchestrator_sessions",
            "Known workers by session state",
            "state",
            &WorkerState::ALL.map(|s| (s.as_str(), i64::from(w[s as usize]))),
        )?;
        Self::by_label(
            &mut encoder,
            "orchestrator_leases",
            "Leases by state (orphaned: the holder is gone, the stream is unassigned)",
            "state",
            &[("active", n(leases_active)), ("revoking", n(leases_revoking)), ("orphaned", n(leases_orphaned))],
        )?;
        Self::gauge(&mut encoder, "orchestrator_streams", "Streams in the catalog", n(status.total_streams))?;
        Self::gauge(
            &mut encoder,
            "orchestrator_streams_unassigned",
            "Catalog streams no live worker holds",
            n(status.total_streams.saturating_sub(status.assigned_streams)),
        )?;
        Self::gauge(
            &mut encoder,
            "orchestrator_capacity_streams",
            "Sum of the live, non-draining workers' max_streams",
            n(status.total_capacity),
        )?;
        Self::gauge(
            &mut encoder,
            "orchestrator_brake_engaged",
            "1 while the mass-failure brake holds back the streams of workers that went silent together",
            i64::from(status.brake_engaged),
        )?;
        Self::gauge(
            &mut encoder,
            "orchestrator_grace_active",
            "1 during the grace period after a restart (known workers may re-register and keep their leases)",
            i64::from(status.grace_until.is_some()),
        )?;
        Self::gauge(
            &mut encoder,
            "orchestrator_rebalancing_paused",
            "1 while an operator has paused rebalancing",
            i64::from(status.rebalancing_paused),
        )
    }
}

/// The tower layer that counts and times every gRPC call (the server puts
/// it outermost, so refused and shed calls count too).
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl RpcMetricsLayer {
    /// The layer counting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetered<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetered { inner, metrics: Arc::clone(&self.metrics) }
    }
}

/// A service wrapped by [`RpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RpcMetered<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type Body = tonic::body::Body;

impl<S> tower::Service<http::Request<Body>> for RpcMetered<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let mut recorder = Recorder {
            metrics: Arc::clone(&self.metrics),
            method: method_index(request.uri().path()),
            started: Instant::now(),
            done: false,
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            // A trailers-only answer (every error) has its code in the headers.
            if let Some(code) = grpc_status(response.headers()) {
                recorder.finish(code);
                return Ok(response);
            }
            Ok(response.map(|body| Body::new(MeteredBody { inner: body, recorder })))
        })
    }
}

/// The code in a `grpc-status` header or trailer.
fn grpc_status(headers: &http::HeaderMap) -> Option<usize> {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// Records one call exactly once: with its code when the answer says it,
/// or as CANCELLED when dropped first (the client went away while the call
/// was handled, or before its answer's trailers were sent).
struct Recorder {
    metrics: Arc<Metrics>,
    method: usize,
    started: Instant,
    done: bool,
}

impl Recorder {
    fn finish(&mut self, code: usize) {
        if !self.done {
            self.done = true;
            self.metrics.record(self.method, code, self.started);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.finish(1);
    }
}

/// An answer's body that records the call when its trailers go out (or as
/// CANCELLED if it is dropped before, the client having gone).
struct MeteredBody {
    inner: Body,
    recorder: Recorder,
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    self.recorder.finish(code);
                }
            }
            Poll::Ready(Some(Err(status))) => self.recorder.finish(status.code() as usize),
            // The end without trailers: not a gRPC answer; counted as OK
            // only if nothing said otherwise.
            Poll::Ready(None) => self.recorder.finish(0),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_their_methods_and_unknown_ones_to_other() {
        assert_eq!(METHODS[method_index("/orchestrator.v1.WorkerService/Heartbeat")], "WorkerService/Heartbeat");
        assert_eq!(METHODS[method_index("/orchestrator.v1.AdminService/DrainWorker")], "AdminService/DrainWorker");
        assert_eq!(METHODS[method_index("/grpc.health.v1.Health/Check")], "Health/Check");
        assert_eq!(
            METHODS[method_index("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")],
            "ServerReflection/ServerReflectionInfo"
        );
        for path in ["/orchestrator.v1.WorkerService/Nope", "/x", "", "/orchestrator.v2.WorkerService/Heartbeat"] {
            assert_eq!(method_index(path), OTHER, "{path}");
        }
        for (i, name) in METHODS[..OTHER].iter().enumerate() {
            let prefix = if name.starts_with("Health") {
                "/grpc.health.v1."
            } else if name.starts_with("ServerReflection") {
                "/grpc.reflection.v1."
            } else {
                "/orchestrator.v1."
            };
            assert_eq!(method_index(&format!("{prefix}{name}")), i, "{name}");
        }
    }

    #[test]
    fn the_text_names_every_documented_metric() {
        let m = Metrics::new(Arc::default());
        m.record(1, 0, Instant::now());
        m.record(1, 14, Instant::now());
        m.observe_changes(&[crate::engine::Change::WorkerExpired { server_id: "w".into() }]);
        m.store().observe_commit(0.002, 3);
        let text = m.encode().unwrap();
        for line in [
            "orchestrator_rpc_requests_total{method=\"WorkerService/Heartbeat\",code=\"OK\"} 1",
            "orchestrator_rpc_requests_total{method=\"WorkerService/Heartbeat\",code=\"UNAVAILABLE\"} 1",
            "orchestrator_rpc_duration_seconds_count{method=\"WorkerService/Heartbeat\"} 2",
            "orchestrator_session_expiries_total 1",
            "orchestrator_moves_total{reason=\"drain\"} 0",
            "orchestrator_store_batch_size_sum 3",
            "orchestrator_build_info{version=\"",
            "orchestrator_leader 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
