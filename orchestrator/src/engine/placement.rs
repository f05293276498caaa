//! Placement: granting, revoking and ending leases, and the placement round
//! (`rebalance`) that revokes drains and excess and grants unassigned and
//! orphaned streams to the workers with the most room. The arithmetic of
//! targets is in `balance`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::balance::{self, Slot};
use super::{Change, Engine, Lease, LeaseRecord, LeaseState, Millis, RevokeReason, StreamId, WorkerState};

impl Engine {
    pub(super) fn grant(&mut self, stream_id: StreamId, server_id: &str) {
        let Some(stream) = self.streams.get_mut(&stream_id) else { return };
        if let Some(old) = stream.lease.take()
            && let Some(w) = self.workers.get_mut(&old.owner)
        {
            w.owned.remove(&stream_id);
            w.revoking.remove(&stream_id);
            w.unacknowledged.remove(&stream_id);
            w.undelivered.remove(&stream_id);
        }
        stream.epoch += 1;
        #[cfg(feature = "planted-bug-no-fencing")]
        {
            // PLANTED BUG: a new owner gets the epoch the old one had.
            stream.epoch = stream.epoch.saturating_sub(1).max(1);
        }
        stream.left = None;
        let lease = Lease { stream_id, lease_epoch: stream.epoch };
        stream.lease =
            Some(LeaseRecord { owner: server_id.to_owned(), epoch: stream.epoch, state: LeaseState::Active });
        self.unassigned.remove(&stream_id);
        if let Some(w) = self.workers.get_mut(server_id) {
            w.owned.insert(stream_id);
            w.unacknowledged.insert(stream_id);
            w.undelivered.insert(stream_id);
        }
        self.changes.push(Change::LeaseGranted { server_id: server_id.to_owned(), lease });
    }

    pub(super) fn revoke(&mut self, stream_id: StreamId, reason: RevokeReason) {
        let Some(l) = self.streams.get_mut(&stream_id).and_then(|s| s.lease.as_mut()) else { return };
        if l.state != LeaseState::Active {
            return;
        }
        l.state = LeaseState::Revoking(reason);
        let change = Change::LeaseRevoking {
            server_id: l.owner.clone(),
            lease: Lease { stream_id, lease_epoch: l.epoch },
            reason,
        };
        let owner = l.owner.clone();
        if let Some(w) = self.workers.get_mut(&owner) {
            w.unacknowledged.remove(&stream_id);
            w.undelivered.remove(&stream_id);
            w.revoking.insert(stream_id);
        }
        self.changes.push(change);
    }

    /// The lease ends: released, forgotten, or its owner deregistered.
    pub(super) fn end_lease(&mut self, stream_id: StreamId) {
        let Some(stream) = self.streams.get_mut(&stream_id) else { return };
        let Some(l) = stream.lease.take() else { return };
        if matches!(l.state, LeaseState::Revoking(RevokeReason::Rebalance | RevokeReason::Drain)) {
            stream.left = Some(l.owner.clone());
        }
        let removed = stream.removed;
        if let Some(w) = self.workers.get_mut(&l.owner) {
            w.owned.remove(&stream_id);
            w.revoking.remove(&stream_id);
            w.unacknowledged.remove(&stream_id);
            w.undelivered.remove(&stream_id);
        }
        self.changes.push(Change::LeaseEnded { server_id: l.owner, lease: Lease { stream_id, lease_epoch: l.epoch } });
        if removed {
            self.delete_stream(stream_id);
        } else {
            self.unassigned.insert(stream_id);
        }
        self.dirty = true;
    }

    pub(super) fn delete_stream(&mut self, stream_id: StreamId) {
        self.removed.remove(&stream_id);
        if let Some(stream) = self.streams.remove(&stream_id)
            && stream.epoch > 0
        {
            self.retired.insert(stream_id, stream.epoch);
        }
        self.unassigned.remove(&stream_id);
        self.changes.push(Change::StreamDeleted { stream_id });
    }

    /// Debug builds (and so every test) check that the per-worker caches
    /// agree with the lease records.
    #[cfg(debug_assertions)]
    pub(super) fn check_caches(&self) {
        for (id, w) in &self.workers {
            for sid in &w.owned {
                let l = self.streams.get(sid).and_then(|s| s.lease.as_ref());
                assert!(l.is_some_and(|l| &l.owner == id), "{id} owns {sid} without its lease");
                let revoking = l.is_some_and(|l| matches!(l.state, LeaseState::Revoking(_)));
                assert_eq!(w.revoking.contains(sid), revoking, "revoking cache of {id} wrong for {sid}");
            }
            assert!(w.revoking.is_subset(&w.owned));
        }
        let removed: std::collections::BTreeSet<StreamId> =
            self.streams.iter().filter(|(_, s)| s.removed).map(|(&id, _)| id).collect();
        assert_eq!(removed, self.removed, "removed cache wrong");
    }

