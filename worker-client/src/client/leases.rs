//! The protocol state (`Core`) and its pure transitions: which grants to
//! accept, which keep/revoke decisions and revocations drop a lease. No I/O
//! here, so every rule has a unit test.

use std::collections::BTreeMap;
use std::time::Duration;

use orchestrator_proto::v1;

/// The protocol state, changed by one operation at a time (behind the
/// client's async mutex).
#[derive(Debug)]
pub(super) struct Core {
    pub(super) session: Option<v1::SessionRef>,
    /// Leases held (also while processing is stopped by the local-mode limit).
    pub(super) leases: BTreeMap<i64, u64>,
    /// Grants to acknowledge in the next heartbeat.
    pub(super) to_ack: Vec<v1::Lease>,
    /// Releases made while the orchestrator was unreachable.
    pub(super) pending_releases: BTreeMap<i64, u64>,
    pub(super) heartbeat_interval: Duration,
    pub(super) stopped: bool,
    /// Records per `SyncLocalState` call: halved when the orchestrator says
    /// a batch is too large (a smaller `--max-list-len` or message limit).
    pub(super) sync_batch: usize,
}

impl Core {
    /// The leases held, as the wire has them.
    pub(super) fn held(&self) -> Vec<v1::Lease> {
        self.leases.iter().map(|(&stream_id, &lease_epoch)| v1::Lease { stream_id, lease_epoch }).collect()
    }

    /// Drops a lease the worker gave up or lost; it is no longer
    /// acknowledged either.
    pub(super) fn drop_lease(&mut self, stream_id: i64) {
        self.leases.remove(&stream_id);
        self.to_ack.retain(|a| a.stream_id != stream_id);
    }
}

/// Adds the valid grants, within `max_streams`; returns the ones to
/// acknowledge (new ones and repeats of a lease already held at that epoch).
/// Ignored: ids or epochs that are not valid, stale epochs, and grants
/// beyond `max_streams`. A grant at a higher epoch replaces the one held.
pub(super) fn accept_grants(core: &mut Core, max_streams: u32, grants: &[v1::Lease]) -> Vec<v1::Lease> {
    let mut accepted = Vec::new();
    for l in grants {
        if l.stream_id <= 0 || l.lease_epoch == 0 {
            tracing::warn!(stream_id = l.stream_id, lease_epoch = l.lease_epoch, "ignoring an invalid grant");
            continue;
        }
        match core.leases.get(&l.stream_id) {
            Some(&epoch) if epoch >= l.lease_epoch => {
                // Already held at this epoch (a repeated grant), or a stale one.
                if epoch == l.lease_epoch && !accepted.contains(l) {
                    accepted.push(*l);
                }
                continue;
            }
            Some(_) => {}
            None if core.leases.len() >= max_streams as usize => {
                tracing::warn!(stream_id = l.stream_id, "ignoring a grant beyond max_streams");
                continue;
            }
            None => {}
        }
        core.leases.insert(l.stream_id, l.lease_epoch);
        accepted.push(*l);
    }
    accepted
}

/// Applies keep/revoke decisions (of `SyncLocalState`): drops the leases
/// revoked at the epoch held and returns them, to be released once the
/// application has been told to stop. A decision for a lease not held at
/// that epoch changes nothing.
pub(super) fn apply_decisions(core: &mut Core, decisions: &[v1::LeaseDecision]) -> Vec<v1::Lease> {
    let mut revoked = Vec::new();
    for d in decisions {
        if d.kind != v1::LeaseDecisionKind::Keep as i32
            && let Some(l) = d.lease
            && core.leases.get(&l.stream_id) == Some(&l.lease_epoch)
        {
            core.drop_lease(l.stream_id);
            revoked.push(l);
        }
    }
    revoked
}

/// Applies a heartbeat's revocations: drops the leases revoked at the epoch
/// held and returns every valid revoked lease, once per stream, to be
/// released, also those this worker never started (granted and revoked
/// between two heartbeats): the orchestrator waits for that release before
/// it moves the stream.
pub(super) fn take_revoked(core: &mut Core, revokes: &[v1::LeaseDecision]) -> Vec<v1::Lease> {
    let mut revoked: Vec<v1::Lease> =
        revokes.iter().filter_map(|d| d.lease).filter(|l| l.stream_id > 0 && l.lease_epoch > 0).collect();
    revoked.sort_by_key(|l| l.stream_id);
    revoked.dedup_by_key(|l| l.stream_id);
    for l in &revoked {
        if core.leases.get(&l.stream_id) == Some(&l.lease_epoch) {
            core.leases.remove(&l.stream_id);
        }
        core.to_ack.retain(|a| a.stream_id != l.stream_id);
    }
    revoked
}

