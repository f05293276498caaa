//! The breaker's clock: nanoseconds since the breaker was built.
//!
//! An OPEN breaker reads the clock on every refused call, to know whether its
//! recovery timeout has passed. [`Clock::recent`] is that read: on Linux and
//! FreeBSD it is `CLOCK_MONOTONIC_COARSE`, the monotonic clock as of the last
//! kernel tick (about 5 ns through the vDSO, against about 25 ns for
//! `CLOCK_MONOTONIC` on the machines of `docs/BENCHMARKS.md`). Deadlines are
//! set from the precise [`Clock::now`]. The coarse clock is the same clock
//! sampled at the last tick, so it is never ahead of the precise one: a
//! recovery timeout can end up to one tick (1–4 ms) late, never early.
//!
//! With the `paused-clock` feature, in this crate's own tests and on other
//! systems, both reads are tokio's clock, which `tokio::time::pause` and
//! `advance` control.

#[cfg(all(
    any(target_os = "linux", target_os = "android", target_os = "freebsd"),
    not(any(test, feature = "paused-clock"))
))]
mod source {
    use rustix::time::{ClockId, clock_gettime};

    pub(super) type Raw = u64;

    fn read(id: ClockId) -> Raw {
        let at = clock_gettime(id);
        let secs = u64::try_from(at.tv_sec).unwrap_or(0);
        let nanos = u64::try_from(at.tv_nsec).unwrap_or(0);
        secs.saturating_mul(1_000_000_000).saturating_add(nanos)
    }

    #[inline]
    pub(super) fn precise() -> Raw {
        read(ClockId::Monotonic)
    }

    #[inline]
    pub(super) fn coarse() -> Raw {
        read(ClockId::MonotonicCoarse)
    }

    #[inline]
    pub(super) fn nanos_between(earlier: Raw, later: Raw) -> u64 {
        later.saturating_sub(earlier)
    }
}

#[cfg(not(all(
    any(target_os = "linux", target_os = "android", target_os = "freebsd"),
    not(any(test, feature = "paused-clock"))
)))]
mod source {
    pub(super) type Raw = tokio::time::Instant;

    #[inline]
    pub(super) fn precise() -> Raw {
        tokio::time::Instant::now()
    }

    #[inline]
    pub(super) fn coarse() -> Raw {
        tokio::time::Instant::now()
    }

    #[inline]
    pub(super) fn nanos_between(earlier: Raw, later: Raw) -> u64 {
        u64::try_from(later.saturating_duration_since(earlier).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Monotonic nanoseconds since the breaker was built.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    epoch: source::Raw,
}

impl Clock {
    pub(super) fn start() -> Self {
        Self { epoch: source::precise() }
    }

    /// Now, precisely.
    #[inline]
    pub(super) fn now(&self) -> u64 {
        source::nanos_between(self.epoch, source::precise())
    }

    /// Now as of the last clock tick: never after [`now`](Self::now), at
    /// most one tick before it.
    #[inline]
    pub(super) fn recent(&self) -> u64 {
        source::nanos_between(self.epoch, source::coarse())
    }
}

/// `duration` in nanoseconds, saturating at `u64::MAX` (584 years).
pub(super) fn nanos(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}
