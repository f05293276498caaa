//! The one path to the orchestrator: every call through retry (outside)
//! and the circuit breaker (inside) with gRPC classification, and what a
//! failed call means for the client.

use std::future::Future;
use std::sync::atomic::Ordering;

use orchestrator_proto::v1::worker_service_client::WorkerServiceClient;
use resilience::grpc;
use resilience::{CallError, Outcome};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::leases::Core;
use super::{InFlight, ResilientWorkerClient};
use crate::Error;
use crate::state::Op;

/// How a call to the orchestrator failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// The session is fenced, expired or unknown: register again.
    Session,
    /// The orchestrator refused the call as invalid.
    Rejected(Status),
    /// The orchestrator could not be reached (or the breaker is open).
    Unreachable(String),
    /// The orchestrator refused this worker's credentials
    /// (UNAUTHENTICATED, PERMISSION_DENIED): not a contact; local mode.
    Denied(Status),
}

/// UNAUTHENTICATED or PERMISSION_DENIED: the credentials are missing,
/// revoked or for another worker.
fn is_auth_error(status: &Status) -> bool {
    matches!(grpc::status_code(status), Code::Unauthenticated | Code::PermissionDenied)
}

/// RESOURCE_EXHAUSTED without a pushback: the request is over the server's
/// message limit. An answer about the request, not an outage: not retried,
/// not a breaker failure (the caller makes the request smaller).
fn too_large(status: &Status) -> bool {
    grpc::status_code(status) == tonic::Code::ResourceExhausted
        && !status.metadata().contains_key(orchestrator_proto::RETRY_PUSHBACK_HEADER)
}

