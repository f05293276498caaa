//! Liveness: the clock's tick, session checks, expiry, the mass-failure
//! brake and the restart grace period.

use super::{Change, Engine, EngineError, Millis, SessionRef, WorkerState};

impl Engine {
    /// Advances the engine's view of time: expires silent sessions, engages
    /// or releases the mass-failure brake, ends the grace period, places and
    /// moves streams.
    pub fn tick(&mut self, now: Millis) {
        let timeout = self.config.session_timeout;
        if let Some(until) = self.grace_until
            && now >= until
        {
            self.end_grace();
        }
        let silent = self.silent_sessions(now);
        if !silent.is_empty() {
            while self.expiries.front().is_some_and(|&t| now.saturating_sub(t) >= timeout) {
                self.expiries.pop_front();
            }
            let live = self.workers.values().filter(|w| self.is_live_state(w.state)).count();
            let window = self.expiries.len() + live;
            let expiring = self.expiries.len() + silent.len();
            if window >= self.config.mass_failure_min_sessions
                && expiring as f64 > self.config.mass_failure_threshold * window as f64
                && !self.brake
            {
                self.set_brake(true);
            }
            for id in silent {
                self.expire(&id, now);
            }
        }
        if self.brake && !self.brake_still_needed() {
            self.set_brake(false);
            self.dirty = true;
        }
        self.rebalance(now);
        self.prune(now);
    }

    /// Live sessions with no heartbeat seen for `session_timeout` at `now`:
    /// the ones [`tick`](Self::tick) would expire. O(workers).
    pub fn silent_sessions(&self, now: Millis) -> Vec<String> {
        let timeout = self.config.session_timeout;
        self.workers
            .iter()
            .filter(|(_, w)| matches!(w.state, WorkerState::Live | WorkerState::Draining))
            .filter(|(_, w)| now.saturating_sub(w.last_heartbeat) >= timeout)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// A heartbeat of `server_id`'s live session at `at`, answered outside
    /// the engine (it carried nothing to acknowledge and had no decision
    /// waiting): folded into the session's liveness before expiries are
    /// decided. Never moves the clock back.
    pub fn observe_heartbeat(&mut self, server_id: &str, at: Millis) {
        if let Some(w) = self.workers.get_mut(server_id)
            && matches!(w.state, WorkerState::Live | WorkerState::Draining)
        {
            w.last_heartbeat = w.last_heartbeat.max(at);
        }
    }

    pub(super) fn is_live_state(&self, state: WorkerState) -> bool {
        matches!(state, WorkerState::Live | WorkerState::Draining)
    }

    pub(super) fn is_live(&self, server_id: &str) -> bool {
        self.workers.get(server_id).is_some_and(|w| self.is_live_state(w.state))
    }

    /// Whether a worker in `state` holds its streams as far as the admin
    /// views go: live, or awaiting re-registration (which only exists during
    /// the grace period after a restart).
    pub(super) fn holds_state(state: WorkerState) -> bool {
        matches!(state, WorkerState::Live | WorkerState::Draining | WorkerState::AwaitingReregistration)
    }

    pub(super) fn holds(&self, server_id: &str) -> bool {
        self.workers.get(server_id).is_some_and(|w| Self::holds_state(w.state))
    }

    /// Forgets workers gone longer than `worker_retention` that hold
    /// nothing. O(workers), run by the ticker.
    pub(super) fn prune(&mut self, now: Millis) {
        let retention = self.config.worker_retention;
        let gone: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| w.state == WorkerState::Expired && w.owned.is_empty())
            .filter(|(_, w)| now.saturating_sub(w.last_heartbeat) >= retention)
            .map(|(id, _)| id.clone())
            .collect();
        for server_id in gone {
            self.workers.remove(&server_id);
            self.changes.push(Change::WorkerPruned { server_id });
        }
    }

    pub(super) fn check_session(&self, session: &SessionRef) -> Result<(), EngineError> {
        let server_id = session.server_id.clone();
        let Some(w) = self.workers.get(&session.server_id) else {
            return Err(EngineError::SessionUnknown { server_id });
        };
        if session.worker_epoch < w.worker_epoch {
            return Err(EngineError::SessionFenced { server_id, current_epoch: w.worker_epoch });
        }
        if session.worker_epoch > w.worker_epoch || session.session_id != w.session_id {
            return Err(EngineError::SessionUnknown { server_id });
        }
        if !self.is_live_state(w.state) {
            return Err(EngineError::SessionExpired { server_id });
        }
        Ok(())
    }

    pub(super) fn touch(&mut self, session: &SessionRef, now: Millis) {
        if let Some(w) = self.workers.get_mut(&session.server_id) {
            w.last_heartbeat = now;
        }
    }

    pub(super) fn expire(&mut self, server_id: &str, now: Millis) {
        if let Some(w) = self.workers.get_mut(server_id) {
            w.state = WorkerState::Expired;
            w.unacknowledged.clear();
            w.undelivered.clear();
            self.expiries.push_back(now);
            self.changes.push(Change::WorkerExpired { server_id: server_id.to_owned() });
            self.dirty = true;
        }
    }

    /// Engages or releases the mass-failure brake, recording the change
    /// (the audit log, the dashboard's timeline) when there is one.
    pub(super) fn set_brake(&mut self, engaged: bool) {
        if self.brake != engaged {
            self.brake = engaged;
            self.changes.push(Change::BrakeChanged { engaged });
        }
    }

    /// The brake stays on while the workers whose streams it holds back are
    /// more than the threshold share of the sessions.
    pub(super) fn brake_still_needed(&self) -> bool {
        let orphaned = self.workers.values().filter(|w| w.state == WorkerState::Expired && !w.owned.is_empty()).count();
        let live = self.workers.values().filter(|w| self.is_live_state(w.state)).count();
        let total = orphaned + live;
        total >= self.config.mass_failure_min_sessions
            && orphaned as f64 > self.config.mass_failure_threshold * total as f64
    }

    pub(super) fn end_grace_if_everyone_is_back(&mut self) {
        if self.grace_until.is_some() && !self.workers.values().any(|w| w.state == WorkerState::AwaitingReregistration)
        {
            self.end_grace();
        }
    }

    pub(super) fn end_grace(&mut self) {
        self.grace_until = None;
        let missing: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| w.state == WorkerState::AwaitingReregistration)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &missing {
            if let Some(w) = self.workers.get_mut(id) {
                w.state = WorkerState::Expired;
            }
        }
        self.changes.push(Change::GraceEnded { missing: missing.clone() });
        let live = self.workers.values().filter(|w| self.is_live_state(w.state)).count();
        let window = missing.len() + live;
        if window >= self.config.mass_failure_min_sessions
            && missing.len() as f64 > self.config.mass_failure_threshold * window as f64
        {
            self.set_brake(true);
        }
        self.dirty = true;
    }
}
