//! `resilient_worker_client._native`: the Rust worker client and the
//! `resilience` crate as a CPython extension module.
//!
//! The Python package `resilient_worker_client` (beside this crate, in
//! `python/`) re-exports what is here and adds the parts that must await on
//! the application's event loop (`CircuitBreaker.call`,
//! `RetryHandler.execute_with_retry`). Built by maturin, never by `cargo test`
//! (an extension module does not link into a test binary): see the
//! package's `README.md`.
//!
//! Threads: every client of the process shares one tokio runtime (threads
//! named `rwc-tokio`) and one thread that hands log lines to Python's
//! `logging` (`rwc-log`); a client adds one thread of its own, the state
//! file's writer (`worker-state`), which ends at `shutdown()`. Awaiting a
//! client method never blocks the event loop: the work runs on the runtime
//! and completes an asyncio future through the loop's completion queue
//! (`complete.rs`); no runtime thread waits for the GIL.

// PyO3's macros expand to `unsafe` blocks, so this crate does not take the
// workspace's `forbid(unsafe_code)` (Cargo.toml); it writes none itself.
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

mod client;
mod complete;
mod convert;
mod errors;
mod log;
mod resilience_py;

use pyo3::prelude::*;

/// The runtime every client of this process shares: two worker threads
/// (and blocking-pool threads that end when idle), all named `rwc-tokio`.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("rwc-tokio")
            .worker_threads(2)
            .build()
            .unwrap_or_else(|e| panic!("resilient_worker_client: cannot start the tokio runtime: {e}"))
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    log::install();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(client::create_resilient_worker_client, m)?)?;
    m.add_function(wrap_pyfunction!(client::create_standalone_worker_client, m)?)?;
    m.add_function(wrap_pyfunction!(client::shutdown_at_exit, m)?)?;
    m.add_class::<client::ResilientWorkerClient>()?;
    m.add_class::<client::LeaseSet>()?;
    m.add_class::<client::LeaseChanges>()?;
    m.add_class::<complete::Completer>()?;
    m.add_class::<resilience_py::CircuitBreakerConfig>()?;
    m.add_class::<resilience_py::CircuitBreakerCore>()?;
    m.add_class::<resilience_py::CircuitPermit>()?;
    m.add_class::<resilience_py::RetryConfig>()?;
    m.add_class::<resilience_py::RetryCore>()?;
    m.add_class::<resilience_py::RetryAttempts>()?;
    Ok(())
}
