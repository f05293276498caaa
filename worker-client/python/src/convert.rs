//! Values between Python and Rust: seconds, counts, JSON documents.

use std::time::Duration;

use pyo3::exceptions::{PyOverflowError, PyTypeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyInt, PyList, PyString};

use crate::errors;

/// The object as a Python `int`: an `int` as it is, anything with
/// `__index__` (a numpy integer, say) as its int (`operator.index`), and
/// anything else a `TypeError`.
fn index<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    if obj.is_exact_instance_of::<PyInt>() {
        return Ok(obj.clone());
    }
    static INDEX: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = obj.py();
    INDEX.get_or_try_init(py, || py.import("operator")?.getattr("index").map(Bound::unbind))?.bind(py).call1((obj,))
}

/// A Python `int` of any size, for counts, settings and stream ids
/// (`#[pyo3(from_py_with = int)]`). Extracting an `i64` would make an int
/// beyond 64 bits a bare `OverflowError`; this keeps it for the setting's
/// own out-of-range error, which names the setting. An int beyond 128 bits
/// saturates to `i128::MIN` or `i128::MAX` ([`shown`] says so).
/// Anything but an int (or an object with `__index__`) is still a
/// `TypeError` naming the argument.
pub(crate) fn int(obj: &Bound<'_, PyAny>) -> PyResult<i128> {
    let obj = index(obj)?;
    match obj.extract::<i128>() {
        Err(e) if e.is_instance_of::<PyOverflowError>(obj.py()) => Ok(if obj.lt(0)? { i128::MIN } else { i128::MAX }),
        extracted => extracted,
    }
}

/// A stream id: a 64-bit int; `None` for an int beyond that range (no
/// stream has such an id, so it is never leased). Anything but an int (or
/// an object with `__index__`) is a `TypeError`.
pub(crate) fn stream_id(obj: &Bound<'_, PyAny>) -> PyResult<Option<i64>> {
    match obj.extract::<i64>() {
        Ok(id) => Ok(Some(id)),
        Err(e) if e.is_instance_of::<PyOverflowError>(obj.py()) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A stream id as [`stream_id`] reads it, or, beyond 64 bits, the int
/// itself (for an error that keeps it).
pub(crate) fn stream_id_or_int<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Result<i64, Bound<'py, PyAny>>> {
    match stream_id(obj)? {
        Some(id) => Ok(Ok(id)),
        None => Ok(Err(index(obj)?)),
    }
}

/// An int for a message: its decimal digits, unless there are too many for
/// `str` (over 4300).
pub(crate) fn int_text(int: &Bound<'_, PyAny>) -> String {
    int.str().map_or_else(|_| "(an int of thousands of digits)".to_owned(), |s| s.to_string())
}

/// The items of a list (or any sequence) of stream ids; a `str` or
/// `bytes` is refused, though a sequence, as surely a mistake.
fn id_sequence<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() || obj.is_instance_of::<PyByteArray>() {
        let kind = obj.get_type().name()?;
        return Err(PyTypeError::new_err(format!("expected a list of stream ids (int), got {kind}")));
    }
    obj.extract()
}

/// A sequence of stream ids, each as [`stream_id_or_int`] reads it.
pub(crate) fn stream_ids<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Vec<Result<i64, Bound<'py, PyAny>>>> {
    id_sequence(obj)?.iter().map(stream_id_or_int).collect()
}

/// An int from [`int`] for an error message.
pub(crate) fn shown(value: i128) -> String {
    match value {
        i128::MIN => "an int <= -2**127".to_owned(),
        i128::MAX => "an int >= 2**127 - 1".to_owned(),
        v => v.to_string(),
    }
}

/// Seconds (an `int` or a `float`) as a duration; the error names `setting`.
pub(crate) fn seconds(setting: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        // As Python shows it: `-1` for an int, `1e300`, `nan`, `inf`.
        let shown = if value.is_nan() {
            "nan".to_owned()
        } else if value.fract() == 0.0 && value.abs() < 1e15 {
            format!("{value:.0}")
        } else {
            format!("{value:?}")
        };
        errors::config(setting, format!("must be a number of seconds >= 0 and < 2**64, got {shown}"))
    })
}

/// A count that fits a `u32`; the error names `setting`.
pub(crate) fn count(setting: &str, value: i128) -> PyResult<u32> {
    u32::try_from(value)
        .map_err(|_| errors::config(setting, format!("must be between 0 and {}, got {}", u32::MAX, shown(value))))
}

/// A JSON document as Python's `json.loads` would give it.
pub(crate) fn json<'py>(py: Python<'py>, value: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    use serde_json::Value;
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.into_pyobject(py)?.into_any(),
            (None, Some(u)) => u.into_pyobject(py)?.into_any(),
            _ => n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any(),
        },
        Value::String(s) => s.into_pyobject(py)?.into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(json(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, v) in map {
                dict.set_item(k, json(py, v)?)?;
            }
            dict.into_any()
        }
    })
}
