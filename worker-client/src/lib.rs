//! The client library worker services link to talk to the stream
//! orchestrator, and to keep working when they cannot.
//!
//! [`ResilientWorkerClient`] keeps the original Python client's API and
//! configuration names (`register`, `send_heartbeat`, `request_streams`,
//! `release_streams`, `health_check`, `shutdown`, `can_process_stream`,
//! `record_stream_processing`, `detailed_status`), in Rust form:
//!
//! - every call to the orchestrator goes through a circuit breaker, retry
//!   with jittered backoff and a retry budget (the `resilience` crate), with
//!   gRPC-aware classification: a fenced session leads to re-registration,
//!   bad arguments come back to the caller and never trip the breaker;
//! - the client owns a background task that heartbeats, applies the
//!   orchestrator's assignments and revocations, and publishes the current
//!   lease set on a [`tokio::sync::watch`] channel ([`ResilientWorkerClient::leases`]),
//!   so the application starts and stops stream processing without polling;
//! - when the orchestrator is unreachable (breaker open, or no successful
//!   call for `local_mode_after`), the client enters **local mode**: the
//!   worker keeps processing the streams it holds, processing records and
//!   releases are kept in a SQLite state file, and a reconnect probe with
//!   jittered backoff runs until the orchestrator answers; then the client
//!   registers again presenting its leases, uploads the records, applies the
//!   keep/revoke answer and returns to normal mode.
//!
//! # Example
//!
//! ```no_run
//! use worker_client::ResilientWorkerClient;
//!
//! # async fn run() -> Result<(), worker_client::Error> {
//! let client = ResilientWorkerClient::builder("http://127.0.0.1:50051", "worker-01")
//!     .max_streams(20)
//!     .state_path("/var/lib/worker/state.db")
//!     .build()
//!     .await?;
//! client.start().await?;
//! let mut leases = client.leases();
//! loop {
//!     // Start what is new, stop what is gone.
//!     let current = leases.borrow_and_update().clone();
//!     for (stream_id, _epoch) in current.iter() {
//!         if client.can_process_stream(stream_id) {
//!             // ... process a chunk of the stream, then:
//!             client.record_stream_processing(stream_id).await?;
//!         }
//!     }
//!     if leases.changed().await.is_err() {
//!         break;
//!     }
//! }
//! client.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

mod client;
mod config;
pub mod connector;
mod state;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use client::{
    HealthMetrics, HealthReport, Mode, ResilientWorkerClient, ShutdownReport, WorkerMetrics,
    create_resilient_worker_client,
};
pub use config::{ClientBuilder, ClientConfig};
pub use connector::{ClientTls, Connector, TcpConnector};

/// What can go wrong. Messages are one line and say what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration setting is invalid.
    #[error("invalid configuration: {setting}: {problem}")]
    Config {
        /// The setting, by its configuration name.
        setting: &'static str,
        /// What is wrong with it.
        problem: String,
        /// The underlying error (a connector's, say), if any.
        #[source]
        source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
    },
    /// The state file cannot be used.
    #[error("worker state file {path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to recover.
        reason: String,
        /// The underlying error (SQLite's, the file system's), if any:
        /// `std::error::Error::source` returns it.
        #[source]
        source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
    },
    /// The orchestrator refused the call as invalid (never retried, never
    /// counted against the orchestrator's health).
    #[error("the orchestrator refused the call: {code:?}: {message}")]
    Rejected {
        /// The gRPC code.
        code: tonic::Code,
        /// The orchestrator's message (it names the field).
        message: String,
        /// The status itself, with its details and metadata.
        #[source]
        status: std::sync::Arc<tonic::Status>,
    },
    /// The stream is not leased to this worker now.
    #[error("stream {0} is not leased to this worker")]
    NotLeased(i64),
    /// The client was shut down.
    #[error("the client is shut down")]
    ShutDown,
}

impl Error {
    fn rejected(status: tonic::Status) -> Self {
        Self::Rejected {
            code: status.code(),
            message: status.message().to_owned(),
            status: std::sync::Arc::new(status),
        }
    }
}

/// The streams this worker may process now, with their lease epochs.
///
/// Published on the [`leases`](ResilientWorkerClient::leases) channel every
/// time it changes: a stream that appears is to be started, one that
/// disappears is to be stopped at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseSet {
    leases: BTreeMap<i64, u64>,
    local_mode: bool,
}

impl LeaseSet {
    /// Whether `stream_id` may be processed.
    pub fn contains(&self, stream_id: i64) -> bool {
        self.leases.contains_key(&stream_id)
    }

    /// The lease epoch of `stream_id`, to attach to output so sinks can
    /// reject a stale writer.
    pub fn epoch(&self, stream_id: i64) -> Option<u64> {
        self.leases.get(&stream_id).copied()
    }

    /// `(stream_id, lease_epoch)` pairs, by stream id.
    pub fn iter(&self) -> impl Iterator<Item = (i64, u64)> + '_ {
        self.leases.iter().map(|(&s, &e)| (s, e))
    }

    /// Number of streams.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Whether the worker is in local mode (the orchestrator unreachable).
    pub fn local_mode(&self) -> bool {
        self.local_mode
    }
}
