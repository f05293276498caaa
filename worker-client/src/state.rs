//! The worker's local state: one SQLite file (WAL), written by a dedicated
//! thread so that no SQLite call runs on the async runtime.
//!
//! It holds the server id and last session, the leases with their epochs,
//! the processing records with their per-worker sequence numbers and a
//! synced flag, releases made while the orchestrator was unreachable, the
//! last orchestrator contact and the mode transitions.
//!
//! **Durability rule.** Writes are queued and committed by the state thread
//! in groups (everything waiting in the queue, one transaction). A write's
//! future completes once its transaction is committed; from then on it
//! survives a SIGKILL of the worker at any moment (WAL with
//! `synchronous = NORMAL`; with [`sync_full`](crate::ClientBuilder::state_sync_full)
//! it also survives a power loss, at the cost of an fsync per group).
//!
//! **Simulation seam.** With [`state_on_runtime`](crate::ClientBuilder::state_on_runtime)
//! the same writer runs as a task on the current runtime instead of a
//! thread, and the file is opened inline: a thread's replies arrive in real
//! time, which a deterministic simulation on a simulated clock cannot
//! replay. Each SQLite call then blocks the runtime for its duration.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::thread;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use crate::Error;

const MIGRATIONS: &[&str] = &["
    CREATE TABLE meta (
        key    TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );
    CREATE TABLE leases (
        stream_id    INTEGER PRIMARY KEY,
        lease_epoch  INTEGER NOT NULL
    );
    CREATE TABLE records (
        sequence         INTEGER PRIMARY KEY,
        stream_id        INTEGER NOT NULL,
        lease_epoch      INTEGER NOT NULL,
        processed_at_ms  INTEGER NOT NULL,
        local_mode       INTEGER NOT NULL,
        synced           INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX records_unsynced ON records (synced, sequence);
    CREATE TABLE pending_releases (
        stream_id    INTEGER PRIMARY KEY,
        lease_epoch  INTEGER NOT NULL
    );
    CREATE TABLE mode_transitions (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms   INTEGER NOT NULL,
        mode    TEXT NOT NULL,
        reason  TEXT NOT NULL
    );
"];

/// How to recover from an unusable state file; part of every such error.
pub(crate) const RECOVERY: &str = "move the file aside, with its -wal and -shm files if there are any, and \
     start the worker again: it registers with an empty state, numbers its records after those the \
     orchestrator has, and the orchestrator assigns it streams anew (processing records not yet synced stay \
     in the moved files; `sqlite3 FILE .recover` can salvage them)";

/// A processing record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) sequence: u64,
    pub(crate) stream_id: i64,
    pub(crate) lease_epoch: u64,
    pub(crate) processed_at_ms: i64,
    pub(crate) local_mode: bool,
}

/// One write.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Session {
        session_id: String,
        worker_epoch: u64,
    },
    Contact {
        at_ms: i64,
    },
    /// Replaces the whole lease set.
    Leases(BTreeMap<i64, u64>),
    Record(Record),
    SyncedThrough(u64),
    /// Marks exactly this record synced (a standalone record, never to be
    /// uploaded; older unsynced records stay unsynced).
    SyncedOnly(u64),
    PendingRelease {
        stream_id: i64,
        lease_epoch: u64,
    },
    ReleasesDone(Vec<i64>),
    Transition {
        at_ms: i64,
        mode: &'static str,
        reason: String,
    },
    /// Records from now on are numbered from at least this sequence; unsynced
    /// records below it are renumbered above it, in order (a fresh state
    /// file learning from the orchestrator where its server id stands).
    SequenceFloor(u64),
}

/// A processing record to write; the state thread gives it its sequence.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewRecord {
    pub(crate) stream_id: i64,
    pub(crate) lease_epoch: u64,
    pub(crate) processed_at_ms: i64,
    pub(crate) local_mode: bool,
    /// Never to be uploaded (standalone mode): written as synced, in the
    /// same transaction, so the history limit applies to it.
    pub(crate) synced: bool,
}

