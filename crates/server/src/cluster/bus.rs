//! What a node tells the other nodes that is not a stored entry: a read
//! position for the reader's other devices, signals (typing), a kick. Each
//! goes to the channel of the room or user it concerns, so only the nodes
//! following it hear it; nothing is stored, so nothing is repaired: like a
//! signal on one node, it reaches who is there when it is sent.
//!
//! Announcements (the channel payload), one byte of kind then `|`:
//! - `s|ORIGIN|RECORD`: a stored entry (written by the store's function);
//! - `e|ORIGIN|EVENT`: an event for every connection of the user but the
//!   origin connection;
//! - `g|ORIGIN|EVENT`: a signal (dropped for a slow or replaying member);
//! - `k|`: close every connection of the user (HTTP API).
//!
//! ORIGIN is `NODE:CONN` (CONN empty when no connection sent it).

use std::sync::Arc;

use super::link::Link;

use super::keys;

/// Where an announcement came from.
#[derive(Debug, PartialEq, Eq)]
pub struct Origin<'a> {
    pub node: &'a [u8],
    pub conn: Option<u64>,
}

impl<'a> Origin<'a> {
    pub fn parse(bytes: &'a [u8]) -> Origin<'a> {
        match bytes.iter().rposition(|&b| b == b':') {
            Some(at) => Origin {
                node: &bytes[..at],
                conn: std::str::from_utf8(&bytes[at + 1..])
                    .ok()
                    .and_then(|c| c.parse().ok()),
            },
            None => Origin {
                node: bytes,
                conn: None,
            },
        }
    }

    /// The connection to skip if it is one of `node`'s.
    pub fn conn_on(&self, node: &str) -> Option<u64> {
        (self.node == node.as_bytes())
            .then_some(self.conn)
            .flatten()
    }

    pub fn format(node: &str, conn: Option<u64>) -> String {
        match conn {
            Some(conn) => format!("{node}:{conn}"),
            None => format!("{node}:"),
        }
    }
}

/// Publishes announcements; fire and forget (an announcement is as
/// ephemeral as the event it carries).
pub struct Bus {
    conn: Link,
    node: Arc<str>,
    handle: tokio::runtime::Handle,
}

impl Bus {
    /// A bus on the current runtime.
    pub fn new(conn: Link, node: Arc<str>) -> Bus {
        Bus {
            conn,
            node,
            handle: tokio::runtime::Handle::current(),
        }
    }

    /// An event for every connection of `user` (any node) but `except`.
    pub fn to_user(&self, user: &str, event: Vec<u8>, except: Option<u64>) {
        self.announce(keys::user_channel(user), b'e', except, &event);
    }

    /// A signal to the user's connections.
    pub fn signal_user(&self, user: &str, event: Vec<u8>) {
        self.announce(keys::user_channel(user), b'g', None, &event);
    }

    /// A signal to a room's members but the sender.
    pub fn signal_room(&self, room: &str, event: Vec<u8>, sender: u64) {
        self.announce(keys::room_channel(room), b'g', Some(sender), &event);
    }

    /// Closes every connection of `user` on every node.
    pub fn kick(&self, user: &str) {
        self.publish(keys::user_channel(user), b"k|".to_vec());
    }

    fn announce(&self, channel: String, kind: u8, conn: Option<u64>, event: &[u8]) {
        let origin = Origin::format(&self.node, conn);
        let mut payload = Vec::with_capacity(event.len() + origin.len() + 3);
        payload.push(kind);
        payload.push(b'|');
        payload.extend_from_slice(origin.as_bytes());
        payload.push(b'|');
        payload.extend_from_slice(event);
        self.publish(channel, payload);
    }

    fn publish(&self, channel: String, payload: Vec<u8>) {
        let conn = self.conn.clone();
        self.handle.spawn(async move {
            let sent: redis::RedisResult<()> = conn
                .query(redis::cmd("PUBLISH").arg(&channel).arg(payload))
                .await;
            if let Err(err) = sent {
                tracing::debug!(%err, "cluster: an announcement was lost");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_round_trip() {
        let text = Origin::format("node-1", Some(42));
        let origin = Origin::parse(text.as_bytes());
        assert_eq!(origin.conn_on("node-1"), Some(42));
        assert_eq!(origin.conn_on("node-2"), None);
        let none = Origin::format("n:x", None);
        assert_eq!(Origin::parse(none.as_bytes()).conn_on("n:x"), None);
        assert_eq!(Origin::parse(none.as_bytes()).node, b"n:x");
    }
}
