//! `ResilientWorkerClient` for Python: the Rust client, built lazily.
//!
//! `create_resilient_worker_client` only validates the configuration (the
//! seed's factory is synchronous: no connection, no state file); the Rust client, whose
//! construction opens the state file, is built on the runtime by the first
//! awaited method. Every awaited method runs on the shared runtime and
//! resolves its awaitable on the caller's event loop.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use pyo3::IntoPyObjectExt;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use tokio::sync::{OnceCell, watch};
use worker_client::{ClientBuilder, ClientTls, ResilientWorkerClient as Client};

use crate::complete::Completer;
use crate::convert::{self, count, int, json, seconds, shown};
use crate::errors;

/// Every client made in this process, for the interpreter-exit hook.
static LIVE: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

/// Shutdowns of clients dropped without `shutdown()`, still running: the
/// interpreter-exit hook waits for them.
static DROPPED: Mutex<Vec<tokio::task::JoinHandle<()>>> = Mutex::new(Vec::new());

#[derive(Debug)]
struct Shared {
    builder: ClientBuilder,
    /// The validated configuration's values the properties show.
    server_id: String,
    orchestrator_url: String,
    max_streams: u32,
    state_path: PathBuf,
    client: OnceCell<Client>,
    /// `shutdown()` has been called: no client is built any more, lease
    /// iterators end.
    closed: watch::Sender<bool>,
    /// The Rust client's shutdown has finished (or there was nothing to
    /// shut down).
    finished: AtomicBool,
}

impl Shared {
    /// The Rust client, built on first use.
    async fn built(&self) -> Result<&Client, worker_client::Error> {
        if *self.closed.borrow() && self.client.get().is_none() {
            return Err(worker_client::Error::ShutDown);
        }
        // Checked again inside the cell's initialisation, which `shut_down`
        // also goes through: a build never starts after a shutdown began.
        self.client
            .get_or_try_init(|| async {
                if *self.closed.borrow() {
                    return Err(worker_client::Error::ShutDown);
                }
                self.builder.clone().build().await
            })
            .await
    }

    /// Shuts the client down: waits for a build in progress (so a client
    /// being built by a concurrent first call is shut down too), builds
    /// none. Idempotent, as the Rust client's shutdown.
    async fn shut_down(&self) -> Option<worker_client::ShutdownReport> {
        self.closed.send_replace(true);
        let client = self.client.get_or_try_init(|| async { Err(worker_client::Error::ShutDown) }).await.ok();
        let report = match client {
            Some(client) => Some(client.shutdown().await),
            None => None,
        };
        self.finished.store(true, Ordering::Release);
        report
    }
}

