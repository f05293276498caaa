//! Argument checks: every event validates before it mutates, and a bad
//! argument is an [`EngineError::InvalidArgument`] naming the field.

use std::collections::BTreeSet;

use super::{Engine, EngineError, Lease, StreamId};

pub(super) fn invalid(field: &'static str, problem: impl Into<String>) -> EngineError {
    EngineError::InvalidArgument { field, problem: problem.into() }
}

pub(super) fn is_printable(s: &str) -> bool {
    s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

pub(super) fn validate_server_id(server_id: &str) -> Result<(), EngineError> {
    if server_id.is_empty() || server_id.len() > 128 || !is_printable(server_id) {
        return Err(invalid("server_id", "must be 1..=128 printable ASCII bytes"));
    }
    Ok(())
}

pub(super) fn validate_request_id(request_id: &str) -> Result<(), EngineError> {
    if request_id.is_empty() || request_id.len() > 64 || !is_printable(request_id) {
        return Err(invalid("request_id", "must be 1..=64 printable ASCII bytes"));
    }
    Ok(())
}

impl Engine {
    pub(super) fn validate_ids(&self, field: &'static str, ids: &[StreamId]) -> Result<(), EngineError> {
        if ids.len() > self.config.max_list_len {
            return Err(invalid(field, format!("at most {} entries", self.config.max_list_len)));
        }
        let mut seen = BTreeSet::new();
        for &id in ids {
            if id <= 0 {
                return Err(invalid(field, format!("stream id {id} must be greater than 0")));
            }
            if !seen.insert(id) {
                return Err(invalid(field, format!("stream id {id} appears twice")));
            }
        }
        Ok(())
    }

    pub(super) fn validate_leases(&self, field: &'static str, leases: &[Lease]) -> Result<(), EngineError> {
        if let Some(l) = leases.iter().find(|l| l.lease_epoch == 0) {
            return Err(invalid(field, format!("stream {}: lease_epoch must be at least 1", l.stream_id)));
        }
        let ids: Vec<StreamId> = leases.iter().map(|l| l.stream_id).collect();
        self.validate_ids(field, &ids)
    }
}
