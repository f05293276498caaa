//! Argument checks: every event validates before it mutates, and a bad
//! argument is an [`EngineError::InvalidArgument`] naming the field.

use std::collections::BTreeMap;

use super::{Engine, EngineError, Lease, StreamId};

pub(super) fn invalid(field: impl Into<String>, problem: impl Into<String>) -> EngineError {
    EngineError::InvalidArgument { field: field.into(), problem: problem.into() }
}

pub(super) fn is_printable(s: &str) -> bool {
    s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// A `server_id` as every RPC takes it: 1..=128 printable ASCII bytes.
pub(crate) fn validate_server_id(server_id: &str) -> Result<(), EngineError> {
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
    /// Checks a list of stream ids. `list` is the list's wire name and
    /// `element` what follows an element's index in its path (`""` for a
    /// list of ids, `".stream_id"` for a list of messages), so errors name
    /// `streams[3].stream_id` as the contract does.
    pub(super) fn validate_ids(&self, list: &str, element: &str, ids: &[StreamId]) -> Result<(), EngineError> {
        if ids.len() > self.config.max_list_len {
            return Err(invalid(list, format!("at most {} entries", self.config.max_list_len)));
        }
        let mut seen = BTreeMap::new();
        for (i, &id) in ids.iter().enumerate() {
            if id <= 0 {
                return Err(invalid(format!("{list}[{i}]{element}"), format!("stream id {id} must be greater than 0")));
            }
            if let Some(first) = seen.insert(id, i) {
                return Err(invalid(
                    format!("{list}[{i}]{element}"),
                    format!("stream id {id} appears twice (first at {list}[{first}])"),
                ));
            }
        }
        Ok(())
    }

    /// Checks a list of leases, naming the element at fault.
    pub(super) fn validate_leases(&self, list: &str, leases: &[Lease]) -> Result<(), EngineError> {
        if leases.len() > self.config.max_list_len {
            return Err(invalid(list, format!("at most {} entries", self.config.max_list_len)));
        }
        if let Some(i) = leases.iter().position(|l| l.lease_epoch == 0) {
            return Err(invalid(format!("{list}[{i}].lease_epoch"), "must be at least 1"));
        }
        let ids: Vec<StreamId> = leases.iter().map(|l| l.stream_id).collect();
        self.validate_ids(list, ".stream_id", &ids)
    }
}
