//! gRPC-aware classification (feature `grpc`): which status codes trip a
//! breaker, which may be retried, and the server's retry pushback.
//!
//! | code | breaker | retry |
//! |---|---|---|
//! | `OK` | success | no |
//! | `INVALID_ARGUMENT`, `NOT_FOUND`, `ALREADY_EXISTS`, `PERMISSION_DENIED`, `UNAUTHENTICATED`, `FAILED_PRECONDITION`, `OUT_OF_RANGE`, `CANCELLED` | success: the server answered, the caller was wrong | no |
//! | `ABORTED` | success: a conflict, the server is healthy | yes |
//! | `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED` | failure | yes |
//! | `UNKNOWN`, `INTERNAL`, `UNIMPLEMENTED`, `DATA_LOSS` | failure | no |
//! | transport error (connection refused, reset, ...; also `UNKNOWN` whose source is one, see [`status_code`]) | failure | yes |
//! | refused by a circuit breaker | - | no |
//!
//! A `grpc-retry-pushback-ms` value of a non-negative integer means "retry
//! after exactly this many milliseconds"; a negative or malformed value
//! means "do not retry" (as gRPC's retry design specifies).

use std::convert::Infallible;
use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use tonic::{Code, Status};

use crate::BoxError;
use crate::circuit_breaker::{CallError, ClassifyResponse, Outcome};
use crate::retry::{ClassifyRetry, RetryAction};

/// The header (or trailer) a server uses to ask for a specific retry delay.
pub const PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";

/// Whether `code` says the caller was wrong: such answers never trip a
/// breaker and are never retried.
pub fn is_caller_error(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Cancelled
    )
}

/// How a call that ended with `code` counts for a breaker.
pub fn breaker_outcome(code: Code) -> Outcome {
    match code {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Unknown
        | Code::Internal
        | Code::Unimplemented
        | Code::DataLoss => Outcome::Failure,
        _ => Outcome::Success,
    }
}

/// Whether a call that ended with `code` may be retried.
pub fn is_retryable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted)
}

/// The server's pushback in `headers`: `None` if absent, `Some(Ok(delay))`
/// for a non-negative integer of milliseconds, `Some(Err(()))` for a negative
/// or malformed value (which means: do not retry).
#[allow(clippy::result_unit_err)]
pub fn pushback(headers: &HeaderMap) -> Option<Result<Duration, ()>> {
    let value = headers.get(PUSHBACK_HEADER)?;
    let parsed = value.to_str().ok().and_then(|s| s.trim().parse::<i64>().ok());
    Some(match parsed {
        Some(ms) if ms >= 0 => Ok(Duration::from_millis(ms.unsigned_abs())),
        _ => Err(()),
    })
}

/// The code a status stands for. A status the server sent carries no
/// source error; one that a tonic client made from a local error does. When
/// a connection breaks before any answer, tonic reports `UNKNOWN`
/// ("transport error") or `CANCELLED` (the connection's stream was reset)
/// with the transport error as the source: that is a connection error, so
/// it counts as `UNAVAILABLE` here (a failure, and retryable), not as the
/// caller's mistake.
///
/// ```
/// use resilience::grpc;
/// use tonic::{Code, Status};
///
/// // Statuses the server sent are taken as they are.
/// assert_eq!(grpc::status_code(&Status::unknown("handler failed")), Code::Unknown);
/// assert_eq!(grpc::status_code(&Status::cancelled("client went away")), Code::Cancelled);
/// // A local transport failure is a connection error.
/// let mut reset = Status::cancelled("operation was canceled");
/// reset.set_source(std::sync::Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
/// assert_eq!(grpc::status_code(&reset), Code::Unavailable);
/// ```
pub fn status_code(status: &Status) -> Code {
    match status.code() {
        Code::Unknown | Code::Cancelled if status.source().is_some() && !is_circuit_rejection(status) => {
            Code::Unavailable
        }
        code => code,
    }
}

/// The canonical names of the gRPC status codes, by number
/// (`CODE_NAMES[Code::NotFound as usize] == "NOT_FOUND"`).
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The code's canonical name, as gRPC's specification and other languages'
/// libraries spell it.
///
/// ```
/// assert_eq!(resilience::grpc::code_name(tonic::Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
/// ```
pub fn code_name(code: Code) -> &'static str {
    CODE_NAMES.get(code as usize).copied().unwrap_or("UNKNOWN")
}

