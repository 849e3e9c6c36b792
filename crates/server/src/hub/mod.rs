//! The hub: rooms, users, connections and fan-out. It knows connections only
//! as [`Conn`] handles with an outbound queue; sockets live in the gateway.
//!
//! Concurrency: registries are sharded maps (`DashMap`), so unrelated rooms
//! and users never contend. Seqs are assigned and committed by the pipeline
//! (one writer thread), which then calls `deliver_room`/`deliver_direct` in
//! commit order; each room has its own mutex, held while a message is queued
//! to every member, so every member sees seq order.
//!
//! Lock order: a registry shard may be held while taking a room lock, never
//! the other way round; a connection's outbox lock is innermost. The set of
//! rooms with batched presence pending counts as a registry: it is only
//! touched with no room lock held.

mod conn;
pub mod fan_out;
pub mod floors;
mod gate;
mod relay;
mod room;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use switchboard_protocol::{self as proto, Id};
use switchboard_ws::{OpCode, SharedMessage};

pub use conn::{CloseReason, Conn, Push};
use floors::Floors;
use gate::Gated;
pub use relay::Relay;
use room::{Room, RunEntry};

use crate::metrics::Metrics;

/// A connection with more than this queued gets no ephemeral signals
/// (typing): by the time its queue drains they would be stale, and queuing
/// them would only make a slow reader slower.
pub(crate) const SIGNAL_QUEUE_MAX: usize = 16 * 1024;

/// How presence changes reach a room's members (`--presence-batch-above`,
/// `--presence-interval`). Without batching, a room filling to n users
/// sends n²/2 presence frames; with it, each member of a big room gets at
/// most about one per interval.
#[derive(Debug, Clone, Copy)]
pub struct PresencePolicy {
    /// Rooms with at most this many users online get every change at once.
    pub batch_above: usize,
    /// Above it, at most one presence frame per room per interval: a change
    /// after a quiet interval goes out at once, later ones are batched into
    /// one delta at the end of the interval.
    pub interval_ms: u64,
}

impl Default for PresencePolicy {
    fn default() -> Self {
        PresencePolicy {
            batch_above: 8,
            interval_ms: 1000,
        }
    }
}

/// Result of a room publish or a direct send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub seq: u64,
    /// Direct messages: the store-wide conversation id (absent on duplicates).
    pub gid: Option<u64>,
    pub delivered: usize,
    pub stored: bool,
    /// The command repeated an earlier `id`: nothing new happened.
    pub duplicate: bool,
}

/// Why [`Hub::identify`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentifyError {
    AlreadyIdentified,
    TooManyConnections,
}

impl Delivery {
    /// The answer to a repeated `id`: the original seq, nothing delivered.
    pub fn duplicate(seq: u64) -> Delivery {
        Delivery {
            seq,
            gid: None,
            delivered: 0,
            stored: true,
            duplicate: true,
        }
    }
}

/// What [`Hub::retire`] did to one kind of counter.
#[derive(Debug, Default)]
pub struct RetiredKind {
    /// Counters forgotten, with their last seq.
    pub forgotten: Vec<(Arc<str>, u64)>,
    /// Floors raised: (bucket, new value).
    pub floors: Vec<(u32, u64)>,
    /// Live names without a counter in a raised bucket, pinned at the seq
    /// they were shown: the writer must number on from there.
    pub pinned: Vec<(Arc<str>, u64)>,
}

#[derive(Debug, Default)]
pub struct Retired {
    pub rooms: RetiredKind,
    pub inboxes: RetiredKind,
}

fn retire_kind(
    candidates: Vec<(Arc<str>, u64)>,
    seqs: &DashMap<Arc<str>, u64>,
    floors: &Floors,
    is_live: impl Fn(&str) -> bool,
    live_names: impl FnOnce() -> Vec<Arc<str>>,
) -> RetiredKind {
    let mut out = RetiredKind::default();
    // bucket → floor before this call
    let mut raised: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
    for (name, seq) in candidates {
        if is_live(&name) {
            continue;
        }
        let bucket = floors::bucket(&name);
        raised.entry(bucket).or_insert_with(|| floors.at(bucket));
        if floors.at(bucket) < seq {
            floors.raise(bucket, seq);
        }
        seqs.remove(&name);
        out.forgotten.push((name, seq));
    }
    for (&bucket, &before) in &raised {
        let now = floors.at(bucket);
        if now > before {
            out.floors.push((bucket, now));
        }
    }
    if !out.floors.is_empty() {
        for name in live_names() {
            let bucket = floors::bucket(&name);
            let Some(&before) = raised.get(&bucket) else {
                continue;
            };
            if floors.at(bucket) > before && !seqs.contains_key(&name) {
                seqs.insert(name.clone(), before);
                out.pinned.push((name, before));
            }
        }
    }
    out
}