/// What the file held when it was opened.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub(crate) session: Option<(String, u64)>,
    pub(crate) leases: BTreeMap<i64, u64>,
    pub(crate) next_sequence: u64,
    pub(crate) last_contact_ms: Option<i64>,
    pub(crate) unsynced: u64,
    pub(crate) pending_releases: BTreeMap<i64, u64>,
    /// Whether the file existed with content from an earlier run.
    pub(crate) from_earlier_run: bool,
}

struct StateFile {
    conn: Connection,
    /// The sequence the next record gets: assigned here, in commit order,
    /// so the committed sequences never have a gap below the highest.
    next_sequence: u64,
    /// Test hook: how long each group commit waits first.
    write_delay: std::time::Duration,
    /// Synced records kept (the newest); older ones are deleted.
    history: u64,
}

/// Creates the file readable and writable by its owner only (0600): it
/// holds the worker's session and records. SQLite gives its -wal and -shm
/// files the same permissions.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map(drop)
}

/// Keeps the newest `history` synced records, for audits: the file does
/// not grow with every record ever made. Unsynced records are never deleted.
fn prune(tx: &rusqlite::Transaction<'_>, history: u64) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM records WHERE synced = 1 AND sequence < (
             SELECT sequence FROM records WHERE synced = 1 ORDER BY sequence DESC LIMIT 1 OFFSET ?1)",
        params![history.saturating_sub(1).min(i64::MAX as u64) as i64],
    )?;
    Ok(())
}

fn err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::State { path: path.to_path_buf(), reason: e.to_string(), source: None }
}

/// A SQLite error, kept as the error's source.
fn sqlite(path: &Path, e: rusqlite::Error) -> Error {
    Error::State { path: path.to_path_buf(), reason: e.to_string(), source: Some(std::sync::Arc::new(e)) }
}

