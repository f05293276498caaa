//! The reference orchestrator: it owns the catalog of streams and decides
//! which worker processes which stream.
//!
//! - [`engine`]: the assignment engine, a pure state machine (no I/O).
//! - [`store`]: durable state in SQLite, behind a narrow interface, on its
//!   own thread.
//! - [`service`]: the `orchestrator.v1` gRPC services that drive the engine
//!   and make its decisions durable before answering.
//! - [`server`]: binds the listener and serves the services with health,
//!   reflection, load shedding, the liveness ticker and graceful shutdown.
//! - [`admin_cli`]: the operator commands of the `orchestrator` binary.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

pub mod admin_cli;
pub mod engine;
pub mod server;
pub mod service;
pub mod store;