impl Drop for Shared {
    /// A client dropped without `shutdown()` (its last Python reference
    /// gone) is shut down in the background, with a warning: in Rust a
    /// dropped client stops at once, as a crash; a Python application
    /// that loses its client by accident should not silently stop
    /// heartbeating with its streams held until the session expires.
    fn drop(&mut self) {
        if self.finished.load(Ordering::Acquire) {
            return;
        }
        let Some(client) = self.client.take() else { return };
        let server_id = self.server_id.clone();
        let handle = crate::runtime().spawn(async move {
            tracing::warn!(
                target: "resilient_worker_client",
                %server_id,
                "the client was dropped without shutdown(): shutting it down"
            );
            let report = client.shutdown().await;
            tracing::info!(target: "resilient_worker_client", ?report, "shut down after being dropped");
        });
        let mut dropped = lock(&DROPPED);
        dropped.retain(|h| !h.is_finished());
        dropped.push(handle);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The endpoints: one URL, several comma-separated, or a list of URLs.
fn urls(value: &Bound<'_, PyAny>) -> PyResult<String> {
    if value.is_instance_of::<PyString>() {
        return value.extract();
    }
    let list: Vec<String> = value.extract().map_err(|_| {
        errors::config("orchestrator_url", "must be a URL string (several comma-separated) or a list of URL strings")
    })?;
    Ok(list.join(","))
}

/// `state_history`: synced records kept, at least 1 (checked by the builder).
fn history(records: i128) -> PyResult<u64> {
    u64::try_from(records).map_err(|_| {
        errors::config("state_history", format!("must be between 1 and {}, got {}", u64::MAX, shown(records)))
    })
}

fn optional_seconds(setting: &str, value: Option<f64>) -> PyResult<Option<Duration>> {
    value.map(|v| seconds(setting, v)).transpose()
}

/// Builds a client with the seed's configuration names and defaults (and
/// every other setting of the Rust client by keyword). Synchronous: it
/// reads the TLS files, if any, but opens no connection and no state file;
/// those wait for the first awaited call (`register()`, `start()`, …).
/// Durations are seconds.
///
/// Raises `ConfigurationError` (a `ValueError`) naming the setting.
#[pyfunction]
#[pyo3(signature = (
    orchestrator_url,
    server_id,
    max_streams,
    circuit_failure_threshold = 5,
    circuit_recovery_timeout = 60.0,
    retry_max_attempts = 3,
    retry_base_delay = 1.0,
    *,
    circuit_success_threshold = 3,
    circuit_timeout = 30.0,
    retry_max_delay = 60.0,
    retry_exponential_base = 2.0,
    retry_jitter = true,
    state_path = None,
    state_sync_full = false,
    state_history = 5000,
    heartbeat_interval = None,
    local_mode_after = 30.0,
    local_mode_limit = None,
    reconnect_base_delay = 1.0,
    reconnect_max_delay = 30.0,
    connect_timeout = 5.0,
    auth_token = None,
    tls_ca_file = None,
    tls_cert_file = None,
    tls_key_file = None,
    tls_domain = None,
    shutdown_timeout = 10.0,
    client_version = None,
))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn create_resilient_worker_client(
    orchestrator_url: &Bound<'_, PyAny>,
    server_id: String,
    #[pyo3(from_py_with = int)] max_streams: i128,
    #[pyo3(from_py_with = int)] circuit_failure_threshold: i128,
    circuit_recovery_timeout: f64,
    #[pyo3(from_py_with = int)] retry_max_attempts: i128,
    retry_base_delay: f64,
    #[pyo3(from_py_with = int)] circuit_success_threshold: i128,
    circuit_timeout: f64,
    retry_max_delay: f64,
    retry_exponential_base: f64,
    retry_jitter: bool,
    state_path: Option<PathBuf>,
    state_sync_full: bool,
    #[pyo3(from_py_with = int)] state_history: i128,
    heartbeat_interval: Option<f64>,
    local_mode_after: f64,
    local_mode_limit: Option<f64>,
    reconnect_base_delay: f64,
    reconnect_max_delay: f64,
    connect_timeout: f64,
    auth_token: Option<String>,
    tls_ca_file: Option<PathBuf>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    tls_domain: Option<String>,
    shutdown_timeout: f64,
    client_version: Option<String>,
) -> PyResult<ResilientWorkerClient> {
    let mut b = Client::builder(urls(orchestrator_url)?, server_id)
        .max_streams(count("max_streams", max_streams)?)
        .circuit_failure_threshold(count("circuit_failure_threshold", circuit_failure_threshold)?)
        .circuit_recovery_timeout(seconds("circuit_recovery_timeout", circuit_recovery_timeout)?)
        .retry_max_attempts(count("retry_max_attempts", retry_max_attempts)?)
        .retry_base_delay(seconds("retry_base_delay", retry_base_delay)?)
        .circuit_success_threshold(count("circuit_success_threshold", circuit_success_threshold)?)
        .circuit_timeout(seconds("circuit_timeout", circuit_timeout)?)
        .retry_max_delay(seconds("retry_max_delay", retry_max_delay)?)
        .retry_exponential_base(retry_exponential_base)
        .retry_jitter(retry_jitter)
        .state_sync_full(state_sync_full)
        .state_history(history(state_history)?)
        .local_mode_after(seconds("local_mode_after", local_mode_after)?)
        .reconnect_backoff(
            seconds("reconnect_base_delay", reconnect_base_delay)?,
            seconds("reconnect_max_delay", reconnect_max_delay)?,
        )
        .connect_timeout(seconds("connect_timeout", connect_timeout)?)
        .shutdown_timeout(seconds("shutdown_timeout", shutdown_timeout)?)
        .client_version(
            client_version
                .unwrap_or_else(|| concat!("resilient-worker-client-python/", env!("CARGO_PKG_VERSION")).to_owned()),
        );
    if let Some(path) = state_path {
        b = b.state_path(path);
    }
    if let Some(d) = optional_seconds("heartbeat_interval", heartbeat_interval)? {
        b = b.heartbeat_interval(d);
    }
    if let Some(d) = optional_seconds("local_mode_limit", local_mode_limit)? {
        b = b.local_mode_limit(d);
    }
    if let Some(token) = auth_token {
        b = b.auth_token(token);
    }
    b = match (tls_ca_file, tls_cert_file, tls_key_file) {
        (None, None, None) => {
            if tls_domain.is_some() {
                return Err(errors::config("tls_domain", "needs tls_ca_file"));
            }
            b
        }
        (Some(ca), cert, key) => {
            let identity = match (cert, key) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                (Some(_), None) => return Err(errors::config("tls_key_file", "tls_cert_file needs tls_key_file")),
                (None, Some(_)) => return Err(errors::config("tls_cert_file", "tls_key_file needs tls_cert_file")),
            };
            let mut tls = ClientTls::from_files(ca, identity).map_err(|e| errors::config("tls_ca_file", e))?;
            if let Some(domain) = tls_domain {
                tls = tls.domain_name(domain);
            }
            b.tls(tls)
        }
        (None, _, _) => return Err(errors::config("tls_ca_file", "client certificates need tls_ca_file")),
    };
    ResilientWorkerClient::new(b)
}

