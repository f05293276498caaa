//! The values the engine takes and returns. They mirror the wire contract
//! (`orchestrator.v1`) without depending on it: the service layer converts.

use std::fmt;

/// Milliseconds on the caller's monotonic clock. The engine never reads a
/// clock; every event carries the time it happened.
pub type Millis = u64;

/// A stream's id; always greater than zero.
pub type StreamId = i64;

/// The right of a worker to process a stream, fenced by `lease_epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lease {
    /// The stream.
    pub stream_id: StreamId,
    /// Grows every time the stream changes owner.
    pub lease_epoch: u64,
}

impl fmt::Display for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.stream_id, self.lease_epoch)
    }
}

/// Identifies one session of one worker; carried by every call after
/// `Register`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionRef {
    /// The worker's stable id.
    pub server_id: String,
    /// Issued by `Register`.
    pub session_id: String,
    /// Grows per `server_id` with each new session.
    pub worker_epoch: u64,
}

/// Why a lease is taken away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevokeReason {
    /// Moved to balance the load.
    Rebalance,
    /// The stream now belongs to another worker or a newer epoch.
    Moved,
    /// The stream was removed from the catalog.
    StreamRemoved,
    /// The worker is being drained.
    Drain,
    /// The presented epoch is not the current one for this worker.
    StaleEpoch,
    /// The worker holds more than its (new) `max_streams`.
    OverCapacity,
}

/// The engine's answer for one lease a worker presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseDecision {
    /// Still current: keep processing.
    Keep(Lease),
    /// Not current: stop processing.
    Revoke(Lease, RevokeReason),
}

impl LeaseDecision {
    /// The lease decided on.
    pub fn lease(&self) -> Lease {
        match self {
            Self::Keep(l) | Self::Revoke(l, _) => *l,
        }
    }
}

/// What `register` decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The new session.
    pub session: SessionRef,
    /// One decision per presented lease, in the order presented.
    pub decisions: Vec<LeaseDecision>,
}

/// What a heartbeat answers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeartbeatReply {
    /// Leases granted and not yet acknowledged: start processing these.
    pub assign: Vec<Lease>,
    /// Leases to stop processing and release.
    pub revoke: Vec<(Lease, RevokeReason)>,
    /// Whether the worker is being drained.
    pub draining: bool,
}

/// What a release answers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Released {
    /// Leases released now (or by an earlier call with the same request id).
    pub released: Vec<Lease>,
    /// Leases this worker did not hold at that epoch: nothing was done.
    pub not_held: Vec<Lease>,
}

/// The state of a worker as the engine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerState {
    /// Heartbeating within `session_timeout`.
    Live,
    /// Live, moving its streams away and taking no new ones.
    Draining,
    /// No heartbeat within `session_timeout`, or deregistered.
    Expired,
    /// Known from before a restart; may re-register during the grace period.
    AwaitingReregistration,
}

impl WorkerState {
    /// Every state, in the order of their discriminants (the index of
    /// `Overview::workers_by_state`).
    pub const ALL: [WorkerState; 4] = [Self::Live, Self::Draining, Self::Expired, Self::AwaitingReregistration];

    /// `live`, `draining`, `expired` or `awaiting_reregistration`: the name
    /// the status API and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Draining => "draining",
            Self::Expired => "expired",
            Self::AwaitingReregistration => "awaiting_reregistration",
        }
    }
}

/// The state of a stream's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseState {
    /// Granted; the owner processes it.
    Active,
    /// Revoked; waiting for the owner's release or its session's expiry
    /// before it may go to anyone else.
    Revoking(RevokeReason),
}

/// Why the engine refused a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// A field is out of its documented range.
    #[error("{field}: {problem}")]
    InvalidArgument {
        /// The field, by its wire name; an element of a list by its path,
        /// as in `leases[3].stream_id`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A newer session exists for this `server_id`.
    #[error("session fenced: {server_id} has a newer session (worker_epoch {current_epoch})")]
    SessionFenced {
        /// The worker.
        server_id: String,
        /// Its current worker epoch.
        current_epoch: u64,
    },
    /// The session expired (no heartbeat within `session_timeout`, or
    /// deregistered).
    #[error("session expired: {server_id} must register again")]
    SessionExpired {
        /// The worker.
        server_id: String,
    },
    /// No such session.
    #[error("unknown session for {server_id}: register first")]
    SessionUnknown {
        /// The worker.
        server_id: String,
    },
    /// An admin call named a worker the engine does not know.
    #[error("unknown worker {server_id}")]
    UnknownWorker {
        /// The worker.
        server_id: String,
    },
}

/// A change of durable state, in the order it happened. The service writes
/// these to the store before it answers the call that caused them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A worker opened a session.
    WorkerRegistered {
        /// The worker.
        server_id: String,
        /// Its new epoch.
        worker_epoch: u64,
        /// Its declared capacity.
        max_streams: u32,
    },
    /// A worker's session expired (no heartbeat within the timeout).
    WorkerExpired {
        /// The worker.
        server_id: String,
    },
    /// A worker deregistered: it left cleanly.
    WorkerLeft {
        /// The worker.
        server_id: String,
    },
    /// The grace period after a restart ended; `missing` did not
    /// re-register in it (their sessions are expired and their streams
    /// placed elsewhere, unless the brake holds them).
    GraceEnded {
        /// The workers that did not come back.
        missing: Vec<String>,
    },
    /// A worker gone (expired or deregistered, holding nothing) for longer
    /// than `worker_retention` was forgotten.
    WorkerPruned {
        /// The worker.
        server_id: String,
    },
    /// A stream was granted.
    LeaseGranted {
        /// The new owner.
        server_id: String,
        /// The lease.
        lease: Lease,
    },
    /// The mass-failure brake engaged (`true`: the streams of workers that
    /// went silent together are held back) or was released.
    BrakeChanged {
        /// Whether it is now engaged.
        engaged: bool,
    },
    /// A lease was revoked; it stays with its owner until released.
    LeaseRevoking {
        /// The owner.
        server_id: String,
        /// The lease.
        lease: Lease,
        /// Why.
        reason: RevokeReason,
    },
    /// A lease ended (released, or its stream removed while unowned).
    LeaseEnded {
        /// The last owner.
        server_id: String,
        /// The lease.
        lease: Lease,
    },
    /// A stream entered the catalog.
    StreamAdded {
        /// The stream.
        stream_id: StreamId,
    },
    /// A stream removed from the catalog while leased: gone from the
    /// catalog now, deleted when its lease ends.
    StreamRemoved {
        /// The stream.
        stream_id: StreamId,
    },
    /// A stream removed while leased, added back before its lease ended:
    /// in the catalog again, with that lease.
    StreamRestored {
        /// The stream.
        stream_id: StreamId,
    },
    /// A stream left the catalog for good.
    StreamDeleted {
        /// The stream.
        stream_id: StreamId,
    },
    /// Rebalancing was paused or resumed by an operator.
    RebalancingPaused {
        /// Whether it is now paused.
        paused: bool,
    },
}