impl StateFile {
    fn open(path: &Path, server_id: &str, sync_full: bool) -> Result<(Self, Snapshot), Error> {
        let unusable =
            |why: String| Error::State { path: path.to_path_buf(), reason: format!("{why}; {RECOVERY}"), source: None };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            return Err(err(path, format!("directory {} does not exist", dir.display())));
        }
        let existed = path.exists() && std::fs::metadata(path).is_ok_and(|m| m.len() > 0);
        if !path.exists() {
            create_private(path).map_err(|e| err(path, format!("cannot create: {e}")))?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| Error::State {
            path: path.to_path_buf(),
            reason: format!("cannot open: {e}"),
            source: Some(std::sync::Arc::new(e)),
        })?;
        // Until the file is known to be ours, closing must not fold a WAL
        // into it: a file refused is left exactly as it was.
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(|e| sqlite(path, e))?;
        let damaged =
            |e: rusqlite::Error| unusable(format!("not a worker state file or damaged ({e}); it was not modified"));
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(damaged)?;
        if version > MIGRATIONS.len() as i64 {
            return Err(unusable(format!("schema version {version} is newer than this library supports")));
        }
        if version == 0 {
            let tables: i64 = conn
                .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table'", [], |r| r.get(0))
                .map_err(|e| unusable(e.to_string()))?;
            if tables > 0 {
                return Err(unusable("it holds tables of something else; it was not modified".into()));
            }
        } else {
            // Whose is it? Read before anything is written.
            let owner: Option<String> = conn
                .query_row("SELECT value FROM meta WHERE key = 'server_id'", [], |r| r.get(0))
                .optional()
                .map_err(damaged)?;
            if let Some(id) = owner.filter(|id| id != server_id) {
                return Err(err(
                    path,
                    format!(
                        "it belongs to server_id {id:?}, not {server_id:?}; it was not modified: give this worker a \
                         state file of its own (a new path), or start worker {id:?} with this one"
                    ),
                ));
            }
            let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(damaged)?;
            if check != "ok" {
                return Err(unusable(format!("it is damaged ({check}); it was not modified")));
            }
        }
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)
            .map_err(|e| sqlite(path, e))?;
        // Ours: private to its owner, also a file an older version created.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
                tracing::warn!(path = %path.display(), error = %e, "could not make the state file private (0600)");
            }
        }
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| sqlite(path, e))?;
        conn.pragma_update(None, "synchronous", if sync_full { "FULL" } else { "NORMAL" })
            .map_err(|e| sqlite(path, e))?;
        let mut file = Self { conn, next_sequence: 1, write_delay: std::time::Duration::ZERO, history: 5_000 };
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = file.conn.transaction().map_err(|e| sqlite(path, e))?;
            tx.execute_batch(sql).map_err(|e| sqlite(path, e))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64).map_err(|e| sqlite(path, e))?;
            tx.commit().map_err(|e| sqlite(path, e))?;
        }
        let stored_id: Option<String> = file.meta("server_id").map_err(|e| sqlite(path, e))?;
        match stored_id {
            Some(id) if id != server_id => {
                return Err(err(
                    path,
                    format!("it belongs to server_id {id:?}, not {server_id:?}; use one state file per worker"),
                ));
            }
            Some(_) => {}
            None => {
                file.conn
                    .execute("INSERT INTO meta (key, value) VALUES ('server_id', ?1)", params![server_id])
                    .map_err(|e| sqlite(path, e))?;
            }
        }
        let snapshot = file.snapshot(existed).map_err(|e| sqlite(path, e))?;
        file.next_sequence = snapshot.next_sequence;
        Ok((file, snapshot))
    }

    fn meta(&self, key: &str) -> rusqlite::Result<Option<String>> {
        self.conn.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| r.get(0)).optional()
    }

    fn snapshot(&self, existed: bool) -> rusqlite::Result<Snapshot> {
        let session = match (self.meta("session_id")?, self.meta("worker_epoch")?) {
            (Some(id), Some(epoch)) => epoch.parse().ok().map(|e| (id, e)),
            _ => None,
        };
        let pairs = |sql: &str| -> rusqlite::Result<BTreeMap<i64, u64>> {
            let mut stmt = self.conn.prepare(sql)?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64)))?;
            rows.collect()
        };
        let leases = pairs("SELECT stream_id, lease_epoch FROM leases")?;
        let pending_releases = pairs("SELECT stream_id, lease_epoch FROM pending_releases")?;
        let max: Option<i64> = self.conn.query_row("SELECT max(sequence) FROM records", [], |r| r.get(0))?;
        let stored_next: u64 = self.meta("next_sequence")?.and_then(|v| v.parse().ok()).unwrap_or(1);
        let unsynced: i64 = self.conn.query_row("SELECT count(*) FROM records WHERE synced = 0", [], |r| r.get(0))?;
        Ok(Snapshot {
            session,
            leases,
            next_sequence: stored_next.max(max.map_or(1, |m| m as u64 + 1)),
            last_contact_ms: self.meta("last_contact_ms")?.and_then(|v| v.parse().ok()),
            unsynced: unsynced as u64,
            pending_releases,
            from_earlier_run: existed,
        })
    }

    fn commit(&mut self, ops: &[Op]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        let set = |key: &str, value: String| {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
        };
        let mut max_sequence = None;
        let mut floor_next = None;
        for op in ops {
            match op {
                Op::Session { session_id, worker_epoch } => {
                    set("session_id", session_id.clone())?;
                    set("worker_epoch", worker_epoch.to_string())?;
                }
                Op::Contact { at_ms } => {
                    set("last_contact_ms", at_ms.to_string())?;
                }
                Op::Leases(leases) => {
                    tx.execute("DELETE FROM leases", [])?;
                    let mut insert =
                        tx.prepare_cached("INSERT INTO leases (stream_id, lease_epoch) VALUES (?1, ?2)")?;
                    for (stream, epoch) in leases {
                        insert.execute(params![stream, *epoch as i64])?;
                    }
                }
                Op::Record(r) => {
                    let mut insert = tx.prepare_cached(
                        "INSERT INTO records (sequence, stream_id, lease_epoch, processed_at_ms, local_mode)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?;
                    insert.execute(params![
                        r.sequence as i64,
                        r.stream_id,
                        r.lease_epoch as i64,
                        r.processed_at_ms,
                        r.local_mode
                    ])?;
                    max_sequence = Some(r.sequence);
                }
                Op::SyncedThrough(through) => {
                    tx.execute(
                        "UPDATE records SET synced = 1 WHERE synced = 0 AND sequence <= ?1",
                        params![*through as i64],
                    )?;
                    prune(&tx, self.history)?;
                }
                Op::SyncedOnly(sequence) => {
                    tx.execute("UPDATE records SET synced = 1 WHERE sequence = ?1", params![*sequence as i64])?;
                    prune(&tx, self.history)?;
                }
                Op::PendingRelease { stream_id, lease_epoch } => {
                    tx.execute(
                        "INSERT OR REPLACE INTO pending_releases (stream_id, lease_epoch) VALUES (?1, ?2)",
                        params![stream_id, *lease_epoch as i64],
                    )?;
                }
                Op::ReleasesDone(ids) => {
                    for id in ids {
                        tx.execute("DELETE FROM pending_releases WHERE stream_id = ?1", params![id])?;
                    }
                }
                Op::Transition { at_ms, mode, reason } => {
                    tx.execute(
                        "INSERT INTO mode_transitions (at_ms, mode, reason) VALUES (?1, ?2, ?3)",
                        params![at_ms, mode, reason],
                    )?;
                }
                Op::SequenceFloor(floor) => {
                    let floor = *floor as i64;
                    let low: Option<i64> = tx.query_row(
                        "SELECT min(sequence) FROM records WHERE synced = 0 AND sequence < ?1",
                        params![floor],
                        |r| r.get(0),
                    )?;
                    if let Some(low) = low {
                        // Two steps through negative numbers: no transient
                        // primary-key clash.
                        let shift = floor - low;
                        tx.execute(
                            "UPDATE records SET sequence = -(sequence + ?1) WHERE synced = 0 AND sequence >= ?2",
                            params![shift, low],
                        )?;
                        tx.execute("UPDATE records SET sequence = -sequence WHERE sequence < 0", [])?;
                    }
                    let max: Option<i64> = tx.query_row("SELECT max(sequence) FROM records", [], |r| r.get(0))?;
                    let next = (floor as u64).max(max.map_or(1, |m| m as u64 + 1)).max(self.next_sequence);
                    floor_next = Some(next);
                    max_sequence = Some(next - 1);
                }
            }
        }
        if let Some(max) = max_sequence {
            set("next_sequence", (max + 1).to_string())?;
        }
        tx.commit()?;
        if let Some(next) = floor_next {
            self.next_sequence = self.next_sequence.max(next);
        }
        Ok(())
    }

    fn unsynced(&self, limit: usize) -> rusqlite::Result<Vec<Record>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT sequence, stream_id, lease_epoch, processed_at_ms, local_mode FROM records
             WHERE synced = 0 ORDER BY sequence LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit as i64], |r| {
            Ok(Record {
                sequence: r.get::<_, i64>(0)? as u64,
                stream_id: r.get(1)?,
                lease_epoch: r.get::<_, i64>(2)? as u64,
                processed_at_ms: r.get(3)?,
                local_mode: r.get(4)?,
            })
        })?;
        rows.collect()
    }

    fn counts(&self) -> rusqlite::Result<(u64, u64)> {
        self.conn.query_row("SELECT count(*), coalesce(sum(synced = 0), 0) FROM records", [], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })
    }
}