/// A client in **standalone mode** (the seed's "orchestrator disabled"): no
/// orchestrator; the worker processes exactly `streams`, records are
/// durable in the state file, `register()` and `send_heartbeat()` answer
/// `False`, `health_check()` reports `mode: "standalone"`.
#[pyfunction]
#[pyo3(signature = (server_id, streams, *, state_path = None, state_history = 5000))]
pub(crate) fn create_standalone_worker_client(
    server_id: String,
    #[pyo3(from_py_with = convert::stream_ids)] streams: Vec<Result<i64, Bound<'_, PyAny>>>,
    state_path: Option<PathBuf>,
    #[pyo3(from_py_with = int)] state_history: i128,
) -> PyResult<ResilientWorkerClient> {
    // The first id out of range, in the Rust builder's words (it checks
    // those within 64 bits again).
    let streams = streams
        .into_iter()
        .map(|id| match id {
            Ok(id) if id > 0 => Ok(id),
            Ok(id) => Err(errors::config("streams", format!("stream id {id} must be greater than 0"))),
            Err(int) => {
                let bound = if int.lt(0)? { "greater than 0".to_owned() } else { format!("at most {}", i64::MAX) };
                Err(errors::config("streams", format!("stream id {} must be {bound}", convert::int_text(&int))))
            }
        })
        .collect::<PyResult<Vec<i64>>>()?;
    let mut b = Client::standalone(server_id, streams).state_history(history(state_history)?);
    if let Some(path) = state_path {
        b = b.state_path(path);
    }
    ResilientWorkerClient::new(b)
}