/// What to do after a call failed with `status`: the pushback if the server
/// sent one, otherwise by code.
///
/// ```
/// use resilience::{grpc, RetryAction};
/// use tonic::Status;
///
/// assert_eq!(grpc::retry_action(&Status::unavailable("restarting")), RetryAction::Retry);
/// assert_eq!(grpc::retry_action(&Status::invalid_argument("server_id is empty")), RetryAction::DoNotRetry);
///
/// let mut busy = Status::resource_exhausted("overloaded");
/// busy.metadata_mut().insert(grpc::PUSHBACK_HEADER, "250".parse().unwrap());
/// assert_eq!(grpc::retry_action(&busy), RetryAction::RetryAfter(std::time::Duration::from_millis(250)));
/// ```
pub fn retry_action(status: &Status) -> RetryAction {
    if is_circuit_rejection(status) {
        return RetryAction::DoNotRetry;
    }
    action_for(status_code(status), status.metadata().as_ref())
}

fn action_for(code: Code, headers: &HeaderMap) -> RetryAction {
    if !is_retryable(code) {
        return RetryAction::DoNotRetry;
    }
    match pushback(headers) {
        None => RetryAction::Retry,
        Some(Ok(delay)) => RetryAction::RetryAfter(delay),
        Some(Err(())) => RetryAction::DoNotRetry,
    }
}

/// Whether `status` is a circuit breaker's refusal made by
/// [`GrpcClassifier`] (its source is a [`CallError::Rejected`]).
pub fn is_circuit_rejection(status: &Status) -> bool {
    status
        .source()
        .and_then(|source| source.downcast_ref::<CallError<Infallible>>())
        .is_some_and(CallError::is_rejected)
}

/// The `grpc-timeout` header of a request (the caller's deadline), if valid.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status code in response headers (a Trailers-Only answer, which
/// is how servers send errors of unary calls), read without decoding the
/// rest of the status.
fn header_code(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(value.trim().parse().ok()?))
}

/// The gRPC code an error stands for: a `Status` anywhere in its source
/// chain, otherwise `UNAVAILABLE` (a transport error: the call may not have
/// reached the server).
fn error_code<'a>(error: &'a (dyn StdError + 'static)) -> (Code, Option<&'a Status>) {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(status) = e.downcast_ref::<Status>() {
            return (status_code(status), Some(status));
        }
        current = e.source();
    }
    (Code::Unavailable, None)
}

/// Errors the gRPC classifier can look into: tonic's transport error, a
/// `Status`, and a boxed error (what inner layers return).
pub trait AsStdError {
    /// The error as a `std::error::Error` trait object.
    fn as_std_error(&self) -> &(dyn StdError + 'static);
}

impl AsStdError for tonic::transport::Error {
    fn as_std_error(&self) -> &(dyn StdError + 'static) {
        self
    }
}

impl AsStdError for Status {
    fn as_std_error(&self) -> &(dyn StdError + 'static) {
        self
    }
}

impl AsStdError for BoxError {
    fn as_std_error(&self) -> &(dyn StdError + 'static) {
        &**self
    }
}

/// Classifies gRPC calls over HTTP/2 for the tower layers, by the table in
/// the [module documentation](self). A breaker's refusal is answered with
/// `UNAVAILABLE` whose source is the [`CallError`] (see
/// [`is_circuit_rejection`]), its timeout with `DEADLINE_EXCEEDED`.
///
/// Statuses sent in trailers after a response body (rare for unary calls)
/// are not seen by the layers; the caller still gets them.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcClassifier;

impl<B, E: AsStdError> ClassifyResponse<http::Response<B>, E> for GrpcClassifier {
    fn classify(&self, result: &Result<http::Response<B>, E>) -> Outcome {
        match result {
            Ok(response) => header_code(response.headers()).map_or(Outcome::Success, breaker_outcome),
            Err(error) => breaker_outcome(error_code(error.as_std_error()).0),
        }
    }

    fn rejected_error(&self, error: CallError<Infallible>) -> BoxError {
        let mut status = Status::unavailable(error.to_string());
        status.set_source(Arc::new(error));
        Box::new(status)
    }

