//! The protocol steps, each under the protocol lock (`Core`): register
//! (presenting held leases), heartbeat, request and release streams, upload
//! processing records, and the mode changes they cause.

use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use orchestrator_proto::v1;

use super::ResilientWorkerClient;
use super::leases::{Core, accept_grants, apply_decisions, keep_confirmed, take_revoked};
use super::rpc::{Failure, request_id};
use crate::Error;
use crate::state::Op;

/// The largest acknowledged sequence the client believes (2^53): far
/// beyond any real count, and safely inside SQLite's integers.
const MAX_SEQUENCE: u64 = 1 << 53;

/// Records uploaded per `SyncLocalState` call, at first: about 40 KiB, far
/// below the orchestrator's default limits (10,000 per list, 4 MiB per
/// message). A batch the orchestrator refuses as too large is halved.
pub(super) const SYNC_BATCH: usize = 1000;

/// Whether `status` says the upload was too large: RESOURCE_EXHAUSTED (the
/// message limit) or INVALID_ARGUMENT on the `records` list itself (the
/// list limit), not on one record.
fn batch_too_large(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::ResourceExhausted
        || (status.code() == tonic::Code::InvalidArgument && status.message().starts_with("records:"))
}

impl ResilientWorkerClient {
    pub(super) async fn register_locked(&self, core: &mut Core) -> Result<bool, Error> {
        if core.stopped || self.inner.stopping.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        if self.is_standalone() {
            return Ok(false);
        }
        let held = core.held();
        let request = v1::RegisterRequest {
            server_id: self.inner.config.server_id.clone(),
            max_streams: self.inner.config.max_streams,
            request_id: request_id(),
            held_leases: held.clone(),
            client_version: self.inner.config.client_version.clone(),
        };
        let answer = self.call(request, |mut grpc, request| async move { grpc.register(request).await }).await;
        let r = match answer {
            Ok(r) => r,
            Err(Failure::Session) => return Ok(false), // cannot happen for Register
            Err(Failure::Rejected(s)) => {
                return Err(Error::rejected(s));
            }
            Err(Failure::Unreachable(why)) => {
                self.maybe_enter_local(core, &why).await?;
                self.publish(core);
                return Ok(false);
            }
            Err(Failure::Denied(status)) => {
                self.on_denied(core, &status).await?;
                self.publish(core);
                return Ok(false);
            }
        };
        let Some(session) =
            r.session.filter(|s| s.server_id == self.inner.config.server_id && !s.session_id.is_empty())
        else {
            tracing::warn!("the orchestrator answered Register without a usable session; ignoring the answer");
            return Ok(false);
        };
        // Keep what the orchestrator confirmed; a lease without a decision is dropped.
        let dropped = keep_confirmed(core, &r.held_lease_decisions);
        self.inner.confirmed.store(true, Ordering::Release);
        if !dropped.is_empty() {
            tracing::info!(
                dropped = dropped.len(),
                kept = core.leases.len(),
                "the orchestrator revoked leases held from before"
            );
        }
        // Releases made while away were not presented: the orchestrator
        // already counts them as released.
        let released: Vec<i64> = std::mem::take(&mut core.pending_releases).into_keys().collect();
        if let Some(interval) = r.heartbeat_interval.and_then(|d| Duration::try_from(d).ok()) {
            core.heartbeat_interval = self
                .inner
                .config
                .heartbeat_interval
                .unwrap_or(interval.clamp(Duration::from_millis(10), Duration::from_secs(300)));
        }
        core.session = Some(session.clone());
        self.inner
            .state
            .write(vec![
                // (The last contact was queued by `call`: when the attempt
                // started, not now.)
                Op::Session { session_id: session.session_id.clone(), worker_epoch: session.worker_epoch },
                Op::Leases(core.leases.clone()),
                Op::ReleasesDone(released),
            ])
            .await?;
        // Where this server id's records stand at the orchestrator: a fresh
        // state file numbers its records after that, never as duplicates.
        if r.acknowledged_through_sequence > MAX_SEQUENCE {
            tracing::warn!(
                acknowledged = r.acknowledged_through_sequence,
                "ignoring an absurd acknowledged sequence from the orchestrator"
            );
        } else if !self.inner.ever_registered.swap(true, Ordering::AcqRel) && r.acknowledged_through_sequence > 0 {
            // The first registration of this state file: none of its
            // records was ever uploaded, so numbering them after the
            // orchestrator's is safe (a file that registered before keeps
            // its numbers: its records below the watermark are the
            // orchestrator's own).
            let floor = r.acknowledged_through_sequence.saturating_add(1);
            tracing::info!(
                floor,
                "the orchestrator has records of this server id up to {}: numbering from {floor}",
                r.acknowledged_through_sequence
            );
            self.inner.state.write(vec![Op::SequenceFloor(floor)]).await?;
            self.inner.next_sequence.fetch_max(floor, Ordering::Relaxed);
        }
        tracing::info!(worker_epoch = session.worker_epoch, leases = core.leases.len(), "registered");
        self.inner.halted.store(false, Ordering::Release);
        self.leave_local().await?;
        self.publish(core);
        // Revoked leases may still be reserved for us (over capacity, a
        // removed stream): release them so they can move. For leases that
        // moved already the orchestrator answers `not_held`.
        if !dropped.is_empty() {
            self.release_locked(core, dropped).await?;
        }
        self.sync_records(core).await?;
        Ok(true)
    }