type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// The writes of one group commit.
#[derive(Default)]
struct Group {
    ops: Vec<Op>,
    writes: Vec<Reply<()>>,
    records: Vec<(u64, Reply<u64>)>,
}

impl Group {
    fn add(&mut self, file: &mut StateFile, msg: Msg) {
        match msg {
            Msg::Write(ops, reply) => {
                self.ops.extend(ops);
                self.writes.push(reply);
            }
            Msg::Record(r, reply) => {
                let sequence = file.next_sequence;
                file.next_sequence = file.next_sequence.saturating_add(1);
                self.ops.push(Op::Record(Record {
                    sequence,
                    stream_id: r.stream_id,
                    lease_epoch: r.lease_epoch,
                    processed_at_ms: r.processed_at_ms,
                    local_mode: r.local_mode,
                }));
                if r.synced {
                    self.ops.push(Op::SyncedOnly(sequence));
                }
                self.records.push((sequence, reply));
            }
            _ => {}
        }
    }

    fn commit(self, file: &mut StateFile, fail: &impl Fn(rusqlite::Error) -> Error) {
        let before = file.next_sequence - self.records.len() as u64;
        let result = file.commit(&self.ops).map_err(fail);
        if result.is_err() {
            // Nothing of this group is written: its sequences are free again.
            file.next_sequence = before;
        }
        for reply in self.writes {
            let _ = reply.send(result.clone());
        }
        for (sequence, reply) in self.records {
            let _ = reply.send(result.clone().map(|()| sequence));
        }
    }
}

