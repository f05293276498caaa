//! The gRPC contract between the stream orchestrator and its workers,
//! protobuf package `orchestrator.v1`.
//!
//! The `.proto` files in this crate's `orchestrator/v1/` folder are the
//! public contract, also for clients generated in other languages (see the
//! crate's `README.md`); their comments document every RPC, field, limit and
//! status code. This crate holds the Rust code generated from them:
//!
//! - [`v1`]: the messages, [`v1::worker_service_client::WorkerServiceClient`]
//!   / [`v1::worker_service_server::WorkerServiceServer`] and
//!   [`v1::admin_service_client::AdminServiceClient`] /
//!   [`v1::admin_service_server::AdminServiceServer`].
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, with comments, for
//!   server reflection.
//! - [`ERROR_DOMAIN`] and [`reason`]: the `google.rpc.ErrorInfo` domain and
//!   reasons the orchestrator puts in the details of session errors and load
//!   shedding.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

/// Generated code of package `orchestrator.v1`: messages, enums, and a
/// client and a server module per service.
///
/// The doc comments come from the `.proto` comments. `prost-build` renders
/// their lists with a one-space continuation indent, hence the `allow`.
#[allow(clippy::doc_lazy_continuation)]
pub mod v1 {
    tonic::include_proto!("orchestrator.v1");
}

pub mod codec;

/// The encoded `google.protobuf.FileDescriptorSet` of the contract: the three
/// `orchestrator/v1/*.proto` files with their comments (source info), plus
/// the well-known types they import. Register it with server reflection
/// (`tonic-reflection`) so tools such as `grpcurl` can call the orchestrator
/// without the `.proto` files.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("orchestrator_v1_descriptor");

/// The protobuf package of this contract.
pub const PACKAGE: &str = "orchestrator.v1";

/// Full name of the worker-facing service.
pub const WORKER_SERVICE_NAME: &str = "orchestrator.v1.WorkerService";

/// Full name of the operator service.
pub const ADMIN_SERVICE_NAME: &str = "orchestrator.v1.AdminService";

/// Full names of every service of the contract, as used in gRPC paths
/// (`/orchestrator.v1.WorkerService/Register`), by the `grpc.health.v1`
/// health service and by server reflection.
pub const SERVICE_NAMES: &[&str] = &[WORKER_SERVICE_NAME, ADMIN_SERVICE_NAME];

/// The `domain` of every `google.rpc.ErrorInfo` the orchestrator returns.
///
/// The `ErrorInfo` travels in the standard `grpc-status-details-bin` trailer
/// (an encoded `google.rpc.Status`); its `reason` is one of [`reason`] and
/// its metadata holds [`METADATA_SERVER_ID`].
pub const ERROR_DOMAIN: &str = "orchestrator.v1";

/// The `ErrorInfo` metadata key whose value is the `server_id` of the call.
pub const METADATA_SERVER_ID: &str = "server_id";

/// The trailer in which the orchestrator tells, in decimal milliseconds, how
/// long to wait before retrying an `UNAVAILABLE` answer.
pub const RETRY_PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";

/// The trailing metadata in which a replica that does not lead names the
/// leader's advertised address (with reason
/// [`NOT_LEADER`](reason::NOT_LEADER)), when it knows one.
pub const LEADER_HEADER: &str = "orchestrator-leader";

/// The `reason` values of the orchestrator's `google.rpc.ErrorInfo`.
///
/// The three session reasons come with code `FAILED_PRECONDITION` on any
/// worker call after `Register`; the client's reaction is the same for all
/// three: register again (with a new `request_id`, presenting the leases it
/// holds) and never retry the failed call with the old session.
pub mod reason {
    /// A newer session exists for this `server_id` (the worker registered
    /// again, or another process uses the same `server_id`). Code
    /// `FAILED_PRECONDITION`.
    pub const SESSION_FENCED: &str = "SESSION_FENCED";

    /// No heartbeat arrived within `session_timeout`; the session's leases
    /// may have moved to other workers. Code `FAILED_PRECONDITION`.
    pub const SESSION_EXPIRED: &str = "SESSION_EXPIRED";

    /// No such session: never issued, ended by `Deregister`, or lost by the
    /// orchestrator (for example after a restart). Code `FAILED_PRECONDITION`.
    pub const SESSION_UNKNOWN: &str = "SESSION_UNKNOWN";

    /// The orchestrator sheds load. Code `UNAVAILABLE`, with the
    /// [`RETRY_PUSHBACK_HEADER`](crate::RETRY_PUSHBACK_HEADER) trailer: retry
    /// after at least that long, with backoff.
    pub const OVERLOADED: &str = "OVERLOADED";

    /// This replica does not lead (it is a standby, or it stepped down):
    /// code `UNAVAILABLE`, with the leader's address in the
    /// [`LEADER_HEADER`](crate::LEADER_HEADER) trailer when known. Call the
    /// leader instead; not a failure of the orchestrator.
    pub const NOT_LEADER: &str = "NOT_LEADER";

    /// The reasons that mean "this session is no longer valid: register
    /// again".
    pub const SESSION_REASONS: &[&str] = &[SESSION_FENCED, SESSION_EXPIRED, SESSION_UNKNOWN];

    /// Every reason the orchestrator uses.
    pub const ALL: &[&str] = &[SESSION_FENCED, SESSION_EXPIRED, SESSION_UNKNOWN, OVERLOADED, NOT_LEADER];

    /// Whether `reason` is one of the session reasons, after which the
    /// worker must register again.
    pub fn is_session_reason(reason: &str) -> bool {
        SESSION_REASONS.contains(&reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_match_the_generated_servers() {
        assert_eq!(SERVICE_NAMES, [v1::worker_service_server::SERVICE_NAME, v1::admin_service_server::SERVICE_NAME]);
    }

    #[test]
    fn session_reasons_are_recognised() {
        assert!(reason::is_session_reason(reason::SESSION_FENCED));
        assert!(reason::is_session_reason(reason::SESSION_EXPIRED));
        assert!(reason::is_session_reason(reason::SESSION_UNKNOWN));
        assert!(!reason::is_session_reason(reason::OVERLOADED));
        assert!(!reason::is_session_reason("session_fenced"));
    }
}
