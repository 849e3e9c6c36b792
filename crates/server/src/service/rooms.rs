//! Room membership and presence: `join` (with resume), `leave`,
//! `presence`, and the backend's room list and disconnect.

use std::sync::Arc;

use switchboard_protocol::{validate_room, validate_user, ErrorCode, Id};

use super::{not_joined, replay, validate_name, Caller, Client, Rejection, Service};

/// A room in the backend's list.
pub struct RoomInfo {
    pub room: Arc<str>,
    /// The last committed seq (0 when nothing was published).
    pub seq: u64,
    /// Distinct users online now.
    pub online: usize,
}

impl Service {
    /// Joins `room` (queues `joined` with the command's `id`). With `since`,
    /// replays what was missed from the store before live events flow.
    /// Limits: the token's room grant, `--max-rooms-per-connection`.
    pub fn join(
        self: &Arc<Self>,
        client: Client<'_>,
        room: &str,
        since: Option<u64>,
        id: Option<&Id>,
    ) -> Result<(), Rejection> {
        validate_name(validate_room, room, "")?;
        client.check_room_access(room)?;
        let conn = client.conn;
        let max = self.config.max_rooms_per_connection;
        if !self.hub.is_member(conn, room) && conn.rooms.lock().len() >= max {
            return Err(Rejection::new(
                ErrorCode::Forbidden,
                format!("a connection may be in at most {max} rooms"),
            ));
        }
        if let Some(cluster) = &self.cluster {
            // The joined seq must be the cluster's: follow the room first
            // (a no-op while another member here follows it).
            cluster.follower.follow_room(room)?;
        }
        if let Some(range) = self.hub.join(conn, room, since, id) {
            replay::room(self.clone(), conn.clone(), room.to_owned(), range);
        }
        Ok(())
    }

    /// Leaves `room`; the caller answers `left`.
    pub fn leave(&self, client: Client<'_>, room: &str) -> Result<(), Rejection> {
        if self.hub.leave(client.conn, room) {
            Ok(())
        } else {
            Err(not_joined(room))
        }
    }

    /// Users online in `room`, sorted. A client's token must allow the
    /// room: who is online is the room's business.
    pub fn presence(&self, caller: Caller<'_>, room: &str) -> Result<Vec<Arc<str>>, Rejection> {
        validate_name(validate_room, room, "")?;
        if let Caller::Client(client) = caller {
            client.check_room_access(room)?;
        }
        match &self.cluster {
            // Not followed here: nobody here knows; Redis does.
            Some(cluster) if !self.hub.has_room(room) => cluster.follower.room_users(room),
            _ => Ok(self.hub.presence(room)),
        }
    }

    /// Every room with a seq or a member, sorted by name (backend only).
    pub fn rooms(&self) -> Result<Vec<RoomInfo>, Rejection> {
        let rooms = match &self.cluster {
            // The cluster's rooms, not only those with a member here.
            Some(cluster) => cluster.follower.rooms()?,
            None => self.hub.rooms(),
        };
        Ok(rooms
            .into_iter()
            .map(|(room, seq, online)| RoomInfo { room, seq, online })
            .collect())
    }

    /// Closes every connection of `user` (backend only); returns how many.
    pub fn disconnect_user(&self, user: &str) -> Result<usize, Rejection> {
        validate_name(validate_user, user, "")?;
        if let Some(cluster) = &self.cluster {
            // The other nodes close theirs (this one hears it too; closing
            // twice is harmless).
            cluster.bus.kick(user);
        }
        Ok(self.hub.kick(user))
    }
}
