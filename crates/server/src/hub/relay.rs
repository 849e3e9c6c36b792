//! Raw relay channels (`/relay/{channel}`): every message a connection sends
//! goes unchanged to the channel's other connections. No identity, no seq.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::Mutex;
use switchboard_ws::{OpCode, SharedMessage};

use super::conn::Conn;
use super::fan_out::FanOut;
use super::push_counted;
use crate::metrics::Metrics;

#[derive(Default)]
struct Channel {
    members: Mutex<HashMap<u64, Arc<Conn>>>,
}

#[derive(Default)]
pub struct Relay {
    channels: DashMap<Arc<str>, Arc<Channel>>,
}

impl Relay {
    pub fn join(&self, channel: &str, conn: &Arc<Conn>) {
        // Insert under the shard lock so a concurrent `leave` that empties
        // and removes the channel cannot strand this member.
        let entry = self.channels.entry(Arc::from(channel)).or_default();
        entry.members.lock().insert(conn.id, conn.clone());
    }

    pub fn leave(&self, channel: &str, conn: &Conn) {
        self.channels.remove_if(channel, |_, ch| {
            let mut members = ch.members.lock();
            members.remove(&conn.id);
            members.is_empty()
        });
    }

    /// Forwards one message; returns how many connections got it.
    pub fn forward(
        &self,
        channel: &str,
        from: &Conn,
        opcode: OpCode,
        payload: Bytes,
        echo: bool,
        metrics: &Metrics,
    ) -> usize {
        let Some(ch) = self.channels.get(channel).map(|c| c.value().clone()) else {
            return 0;
        };
        let message = SharedMessage::new(opcode, payload);
        let members = ch.members.lock();
        let _fan_out = FanOut::begin();
        let mut delivered = 0;
        for member in members.values().filter(|c| echo || c.id != from.id) {
            if push_counted(member, message.frame_for(member.deflate), metrics) {
                delivered += 1;
            }
        }
        delivered
    }

    /// Sends one message back to its sender alone (`?echo=only`, a
    /// connection outside any channel); returns 1 if it was queued.
    pub fn echo(&self, to: &Conn, opcode: OpCode, payload: Bytes, metrics: &Metrics) -> usize {
        let message = SharedMessage::new(opcode, payload);
        push_counted(to, message.frame_for(to.deflate), metrics) as usize
    }
}
