//! One room: its members and who is online. Seqs are assigned by the
//! pipeline; the room only delivers, in the order the pipeline commits.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_protocol::{self as proto, Id};
use switchboard_ws::{OpCode, SharedMessage};

use super::conn::Conn;
use super::fan_out::FanOut;
use super::gate::Gated;
use super::PresencePolicy;
use crate::metrics::Metrics;

/// Most users whose net presence change a cooling room keeps by name; the
/// rest are only counted (`more`), so a join storm costs a room bounded
/// memory.
const PENDING_NAMES: usize = 1024;

pub(super) enum Joined {
    /// Newly joined, live from `from_seq` on; `first_member` if the room was
    /// empty. `flush_at`: the join started a presence cooldown whose batch
    /// the hub must send at that time (hub clock).
    New {
        first_member: bool,
        from_seq: u64,
        flush_at: Option<u64>,
    },
    /// The connection was already a member (`joined` was re-sent).
    Already,
    /// The room was retired concurrently; look it up again.
    Retry,
}

struct State {
    members: HashMap<u64, Gated>,
    /// Connections per user: a user is online while this is > 0.
    online: HashMap<Arc<str>, u32>,
    /// Set when the room is removed from the registry.
    retired: bool,
    /// When (hub clock, ms) a presence frame last went to the members.
    presence_sent: Option<u64>,
    /// Presence changes held back during a cooldown (big rooms only);
    /// boxed, as most rooms never have any.
    pending: Option<Box<Pending>>,
}

/// Who does not get a presence change: the connection that caused it, or
/// (cluster mode, where the change comes back from Redis) every connection
/// of the user it is about.
#[derive(Clone, Copy)]
enum Except<'a> {
    Nobody,
    Conn(u64),
    User(&'a str),
}

/// The net presence changes of a room since its last presence frame.
struct Pending {
    /// User → (arrival order, joined?). A join cancels a pending leave of
    /// the same user and the other way round: only net changes are kept.
    changes: HashMap<Arc<str>, (u32, bool)>,
    next: u32,
    /// Net changes past [`PENDING_NAMES`], counted only. (A change counted
    /// here cannot be cancelled by its reverse, so past the cap `more` can
    /// overcount; `online` stays exact.)
    uncounted_joins: usize,
    uncounted_leaves: usize,
    /// When the batch is due (hub clock, ms).
    due: u64,
}

impl Pending {
    fn new(due: u64) -> Pending {
        Pending {
            changes: HashMap::new(),
            next: 0,
            uncounted_joins: 0,
            uncounted_leaves: 0,
            due,
        }
    }

    fn add(&mut self, user: &Arc<str>, joined: bool) {
        if let Some(&(_, was_join)) = self.changes.get(user) {
            if was_join != joined {
                self.changes.remove(user);
                return;
            }
        }
        if self.changes.len() < PENDING_NAMES {
            self.changes.insert(user.clone(), (self.next, joined));
            self.next += 1;
        } else if joined {
            self.uncounted_joins += 1;
        } else {
            self.uncounted_leaves += 1;
        }
    }
}

pub(crate) struct Room {
    pub(super) name: Arc<str>,
    state: Mutex<State>,
}

fn text(payload: Vec<u8>) -> SharedMessage {
    SharedMessage::new(OpCode::Text, Bytes::from(payload))
}

/// One committed message of a run delivered together ([`Room::deliver_run`]).
pub(super) struct RunEntry {
    pub seq: u64,
    pub message: SharedMessage,
    /// The sending connection, which gets the ack instead.
    pub sender: Option<u64>,
}

impl RunEntry {
    pub(super) fn new(seq: u64, payload: Vec<u8>, sender: Option<u64>) -> RunEntry {
        RunEntry {
            seq,
            message: text(payload),
            sender,
        }
    }
}

