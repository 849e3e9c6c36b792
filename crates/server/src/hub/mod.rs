//! The hub: rooms, users, connections and fan-out. It knows connections only
//! as [`Conn`] handles with an outbound queue; sockets live in the gateway.
//!
//! Concurrency: registries are sharded maps (`DashMap`), so unrelated rooms
//! and users never contend. Each room has its own mutex, held while its seq
//! is assigned and its message is queued to every member: that makes the
//! order every member sees equal seq order, at the cost of one short critical
//! section per message (queueing is a push onto each member's own queue).
//!
//! Lock order: a registry shard may be held while taking a room lock, never
//! the other way round; a connection's outbox lock is innermost.

mod conn;
mod relay;
mod room;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use serde_json::value::RawValue;
use switchboard_protocol::{self as proto, ErrorCode, Id};
use switchboard_ws::{OpCode, SharedMessage};

pub use conn::{CloseReason, Conn, Push, Signal};
pub use relay::Relay;
use room::Room;

use crate::metrics::Metrics;

/// A refused command, to be sent back as an `error` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubError {
    pub code: ErrorCode,
    pub message: String,
}

impl HubError {
    fn new(code: ErrorCode, message: impl Into<String>) -> HubError {
        HubError {
            code,
            message: message.into(),
        }
    }
}

/// Result of a room publish or a direct send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub seq: u64,
    pub delivered: usize,
    pub stored: bool,
}

/// Connections of one user, and the user's direct-message seq.
#[derive(Default)]
struct UserEntry {
    conns: Vec<Arc<Conn>>,
    /// Last seq of this user's inbox. In memory until the store lands, so it
    /// survives the user going offline but not a restart.
    inbox_seq: u64,
}

pub struct Hub {
    rooms: DashMap<Arc<str>, Arc<Room>>,
    users: DashMap<Arc<str>, UserEntry>,
    /// Every live connection (both /ws and /relay), for heartbeat and shutdown.
    conns: DashMap<u64, Arc<Conn>>,
    pub relay: Relay,
    pub metrics: Arc<Metrics>,
    next_conn_id: AtomicU64,
    started: Instant,
    /// Pre-framed ping, shared by every heartbeat.
    ping_frame: Bytes,
}

