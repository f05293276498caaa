//! Completing asyncio futures from the runtime's threads without taking the
//! GIL there: how every awaited method of the package returns.
//!
//! The usual bridge (`pyo3-async-runtimes`' `future_into_py`) has each
//! finished Rust future take the GIL on a runtime thread and call the
//! loop's `call_soon_threadsafe`. With many calls in flight that makes the
//! runtime's threads queue for the GIL behind the application's thread
//! (which gives it up only every switch interval, 5 ms by default) — the
//! client's heartbeats wait with them — and every completion wakes the loop
//! on its own: measured, `record_stream_processing` from 64 tasks ran at a
//! tenth of the Rust rate (docs/BENCHMARKS.md §10).
//!
//! Here each event loop has a [`Completer`]: a finished call pushes its
//! future and a closure making its result onto a queue, and writes one byte
//! to a socket the loop watches (`loop.add_reader`) only when the queue was
//! empty. The loop's reader callback, on the loop's thread with the GIL,
//! drains the queue and sets every result at once. No runtime thread ever
//! waits for the GIL, and a burst of completions costs one wake-up.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;

/// Makes a call's result on the loop's thread.
pub(crate) type Outcome = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

struct Shared {
    queue: Mutex<Vec<(Py<PyAny>, Outcome)>>,
    wake: UnixStream,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("wake", &self.wake).finish_non_exhaustive()
    }
}

/// The completion queue of one event loop. Made by the Python package,
/// one per loop (`_client._completer`), which registers [`drain`] as the
/// loop's reader of [`fileno`].
///
/// [`drain`]: Completer::drain
/// [`fileno`]: Completer::fileno
#[pyclass(module = "resilient_worker_client._native", frozen)]
#[derive(Debug)]
pub(crate) struct Completer {
    shared: Arc<Shared>,
    readable: UnixStream,
}

/// A handle the runtime's threads complete futures through.
#[derive(Debug, Clone)]
pub(crate) struct Sender(Arc<Shared>);

impl Sender {
    /// Completes `future` with what `outcome` makes, on the loop's thread.
    pub(crate) fn complete(&self, future: Py<PyAny>, outcome: Outcome) {
        let was_empty = {
            let mut queue = self.0.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.push((future, outcome));
            queue.len() == 1
        };
        if was_empty {
            // Non-blocking: a full socket buffer already holds a wake-up.
            while let Err(e) = (&self.0.wake).write(&[1]) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    break;
                }
            }
        }
    }
}

impl Completer {
    /// A call that completes `future` through this loop's queue.
    pub(crate) fn pending(&self, future: Py<PyAny>) -> Pending {
        Pending { sender: Sender(Arc::clone(&self.shared)), future: Some(future) }
    }
}

/// A call's future, to be completed exactly once. Dropped without
/// [`finish`](Self::finish) (the task panicked, or the runtime dropped it),
/// it completes the future with a `RuntimeError`, so no await hangs.
#[derive(Debug)]
pub(crate) struct Pending {
    sender: Sender,
    future: Option<Py<PyAny>>,
}

impl Pending {
    /// Completes the future with what `outcome` makes on the loop's thread.
    pub(crate) fn finish(mut self, outcome: Outcome) {
        if let Some(future) = self.future.take() {
            self.sender.complete(future, outcome);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(future) = self.future.take() {
            self.sender.complete(
                future,
                Box::new(|_| {
                    Err(pyo3::exceptions::PyRuntimeError::new_err(
                        "resilient_worker_client: the call ended without an answer (an internal error; please report it)",
                    ))
                }),
            );
        }
    }
}

#[pymethods]
impl Completer {
    #[new]
    fn new() -> PyResult<Self> {
        let (wake, readable) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        readable.set_nonblocking(true)?;
        Ok(Self { shared: Arc::new(Shared { queue: Mutex::new(Vec::new()), wake }), readable })
    }

    /// The descriptor the loop watches.
    fn fileno(&self) -> i32 {
        self.readable.as_raw_fd()
    }

    /// Sets the result (or exception) of every finished call's future
    /// (a future cancelled meanwhile is left alone). The loop's reader
    /// callback.
    fn drain(&self, py: Python<'_>) -> PyResult<()> {
        let mut buf = [0u8; 256];
        while matches!((&self.readable).read(&mut buf), Ok(n) if n > 0) {}
        let done = std::mem::take(&mut *self.shared.queue.lock().unwrap_or_else(|p| p.into_inner()));
        // Every future is completed even if one fails (the first error is
        // raised afterwards, for the loop's exception handler to log).
        let mut first_error = None;
        for (future, outcome) in done {
            let future = future.bind(py);
            let completed = (|| -> PyResult<()> {
                if future.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
                    return Ok(()); // cancelled meanwhile
                }
                // A panic making the result fails this call only.
                let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| outcome(py))).unwrap_or_else(|_| {
                    Err(pyo3::exceptions::PyRuntimeError::new_err(
                        "resilient_worker_client: making the call's result panicked (an internal error; please report it)",
                    ))
                });
                match made {
                    Ok(value) => future.call_method1(pyo3::intern!(py, "set_result"), (value,))?,
                    Err(e) => future.call_method1(pyo3::intern!(py, "set_exception"), (e.into_value(py),))?,
                };
                Ok(())
            })();
            if let Err(e) = completed {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
