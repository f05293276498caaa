//! The PostgreSQL store: the same tables, batches and answers as the SQLite
//! store (`sqlite.rs`), on a database the team already operates.
//!
//! Like the SQLite store it runs on the store thread, with the synchronous
//! `postgres` client on one connection: a group of batches is one
//! transaction, committed before the calls that caused it are answered.
//! Every connection has a `statement_timeout` and TCP keepalives, so a
//! hung server or a dead network fails a commit instead of stalling it.
//!
//! Versioned migrations live in `orchestrator_schema` (one row: the version
//! applied). A database with tables but no such row belongs to something
//! else and is refused without a write, as is a schema newer than this
//! binary knows.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use postgres::{Client, NoTls, Statement, Transaction};

use super::{AuditEvent, Batch, Loaded, RecordUpload, RecordsOutcome, Store, StoreError, StreamMeta};
use crate::engine::{Change, LeaseState, PersistedStream, PersistedWorker, StreamId};

/// Schema migrations, applied in order. Never edit a released one: add a
/// new one. Version 1 is SQLite's schema after its second migration.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "
    CREATE TABLE streams (
        stream_id   BIGINT PRIMARY KEY,
        name        TEXT NOT NULL DEFAULT '',
        source_url  TEXT NOT NULL DEFAULT '',
        epoch       BIGINT NOT NULL DEFAULT 0,
        retired     BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE TABLE workers (
        server_id       TEXT PRIMARY KEY,
        worker_epoch    BIGINT NOT NULL,
        max_streams     BIGINT NOT NULL,
        client_version  TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE leases (
        stream_id    BIGINT PRIMARY KEY,
        server_id    TEXT NOT NULL,
        lease_epoch  BIGINT NOT NULL,
        revoking     TEXT
    );
    CREATE TABLE lease_history (
        stream_id      BIGINT NOT NULL,
        lease_epoch    BIGINT NOT NULL,
        server_id      TEXT NOT NULL,
        granted_at_ms  BIGINT NOT NULL,
        PRIMARY KEY (stream_id, lease_epoch)
    );
    CREATE TABLE processing_records (
        server_id        TEXT NOT NULL,
        sequence         BIGINT NOT NULL,
        stream_id        BIGINT NOT NULL,
        lease_epoch      BIGINT NOT NULL,
        processed_at_ms  BIGINT NOT NULL,
        local_mode       BOOLEAN NOT NULL,
        stale            BOOLEAN NOT NULL,
        received_at_ms   BIGINT NOT NULL,
        PRIMARY KEY (server_id, sequence)
    );
    CREATE TABLE audit_log (
        id           BIGSERIAL PRIMARY KEY,
        at_ms        BIGINT NOT NULL,
        event        TEXT NOT NULL,
        server_id    TEXT,
        stream_id    BIGINT,
        lease_epoch  BIGINT,
        detail       TEXT
    );
    CREATE TABLE settings (
        key    TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );
    CREATE TABLE record_watermarks (
        server_id  TEXT PRIMARY KEY,
        through    BIGINT NOT NULL
    );
    ",
    // 2: the leader lease (one row): who may write, and its fencing epoch.
    "
    CREATE TABLE leader_lease (
        id          BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
        holder      TEXT NOT NULL,
        address     TEXT NOT NULL,
        epoch       BIGINT NOT NULL,
        expires_at  TIMESTAMPTZ NOT NULL
    );
    ",
];

/// How long one statement may run (or wait for a lock) before the server
/// cancels it.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a transaction may sit idle (its process frozen or cut off)
/// before the server ends it and frees its locks.
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(2);

/// The PostgreSQL store.
pub struct PostgresStore {
    client: Client,
    /// The URL without its password, for messages.
    shown: String,
    statements: HashMap<&'static str, Statement>,
    /// The leadership every commit must still hold: (holder, epoch).
    fence: Option<(String, i64)>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").field("database", &self.shown).finish_non_exhaustive()
    }
}

fn io(e: postgres::Error) -> StoreError {
    StoreError::Io(error_text(&e))
}

/// The error with the server's message, when there is one.
pub(super) fn error_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            text
        }
    }
}

/// `url` with any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    // postgres://user:password@host/db
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((credentials, host)) = rest.rsplit_once('@')
        && let Some((user, _)) = credentials.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

