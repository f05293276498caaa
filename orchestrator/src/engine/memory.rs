//! The idempotence memory: the answers to recent mutating calls, by
//! `request_id`, so that a retried call gets the same answer and changes
//! nothing.

use std::collections::VecDeque;

use super::validate::invalid;
use super::{EngineError, Lease, LeaseDecision, Registered, Released, StreamId};

/// How many answers to mutating calls each worker (and the admin side)
/// remembers for `request_id` idempotence.
pub(super) const REMEMBERED_REQUESTS: usize = 64;

/// A remembered answer, keyed by request id with a fingerprint of the
/// request it answered.
#[derive(Debug, Clone)]
pub(super) enum Answer {
    Registered(Registered),
    Granted(Vec<Lease>),
    Released(Released),
    Synced(Vec<LeaseDecision>),
    Done,
    Added(Vec<StreamId>, Vec<StreamId>),
    Removed(Vec<StreamId>, Vec<StreamId>),
    Drained(u32),
    Paused(bool),
}

#[derive(Debug, Default, Clone)]
pub(super) struct Answers {
    recent: VecDeque<(String, u64, Answer)>,
}

impl Answers {
    pub(super) fn get(&self, request_id: &str, fingerprint: u64) -> Result<Option<Answer>, EngineError> {
        match self.recent.iter().find(|(id, _, _)| id == request_id) {
            Some((_, f, answer)) if *f == fingerprint => Ok(Some(answer.clone())),
            Some(_) => Err(invalid("request_id", "already used for a different request")),
            None => Ok(None),
        }
    }

    pub(super) fn put(&mut self, request_id: &str, fingerprint: u64, answer: Answer) {
        if self.recent.len() == REMEMBERED_REQUESTS {
            self.recent.pop_front();
        }
        self.recent.push_back((request_id.to_owned(), fingerprint, answer));
    }
}

/// A fingerprint of a request's content, to tell a retry (same id, same
/// content) from a reused id.
pub(super) fn fingerprint(parts: &impl std::hash::Hash) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(parts)
}