/// Where a connection's replay must start and stop (exclusive, inclusive].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    pub after: u64,
    pub upto: u64,
}

pub struct Hub {
    rooms: DashMap<Arc<str>, Arc<Room>>,
    /// Live connections per user, each with the inbox seq it started from.
    users: DashMap<Arc<str>, Vec<Gated>>,
    /// Last committed seq per room and per inbox, set by the pipeline right
    /// before it delivers (see `Room::join` for why that order is enough).
    room_seqs: DashMap<Arc<str>, u64>,
    inbox_seqs: DashMap<Arc<str>, u64>,
    /// Where a room or inbox without a counter numbers from (see
    /// [`floors`]).
    room_floors: Floors,
    inbox_floors: Floors,
    /// Read while a join or identify reads a committed seq; written while
    /// the writer forgets counters and raises floors. Without it a joiner
    /// could read a floor that rises before its room's first message, and
    /// see a gap.
    counters_lock: RwLock<()>,
    /// Inbox positions confirmed with `received`, kept here as soon as they
    /// arrive (the store gets them with the next commit): a reconnect right
    /// after `received` must not get those entries again.
    cursors: DashMap<(Arc<str>, Arc<str>), u64>,
    /// Every live connection (both /ws and /relay), for heartbeat and shutdown.
    conns: DashMap<u64, Arc<Conn>>,
    presence: PresencePolicy,
    /// Rooms with a presence batch pending, and when it is due (hub clock):
    /// the flush visits only these, never every room.
    presence_due: Mutex<std::collections::HashMap<Arc<str>, u64>>,
    /// Cluster mode: the users online in each followed room across the
    /// cluster, as Redis announces them (the local members are among
    /// them once their join came back). `None` on a single node.
    cluster_users: Option<DashMap<Arc<str>, std::collections::HashSet<Arc<str>>>>,
    /// Cluster mode: told when a user's first connection here joins a room
    /// or its last one leaves (room, user, joined).
    cluster_sink: std::sync::OnceLock<Arc<dyn ClusterSink>>,
    pub relay: Relay,
    pub metrics: Arc<Metrics>,
    next_conn_id: AtomicU64,
    started: Instant,
    /// Pre-framed ping, shared by every heartbeat.
    ping_frame: Bytes,
}

/// Where a node reports what the cluster must know of its connections
/// (cluster mode): presence, and the counts an ack's `delivered` adds up.
pub trait ClusterSink: Send + Sync {
    /// A user's first connection here joined `room`, or their last left.
    fn presence(&self, room: &str, user: &str, joined: bool);
    /// `room` has `conns` member connections here now.
    fn room_conns(&self, room: &str, conns: usize);
    /// `user` has `conns` connections here now.
    fn user_conns(&self, user: &str, conns: usize);
}

/// What a node holds, for a resync of its reports.
#[derive(Debug, Default)]
pub struct LocalPresence {
    /// (room, user) with a connection here.
    pub presences: Vec<(Arc<str>, Arc<str>)>,
    /// Member connections per room here.
    pub room_conns: Vec<(Arc<str>, usize)>,
    /// Connections per user here.
    pub user_conns: Vec<(Arc<str>, usize)>,
}

/// Server time in milliseconds since the Unix epoch (the `ts` of events).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn text(payload: Vec<u8>) -> SharedMessage {
    SharedMessage::new(OpCode::Text, Bytes::from(payload))
}

impl Hub {
    /// A hub with the default [`PresencePolicy`].
    pub fn new(metrics: Arc<Metrics>) -> Hub {
        Hub::with_presence(metrics, PresencePolicy::default())
    }