impl Room {
    pub(super) fn new(name: &str) -> Room {
        Room {
            name: Arc::from(name),
            state: Mutex::new(State {
                members: HashMap::new(),
                online: HashMap::new(),
                retired: false,
                presence_sent: None,
                pending: None,
            }),
        }
    }

    /// Adds `conn`. `committed` reads the room's last committed seq; it is
    /// called under the room lock, so every message after it reaches the new
    /// member live and every message up to it is in the store. With `gate`
    /// the member's live events are held back until [`Room::open_gate`]
    /// (while a replay runs).
    ///
    /// `cluster_online`: cluster mode, the users online in the whole
    /// cluster counting this one; presence changes then come from Redis
    /// ([`Room::announce`]), not from local joins.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn join(
        &self,
        conn: &Arc<Conn>,
        id: Option<&Id>,
        committed: impl FnOnce() -> u64,
        gate: bool,
        presence: (&PresencePolicy, u64),
        cluster_online: Option<usize>,
        sink: Option<&dyn super::ClusterSink>,
        metrics: &Metrics,
    ) -> Joined {
        let mut st = self.state.lock();
        if st.retired {
            return Joined::Retry;
        }
        if let Some(member) = st.members.get(&conn.id) {
            let payload = proto::encode(&proto::Joined::new(
                id,
                &self.name,
                st.online.len(),
                member.from_seq,
            ));
            conn.push(text(payload).frame_for(conn.deflate));
            return Joined::Already;
        }
        let from_seq = committed();
        let first_member = st.members.is_empty();
        let user = conn.user_arc().cloned().unwrap_or_else(|| Arc::from(""));
        let count = st.online.entry(user.clone()).or_insert(0);
        *count += 1;
        let user_is_new = *count == 1;
        // `joined` goes out before the gate closes: it must precede the replay.
        let payload = proto::encode(&proto::Joined::new(
            id,
            &self.name,
            cluster_online.unwrap_or(st.online.len()),
            from_seq,
        ));
        conn.push(text(payload).frame_for(conn.deflate));
        st.members
            .insert(conn.id, Gated::new(conn.clone(), from_seq, gate));
        if let Some(sink) = sink {
            // Under the room lock: a leave and a join of the same user here
            // reach Redis in the order they happened.
            if user_is_new {
                sink.presence(&self.name, &user, true);
            }
            sink.room_conns(&self.name, st.members.len());
        }
        let flush_at = if user_is_new && cluster_online.is_none() {
            let online = st.online.len();
            let except = Except::Conn(conn.id);
            self.presence_change(&mut st, &user, true, except, online, presence, metrics)
        } else {
            None
        };
        Joined::New {
            first_member,
            from_seq,
            flush_at,
        }
    }

    /// Cluster mode: Redis says `user` came online (or went offline) in the
    /// whole cluster, which now has `online` users here. Returns when a
    /// batch this started is due.
    pub(super) fn announce(
        &self,
        user: &Arc<str>,
        joined: bool,
        online: usize,
        presence: (&PresencePolicy, u64),
        metrics: &Metrics,
    ) -> Option<u64> {
        let mut st = self.state.lock();
        let except = Except::User(user);
        self.presence_change(&mut st, user, joined, except, online, presence, metrics)
    }

    /// A user came online (`joined`) or went offline. Small rooms, and big
    /// ones that sent no presence frame for an interval, get the change at
    /// once; otherwise it waits for the batch. Returns when the batch is
    /// due if this change started one.
    #[allow(clippy::too_many_arguments)]
    fn presence_change(
        &self,
        st: &mut State,
        user: &Arc<str>,
        joined: bool,
        except: Except<'_>,
        online: usize,
        (policy, now): (&PresencePolicy, u64),
        metrics: &Metrics,
    ) -> Option<u64> {
        if let Some(pending) = st.pending.as_mut() {
            pending.add(user, joined);
            return None;
        }
        // The larger of before and after: a room that never had more than
        // `batch_above` online behaves exactly as without batching.
        let big = online + usize::from(!joined) > policy.batch_above;
        let due = st.presence_sent.map(|t| t + policy.interval_ms);
        if let Some(due) = due.filter(|&due| big && now < due) {
            let mut pending = Box::new(Pending::new(due));
            pending.add(user, joined);
            st.pending = Some(pending);
            return Some(due);
        }
        let event = if joined {
            proto::PresenceChange::join(&self.name, user, online)
        } else {
            proto::PresenceChange::leave(&self.name, user, online)
        };
        let message = text(proto::encode(&event));
        let skip = |m: &Gated| match except {
            Except::Nobody => false,
            Except::Conn(id) => m.conn.id == id,
            Except::User(user) => m.conn.user() == user,
        };
        let _fan_out = FanOut::begin();
        for member in st.members.values_mut().filter(|m| !skip(m)) {
            member.push(&message, metrics);
        }
        st.presence_sent = Some(now);
        None
    }

    /// Sends the batched presence changes if they are due (one `presence`
    /// delta to every member). Returns when to come back if they are not.
    /// `cluster_online`: cluster mode, the cluster's count.
    pub(super) fn flush_presence(
        &self,
        now: u64,
        cluster_online: Option<usize>,
        metrics: &Metrics,
    ) -> Option<u64> {
        let mut st = self.state.lock();
        let due = st.pending.as_ref()?.due;
        if now < due {
            return Some(due);
        }
        let pending = st.pending.take()?;
        let mut changes: Vec<(&Arc<str>, u32, bool)> = pending
            .changes
            .iter()
            .map(|(user, &(order, joined))| (user, order, joined))
            .collect();
        if changes.is_empty() && pending.uncounted_joins + pending.uncounted_leaves == 0 {
            // Every change was undone within the interval: nothing to say.
            return None;
        }
        changes.sort_unstable_by_key(|c| c.1);
        let max = proto::PresenceDelta::MAX_NAMES;
        let mut joined = Vec::new();
        let mut left = Vec::new();
        let mut more = pending.uncounted_joins + pending.uncounted_leaves;
        for (user, _, is_join) in changes {
            let list = if is_join { &mut joined } else { &mut left };
            if list.len() < max {
                list.push(&**user);
            } else {
                more += 1;
            }
        }
        let payload = proto::encode(&proto::PresenceDelta {
            room: &self.name,
            online: cluster_online.unwrap_or(st.online.len()),
            joined,
            left,
            more,
        });
        let message = text(payload);
        let _fan_out = FanOut::begin();
        for member in st.members.values_mut() {
            member.push(&message, metrics);
        }
        st.presence_sent = Some(now);
        None
    }

    /// Releases what was held back for `conn` while its replay ran.
    pub(super) fn open_gate(&self, conn: &Conn, metrics: &Metrics) {
        if let Some(member) = self.state.lock().members.get_mut(&conn.id) {
            member.open(metrics);
        }
    }

    /// Removes `conn`. Returns whether the room is now empty, and when a
    /// presence batch this leave started is due. `cluster`: presence
    /// changes come from Redis (see [`Room::announce`]), and `sink` hears
    /// of this node's.
    pub(super) fn leave(
        &self,
        conn: &Arc<Conn>,
        presence: (&PresencePolicy, u64),
        cluster: bool,
        sink: Option<&dyn super::ClusterSink>,
        metrics: &Metrics,
    ) -> (bool, Option<u64>) {
        let mut st = self.state.lock();
        if st.members.remove(&conn.id).is_none() {
            return (false, None);
        }
        let user = conn.user();
        let user_left = match st.online.get_mut(user) {
            Some(count) if *count > 1 => {
                *count -= 1;
                None
            }
            _ => st.online.remove_entry(user).map(|(name, _)| name),
        };
        if let Some(sink) = sink {
            // Under the room lock, as in `join`.
            if let Some(name) = &user_left {
                sink.presence(&self.name, name, false);
            }
            sink.room_conns(&self.name, st.members.len());
        }
        if st.members.is_empty() {
            // Nobody is left to tell.
            st.pending = None;
            return (true, None);
        }
        let flush_at = match user_left {
            Some(name) if !cluster => {
                let online = st.online.len();
                self.presence_change(
                    &mut st,
                    &name,
                    false,
                    Except::Nobody,
                    online,
                    presence,
                    metrics,
                )
            }
            _ => None,
        };
        (false, flush_at)
    }

    /// Called under the registry's shard lock: marks the room retired (and
    /// tells the caller to drop it) if it is empty.
    pub(super) fn retire_if_empty(&self) -> bool {
        let mut st = self.state.lock();
        if st.members.is_empty() {
            st.retired = true;
            true
        } else {
            false
        }
    }

    pub(super) fn is_member(&self, conn: &Conn) -> bool {
        self.state.lock().members.contains_key(&conn.id)
    }

    /// Queues a committed message, framed once, to every member that joined
    /// before it, except the sending connection. Returns how many got it.
    pub(super) fn deliver(
        &self,
        seq: u64,
        payload: Vec<u8>,
        sender: Option<u64>,
        metrics: &Metrics,
    ) -> usize {
        let message = text(payload);
        let mut st = self.state.lock();
        let _fan_out = FanOut::begin();
        let mut delivered = 0;
        for member in st.members.values_mut() {
            if Some(member.conn.id) != sender
                && seq > member.from_seq
                && member.push(&message, metrics)
            {
                delivered += 1;
            }
        }
        delivered
    }

    /// Queues a run of committed messages (seqs ascending), each framed
    /// once, to every member: each member gets, in order, those it joined
    /// before and did not send, in one push (one lock of its queue, at most
    /// one wake, and so more frames per write). Returns how many members
    /// got each message.
    pub(super) fn deliver_run(&self, run: &[RunEntry], metrics: &Metrics) -> Vec<usize> {
        let mut delivered = vec![0; run.len()];
        let mut mine: Vec<usize> = Vec::with_capacity(run.len());
        let mut st = self.state.lock();
        let _fan_out = FanOut::begin();
        for member in st.members.values_mut() {
            mine.clear();
            let (id, from_seq) = (member.conn.id, member.from_seq);
            mine.extend(
                (0..run.len()).filter(|&i| run[i].sender != Some(id) && run[i].seq > from_seq),
            );
            if !mine.is_empty() && member.push_many(mine.iter().map(|&i| &run[i].message), metrics)
            {
                for &i in &mine {
                    delivered[i] += 1;
                }
            }
        }
        delivered
    }

    /// Queues an ephemeral frame to every member but the sender whose
    /// subscription is live (no replay running) and whose queue is short
    /// (see [`super::SIGNAL_QUEUE_MAX`]): a signal is dropped, not held.
    pub(super) fn signal(&self, payload: Vec<u8>, sender: u64, metrics: &Metrics) -> usize {
        let message = text(payload);
        let st = self.state.lock();
        let _fan_out = FanOut::begin();
        let mut delivered = 0;
        for member in st.members.values() {
            if member.conn.id != sender && member.takes_signals() {
                let frame = message.frame_for(member.conn.deflate);
                if super::push_counted(&member.conn, frame, metrics) {
                    delivered += 1;
                }
            }
        }
        delivered
    }

    pub(super) fn users(&self) -> Vec<Arc<str>> {
        let st = self.state.lock();
        let mut users: Vec<Arc<str>> = st.online.keys().cloned().collect();
        users.sort();
        users
    }

    /// The users online here and the member connections, in one look.
    pub(super) fn census(&self) -> (Vec<Arc<str>>, usize) {
        let st = self.state.lock();
        (st.online.keys().cloned().collect(), st.members.len())
    }

    pub(super) fn online(&self) -> usize {
        self.state.lock().online.len()
    }
}
