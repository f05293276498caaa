//! The one place where errors become `tonic::Status`, and where wire types
//! become engine types and back.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use orchestrator_proto::v1;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::engine::{EngineError, Lease, LeaseDecision, LeaseState, RevokeReason, SessionRef, WorkerState};
use crate::store::StoreError;

/// An engine refusal as the contract documents it.
pub(crate) fn engine_error(error: EngineError) -> Status {
    let message = error.to_string();
    match error {
        EngineError::InvalidArgument { .. } => Status::invalid_argument(message),
        EngineError::SessionFenced { server_id, .. } => {
            session_error(orchestrator_proto::reason::SESSION_FENCED, server_id, message)
        }
        EngineError::SessionExpired { server_id } => {
            session_error(orchestrator_proto::reason::SESSION_EXPIRED, server_id, message)
        }
        EngineError::SessionUnknown { server_id } => {
            session_error(orchestrator_proto::reason::SESSION_UNKNOWN, server_id, message)
        }
        EngineError::UnknownWorker { .. } => Status::not_found(message),
    }
}

fn session_error(reason: &str, server_id: String, message: String) -> Status {
    let details = ErrorDetails::with_error_info(
        reason,
        orchestrator_proto::ERROR_DOMAIN,
        HashMap::from([(orchestrator_proto::METADATA_SERVER_ID.to_owned(), server_id)]),
    );
    Status::with_error_details(Code::FailedPrecondition, format!("{message} (register again)"), details)
}

/// A storage failure: the orchestrator cannot promise durability any more
/// and shuts down.
pub(crate) fn store_error(error: &StoreError) -> Status {
    Status::internal(format!("{error}; the orchestrator is shutting down"))
}

/// A bad field that the service checks itself.
pub(crate) fn invalid(field: &str, problem: &str) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}

pub(crate) fn session(session: Option<v1::SessionRef>) -> Result<SessionRef, Status> {
    let s = session.ok_or_else(|| invalid("session", "required (the SessionRef returned by Register)"))?;
    if s.server_id.is_empty() {
        return Err(invalid("session.server_id", "required"));
    }
    if s.session_id.is_empty() || s.session_id.len() > 128 {
        return Err(invalid("session.session_id", "must be 1..=128 bytes, as returned by Register"));
    }
    Ok(SessionRef { server_id: s.server_id, session_id: s.session_id, worker_epoch: s.worker_epoch })
}

pub(crate) fn session_out(s: SessionRef) -> v1::SessionRef {
    v1::SessionRef { server_id: s.server_id, session_id: s.session_id, worker_epoch: s.worker_epoch }
}

pub(crate) fn leases_in(leases: &[v1::Lease]) -> Vec<Lease> {
    leases.iter().map(|l| Lease { stream_id: l.stream_id, lease_epoch: l.lease_epoch }).collect()
}

pub(crate) fn lease_out(l: Lease) -> v1::Lease {
    v1::Lease { stream_id: l.stream_id, lease_epoch: l.lease_epoch }
}

pub(crate) fn reason_out(reason: RevokeReason) -> v1::RevokeReason {
    match reason {
        RevokeReason::Rebalance => v1::RevokeReason::Rebalance,
        RevokeReason::Moved => v1::RevokeReason::Moved,
        RevokeReason::StreamRemoved => v1::RevokeReason::StreamRemoved,
        RevokeReason::Drain => v1::RevokeReason::Drain,
        RevokeReason::StaleEpoch => v1::RevokeReason::StaleEpoch,
        RevokeReason::OverCapacity => v1::RevokeReason::OverCapacity,
    }
}

pub(crate) fn decision_out(d: LeaseDecision) -> v1::LeaseDecision {
    match d {
        LeaseDecision::Keep(l) => v1::LeaseDecision {
            lease: Some(lease_out(l)),
            kind: v1::LeaseDecisionKind::Keep as i32,
            reason: v1::RevokeReason::Unspecified as i32,
        },
        LeaseDecision::Revoke(l, r) => v1::LeaseDecision {
            lease: Some(lease_out(l)),
            kind: v1::LeaseDecisionKind::Revoke as i32,
            reason: reason_out(r) as i32,
        },
    }
}

/// A duration on the wire (saturating at the protobuf maximum).
pub(crate) fn duration_out(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration { seconds: i64::MAX, nanos: 999_999_999 })
}

/// Unix milliseconds on the wire.
pub(crate) fn timestamp_ms(unix_ms: i64) -> prost_types::Timestamp {
    let offset = Duration::from_millis(unix_ms.unsigned_abs());
    let t = if unix_ms >= 0 { UNIX_EPOCH.checked_add(offset) } else { UNIX_EPOCH.checked_sub(offset) };
    t.map_or_else(prost_types::Timestamp::default, prost_types::Timestamp::from)
}

/// A timestamp in Unix milliseconds, if it is a valid one (`nanos` in
/// range: prost-types would normalize it, the contract refuses it).
pub(crate) fn timestamp_in(t: &prost_types::Timestamp) -> Option<i64> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    let time = SystemTime::try_from(*t).ok()?;
    Some(match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).ok()?,
        Err(before) => -i64::try_from(before.duration().as_millis()).ok()?,
    })
}

pub(crate) fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A stream's state on the wire: a lease whose owner is not live is
/// unassigned (placeable).
pub(crate) fn stream_state(state: LeaseState, live: bool) -> v1::StreamState {
    match (state, live) {
        (_, false) => v1::StreamState::Unassigned,
        (LeaseState::Active, true) => v1::StreamState::Assigned,
        (LeaseState::Revoking(_), true) => v1::StreamState::Revoking,
    }
}

/// A worker's state on the wire.
pub(crate) fn worker_state(state: WorkerState) -> v1::WorkerState {
    match state {
        WorkerState::Live => v1::WorkerState::Live,
        WorkerState::Draining => v1::WorkerState::Draining,
        WorkerState::Expired => v1::WorkerState::Expired,
        WorkerState::AwaitingReregistration => v1::WorkerState::AwaitingReregistration,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_times_round_trip_and_bad_nanos_are_refused() {
        let ts = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert_eq!(timestamp_ms(1_500), ts(1, 500_000_000));
        assert_eq!(timestamp_ms(-500), ts(-1, 500_000_000));
        for ms in [0, 1, 999, 1_000, 1_700_000_000_123, -1, -500, -1_000] {
            assert_eq!(timestamp_in(&timestamp_ms(ms)), Some(ms), "{ms}");
        }
        assert_eq!(timestamp_in(&ts(1, -1)), None);
        assert_eq!(timestamp_in(&ts(1, 1_000_000_000)), None);
        assert_eq!(
            duration_out(Duration::from_millis(1_250)),
            prost_types::Duration { seconds: 1, nanos: 250_000_000 }
        );
        assert_eq!(duration_out(Duration::MAX).seconds, i64::MAX);
    }
}
