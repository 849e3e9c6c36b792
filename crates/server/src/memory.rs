//! Giving freed memory back to the system once a wave of connections has
//! come or gone.
//!
//! glibc's malloc keeps what the program frees for later allocations: only
//! a free region at the very top of its heap is returned by itself. After a
//! connection storm the buffers of the handshakes that were in flight (about
//! 11 KB each, 128 at a time in the benchmark) are free but still resident,
//! and after a disconnect storm so are the tasks and queues of every
//! connection that left: RSS stays at the wave's high-water mark (measured:
//! 36 MiB after closing 19,000 parked connections that had needed 23 MiB
//! open). `malloc_trim(0)` hands every whole free page back (`madvise`),
//! anywhere in every arena.
//!
//! It runs once the wave is over: a quarter of a second without a
//! connection opened or closed, after at least [`WAVE`] of them. Trimming
//! during a storm would hand back pages the next connections fault in
//! again at once; a steady trickle reuses what is free without help, and
//! is trimmed at most every [`TRICKLE_EVERY`].
//!
//! A trim walks each arena's free chunks under that arena's lock (0.5 ms
//! after 19,000 connections opened; 3 ms after they closed, with 25 MB to
//! hand back), so it runs right on the ticking task: a thread of its own
//! would not spare the others the lock.

use std::time::{Duration, Instant};

/// Connections opened or closed that make a wave worth trimming after.
/// Fewer leave too little free to matter (a handshake's buffers are ~11 KB).
const WAVE: usize = 64;

/// How often the gate's counts are looked at; a wave counts as over after
/// one quiet tick. Short, so RSS falls soon after a wave: an operator who
/// watches it (or a benchmark that reads it once it is steady for a second)
/// sees what the connections hold, not the wave's high-water mark.
const TICK: Duration = Duration::from_millis(250);

/// Under constant churn no tick is quiet: trim anyway this often, if a
/// wave's worth came and went since the last trim.
const TRICKLE_EVERY: Duration = Duration::from_secs(30);

/// Trims after each wave of connections until the server stops (the task
/// is aborted). `churn`: connections opened and closed so far; `trims`
/// counts the trims (`switchboard_memory_trims_total`).
pub async fn trim_after_waves(churn: impl Fn() -> usize, trims: metrics::Counter) {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut waves = Waves::new(churn(), tokio::time::Instant::now().into_std());
    loop {
        ticker.tick().await;
        if !waves.tick(churn(), tokio::time::Instant::now().into_std()) {
            continue;
        }
        let started = std::time::Instant::now();
        let trimmed = trim();
        trims.increment(1);
        tracing::debug!(
            trimmed,
            took_us = started.elapsed().as_micros() as u64,
            "gave freed memory back to the system"
        );
    }
}

/// When to trim: what the connection counts did since the last trim.
struct Waves {
    /// The churn count at the last tick.
    seen: usize,
    /// Connections opened and closed since the last trim.
    since_trim: usize,
    last_trim: Instant,
}

impl Waves {
    fn new(churn: usize, now: Instant) -> Waves {
        Waves {
            seen: churn,
            since_trim: 0,
            last_trim: now,
        }
    }

    /// A tick with the churn count as it is now: whether to trim (and if
    /// so, the trim is counted as done).
    fn tick(&mut self, churn: usize, now: Instant) -> bool {
        let new = churn.wrapping_sub(self.seen);
        self.seen = churn;
        self.since_trim = self.since_trim.saturating_add(new);
        let over = new == 0;
        let due = now.duration_since(self.last_trim) >= TRICKLE_EVERY;
        if self.since_trim < WAVE || !(over || due) {
            return false;
        }
        self.since_trim = 0;
        self.last_trim = now;
        true
    }
}

/// Returns the allocator's free pages to the system: whether any were.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: `malloc_trim` takes a plain integer (the free space to keep
    // at the top of the heap) and touches only glibc's own allocator state,
    // under the same arena locks as malloc and free (it is MT-Safe in
    // glibc's manual). It frees no memory a caller holds: it only tells the
    // kernel that pages inside free chunks may be dropped. Rust's global
    // allocator here is this malloc, so nothing else owns those pages.
    unsafe { libc::malloc_trim(0) != 0 }
}

/// Other allocators return memory on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wave_is_trimmed_after_once_it_is_over() {
        let start = Instant::now();
        let at = |ticks: u32| start + TICK * ticks;
        let mut waves = Waves::new(1_000, start);
        // Connections keep coming: no trim while they do.
        assert!(!waves.tick(1_040, at(1)));
        assert!(!waves.tick(1_100, at(2)));
        // The first quiet tick after the wave trims, once.
        assert!(waves.tick(1_100, at(3)));
        assert!(!waves.tick(1_100, at(4)));
        // The counter wraps like any other.
        let mut waves = Waves::new(usize::MAX - 10, start);
        assert!(!waves.tick(100, at(1)));
        assert!(waves.tick(100, at(2)));
    }

    #[test]
    fn a_few_connections_are_not_a_wave() {
        let start = Instant::now();
        let mut waves = Waves::new(0, start);
        assert!(!waves.tick(WAVE - 1, start + TICK));
        assert!(!waves.tick(WAVE - 1, start + TICK * 2));
        assert!(!waves.tick(WAVE - 1, start + TRICKLE_EVERY * 2));
        // One more makes it one, so long after the last trim that it is
        // trimmed at once; the next wave, once it is over.
        let later = start + TRICKLE_EVERY * 2;
        assert!(waves.tick(WAVE, later));
        assert!(!waves.tick(WAVE * 2, later + TICK));
        assert!(waves.tick(WAVE * 2, later + TICK * 2));
    }

    #[test]
    fn constant_churn_is_trimmed_now_and_then() {
        let start = Instant::now();
        let mut waves = Waves::new(0, start);
        let mut churn = 0;
        let mut trims = Vec::new();
        // 40 connections opened or closed every tick, for 100 s.
        for tick in 1..=(100 * 4) {
            churn += 40;
            if waves.tick(churn, start + TICK * tick) {
                trims.push(tick);
            }
        }
        let every = (TRICKLE_EVERY.as_millis() / TICK.as_millis()) as u32;
        assert_eq!(trims, vec![every, every * 2, every * 3]);
    }

    #[test]
    fn trimming_leaves_live_memory_alone() {
        // Free a lot, keep a little, trim: what is kept is intact.
        let kept: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 16 * 1024]).collect();
        let freed: Vec<Vec<u8>> = (0..256).map(|_| vec![7u8; 16 * 1024]).collect();
        drop(freed);
        trim();
        for (i, block) in kept.iter().enumerate() {
            assert!(block.iter().all(|&b| b == i as u8));
        }
    }
}