enum Msg {
    Write(Vec<Op>, Reply<()>),
    Record(NewRecord, Reply<u64>),
    Unsynced(usize, Reply<Vec<Record>>),
    Counts(Reply<(u64, u64)>),
    Close,
}

/// What runs the writer.
#[derive(Debug)]
enum Runner {
    Thread(thread::JoinHandle<()>),
    Task(tokio::task::JoinHandle<()>),
}

/// The async front of the state thread. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct StateHandle {
    tx: mpsc::UnboundedSender<Msg>,
    path: PathBuf,
    runner: std::sync::Arc<std::sync::Mutex<Option<Runner>>>,
}

impl Msg {
    /// A write that joins a group commit.
    fn groups(&self) -> bool {
        matches!(self, Msg::Write(..) | Msg::Record(..)) && !self.is_floor()
    }

    /// A write that moves the sequence numbering: it is committed on its
    /// own, never in a group with records.
    fn is_floor(&self) -> bool {
        matches!(self, Msg::Write(ops, _) if ops.iter().any(|op| matches!(op, Op::SequenceFloor(_))))
    }
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl StateHandle {
    /// Opens (or creates) the state file and starts its writer: a thread
    /// (run the open from `spawn_blocking` then), or with `on_runtime` a
    /// task on the current runtime.
    pub(crate) fn open(
        path: &Path,
        server_id: &str,
        sync_full: bool,
        write_delay: std::time::Duration,
        history: u64,
        on_runtime: bool,
    ) -> Result<(Self, Snapshot), Error> {
        let (mut file, snapshot) = StateFile::open(path, server_id, sync_full)?;
        file.write_delay = write_delay;
        file.history = history.max(1);
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        let writer_path = path.to_path_buf();
        let runner = if on_runtime {
            Runner::Task(tokio::spawn(async move {
                while let Some(first) = rx.recv().await {
                    if first.groups() && !file.write_delay.is_zero() {
                        tokio::time::sleep(file.write_delay).await;
                    }
                    if !Self::serve(&mut file, &writer_path, first, &mut rx) {
                        return;
                    }
                }
            }))
        } else {
            Runner::Thread(
                thread::Builder::new()
                    .name("worker-state".into())
                    .spawn(move || {
                        while let Some(first) = rx.blocking_recv() {
                            if first.groups() && !file.write_delay.is_zero() {
                                thread::sleep(file.write_delay);
                            }
                            if !Self::serve(&mut file, &writer_path, first, &mut rx) {
                                return;
                            }
                        }
                    })
                    .map_err(|e| err(path, format!("cannot start the state thread: {e}")))?,
            )
        };
        let runner = std::sync::Arc::new(std::sync::Mutex::new(Some(runner)));
        Ok((Self { tx, path: path.to_path_buf(), runner }, snapshot))
    }

    /// Serves `first`, with every write queued behind it in one group
    /// commit; `false` to stop.
    fn serve(file: &mut StateFile, path: &Path, first: Msg, rx: &mut mpsc::UnboundedReceiver<Msg>) -> bool {
        let fail = |e: rusqlite::Error| sqlite(path, e);
        if !first.groups() {
            return Self::serve_one(file, first, &fail);
        }
        // Group commit: every write waiting joins this transaction; records
        // get their sequences here, in the order they are committed.
        let mut group = Group::default();
        let mut after = None;
        group.add(file, first);
        while let Ok(next) = rx.try_recv() {
            if next.groups() {
                group.add(file, next);
            } else {
                after = Some(next);
                break;
            }
        }
        group.commit(file, &fail);
        after.is_none_or(|msg| Self::serve_one(file, msg, &fail))
    }

    /// Serves one message; `false` to stop.
    fn serve_one(file: &mut StateFile, msg: Msg, fail: &impl Fn(rusqlite::Error) -> Error) -> bool {
        match msg {
            msg @ (Msg::Write(..) | Msg::Record(..)) => {
                let mut group = Group::default();
                group.add(file, msg);
                group.commit(file, fail);
            }
            Msg::Unsynced(limit, reply) => {
                let _ = reply.send(file.unsynced(limit).map_err(fail));
            }
            Msg::Counts(reply) => {
                let _ = reply.send(file.counts().map_err(fail));
            }
            Msg::Close => {
                // Fold the WAL into the file now; dropping the connection
                // then removes it.
                let _ = file.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
                return false;
            }
        }
        true
    }

    fn closed(&self) -> Error {
        err(&self.path, "the state thread has stopped")
    }

    /// Queues writes; the future completes once they are committed.
    pub(crate) async fn write(&self, ops: Vec<Op>) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Write(ops, reply)).map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    /// Queues writes without waiting for them (a lost one is harmless:
    /// the last contact, say).
    pub(crate) fn queue(&self, ops: Vec<Op>) {
        let (reply, _) = oneshot::channel();
        let _ = self.tx.send(Msg::Write(ops, reply));
    }

