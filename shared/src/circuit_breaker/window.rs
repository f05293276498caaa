//! The count-based sliding window behind the optional failure-rate trip.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

/// The outcomes of the last `n` calls in a ring of atomics: recording takes
/// no lock. Under concurrent recording the counts are exact once the
/// recorders are done; a reader racing with them may be off by the number of
/// calls in flight, which only shifts a trip by a call or two.
#[derive(Debug)]
pub(crate) struct Window {
    slots: Box<[AtomicU8]>,
    next: AtomicU64,
    failures: AtomicU32,
}

impl Window {
    pub(crate) fn new(size: u32) -> Self {
        Self {
            slots: (0..size.max(1)).map(|_| AtomicU8::new(0)).collect(),
            next: AtomicU64::new(0),
            failures: AtomicU32::new(0),
        }
    }

    /// Records one outcome; returns `(failures, calls)` in the window after it.
    pub(crate) fn record(&self, failed: bool) -> (u32, u32) {
        let len = self.slots.len() as u64;
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        let old = self.slots[(index % len) as usize].swap(u8::from(failed), Ordering::Relaxed);
        let failures = match (old == 1, failed) {
            (false, true) => self.failures.fetch_add(1, Ordering::Relaxed) + 1,
            (true, false) => self.failures.fetch_sub(1, Ordering::Relaxed) - 1,
            _ => self.failures.load(Ordering::Relaxed),
        };
        let calls = (index + 1).min(len) as u32;
        (failures, calls)
    }

    /// Forgets every outcome. Called under the breaker's lock on a state change.
    pub(crate) fn reset(&self) {
        for slot in &*self.slots {
            slot.store(0, Ordering::Relaxed);
        }
        self.failures.store(0, Ordering::Relaxed);
        self.next.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::Window;

    #[test]
    fn counts_only_the_last_n_outcomes() {
        let w = Window::new(4);
        assert_eq!(w.record(true), (1, 1));
        assert_eq!(w.record(true), (2, 2));
        assert_eq!(w.record(false), (2, 3));
        assert_eq!(w.record(false), (2, 4));
        // The first failure falls out of the window.
        assert_eq!(w.record(false), (1, 4));
        assert_eq!(w.record(false), (0, 4));
        w.reset();
        assert_eq!(w.record(true), (1, 1));
    }
}
