//! Capacity-aware balanced targets: the arithmetic behind every placement
//! and every move.

/// One eligible worker as the target computation sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    /// Its `max_streams`.
    pub(crate) capacity: u32,
    /// Streams it holds now (active leases).
    pub(crate) current: u32,
}

/// The number of streams each worker should hold so that `total` streams
/// are spread as evenly as capacities allow ("water filling"):
///
/// * no target exceeds its worker's capacity;
/// * the targets sum to `min(total, sum of capacities)`;
/// * among workers below their capacity, targets differ by at most one.
///
/// When the streams do not divide evenly, the extra one goes to the workers
/// that already hold the most (then the earlier in `slots`), so that as few
/// streams as possible move. Runs in O(n log max_capacity).
pub(crate) fn targets(slots: &[Slot], total: u64) -> Vec<u32> {
    if slots.is_empty() {
        return Vec::new();
    }
    let capacity: u64 = slots.iter().map(|s| u64::from(s.capacity)).sum();
    let total = total.min(capacity);
    let filled = |level: u32| -> u64 { slots.iter().map(|s| u64::from(s.capacity.min(level))).sum() };
    // The highest level that does not exceed `total`.
    let (mut low, mut high) = (0u32, slots.iter().map(|s| s.capacity).max().unwrap_or(0));
    while low < high {
        let mid = low + (high - low).div_ceil(2);
        if filled(mid) <= total {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    let level = low;
    let mut targets: Vec<u32> = slots.iter().map(|s| s.capacity.min(level)).collect();
    let mut remainder = total - filled(level);
    // Workers that can take one more, the most loaded first.
    let mut room: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].capacity > level).collect();
    room.sort_by(|&a, &b| slots[b].current.cmp(&slots[a].current).then(a.cmp(&b)));
    for i in room {
        if remainder == 0 {
            break;
        }
        targets[i] += 1;
        remainder -= 1;
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn slots(caps: &[u32]) -> Vec<Slot> {
        caps.iter().map(|&capacity| Slot { capacity, current: 0 }).collect()
    }

    #[test]
    fn even_split_with_the_extra_going_to_the_most_loaded() {
        let s = [
            Slot { capacity: 100, current: 3 },
            Slot { capacity: 100, current: 5 },
            Slot { capacity: 100, current: 2 },
        ];
        assert_eq!(targets(&s, 10), [3, 4, 3]);
        assert_eq!(targets(&s, 9), [3, 3, 3]);
    }

    #[test]
    fn capacity_bounds_the_share_and_the_rest_spreads() {
        assert_eq!(targets(&slots(&[2, 100, 100]), 20), [2, 9, 9]);
        assert_eq!(targets(&slots(&[2, 3]), 20), [2, 3], "more streams than capacity");
        assert_eq!(targets(&slots(&[5, 5]), 0), [0, 0]);
        assert!(targets(&[], 7).is_empty());
    }

    proptest! {
        #[test]
        fn targets_are_balanced_and_within_capacity(
            caps in proptest::collection::vec(1u32..50, 1..12),
            currents in proptest::collection::vec(0u32..50, 12),
            total in 0u64..400,
        ) {
            let s: Vec<Slot> = caps.iter().zip(&currents).map(|(&capacity, &current)| Slot { capacity, current }).collect();
            let t = targets(&s, total);
            let capacity: u64 = caps.iter().map(|&c| u64::from(c)).sum();
            prop_assert_eq!(t.iter().map(|&x| u64::from(x)).sum::<u64>(), total.min(capacity));
            for (i, &x) in t.iter().enumerate() {
                prop_assert!(x <= caps[i]);
            }
            let below: Vec<u32> = t.iter().enumerate().filter(|(i, x)| **x < caps[*i]).map(|(_, &x)| x).collect();
            if let (Some(min), Some(max)) = (below.iter().min(), t.iter().max()) {
                // A worker below its capacity is never 2 below anyone else.
                prop_assert!(max - min <= 1, "targets {:?} caps {:?}", t, caps);
            }
        }
    }
}
