//! One client connection as the hub sees it: an identity and a bounded
//! outbound queue of ready-to-write frames. No socket here; the gateway's
//! connection task (`gateway::socket`) drains the queue.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use std::task::Waker;
use switchboard_ws::{CloseCode, DeflateConfig};
use tokio::sync::Notify;

/// Why and how a connection is being closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseReason {
    pub code: CloseCode,
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
    /// The only frame queued, when exactly one is: at moderate rates each
    /// frame is written before the next arrives, and a `VecDeque` would be
    /// allocated by the pusher and freed by the writer (often another
    /// thread) once per frame. Invariant: `frames` is empty unless `single`
    /// is `None` (it is moved to the front of `frames` by a second push).
    single: Option<Bytes>,
    frames: VecDeque<Bytes>,
    bytes: usize,
    close: Option<CloseReason>,
    /// Frames in the last batch taken. The queue holds no allocation between
    /// batches (idle connections are most connections); a busy one gets
    /// room for this many at its first push instead of growing 4, 8, 16, …
    last_batch: u32,
}

pub struct Conn {
    pub id: u64,
    user: OnceLock<Arc<str>>,
    pub deflate: Option<DeflateConfig>,
    queue_limit: usize,
    outbox: Mutex<Outbox>,
    /// The connection's task, woken when frames are queued or a close is
    /// requested (a waker, not a `Notify`: one task, and it is smaller).
    waker: AtomicWaker,
    /// Set once when a close is requested (by the server or the hub).
    closing: AtomicBool,
    /// Notified after each write and when a close is requested: replays
    /// wait on it to stay within the queue budget.
    drained: Notify,
    /// Coarse clock (ms since hub start) of the last frame received.
    last_seen: AtomicU64,
    /// A data message was queued or received since the last heartbeat:
    /// the heartbeat asks only quiet connections to park.
    active: AtomicBool,
    /// The gateway may park this connection (its socket watched outside a
    /// task, `gateway::park`) the next time it is idle. Set when it opens
    /// (a connection that stays silent after its handshake costs no task
    /// from then on) and by a heartbeat that finds it quiet; cleared when
    /// it parks, so one unparked by traffic stays in its task for at least
    /// a heartbeat period.
    park_wanted: AtomicBool,
    /// Times the connection was resumed from the parking (saturating).
    resumes: AtomicU8,
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
                single: None,
                frames: VecDeque::new(),
                bytes: 0,
                close: None,
                last_batch: 0,
            }),
            waker: AtomicWaker::new(),
            closing: AtomicBool::new(false),
            drained: Notify::new(),
            last_seen: AtomicU64::new(now_ms),
            active: AtomicBool::new(false),
            park_wanted: AtomicBool::new(true),
            resumes: AtomicU8::new(0),
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

    /// A data message was received (pings and pongs do not count).
    pub fn mark_active(&self) {
        self.active.store(true, Ordering::Relaxed);
    }

    /// Whether no data message was queued or received since the last call
    /// (the heartbeat's; one call per period).
    pub fn quiet_since_last_heartbeat(&self) -> bool {
        !self.active.swap(false, Ordering::Relaxed)
    }

    /// Lets the gateway park the connection when it is next idle.
    pub fn want_park(&self) {
        self.park_wanted.store(true, Ordering::Relaxed);
    }

    /// Counts one more resume from the parking; returns the count so far.
    pub fn count_resume(&self) -> u8 {
        let before = self
            .resumes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1))
            .unwrap_or(u8::MAX);
        before.saturating_add(1)
    }

    /// Whether parking was wanted; clears the wish.
    pub fn take_park_wish(&self) -> bool {
        self.park_wanted.swap(false, Ordering::Relaxed)
    }

    /// Whether frames are queued or a close is requested: a connection
    /// about to park checks this after registering its new waker.
    pub fn has_work(&self) -> bool {
        let out = self.outbox.lock();
        out.single.is_some() || !out.frames.is_empty() || out.close.is_some()
    }

    /// Queues a frame. Past the byte limit the connection is aborted as a slow
    /// consumer (close 4008): one slow reader must never hold up a room.
    pub fn push(&self, frame: Bytes) -> Push {
        self.push_many(std::iter::once(frame))
    }

    /// Queues a heartbeat ping: as `push`, but it does not make the
    /// connection active (a quiet connection still parks).
    pub fn push_ping(&self, frame: Bytes) -> Push {
        self.push_frames(std::iter::once(frame), false)
    }

    /// Queues frames in order under one lock, with at most one wake: a
    /// committed batch of several messages to one room reaches each member
    /// this way (see `Room::deliver_run`). Stops at the first that cannot
    /// be queued (the queue overflowed, or the connection is closing) and
    /// says why; `Queued` if every frame was.
    pub fn push_many(&self, frames: impl IntoIterator<Item = Bytes>) -> Push {
        self.push_frames(frames, true)
    }

    fn push_frames(&self, frames: impl IntoIterator<Item = Bytes>, data: bool) -> Push {
        if data {
            self.active.store(true, Ordering::Relaxed);
        }
        let mut out = self.outbox.lock();
        let mut wake = false;
        for frame in frames {
            match self.push_locked(&mut out, frame) {
                Ok(woke) => wake |= woke,
                Err(Push::Overflow) => {
                    drop(out);
                    // `closing` first: the task woken must see it.
                    self.fire_closing();
                    self.waker.wake();
                    return Push::Overflow;
                }
                Err(refused) => {
                    drop(out);
                    if wake {
                        self.waker.wake();
                    }
                    return refused;
                }
            }
        }
        drop(out);
        if wake {
            self.waker.wake();
        }
        Push::Queued
    }

    /// One frame onto the locked outbox: `Ok(true)` if it made the queue
    /// non-empty (the writer drains everything it finds, so only that push
    /// needs to wake it), or why it was refused.
    fn push_locked(&self, out: &mut Outbox, frame: Bytes) -> Result<bool, Push> {
        if out.close.is_some() {
            return Err(Push::Closed);
        }
        let queued = out.single.is_some() || !out.frames.is_empty();
        if out.bytes + frame.len() > self.queue_limit && queued {
            out.single = None;
            out.frames = VecDeque::new();
            out.bytes = 0;
            out.close = Some(CloseReason {
                code: switchboard_protocol::close::SLOW_CONSUMER,
                reason: "slow consumer: outbound queue full",
                graceful: false,
            });
            return Err(Push::Overflow);
        }
        out.bytes += frame.len();
        if !queued {
            out.single = Some(frame);
            return Ok(true);
        }
        if out.frames.capacity() == 0 && out.last_batch > 4 {
            let room = out.last_batch as usize;
            out.frames.reserve_exact(room);
        }
        if let Some(front) = out.single.take() {
            out.frames.push_back(front);
        }
        out.frames.push_back(frame);
        Ok(out.frames.len() == 1)
    }

    /// Requests a close. The first request wins; later ones are ignored.
    pub fn close(&self, code: CloseCode, reason: &'static str, graceful: bool) {
        let mut out = self.outbox.lock();
        if out.close.is_some() {
            return;
        }
        if !graceful {
            out.single = None;
            out.frames = VecDeque::new();
            out.bytes = 0;
        }
        out.close = Some(CloseReason {
            code,
            reason,
            graceful,
        });
        drop(out);
        // `closing` first: the task woken must see it (else a shutdown
        // could wait for an idle peer until the next wake-up).
        self.fire_closing();
        self.waker.wake();
    }

    fn fire_closing(&self) {
        self.closing.store(true, Ordering::Release);
        self.drained.notify_waiters();
    }

    /// Whether a close was requested.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.outbox.lock().close.clone()
    }

    /// Takes everything queued (into `batch`) for the writer; returns the close
    /// request, if any, once the queue is empty.
    pub fn take_batch(&self, batch: &mut VecDeque<Bytes>) -> Option<CloseReason> {
        let mut single = None;
        let close = self.take(batch, &mut single);
        if let Some(frame) = single {
            batch.push_back(frame);
        }
        close
    }

    /// As [`Conn::take_batch`], but a lone queued frame goes to `single`
    /// (which must be empty, as must `batch`), without a queue allocated
    /// for it: the socket writer's path at moderate rates.
    pub fn take(
        &self,
        batch: &mut VecDeque<Bytes>,
        single: &mut Option<Bytes>,
    ) -> Option<CloseReason> {
        let mut out = self.outbox.lock();
        if let Some(frame) = out.single.take() {
            // `last_batch` is left as it was: it sizes the queue of the
            // next burst, which a lone frame says nothing about.
            out.bytes = 0;
            *single = Some(frame);
        } else if !out.frames.is_empty() {
            // Swap only a non-empty queue: an idle connection's queue then
            // holds no allocation (the caller frees its empty batch).
            out.last_batch = out.frames.len().try_into().unwrap_or(u32::MAX);
            std::mem::swap(&mut out.frames, batch);
            out.bytes = 0;
        }
        out.close.clone()
    }

    /// Registers the connection's task to be woken by `push` and `close`.
    /// Register, then `take_batch`: a frame queued in between still wakes.
    pub fn register_waker(&self, waker: &Waker) {
        self.waker.register(waker);
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

    /// Waits until a close is requested.
    pub async fn wait_closing(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.is_closing() {
                return;
            }
            drained.await;
        }
    }

    /// Waits until at most half the queue budget is in use (or the
    /// connection is closing), so a long replay never trips the slow-consumer
    /// limit on a reader that keeps up.
    pub async fn wait_for_room(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            // Register before checking, so a write or close in between is
            // not missed.
            drained.as_mut().enable();
            if self.queued_bytes() <= self.queue_limit / 2 || self.is_closing() {
                return;
            }
            drained.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_makes_a_connection_active() {
        let conn = Conn::new(1, None, 100, 0);
        // A new connection may park at its first idle moment, once.
        assert!(conn.take_park_wish());
        assert!(!conn.take_park_wish());
        assert!(conn.quiet_since_last_heartbeat());
        // Heartbeat pings do not count; a queued message does, once.
        conn.push_ping(Bytes::from_static(b"ping"));
        assert!(conn.quiet_since_last_heartbeat());
        conn.push(Bytes::from_static(b"message"));
        assert!(!conn.quiet_since_last_heartbeat());
        assert!(conn.quiet_since_last_heartbeat());
        conn.mark_active();
        assert!(!conn.quiet_since_last_heartbeat());
    }

    #[test]
    fn the_heartbeat_asks_quiet_connections_to_park() {
        let hub = crate::hub::Hub::new(Arc::new(crate::metrics::Metrics::new()));
        let quiet = hub.connect(None, 1000);
        let busy = hub.connect(None, 1000);
        let parked = hub.connect(None, 1000);
        for conn in [&quiet, &busy, &parked] {
            conn.take_park_wish();
        }
        busy.mark_active();
        let mut pinged = Vec::new();
        hub.heartbeat(std::time::Duration::from_secs(60), |conn, _| {
            // The gateway writes the ping of a parked connection itself.
            let is_parked = conn.id == parked.id;
            if is_parked {
                pinged.push(conn.id);
            }
            is_parked
        });
        assert_eq!(pinged, vec![parked.id]);
        assert!(quiet.take_park_wish());
        assert!(!busy.take_park_wish());
        assert!(!parked.take_park_wish());
        // The others' pings are queued; the parked one's is not.
        assert!(quiet.has_work() && busy.has_work() && !parked.has_work());
    }

    #[test]
    fn overflow_aborts_and_drops_the_queue() {
        let conn = Conn::new(1, None, 10, 0);
        assert_eq!(conn.push(Bytes::from_static(b"123456")), Push::Queued);
        assert_eq!(conn.push(Bytes::from_static(b"123456")), Push::Overflow);
        assert_eq!(conn.queued_bytes(), 0);
        assert!(conn.is_closing());
        assert_eq!(conn.push(Bytes::from_static(b"1")), Push::Closed);
        let reason = conn.close_reason().unwrap();
        assert_eq!(reason.code, 4008);
        assert!(!reason.graceful);
    }

    #[test]
    fn push_many_queues_in_order_and_overflows_like_single_pushes() {
        let conn = Conn::new(1, None, 10, 0);
        let frames = [&b"ab"[..], b"cd", b"ef"].map(Bytes::from_static);
        assert_eq!(conn.push_many(frames), Push::Queued);
        assert_eq!(conn.queued_bytes(), 6);
        let (mut batch, mut single) = (VecDeque::new(), None);
        conn.take(&mut batch, &mut single);
        assert_eq!(Vec::from(batch), vec![&b"ab"[..], b"cd", b"ef"]);
        // The third frame passes the limit: the whole queue goes, as with
        // three single pushes.
        let frames = [&b"1234"[..], b"5678", b"9abc"].map(Bytes::from_static);
        assert_eq!(conn.push_many(frames), Push::Overflow);
        assert_eq!(conn.queued_bytes(), 0);
        assert_eq!(conn.close_reason().map(|r| r.code == 4008), Some(true));
        assert_eq!(conn.push_many([Bytes::from_static(b"x")]), Push::Closed);
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
        conn.close(CloseCode::GOING_AWAY, "bye", true);
        let mut batch = VecDeque::new();
        let close = conn.take_batch(&mut batch);
        assert_eq!(batch.len(), 1);
        assert_eq!(close.unwrap().code, 1001);
    }

    #[test]
    fn a_lone_frame_is_taken_without_a_queue() {
        let conn = Conn::new(1, None, 100, 0);
        conn.push(Bytes::from_static(b"a"));
        let (mut batch, mut single) = (VecDeque::new(), None);
        assert_eq!(conn.take(&mut batch, &mut single), None);
        assert_eq!(single.as_deref(), Some(&b"a"[..]));
        assert!(batch.is_empty());
        assert_eq!(batch.capacity(), 0);
        assert_eq!(conn.queued_bytes(), 0);
    }

    #[test]
    fn frames_stay_in_order_when_a_second_push_joins_a_lone_frame() {
        let conn = Conn::new(1, None, 100, 0);
        for frame in [&b"a"[..], b"b", b"c"] {
            conn.push(Bytes::from_static(frame));
        }
        assert_eq!(conn.queued_bytes(), 3);
        let (mut batch, mut single) = (VecDeque::new(), None);
        conn.take(&mut batch, &mut single);
        assert_eq!(single, None);
        assert_eq!(Vec::from(batch), vec![&b"a"[..], b"b", b"c"]);
        // The SSE writer's path gets a lone frame in its batch.
        conn.push(Bytes::from_static(b"d"));
        let mut batch = VecDeque::new();
        conn.take_batch(&mut batch);
        assert_eq!(Vec::from(batch), vec![&b"d"[..]]);
    }

    #[test]
    fn overflow_and_abort_drop_a_lone_frame_too() {
        let conn = Conn::new(1, None, 10, 0);
        conn.push(Bytes::from_static(b"123456"));
        assert_eq!(conn.push(Bytes::from_static(b"123456")), Push::Overflow);
        let (mut batch, mut single) = (VecDeque::new(), None);
        assert_eq!(conn.take(&mut batch, &mut single).unwrap().code, 4008);
        assert!(single.is_none() && batch.is_empty());

        let conn = Conn::new(2, None, 100, 0);
        conn.push(Bytes::from_static(b"a"));
        conn.close(CloseCode::GOING_AWAY, "bye", false);
        let (mut batch, mut single) = (VecDeque::new(), None);
        assert!(conn.take(&mut batch, &mut single).is_some());
        assert!(single.is_none() && batch.is_empty());
    }
}
