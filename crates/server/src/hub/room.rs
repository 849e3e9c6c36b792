//! One room: its members and who is online. Seqs are assigned by the
//! pipeline; the room only delivers, in the order the pipeline commits.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_protocol::{self as proto, Id};
use switchboard_ws::{OpCode, SharedMessage};

use super::conn::Conn;
use super::gate::Gated;
use crate::metrics::Metrics;

pub(super) enum Joined {
    /// Newly joined, live from `from_seq` on; `first_member` if the room was empty.
    New { first_member: bool, from_seq: u64 },
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
}

pub(crate) struct Room {
    pub(super) name: Arc<str>,
    state: Mutex<State>,
}

fn text(payload: Vec<u8>) -> SharedMessage {
    SharedMessage::new(OpCode::Text, Bytes::from(payload))
}

impl Room {
    pub(super) fn new(name: &str) -> Room {
        Room {
            name: Arc::from(name),
            state: Mutex::new(State {
                members: HashMap::new(),
                online: HashMap::new(),
                retired: false,
            }),
        }
    }

    /// Adds `conn`. `committed` reads the room's last committed seq; it is
    /// called under the room lock, so every message after it reaches the new
    /// member live and every message up to it is in the store. With `gate`
    /// the member's live events are held back until [`Room::open_gate`]
    /// (while a replay runs).
    pub(super) fn join(
        &self,
        conn: &Arc<Conn>,
        id: Option<&Id>,
        committed: impl FnOnce() -> u64,
        gate: bool,
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
            st.online.len(),
            from_seq,
        ));
        conn.push(text(payload).frame_for(conn.deflate));
        st.members
            .insert(conn.id, Gated::new(conn.clone(), from_seq, gate));
        if user_is_new {
            let payload = proto::encode(&proto::PresenceChange::join(
                &self.name,
                &user,
                st.online.len(),
            ));
            let message = text(payload);
            for member in st.members.values_mut().filter(|m| m.conn.id != conn.id) {
                member.push(&message, metrics);
            }
        }
        Joined::New {
            first_member,
            from_seq,
        }
    }

    /// Releases what was held back for `conn` while its replay ran.
    pub(super) fn open_gate(&self, conn: &Conn, metrics: &Metrics) {
        if let Some(member) = self.state.lock().members.get_mut(&conn.id) {
            member.open(metrics);
        }
    }

    /// Removes `conn`; true if the room is now empty.
    pub(super) fn leave(&self, conn: &Arc<Conn>, metrics: &Metrics) -> bool {
        let mut st = self.state.lock();
        if st.members.remove(&conn.id).is_none() {
            return false;
        }
        let user = conn.user();
        let mut user_left = false;
        if let Some(count) = st.online.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                st.online.remove(user);
                user_left = true;
            }
        }
        if user_left && !st.members.is_empty() {
            let online = st.online.len();
            let message = text(proto::encode(&proto::PresenceChange::leave(
                &self.name, user, online,
            )));
            for member in st.members.values_mut() {
                member.push(&message, metrics);
            }
        }
        st.members.is_empty()
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

    /// Queues an ephemeral frame to every member but the sender whose
    /// subscription is live (no replay running) and whose queue is short
    /// (see [`super::SIGNAL_QUEUE_MAX`]): a signal is dropped, not held.
    pub(super) fn signal(&self, payload: Vec<u8>, sender: u64, metrics: &Metrics) -> usize {
        let message = text(payload);
        let st = self.state.lock();
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

    pub(super) fn online(&self) -> usize {
        self.state.lock().online.len()
    }
}