/// Shuts down, within each one's `shutdown_timeout`, every client that was
/// used but not shut down (or whose shutdown was cut short), and waits for
/// the shutdowns of clients dropped without one: registered at import with
/// `atexit`, so an application that exits without `await
/// client.shutdown()` still uploads its records and releases its streams,
/// and leaves no thread behind. Then it hands the last log lines to
/// `logging`.
#[pyfunction]
pub(crate) fn shutdown_at_exit(py: Python<'_>) {
    loop {
        let live: Vec<Arc<Shared>> = lock(&LIVE).drain(..).filter_map(|w| w.upgrade()).collect();
        let dropped: Vec<_> = lock(&DROPPED).drain(..).collect();
        if live.is_empty() && dropped.is_empty() {
            break;
        }
        py.detach(|| {
            crate::runtime().block_on(async {
                for handle in dropped {
                    let _ = handle.await;
                }
                for shared in live {
                    if shared.finished.load(Ordering::Acquire) {
                        continue;
                    }
                    // (A client being built is waited for and shut down; one
                    // whose shutdown is under way is waited for.)
                    if !*shared.closed.borrow() && shared.client.get().is_some() {
                        tracing::warn!(
                            target: "resilient_worker_client",
                            server_id = %shared.server_id,
                            "the interpreter is exiting without shutdown(): shutting the client down now"
                        );
                    }
                    if let Some(report) = shared.shut_down().await {
                        tracing::info!(target: "resilient_worker_client", ?report, "shut down at interpreter exit");
                    }
                }
            });
        });
    }
    crate::log::flush(py);
}

/// The resilient client. Make one with `create_resilient_worker_client`.
#[pyclass(module = "resilient_worker_client._native", subclass, frozen)]
#[derive(Debug)]
pub(crate) struct ResilientWorkerClient {
    shared: Arc<Shared>,
}

impl ResilientWorkerClient {
    fn new(builder: ClientBuilder) -> PyResult<Self> {
        let config = builder.clone().config().map_err(errors::client)?;
        let shared = Arc::new(Shared {
            server_id: config.server_id().to_owned(),
            orchestrator_url: config.orchestrator_url().to_owned(),
            max_streams: config.max_streams(),
            state_path: config.state_path().to_owned(),
            builder,
            client: OnceCell::new(),
            closed: watch::channel(false).0,
            finished: AtomicBool::new(false),
        });
        let mut live = lock(&LIVE);
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&shared));
        Ok(Self { shared })
    }

    /// Runs `f(client)` on the runtime (the client built first if need be)
    /// and completes `future` with its result through `completer`. The
    /// result becomes a Python object on the loop's thread. Cancelling the
    /// Python await does not stop the call: it finishes, within its own
    /// timeouts, and its result is dropped.
    fn call<F, Fut, T>(&self, completer: &Completer, future: Py<PyAny>, f: F)
    where
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, worker_client::Error>> + Send + 'static,
        T: for<'py> IntoPyObject<'py> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        let pending = completer.pending(future);
        crate::runtime().spawn(async move {
            let result = match shared.built().await {
                Ok(client) => f(client.clone()).await,
                Err(e) => Err(e),
            };
            // Let go of the client before waking Python: the caller may
            // drop its last reference as soon as the await returns, and the
            // client must then be dropped (and shut down) at once, not when
            // this task gets round to it.
            drop(shared);
            pending.finish(Box::new(move |py| to_python(py, result)));
        });
    }
}

/// A call's result as a Python object, or its error as the exception of
/// its kind (made here, on the loop's thread, which holds the GIL).
fn to_python<T: for<'py> IntoPyObject<'py>>(
    py: Python<'_>,
    result: Result<T, worker_client::Error>,
) -> PyResult<Py<PyAny>> {
    match result {
        Ok(value) => value.into_py_any(py),
        Err(e) => Err(errors::client(e)),
    }
}

/// A JSON document, made into Python objects on the loop's thread.
struct Json(serde_json::Value);

impl<'py> IntoPyObject<'py> for Json {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json(py, &self.0)
    }
}

