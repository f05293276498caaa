//! The engine's state as the store persists it and as the admin API shows
//! it.

use super::{Lease, LeaseState, Millis, RevokeReason, StreamId, WorkerState};

/// A worker as persisted by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedWorker {
    /// The worker.
    pub server_id: String,
    /// Its latest epoch.
    pub worker_epoch: u64,
    /// Its declared capacity.
    pub max_streams: u32,
}

/// A stream as persisted by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedStream {
    /// The stream.
    pub stream_id: StreamId,
    /// The highest lease epoch issued.
    pub epoch: u64,
    /// Its current lease: owner, epoch, state.
    pub lease: Option<(String, u64, LeaseState)>,
}

/// Everything the engine needs to restart.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PersistedState {
    /// Known workers.
    pub workers: Vec<PersistedWorker>,
    /// The catalog with leases.
    pub streams: Vec<PersistedStream>,
    /// Whether an operator paused rebalancing.
    pub rebalancing_paused: bool,
    /// The last lease epoch of each deleted stream that ever had one.
    pub retired_epochs: Vec<(StreamId, u64)>,
    /// The highest `worker_epoch` ever issued to any worker: a server_id the
    /// engine does not know (new, or pruned after `worker_retention`) starts
    /// above it, so fencing survives pruning.
    pub worker_epoch_floor: u64,
}

/// A worker as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerView {
    /// The worker.
    pub server_id: String,
    /// Its current epoch.
    pub worker_epoch: u64,
    /// Its state.
    pub state: WorkerState,
    /// Its declared capacity.
    pub max_streams: u32,
    /// Leases naming it.
    pub owned: u32,
    /// The part of `owned` being revoked.
    pub revoking: u32,
    /// Time of its last heartbeat.
    pub last_heartbeat: Millis,
}

/// A lease as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    /// The owner.
    pub server_id: String,
    /// The lease.
    pub lease: Lease,
    /// Its state.
    pub state: LeaseState,
    /// Whether the owner's session is live (false: orphaned, assignable).
    /// (The owner is live, or awaiting re-registration during the grace
    /// period after a restart: it holds the stream.)
    pub owner_live: bool,
}

/// Cluster-wide figures.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterStatus {
    /// Live (or draining) sessions.
    pub live_workers: u32,
    /// Streams in the catalog.
    pub total_streams: u64,
    /// Streams with a lease held by a live session.
    pub assigned_streams: u64,
    /// Sum of live, non-draining workers' capacities.
    pub total_capacity: u64,
    /// Paused by an operator.
    pub rebalancing_paused: bool,
    /// The mass-failure brake is on.
    pub brake_engaged: bool,
    /// End of the restart grace period, if in it.
    pub grace_until: Option<Millis>,
}

/// What the heartbeat fast path needs to know about a worker's session
/// (see `service/liveness.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    /// The session's id.
    pub session_id: String,
    /// The session's epoch.
    pub worker_epoch: u64,
    /// Live or draining: its calls are accepted.
    pub live: bool,
    /// A heartbeat would carry decisions (grants to acknowledge, leases to
    /// release): it must take the slow path.
    pub busy: bool,
    /// Being drained.
    pub draining: bool,
    /// The last heartbeat the engine has seen.
    pub last_heartbeat: Millis,
}

/// The fleet at a glance, for metrics and the dashboard: counts over all
/// workers (O(workers), a few microseconds per thousand) and the first few
/// unassigned and revoking streams (bounded lists, never O(streams)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Overview {
    /// The cluster-wide figures of the admin API.
    pub status: ClusterStatus,
    /// Known workers by state, indexed as [`WorkerState::ALL`].
    pub workers_by_state: [u32; 4],
    /// Leases held by a live (or, in grace, returning) worker, not revoked.
    pub leases_active: u64,
    /// Leases revoked, waiting for their holder's release.
    pub leases_revoking: u64,
    /// Leases whose holder is gone: their streams are unassigned.
    pub leases_orphaned: u64,
    /// The first unassigned streams (no lease, or an orphaned one), by id.
    pub unassigned_first: Vec<StreamId>,
    /// The first revoking leases: stream, holder, epoch, reason.
    pub revoking_first: Vec<RevokingLease>,
}

/// A lease being revoked, for the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokingLease {
    /// The holder, until it releases.
    pub server_id: String,
    /// The lease.
    pub lease: Lease,
    /// Why it was revoked.
    pub reason: RevokeReason,
}
