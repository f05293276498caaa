//! Durable state: the catalog, workers and their epochs, leases, lease
//! history, processing records and an audit log.
//!
//! The service talks to storage through [`StoreHandle`], an async front for
//! a dedicated **store thread**: rusqlite is synchronous, so no SQLite call
//! ever runs on a runtime thread. The thread takes every batch waiting in
//! its queue and commits them in one transaction (group commit), then tells
//! each submitter. Batches are committed in the order they were submitted;
//! the service submits while it holds the engine lock, so the order on disk
//! is the order of the engine's decisions.
//!
//! [`StoreHandle::spawn_task`] runs the same committer as a task on the
//! current runtime instead, for the deterministic simulation
//! (`tests/tests/simulation.rs`): an OS thread's replies would arrive in
//! real time, outside the simulated clock. The task commits inline (a store
//! in memory is fast), after an optional simulated delay (slow storage).
//!
//! The storage itself is behind the narrow [`Store`] trait (load everything
//! once, then commit batches), so that a PostgreSQL store can be added for
//! high availability without touching the service. [`SqliteStore`] is the
//! embedded default.

pub mod leader;
mod pg;
mod sqlite;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

pub use pg::{PostgresStore, redact_url};
pub use sqlite::SqliteStore;
pub(crate) use sqlite::reason_name;

use crate::engine::{Change, PersistedState, StreamId};
use crate::metrics::StoreMetrics;

/// Why storage failed. Every variant names what to look at.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or created.
    #[error("cannot open database {path}: {reason}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The underlying error, with what to do about it.
        reason: String,
    },
    /// The file is not a database this binary can use.
    #[error("database {path} is unusable: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to recover.
        reason: String,
    },
    /// A read or write failed after the database was open.
    #[error("storage failure: {0}")]
    Io(String),
    /// The store thread is gone (it failed earlier or was shut down).
    #[error("the store is closed")]
    Closed,
}

/// Metadata of a stream, kept beside the engine's catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamMeta {
    /// Display name (may be empty).
    pub name: String,
    /// Where the stream comes from (may be empty).
    pub source_url: String,
}

/// A processing record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRow {
    /// The stream.
    pub stream_id: StreamId,
    /// The lease epoch it was processed under.
    pub lease_epoch: u64,
    /// When, in Unix milliseconds (the worker's clock).
    pub processed_at_ms: i64,
    /// The worker's sequence number (dedup key with the server id).
    pub sequence: u64,
    /// Made while the worker was in local mode.
    pub local_mode: bool,
}

/// Processing records uploaded by one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordUpload {
    /// The worker.
    pub server_id: String,
    /// The records, in increasing sequence order.
    pub records: Vec<RecordRow>,
    /// The worker holds no unacknowledged record below this sequence (0:
    /// no claim): the acknowledgement counts from here.
    pub synced_below: u64,
}

/// What the store did with a [`RecordUpload`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordsOutcome {
    /// Every record of this worker with a sequence from 1 up to this is
    /// stored: the highest contiguous sequence, not the highest stored.
    pub acknowledged_through: u64,
    /// Records of this upload stored for the first time and made under a
    /// lease epoch that was no longer current at `processed_at`.
    pub stale: u32,
    /// Records of this upload that were already stored (a retry).
    pub duplicates: u32,
}

/// One unit of durable work: everything one engine event changed.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Wall-clock time of the event, Unix milliseconds (for history and audit).
    pub at_ms: i64,
    /// The engine's changes, in order.
    pub changes: Vec<Change>,
    /// Stream metadata to set.
    pub meta: Vec<(StreamId, StreamMeta)>,
    /// A worker's reported client version.
    pub client_version: Option<(String, String)>,
    /// Processing records to store.
    pub records: Option<RecordUpload>,
}

impl Batch {
    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.meta.is_empty() && self.client_version.is_none() && self.records.is_none()
    }
}

/// Everything loaded at start-up.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The engine's state.
    pub state: PersistedState,
    /// Metadata of catalog streams.
    pub meta: HashMap<StreamId, StreamMeta>,
    /// Last reported client version per worker.
    pub client_versions: HashMap<String, String>,
    /// Per worker, the highest sequence with every record from 1 up to it
    /// stored (see [`RecordsOutcome::acknowledged_through`]).
    pub acknowledged_through: HashMap<String, u64>,
}

