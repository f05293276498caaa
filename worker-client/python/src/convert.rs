//! Values between Python and Rust: seconds, counts, JSON documents.

use std::time::Duration;

use pyo3::exceptions::PyOverflowError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors;

/// A Python `int` of any size, for counts, settings and stream ids
/// (`#[pyo3(from_py_with = int)]`). Extracting an `i64` would make an int
/// beyond 64 bits a bare `OverflowError`; this keeps it for the setting's
/// own out-of-range error, which names the setting. An int beyond 128 bits
/// saturates to `i128::MIN` or `i128::MAX` ([`shown`] says so).
/// Anything but an int is still a `TypeError` naming the argument.
pub(crate) fn int(obj: &Bound<'_, PyAny>) -> PyResult<i128> {
    match obj.extract::<i128>() {
        Err(e) if e.is_instance_of::<PyOverflowError>(obj.py()) => Ok(if obj.lt(0)? { i128::MIN } else { i128::MAX }),
        extracted => extracted,
    }
}

/// A stream id: a 64-bit signed int; `None` for an int beyond that range
/// (no stream has such an id, so it is never leased). Anything but an int
/// is a `TypeError`.
pub(crate) fn stream_id(obj: &Bound<'_, PyAny>) -> PyResult<Option<i64>> {
    Ok(i64::try_from(int(obj)?).ok())
}

/// A stream id as [`stream_id`] reads it, with the int itself when it is
/// beyond 64 bits (for an error that shows it).
pub(crate) fn stream_id_or_int<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Result<i64, Bound<'py, PyAny>>> {
    Ok(stream_id(obj)?.ok_or_else(|| obj.clone()))
}

/// A sequence of stream ids, each as [`stream_id`] reads it.
pub(crate) fn stream_ids(obj: &Bound<'_, PyAny>) -> PyResult<Vec<Option<i64>>> {
    obj.extract::<Vec<Bound<'_, PyAny>>>()?.iter().map(stream_id).collect()
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
    Duration::try_from_secs_f64(value)
        .map_err(|_| errors::config(setting, format!("must be a finite number of seconds >= 0, got {value}")))
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
