//! Why an admin command failed, as one line of text or as JSON.

use serde_json::{Value, json};

/// Why an admin command failed. Each message is one line that says what to
/// fix.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    /// `--addr` is not a usable gRPC address.
    #[error("invalid --addr {addr}: {why} (expected e.g. http://127.0.0.1:50051)")]
    InvalidAddr {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        why: String,
    },
    /// No connection could be made to the orchestrator.
    #[error("cannot reach the orchestrator at {addr}: {cause}; is `orchestrator serve` running there?")]
    Unreachable {
        /// The address tried.
        addr: String,
        /// The root cause, e.g. "Connection refused (os error 111)".
        cause: String,
    },
    /// The orchestrator answered a call with an error status.
    #[error("{rpc} failed: {:?}: {}{}", .status.code(), one_line(.status.message()), hint(.status.code()))]
    Rpc {
        /// The address called.
        addr: String,
        /// The RPC's name, e.g. "AddStreams".
        rpc: &'static str,
        /// The status returned (boxed: it is large).
        status: Box<tonic::Status>,
    },
    /// The command line is not valid; the message names the argument.
    #[error("{0}")]
    Usage(String),
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Io(#[from] std::io::Error),
}

impl AdminError {
    /// The address the command tried to reach, when a connection was
    /// involved.
    pub(crate) fn address(&self) -> Option<&str> {
        match self {
            Self::Unreachable { addr, .. } | Self::Rpc { addr, .. } => Some(addr),
            // No connection was tried: the message names the bad value.
            Self::InvalidAddr { .. } | Self::Usage(_) | Self::Io(_) => None,
        }
    }

    /// The process exit code for this error: 2 for a usage error (a bad
    /// argument, as clap uses for its own), 1 when the command failed.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::InvalidAddr { .. } => 2,
            Self::Unreachable { .. } | Self::Rpc { .. } | Self::Io(_) => 1,
        }
    }

    /// The error as `--json` prints it: `{"error": message}`, plus `address`
    /// when a connection was involved and `code` (the gRPC status name, e.g.
    /// `NOT_FOUND`) when the server answered with an error.
    pub(crate) fn to_json(&self) -> Value {
        let mut doc = json!({ "error": self.to_string() });
        if let Some(addr) = self.address() {
            doc["address"] = json!(addr);
        }
        if let Self::Rpc { status, .. } = self {
            doc["code"] = json!(resilience::grpc::code_name(status.code()));
        }
        doc
    }
}

/// What to do about a refusal of the credentials.
fn hint(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Unauthenticated => {
            " (give an admin token with --token or ORCHESTRATOR_TOKEN, or an admin client certificate with \
             --client-cert/--client-key)"
        }
        tonic::Code::PermissionDenied => " (this credential is not an admin's)",
        _ => "",
    }
}

fn one_line(s: &str) -> String {
    if s.is_empty() {
        return "(no message)".to_owned();
    }
    s.replace(['\r', '\n'], " ")
}

/// The messages of an error and its sources, joined by ": ".
pub(super) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![one_line(&err.to_string())];
    let mut source = err.source();
    while let Some(e) = source {
        let text = one_line(&e.to_string());
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

/// The message of the innermost error of the source chain.
pub(super) fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut last = err;
    while let Some(next) = last.source() {
        last = next;
    }
    one_line(&last.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::connect::rpc_error;

    #[test]
    fn rpc_error_is_one_line() {
        let err = rpc_error("http://h:1", "AddStreams")(tonic::Status::invalid_argument("stream_id 0\nmust be > 0"));
        assert_eq!(err.to_string(), "AddStreams failed: InvalidArgument: stream_id 0 must be > 0");
    }

    #[test]
    fn errors_as_json_name_the_address_and_the_code() {
        let err = rpc_error("http://h:1", "DrainWorker")(tonic::Status::not_found("server_id nobody: unknown"));
        assert_eq!(
            err.to_json(),
            json!({
                "error": "DrainWorker failed: NotFound: server_id nobody: unknown",
                "address": "http://h:1",
                "code": "NOT_FOUND",
            })
        );
        assert_eq!(err.exit_code(), 1);
        let err = AdminError::Unreachable { addr: "http://h:1".into(), cause: "refused".into() };
        assert_eq!(err.to_json()["address"], "http://h:1");
        assert_eq!(err.to_json().as_object().map(|o| o.len()), Some(2), "no code without an answer");
        let err = AdminError::Usage("too many stream ids".into());
        assert_eq!(err.to_json(), json!({ "error": "too many stream ids" }), "no address without a connection");
        assert_eq!(err.exit_code(), 2);
        assert_eq!(resilience::grpc::code_name(tonic::Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(resilience::grpc::code_name(tonic::Code::Ok), "OK");
    }
}
