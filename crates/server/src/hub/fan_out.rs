//! A budget for the frames one fan-out may write on the delivering thread.
//!
//! A frame queued to a parked connection is written to its socket by the
//! thread that queues it (`gateway::park`): one `send`, no task woken,
//! which is what a quiet room's occasional message should cost. One
//! message to 10,000 parked subscribers would make that 10,000 sends in a
//! row on one thread, and the next messages would queue behind them: a
//! `/relay` channel of 10,000 at 165 msg/s delivered 81,517 frames in its
//! first second (8 frames each, one thread), then caught up with p99 at
//! 1.2 s. Past this budget a fan-out resumes parked connections into their
//! tasks instead, which spreads the sends over the runtime's workers and
//! batches the next frames.
//!
//! The budget is per fan-out and per thread: a fan-out opens it with
//! [`FanOut::begin`] around its loop over members, and the parking takes
//! from it. The member loops of rooms and relay channels open it; a push
//! outside them (a reply, a direct message or event to one user's
//! connections, at most `--max-connections-per-user`, 32 by default) is not
//! limited.

use std::cell::Cell;

/// Frames one fan-out may write inline, in all. At about 5-10 µs of kernel
/// time per loopback `send`, 1,024 keep a fan-out's inline writes within
/// about 10 ms of one thread; a room of up to 1,024 quiet members is still
/// written without a wake.
pub const INLINE_PER_FAN_OUT: usize = 1024;

thread_local! {
    /// What the fan-out in progress on this thread has left; `None` outside
    /// any.
    static LEFT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The budget of one fan-out, open while this lives.
pub struct FanOut {
    /// Whether this one opened it (a fan-out inside another, should one
    /// happen, shares the outer budget and leaves it open).
    opened: bool,
}

impl FanOut {
    pub fn begin() -> FanOut {
        let opened = LEFT.with(|left| {
            if left.get().is_some() {
                return false;
            }
            left.set(Some(INLINE_PER_FAN_OUT));
            true
        });
        FanOut { opened }
    }
}

impl Drop for FanOut {
    fn drop(&mut self) {
        if self.opened {
            LEFT.with(|left| left.set(None));
        }
    }
}

/// Whether `frames` more frames may be written inline on this thread; if
/// so, they are taken from the budget of the fan-out in progress (if any).
pub fn take_inline(frames: usize) -> bool {
    LEFT.with(|left| match left.get() {
        None => true,
        Some(n) if n >= frames => {
            left.set(Some(n - frames));
            true
        }
        Some(_) => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_fan_out_nothing_is_limited() {
        assert!(take_inline(INLINE_PER_FAN_OUT * 10));
    }

    #[test]
    fn a_fan_out_writes_its_budget_inline_and_no_more() {
        let fan_out = FanOut::begin();
        assert!(take_inline(INLINE_PER_FAN_OUT - 1));
        assert!(!take_inline(2), "past the budget");
        assert!(take_inline(1), "what is left is still there");
        assert!(!take_inline(1));
        drop(fan_out);
        assert!(take_inline(2), "the next fan-out, or none, starts afresh");
        let _next = FanOut::begin();
        assert!(take_inline(INLINE_PER_FAN_OUT));
    }

    #[test]
    fn a_fan_out_inside_another_shares_its_budget() {
        let _outer = FanOut::begin();
        assert!(take_inline(INLINE_PER_FAN_OUT - 4));
        {
            let _inner = FanOut::begin();
            assert!(!take_inline(5));
        }
        assert!(take_inline(4), "the inner one left the outer budget open");
        assert!(!take_inline(1));
    }

    #[test]
    fn each_thread_has_its_own_budget() {
        let _fan_out = FanOut::begin();
        assert!(take_inline(INLINE_PER_FAN_OUT));
        let other = std::thread::spawn(|| take_inline(INLINE_PER_FAN_OUT * 10));
        assert!(other.join().unwrap_or(false));
        assert!(!take_inline(1));
    }
}
