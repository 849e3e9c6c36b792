//! One client connection as the hub sees it: an identity and a bounded
//! outbound queue of ready-to-write frames. No socket here; the gateway's
//! writer task drains the queue.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_ws::DeflateConfig;
use tokio::sync::Notify;

/// A one-shot, level-triggered signal that any number of tasks can await.
#[derive(Default)]
pub struct Signal {
    fired: AtomicBool,
    notify: Notify,
}

impl Signal {
    pub fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    pub async fn wait(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Register before checking the flag so a fire() in between is not lost.
        notified.as_mut().enable();
        if self.is_fired() {
            return;
        }
        notified.await;
    }
}

/// Why and how a connection is being closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
    /// Graceful closes flush queued frames first; aborts drop them.
    pub graceful: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The frame would exceed the queue limit: the connection is now aborted.
    Overflow,
    /// The connection is closing; the frame was dropped.
    Closed,
}

struct Outbox {
    frames: VecDeque<Bytes>,
    bytes: usize,
    close: Option<CloseReason>,
}

pub struct Conn {
    pub id: u64,
    user: OnceLock<Arc<str>>,
    pub deflate: Option<DeflateConfig>,
    queue_limit: usize,
    outbox: Mutex<Outbox>,
    /// Wakes the writer when frames are queued or a close is requested.
    wake: Notify,
    /// Notified by the writer after each write: replays wait on it to stay
    /// within the queue budget.
    drained: Notify,
    /// Fired once when a close is requested (by the server or the hub).
    pub closing: Signal,
    /// Coarse clock (ms since hub start) of the last frame received.
    last_seen: AtomicU64,
    /// Rooms this connection joined; lets disconnect clean up without a scan.
    pub(crate) rooms: Mutex<Vec<Arc<str>>>,
}

impl Conn {
    pub fn new(id: u64, deflate: Option<DeflateConfig>, queue_limit: usize, now_ms: u64) -> Conn {
        Conn {
            id,
            user: OnceLock::new(),
            deflate,
            queue_limit,
            outbox: Mutex::new(Outbox {
                frames: VecDeque::new(),
                bytes: 0,
                close: None,
            }),
            wake: Notify::new(),
            drained: Notify::new(),
            closing: Signal::default(),
            last_seen: AtomicU64::new(now_ms),
            rooms: Mutex::new(Vec::new()),
        }
    }

    /// The user id; empty until the connection is identified.
    pub fn user(&self) -> &str {
        self.user.get().map(|u| &**u).unwrap_or("")
    }

    pub fn user_arc(&self) -> Option<&Arc<str>> {
        self.user.get()
    }

    /// Sets the identity once; false if it was already set.
    pub fn set_user(&self, user: Arc<str>) -> bool {
        self.user.set(user).is_ok()
    }

    pub fn touch(&self, now_ms: u64) {
        self.last_seen.store(now_ms, Ordering::Relaxed);
    }

    pub fn last_seen(&self) -> u64 {
        self.last_seen.load(Ordering::Relaxed)
    }

    /// Queues a frame. Past the byte limit the connection is aborted as a slow
    /// consumer (close 4008): one slow reader must never hold up a room.
    pub fn push(&self, frame: Bytes) -> Push {
        let mut out = self.outbox.lock();
        if out.close.is_some() {
            return Push::Closed;
        }
        if out.bytes + frame.len() > self.queue_limit && !out.frames.is_empty() {
            out.frames = VecDeque::new();
            out.bytes = 0;
            out.close = Some(CloseReason {
                code: switchboard_protocol::close::SLOW_CONSUMER,
                reason: "slow consumer: outbound queue full",
                graceful: false,
            });
            drop(out);
            self.wake.notify_one();
            self.closing.fire();
            return Push::Overflow;
        }
        out.bytes += frame.len();
        out.frames.push_back(frame);
        let first = out.frames.len() == 1;
        drop(out);
        // The writer drains everything it finds, so only the push that makes
        // the queue non-empty needs to wake it.
        if first {
            self.wake.notify_one();
        }
        Push::Queued
    }

    /// Requests a close. The first request wins; later ones are ignored.
    pub fn close(&self, code: u16, reason: &'static str, graceful: bool) {
        let mut out = self.outbox.lock();
        if out.close.is_some() {
            return;
        }
        if !graceful {
            out.frames = VecDeque::new();
            out.bytes = 0;
        }
        out.close = Some(CloseReason {
            code,
            reason,
            graceful,
        });
        drop(out);
        self.wake.notify_one();
        self.closing.fire();
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.outbox.lock().close.clone()
    }

    /// Takes everything queued (into `batch`) for the writer; returns the close
    /// request, if any, once the queue is empty.
    pub fn take_batch(&self, batch: &mut VecDeque<Bytes>) -> Option<CloseReason> {
        let mut out = self.outbox.lock();
        std::mem::swap(&mut out.frames, batch);
        out.bytes = 0;
        out.close.clone()
    }

    pub async fn wait_for_frames(&self) {
        self.wake.notified().await
    }

    pub fn queued_bytes(&self) -> usize {
        self.outbox.lock().bytes
    }

    pub fn queue_limit(&self) -> usize {
        self.queue_limit
    }

    /// Called by the writer after each write.
    pub fn notify_drained(&self) {
        self.drained.notify_waiters();
    }

    /// Waits until at most half the queue budget is in use (or the
    /// connection is closing), so a long replay never trips the slow-consumer
    /// limit on a reader that keeps up.
    pub async fn wait_for_room(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.queued_bytes() <= self.queue_limit / 2 || self.closing.is_fired() {
                return;
            }
            tokio::select! {
                _ = drained => {}
                _ = self.closing.wait() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_aborts_and_drops_the_queue() {
        let conn = Conn::new(1, None, 10, 0);
        assert_eq!(conn.push(Bytes::from_static(b"123456")), Push::Queued);
        assert_eq!(conn.push(Bytes::from_static(b"123456")), Push::Overflow);
        assert_eq!(conn.queued_bytes(), 0);
        assert!(conn.closing.is_fired());
        assert_eq!(conn.push(Bytes::from_static(b"1")), Push::Closed);
        let reason = conn.close_reason().unwrap();
        assert_eq!(reason.code, 4008);
        assert!(!reason.graceful);
    }

    #[test]
    fn a_single_frame_larger_than_the_limit_still_goes_to_an_empty_queue() {
        // Otherwise one large message would disconnect every idle reader.
        let conn = Conn::new(1, None, 4, 0);
        assert_eq!(conn.push(Bytes::from_static(b"123456")), Push::Queued);
    }

    #[test]
    fn graceful_close_keeps_queued_frames() {
        let conn = Conn::new(1, None, 100, 0);
        conn.push(Bytes::from_static(b"a"));
        conn.close(1001, "bye", true);
        let mut batch = VecDeque::new();
        let close = conn.take_batch(&mut batch);
        assert_eq!(batch.len(), 1);
        assert_eq!(close.unwrap().code, 1001);
    }
}
