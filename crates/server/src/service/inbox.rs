//! Inbox positions and read positions: `received` (a device confirms its
//! inbox) and `read` (how far the user read a conversation: stored, and a
//! receipt to the peer).

use serde_json::value::RawValue;
use switchboard_protocol as proto;

use super::message::shutting_down;
use super::{Client, Destination, Rejection, Service};
use crate::pipeline::{Job, ReadMark};

impl Service {
    /// Records that this device has its inbox up to `upto`: kept in memory
    /// at once (a reconnect right after must not get those entries again)
    /// and stored with the next commit.
    pub fn received(&self, client: Client<'_>, upto: u64) -> Result<(), Rejection> {
        let user = client.user();
        // A device cannot confirm what was never sent.
        let upto = upto.min(self.hub.inbox_seq(&user));
        self.hub.set_cursor(&user, client.device, upto);
        let job = Job::Cursor {
            user: user.to_string(),
            device: client.device.to_string(),
            upto,
        };
        if self.pipeline.submit(job) {
            Ok(())
        } else {
            Err(shutting_down())
        }
    }

    /// Moves this user's read position in a room or in the conversation
    /// with a peer (names were validated by the decoder). The pipeline
    /// stores it if it moves forward and tells the peer and the user's
    /// other devices; a room needs the token's grant, not membership.
    pub fn read(&self, client: Client<'_>, to: Destination, upto: u64) -> Result<(), Rejection> {
        if let Destination::Room(room) = &to {
            client.check_room_access(room)?;
        }
        let job = Job::Read(ReadMark {
            user: client.user(),
            to,
            upto,
            conn: Some(client.conn.id),
        });
        if self.pipeline.submit(job) {
            Ok(())
        } else {
            Err(shutting_down())
        }
    }

    /// Queues an ephemeral signal (names and body size were validated by
    /// the decoder): to the room's other members (the sender must be one),
    /// or to the user's live connections.
    pub fn signal(
        &self,
        client: Client<'_>,
        to: Destination,
        body: &RawValue,
    ) -> Result<(), Rejection> {
        let from = client.user();
        match &to {
            Destination::Room(room) => {
                // A refreshed token may have narrowed the grant since the join.
                client.check_room_access(room)?;
                if !self.hub.is_member(client.conn, room) {
                    return Err(super::not_joined(room));
                }
                let event = proto::Signal {
                    room: Some(room),
                    from: &from,
                    to: None,
                    body,
                };
                match &self.cluster {
                    Some(cluster) => {
                        cluster
                            .bus
                            .signal_room(room, proto::encode(&event), client.conn.id)
                    }
                    None => {
                        self.hub
                            .signal_room(room, proto::encode(&event), client.conn.id);
                    }
                }
            }
            Destination::User(user) => {
                let event = proto::Signal {
                    room: None,
                    from: &from,
                    to: Some(user),
                    body,
                };
                match &self.cluster {
                    Some(cluster) => cluster.bus.signal_user(user, proto::encode(&event)),
                    None => {
                        self.hub.signal_user(user, proto::encode(&event));
                    }
                }
            }
        }
        Ok(())
    }
}
