//! The Python exception for each kind of error. The classes are defined in
//! Python (`resilient_worker_client/_errors.py`) so that they can also
//! derive from the built-in class a Python caller would catch
//! (`ConfigurationError` is a `ValueError`, `StreamNotLeasedError` a
//! `LookupError`, …).

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// An instance of the exception class `name`, made with `args`.
pub(crate) fn new_error<'py>(py: Python<'py>, name: &str, args: impl pyo3::call::PyCallArgs<'py>) -> PyErr {
    let made = ERRORS
        .get_or_try_init(py, || PyModule::import(py, "resilient_worker_client._errors").map(Bound::unbind))
        .and_then(|m| m.bind(py).getattr(name))
        .and_then(|class| class.call1(args));
    match made {
        Ok(instance) => PyErr::from_value(instance),
        Err(e) => e,
    }
}

/// A configuration error naming the setting, worded as the Rust client's
/// own (`worker_client::Error::Config`).
pub(crate) fn config(setting: &str, problem: impl std::fmt::Display) -> PyErr {
    let message = format!("invalid configuration: {setting}: {problem}");
    Python::attach(|py| new_error(py, "ConfigurationError", (message, setting.to_owned())))
}

/// The client's error as its Python exception.
pub(crate) fn client(e: worker_client::Error) -> PyErr {
    Python::attach(|py| {
        let message = e.to_string();
        match e {
            worker_client::Error::Config { setting, .. } => {
                new_error(py, "ConfigurationError", (message, setting.to_owned()))
            }
            worker_client::Error::State { path, .. } => {
                new_error(py, "StateFileError", (message, path.display().to_string()))
            }
            // (A refusal of the credentials is not an error: the client
            // goes on in local mode, `local_mode_reason` says why.)
            worker_client::Error::Rejected { code, message: detail, .. } => {
                new_error(py, "OrchestratorRejectedError", (message, resilience::grpc::code_name(code), detail))
            }
            worker_client::Error::NotLeased(stream_id) => new_error(py, "StreamNotLeasedError", (message, stream_id)),
            worker_client::Error::ShutDown => new_error(py, "ClientShutDownError", (message,)),
            _ => new_error(py, "ResilientWorkerClientError", (message,)),
        }
    })
}