fn reason_name(reason: crate::engine::RevokeReason) -> &'static str {
    super::sqlite::reason_name(reason)
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/db`, or a key=value
    /// connection string), checks that the database is empty or this
    /// program's, and migrates its schema.
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] if the server cannot be reached or refuses the
    /// connection, [`StoreError::Corrupt`] if the database holds another
    /// program's tables or a newer schema (nothing is written then).
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let shown = redact_url(url);
        let open_err = |reason: String| StoreError::Open { path: PathBuf::from(&shown), reason };
        let corrupt = |reason: String| StoreError::Corrupt { path: PathBuf::from(&shown), reason };
        let mut config: postgres::Config =
            url.parse().map_err(|e: postgres::Error| open_err(format!("not a PostgreSQL URL: {}", error_text(&e))))?;
        config
            .connect_timeout(Duration::from_secs(5))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(10))
            .application_name("orchestrator");
        let mut client = config.connect(NoTls).map_err(|e| open_err(error_text(&e)))?;
        // A statement, a wait for a lock, and a transaction left open by a
        // frozen process (which would hold the lease row's lock and block
        // every takeover) are all bounded.
        let ms = STATEMENT_TIMEOUT.as_millis();
        client
            .batch_execute(&format!(
                "SET statement_timeout = {ms}; SET lock_timeout = {ms}; SET idle_in_transaction_session_timeout = {}",
                IDLE_IN_TRANSACTION.as_millis()
            ))
            .map_err(|e| open_err(error_text(&e)))?;
        let version = Self::schema_version(&mut client).map_err(|e| open_err(error_text(&e)))?;
        let known = MIGRATIONS.len() as i64;
        match version {
            Some(v) if v > known => {
                return Err(corrupt(format!(
                    "its schema version {v} is newer than this binary supports ({known}); run a newer orchestrator"
                )));
            }
            None => {
                let tables: i64 = client
                    .query_one(
                        "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()",
                        &[],
                    )
                    .map_err(|e| open_err(error_text(&e)))?
                    .get(0);
                if tables > 0 {
                    return Err(corrupt(
                        "it holds tables but no orchestrator schema version; it belongs to something else and was \
                         not modified (use an empty database)"
                            .into(),
                    ));
                }
            }
            Some(_) => {}
        }
        let mut store = Self { client, shown: shown.clone(), statements: HashMap::new(), fence: None };
        store.migrate(version.unwrap_or(0) as usize).map_err(|e| open_err(format!("migration failed: {e}")))?;
        Ok(store)
    }

    /// Fences every commit with the leader lease: a commit first reads the
    /// lease row with `FOR KEY SHARE` (a takeover waits for it) and is refused,
    /// writing nothing, unless `holder` still holds it at `epoch`. A deposed
    /// leader's writes fail.
    #[must_use]
    pub fn fenced(mut self, holder: &str, epoch: u64) -> Self {
        self.fence = Some((holder.to_owned(), i64::try_from(epoch).unwrap_or(i64::MAX)));
        self
    }

    /// The database, its password hidden.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn schema_version(client: &mut Client) -> Result<Option<i64>, postgres::Error> {
        let exists: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_name = 'orchestrator_schema')",
                &[],
            )?
            .get(0);
        if !exists {
            return Ok(None);
        }
        Ok(client.query_opt("SELECT version FROM orchestrator_schema", &[])?.map(|r| r.get::<_, i64>(0)))
    }

    fn migrate(&mut self, from: usize) -> Result<(), String> {
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(from) {
            let mut tx = self.client.transaction().map_err(|e| error_text(&e))?;
            if i == 0 {
                tx.batch_execute("CREATE TABLE orchestrator_schema (version BIGINT NOT NULL)")
                    .map_err(|e| error_text(&e))?;
                tx.execute("INSERT INTO orchestrator_schema (version) VALUES (0)", &[]).map_err(|e| error_text(&e))?;
            }
            tx.batch_execute(sql).map_err(|e| error_text(&e))?;
            tx.execute("UPDATE orchestrator_schema SET version = $1", &[&((i + 1) as i64)])
                .map_err(|e| error_text(&e))?;
            tx.commit().map_err(|e| error_text(&e))?;
            tracing::info!(version = i + 1, database = %self.shown, "database schema migrated");
        }
        Ok(())
    }

    /// Processing records of a worker, by sequence: `(sequence, stream_id,
    /// lease_epoch, stale)`. For tests and audits.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`].
    pub fn records_of(&mut self, server_id: &str) -> Result<Vec<(u64, StreamId, u64, bool)>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT sequence, stream_id, lease_epoch, stale FROM processing_records
                 WHERE server_id = $1 ORDER BY sequence",
                &[&server_id],
            )
            .map_err(io)?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1), r.get::<_, i64>(2) as u64, r.get::<_, bool>(3)))
            .collect())
    }
}

