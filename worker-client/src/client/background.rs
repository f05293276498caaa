//! The task the client owns: heartbeats in normal mode, a jittered
//! reconnect probe in local mode, and the local-mode limit's watchdog.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::ResilientWorkerClient;
use crate::state::Op;

impl ResilientWorkerClient {
    /// The background task: heartbeats in normal mode, a reconnect probe
    /// with jittered backoff in local mode, the local-mode limit.
    pub(super) async fn background(&self) {
        let mut stop = self.inner.stop.subscribe();
        let mut backoff = resilience::retry::Backoff::new(self.inner.config.reconnect);
        loop {
            let wait = {
                let core = self.inner.core.lock().await;
                if self.is_local() {
                    self.next_probe(&mut backoff)
                } else if self.inner.last_call_answered.load(Ordering::Acquire) {
                    core.heartbeat_interval
                } else {
                    // The last call got no answer: local mode is due as soon
                    // as the silence reaches `local_mode_after`, not a
                    // heartbeat and another failed call later.
                    let due = self.inner.config.local_mode_after.saturating_sub(self.silent_for());
                    core.heartbeat_interval.min(due)
                }
            };
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(wait) => {}
            }
            let mut core = self.inner.core.lock().await;
            if core.stopped {
                return;
            }
            if !self.is_local()
                && !self.inner.last_call_answered.load(Ordering::Acquire)
                && self.silent_for() >= self.inner.config.local_mode_after
            {
                let why = format!("no answer from the orchestrator for {:?}", self.inner.config.local_mode_after);
                if let Err(e) = self.maybe_enter_local(&mut core, &why).await {
                    tracing::warn!(error = %e, "could not record local mode");
                }
                if self.is_local() {
                    continue;
                }
            }
            let result = if self.is_local() {
                let r = self.register_locked(&mut core).await;
                if matches!(r, Ok(true)) {
                    backoff.reset();
                }
                r.map(|_| ())
            } else {
                match self.heartbeat_locked(&mut core).await {
                    // Upload what was recorded since the last time, once per heartbeat.
                    Ok(true) if !self.is_local() && self.inner.records_waiting.swap(false, Ordering::AcqRel) => {
                        self.sync_records(&mut core).await
                    }
                    other => other.map(|_| ()),
                }
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "background call failed");
            }
        }
    }

    /// How long to wait before the next reconnect probe in local mode: the
    /// jittered backoff, but no earlier than the circuit breaker admits a
    /// call (a probe it would refuse proves nothing). Logged at info, so an
    /// operator sees the worker is trying, and when it tries next.
    pub(super) fn next_probe(&self, backoff: &mut resilience::retry::Backoff) -> Duration {
        let delay = backoff.next_delay();
        let open_for = self.inner.breaker.stats().open_remaining.unwrap_or_default();
        let wait = delay.max(open_for);
        let secs = wait.as_secs_f64();
        if open_for > delay {
            tracing::info!(
                "orchestrator unreachable; next probe in {secs:.1} s, when the circuit breaker lets a call through"
            );
        } else {
            tracing::info!("orchestrator unreachable; next probe in {secs:.1} s");
        }
        wait
    }

    /// Time since the start of the last successful call (or since start,
    /// if none).
    /// On the monotonic clock; before the first contact of this run, the
    /// silence the state file recorded plus the time since start.
    pub(super) fn silent_for(&self) -> Duration {
        match *self.inner.contact_at.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(t) => t.elapsed(),
            None => self.inner.silent_at_start.saturating_add(self.inner.started_at.elapsed()),
        }
    }

    /// Enforces the local-mode limit on its own clock, so that a call stuck
    /// on a dead link (holding the protocol lock) cannot delay it. The limit
    /// counts from the start of the last successful call, no later than the
    /// orchestrator's session timeout counts from: with a limit below
    /// `session_timeout` the worker stops before its streams can move.
    pub(super) async fn limit_watchdog(&self) {
        let Some(limit) = self.inner.config.local_mode_limit else {
            return std::future::pending().await;
        };
        loop {
            let silent = self.silent_for();
            if silent >= limit {
                // Decided under the lease watch's lock, as `publish` does:
                // a publish can never put leases back after the halt, and a
                // contact that came back meanwhile cancels it.
                let mut halted_now = false;
                self.inner.leases.send_if_modified(|set| {
                    if self.silent_for() < limit || self.inner.halted.swap(true, Ordering::AcqRel) {
                        return false;
                    }
                    halted_now = true;
                    // Halted is a kind of local mode: out of touch, probing.
                    if !self.inner.local.swap(true, Ordering::AcqRel) {
                        self.inner.metrics.local_mode_activations.fetch_add(1, Ordering::Relaxed);
                    }
                    let changed = !set.leases.is_empty() || !set.local_mode;
                    set.leases.clear();
                    set.local_mode = true;
                    changed
                });
                if halted_now {
                    {
                        let mut reason = self.inner.local_reason.lock().unwrap_or_else(|p| p.into_inner());
                        if reason.is_none() {
                            *reason = Some(format!("no successful call to the orchestrator for {limit:?}"));
                        }
                    }
                    tracing::warn!(
                        ?limit,
                        "local-mode limit reached: stopping processing until the orchestrator answers"
                    );
                    let transition = Op::Transition {
                        at_ms: self.now_ms(),
                        mode: "halted",
                        reason: format!("no contact for {limit:?}"),
                    };
                    if let Err(e) = self.inner.state.write(vec![transition]).await {
                        tracing::warn!(error = %e, "could not record the halt in the state file");
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            } else {
                tokio::time::sleep(limit - silent).await;
            }
        }
    }
}