    pub fn with_presence(metrics: Arc<Metrics>, presence: PresencePolicy) -> Hub {
        Hub {
            rooms: DashMap::new(),
            users: DashMap::new(),
            room_seqs: DashMap::new(),
            inbox_seqs: DashMap::new(),
            room_floors: Floors::default(),
            inbox_floors: Floors::default(),
            counters_lock: RwLock::new(()),
            cursors: DashMap::new(),
            conns: DashMap::new(),
            presence,
            presence_due: Mutex::new(std::collections::HashMap::new()),
            cluster_users: None,
            cluster_sink: std::sync::OnceLock::new(),
            relay: Relay::default(),
            metrics,
            next_conn_id: AtomicU64::new(1),
            started: Instant::now(),
            ping_frame: switchboard_ws::encode_frame(OpCode::Ping, b"", false),
        }
    }

    /// A hub for cluster mode: presence is the cluster's, reported to
    /// `sink` and announced back through [`Hub::cluster_presence`].
    pub fn for_cluster(metrics: Arc<Metrics>, presence: PresencePolicy) -> Hub {
        let mut hub = Hub::with_presence(metrics, presence);
        hub.cluster_users = Some(DashMap::new());
        hub
    }

    /// Cluster mode: where local presence changes go (set once, before
    /// serving).
    pub fn set_cluster_sink(&self, sink: Arc<dyn ClusterSink>) {
        let _ = self.cluster_sink.set(sink);
    }

    /// Cluster mode: the users online in `room` across the cluster, as read
    /// from Redis when the room is followed.
    pub fn cluster_presence_seed(&self, room: &str, users: Vec<String>) {
        if let Some(all) = &self.cluster_users {
            all.insert(Arc::from(room), users.into_iter().map(Arc::from).collect());
        }
    }

    /// Cluster mode: the room is no longer followed.
    pub fn cluster_presence_forget(&self, room: &str) {
        if let Some(all) = &self.cluster_users {
            all.remove(room);
        }
    }

    /// Cluster mode: Redis announced that `user` came online in `room`
    /// (or went offline); the members here are told (batched as usual).
    pub fn cluster_presence(&self, room: &str, user: &str, joined: bool) {
        let Some(all) = &self.cluster_users else {
            return;
        };
        let (user, online) = {
            let mut users = all.entry(Arc::from(room)).or_default();
            let user: Arc<str> = Arc::from(user);
            let changed = if joined {
                users.insert(user.clone())
            } else {
                users.remove(&user)
            };
            if !changed {
                return;
            }
            (user, users.len())
        };
        let Some(entry) = self.room(room) else {
            return;
        };
        let presence = (&self.presence, self.clock_ms());
        if let Some(due) = entry.announce(&user, joined, online, presence, &self.metrics) {
            self.presence_pending(&entry.name, due);
        }
    }

