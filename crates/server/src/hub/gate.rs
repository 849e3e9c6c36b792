//! A subscription (a room membership, or a connection's inbox) that may be
//! gated: while a replay from the store is being sent, live events are held
//! back and released after it, so the client sees replay then live, in
//! order, with nothing twice.

use std::sync::Arc;

use bytes::Bytes;
use switchboard_protocol::close;
use switchboard_ws::SharedMessage;

use super::conn::Conn;
use super::{counted, push_counted};
use crate::metrics::Metrics;

pub(super) struct Gated {
    pub conn: Arc<Conn>,
    /// Events with a seq up to this were committed before the subscription
    /// started: the replay (or nothing) covers them, live delivery must not.
    pub from_seq: u64,
    /// Frames held while the gate is closed, and their size (boxed: most
    /// subscriptions are open, and rooms hold one of these per member).
    held: Option<Box<(Vec<Bytes>, usize)>>,
}

impl Gated {
    pub fn new(conn: Arc<Conn>, from_seq: u64, gated: bool) -> Gated {
        Gated {
            conn,
            from_seq,
            held: gated.then(|| Box::new((Vec::new(), 0))),
        }
    }

    /// Queues (or holds) one event; false if it was dropped.
    pub fn push(&mut self, message: &SharedMessage, metrics: &Metrics) -> bool {
        self.push_many(std::iter::once(message), metrics)
    }

    /// Queues (or holds) several events in order, under one lock of the
    /// connection's queue and with at most one wake; false if they were
    /// dropped (the connection overflowed or is closing).
    pub fn push_many<'a>(
        &mut self,
        messages: impl Iterator<Item = &'a SharedMessage>,
        metrics: &Metrics,
    ) -> bool {
        let deflate = self.conn.deflate;
        let frames = messages.map(|message| message.frame_for(deflate));
        let limit = self.conn.queue_limit();
        let Some(held) = &mut self.held else {
            return counted(&self.conn, self.conn.push_many(frames), metrics);
        };
        let (held_frames, bytes) = &mut **held;
        for frame in frames {
            *bytes += frame.len();
            held_frames.push(frame);
            if *bytes > limit {
                // Held frames count against the same budget as queued ones.
                self.held = None;
                metrics.slow_consumer_disconnects.increment(1);
                self.conn.close(
                    close::SLOW_CONSUMER,
                    "slow consumer: outbound queue full",
                    false,
                );
                return false;
            }
        }
        true
    }

    /// Whether an ephemeral signal may go to this subscription now: no
    /// replay in progress, and little queued (a signal is stale by the time
    /// a long queue drains).
    pub fn takes_signals(&self) -> bool {
        self.held.is_none() && self.conn.queued_bytes() <= super::SIGNAL_QUEUE_MAX
    }

    /// Releases held frames, in order, and delivers live from now on.
    pub fn open(&mut self, metrics: &Metrics) {
        if let Some(held) = self.held.take() {
            for frame in held.0 {
                push_counted(&self.conn, frame, metrics);
            }
        }
    }
}
