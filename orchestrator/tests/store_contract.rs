//! One contract, two backends: the same batches committed to the SQLite
//! store and to the PostgreSQL store (a throwaway cluster,
//! `fixtures::postgres`) give the same answers and load the same state;
//! both refuse a database of another program and a newer schema without
//! writing to it.
//!
//! Without PostgreSQL installed the PostgreSQL half is skipped with a loud
//! message, except under `CI=true`, where it fails.

use std::collections::BTreeMap;

use fixtures::postgres::TestCluster;
use orchestrator::engine::{Change, Lease, PersistedState, RevokeReason};
use orchestrator::store::{
    Batch, Loaded, PostgresStore, RecordRow, RecordUpload, RecordsOutcome, SqliteStore, Store, StreamMeta,
};

fn lease(stream_id: i64, lease_epoch: u64) -> Lease {
    Lease { stream_id, lease_epoch }
}

fn record(sequence: u64, stream_id: i64, lease_epoch: u64, processed_at_ms: i64) -> RecordRow {
    RecordRow { stream_id, lease_epoch, processed_at_ms, sequence, local_mode: sequence.is_multiple_of(2) }
}

/// Every kind of change, record uploads with duplicates, stale records,
/// gaps and a worker's claim, metadata and client versions: one commit per
/// inner list.
fn scenario() -> Vec<Vec<Batch>> {
    let at = |ms: i64, changes: Vec<Change>| Batch { at_ms: ms, changes, ..Batch::default() };
    let w = |s: &str| s.to_owned();
    vec![
        vec![
            at(1_000, (1..=6).map(|stream_id| Change::StreamAdded { stream_id }).collect()),
            Batch {
                at_ms: 1_000,
                meta: vec![
                    (1, StreamMeta { name: "radio one".into(), source_url: "http://x/1".into() }),
                    (2, StreamMeta { name: "radio two".into(), source_url: String::new() }),
                ],
                ..Batch::default()
            },
        ],
        vec![
            at(
                2_000,
                vec![
                    Change::WorkerRegistered { server_id: w("w-b"), worker_epoch: 1, max_streams: 10 },
                    Change::WorkerRegistered { server_id: w("W-a"), worker_epoch: 2, max_streams: 3 },
                    Change::WorkerRegistered { server_id: w("w_c"), worker_epoch: 3, max_streams: 4_000_000_000 },
                ],
            ),
            Batch { at_ms: 2_000, client_version: Some((w("w-b"), w("worker-client/0.1.0"))), ..Batch::default() },
        ],
        vec![at(
            3_000,
            vec![
                Change::LeaseGranted { server_id: w("w-b"), lease: lease(1, 1) },
                Change::LeaseGranted { server_id: w("w-b"), lease: lease(2, 1) },
                Change::LeaseGranted { server_id: w("W-a"), lease: lease(3, 1) },
                Change::LeaseGranted { server_id: w("W-a"), lease: lease(4, 1) },
                Change::LeaseGranted { server_id: w("w_c"), lease: lease(5, 1) },
            ],
        )],
        vec![at(
            4_000,
            vec![
                Change::LeaseRevoking { server_id: w("w-b"), lease: lease(2, 1), reason: RevokeReason::Rebalance },
                Change::LeaseRevoking { server_id: w("W-a"), lease: lease(4, 1), reason: RevokeReason::Drain },
            ],
        )],
        vec![
            at(
                5_000,
                vec![
                    Change::LeaseEnded { server_id: w("w-b"), lease: lease(2, 1) },
                    Change::LeaseGranted { server_id: w("W-a"), lease: lease(2, 2) },
                ],
            ),
            Batch {
                at_ms: 5_000,
                records: Some(RecordUpload {
                    server_id: w("w-b"),
                    // 1, 2 fine; 3 made after stream 2 moved on (stale); 5
                    // leaves a gap at 4.
                    records: vec![
                        record(1, 1, 1, 3_500),
                        record(2, 2, 1, 3_600),
                        record(3, 2, 1, 5_500),
                        record(5, 1, 1, 5_600),
                    ],
                    synced_below: 0,
                }),
                ..Batch::default()
            },
        ],
        vec![
            // The retry of the same upload: duplicates, answered the same.
            Batch {
                at_ms: 6_000,
                records: Some(RecordUpload {
                    server_id: w("w-b"),
                    records: vec![record(3, 2, 1, 5_500), record(4, 1, 1, 5_550)],
                    synced_below: 0,
                }),
                ..Batch::default()
            },
            // A worker that never held the stream, and a claim past a gap.
            Batch {
                at_ms: 6_000,
                records: Some(RecordUpload {
                    server_id: w("w_c"),
                    records: vec![record(10, 3, 1, 5_000), record(11, 5, 1, 5_100)],
                    synced_below: 10,
                }),
                ..Batch::default()
            },
        ],
        vec![at(
            7_000,
            vec![
                Change::StreamRemoved { stream_id: 6 },
                Change::StreamRemoved { stream_id: 5 },
                Change::StreamRestored { stream_id: 5 },
                Change::StreamDeleted { stream_id: 6 },
                Change::LeaseRevoking { server_id: w("W-a"), lease: lease(3, 1), reason: RevokeReason::StreamRemoved },
                Change::StreamRemoved { stream_id: 3 },
                Change::RebalancingPaused { paused: true },
                Change::BrakeChanged { engaged: true },
                Change::WorkerExpired { server_id: w("w_c") },
                Change::GraceEnded { missing: vec![w("w_c")] },
                Change::WorkerLeft { server_id: w("W-a") },
            ],
        )],
        vec![at(
            8_000,
            vec![
                Change::WorkerRegistered { server_id: w("w-d"), worker_epoch: 9, max_streams: 1 },
                Change::WorkerPruned { server_id: w("w-d") },
                Change::StreamAdded { stream_id: 6 },
                Change::RebalancingPaused { paused: false },
                Change::RebalancingPaused { paused: true },
            ],
        )],
    ]
}