/// Server time in milliseconds since the Unix epoch (the `ts` of events).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Hub {
        Hub {
            rooms: DashMap::new(),
            users: DashMap::new(),
            conns: DashMap::new(),
            relay: Relay::default(),
            metrics,
            next_conn_id: AtomicU64::new(1),
            started: Instant::now(),
            ping_frame: switchboard_ws::encode_frame(OpCode::Ping, b"", false),
        }
    }

    /// Milliseconds since the hub started: a cheap monotonic clock.
    pub fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Creates and registers a connection (not yet identified).
    pub fn connect(
        &self,
        deflate: Option<switchboard_ws::DeflateConfig>,
        queue_limit: usize,
    ) -> Arc<Conn> {
        let id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::new(id, deflate, queue_limit, self.clock_ms()));
        self.conns.insert(id, conn.clone());
        self.metrics.connections.increment(1.0);
        conn
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Gives a connection its user id and makes it reachable by `send`.
    pub fn identify(&self, conn: &Arc<Conn>, user: &str) -> bool {
        let user: Arc<str> = match self.users.get(user) {
            Some(entry) => entry.key().clone(),
            None => Arc::from(user),
        };
        if !conn.set_user(user.clone()) {
            return false;
        }
        let mut entry = self.users.entry(user).or_default();
        if entry.conns.is_empty() {
            self.metrics.users.increment(1.0);
        }
        entry.conns.push(conn.clone());
        true
    }

    /// Removes a connection everywhere: its rooms (sending presence leaves
    /// where it was the user's last connection there), its user, the registry.
    pub fn disconnect(&self, conn: &Arc<Conn>) {
        if let Some(user) = conn.user_arc() {
            let mut gone = false;
            self.users.remove_if_mut(user, |_, entry| {
                entry.conns.retain(|c| c.id != conn.id);
                gone = entry.conns.is_empty();
                gone && entry.inbox_seq == 0
            });
            if gone {
                self.metrics.users.decrement(1.0);
            }
        }
        if self.conns.remove(&conn.id).is_some() {
            self.metrics.connections.decrement(1.0);
        }
        // Rooms last: once others see the presence leave, the registries and
        // gauges already reflect the disconnect.
        let rooms = std::mem::take(&mut *conn.rooms.lock());
        for room in rooms {
            self.leave_room(conn, &room);
        }
    }

    fn room(&self, name: &str) -> Option<Arc<Room>> {
        self.rooms.get(name).map(|r| r.value().clone())
    }

    /// Joins `conn` to `room`. Replies `joined` on the connection itself
    /// inside the room's critical section, so no message of the room can
    /// overtake it; presence `join` goes to the others if this is the user's
    /// first connection in the room. With `since` below the room's seq the
    /// client is sent `reset`: without a store there is no history to replay.
    pub fn join(&self, conn: &Arc<Conn>, room: &str, since: Option<u64>, id: Option<&Id>) {
        loop {
            let entry = match self.room(room) {
                Some(r) => r,
                None => {
                    let r = self
                        .rooms
                        .entry(Arc::from(room))
                        .or_insert_with(|| Arc::new(Room::new(room)));
                    r.value().clone()
                }
            };
            match entry.join(conn, since, id) {
                room::Joined::Retry => continue,
                room::Joined::New { first_member } => {
                    if first_member {
                        self.metrics.rooms.increment(1.0);
                    }
                    conn.rooms.lock().push(entry.name.clone());
                    return;
                }
                room::Joined::Already => return,
            }
        }
    }

    /// Removes `conn` from `room`; false if it was not a member.
    pub fn leave(&self, conn: &Arc<Conn>, room: &str) -> bool {
        let mut rooms = conn.rooms.lock();
        let Some(pos) = rooms.iter().position(|r| &**r == room) else {
            return false;
        };
        rooms.swap_remove(pos);
        drop(rooms);
        self.leave_room(conn, room);
        true
    }

    fn leave_room(&self, conn: &Arc<Conn>, name: &str) {
        let Some(room) = self.room(name) else { return };
        if room.leave(conn) {
            self.metrics.rooms.decrement(1.0);
            // Empty rooms that never carried a message are forgotten; rooms
            // with messages keep their seq so it never restarts at 1.
            self.rooms.remove_if(name, |_, r| r.retire_if_unused());
        }
    }

    /// Publishes `body` to `room` from `conn`, which must be a member.
    pub fn publish(
        &self,
        conn: &Arc<Conn>,
        room: &str,
        body: &RawValue,
    ) -> Result<Delivery, HubError> {
        let started = Instant::now();
        let entry = self.room(room).ok_or_else(|| {
            HubError::new(ErrorCode::NotJoined, format!("not joined to room `{room}`"))
        })?;
        let (seq, delivered) = entry
            .publish(conn, body, unix_ms(), &self.metrics)
            .ok_or_else(|| {
                HubError::new(ErrorCode::NotJoined, format!("not joined to room `{room}`"))
            })?;
        self.metrics.messages_out.increment(delivered as u64);
        self.metrics
            .fanout_seconds
            .record(started.elapsed().as_secs_f64());
        Ok(Delivery {
            seq,
            delivered,
            stored: false,
        })
    }

    /// Sends `body` to every connection of user `to`, and a copy to the
    /// sender's other connections. `delivered` counts the recipient's.
    pub fn send(&self, conn: &Arc<Conn>, to: &str, body: &RawValue) -> Delivery {
        let from = conn.user();
        // Users never seen have no inbox until the store lands: nothing is
        // delivered or kept (seq 0), and no entry is created for them, so
        // sends to made-up ids cannot grow the registry.
        let Some(mut entry) = self.users.get_mut(to) else {
            return Delivery {
                seq: 0,
                delivered: 0,
                stored: false,
            };
        };
        entry.inbox_seq += 1;
        let seq = entry.inbox_seq;
        let payload = proto::encode(&proto::Direct::new(from, to, seq, unix_ms(), body));
        let message = SharedMessage::new(OpCode::Text, Bytes::from(payload));
        let mut delivered = 0;
        for c in entry.conns.iter().filter(|c| c.id != conn.id) {
            if self.push(c, &message) {
                delivered += 1;
            }
        }
        drop(entry);
        let mut copies = 0;
        if from != to {
            if let Some(sender) = self.users.get(from) {
                for c in sender.conns.iter().filter(|c| c.id != conn.id) {
                    if self.push(c, &message) {
                        copies += 1;
                    }
                }
            }
        }
        self.metrics
            .messages_out
            .increment((delivered + copies) as u64);
        Delivery {
            seq,
            delivered,
            stored: false,
        }
    }

    /// Queues a shared message on one connection; false if it was not queued.
    pub fn push(&self, conn: &Conn, message: &SharedMessage) -> bool {
        push_counted(conn, message.frame_for(conn.deflate), &self.metrics)
    }

    /// Users in `room` now, sorted.
    pub fn presence(&self, room: &str) -> Vec<Arc<str>> {
        self.room(room).map(|r| r.users()).unwrap_or_default()
    }

    /// Queues an event for one connection only (replies, errors).
    pub fn reply(&self, conn: &Conn, payload: Vec<u8>) {
        let frame = SharedMessage::new(OpCode::Text, Bytes::from(payload)).frame_for(conn.deflate);
        push_counted(conn, frame, &self.metrics);
    }

    /// One heartbeat tick: ping every connection, close those silent for
    /// longer than `timeout`.
    pub fn heartbeat(&self, timeout: Duration) {
        let now = self.clock_ms();
        let limit = timeout.as_millis() as u64;
        for entry in self.conns.iter() {
            let conn = entry.value();
            if now.saturating_sub(conn.last_seen()) > limit {
                self.metrics.heartbeat_timeouts.increment(1);
                conn.close(proto::close::HEARTBEAT_TIMEOUT, "heartbeat timeout", false);
            } else {
                conn.push(self.ping_frame.clone());
            }
        }
        self.metrics.upkeep();
    }

    /// Asks every connection to close with `code` (graceful: queued frames
    /// are flushed first).
    pub fn close_all(&self, code: u16, reason: &'static str) {
        for entry in self.conns.iter() {
            entry.value().close(code, reason, true);
        }
    }
}

/// Queues one frame and keeps the slow-consumer metric in step.
pub(crate) fn push_counted(conn: &Conn, frame: Bytes, metrics: &Metrics) -> bool {
    match conn.push(frame) {
        Push::Queued => true,
        Push::Overflow => {
            metrics.slow_consumer_disconnects.increment(1);
            tracing::info!(
                conn = conn.id,
                user = conn.user(),
                "slow consumer disconnected"
            );
            false
        }
        Push::Closed => false,
    }
}
