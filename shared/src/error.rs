//! The crate's configuration error.

/// A configuration that cannot work, refused when it is built.
///
/// Every constructor of this crate validates its input and returns this error
/// instead of panicking later.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A count that must be at least one was zero.
    #[error("`{field}` must be at least 1")]
    Zero {
        /// The configuration field, by its documented name.
        field: &'static str,
    },
    /// A duration that must be positive was zero.
    #[error("`{field}` must be greater than zero")]
    ZeroDuration {
        /// The configuration field, by its documented name.
        field: &'static str,
    },
    /// A floating point value was NaN, infinite or out of its range.
    #[error("`{field}` must be {expected}, got {value}")]
    OutOfRange {
        /// The configuration field, by its documented name.
        field: &'static str,
        /// What the field accepts.
        expected: &'static str,
        /// The value given.
        value: f64,
    },
    /// Two fields contradict each other, for example `base_delay > max_delay`.
    #[error("`{field}` must not exceed `{limit}`")]
    Exceeds {
        /// The field that is too large.
        field: &'static str,
        /// The field that bounds it.
        limit: &'static str,
    },
}

/// Result with the crate's [`ConfigError`].
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;