/// `Loaded` with its maps in order, comparable across backends.
#[derive(Debug, PartialEq)]
struct View {
    state: PersistedState,
    meta: BTreeMap<i64, StreamMeta>,
    client_versions: BTreeMap<String, String>,
    acknowledged_through: BTreeMap<String, u64>,
}

fn view(loaded: Loaded) -> View {
    View {
        state: loaded.state,
        meta: loaded.meta.into_iter().collect(),
        client_versions: loaded.client_versions.into_iter().collect(),
        acknowledged_through: loaded.acknowledged_through.into_iter().collect(),
    }
}

/// Commits the scenario; every commit's outcomes and the loaded state.
fn run(store: &mut impl Store) -> (Vec<Vec<Option<RecordsOutcome>>>, View) {
    let outcomes = scenario().iter().map(|batches| store.commit(batches).expect("commit")).collect();
    (outcomes, view(store.load().expect("load")))
}

#[test]
fn both_backends_answer_and_load_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let mut sqlite = SqliteStore::open(&dir.path().join("o.db")).unwrap();
    let (sqlite_outcomes, sqlite_view) = run(&mut sqlite);

    // The expectations the two must share, spelled out once.
    let w_b = &sqlite_outcomes[4][1].expect("records outcome");
    assert_eq!((w_b.acknowledged_through, w_b.stale, w_b.duplicates), (3, 1, 0), "gap at 4 holds the watermark");
    let retry = &sqlite_outcomes[5][0].expect("records outcome");
    assert_eq!((retry.acknowledged_through, retry.stale, retry.duplicates), (5, 1, 1), "4 fills the gap");
    let claim = &sqlite_outcomes[5][1].expect("records outcome");
    assert_eq!((claim.acknowledged_through, claim.stale), (11, 1), "the claim passes 1..=9; stream 3 was never w_c's");
    assert!(sqlite_view.state.rebalancing_paused);
    assert_eq!(sqlite_view.state.worker_epoch_floor, 9);
    assert_eq!(sqlite_view.state.retired_epochs, vec![(3, 1)], "removed stream 3 keeps its last epoch");
    // The audit log: the newest first, bounded, every change written.
    let events = sqlite.recent_events(usize::MAX).unwrap();
    assert!(events.len() > 10 && events.len() <= orchestrator::store::MAX_EVENTS);
    assert!(events.windows(2).all(|p| p[0].id > p[1].id), "newest first");
    assert_eq!(sqlite.recent_events(3).unwrap(), events[..3].to_vec());
    assert!(events.iter().any(|e| e.event == "brake_engaged"));
    let revoking = events.iter().find(|e| e.event == "lease_revoking").expect("a revocation");
    assert_eq!(
        (revoking.server_id.as_deref(), revoking.stream_id, revoking.lease_epoch, revoking.detail.as_deref()),
        (Some("W-a"), Some(3), Some(1), Some("stream_removed"))
    );

    let Some(cluster) = TestCluster::start() else { return };
    let mut pg = PostgresStore::connect(&cluster.database("contract")).expect("connect");
    let (pg_outcomes, pg_view) = run(&mut pg);
    assert_eq!(pg_outcomes, sqlite_outcomes, "the same answers");
    assert_eq!(pg_view, sqlite_view, "the same state");
    assert_eq!(pg.recent_events(usize::MAX).unwrap(), events, "the same audit log");

    // A second connection (a restart) loads the same and migrates nothing.
    drop(pg);
    let mut again = PostgresStore::connect(&cluster.url("contract")).expect("reconnect");
    assert_eq!(view(again.load().unwrap()), sqlite_view);
    assert_eq!(again.records_of("w-b").unwrap(), sqlite.records_of("w-b").unwrap());
}

