//! The heartbeat fast path: heartbeats that change nothing are answered
//! without the engine lock.
//!
//! In the steady state almost every heartbeat acknowledges nothing and has
//! no decision waiting; taking the engine mutex for it queues it behind
//! placement rounds and commits. So the service keeps, beside the engine, a
//! [`Sessions`] table of the live sessions, published under the engine lock
//! after every event: each session's id and epoch, whether a heartbeat of it
//! would carry decisions (`busy`), whether it is draining, and a liveness
//! stamp. A heartbeat with an empty `acknowledged` list whose session is in
//! the table and not busy only advances the stamp (an atomic) and is
//! answered at once: no assign, no revoke, its draining flag.
//!
//! **Liveness.** The engine decides expiries from its own `last_heartbeat`.
//! Before each tick, [`Sessions::fold`] looks at the sessions the engine
//! finds silent: a stamp fresher than the session timeout is folded into the
//! engine (not silent after all); a stale one is swapped for `EXPIRED` with a
//! compare-and-swap on the same atomic a heartbeat updates. Either the
//! heartbeat's update lands first (the CAS fails, the fresh stamp is folded:
//! no expiry) or the CAS does (the heartbeat sees `EXPIRED`, falls back to
//! the engine and gets SESSION_EXPIRED). So a heartbeat that was answered
//! OK is never followed by the expiry of its session within the timeout.
//!
//! **Durability.** A fast answer reports no decision, so "no answer reports
//! a decision that is not on disk" still holds. A session becomes busy under
//! the engine lock in the same event that makes the decision, before that
//! event's batch is even submitted; a fast heartbeat that read `busy ==
//! false` just before is ordered before that event.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::engine::{Change, Engine, Millis, SessionRef};

/// The stamp of a session the ticker has expired.
const EXPIRED: u64 = u64::MAX;

#[derive(Debug)]
struct Slot {
    session_id: String,
    worker_epoch: u64,
    /// Engine milliseconds of the last heartbeat answered here, or
    /// [`EXPIRED`].
    stamp: AtomicU64,
    busy: AtomicBool,
    draining: AtomicBool,
}

/// The live sessions, as the fast path sees them.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    slots: RwLock<HashMap<String, Arc<Slot>>>,
    /// The server is stopping (storage failed, the engine lock is
    /// poisoned): every heartbeat goes to the engine, which refuses it.
    closed: AtomicBool,
}

impl Sessions {
    /// The fast path: `Some(draining)` if the heartbeat of `session` at
    /// `now` was recorded here and needs nothing else; `None` to go through
    /// the engine.
    pub(crate) fn beat(&self, session: &SessionRef, now: Millis) -> Option<bool> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let slots = self.slots.read().ok()?;
        let slot = slots.get(&session.server_id)?;
        if slot.session_id != session.session_id
            || slot.worker_epoch != session.worker_epoch
            || slot.busy.load(Ordering::Acquire)
        {
            return None;
        }
        slot.stamp.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| (s != EXPIRED).then_some(s.max(now))).ok()?;
        Some(slot.draining.load(Ordering::Acquire))
    }

    /// No more fast answers: the server is stopping.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// The last heartbeat answered on the fast path, for display.
    pub(crate) fn stamp(&self, server_id: &str) -> Option<Millis> {
        let slots = self.slots.read().ok()?;
        let stamp = slots.get(server_id)?.stamp.load(Ordering::Acquire);
        (stamp != EXPIRED).then_some(stamp)
    }

    /// Brings `server_id`'s slot in line with the engine. Called with the
    /// engine lock held, after every event that may have changed it.
    pub(crate) fn publish(&self, engine: &Engine, server_id: &str) {
        let view = engine.session_view(server_id).filter(|v| v.live);
        let Some(view) = view else {
            if let Ok(mut slots) = self.slots.write() {
                slots.remove(server_id);
            }
            return;
        };
        if let Ok(slots) = self.slots.read()
            && let Some(slot) = slots.get(server_id)
            && slot.session_id == view.session_id
            && slot.worker_epoch == view.worker_epoch
        {
            slot.busy.store(view.busy, Ordering::Release);
            slot.draining.store(view.draining, Ordering::Release);
            return;
        }
        let slot = Slot {
            session_id: view.session_id,
            worker_epoch: view.worker_epoch,
            stamp: AtomicU64::new(view.last_heartbeat),
            busy: AtomicBool::new(view.busy),
            draining: AtomicBool::new(view.draining),
        };
        if let Ok(mut slots) = self.slots.write() {
            slots.insert(server_id.to_owned(), Arc::new(slot));
        }
    }

    /// Publishes every worker an event's changes name.
    pub(crate) fn publish_changes(&self, engine: &Engine, changes: &[Change]) {
        let mut last: Option<&str> = None;
        for change in changes {
            let server_id = match change {
                Change::WorkerRegistered { server_id, .. }
                | Change::WorkerExpired { server_id }
                | Change::WorkerLeft { server_id }
                | Change::WorkerPruned { server_id }
                | Change::LeaseGranted { server_id, .. }
                | Change::LeaseRevoking { server_id, .. }
                | Change::LeaseEnded { server_id, .. } => server_id.as_str(),
                Change::GraceEnded { missing } => {
                    for id in missing {
                        self.publish(engine, id);
                    }
                    continue;
                }
                Change::StreamAdded { .. }
                | Change::StreamRestored { .. }
                | Change::StreamRemoved { .. }
                | Change::StreamDeleted { .. }
                | Change::RebalancingPaused { .. }
                | Change::BrakeChanged { .. } => {
                    continue;
                }
            };
            // Runs of changes for one worker (a round granting it many
            // streams) publish it once.
            if last != Some(server_id) {
                self.publish(engine, server_id);
                last = Some(server_id);
            }
        }
    }

    /// Before the engine's tick at `now`: folds the fresh stamps of the
    /// sessions the engine finds silent, and marks the stale ones
    /// [`EXPIRED`] so that no heartbeat is answered here for them any more.
    /// O(silent sessions) beyond the engine's own scan.
    pub(crate) fn fold(&self, engine: &mut Engine, now: Millis) {
        let silent = engine.silent_sessions(now);
        if silent.is_empty() {
            return;
        }
        let timeout = engine.config().session_timeout;
        let Ok(slots) = self.slots.read() else { return };
        for server_id in silent {
            let Some(slot) = slots.get(&server_id) else { continue };
            loop {
                let stamp = slot.stamp.load(Ordering::Acquire);
                if stamp == EXPIRED {
                    break;
                }
                if now.saturating_sub(stamp) < timeout {
                    engine.observe_heartbeat(&server_id, stamp);
                    break;
                }
                if slot.stamp.compare_exchange(stamp, EXPIRED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    break;
                }
            }
        }
    }

    /// Sessions in the table.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.read().map_or(0, |s| s.len())
    }
}

#[cfg(test)]
mod tests;