    fn timeout_error(&self, timeout: Duration) -> BoxError {
        let error = CallError::<Infallible>::Timeout { timeout };
        let mut status = Status::deadline_exceeded(error.to_string());
        status.set_source(Arc::new(error));
        Box::new(status)
    }
}

impl<B, E: AsStdError> ClassifyRetry<http::Response<B>, E> for GrpcClassifier {
    fn retry_action(&self, result: &Result<http::Response<B>, E>) -> Option<RetryAction> {
        match result {
            Ok(response) => {
                let code = header_code(response.headers())?;
                (code != Code::Ok).then(|| action_for(code, response.headers()))
            }
            Err(error) => Some(match error_code(error.as_std_error()) {
                (_, Some(status)) => retry_action(status),
                (code, None) => action_for(code, &HeaderMap::new()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn caller_errors_never_trip_the_breaker() {
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::FailedPrecondition,
        ] {
            assert!(is_caller_error(code));
            assert_eq!(breaker_outcome(code), Outcome::Success, "{code:?}");
            assert!(!is_retryable(code), "{code:?}");
        }
    }

    #[test]
    fn unavailable_and_friends_are_retryable_failures() {
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::ResourceExhausted] {
            assert_eq!(breaker_outcome(code), Outcome::Failure);
            assert!(is_retryable(code));
        }
        assert!(is_retryable(Code::Aborted));
        assert_eq!(breaker_outcome(Code::Aborted), Outcome::Success);
    }

    #[test]
    fn pushback_is_exact_and_bad_values_forbid_retry() {
        assert_eq!(pushback(&headers(&[])), None);
        assert_eq!(pushback(&headers(&[(PUSHBACK_HEADER, "1500")])), Some(Ok(Duration::from_millis(1500))));
        assert_eq!(pushback(&headers(&[(PUSHBACK_HEADER, "0")])), Some(Ok(Duration::ZERO)));
        assert_eq!(pushback(&headers(&[(PUSHBACK_HEADER, "-1")])), Some(Err(())));
        assert_eq!(pushback(&headers(&[(PUSHBACK_HEADER, "soon")])), Some(Err(())));
        let h = headers(&[(PUSHBACK_HEADER, "-5")]);
        assert_eq!(action_for(Code::Unavailable, &h), RetryAction::DoNotRetry);
        // Pushback does not make a non-retryable code retryable.
        let h = headers(&[(PUSHBACK_HEADER, "10")]);
        assert_eq!(action_for(Code::InvalidArgument, &h), RetryAction::DoNotRetry);
    }

    #[test]
    fn grpc_timeout_header_is_parsed() {
        assert_eq!(grpc_timeout(&headers(&[("grpc-timeout", "250m")])), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout(&headers(&[("grpc-timeout", "3S")])), Some(Duration::from_secs(3)));
        assert_eq!(grpc_timeout(&headers(&[("grpc-timeout", "2H")])), Some(Duration::from_secs(7200)));
        assert_eq!(grpc_timeout(&headers(&[("grpc-timeout", "m")])), None);
        assert_eq!(grpc_timeout(&headers(&[("grpc-timeout", "123456789S")])), None);
        assert_eq!(grpc_timeout(&headers(&[("grpc-timeout", "10x")])), None);
    }

    #[test]
    fn a_breaker_refusal_is_unavailable_but_not_retried() {
        let boxed = ClassifyResponse::<http::Response<()>, BoxError>::rejected_error(
            &GrpcClassifier,
            CallError::Rejected { state: crate::CircuitState::Open },
        );
        let status = boxed.downcast_ref::<Status>().expect("a Status");
        assert_eq!(status.code(), Code::Unavailable);
        assert!(is_circuit_rejection(status));
        assert_eq!(retry_action(status), RetryAction::DoNotRetry);
        let result: Result<http::Response<()>, BoxError> = Err(boxed);
        assert_eq!(GrpcClassifier.retry_action(&result), Some(RetryAction::DoNotRetry));
    }

    #[test]
    fn trailers_only_error_responses_are_classified_from_headers() {
        let response = |code: &str| {
            let mut r = http::Response::new(());
            *r.headers_mut() = headers(&[("grpc-status", code)]);
            Ok::<_, BoxError>(r)
        };
        assert_eq!(GrpcClassifier.classify(&response("14")), Outcome::Failure);
        assert_eq!(GrpcClassifier.classify(&response("3")), Outcome::Success);
        assert_eq!(GrpcClassifier.retry_action(&response("14")), Some(RetryAction::Retry));
        assert_eq!(GrpcClassifier.retry_action(&response("0")), None);
        assert_eq!(GrpcClassifier.retry_action(&Ok::<_, BoxError>(http::Response::new(()))), None);
    }
}
