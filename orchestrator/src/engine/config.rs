//! The engine's limits and timings.

use super::Millis;

/// Limits and timings of the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// A session without a heartbeat for this long expires (default 30 s).
    pub session_timeout: Millis,
    /// How often workers should heartbeat (default 5 s); told to them.
    pub heartbeat_interval: Millis,
    /// Length of the grace period after a restart (default here 30 s, the
    /// default `session_timeout`; the `orchestrator` binary uses
    /// `session_timeout` + 60 s so that a worker whose circuit breaker waits
    /// its 60 s recovery timeout still makes it: ARCHITECTURE.md, "Timing
    /// that composes").
    pub grace_period: Millis,
    /// Largest `max_streams` a worker may declare (default 10,000).
    pub max_streams_limit: u32,
    /// Longest list in one call (default 10,000).
    pub max_list_len: usize,
    /// Revocations for balance or drain per round; `None`: no cap.
    pub max_moves_per_round: Option<u32>,
    /// Share of sessions that may expire within one `session_timeout`
    /// window before the brake stops reassigning their streams (default 0.5).
    pub mass_failure_threshold: f64,
    /// The brake needs at least this many sessions in the window (default 3).
    pub mass_failure_min_sessions: usize,
    /// Distinguishes this engine's session ids from another instance's.
    pub instance_id: u64,
    /// At most one placement round per this many milliseconds (0: after
    /// every event). A round costs O(workers + streams that move); on a large
    /// fleet, where thousands of events arrive per second, the server batches
    /// them (the binary: a twentieth of the heartbeat interval). The ticker
    /// runs the deferred round; `request_streams` never waits.
    pub min_rebalance_interval: Millis,
    /// A worker gone this long (expired or deregistered, holding no stream)
    /// is forgotten: its memory of answers, its row in the store (default
    /// 24 h). Fencing survives: a forgotten server_id that comes back starts
    /// above every epoch ever issued (`PersistedState::worker_epoch_floor`).
    pub worker_retention: Millis,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            session_timeout: 30_000,
            heartbeat_interval: 5_000,
            grace_period: 30_000,
            max_streams_limit: 10_000,
            max_list_len: 10_000,
            max_moves_per_round: None,
            mass_failure_threshold: 0.5,
            mass_failure_min_sessions: 3,
            instance_id: 0,
            min_rebalance_interval: 0,
            worker_retention: 24 * 60 * 60 * 1000,
        }
    }
}
