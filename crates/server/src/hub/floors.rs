//! Seq floors: what lets the server forget idle rooms and inboxes without
//! ever reusing a seq.
//!
//! A counter (a room's or an inbox's last seq) is needed for good only while
//! messages are held: once retention dropped them all and nobody is
//! connected, the writer forgets it, in memory and on disk, so counters do
//! not grow with every name ever used. What must not be forgotten is how
//! far it went: a client holding `since: 57` must never be shown another
//! seq 57. So each forgotten seq is folded into a floor, one per bucket of
//! names, and a name without a counter numbers on from its bucket's floor.
//! A fixed number of buckets keeps this bounded (4096 per kind: 32 KiB of
//! memory, at most 4096 rows on disk). The price: once names are being
//! forgotten, a new room may start above 1; seqs stay gapless and
//! increasing from the `joined` seq on, which is what clients rely on.

use std::sync::atomic::{AtomicU64, Ordering};

pub const BUCKETS: u32 = 4096;

/// The bucket of `name`: FNV-1a, fixed forever (floors are stored by
/// bucket, so a different hash after an upgrade would lose them).
pub fn bucket(name: &str) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(BUCKETS)) as u32
}

/// One kind's floors (rooms or inboxes). Raised by the writer thread only.
pub struct Floors {
    buckets: Box<[AtomicU64]>,
}

impl Default for Floors {
    fn default() -> Self {
        Floors {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Floors {
    /// The seq a name without a counter continues from.
    pub fn of(&self, name: &str) -> u64 {
        self.at(bucket(name))
    }

    pub fn at(&self, bucket: u32) -> u64 {
        self.buckets
            .get(bucket as usize)
            .map_or(0, |b| b.load(Ordering::Acquire))
    }

    /// Raises `bucket` to at least `value`.
    pub fn raise(&self, bucket: u32, value: u64) {
        if let Some(b) = self.buckets.get(bucket as usize) {
            b.fetch_max(value, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_in_range() {
        // Stored on disk by bucket: these values must never change
        // (FNV-1a 64, computed independently).
        assert_eq!(bucket(""), 805);
        assert_eq!(bucket("lobby"), 1331);
        assert_eq!(bucket("alice"), 2311);
        for name in ["a", "lobby", "user-123", "日本"] {
            assert!(bucket(name) < BUCKETS);
        }
    }

    #[test]
    fn a_floor_only_rises() {
        let floors = Floors::default();
        let b = bucket("lobby");
        assert_eq!(floors.of("lobby"), 0);
        floors.raise(b, 57);
        floors.raise(b, 12);
        assert_eq!(floors.of("lobby"), 57);
        assert_eq!(floors.at(b), 57);
    }
}