/// A statement prepared once per connection.
fn prepared(
    tx: &mut Transaction<'_>,
    cache: &mut HashMap<&'static str, Statement>,
    sql: &'static str,
) -> Result<Statement, postgres::Error> {
    if let Some(s) = cache.get(sql) {
        return Ok(s.clone());
    }
    let s = tx.prepare(sql)?;
    cache.insert(sql, s.clone());
    Ok(s)
}

struct Tx<'a, 'b> {
    tx: &'a mut Transaction<'b>,
    cache: &'a mut HashMap<&'static str, Statement>,
}

impl Tx<'_, '_> {
    fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        let s = prepared(self.tx, self.cache, sql)?;
        self.tx.execute(&s, params)
    }

    fn query_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Option<postgres::Row>, postgres::Error> {
        let s = prepared(self.tx, self.cache, sql)?;
        self.tx.query_opt(&s, params)
    }

    fn audit(
        &mut self,
        at_ms: i64,
        event: &str,
        server: Option<&str>,
        stream: Option<i64>,
        epoch: Option<u64>,
        detail: Option<&str>,
    ) -> Result<u64, postgres::Error> {
        self.execute(
            "INSERT INTO audit_log (at_ms, event, server_id, stream_id, lease_epoch, detail) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&at_ms, &event, &server, &stream, &epoch.map(|e| e as i64), &detail],
        )
    }

    fn apply_change(&mut self, at_ms: i64, change: &Change) -> Result<(), postgres::Error> {
        match change {
            Change::WorkerRegistered { server_id, worker_epoch, max_streams } => {
                self.execute(
                    "INSERT INTO workers (server_id, worker_epoch, max_streams) VALUES ($1, $2, $3)
                     ON CONFLICT (server_id) DO UPDATE SET worker_epoch = EXCLUDED.worker_epoch,
                         max_streams = EXCLUDED.max_streams",
                    &[server_id, &(*worker_epoch as i64), &i64::from(*max_streams)],
                )?;
                self.execute(
                    "INSERT INTO settings (key, value) VALUES ('worker_epoch_floor', $1)
                     ON CONFLICT (key) DO UPDATE SET
                         value = GREATEST(settings.value::BIGINT, EXCLUDED.value::BIGINT)::TEXT",
                    &[&worker_epoch.to_string()],
                )?;
                self.audit(at_ms, "worker_registered", Some(server_id), None, Some(*worker_epoch), None)?;
            }
            Change::GraceEnded { missing } => {
                for server_id in missing {
                    self.audit(
                        at_ms,
                        "worker_expired",
                        Some(server_id),
                        None,
                        None,
                        Some("did not re-register within the grace period"),
                    )?;
                }
                let detail = format!("{} worker(s) did not re-register", missing.len());
                self.audit(at_ms, "grace_ended", None, None, None, Some(&detail))?;
            }
            Change::WorkerPruned { server_id } => {
                self.execute("DELETE FROM workers WHERE server_id = $1", &[server_id])?;
                self.audit(at_ms, "worker_pruned", Some(server_id), None, None, None)?;
            }
            Change::WorkerExpired { server_id } => {
                self.audit(at_ms, "worker_expired", Some(server_id), None, None, None)?;
            }
            Change::WorkerLeft { server_id } => {
                self.audit(at_ms, "worker_deregistered", Some(server_id), None, None, None)?;
            }
            Change::LeaseGranted { server_id, lease } => {
                let epoch = lease.lease_epoch as i64;
                self.execute(
                    "INSERT INTO leases (stream_id, server_id, lease_epoch, revoking) VALUES ($1, $2, $3, NULL)
                     ON CONFLICT (stream_id) DO UPDATE SET server_id = EXCLUDED.server_id,
                         lease_epoch = EXCLUDED.lease_epoch, revoking = NULL",
                    &[&lease.stream_id, server_id, &epoch],
                )?;
                self.execute("UPDATE streams SET epoch = $2 WHERE stream_id = $1", &[&lease.stream_id, &epoch])?;
                self.execute(
                    "INSERT INTO lease_history (stream_id, lease_epoch, server_id, granted_at_ms) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (stream_id, lease_epoch) DO UPDATE SET server_id = EXCLUDED.server_id,
                         granted_at_ms = EXCLUDED.granted_at_ms",
                    &[&lease.stream_id, &epoch, server_id, &at_ms],
                )?;
                self.audit(
                    at_ms,
                    "lease_granted",
                    Some(server_id),
                    Some(lease.stream_id),
                    Some(lease.lease_epoch),
                    None,
                )?;
            }
            Change::LeaseRevoking { server_id, lease, reason } => {
                let name = reason_name(*reason);
                self.execute(
                    "UPDATE leases SET revoking = $3 WHERE stream_id = $1 AND lease_epoch = $2",
                    &[&lease.stream_id, &(lease.lease_epoch as i64), &name],
                )?;
                self.audit(
                    at_ms,
                    "lease_revoking",
                    Some(server_id),
                    Some(lease.stream_id),
                    Some(lease.lease_epoch),
                    Some(name),
                )?;
            }
            Change::LeaseEnded { server_id, lease } => {
                self.execute(
                    "DELETE FROM leases WHERE stream_id = $1 AND lease_epoch = $2",
                    &[&lease.stream_id, &(lease.lease_epoch as i64)],
                )?;
                self.audit(
                    at_ms,
                    "lease_ended",
                    Some(server_id),
                    Some(lease.stream_id),
                    Some(lease.lease_epoch),
                    None,
                )?;
            }
            Change::StreamRemoved { stream_id } => {
                self.execute(
                    "UPDATE streams SET retired = TRUE, name = '', source_url = '' WHERE stream_id = $1",
                    &[stream_id],
                )?;
                self.audit(at_ms, "stream_removed", None, Some(*stream_id), None, Some("deleted when its lease ends"))?;
            }
            Change::StreamRestored { stream_id } => {
                self.execute("UPDATE streams SET retired = FALSE WHERE stream_id = $1", &[stream_id])?;
                self.audit(
                    at_ms,
                    "stream_added",
                    None,
                    Some(*stream_id),
                    None,
                    Some("restored before its removal completed"),
                )?;
            }
            Change::StreamAdded { stream_id } => {
                self.execute("DELETE FROM leases WHERE stream_id = $1", &[stream_id])?;
                self.execute(
                    "INSERT INTO streams (stream_id) VALUES ($1) ON CONFLICT (stream_id) DO UPDATE SET retired = FALSE",
                    &[stream_id],
                )?;
                self.audit(at_ms, "stream_added", None, Some(*stream_id), None, None)?;
            }
            Change::StreamDeleted { stream_id } => {
                self.execute("DELETE FROM leases WHERE stream_id = $1", &[stream_id])?;
                self.execute(
                    "UPDATE streams SET retired = TRUE, name = '', source_url = '' WHERE stream_id = $1",
                    &[stream_id],
                )?;
                self.audit(at_ms, "stream_deleted", None, Some(*stream_id), None, None)?;
            }
            Change::RebalancingPaused { paused } => {
                let value = if *paused { "1" } else { "0" };
                self.execute(
                    "INSERT INTO settings (key, value) VALUES ('rebalancing_paused', $1)
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    &[&value],
                )?;
                let event = if *paused { "rebalancing_paused" } else { "rebalancing_resumed" };
                self.audit(at_ms, event, None, None, None, None)?;
            }
            Change::BrakeChanged { engaged } => {
                let event = if *engaged { "brake_engaged" } else { "brake_released" };
                self.audit(at_ms, event, None, None, None, None)?;
            }
        }
        Ok(())
    }

    /// As `SqliteStore::store_records`: stale flags, duplicates answered as
    /// the first time, the contiguous watermark.
    fn store_records(&mut self, at_ms: i64, upload: &RecordUpload) -> Result<RecordsOutcome, postgres::Error> {
        let mut outcome = RecordsOutcome::default();
        let server = upload.server_id.as_str();
        for r in &upload.records {
            let epoch = r.lease_epoch as i64;
            let was_held = self
                .query_opt(
                    "SELECT granted_at_ms FROM lease_history WHERE stream_id = $1 AND lease_epoch = $2 AND server_id = $3",
                    &[&r.stream_id, &epoch, &server],
                )?
                .is_some();
            let superseded = self
                .query_opt(
                    "SELECT 1 FROM lease_history WHERE stream_id = $1 AND lease_epoch > $2 AND granted_at_ms <= $3 LIMIT 1",
                    &[&r.stream_id, &epoch, &r.processed_at_ms],
                )?
                .is_some();
            let stale = !was_held || superseded;
            let inserted = self.execute(
                "INSERT INTO processing_records
                 (server_id, sequence, stream_id, lease_epoch, processed_at_ms, local_mode, stale, received_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                &[
                    &server,
                    &(r.sequence as i64),
                    &r.stream_id,
                    &epoch,
                    &r.processed_at_ms,
                    &r.local_mode,
                    &stale,
                    &at_ms,
                ],
            )?;
            if inserted == 0 {
                outcome.duplicates += 1;
                let was_stale = self
                    .query_opt(
                        "SELECT stale FROM processing_records WHERE server_id = $1 AND sequence = $2",
                        &[&server, &(r.sequence as i64)],
                    )?
                    .is_some_and(|row| row.get::<_, bool>(0));
                if was_stale {
                    outcome.stale += 1;
                }
            } else if stale {
                outcome.stale += 1;
            }
        }
        let before: i64 = self
            .query_opt("SELECT through FROM record_watermarks WHERE server_id = $1", &[&server])?
            .map_or(0, |row| row.get(0));
        let claim = i64::try_from(upload.synced_below.saturating_sub(1)).unwrap_or(i64::MAX);
        let mut through = before.max(claim);
        while let Some(next) = through.checked_add(1)
            && self
                .query_opt(
                    "SELECT 1 FROM processing_records WHERE server_id = $1 AND sequence = $2",
                    &[&server, &next],
                )?
                .is_some()
        {
            through = next;
        }
        if through != before {
            self.execute(
                "INSERT INTO record_watermarks (server_id, through) VALUES ($1, $2)
                 ON CONFLICT (server_id) DO UPDATE SET through = EXCLUDED.through",
                &[&server, &through],
            )?;
        }
        outcome.acknowledged_through = through as u64;
        Ok(outcome)
    }
}