    /// Writes a processing record; its sequence once it is committed.
    /// Sequences are given by the state thread in commit order: no record
    /// is ever committed after one with a higher sequence.
    pub(crate) async fn record(&self, record: NewRecord) -> Result<u64, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Record(record, reply)).map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    /// Up to `limit` unsynced records, oldest first.
    pub(crate) async fn unsynced(&self, limit: usize) -> Result<Vec<Record>, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Unsynced(limit, reply)).map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    /// `(records, unsynced records)`.
    pub(crate) async fn counts(&self) -> Result<(u64, u64), Error> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Counts(reply)).map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    /// Commits what is queued and stops the thread (without waiting).
    pub(crate) fn close(&self) {
        let _ = self.tx.send(Msg::Close);
    }

    /// Commits what is queued, stops the thread and waits (up to `limit`)
    /// until it has closed the file: the last connection's close folds the
    /// WAL into the database file and removes it, so the `.db` alone holds
    /// everything.
    pub(crate) async fn close_and_wait(&self, limit: std::time::Duration) -> Result<(), Error> {
        self.close();
        let Some(runner) = self.runner.lock().unwrap_or_else(|p| p.into_inner()).take() else { return Ok(()) };
        let joined = async move {
            match runner {
                Runner::Thread(thread) => {
                    tokio::task::spawn_blocking(move || thread.join().is_ok()).await.is_ok_and(|ok| ok)
                }
                Runner::Task(task) => task.await.is_ok(),
            }
        };
        match tokio::time::timeout(limit, joined).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(err(&self.path, "the state thread failed while closing")),
            Err(_) => Err(err(&self.path, format!("the state file was not closed within {limit:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_record(stream_id: i64) -> NewRecord {
        NewRecord { stream_id, lease_epoch: 1, processed_at_ms: 0, local_mode: true, synced: false }
    }

    #[tokio::test]
    async fn records_made_before_the_first_registration_are_renumbered_above_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let (state, snapshot) = StateHandle::open(&path, "w", false, std::time::Duration::ZERO, 5_000, false).unwrap();
        assert_eq!(snapshot.next_sequence, 1);
        for stream in 1..=3 {
            assert_eq!(state.record(new_record(stream)).await.unwrap(), stream as u64);
        }
        state.write(vec![Op::SequenceFloor(501)]).await.unwrap();
        let unsynced: Vec<(u64, i64)> =
            state.unsynced(10).await.unwrap().iter().map(|r| (r.sequence, r.stream_id)).collect();
        assert_eq!(unsynced, [(501, 1), (502, 2), (503, 3)], "renumbered in order");
        assert_eq!(state.record(new_record(4)).await.unwrap(), 504, "numbering goes on after them");
        state.write(vec![Op::SequenceFloor(10)]).await.unwrap();
        assert_eq!(state.record(new_record(5)).await.unwrap(), 505, "a lower floor changes nothing");
        state.close_and_wait(std::time::Duration::from_secs(5)).await.unwrap();
        let (_, snapshot) = StateHandle::open(&path, "w", false, std::time::Duration::ZERO, 5_000, false).unwrap();
        assert_eq!(snapshot.next_sequence, 506, "and it survives a restart");
    }

    async fn open(path: &Path, id: &str, history: u64) -> Result<(StateHandle, Snapshot), Error> {
        StateHandle::open(path, id, false, std::time::Duration::ZERO, history, false)
    }

    #[tokio::test]
    async fn a_new_state_file_is_private_to_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let (state, _) = open(&path, "w", 10).await.unwrap();
        state.record(new_record(1)).await.unwrap();
        state.close_and_wait(std::time::Duration::from_secs(5)).await.unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            // A file from before (world-readable) is made private on open.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let (state, _) = open(&path, "w", 10).await.unwrap();
            assert_eq!(mode(&path), 0o600);
            state.close_and_wait(std::time::Duration::from_secs(5)).await.unwrap();
        }
    }

    #[tokio::test]
    async fn synced_records_beyond_the_history_are_deleted_unsynced_never() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = open(&dir.path().join("w.db"), "w", 3).await.unwrap();
        for stream in 1..=10 {
            state.record(new_record(stream)).await.unwrap();
        }
        state.write(vec![Op::SyncedThrough(8)]).await.unwrap();
        assert_eq!(state.counts().await.unwrap(), (5, 2), "the newest 3 synced (6..=8) and the 2 unsynced");
        let unsynced: Vec<u64> = state.unsynced(10).await.unwrap().iter().map(|r| r.sequence).collect();
        assert_eq!(unsynced, [9, 10]);
        state.close_and_wait(std::time::Duration::from_secs(5)).await.unwrap();
    }

    #[tokio::test]
    async fn a_foreign_state_file_is_refused_before_anything_is_written_even_its_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let (state, _) = open(&path, "a", 10).await.unwrap();
        state.record(new_record(1)).await.unwrap();
        state.close_and_wait(std::time::Duration::from_secs(5)).await.unwrap();
        // As after a crash: a write left in the WAL, not folded into the file.
        let conn = Connection::open(&path).unwrap();
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true).unwrap();
        conn.execute("UPDATE meta SET value = 'crashed' WHERE key = 'last_contact_ms'", []).unwrap();
        conn.execute("INSERT INTO leases (stream_id, lease_epoch) VALUES (7, 1)", []).unwrap();
        drop(conn);
        let wal = dir.path().join("w.db-wal");
        assert!(std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0), "a WAL with content");
        let before = (std::fs::read(&path).unwrap(), std::fs::read(&wal).unwrap_or_default());
        let err = open(&path, "b", 10).await.unwrap_err().to_string();
        assert!(err.contains("belongs to server_id \"a\"") && err.contains("not modified"), "{err}");
        let after = (std::fs::read(&path).unwrap(), std::fs::read(&wal).unwrap_or_default());
        assert!(before == after, "neither the file nor its WAL changed");
    }

    #[tokio::test]
    async fn a_damaged_state_file_gets_the_same_advice_as_a_foreign_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let (state, _) = open(&path, "w", 1_000).await.unwrap();
        for stream in 1..=500 {
            state.record(new_record(stream)).await.unwrap();
        }
        state.close_and_wait(std::time::Duration::from_secs(5)).await.unwrap();
        // Scribble over the pages after the header page.
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 8192, "{}", bytes.len());
        for b in &mut bytes[4096..8192] {
            *b = 0xA5;
        }
        std::fs::write(&path, &bytes).unwrap();
        let err = open(&path, "w", 1_000).await.unwrap_err().to_string();
        assert!(err.contains("damaged") && err.contains("move the file aside"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "left as it was");
    }

    #[tokio::test]
    async fn a_state_error_keeps_its_sqlite_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let (state, _) = open(&path, "w", 10).await.unwrap();
        state.close_and_wait(std::time::Duration::from_secs(5)).await.unwrap();
        // A directory where the file should be: SQLite cannot open it.
        let err = open(dir.path(), "w", 10).await.unwrap_err();
        let source = std::error::Error::source(&err);
        assert!(source.is_some_and(|s| s.to_string().contains("unable to open database file")), "{err:?}");
    }
}