    /// Cluster mode: users online in `room` across the cluster (with
    /// `also`, a joiner whose join is still on its way).
    fn cluster_online(&self, room: &str, also: Option<&str>) -> Option<usize> {
        let all = self.cluster_users.as_ref()?;
        let users = all.get(room);
        let n = users.as_ref().map_or(0, |u| u.len());
        let missing = also.is_some_and(|user| !users.as_ref().is_some_and(|u| u.contains(user)));
        Some(n + usize::from(missing))
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

    /// Last committed seq of a room (its floor if it has no counter: 0
    /// for a room never forgotten).
    pub fn room_seq(&self, room: &str) -> u64 {
        match self.room_seqs.get(room) {
            Some(seq) => *seq,
            None => self.room_floors.of(room),
        }
    }

    /// Last committed seq of a user's inbox (its floor if it has none).
    pub fn inbox_seq(&self, user: &str) -> u64 {
        match self.inbox_seqs.get(user) {
            Some(seq) => *seq,
            None => self.inbox_floors.of(user),
        }
    }

    /// Where the writer starts numbering a room it has no counter for.
    pub fn room_floor(&self, room: &str) -> u64 {
        self.room_floors.of(room)
    }

    pub fn inbox_floor(&self, user: &str) -> u64 {
        self.inbox_floors.of(user)
    }

    /// Floors as recovered from the store (start-up, before any client).
    pub fn restore_floors(&self, rooms: &[(u32, u64)], inboxes: &[(u32, u64)]) {
        for &(bucket, value) in rooms {
            self.room_floors.raise(bucket, value);
        }
        for &(bucket, value) in inboxes {
            self.inbox_floors.raise(bucket, value);
        }
    }

    /// Forgets the counters of idle rooms and inboxes (writer only, after
    /// retention emptied them): those with a member or a connection now
    /// are kept. Each forgotten seq raises its bucket's floor; a live room
    /// or inbox without a counter in a raised bucket is pinned at the floor
    /// it was shown, so its numbering does not jump.
    pub fn retire(&self, rooms: Vec<(Arc<str>, u64)>, inboxes: Vec<(Arc<str>, u64)>) -> Retired {
        let _counters = self.counters_lock.write();
        let mut retired = Retired::default();
        let is_room_live = |name: &str| self.rooms.contains_key(name);
        let is_user_live = |name: &str| self.users.contains_key(name);
        retired.rooms = retire_kind(
            rooms,
            &self.room_seqs,
            &self.room_floors,
            is_room_live,
            || self.rooms.iter().map(|e| e.key().clone()).collect(),
        );
        retired.inboxes = retire_kind(
            inboxes,
            &self.inbox_seqs,
            &self.inbox_floors,
            is_user_live,
            || self.users.iter().map(|e| e.key().clone()).collect(),
        );
        if !retired.inboxes.forgotten.is_empty() {
            let gone: std::collections::HashSet<&str> = retired
                .inboxes
                .forgotten
                .iter()
                .map(|(u, _)| &**u)
                .collect();
            self.cursors.retain(|(user, _), _| !gone.contains(&**user));
        }
        retired
    }

    /// Drops a cursor from memory once the store has it (writer only).
    pub fn cursor_committed(&self, user: &str, device: &str, upto: u64) {
        self.cursors
            .remove_if(&(Arc::from(user), Arc::from(device)), |_, known| {
                *known <= upto
            });
    }

    /// Records a device's `received` position.
    pub fn set_cursor(&self, user: &Arc<str>, device: &Arc<str>, upto: u64) {
        let mut entry = self
            .cursors
            .entry((user.clone(), device.clone()))
            .or_insert(0);
        *entry = (*entry).max(upto);
    }

    /// A device's confirmed position as known in memory (0 if unknown).
    pub fn cursor(&self, user: &str, device: &str) -> u64 {
        self.cursors
            .get(&(Arc::from(user), Arc::from(device)))
            .map(|c| *c)
            .unwrap_or(0)
    }

    /// Records a committed room seq (pipeline only, before delivering).
    pub fn set_room_seq(&self, room: &Arc<str>, seq: u64) {
        self.room_seqs.insert(room.clone(), seq);
    }

    /// Records a committed inbox seq (pipeline only, before delivering).
    pub fn set_inbox_seq(&self, user: &Arc<str>, seq: u64) {
        self.inbox_seqs.insert(user.clone(), seq);
    }

    /// Rooms with their last seq and online users, sorted by name.
    pub fn rooms(&self) -> Vec<(Arc<str>, u64, usize)> {
        let mut out: Vec<(Arc<str>, u64, usize)> = self
            .room_seqs
            .iter()
            .map(|e| {
                let online = self.room(e.key()).map(|r| r.online()).unwrap_or(0);
                let online = online.max(self.cluster_online(e.key(), None).unwrap_or(0));
                (e.key().clone(), *e.value(), online)
            })
            .collect();
        for entry in self.rooms.iter() {
            if !self.room_seqs.contains_key(entry.key()) {
                let seq = self.room_seq(entry.key());
                out.push((entry.key().clone(), seq, entry.value().online()));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The `n` rooms with the most users online (ties by name), each with
    /// its last seq and online count, busiest first. Only rooms with members
    /// are looked at, not every room with a counter (up to `--max-rooms`):
    /// the dashboard asks for this every second or two.
    pub fn busiest_rooms(&self, n: usize) -> Vec<(Arc<str>, u64, usize)> {
        let mut live: Vec<(Arc<str>, usize)> = self
            .rooms
            .iter()
            .map(|e| {
                let online = e.value().online();
                let cluster = self.cluster_online(e.key(), None).unwrap_or(0);
                (e.key().clone(), online.max(cluster))
            })
            .collect();
        let order =
            |a: &(Arc<str>, usize), b: &(Arc<str>, usize)| b.1.cmp(&a.1).then(a.0.cmp(&b.0));
        if live.len() > n {
            live.select_nth_unstable_by(n, order);
            live.truncate(n);
        }
        live.sort_by(order);
        live.into_iter()
            .map(|(room, online)| {
                // With the floor for a room without a counter, as `joined` says.
                let seq = self.room_seq(&room);
                (room, seq, online)
            })
            .collect()
    }

    /// Gives a connection its user id and makes it reachable by `send`.
    /// `welcome` is queued first; live directs are held back (gated) until
    /// [`Hub::open_inbox`], so the inbox replay for `Replay` goes out first.
    pub fn identify(
        &self,
        conn: &Arc<Conn>,
        user: &str,
        welcome: Vec<u8>,
        max_per_user: usize,
    ) -> Result<Replay, IdentifyError> {
        let user: Arc<str> = match self.users.get(user) {
            Some(entry) => entry.key().clone(),
            None => Arc::from(user),
        };
        if conn.user_arc().is_some() {
            return Err(IdentifyError::AlreadyIdentified);
        }
        // Held until the inbox seq is read (see `counters_lock`).
        let _counters = self.counters_lock.read();
        let mut entry = self.users.entry(user.clone()).or_default();
        if max_per_user > 0 && entry.len() >= max_per_user {
            let empty = entry.is_empty();
            drop(entry);
            if empty {
                self.users.remove_if(&user, |_, conns| conns.is_empty());
            }
            return Err(IdentifyError::TooManyConnections);
        }
        if !conn.set_user(user.clone()) {
            return Err(IdentifyError::AlreadyIdentified);
        }
        if entry.is_empty() {
            self.metrics.users.increment(1.0);
        }
        let upto = self.inbox_seq(&user);
        self.reply(conn, welcome);
        if entry.capacity() == 0 {
            // Most users have one connection: no room for four.
            entry.reserve_exact(1);
        }
        entry.push(Gated::new(conn.clone(), upto, true));
        if let Some(sink) = self.cluster_sink.get() {
            sink.user_conns(&user, entry.len());
        }
        Ok(Replay { after: 0, upto })
    }

    /// Ends the inbox replay of `conn`: held directs go out, then live ones.
    pub fn open_inbox(&self, conn: &Conn) {
        if let Some(mut entry) = self.users.get_mut(conn.user()) {
            if let Some(member) = entry.iter_mut().find(|m| m.conn.id == conn.id) {
                member.open(&self.metrics);
            }
        }
    }

    /// Removes a connection everywhere: its user, the registry, its rooms
    /// (sending presence leaves where it was the user's last connection).
    pub fn disconnect(&self, conn: &Arc<Conn>) {
        if let Some(user) = conn.user_arc() {
            let mut gone = false;
            let sink = self.cluster_sink.get();
            self.users.remove_if_mut(user, |_, conns| {
                let before = conns.len();
                conns.retain(|m| m.conn.id != conn.id);
                if let Some(sink) = sink.filter(|_| conns.len() < before) {
                    // Under the registry entry's lock, as `identify`
                    // reports: in the order they happened.
                    sink.user_conns(user, conns.len());
                }
                gone = conns.is_empty();
                gone
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

    /// Joins `conn` to `room` and queues `joined`. With `since` below the
    /// room's committed seq, live events are held back until
    /// [`Hub::open_room`] and the caller must replay the returned range.
    pub fn join(
        &self,
        conn: &Arc<Conn>,
        room: &str,
        since: Option<u64>,
        id: Option<&Id>,
    ) -> Option<Replay> {
        loop {
            let _counters = self.counters_lock.read();
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
            // Gate whenever `since` is given; the replay decides what to send.
            let committed = || self.room_seq(room);
            let presence = (&self.presence, self.clock_ms());
            let cluster_online = self.cluster_online(room, Some(conn.user()));
            let joined = entry.join(
                conn,
                id,
                committed,
                since.is_some(),
                presence,
                cluster_online,
                self.cluster_sink.get().map(|s| &**s),
                &self.metrics,
            );
            match joined {
                room::Joined::Retry => continue,
                room::Joined::New {
                    first_member,
                    from_seq,
                    flush_at,
                    ..
                } => {
                    if let Some(due) = flush_at {
                        self.presence_pending(&entry.name, due);
                    }
                    if first_member {
                        self.metrics.rooms.increment(1.0);
                    }
                    let mut rooms = conn.rooms.lock();
                    if rooms.capacity() == 0 {
                        // Most connections join one room: no room for four.
                        rooms.reserve_exact(1);
                    }
                    rooms.push(entry.name.clone());
                    return since.map(|after| Replay {
                        after,
                        upto: from_seq,
                    });
                }
                room::Joined::Already => return None,
            }
        }
    }

    /// Ends the replay of `room` for `conn`.
    pub fn open_room(&self, conn: &Conn, room: &str) {
        if let Some(r) = self.room(room) {
            r.open_gate(conn, &self.metrics);
        }
    }

    pub fn is_member(&self, conn: &Conn, room: &str) -> bool {
        self.room(room).is_some_and(|r| r.is_member(conn))
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
        let presence = (&self.presence, self.clock_ms());
        let cluster = self.cluster_users.is_some();
        let sink = self.cluster_sink.get().map(|s| &**s);
        let (empty, flush_at) = room.leave(conn, presence, cluster, sink, &self.metrics);
        if let Some(due) = flush_at {
            self.presence_pending(&room.name, due);
        }
        if empty {
            self.metrics.rooms.decrement(1.0);
            // Empty rooms are forgotten; their seq lives on in `room_seqs`.
            self.rooms.remove_if(name, |_, r| r.retire_if_empty());
        }
    }

    /// Notes a room whose presence batch is due at `due` (no room lock held).
    fn presence_pending(&self, room: &Arc<str>, due: u64) {
        let mut rooms = self.presence_due.lock();
        let at = rooms.entry(room.clone()).or_insert(due);
        *at = (*at).min(due);
    }

    /// Sends the presence batches that are due (the gateway calls this a
    /// few times per `--presence-interval`). Visits only rooms with a batch
    /// pending.
    pub fn flush_presence(&self) {
        let now = self.clock_ms();
        let due: Vec<Arc<str>> = {
            let mut rooms = self.presence_due.lock();
            if rooms.is_empty() {
                return;
            }
            let due: Vec<Arc<str>> = rooms
                .iter()
                .filter(|(_, &at)| at <= now)
                .map(|(room, _)| room.clone())
                .collect();
            for room in &due {
                rooms.remove(room);
            }
            due
        };
        for name in due {
            // A room retired meanwhile dropped its batch with its members.
            let Some(room) = self.room(&name) else {
                continue;
            };
            let online = self.cluster_online(&name, None);
            if let Some(later) = room.flush_presence(now, online, &self.metrics) {
                self.presence_pending(&name, later);
            }
        }
    }

    /// Delivers a committed room message to the members (pipeline only),
    /// except the `sender` connection, which gets the ack instead.
    pub fn deliver_room(&self, event: &proto::Message<'_>, sender: Option<u64>) -> usize {
        self.deliver_room_entry(event.room, event.seq, proto::encode(event), sender)
    }

    /// Delivers a committed room entry (a message or a change of one),
    /// already encoded, to the members that joined before `seq`.
    pub fn deliver_room_entry(
        &self,
        room: &str,
        seq: u64,
        payload: Vec<u8>,
        sender: Option<u64>,
    ) -> usize {
        let started = Instant::now();
        let Some(entry) = self.room(room) else {
            return 0;
        };
        let delivered = entry.deliver(seq, payload, sender, &self.metrics);
        self.metrics.messages_out.increment(delivered as u64);
        self.metrics
            .fanout_seconds
            .record(started.elapsed().as_secs_f64());
        delivered
    }

    /// Delivers a run of committed messages to one room, seqs ascending,
    /// each already encoded with its sender (pipeline only): every member
    /// gets its share in one push (see `Room::deliver_run`). Returns how
    /// many members got each message.
    pub fn deliver_room_run(
        &self,
        room: &str,
        run: Vec<(u64, Vec<u8>, Option<u64>)>,
    ) -> Vec<usize> {
        let started = Instant::now();
        let Some(entry) = self.room(room) else {
            return vec![0; run.len()];
        };
        let run: Vec<RunEntry> = run
            .into_iter()
            .map(|(seq, payload, sender)| RunEntry::new(seq, payload, sender))
            .collect();
        let delivered = entry.deliver_run(&run, &self.metrics);
        self.metrics
            .messages_out
            .increment(delivered.iter().sum::<usize>() as u64);
        // One fan-out's time per message, as `deliver_room_entry` records.
        let each = started.elapsed().as_secs_f64() / run.len().max(1) as f64;
        for _ in &run {
            self.metrics.fanout_seconds.record(each);
        }
        delivered
    }

    /// Delivers a committed direct message to every connection of its
    /// recipient, and a copy to the sender's other connections (pipeline
    /// only). Returns how many of the recipient's connections got it.
    pub fn deliver_direct(&self, event: &proto::Direct<'_>, sender: Option<u64>) -> usize {
        self.deliver_inbox_entry(
            event.to,
            event.from,
            event.seq,
            proto::encode(event),
            sender,
        )
    }

    /// Delivers a committed inbox entry of `to` (a direct, a change of one,
    /// a read receipt), already encoded, to `to`'s connections (in inbox
    /// order, behind any replay) and a copy to the other connections of
    /// `from` (the sender, or the reader). Returns how many of `to`'s
    /// connections got it.
    pub fn deliver_inbox_entry(
        &self,
        to: &str,
        from: &str,
        seq: u64,
        payload: Vec<u8>,
        sender: Option<u64>,
    ) -> usize {
        let message = text(payload);
        let delivered = self.queue_inbox(to, seq, &message, sender);
        let mut copies = 0;
        if from != to {
            if let Some(conns) = self.users.get(from) {
                for member in conns.iter().filter(|m| Some(m.conn.id) != sender) {
                    if self.push(&member.conn, &message) {
                        copies += 1;
                    }
                }
            }
        }
        self.metrics
            .messages_out
            .increment((delivered + copies) as u64);
        delivered
    }

    /// Delivers a committed inbox entry of `to` to `to`'s connections only
    /// (cluster mode: the copy for the sender's other devices comes from
    /// the sender's own channel, to the node holding them).
    pub fn deliver_inbox_only(
        &self,
        to: &str,
        seq: u64,
        payload: Vec<u8>,
        sender: Option<u64>,
    ) -> usize {
        let delivered = self.queue_inbox(to, seq, &text(payload), sender);
        self.metrics.messages_out.increment(delivered as u64);
        delivered
    }

    /// Queues an inbox entry to `to`'s connections that started before it
    /// (behind any replay), but `sender`. Returns how many got it.
    fn queue_inbox(
        &self,
        to: &str,
        seq: u64,
        message: &SharedMessage,
        sender: Option<u64>,
    ) -> usize {
        let mut delivered = 0;
        if let Some(mut conns) = self.users.get_mut(to) {
            for member in conns.iter_mut() {
                if Some(member.conn.id) != sender
                    && seq > member.from_seq
                    && member.push(message, &self.metrics)
                {
                    delivered += 1;
                }
            }
        }
        delivered
    }

    /// Every (room, user) with a connection here (cluster mode: what this
    /// node holds, for a presence resync).
    pub fn local_presence(&self) -> LocalPresence {
        let mut out = LocalPresence::default();
        for entry in self.rooms.iter() {
            let (users, members) = entry.value().census();
            for user in users {
                out.presences.push((entry.key().clone(), user));
            }
            if members > 0 {
                out.room_conns.push((entry.key().clone(), members));
            }
        }
        for entry in self.users.iter() {
            if !entry.value().is_empty() {
                out.user_conns
                    .push((entry.key().clone(), entry.value().len()));
            }
        }
        out
    }

    /// Cluster mode: the cluster's users of `room` as read again from
    /// Redis (after a reconnect): the differences are announced here.
    pub fn cluster_presence_sync(&self, room: &str, users: Vec<String>) {
        let Some(all) = &self.cluster_users else {
            return;
        };
        let now: std::collections::HashSet<Arc<str>> = users.into_iter().map(Arc::from).collect();
        let before = all.get(room).map(|u| u.clone()).unwrap_or_default();
        for user in before.difference(&now) {
            self.cluster_presence(room, user, false);
        }
        for user in now.difference(&before) {
            self.cluster_presence(room, user, true);
        }
    }

    /// Whether `room` has a member here.
    pub fn has_room(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// Whether `user` has a connection here.
    pub fn has_user(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Queues an event to every connection of `user` but `except`
    /// (a room read position, for the reader's other devices).
    pub fn to_user(&self, user: &str, payload: Vec<u8>, except: Option<u64>) -> usize {
        let message = text(payload);
        let mut sent = 0;
        if let Some(conns) = self.users.get(user) {
            for member in conns.iter().filter(|m| Some(m.conn.id) != except) {
                if self.push(&member.conn, &message) {
                    sent += 1;
                }
            }
        }
        self.metrics.messages_out.increment(sent as u64);
        sent
    }

    /// An ephemeral signal to the room's other members; dropped for
    /// members replaying or slow ([`SIGNAL_QUEUE_MAX`]).
    pub fn signal_room(&self, room: &str, payload: Vec<u8>, sender: u64) -> usize {
        let sent = self
            .room(room)
            .map_or(0, |r| r.signal(payload, sender, &self.metrics));
        self.metrics.messages_out.increment(sent as u64);
        sent
    }

    /// An ephemeral signal to every live connection of `user`, with the
    /// same dropping rule as [`Hub::signal_room`].
    pub fn signal_user(&self, user: &str, payload: Vec<u8>) -> usize {
        let message = text(payload);
        let mut sent = 0;
        if let Some(conns) = self.users.get(user) {
            for member in conns.iter().filter(|m| m.takes_signals()) {
                if self.push(&member.conn, &message) {
                    sent += 1;
                }
            }
        }
        self.metrics.messages_out.increment(sent as u64);
        sent
    }

    /// Closes every connection of `user` (HTTP API); returns how many.
    pub fn kick(&self, user: &str) -> usize {
        let conns: Vec<Arc<Conn>> = self
            .users
            .get(user)
            .map(|c| c.iter().map(|m| m.conn.clone()).collect())
            .unwrap_or_default();
        for conn in &conns {
            conn.close(proto::close::KICKED, "disconnected by the server API", true);
        }
        conns.len()
    }

    /// Queues a shared message on one connection; false if it was not queued.
    pub fn push(&self, conn: &Conn, message: &SharedMessage) -> bool {
        push_counted(conn, message.frame_for(conn.deflate), &self.metrics)
    }

    /// Users in `room` now, sorted.
    pub fn presence(&self, room: &str) -> Vec<Arc<str>> {
        let mut users = self.room(room).map(|r| r.users()).unwrap_or_default();
        if let Some(all) = &self.cluster_users {
            // The cluster's, and the local joins still on their way there.
            if let Some(cluster) = all.get(room) {
                users.extend(cluster.iter().cloned());
                users.sort();
                users.dedup();
            }
        }
        users
    }

    /// Queues an event for one connection only (replies, errors).
    pub fn reply(&self, conn: &Conn, payload: Vec<u8>) {
        let frame = text(payload).frame_for(conn.deflate);
        push_counted(conn, frame, &self.metrics);
    }

    /// One heartbeat tick: ping every connection, close those silent for
    /// longer than `timeout`. `ping_parked(conn, ping)` writes the ping to
    /// a parked connection's socket itself and says whether it did (a
    /// parked connection has no task to write its queue; pushing would
    /// unpark it). A connection that did not queue or receive a data
    /// message since the last heartbeat is asked to park once its ping is
    /// written.
    pub fn heartbeat(&self, timeout: Duration, mut ping_parked: impl FnMut(&Conn, &Bytes) -> bool) {
        let now = self.clock_ms();
        let limit = timeout.as_millis() as u64;
        for entry in self.conns.iter() {
            let conn = entry.value();
            if now.saturating_sub(conn.last_seen()) > limit {
                self.metrics.heartbeat_timeouts.increment(1);
                conn.close(proto::close::HEARTBEAT_TIMEOUT, "heartbeat timeout", false);
            } else if !ping_parked(conn, &self.ping_frame) {
                if conn.quiet_since_last_heartbeat() {
                    conn.want_park();
                }
                conn.push_ping(self.ping_frame.clone());
            }
        }
        self.metrics.upkeep();
    }

    /// Asks every connection to close with `code` (graceful: queued frames
    /// are flushed first).
    pub fn close_all(&self, code: proto::close::CloseCode, reason: &'static str) {
        for entry in self.conns.iter() {
            entry.value().close(code, reason, true);
        }
    }
}

/// Queues one frame and keeps the slow-consumer metric in step.
pub(crate) fn push_counted(conn: &Conn, frame: Bytes, metrics: &Metrics) -> bool {
    counted(conn, conn.push(frame), metrics)
}

/// Whether a push went through; counts (and logs) a slow consumer dropped.
pub(crate) fn counted(conn: &Conn, push: Push, metrics: &Metrics) -> bool {
    match push {
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