impl Store for PostgresStore {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        let client = &mut self.client;
        let mut loaded = Loaded::default();
        let rows = client
            .query("SELECT server_id, worker_epoch, max_streams, client_version FROM workers ORDER BY server_id COLLATE \"C\"", &[])
            .map_err(io)?;
        for r in rows {
            let server_id: String = r.get(0);
            let version: String = r.get(3);
            if !version.is_empty() {
                loaded.client_versions.insert(server_id.clone(), version);
            }
            let max: i64 = r.get(2);
            loaded.state.workers.push(PersistedWorker {
                server_id,
                worker_epoch: r.get::<_, i64>(1) as u64,
                max_streams: u32::try_from(max).unwrap_or(u32::MAX),
            });
        }
        let rows = client
            .query(
                "SELECT s.stream_id, s.name, s.source_url, s.epoch, s.retired, l.server_id, l.lease_epoch, l.revoking
                 FROM streams s LEFT JOIN leases l ON l.stream_id = s.stream_id ORDER BY s.stream_id",
                &[],
            )
            .map_err(io)?;
        for r in rows {
            let stream_id: i64 = r.get(0);
            let (name, source_url): (String, String) = (r.get(1), r.get(2));
            let epoch: i64 = r.get(3);
            if r.get::<_, bool>(4) {
                if epoch > 0 {
                    loaded.state.retired_epochs.push((stream_id, epoch as u64));
                }
                continue;
            }
            if !name.is_empty() || !source_url.is_empty() {
                loaded.meta.insert(stream_id, StreamMeta { name, source_url });
            }
            let owner: Option<String> = r.get(5);
            let lease_epoch: Option<i64> = r.get(6);
            let revoking: Option<String> = r.get(7);
            let lease = owner.zip(lease_epoch).map(|(owner, e)| {
                let state = revoking
                    .as_deref()
                    .map_or(LeaseState::Active, |r| LeaseState::Revoking(super::sqlite::reason_from_name(r)));
                (owner, e as u64, state)
            });
            loaded.state.streams.push(PersistedStream { stream_id, epoch: epoch as u64, lease });
        }
        for r in client.query("SELECT server_id, through FROM record_watermarks", &[]).map_err(io)? {
            loaded.acknowledged_through.insert(r.get(0), r.get::<_, i64>(1) as u64);
        }
        let setting = |client: &mut Client, key: &str| -> Result<Option<String>, StoreError> {
            Ok(client.query_opt("SELECT value FROM settings WHERE key = $1", &[&key]).map_err(io)?.map(|r| r.get(0)))
        };
        loaded.state.rebalancing_paused = setting(client, "rebalancing_paused")?.is_some_and(|v| v == "1");
        loaded.state.worker_epoch_floor =
            setting(client, "worker_epoch_floor")?.and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(loaded)
    }

    fn commit(&mut self, batches: &[Batch]) -> Result<Vec<Option<RecordsOutcome>>, StoreError> {
        let Self { client, statements, fence, .. } = self;
        let mut tx = client.transaction().map_err(io)?;
        if let Some((holder, epoch)) = fence {
            // FOR KEY SHARE: a renewal (an UPDATE of other columns) does not
            // wait for it; a takeover (SELECT … FOR UPDATE) does.
            let row = tx.query_opt("SELECT holder, epoch FROM leader_lease FOR KEY SHARE", &[]).map_err(io)?;
            let current = row.map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)));
            if current.as_ref().is_none_or(|(h, e)| h != holder || e != epoch) {
                return Err(StoreError::Io(format!(
                    "leadership lost: this replica ({holder}, epoch {epoch}) no longer holds the leader lease{}; \
                     nothing of this commit was written",
                    current.map(|(h, e)| format!(" ({h} holds it at epoch {e})")).unwrap_or_default()
                )));
            }
        }
        let mut outcomes = Vec::with_capacity(batches.len());
        {
            let mut t = Tx { tx: &mut tx, cache: statements };
            for batch in batches {
                for change in &batch.changes {
                    t.apply_change(batch.at_ms, change).map_err(io)?;
                }
                for (stream_id, meta) in &batch.meta {
                    t.execute(
                        "UPDATE streams SET name = $2, source_url = $3 WHERE stream_id = $1",
                        &[stream_id, &meta.name, &meta.source_url],
                    )
                    .map_err(io)?;
                }
                if let Some((server_id, version)) = &batch.client_version {
                    t.execute("UPDATE workers SET client_version = $2 WHERE server_id = $1", &[server_id, version])
                        .map_err(io)?;
                }
                outcomes.push(match &batch.records {
                    Some(upload) => Some(t.store_records(batch.at_ms, upload).map_err(io)?),
                    None => None,
                });
            }
        }
        tx.commit().map_err(io)?;
        Ok(outcomes)
    }

    fn recent_events(&mut self, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let limit = limit.min(super::MAX_EVENTS) as i64;
        let rows = self
            .client
            .query(
                "SELECT id, at_ms, event, server_id, stream_id, lease_epoch, detail FROM audit_log
                 ORDER BY id DESC LIMIT $1",
                &[&limit],
            )
            .map_err(io)?;
        Ok(rows
            .into_iter()
            .map(|r| AuditEvent {
                id: r.get(0),
                at_ms: r.get(1),
                event: r.get(2),
                server_id: r.get(3),
                stream_id: r.get(4),
                lease_epoch: r.get::<_, Option<i64>>(5).map(|e| e as u64),
                detail: r.get(6),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(redact_url("postgres://app:s3cret@db:5432/orch"), "postgres://app:***@db:5432/orch");
        assert_eq!(redact_url("postgres://app@db/orch"), "postgres://app@db/orch");
        assert_eq!(redact_url("host=db user=app"), "host=db user=app");
    }
}
