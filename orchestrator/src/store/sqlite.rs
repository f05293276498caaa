//! The embedded store: one SQLite file in WAL mode.
//!
//! Durability rule: a batch is committed with `synchronous = FULL` before
//! the call that caused it is answered; group commit amortises the fsync
//! over every batch waiting in the queue. Heartbeats are not written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::{AuditEvent, Batch, Loaded, RecordRow, RecordUpload, RecordsOutcome, Store, StoreError, StreamMeta};
use crate::engine::{Change, LeaseState, PersistedStream, PersistedWorker, RevokeReason, StreamId};

/// Schema migrations, applied in order; `PRAGMA user_version` is the number
/// applied. Never edit a released migration: add a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "
    CREATE TABLE streams (
        stream_id   INTEGER PRIMARY KEY,
        name        TEXT NOT NULL DEFAULT '',
        source_url  TEXT NOT NULL DEFAULT '',
        epoch       INTEGER NOT NULL DEFAULT 0,
        retired     INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE workers (
        server_id       TEXT PRIMARY KEY,
        worker_epoch    INTEGER NOT NULL,
        max_streams     INTEGER NOT NULL,
        client_version  TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE leases (
        stream_id    INTEGER PRIMARY KEY,
        server_id    TEXT NOT NULL,
        lease_epoch  INTEGER NOT NULL,
        revoking     TEXT
    );
    CREATE TABLE lease_history (
        stream_id      INTEGER NOT NULL,
        lease_epoch    INTEGER NOT NULL,
        server_id      TEXT NOT NULL,
        granted_at_ms  INTEGER NOT NULL,
        PRIMARY KEY (stream_id, lease_epoch)
    );
    CREATE TABLE processing_records (
        server_id        TEXT NOT NULL,
        sequence         INTEGER NOT NULL,
        stream_id        INTEGER NOT NULL,
        lease_epoch      INTEGER NOT NULL,
        processed_at_ms  INTEGER NOT NULL,
        local_mode       INTEGER NOT NULL,
        stale            INTEGER NOT NULL,
        received_at_ms   INTEGER NOT NULL,
        PRIMARY KEY (server_id, sequence)
    );
    CREATE TABLE audit_log (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms        INTEGER NOT NULL,
        event        TEXT NOT NULL,
        server_id    TEXT,
        stream_id    INTEGER,
        lease_epoch  INTEGER,
        detail       TEXT
    );
    CREATE TABLE settings (
        key    TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );
    ",
    // 2: the acknowledged watermark per worker: every record with a
    // sequence up to `through` is stored (computed for existing records).
    "
    CREATE TABLE record_watermarks (
        server_id  TEXT PRIMARY KEY,
        through    INTEGER NOT NULL
    );
    WITH RECURSIVE w(server_id, through) AS (
        SELECT DISTINCT server_id, 0 FROM processing_records
        UNION ALL
        SELECT w.server_id, w.through + 1 FROM w
        JOIN processing_records p ON p.server_id = w.server_id AND p.sequence = w.through + 1
    )
    INSERT INTO record_watermarks (server_id, through)
    SELECT server_id, max(through) FROM w GROUP BY server_id;
    ",
];

/// The SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

fn io(e: rusqlite::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

pub(crate) fn reason_name(reason: RevokeReason) -> &'static str {
    match reason {
        RevokeReason::Rebalance => "rebalance",
        RevokeReason::Moved => "moved",
        RevokeReason::StreamRemoved => "stream_removed",
        RevokeReason::Drain => "drain",
        RevokeReason::StaleEpoch => "stale_epoch",
        RevokeReason::OverCapacity => "over_capacity",
    }
}

pub(super) fn reason_from_name(name: &str) -> RevokeReason {
    match name {
        "moved" => RevokeReason::Moved,
        "stream_removed" => RevokeReason::StreamRemoved,
        "drain" => RevokeReason::Drain,
        "stale_epoch" => RevokeReason::StaleEpoch,
        "over_capacity" => RevokeReason::OverCapacity,
        _ => RevokeReason::Rebalance,
    }
}

impl SqliteStore {
    /// Opens (or creates) the database at `path`, checks that it is a
    /// database of this program, and migrates its schema.
    ///
    /// A file that is not a SQLite database, or whose schema is newer than
    /// this binary knows, is refused without being written to.
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] if the file cannot be opened or created (missing
    /// directory, permissions), [`StoreError::Corrupt`] if it is not usable.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let path_buf = path.to_path_buf();
        let open_err = |reason: String| StoreError::Open { path: path_buf.clone(), reason };
        let corrupt = |reason: String| StoreError::Corrupt { path: path_buf.clone(), reason };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            return Err(open_err(format!(
                "directory {} does not exist; create it or pick another path",
                dir.display()
            )));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| open_err(format!("{e}; check the path and its permissions")))?;
        // Read before writing anything: a file that is not a database fails
        // here and is left untouched.
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| {
            corrupt(format!(
                "{e}. It is not an orchestrator database (or it is damaged); the file was not modified. \
                 Move it aside and start with a new file, or restore it from a backup"
            ))
        })?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(corrupt(format!(
                "its schema version {version} is newer than this binary supports ({known}); run a newer orchestrator"
            )));
        }
        if version == 0 {
            let tables: i64 = conn
                .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table'", [], |r| r.get(0))
                .map_err(|e| corrupt(e.to_string()))?;
            if tables > 0 {
                return Err(corrupt(
                    "it holds tables but no orchestrator schema version; it belongs to something else and was not modified"
                        .into(),
                ));
            }
        }
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| open_err(format!("cannot enable WAL: {e}")))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(|e| open_err(e.to_string()))?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(|e| open_err(e.to_string()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| open_err(e.to_string()))?;
        let mut store = Self { conn, path: path.to_path_buf() };
        store.migrate(version as usize).map_err(|e| open_err(format!("migration failed: {e}")))?;
        Ok(store)
    }

    /// A store in memory, with the current schema: for tests and the
    /// deterministic simulation, whose harness keeps it across simulated
    /// crashes as a disk would. Nothing is written to a file.
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] if SQLite cannot allocate it.
    pub fn in_memory() -> Result<Self, StoreError> {
        let path = PathBuf::from(":memory:");
        let open_err = |e: rusqlite::Error| StoreError::Open { path: path.clone(), reason: e.to_string() };
        let conn = Connection::open_in_memory().map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(open_err)?;
        let mut store = Self { conn, path: path.clone() };
        store.migrate(0).map_err(open_err)?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn migrate(&mut self, from: usize) -> Result<(), rusqlite::Error> {
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(from) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
            tracing::info!(version = i + 1, path = %self.path.display(), "database schema migrated");
        }
        Ok(())
    }

    fn apply_change(tx: &rusqlite::Transaction<'_>, at_ms: i64, change: &Change) -> Result<(), rusqlite::Error> {
        let audit = |event: &str,
                     server: Option<&str>,
                     stream: Option<i64>,
                     epoch: Option<u64>,
                     detail: Option<&str>| {
            tx.execute(
                "INSERT INTO audit_log (at_ms, event, server_id, stream_id, lease_epoch, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![at_ms, event, server, stream, epoch.map(|e| e as i64), detail],
            )
        };
        match change {
            Change::WorkerRegistered { server_id, worker_epoch, max_streams } => {
                tx.execute(
                    "INSERT INTO workers (server_id, worker_epoch, max_streams) VALUES (?1, ?2, ?3)
                     ON CONFLICT (server_id) DO UPDATE SET worker_epoch = excluded.worker_epoch, max_streams = excluded.max_streams",
                    params![server_id, *worker_epoch as i64, max_streams],
                )?;
                tx.execute(
                    "INSERT INTO settings (key, value) VALUES ('worker_epoch_floor', ?1)
                     ON CONFLICT (key) DO UPDATE SET value = CAST(MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER)) AS TEXT)",
                    params![worker_epoch.to_string()],
                )?;
                audit("worker_registered", Some(server_id), None, Some(*worker_epoch), None)?;
            }
            Change::GraceEnded { missing } => {
                for server_id in missing {
                    audit(
                        "worker_expired",
                        Some(server_id),
                        None,
                        None,
                        Some("did not re-register within the grace period"),
                    )?;
                }
                let detail = format!("{} worker(s) did not re-register", missing.len());
                audit("grace_ended", None, None, None, Some(&detail))?;
            }
            Change::WorkerPruned { server_id } => {
                tx.execute("DELETE FROM workers WHERE server_id = ?1", params![server_id])?;
                audit("worker_pruned", Some(server_id), None, None, None)?;
            }
            Change::WorkerExpired { server_id } => {
                audit("worker_expired", Some(server_id), None, None, None)?;
            }
            Change::WorkerLeft { server_id } => {
                audit("worker_deregistered", Some(server_id), None, None, None)?;
            }
            Change::LeaseGranted { server_id, lease } => {
                tx.execute(
                    "INSERT INTO leases (stream_id, server_id, lease_epoch, revoking) VALUES (?1, ?2, ?3, NULL)
                     ON CONFLICT (stream_id) DO UPDATE SET server_id = excluded.server_id,
                         lease_epoch = excluded.lease_epoch, revoking = NULL",
                    params![lease.stream_id, server_id, lease.lease_epoch as i64],
                )?;
                tx.execute(
                    "UPDATE streams SET epoch = ?2 WHERE stream_id = ?1",
                    params![lease.stream_id, lease.lease_epoch as i64],
                )?;
                tx.execute(
                    "INSERT OR REPLACE INTO lease_history (stream_id, lease_epoch, server_id, granted_at_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![lease.stream_id, lease.lease_epoch as i64, server_id, at_ms],
                )?;
                audit("lease_granted", Some(server_id), Some(lease.stream_id), Some(lease.lease_epoch), None)?;
            }
            Change::LeaseRevoking { server_id, lease, reason } => {
                tx.execute(
                    "UPDATE leases SET revoking = ?3 WHERE stream_id = ?1 AND lease_epoch = ?2",
                    params![lease.stream_id, lease.lease_epoch as i64, reason_name(*reason)],
                )?;

                audit(
                    "lease_revoking",
                    Some(server_id),
                    Some(lease.stream_id),
                    Some(lease.lease_epoch),
                    Some(reason_name(*reason)),
                )?;
            }
            Change::LeaseEnded { server_id, lease } => {
                tx.execute(
                    "DELETE FROM leases WHERE stream_id = ?1 AND lease_epoch = ?2",
                    params![lease.stream_id, lease.lease_epoch as i64],
                )?;
                audit("lease_ended", Some(server_id), Some(lease.stream_id), Some(lease.lease_epoch), None)?;
            }
            Change::StreamRemoved { stream_id } => {
                // The removal is durable now, not when the lease ends: a
                // restart before the release must not bring the stream back
                // (its owner is told STREAM_REMOVED on return).
                tx.execute(
                    "UPDATE streams SET retired = 1, name = '', source_url = '' WHERE stream_id = ?1",
                    params![stream_id],
                )?;
                audit("stream_removed", None, Some(*stream_id), None, Some("deleted when its lease ends"))?;
            }
            Change::StreamRestored { stream_id } => {
                tx.execute("UPDATE streams SET retired = 0 WHERE stream_id = ?1", params![stream_id])?;
                audit("stream_added", None, Some(*stream_id), None, Some("restored before its removal completed"))?;
            }
            Change::StreamAdded { stream_id } => {
                // A lease row left by a removal that a restart cut short
                // belongs to no one now.
                tx.execute("DELETE FROM leases WHERE stream_id = ?1", params![stream_id])?;
                tx.execute(
                    "INSERT INTO streams (stream_id) VALUES (?1) ON CONFLICT (stream_id) DO UPDATE SET retired = 0",
                    params![stream_id],
                )?;
                audit("stream_added", None, Some(*stream_id), None, None)?;
            }
            Change::StreamDeleted { stream_id } => {
                tx.execute("DELETE FROM leases WHERE stream_id = ?1", params![stream_id])?;
                tx.execute(
                    "UPDATE streams SET retired = 1, name = '', source_url = '' WHERE stream_id = ?1",
                    params![stream_id],
                )?;
                audit("stream_deleted", None, Some(*stream_id), None, None)?;
            }
            Change::RebalancingPaused { paused } => {
                tx.execute(
                    "INSERT INTO settings (key, value) VALUES ('rebalancing_paused', ?1)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![if *paused { "1" } else { "0" }],
                )?;
                audit(if *paused { "rebalancing_paused" } else { "rebalancing_resumed" }, None, None, None, None)?;
            }
            Change::BrakeChanged { engaged } => {
                audit(if *engaged { "brake_engaged" } else { "brake_released" }, None, None, None, None)?;
            }
        }
        Ok(())
    }

    fn store_records(
        tx: &rusqlite::Transaction<'_>,
        at_ms: i64,
        upload: &RecordUpload,
    ) -> Result<RecordsOutcome, rusqlite::Error> {
        let mut outcome = RecordsOutcome::default();
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO processing_records
             (server_id, sequence, stream_id, lease_epoch, processed_at_ms, local_mode, stale, received_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        // Stale: this worker never held the stream at that epoch, or a newer
        // epoch had been granted by the time it was processed.
        let mut held = tx.prepare_cached(
            "SELECT granted_at_ms FROM lease_history WHERE stream_id = ?1 AND lease_epoch = ?2 AND server_id = ?3",
        )?;
        let mut newer = tx.prepare_cached(
            "SELECT 1 FROM lease_history WHERE stream_id = ?1 AND lease_epoch > ?2 AND granted_at_ms <= ?3 LIMIT 1",
        )?;
        for r in &upload.records {
            let was_held: Option<i64> = held
                .query_row(params![r.stream_id, r.lease_epoch as i64, upload.server_id], |row| row.get(0))
                .optional()?;
            let superseded = newer
                .query_row(params![r.stream_id, r.lease_epoch as i64, r.processed_at_ms], |_| Ok(()))
                .optional()?
                .is_some();
            let stale = was_held.is_none() || superseded;
            let inserted = insert.execute(params![
                upload.server_id,
                r.sequence as i64,
                r.stream_id,
                r.lease_epoch as i64,
                r.processed_at_ms,
                r.local_mode,
                stale,
                at_ms
            ])?;
            if inserted == 0 {
                outcome.duplicates += 1;
                // A retry reports what the first call reported: the stored
                // record's own staleness.
                let was_stale: bool = tx
                    .prepare_cached("SELECT stale FROM processing_records WHERE server_id = ?1 AND sequence = ?2")?
                    .query_row(params![upload.server_id, r.sequence as i64], |row| row.get(0))?;
                if was_stale {
                    outcome.stale += 1;
                }
            } else if stale {
                outcome.stale += 1;
            }
        }
        // The watermark: the highest sequence with every sequence from 1 up
        // to it stored. A gap (a record not uploaded yet) holds it back, so
        // a worker never marks as synced a record the orchestrator lacks.
        let before: i64 = tx
            .query_row("SELECT through FROM record_watermarks WHERE server_id = ?1", params![upload.server_id], |row| {
                row.get(0)
            })
            .optional()?
            .unwrap_or(0);
        // The worker's claim (nothing unsynced below `synced_below`) lets
        // the watermark pass a gap that can never be filled.
        let claim = i64::try_from(upload.synced_below.saturating_sub(1)).unwrap_or(i64::MAX);
        let mut through = before.max(claim);
        let mut stored =
            tx.prepare_cached("SELECT 1 FROM processing_records WHERE server_id = ?1 AND sequence = ?2")?;
        // Sequences are at most i64::MAX (the service refuses more): the
        // watermark stops there rather than overflow.
        while let Some(next) = through.checked_add(1)
            && stored.query_row(params![upload.server_id, next], |_| Ok(())).optional()?.is_some()
        {
            through = next;
        }
        if through != before {
            tx.execute(
                "INSERT INTO record_watermarks (server_id, through) VALUES (?1, ?2)
                 ON CONFLICT (server_id) DO UPDATE SET through = excluded.through",
                params![upload.server_id, through],
            )?;
        }
        outcome.acknowledged_through = through as u64;
        Ok(outcome)
    }

    /// Processing records of a worker, by sequence: `(sequence, stream_id,
    /// lease_epoch, stale)`. For tests and audits.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`].
    pub fn records_of(&self, server_id: &str) -> Result<Vec<(u64, StreamId, u64, bool)>, StoreError> {
        let rows = self.stored_records(server_id)?;
        Ok(rows.into_iter().map(|(r, stale)| (r.sequence, r.stream_id, r.lease_epoch, stale)).collect())
    }

    /// Processing records of a worker, by sequence, as uploaded. For
    /// tests and audits.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`].
    pub fn record_rows(&self, server_id: &str) -> Result<Vec<RecordRow>, StoreError> {
        Ok(self.stored_records(server_id)?.into_iter().map(|(r, _)| r).collect())
    }

    /// Every stored record of a worker with its stale flag, by sequence.
    fn stored_records(&self, server_id: &str) -> Result<Vec<(RecordRow, bool)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT sequence, stream_id, lease_epoch, processed_at_ms, local_mode, stale FROM processing_records
                 WHERE server_id = ?1 ORDER BY sequence",
            )
            .map_err(io)?;
        let rows = stmt
            .query_map(params![server_id], |r| {
                let row = RecordRow {
                    sequence: r.get::<_, i64>(0)? as u64,
                    stream_id: r.get(1)?,
                    lease_epoch: r.get::<_, i64>(2)? as u64,
                    processed_at_ms: r.get(3)?,
                    local_mode: r.get(4)?,
                };
                Ok((row, r.get(5)?))
            })
            .map_err(io)?;
        rows.collect::<Result<_, _>>().map_err(io)
    }
}