/// One row of the audit log: what changed, when, to whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Its position in the log (ascending with time).
    pub id: i64,
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// What: `worker_registered`, `lease_granted`, `lease_revoking`,
    /// `brake_engaged`, … (see ARCHITECTURE.md).
    pub event: String,
    /// The worker concerned, if any.
    pub server_id: Option<String>,
    /// The stream concerned, if any.
    pub stream_id: Option<StreamId>,
    /// The lease epoch concerned, if any.
    pub lease_epoch: Option<u64>,
    /// More: a revocation's reason, the workers a grace period missed.
    pub detail: Option<String>,
}

/// The most audit events a read returns.
pub const MAX_EVENTS: usize = 1000;

/// Durable storage, used from one thread at a time.
pub trait Store: Send + 'static {
    /// Reads everything the orchestrator needs to start.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] or [`StoreError::Corrupt`].
    fn load(&mut self) -> Result<Loaded, StoreError>;

    /// Commits the batches in one transaction, in order; returns the records
    /// outcome of each batch that carried records.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`]; nothing of the batches is stored then.
    fn commit(&mut self, batches: &[Batch]) -> Result<Vec<Option<RecordsOutcome>>, StoreError>;

    /// The newest `limit` audit events (at most [`MAX_EVENTS`]), newest
    /// first: a bounded read by the log's key, whatever its length.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`].
    fn recent_events(&mut self, limit: usize) -> Result<Vec<AuditEvent>, StoreError>;
}

/// A read of the audit log, answered by the store thread between commits.
struct Read {
    limit: usize,
    reply: oneshot::Sender<Result<Vec<AuditEvent>, StoreError>>,
}

struct Job {
    batch: Batch,
    reply: oneshot::Sender<Result<Option<RecordsOutcome>, StoreError>>,
}

/// What the store thread is asked to do.
enum Msg {
    Commit(Job),
    /// Read the audit log (after the commits queued before it).
    Read(Read),
    /// Commit everything queued before this, then stop.
    Close,
}

/// The async front of the store thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    jobs: mpsc::UnboundedSender<Msg>,
    durable: watch::Receiver<u64>,
    /// Sequence number of the last batch submitted.
    submitted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Per worker, the acknowledged watermark of its records; updated by
    /// the store thread before it reports a commit durable, so a reader
    /// whose own batch is durable sees every earlier upload.
    watermarks: std::sync::Arc<std::sync::Mutex<HashMap<String, u64>>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").finish_non_exhaustive()
    }
}

/// How long each group commit of [`StoreHandle::spawn_task`] waits first.
pub type CommitDelay = Arc<dyn Fn() -> Duration + Send + Sync>;

/// What runs the committer: joined on shutdown so every queued batch is
/// flushed.
#[derive(Debug)]
pub enum StoreRunner {
    /// The store thread.
    Thread(thread::JoinHandle<()>),
    /// A task on the runtime (simulation).
    Task(tokio::task::JoinHandle<()>),
}

impl StoreRunner {
    /// Waits until the committer has stopped (after [`StoreHandle::close`],
    /// or after a failed commit).
    pub async fn join(self) {
        match self {
            Self::Thread(thread) => {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
            Self::Task(task) => {
                let _ = task.await;
            }
        }
    }
}

/// What the committer takes from its queue at once.
#[derive(Default)]
struct Gathered {
    /// Commits for one group (up to 1024).
    jobs: Vec<Job>,
    /// Reads, answered after the group.
    reads: Vec<Read>,
    /// A close came after them.
    closing: bool,
}

/// Takes `first` and every message waiting behind it: commits (up to 1024)
/// for one group, and the reads among them.
fn gather(first: Msg, queue: &mut mpsc::UnboundedReceiver<Msg>) -> Gathered {
    let mut g = Gathered::default();
    let mut next = Some(first);
    while let Some(msg) = next.take() {
        match msg {
            Msg::Commit(job) => g.jobs.push(job),
            Msg::Read(read) => g.reads.push(read),
            Msg::Close => {
                g.closing = true;
                break;
            }
        }
        if g.jobs.len() < 1024 {
            next = queue.try_recv().ok();
        }
    }
    g
}

/// The committing side, the same under a thread or a task.
struct Committer {
    store: Box<dyn Store>,
    watermarks: Arc<std::sync::Mutex<HashMap<String, u64>>>,
    durable: watch::Sender<u64>,
    done: u64,
    metrics: Option<StoreMetrics>,
}

impl Committer {
    /// Commits one group and answers its submitters; `false` if the commit
    /// failed (the committer stops: dropping the queue fails every later
    /// submit).
    fn commit(&mut self, mut jobs: Vec<Job>) -> bool {
        let (batches, result) = self.write(&mut jobs);
        self.settle(jobs, &batches, result)
    }