#[test]
fn foreign_and_newer_databases_are_refused_untouched() {
    // SQLite: the same two refusals, the same words.
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("foreign.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
        .unwrap();
    let before = std::fs::read(&foreign).unwrap();
    let e = SqliteStore::open(&foreign).unwrap_err().to_string();
    assert!(e.contains("belongs to something else"), "{e}");
    assert_eq!(std::fs::read(&foreign).unwrap(), before, "nothing was written");
    let newer = dir.path().join("newer.db");
    drop(SqliteStore::open(&newer).unwrap());
    rusqlite::Connection::open(&newer).unwrap().execute_batch("PRAGMA user_version = 99").unwrap();
    let e = SqliteStore::open(&newer).unwrap_err().to_string();
    assert!(e.contains("schema version 99 is newer"), "{e}");

    let Some(cluster) = TestCluster::start() else { return };
    let foreign = cluster.database("foreign");
    let mut client = postgres::Client::connect(&foreign, postgres::NoTls).unwrap();
    client.batch_execute("CREATE TABLE invoices (id BIGINT PRIMARY KEY)").unwrap();
    let e = PostgresStore::connect(&foreign).unwrap_err().to_string();
    assert!(e.contains("belongs to something else"), "{e}");
    let tables: i64 = client
        .query_one("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'", &[])
        .unwrap()
        .get(0);
    assert_eq!(tables, 1, "nothing was created");

    let newer = cluster.database("newer");
    drop(PostgresStore::connect(&newer).unwrap());
    let mut client = postgres::Client::connect(&newer, postgres::NoTls).unwrap();
    client.batch_execute("UPDATE orchestrator_schema SET version = 99").unwrap();
    let e = PostgresStore::connect(&newer).unwrap_err().to_string();
    assert!(e.contains("schema version 99 is newer"), "{e}");

    let e = PostgresStore::connect(&cluster.url("missing")).unwrap_err().to_string();
    assert!(e.contains("cannot open database") && e.contains("missing"), "{e}");
    let e = PostgresStore::connect("postgres://postgres:hunter2@127.0.0.1:1/x").unwrap_err().to_string();
    assert!(e.contains("***") && !e.contains("hunter2"), "the password is not shown: {e}");
}