impl Store for SqliteStore {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        let conn = &self.conn;
        let mut loaded = Loaded::default();
        let mut stmt = conn
            .prepare("SELECT server_id, worker_epoch, max_streams, client_version FROM workers ORDER BY server_id")
            .map_err(io)?;
        let workers = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, u32>(2)?, r.get::<_, String>(3)?))
            })
            .map_err(io)?;
        for w in workers {
            let (server_id, epoch, max, version) = w.map_err(io)?;
            if !version.is_empty() {
                loaded.client_versions.insert(server_id.clone(), version);
            }
            loaded.state.workers.push(PersistedWorker { server_id, worker_epoch: epoch as u64, max_streams: max });
        }
        let mut stmt = conn
            .prepare(
                "SELECT s.stream_id, s.name, s.source_url, s.epoch, s.retired, l.server_id, l.lease_epoch, l.revoking
                 FROM streams s LEFT JOIN leases l ON l.stream_id = s.stream_id ORDER BY s.stream_id",
            )
            .map_err(io)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, bool>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                    r.get::<_, Option<String>>(7)?,
                ))
            })
            .map_err(io)?;
        let mut meta = HashMap::new();
        for row in rows {
            let (stream_id, name, source_url, epoch, retired, owner, lease_epoch, revoking) = row.map_err(io)?;
            if retired {
                if epoch > 0 {
                    loaded.state.retired_epochs.push((stream_id, epoch as u64));
                }
                continue;
            }
            if !name.is_empty() || !source_url.is_empty() {
                meta.insert(stream_id, StreamMeta { name, source_url });
            }
            let lease = owner.zip(lease_epoch).map(|(owner, e)| {
                let state =
                    revoking.as_deref().map_or(LeaseState::Active, |r| LeaseState::Revoking(reason_from_name(r)));
                (owner, e as u64, state)
            });
            loaded.state.streams.push(PersistedStream { stream_id, epoch: epoch as u64, lease });
        }
        loaded.meta = meta;
        let mut stmt = conn.prepare("SELECT server_id, through FROM record_watermarks").map_err(io)?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))).map_err(io)?;
        for row in rows {
            let (server_id, through) = row.map_err(io)?;
            loaded.acknowledged_through.insert(server_id, through);
        }
        loaded.state.rebalancing_paused = conn
            .query_row("SELECT value FROM settings WHERE key = 'rebalancing_paused'", [], |r| r.get::<_, String>(0))
            .optional()
            .map_err(io)?
            .is_some_and(|v| v == "1");
        loaded.state.worker_epoch_floor = conn
            .query_row("SELECT value FROM settings WHERE key = 'worker_epoch_floor'", [], |r| r.get::<_, String>(0))
            .optional()
            .map_err(io)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(loaded)
    }

    fn commit(&mut self, batches: &[Batch]) -> Result<Vec<Option<RecordsOutcome>>, StoreError> {
        let tx = self.conn.transaction().map_err(io)?;
        let mut outcomes = Vec::with_capacity(batches.len());
        for batch in batches {
            for change in &batch.changes {
                Self::apply_change(&tx, batch.at_ms, change).map_err(io)?;
            }
            for (stream_id, meta) in &batch.meta {
                tx.execute(
                    "UPDATE streams SET name = ?2, source_url = ?3 WHERE stream_id = ?1",
                    params![stream_id, meta.name, meta.source_url],
                )
                .map_err(io)?;
            }
            if let Some((server_id, version)) = &batch.client_version {
                tx.execute("UPDATE workers SET client_version = ?2 WHERE server_id = ?1", params![server_id, version])
                    .map_err(io)?;
            }
            outcomes.push(match &batch.records {
                Some(upload) => Some(Self::store_records(&tx, batch.at_ms, upload).map_err(io)?),
                None => None,
            });
        }
        tx.commit().map_err(io)?;
        Ok(outcomes)
    }

    fn recent_events(&mut self, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, at_ms, event, server_id, stream_id, lease_epoch, detail FROM audit_log
                 ORDER BY id DESC LIMIT ?1",
            )
            .map_err(io)?;
        let rows = stmt
            .query_map(params![limit.min(super::MAX_EVENTS) as i64], |r| {
                Ok(AuditEvent {
                    id: r.get(0)?,
                    at_ms: r.get(1)?,
                    event: r.get(2)?,
                    server_id: r.get(3)?,
                    stream_id: r.get(4)?,
                    lease_epoch: r.get::<_, Option<i64>>(5)?.map(|e| e as u64),
                    detail: r.get(6)?,
                })
            })
            .map_err(io)?;
        rows.collect::<Result<_, _>>().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Lease;

    fn batch(changes: Vec<Change>) -> Batch {
        Batch { at_ms: 1_000, changes, ..Batch::default() }
    }

    #[test]
    fn changes_round_trip_through_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let mut s = SqliteStore::open(&path).unwrap();
        let lease = Lease { stream_id: 7, lease_epoch: 3 };
        s.commit(&[batch(vec![
            Change::StreamAdded { stream_id: 7 },
            Change::StreamAdded { stream_id: 8 },
            Change::WorkerRegistered { server_id: "w".into(), worker_epoch: 2, max_streams: 5 },
            Change::LeaseGranted { server_id: "w".into(), lease },
            Change::LeaseRevoking { server_id: "w".into(), lease, reason: RevokeReason::Drain },
            Change::RebalancingPaused { paused: true },
        ])])
        .unwrap();
        drop(s);
        let loaded = SqliteStore::open(&path).unwrap().load().unwrap();
        assert_eq!(loaded.state.workers, [PersistedWorker { server_id: "w".into(), worker_epoch: 2, max_streams: 5 }]);
        assert_eq!(
            loaded.state.streams,
            [
                PersistedStream {
                    stream_id: 7,
                    epoch: 3,
                    lease: Some(("w".into(), 3, LeaseState::Revoking(RevokeReason::Drain)))
                },
                PersistedStream { stream_id: 8, epoch: 0, lease: None },
            ]
        );
        assert!(loaded.state.rebalancing_paused);
    }

    #[test]
    fn a_deleted_stream_keeps_its_epoch_for_a_later_add() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let mut s = SqliteStore::open(&path).unwrap();
        s.commit(&[batch(vec![
            Change::StreamAdded { stream_id: 1 },
            Change::LeaseGranted { server_id: "w".into(), lease: Lease { stream_id: 1, lease_epoch: 4 } },
            Change::StreamDeleted { stream_id: 1 },
        ])])
        .unwrap();
        let loaded = s.load().unwrap();
        assert!(loaded.state.streams.is_empty());
        assert_eq!(loaded.state.retired_epochs, [(1, 4)]);
    }

    #[test]
    fn records_are_stored_once_and_stale_ones_are_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("o.db")).unwrap();
        // w held stream 1 at epoch 1 from t=0; v got epoch 2 at t=5000.
        let mut b = batch(vec![
            Change::StreamAdded { stream_id: 1 },
            Change::LeaseGranted { server_id: "w".into(), lease: Lease { stream_id: 1, lease_epoch: 1 } },
        ]);
        b.at_ms = 0;
        s.commit(&[b]).unwrap();
        let mut b =
            batch(vec![Change::LeaseGranted { server_id: "v".into(), lease: Lease { stream_id: 1, lease_epoch: 2 } }]);
        b.at_ms = 5_000;
        s.commit(&[b]).unwrap();
        let rec =
            |sequence, at| RecordRow { stream_id: 1, lease_epoch: 1, processed_at_ms: at, sequence, local_mode: true };
        let upload =
            RecordUpload { server_id: "w".into(), records: vec![rec(1, 1_000), rec(2, 6_000)], synced_below: 0 };
        let first = s.commit(&[Batch { records: Some(upload.clone()), ..batch(vec![]) }]).unwrap();
        assert_eq!(first, [Some(RecordsOutcome { acknowledged_through: 2, stale: 1, duplicates: 0 })]);
        let again = s.commit(&[Batch { records: Some(upload), ..batch(vec![]) }]).unwrap();
        // A retry reports what the first call did (the contract's retry rule).
        assert_eq!(again, [Some(RecordsOutcome { acknowledged_through: 2, stale: 1, duplicates: 2 })]);
        assert_eq!(s.records_of("w").unwrap(), [(1, 1, 1, false), (2, 1, 1, true)]);
    }

    #[test]
    fn the_acknowledgement_is_the_highest_contiguous_sequence_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let mut s = SqliteStore::open(&path).unwrap();
        let rec =
            |sequence| RecordRow { stream_id: 1, lease_epoch: 1, processed_at_ms: 0, sequence, local_mode: false };
        let upload = |seqs: &[u64]| Batch {
            records: Some(RecordUpload {
                server_id: "w".into(),
                records: seqs.iter().map(|&q| rec(q)).collect(),
                synced_below: 0,
            }),
            ..batch(vec![])
        };
        let through = |o: Vec<Option<RecordsOutcome>>| o[0].map(|o| o.acknowledged_through);
        assert_eq!(through(s.commit(&[upload(&[1, 2, 4])]).unwrap()), Some(2), "3 is missing: not past 2");
        assert_eq!(through(s.commit(&[upload(&[5])]).unwrap()), Some(2));
        assert_eq!(through(s.commit(&[upload(&[3])]).unwrap()), Some(5), "the gap is filled");
        // A gap that can never be filled (6 and 7 are gone for good): the
        // worker says it holds nothing unsynced below 8.
        let mut past_gap = upload(&[8, 9]);
        past_gap.records.as_mut().unwrap().synced_below = 8;
        assert_eq!(through(s.commit(&[upload(&[8, 9])]).unwrap()), Some(5), "held back by 6 and 7");
        assert_eq!(through(s.commit(&[past_gap]).unwrap()), Some(9), "counted from the worker's claim");
        drop(s);
        let loaded = SqliteStore::open(&path).unwrap().load().unwrap();
        assert_eq!(loaded.acknowledged_through.get("w"), Some(&9));
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let garbage = b"this is not a database, just some text that happens to be here".repeat(100);
        std::fs::write(&path, &garbage).unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("o.db"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), garbage);
        assert!(!dir.path().join("o.db-wal").exists());
    }

    #[test]
    fn a_foreign_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.db");
        Connection::open(&path).unwrap().execute_batch("CREATE TABLE t (x)").unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(err.to_string().contains("belongs to something else"), "{err}");
    }

    #[test]
    fn a_missing_directory_is_named() {
        let err = SqliteStore::open(Path::new("/nonexistent-dir/o.db")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir does not exist"), "{err}");
    }
}
