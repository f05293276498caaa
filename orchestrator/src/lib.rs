//! The reference orchestrator.
//!
//! So far this crate holds the [assignment engine](engine): the pure state
//! machine that decides which worker processes which stream. The gRPC
//! service, the SQLite store and the CLI drive it (issue 4).
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

pub mod engine;