    pub(super) async fn heartbeat_locked(&self, core: &mut Core) -> Result<bool, Error> {
        if core.stopped {
            return Err(Error::ShutDown);
        }
        if self.is_standalone() {
            return Ok(false);
        }
        if self.is_local() {
            return Ok(false);
        }
        let Some(session) = core.session.clone() else {
            return self.register_locked(core).await;
        };
        let acknowledged = std::mem::take(&mut core.to_ack);
        let request = v1::HeartbeatRequest {
            session: Some(session),
            processing_count: core.leases.len() as u32,
            acknowledged: acknowledged.clone(),
        };
        let answer = self.call(request, |mut grpc, request| async move { grpc.heartbeat(request).await }).await;
        let r = match answer {
            Ok(r) => r,
            Err(failure) => {
                core.to_ack = acknowledged;
                self.on_failure(core, failure).await?;
                return Ok(false);
            }
        };
        // The session is alive: processing may resume if the limit stopped
        // it, and the client is in normal mode whatever happened meanwhile.
        self.inner.halted.store(false, Ordering::Release);
        self.leave_local().await?;
        if let Some(next) = r.next_heartbeat_interval.and_then(|d| Duration::try_from(d).ok())
            && self.inner.config.heartbeat_interval.is_none()
        {
            core.heartbeat_interval = next.clamp(Duration::from_millis(10), Duration::from_secs(300));
        }
        let before = core.leases.len();
        core.to_ack = accept_grants(core, self.inner.config.max_streams, &r.assign);
        // Every revoke is released, also of a lease never started.
        let revoked = take_revoked(core, &r.revoke);
        if core.leases.len() != before || !revoked.is_empty() {
            tracing::info!(
                assigned = r.assign.len(),
                revoked = revoked.len(),
                held = core.leases.len(),
                "leases changed"
            );
            self.persist_leases(core).await?;
        }
        // Stop first (publish), then release.
        self.publish(core);
        if !revoked.is_empty() {
            self.release_locked(core, revoked).await?;
        }
        if !core.pending_releases.is_empty() {
            let pending: Vec<v1::Lease> = core
                .pending_releases
                .iter()
                .map(|(&stream_id, &lease_epoch)| v1::Lease { stream_id, lease_epoch })
                .collect();
            self.release_locked(core, pending).await?;
        }
        Ok(true)
    }

    pub(super) async fn request_streams_locked(&self, core: &mut Core, count: u32) -> Result<Vec<i64>, Error> {
        let Some(session) = core.session.clone() else { return Ok(Vec::new()) };
        let request = v1::RequestStreamsRequest { session: Some(session), count, request_id: request_id() };
        let answer = self.call(request, |mut grpc, request| async move { grpc.request_streams(request).await });
        match answer.await {
            Ok(r) => {
                let granted = accept_grants(core, self.inner.config.max_streams, &r.granted);
                self.persist_leases(core).await?;
                self.publish(core);
                Ok(granted.iter().map(|l| l.stream_id).collect())
            }
            Err(failure) => self.on_failure(core, failure).await.map(|()| Vec::new()),
        }
    }

    /// Releases leases already removed from the lease set; records them
    /// locally if the orchestrator cannot be told now.
    pub(super) async fn release_locked(&self, core: &mut Core, leases: Vec<v1::Lease>) -> Result<bool, Error> {
        let session = if self.is_local() { None } else { core.session.clone() };
        if let Some(session) = session {
            let request =
                v1::ReleaseStreamsRequest { session: Some(session), leases: leases.clone(), request_id: request_id() };
            let answer =
                self.call(request, |mut grpc, request| async move { grpc.release_streams(request).await }).await;
            match answer {
                Ok(_) => {
                    let done: Vec<i64> = leases.iter().map(|l| l.stream_id).collect();
                    for id in &done {
                        core.pending_releases.remove(id);
                    }
                    self.inner.state.write(vec![Op::ReleasesDone(done)]).await?;
                    return Ok(true);
                }
                Err(Failure::Rejected(s)) => {
                    return Err(Error::rejected(s));
                }
                Err(failure) => {
                    // Fencing or unreachable: keep the release for later.
                    let mut ops = Vec::new();
                    for l in &leases {
                        core.pending_releases.insert(l.stream_id, l.lease_epoch);
                        ops.push(Op::PendingRelease { stream_id: l.stream_id, lease_epoch: l.lease_epoch });
                    }
                    self.inner.state.write(ops).await?;
                    self.on_failure(core, failure).await?;
                    return Ok(false);
                }
            }
        }
        let ops = leases
            .iter()
            .map(|l| {
                core.pending_releases.insert(l.stream_id, l.lease_epoch);
                Op::PendingRelease { stream_id: l.stream_id, lease_epoch: l.lease_epoch }
            })
            .collect();
        self.inner.state.write(ops).await?;
        Ok(false)
    }