    /// Answers reads of the audit log.
    fn answer(&mut self, reads: Vec<Read>) {
        for read in reads {
            let _ = read.reply.send(self.store.recent_events(read.limit.min(MAX_EVENTS)));
        }
    }

    /// Writes one group in one transaction: durable once this returns Ok.
    fn write(&mut self, jobs: &mut [Job]) -> (Vec<Batch>, Result<Vec<Option<RecordsOutcome>>, StoreError>) {
        let batches: Vec<Batch> = jobs.iter_mut().map(|j| std::mem::take(&mut j.batch)).collect();
        let result = if batches.iter().all(Batch::is_empty) {
            Ok(vec![None; batches.len()])
        } else {
            let started = std::time::Instant::now();
            let result = self.store.commit(&batches);
            if let Some(metrics) = &self.metrics {
                metrics.observe_commit(started.elapsed().as_secs_f64(), batches.len());
            }
            result
        };
        (batches, result)
    }

    /// Publishes a written group and answers its submitters; `false` if
    /// the write failed.
    fn settle(
        &mut self,
        jobs: Vec<Job>,
        batches: &[Batch],
        result: Result<Vec<Option<RecordsOutcome>>, StoreError>,
    ) -> bool {
        match result {
            Ok(outcomes) => {
                let mut marks = self.watermarks.lock().unwrap_or_else(|p| p.into_inner());
                for (batch, outcome) in batches.iter().zip(&outcomes) {
                    if let (Some(upload), Some(outcome)) = (&batch.records, outcome) {
                        let mark = marks.entry(upload.server_id.clone()).or_insert(0);
                        *mark = (*mark).max(outcome.acknowledged_through);
                    }
                }
                drop(marks);
                self.done += jobs.len() as u64;
                self.durable.send_replace(self.done);
                for (job, outcome) in jobs.into_iter().zip(outcomes) {
                    let _ = job.reply.send(Ok(outcome));
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "storage commit failed; refusing further writes");
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
                false
            }
        }
    }
}

/// A submitted batch: await it to know it is durable.
#[derive(Debug)]
pub struct Pending {
    reply: Option<oneshot::Receiver<Result<Option<RecordsOutcome>, StoreError>>>,
    barrier: Option<(watch::Receiver<u64>, u64)>,
}

impl Pending {
    /// Waits until the batch (or, for a barrier, everything submitted
    /// before it) is durable.
    ///
    /// # Errors
    ///
    /// The store's error if the commit failed, [`StoreError::Closed`] if the
    /// store thread is gone.
    pub async fn wait(self) -> Result<Option<RecordsOutcome>, StoreError> {
        if let Some(reply) = self.reply {
            return reply.await.map_err(|_| StoreError::Closed)?;
        }
        if let Some((mut durable, seq)) = self.barrier {
            durable.wait_for(|&d| d >= seq).await.map_err(|_| StoreError::Closed)?;
        }
        Ok(None)
    }
}

impl StoreHandle {
    /// Starts the store thread around `store`. Returns the handle and the
    /// thread's join handle (joined on shutdown, after the last handle is
    /// dropped, so every submitted batch is flushed).
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] if the thread cannot be started.
    pub fn spawn(store: impl Store, watermarks: HashMap<String, u64>) -> Result<(Self, StoreRunner), StoreError> {
        Self::spawn_observed(store, watermarks, None)
    }

    /// As [`spawn`](Self::spawn), timing each group commit into `metrics`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] if the thread cannot be started.
    pub fn spawn_observed(
        store: impl Store,
        watermarks: HashMap<String, u64>,
        metrics: Option<StoreMetrics>,
    ) -> Result<(Self, StoreRunner), StoreError> {
        let (handle, mut committer, mut queue) = Self::parts(store, watermarks, metrics);
        let thread = thread::Builder::new()
            .name("store".into())
            .spawn(move || {
                while let Some(first) = queue.blocking_recv() {
                    let Gathered { jobs, reads, closing } = gather(first, &mut queue);
                    if !jobs.is_empty() && !committer.commit(jobs) {
                        return;
                    }
                    committer.answer(reads);
                    if closing {
                        return;
                    }
                }
            })
            .map_err(|e| StoreError::Io(format!("cannot start the store thread: {e}")))?;
        Ok((handle, StoreRunner::Thread(thread)))
    }

