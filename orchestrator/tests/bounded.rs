//! State stays bounded under a stream of new server_ids: 100,000 distinct
//! workers register and leave; once the retention has passed, the engine's
//! memory and the store's `workers` table are back to what the live fleet
//! needs. The real engine and the real SQLite store (no gRPC: the point is
//! what they keep, and 200,000 calls through sockets would take minutes).

use orchestrator::engine::{Engine, EngineConfig};
use orchestrator::store::{Batch, SqliteStore, Store};

const WORKERS: usize = 100_000;

fn workers_rows(path: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("SELECT COUNT(*) FROM workers", [], |r| r.get(0)).unwrap()
}

#[test]
fn a_hundred_thousand_workers_that_leave_are_forgotten_after_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let mut store = SqliteStore::open(&path).unwrap();
    store.load().unwrap();
    let retention = 60_000;
    // Rounds batched as the binary does (a placement round is O(workers)).
    let config = EngineConfig { worker_retention: retention, min_rebalance_interval: 250, ..EngineConfig::default() };
    let mut e = Engine::new(config);
    let stay = e.register(0, "stays", 10, "r", &[]).unwrap().session;

    let mut batch = Batch::default();
    let mut highest_epoch = 0;
    for i in 0..WORKERS {
        let id = format!("w-{i:06}");
        let r = e.register(1, &id, 10, "join", &[]).unwrap();
        highest_epoch = highest_epoch.max(r.session.worker_epoch);
        e.deregister(2, &r.session, "leave").unwrap();
        batch.changes.extend(e.take_changes());
        if batch.changes.len() >= 20_000 {
            store.commit(&[std::mem::take(&mut batch)]).unwrap();
        }
    }
    store.commit(&[std::mem::take(&mut batch)]).unwrap();
    assert_eq!(e.workers().len(), WORKERS + 1);
    assert_eq!(workers_rows(&path), (WORKERS + 1) as i64);

    // The live worker keeps heartbeating; the others are past the retention.
    e.heartbeat(retention, &stay, &[]).unwrap();
    e.tick(retention + 2);
    let changes = e.take_changes();
    store.commit(&[Batch { changes, ..Batch::default() }]).unwrap();
    assert_eq!(e.workers().len(), 1, "only the live worker is remembered");
    assert_eq!(workers_rows(&path), 1, "the workers table is back to the live fleet");

    // Fencing survives: the store remembers the highest epoch issued, so a
    // forgotten id that comes back (even after a restart) starts above it.
    drop(store);
    let mut reopened = SqliteStore::open(&path).unwrap();
    let loaded = reopened.load().unwrap();
    assert!(loaded.state.worker_epoch_floor >= highest_epoch);
    let mut restarted = Engine::restore(EngineConfig::default(), loaded.state, 0);
    let again = restarted.register(0, "w-000000", 10, "back", &[]).unwrap().session;
    assert!(again.worker_epoch > highest_epoch);
}