    /// Uploads unsynced records in batches; marks them synced once the
    /// orchestrator acknowledged them. Runs after every registration and,
    /// in normal mode, once per heartbeat when something was recorded.
    pub(super) async fn sync_records(&self, core: &mut Core) -> Result<(), Error> {
        loop {
            let batch = self.inner.state.unsynced(core.sync_batch).await?;
            if batch.is_empty() {
                return Ok(());
            }
            let Some(session) = core.session.clone() else { return Ok(()) };
            let held = core.held();
            let records: Vec<v1::ProcessingRecord> = batch
                .iter()
                .map(|r| v1::ProcessingRecord {
                    stream_id: r.stream_id,
                    lease_epoch: r.lease_epoch,
                    processed_at: u64::try_from(r.processed_at_ms)
                        .ok()
                        .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
                        .map(prost_types::Timestamp::from),
                    sequence: r.sequence,
                    local_mode: r.local_mode,
                })
                .collect();
            let last = batch.last().map_or(0, |r| r.sequence);
            let request = v1::SyncLocalStateRequest {
                session: Some(session),
                held_leases: held,
                records,
                request_id: request_id(),
                // The batch is the lowest unsynced records: none below it.
                synced_below_sequence: batch.first().map_or(0, |r| r.sequence),
            };
            let answer =
                self.call(request, |mut grpc, request| async move { grpc.sync_local_state(request).await }).await;
            match answer {
                Ok(r) => {
                    let revoked = apply_decisions(core, &r.decisions);
                    #[cfg(not(feature = "planted-bug-watermark"))]
                    let through = r.acknowledged_through_sequence.min(last);
                    #[cfg(feature = "planted-bug-watermark")]
                    // PLANTED BUG: everything made so far counts as synced,
                    // records made while the upload was in flight too.
                    let through = self.inner.next_sequence.load(Ordering::Acquire).saturating_sub(1);
                    if r.stale_records > 0 {
                        tracing::info!(stale = r.stale_records, "uploaded records made under an old lease epoch");
                    }
                    self.inner.state.write(vec![Op::SyncedThrough(through), Op::Leases(core.leases.clone())]).await?;
                    let uploaded = batch.iter().filter(|r| r.sequence <= through).count() as u64;
                    let m = &self.inner.metrics;
                    m.records_uploaded.fetch_add(uploaded, Ordering::Relaxed);
                    let _ = m
                        .records_unsynced
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(uploaded)));
                    // Stop first (publish), then release: the orchestrator
                    // waits for the release before it reassigns.
                    self.publish(core);
                    if !revoked.is_empty() {
                        self.release_locked(core, revoked).await?;
                    }
                    if through < last {
                        tracing::warn!(
                            through,
                            last,
                            "the orchestrator acknowledged fewer records than sent; will retry"
                        );
                        self.inner.records_waiting.store(true, Ordering::Release);
                        return Ok(());
                    }
                }
                Err(Failure::Rejected(status)) if batch_too_large(&status) && core.sync_batch > 1 => {
                    core.sync_batch = (batch.len() / 2).max(1);
                    tracing::warn!(
                        records = batch.len(),
                        now = core.sync_batch,
                        "the orchestrator refused the upload as too large ({}); uploading in smaller batches",
                        status.message()
                    );
                }
                Err(failure) => {
                    self.inner.records_waiting.store(true, Ordering::Release);
                    return self.on_failure(core, failure).await;
                }
            }
        }
    }

    pub(super) async fn maybe_enter_local(&self, core: &mut Core, why: &str) -> Result<(), Error> {
        if self.is_local() {
            return Ok(());
        }
        let open = self.inner.breaker.state().is_open();
        let silent_for = self.silent_for();
        let holding = !core.leases.is_empty() && core.session.is_none();
        if open || silent_for >= self.inner.config.local_mode_after || holding {
            return self.enter_local(core, why).await;
        }
        Ok(())
    }

    /// Local mode now, because of `why` (kept for the health report; a
    /// client already local only takes the newer reason).
    pub(super) async fn enter_local(&self, core: &mut Core, why: &str) -> Result<(), Error> {
        *self.inner.local_reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.to_owned());
        if self.is_local() {
            return Ok(());
        }
        self.inner.local.store(true, Ordering::Release);
        self.inner.metrics.local_mode_activations.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(reason = %why, leases = core.leases.len(), "entering local mode");
        self.inner
            .state
            .write(vec![Op::Transition { at_ms: self.now_ms(), mode: "local", reason: why.to_owned() }])
            .await?;
        self.publish(core);
        Ok(())
    }

    pub(super) async fn leave_local(&self) -> Result<(), Error> {
        if !self.is_local() {
            return Ok(());
        }
        self.inner.local.store(false, Ordering::Release);
        self.inner.halted.store(false, Ordering::Release);
        *self.inner.local_reason.lock().unwrap_or_else(|p| p.into_inner()) = None;
        tracing::info!("orchestrator reachable again: back to normal mode");
        self.inner
            .state
            .write(vec![Op::Transition { at_ms: self.now_ms(), mode: "normal", reason: "reconnected".into() }])
            .await
    }
}