/// The awaited methods take the running loop's `Completer` and a future of
/// that loop, and complete the future; the package's coroutines
/// (`_client.py`) make both and await the future.
#[pymethods]
impl ResilientWorkerClient {
    /// Registers with the orchestrator, presenting the leases of an earlier
    /// run and uploading its unsynced records. `True` when registered,
    /// `False` when the orchestrator is unreachable (then in local mode if
    /// streams are held). Starts no background loop (see `start()`).
    fn register(&self, completer: &Completer, future: Py<PyAny>) {
        self.call(completer, future, |c| async move { c.register().await });
    }

    /// Registers and starts the Rust background loop: heartbeats at the
    /// orchestrator's interval, applies grants and revocations, enters and
    /// leaves local mode. For applications without a heartbeat loop of
    /// their own. Idempotent.
    fn start(&self, completer: &Completer, future: Py<PyAny>) {
        self.call(completer, future, |c| async move { c.start().await });
    }

    /// One heartbeat: `True` when the orchestrator answered, `False` in
    /// local mode (as the seed's client).
    fn send_heartbeat(&self, completer: &Completer, future: Py<PyAny>) {
        self.call(completer, future, |c| async move { c.send_heartbeat().await });
    }

    /// Asks for up to `count` more streams; the ids granted. In local mode,
    /// the streams held.
    fn request_streams(
        &self,
        #[pyo3(from_py_with = int)] count: i128,
        completer: &Completer,
        future: Py<PyAny>,
    ) -> PyResult<()> {
        let count = u32::try_from(count).ok().filter(|&c| c > 0).ok_or_else(|| {
            errors::config("count", format!("must be between 1 and {}, got {}", u32::MAX, shown(count)))
        })?;
        self.call(completer, future, move |c| async move { c.request_streams(count).await });
        Ok(())
    }

    /// Gives streams back: `True` when the orchestrator confirmed (or none
    /// of them was leased: nothing to do), `False` when recorded locally to
    /// be replayed. An id not leased (one beyond 64 bits, say) is ignored.
    fn release_streams(
        &self,
        #[pyo3(from_py_with = convert::stream_ids)] stream_ids: Vec<Result<i64, Bound<'_, PyAny>>>,
        completer: &Completer,
        future: Py<PyAny>,
    ) {
        let stream_ids: Vec<i64> = stream_ids.into_iter().filter_map(Result::ok).collect();
        self.call(completer, future, move |c| async move { c.release_streams(&stream_ids).await });
    }

    /// Whether this worker may process `stream_id` now. Synchronous.
    fn can_process_stream(&self, #[pyo3(from_py_with = convert::stream_id)] stream_id: Option<i64>) -> bool {
        let (Some(client), Some(id)) = (self.shared.client.get(), stream_id) else {
            return false;
        };
        client.can_process_stream(id)
    }

    /// Records that a chunk of `stream_id` was processed; completes once
    /// the record is durable in the state file, or with
    /// `StreamNotLeasedError` when the stream is not leased to this worker
    /// (raised at once for an id beyond 64 bits).
    fn record_stream_processing(
        &self,
        #[pyo3(from_py_with = convert::stream_id_or_int)] stream_id: Result<i64, Bound<'_, PyAny>>,
        completer: &Completer,
        future: Py<PyAny>,
    ) -> PyResult<()> {
        // No stream has an id beyond 64 bits: never leased.
        let id = stream_id.map_err(|int| {
            let message = format!("stream {} is not leased to this worker", convert::int_text(&int));
            errors::new_error(int.py(), "StreamNotLeasedError", (message, int))
        })?;
        self.call(completer, future, move |c| async move { c.record_stream_processing(id).await.map(|_sequence| ()) });
        Ok(())
    }

    /// The seed's health report, plus `mode`, `local_mode_reason` and the
    /// record counters.
    fn health_check(&self, completer: &Completer, future: Py<PyAny>) {
        self.call(completer, future, |c| async move { Ok(Json(c.health_check().await.to_json())) });
    }

    /// Configuration, local state, breaker statistics and retry counters.
    fn get_detailed_status(&self, completer: &Completer, future: Py<PyAny>) {
        self.call(completer, future, |c| async move { Ok(Json(c.detailed_status().await)) });
    }