/// A fresh idempotency key for one mutating call.
pub(super) fn request_id() -> String {
    format!("wc-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// The attempt got no answer from the orchestrator: it timed out, or the
/// transport failed (refused, reset, unreachable). A refusal by the open
/// breaker made no attempt; a load-shedding answer (UNAVAILABLE with a
/// retry pushback) is an answer.
fn got_no_answer(e: &CallError<Status>) -> bool {
    match e {
        CallError::Timeout { .. } => true,
        CallError::Inner(status) => {
            matches!(grpc::status_code(status), Code::Unavailable | Code::DeadlineExceeded)
                && grpc::pushback(status.metadata().as_ref()).is_none()
                && not_leader(status).is_none()
        }
        _ => false,
    }
}

/// `Some(hint)` when the answer is NOT_LEADER (a standby replica), with the
/// leader's address if it named one.
fn not_leader(status: &Status) -> Option<Option<String>> {
    let info = status.get_error_details().error_info()?.clone();
    (info.reason == orchestrator_proto::reason::NOT_LEADER).then(|| {
        status
            .metadata()
            .get(orchestrator_proto::LEADER_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| info.metadata.get("leader").cloned())
    })
}

fn is_session_error(status: &Status) -> bool {
    status.code() == Code::FailedPrecondition
        && status
            .get_error_details()
            .error_info()
            .is_some_and(|info| orchestrator_proto::reason::is_session_reason(&info.reason))
}

impl ResilientWorkerClient {
    /// One RPC through retry and breaker, classified for gRPC. `rpc` makes
    /// one attempt from a client handle and a copy of `request` (the same
    /// request, so the same `request_id`, on every attempt).
    ///
    /// Timing: each attempt's deadline is the breaker's timeout,
    /// `min(circuit_timeout, local_mode_after)`, and the whole operation,
    /// retries included, ends once it has taken `local_mode_after`. An attempt that got no
    /// answer (timed out, refused, reset) drops the connection, so the next
    /// one starts on a fresh channel.
    pub(super) async fn call<Req, T, F, Fut>(&self, request: Req, rpc: F) -> Result<T, Failure>
    where
        Req: Clone,
        F: Fn(WorkerServiceClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let m = &self.inner.metrics;
        m.total.fetch_add(1, Ordering::Relaxed);
        let breaker = &self.inner.breaker;
        // NOT_LEADER is an answer about where to call, not an outage.
        let is_failure = |s: &Status| {
            !too_large(s) && grpc::breaker_outcome(grpc::status_code(s)) == Outcome::Failure && not_leader(s).is_none()
        };
        let classify = CallError::retry_action(|s: &Status| {
            if too_large(s) { resilience::RetryAction::DoNotRetry } else { grpc::retry_action(s) }
        });
        let limit = self.inner.config.local_mode_after;
        let deadline = tokio::time::Instant::now() + limit;
        // When the call started: the orchestrator heard this worker no
        // earlier, so the local-mode limit counts from here. Not from the
        // answer (a slow answer would stretch the limit past the session
        // timeout), nor from a retry's start (the orchestrator answers a
        // retried request_id from memory, without refreshing the session).
        let started = tokio::time::Instant::now();
        let attempt = || async {
            let _in_flight = InFlight::start(&self.inner.in_flight_since);
            // No attempt outlives the operation's deadline either (a retry
            // that started late would otherwise get a whole call timeout).
            // One round: each endpoint at most once, moving on at once from
            // one that does not answer; the breaker sees the round's result.
            let call = breaker.call_with(is_failure, || async {
                let endpoints = self.inner.config.endpoints.len();
                let mut tried = 1;
                loop {
                    let mut request = tonic::Request::new(request.clone());
                    if let Some(token) = &self.inner.config.auth_token {
                        request.metadata_mut().insert("authorization", token.0.clone());
                    }
                    let result = rpc(self.grpc(), request).await;
                    match &result {
                        // A standby: to the leader it names, at once (or the
                        // next endpoint if it names none).
                        Err(status)
                            if tried <= endpoints
                                && let Some(hint) = not_leader(status) =>
                        {
                            tracing::debug!(leader = ?hint, "this replica does not lead; moving on");
                            match hint {
                                Some(leader) => self.switch_to(&leader),
                                None => self.fresh_connection(),
                            }
                            tried += 1;
                        }
                        Err(status) if tried < endpoints && got_no_answer(&CallError::Inner(status.clone())) => {
                            tracing::debug!(%status, "no answer from this endpoint; trying the next");
                            self.fresh_connection();
                            tried += 1;
                        }
                        _ => return result,
                    }
                }
            });
            let result = match tokio::time::timeout_at(deadline, call).await {
                Ok(result) => result,
                Err(_) => Err(CallError::Timeout { timeout: limit }),
            };
            if let Err(e) = &result
                && got_no_answer(e)
            {
                self.inner.last_call_answered.store(false, Ordering::Release);
                self.fresh_connection();
            }
            result
        };
        let result = self.inner.retry.execute(&classify, Some(deadline), attempt).await;
        match result {
            Ok(response) => {
                m.successful.fetch_add(1, Ordering::Relaxed);
                self.inner.last_call_answered.store(true, Ordering::Release);
                *self.inner.contact_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
                // Kept in the state file (not waited for), so that a restart
                // counts the limit from the last contact, not the last
                // registration.
                if let Some(wall) = (self.inner.config.wall_clock)().checked_sub(started.elapsed()) {
                    *self.inner.last_contact.lock().unwrap_or_else(|p| p.into_inner()) = Some(wall);
                    self.inner.state.queue(vec![Op::Contact { at_ms: super::unix_ms(wall) }]);
                }
                Ok(response.into_inner())
            }
            Err(e) => {
                m.failed.fetch_add(1, Ordering::Relaxed);
                Err(match e {
                    CallError::Inner(status) if is_auth_error(&status) => {
                        self.inner.last_call_answered.store(false, Ordering::Release);
                        Failure::Denied(status)
                    }
                    CallError::Inner(status) if is_session_error(&status) => {
                        self.inner.last_call_answered.store(true, Ordering::Release);
                        Failure::Session
                    }
                    CallError::Inner(status)
                        if grpc::is_caller_error(grpc::status_code(&status)) || too_large(&status) =>
                    {
                        self.inner.last_call_answered.store(true, Ordering::Release);
                        Failure::Rejected(status)
                    }
                    other => {
                        self.inner.last_call_answered.store(false, Ordering::Release);
                        Failure::Unreachable(other.to_string())
                    }
                })
            }
        }
    }

    /// What a failed call means for the client.
    pub(super) async fn on_failure(&self, core: &mut Core, failure: Failure) -> Result<(), Error> {
        match failure {
            Failure::Rejected(status) => Err(Error::rejected(status)),
            Failure::Session => {
                tracing::info!("session no longer valid; registering again");
                core.session = None;
                Box::pin(self.register_locked(core)).await.map(|_| ())
            }
            Failure::Unreachable(why) => {
                tracing::debug!(%why, "orchestrator unreachable");
                self.maybe_enter_local(core, &why).await
            }
            Failure::Denied(status) => self.on_denied(core, &status).await,
        }
    }
}

impl ResilientWorkerClient {
    /// The orchestrator refused the credentials: a revoked or wrong token,
    /// a certificate for another worker. Not a contact: local mode at once,
    /// with the local-mode limit counting from the last real success, so a
    /// worker whose credentials were revoked stops by its limit while its
    /// streams move elsewhere.
    pub(super) async fn on_denied(&self, core: &mut Core, status: &Status) -> Result<(), Error> {
        let why = format!(
            "the orchestrator refused this worker's credentials ({:?}: {})",
            grpc::status_code(status),
            status.message()
        );
        tracing::error!(reason = %why, "check the worker's token or client certificate");
        self.enter_local(core, &why).await
    }
}
