//! One room: its members, who is online, and its message seq.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use switchboard_protocol::{self as proto, Id};
use switchboard_ws::{OpCode, SharedMessage};

use super::conn::Conn;
use super::push_counted;
use crate::metrics::Metrics;

pub(super) enum Joined {
    /// Newly joined; `first_member` if the room was empty.
    New { first_member: bool },
    /// The connection was already a member (`joined` was re-sent).
    Already,
    /// The room was retired concurrently; look it up again.
    Retry,
}

struct State {
    /// Last assigned seq (0: nothing published yet).
    seq: u64,
    members: HashMap<u64, Arc<Conn>>,
    /// Connections per user: a user is online while this is > 0.
    online: HashMap<Arc<str>, u32>,
    /// Set when the room is removed from the registry.
    retired: bool,
}

pub(crate) struct Room {
    pub(super) name: Arc<str>,
    state: Mutex<State>,
}

impl Room {
    pub(super) fn new(name: &str) -> Room {
        Room {
            name: Arc::from(name),
            state: Mutex::new(State {
                seq: 0,
                members: HashMap::new(),
                online: HashMap::new(),
                retired: false,
            }),
        }
    }

    pub(super) fn join(&self, conn: &Arc<Conn>, since: Option<u64>, id: Option<&Id>) -> Joined {
        let mut st = self.state.lock();
        if st.retired {
            return Joined::Retry;
        }
        let reply_joined = |st: &State| {
            let payload =
                proto::encode(&proto::Joined::new(id, &self.name, st.online.len(), st.seq));
            conn.push(
                SharedMessage::new(OpCode::Text, Bytes::from(payload)).frame_for(conn.deflate),
            );
            if since.is_some_and(|s| s < st.seq) {
                let payload = proto::encode(&proto::Reset::new(&self.name, st.seq));
                conn.push(
                    SharedMessage::new(OpCode::Text, Bytes::from(payload)).frame_for(conn.deflate),
                );
            }
        };
        if st.members.contains_key(&conn.id) {
            reply_joined(&st);
            return Joined::Already;
        }
        let first_member = st.members.is_empty();
        st.members.insert(conn.id, conn.clone());
        let user = conn.user_arc().cloned().unwrap_or_else(|| Arc::from(""));
        let count = st.online.entry(user.clone()).or_insert(0);
        *count += 1;
        let user_is_new = *count == 1;
        reply_joined(&st);
        if user_is_new {
            let payload = proto::encode(&proto::PresenceChange::join(
                &self.name,
                &user,
                st.online.len(),
            ));
            let message = SharedMessage::new(OpCode::Text, Bytes::from(payload));
            for member in st.members.values().filter(|c| c.id != conn.id) {
                member.push(message.frame_for(member.deflate));
            }
        }
        Joined::New { first_member }
    }

    /// Removes `conn`; true if the room is now empty.
    pub(super) fn leave(&self, conn: &Arc<Conn>) -> bool {
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
            let payload = proto::encode(&proto::PresenceChange::leave(
                &self.name,
                user,
                st.online.len(),
            ));
            let message = SharedMessage::new(OpCode::Text, Bytes::from(payload));
            for member in st.members.values() {
                member.push(message.frame_for(member.deflate));
            }
        }
        st.members.is_empty()
    }

    /// Called under the registry's shard lock: marks the room retired (and
    /// tells the caller to drop it) if it is empty and never had a message.
    pub(super) fn retire_if_unused(&self) -> bool {
        let mut st = self.state.lock();
        if st.members.is_empty() && st.seq == 0 {
            st.retired = true;
            true
        } else {
            false
        }
    }

    /// Assigns the next seq and queues the message, framed once, to every
    /// member but the sender. None if `conn` is not a member.
    pub(super) fn publish(
        &self,
        conn: &Arc<Conn>,
        body: &RawValue,
        ts: u64,
        metrics: &Metrics,
    ) -> Option<(u64, usize)> {
        let mut st = self.state.lock();
        if !st.members.contains_key(&conn.id) {
            return None;
        }
        st.seq += 1;
        let seq = st.seq;
        let payload = proto::encode(&proto::Message::new(&self.name, seq, conn.user(), ts, body));
        let message = SharedMessage::new(OpCode::Text, Bytes::from(payload));
        let mut delivered = 0;
        for member in st.members.values().filter(|c| c.id != conn.id) {
            if push_counted(member, message.frame_for(member.deflate), metrics) {
                delivered += 1;
            }
        }
        Some((seq, delivered))
    }

    pub(super) fn users(&self) -> Vec<Arc<str>> {
        let st = self.state.lock();
        let mut users: Vec<Arc<str>> = st.online.keys().cloned().collect();
        users.sort();
        users
    }
}