    /// Stops cleanly within `shutdown_timeout`: stops the background loop
    /// and processing, uploads the records, deregisters (every stream
    /// released at once) and closes the state file. Idempotent. Runs to
    /// the end even if the await is cancelled.
    fn shutdown(&self, completer: &Completer, future: Py<PyAny>) {
        let shared = Arc::clone(&self.shared);
        let pending = completer.pending(future);
        crate::runtime().spawn(async move {
            if let Some(report) = shared.shut_down().await {
                tracing::info!(
                    target: "resilient_worker_client",
                    deregistered = report.deregistered,
                    records_unsynced = report.records_unsynced,
                    timed_out = report.timed_out,
                    "shut down"
                );
            }
            drop(shared); // as in `call`
            pending.finish(Box::new(|py| Ok(py.None())));
        });
    }

    /// The lease set as it changes: `next()` gives the current one, then one
    /// per change, until `shutdown()`.
    fn leases(&self) -> LeaseChanges {
        LeaseChanges {
            shared: Arc::downgrade(&self.shared),
            state: Arc::new(tokio::sync::Mutex::new(IterState::NotStarted)),
            cancels: watch::channel(0).0,
            undelivered: Arc::new(AtomicBool::new(false)),
        }
    }

    #[getter]
    fn server_id(&self) -> &str {
        &self.shared.server_id
    }

    /// The endpoints, comma-separated.
    #[getter]
    fn orchestrator_url(&self) -> &str {
        &self.shared.orchestrator_url
    }

    #[getter]
    fn max_streams(&self) -> u32 {
        self.shared.max_streams
    }

    #[getter]
    fn state_path(&self) -> PathBuf {
        self.shared.state_path.clone()
    }

    /// How many hold this client (for tests): 1, the Python object, when
    /// no call (nor a lease iterator's first step) is in flight. A call's
    /// task lets go before its await returns, so the client is dropped (and
    /// shut down) as soon as its last Python reference goes.
    fn _holders(&self) -> usize {
        Arc::strong_count(&self.shared)
    }

    fn __repr__(&self) -> String {
        format!(
            "<ResilientWorkerClient server_id={:?} orchestrator_url={:?}>",
            self.shared.server_id, self.shared.orchestrator_url
        )
    }
}

/// The streams this worker may process at one moment.
#[pyclass(module = "resilient_worker_client._native", frozen)]
#[derive(Debug)]
pub(crate) struct LeaseSet {
    epochs: std::collections::BTreeMap<i64, u64>,
    local_mode: bool,
}

#[pymethods]
impl LeaseSet {
    /// The stream ids, ascending.
    #[getter]
    fn stream_ids(&self) -> Vec<i64> {
        self.epochs.keys().copied().collect()
    }

    /// `{stream_id: lease_epoch}`: attach the epoch to output so that a
    /// sink can reject a stale writer.
    #[getter]
    fn epochs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (s, e) in &self.epochs {
            d.set_item(s, e)?;
        }
        Ok(d)
    }

    /// The orchestrator is unreachable; the worker goes on with these.
    #[getter]
    fn local_mode(&self) -> bool {
        self.local_mode
    }

    /// Whether `stream_id` is in the set; `False` for anything that is not
    /// a leased id, of any type (as for Python's containers).
    fn __contains__(&self, stream_id: &Bound<'_, PyAny>) -> bool {
        convert::stream_id(stream_id).ok().flatten().is_some_and(|id| self.epochs.contains_key(&id))
    }

    fn __len__(&self) -> usize {
        self.epochs.len()
    }

    fn __repr__(&self) -> String {
        let local = if self.local_mode { "True" } else { "False" };
        format!("LeaseSet(stream_ids={:?}, local_mode={local})", self.stream_ids())
    }
}

#[derive(Debug)]
enum IterState {
    NotStarted,
    Running(watch::Receiver<worker_client::LeaseSet>, watch::Receiver<bool>),
    Done,
}