/// Applies `Register`'s answer to the leases presented: keeps those the
/// orchestrator confirmed at the epoch held, drops the rest (a lease
/// without a decision too) and returns the dropped ones, to be released.
pub(super) fn keep_confirmed(core: &mut Core, decisions: &[v1::LeaseDecision]) -> Vec<v1::Lease> {
    let kept: BTreeMap<i64, u64> = decisions
        .iter()
        .filter(|d| d.kind == v1::LeaseDecisionKind::Keep as i32)
        .filter_map(|d| d.lease)
        .filter(|l| core.leases.get(&l.stream_id) == Some(&l.lease_epoch))
        .map(|l| (l.stream_id, l.lease_epoch))
        .collect();
    let dropped: Vec<v1::Lease> = core
        .leases
        .iter()
        .filter(|(s, _)| !kept.contains_key(s))
        .map(|(&stream_id, &lease_epoch)| v1::Lease { stream_id, lease_epoch })
        .collect();
    core.leases = kept;
    core.to_ack.clear();
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(held: &[(i64, u64)]) -> Core {
        Core {
            session: None,
            leases: held.iter().copied().collect(),
            to_ack: Vec::new(),
            pending_releases: BTreeMap::new(),
            heartbeat_interval: Duration::from_secs(5),
            stopped: false,
            sync_batch: 1000,
        }
    }

    fn lease(stream_id: i64, lease_epoch: u64) -> v1::Lease {
        v1::Lease { stream_id, lease_epoch }
    }

    fn decision(kind: v1::LeaseDecisionKind, l: v1::Lease) -> v1::LeaseDecision {
        v1::LeaseDecision { lease: Some(l), kind: kind as i32, reason: v1::RevokeReason::Rebalance as i32 }
    }

    fn held(core: &Core) -> Vec<(i64, u64)> {
        core.leases.iter().map(|(&s, &e)| (s, e)).collect()
    }

    #[test]
    fn grants_are_accepted_within_max_streams() {
        let mut c = core(&[]);
        let accepted = accept_grants(&mut c, 2, &[lease(1, 1), lease(2, 1), lease(3, 1)]);
        assert_eq!(accepted, vec![lease(1, 1), lease(2, 1)]);
        assert_eq!(held(&c), vec![(1, 1), (2, 1)], "the third is beyond max_streams");
    }

    #[test]
    fn invalid_and_stale_grants_are_ignored_repeats_acknowledged_once() {
        let mut c = core(&[(5, 3)]);
        let grants = [lease(0, 1), lease(-2, 1), lease(7, 0), lease(5, 2), lease(5, 3), lease(5, 3)];
        let accepted = accept_grants(&mut c, 10, &grants);
        assert_eq!(accepted, vec![lease(5, 3)], "only the repeat at the epoch held");
        assert_eq!(held(&c), vec![(5, 3)]);
    }

    #[test]
    fn a_grant_at_a_higher_epoch_replaces_the_one_held() {
        let mut c = core(&[(5, 3)]);
        assert_eq!(accept_grants(&mut c, 1, &[lease(5, 4)]), vec![lease(5, 4)], "not a new stream: max_streams holds");
        assert_eq!(held(&c), vec![(5, 4)]);
    }

    #[test]
    fn decisions_drop_only_what_is_held_at_that_epoch() {
        let mut c = core(&[(1, 1), (2, 2), (3, 3)]);
        c.to_ack = vec![lease(2, 2)];
        let decisions = [
            decision(v1::LeaseDecisionKind::Keep, lease(1, 1)),
            decision(v1::LeaseDecisionKind::Revoke, lease(2, 2)),
            decision(v1::LeaseDecisionKind::Revoke, lease(3, 9)), // another epoch
            decision(v1::LeaseDecisionKind::Revoke, lease(4, 1)), // not held
            v1::LeaseDecision { lease: None, kind: v1::LeaseDecisionKind::Revoke as i32, reason: 0 },
        ];
        assert_eq!(apply_decisions(&mut c, &decisions), vec![lease(2, 2)]);
        assert_eq!(held(&c), vec![(1, 1), (3, 3)]);
        assert!(c.to_ack.is_empty(), "a revoked lease is not acknowledged");
    }

    #[test]
    fn revocations_are_released_once_even_if_never_started() {
        let mut c = core(&[(1, 1), (2, 2)]);
        c.to_ack = vec![lease(2, 2), lease(9, 1)];
        let revokes = [
            decision(v1::LeaseDecisionKind::Revoke, lease(2, 2)),
            decision(v1::LeaseDecisionKind::Revoke, lease(2, 2)), // repeated
            decision(v1::LeaseDecisionKind::Revoke, lease(9, 1)), // granted and revoked between heartbeats
            decision(v1::LeaseDecisionKind::Revoke, lease(0, 1)), // invalid
        ];
        assert_eq!(take_revoked(&mut c, &revokes), vec![lease(2, 2), lease(9, 1)]);
        assert_eq!(held(&c), vec![(1, 1)]);
        assert!(c.to_ack.is_empty());
    }

    #[test]
    fn register_keeps_what_was_confirmed_and_drops_the_rest() {
        let mut c = core(&[(1, 1), (2, 2), (3, 3)]);
        c.to_ack = vec![lease(1, 1)];
        let decisions = [
            decision(v1::LeaseDecisionKind::Keep, lease(1, 1)),
            decision(v1::LeaseDecisionKind::Keep, lease(2, 7)), // another epoch: not ours
            decision(v1::LeaseDecisionKind::Keep, lease(8, 1)), // never presented
            decision(v1::LeaseDecisionKind::Revoke, lease(3, 3)),
        ];
        assert_eq!(keep_confirmed(&mut c, &decisions), vec![lease(2, 2), lease(3, 3)]);
        assert_eq!(held(&c), vec![(1, 1)]);
        assert!(c.to_ack.is_empty());
    }
}