    /// One round of placements and moves, when something changed.
    pub(super) fn rebalance(&mut self, now: Millis) {
        if !self.dirty || self.grace_until.is_some() {
            return;
        }
        if let Some(last) = self.last_round
            && now < last.saturating_add(self.config.min_rebalance_interval)
        {
            return; // batched: the ticker runs it
        }
        self.last_round = Some(now);
        self.dirty = false;
        #[cfg(debug_assertions)]
        self.check_caches();

        // Streams whose lease names a worker that is not live are orphaned:
        // removed ones end now; the others may be placed unless the brake
        // holds them. Found through the workers, not by scanning streams:
        // a round costs O(workers + streams that move).
        let orphans: Vec<StreamId> = self
            .workers
            .values()
            .filter(|w| !self.is_live_state(w.state))
            .flat_map(|w| w.owned.iter().copied())
            .collect();
        let mut placeable: Vec<StreamId> = Vec::new();
        for id in orphans {
            if self.streams.get(&id).is_some_and(|s| s.removed) {
                self.end_lease(id);
            } else if !self.brake {
                placeable.push(id);
            }
        }
        placeable.extend(self.unassigned.iter().copied());
        #[cfg(feature = "planted-bug-reassign-before-release")]
        {
            // PLANTED BUG: a revoked stream is placeable before its owner
            // has released it.
            let revoking = self.workers.values().flat_map(|w| w.revoking.iter().copied());
            placeable.extend(revoking.collect::<Vec<_>>());
        }
        placeable.sort_unstable();
        placeable.dedup();

        // Eligible workers and their targets.
        let eligible: Vec<String> =
            self.workers.iter().filter(|(_, w)| w.state == WorkerState::Live).map(|(id, _)| id.clone()).collect();
        let slots: Vec<Slot> = eligible
            .iter()
            .map(|id| {
                let w = &self.workers[id];
                Slot { capacity: w.max_streams, current: (w.owned.len() - w.revoking.len()) as u32 }
            })
            .collect();
        let total = (self.streams.len() - self.removed.len()) as u64;
        let targets = balance::targets(&slots, total);
        let mut moves_left = self.config.max_moves_per_round.unwrap_or(u32::MAX);

        // Drains: every active lease of a draining worker goes.
        let draining: Vec<String> =
            self.workers.iter().filter(|(_, w)| w.state == WorkerState::Draining).map(|(id, _)| id.clone()).collect();
        for id in draining {
            let w = &self.workers[&id];
            let owned: Vec<StreamId> = w.owned.iter().rev().filter(|s| !w.revoking.contains(s)).copied().collect();
            for stream_id in owned {
                if moves_left == 0 {
                    break;
                }
                if self.streams[&stream_id].lease.as_ref().is_some_and(|l| l.state == LeaseState::Active) {
                    self.revoke(stream_id, RevokeReason::Drain);
                    moves_left -= 1;
                }
            }
        }

        // Excess: above capacity always, above target unless paused.
        for (i, id) in eligible.iter().enumerate() {
            let w = &self.workers[id];
            // Leases already being revoked are on their way out.
            let over_capacity = slots[i].current.saturating_sub(w.max_streams);
            let over_target = if self.rebalancing_paused { 0 } else { slots[i].current.saturating_sub(targets[i]) };
            let excess = over_capacity.max(over_target);
            if excess == 0 {
                continue;
            }
            let reason =
                if over_capacity >= over_target { RevokeReason::OverCapacity } else { RevokeReason::Rebalance };
            // Withdraw first the grants no answer has shown the worker yet:
            // nobody started them, so they end at once and are placed again
            // in this round, no move at all (the simulation found a round
            // placing orphans on live workers and the next one revoking
            // older leases from them for a worker that had just returned).
            // Then give up the most recently granted (highest epochs), so
            // long-held streams stay put.
            let mut candidates: Vec<(bool, u64, StreamId)> = w
                .owned
                .iter()
                .filter_map(|&sid| {
                    let l = self.streams[&sid].lease.as_ref()?;
                    (l.state == LeaseState::Active).then_some((w.undelivered.contains(&sid), l.epoch, sid))
                })
                .collect();
            candidates.sort_unstable_by(|a, b| b.cmp(a));
            for (unseen, _, sid) in candidates.into_iter().take(excess as usize) {
                if unseen {
                    self.end_lease(sid);
                    placeable.push(sid);
                    continue;
                }
                if reason == RevokeReason::Rebalance && moves_left == 0 {
                    break;
                }
                self.revoke(sid, reason);
                if reason == RevokeReason::Rebalance {
                    moves_left -= 1;
                }
            }
        }

        placeable.sort_unstable();
        placeable.dedup();

        // Placements: fill the workers furthest below their targets. A heap
        // keeps this O(streams × log workers).
        let mut room: BinaryHeap<(u32, Reverse<u32>, Reverse<String>)> = eligible
            .iter()
            .enumerate()
            .filter_map(|(i, id)| {
                let w = &self.workers[id];
                let by_target = targets[i].saturating_sub(slots[i].current);
                let by_capacity = w.max_streams.saturating_sub(w.owned.len() as u32);
                let room = by_target.min(by_capacity);
                (room > 0).then(|| (room, Reverse(slots[i].current), Reverse(id.clone())))
            })
            .collect();
        for stream_id in placeable {
            // The most room first; then the least loaded; then by id. Not back
            // to the worker the stream just left, if anyone else can take it.
            let Some(mut pick) = room.pop() else { break };
            if self.streams[&stream_id].left.as_deref() == Some(pick.2.0.as_str())
                && let Some(other) = room.pop()
            {
                room.push(pick);
                pick = other;
            }
            let (space, Reverse(current), Reverse(server_id)) = pick;
            self.grant(stream_id, &server_id);
            if space > 1 {
                room.push((space - 1, Reverse(current + 1), Reverse(server_id)));
            }
        }
    }
}