    /// Runs the committer as a task on the current runtime instead of a
    /// thread: the simulation seam (see the module documentation). Each
    /// group commit takes `commit_delay()` (simulated slow storage; zero
    /// for none): half before the write, half after it, when the group is
    /// durable but not yet answered, so that a simulated crash can land on
    /// either side of the write.
    pub fn spawn_task(
        store: impl Store,
        watermarks: HashMap<String, u64>,
        commit_delay: CommitDelay,
        metrics: Option<StoreMetrics>,
    ) -> (Self, StoreRunner) {
        let (handle, mut committer, mut queue) = Self::parts(store, watermarks, metrics);
        let task = tokio::spawn(async move {
            while let Some(first) = queue.recv().await {
                let delay = commit_delay();
                if !delay.is_zero() {
                    tokio::time::sleep(delay / 2).await;
                }
                let Gathered { mut jobs, reads, closing } = gather(first, &mut queue);
                if !jobs.is_empty() {
                    let (batches, result) = committer.write(&mut jobs);
                    if !delay.is_zero() {
                        tokio::time::sleep(delay - delay / 2).await;
                    }
                    if !committer.settle(jobs, &batches, result) {
                        return;
                    }
                }
                committer.answer(reads);
                if closing {
                    return;
                }
            }
        });
        (handle, StoreRunner::Task(task))
    }

    fn parts(
        store: impl Store,
        watermarks: HashMap<String, u64>,
        metrics: Option<StoreMetrics>,
    ) -> (Self, Committer, mpsc::UnboundedReceiver<Msg>) {
        let (jobs, queue) = mpsc::unbounded_channel::<Msg>();
        let (durable_tx, durable) = watch::channel(0u64);
        let watermarks = Arc::new(std::sync::Mutex::new(watermarks));
        let committer = Committer {
            store: Box::new(store),
            watermarks: Arc::clone(&watermarks),
            durable: durable_tx,
            done: 0,
            metrics,
        };
        let handle = Self { jobs, durable, submitted: Arc::new(std::sync::atomic::AtomicU64::new(0)), watermarks };
        (handle, committer, queue)
    }

    /// The acknowledged watermark of a worker's records (0: none), as of
    /// the last durable commit. Read it after a batch of one's own is
    /// durable to see every upload submitted before that batch.
    pub fn acknowledged_through(&self, server_id: &str) -> u64 {
        self.watermarks.lock().unwrap_or_else(|p| p.into_inner()).get(server_id).copied().unwrap_or(0)
    }

    /// Queues a batch. Call it while holding the engine lock so that batches
    /// reach the disk in the order of the engine's decisions; await the
    /// result outside the lock.
    pub fn submit(&self, batch: Batch) -> Pending {
        if batch.is_empty() {
            return self.barrier();
        }
        let (reply, rx) = oneshot::channel();
        self.submitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.jobs.send(Msg::Commit(Job { batch, reply })).is_err() {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Err(StoreError::Closed));
            return Pending { reply: Some(rx), barrier: None };
        }
        Pending { reply: Some(rx), barrier: None }
    }

    /// The newest `limit` audit events (at most [`MAX_EVENTS`]), newest
    /// first, read by the store thread after the commits queued before.
    ///
    /// # Errors
    ///
    /// The store's error; [`StoreError::Closed`] if the store stopped.
    pub async fn recent_events(&self, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.jobs.send(Msg::Read(Read { limit, reply })).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Asks the store thread to commit what is queued and stop; later
    /// submits fail with [`StoreError::Closed`]. Join the thread to wait.
    pub fn close(&self) {
        let _ = self.jobs.send(Msg::Close);
    }

    /// A wait for everything submitted so far to be durable, without adding
    /// work: an answer that reports state decided by another call must not
    /// go out before that call's batch is on disk.
    pub fn barrier(&self) -> Pending {
        let seq = self.submitted.load(std::sync::atomic::Ordering::SeqCst);
        if *self.durable.borrow() >= seq {
            return Pending { reply: None, barrier: None };
        }
        Pending { reply: None, barrier: Some((self.durable.clone(), seq)) }
    }
}