/// The lease set as it changes; the package's `LeaseChanges` makes it an
/// async iterator. Holds the client weakly: an iterator does not keep a
/// dropped client from being shut down.
#[pyclass(module = "resilient_worker_client._native", frozen)]
#[derive(Debug)]
pub(crate) struct LeaseChanges {
    shared: Weak<Shared>,
    state: Arc<tokio::sync::Mutex<IterState>>,
    /// Bumped by `cancel()`: the step in flight stops if it has not taken
    /// a lease set yet (and if it has, `undelivered` says so), so a
    /// cancelled `__anext__` loses no change.
    cancels: watch::Sender<u64>,
    /// A step took a lease set (marking its change seen) that Python has
    /// not confirmed with `delivered()`: its await was cancelled after the
    /// runtime took the change. The next step then answers at once with
    /// the current set instead of waiting for a further change.
    undelivered: Arc<AtomicBool>,
}

fn lease_set(set: &worker_client::LeaseSet) -> LeaseSet {
    LeaseSet { epochs: set.iter().collect(), local_mode: set.local_mode() }
}

#[pymethods]
impl LeaseChanges {
    /// Completes `future` with the next `LeaseSet`, or `None` once the
    /// client is shut down (or gone).
    fn next(&self, completer: &Completer, future: Py<PyAny>) {
        let shared = self.shared.clone();
        let state = Arc::clone(&self.state);
        let undelivered = Arc::clone(&self.undelivered);
        let pending = completer.pending(future);
        let mut cancels = self.cancels.subscribe();
        let at = *cancels.borrow_and_update();
        crate::runtime().spawn(async move {
            // `next_leases` takes a lease set only after its last await, so
            // dropping it at a cancel consumes nothing. The cancel is polled
            // first: when a change and the cancel are both ready (the task
            // started late), the change is left for the next step, which a
            // random pick would take here and hand to a cancelled future.
            let next = tokio::select! {
                biased;
                _ = cancels.wait_for(|c| *c != at) => Ok(None),
                next = next_leases(&shared, &state, &undelivered) => next,
            };
            pending.finish(Box::new(move |py| to_python(py, next)));
        });
    }

    /// The await of the step in flight was cancelled: stop it.
    fn cancel(&self) {
        self.cancels.send_modify(|c| *c += 1);
    }

    /// The last step's lease set reached the application (its await
    /// returned).
    fn delivered(&self) {
        self.undelivered.store(false, Ordering::Release);
    }
}

async fn next_leases(
    shared: &Weak<Shared>,
    state: &tokio::sync::Mutex<IterState>,
    undelivered: &AtomicBool,
) -> Result<Option<LeaseSet>, worker_client::Error> {
    let mut state = state.lock().await;
    match &mut *state {
        IterState::Done => Ok(None),
        IterState::NotStarted => {
            let Some(shared) = shared.upgrade() else {
                *state = IterState::Done;
                return Ok(None);
            };
            let client = match shared.built().await {
                Ok(client) => client,
                Err(worker_client::Error::ShutDown) => {
                    *state = IterState::Done;
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            let mut leases = client.leases();
            let current = lease_set(&leases.borrow_and_update());
            *state = IterState::Running(leases, shared.closed.subscribe());
            undelivered.store(true, Ordering::Release);
            Ok(Some(current))
        }
        IterState::Running(leases, closed) => {
            if undelivered.load(Ordering::Acquire) && !*closed.borrow() {
                // The last set taken never reached the application.
                return Ok(Some(lease_set(&leases.borrow_and_update())));
            }
            let changed = tokio::select! {
                changed = leases.changed() => changed.is_ok(),
                _ = closed.wait_for(|c| *c) => false,
            };
            if !changed {
                *state = IterState::Done;
                return Ok(None);
            }
            undelivered.store(true, Ordering::Release);
            Ok(Some(lease_set(&leases.borrow_and_update())))
        }
    }
}
