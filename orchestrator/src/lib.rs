//! The reference orchestrator: it owns the catalog of streams and decides
//! which worker processes which stream.
//!
//! - [`engine`]: the assignment engine, a pure state machine (no I/O).
//! - [`store`]: durable state in SQLite, behind a narrow interface, on its
//!   own thread.
//! - [`service`]: the `orchestrator.v1` gRPC services that drive the engine
//!   and make its decisions durable before answering.
//! - [`auth`]: who is calling (bearer tokens, client certificates) and what
//!   they may do.
//! - [`server`]: binds the listener and serves the services with health,
//!   reflection, load shedding, the liveness ticker and graceful shutdown.
//! - [`metrics`] and [`http`]: Prometheus metrics, and the HTTP listener
//!   with `/metrics`, health probes, the status API and the dashboard.
//!
//! The `orchestrator` binary (serve and the admin CLI) is built with the
//! default `cli` feature; a crate that links only the library can turn it off
//! (`default-features = false`) and compiles no CLI dependencies.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

pub mod auth;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod server;
pub mod service;
pub mod store;
