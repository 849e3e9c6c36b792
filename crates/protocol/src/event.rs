//! Server → client events. Each struct serializes to one JSON object whose
//! first field is `type`; [`encode`] turns any of them into frame payload bytes.
//! Fields borrow, so building an event copies nothing but the final bytes.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::{ErrorCode, Id};

/// Serializes an event to JSON bytes.
pub fn encode<T: Serialize>(event: &T) -> Vec<u8> {
    // Serializing these structs cannot fail: every field is a string, a
    // number, or already-valid raw JSON.
    serde_json::to_vec(event).unwrap_or_default()
}

#[derive(Serialize)]
pub struct Welcome<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a Id>,
    pub user: &'a str,
    pub session: &'a str,
    /// Heartbeat interval in seconds.
    pub heartbeat: u64,
}

impl<'a> Welcome<'a> {
    pub fn new(id: Option<&'a Id>, user: &'a str, session: &'a str, heartbeat: u64) -> Self {
        Welcome {
            kind: "welcome",
            id,
            user,
            session,
            heartbeat,
        }
    }
}

#[derive(Serialize)]
pub struct Joined<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a Id>,
    pub room: &'a str,
    /// Distinct users in the room, this one included.
    pub online: usize,
    /// The room's latest seq (0 when nothing was published yet).
    pub seq: u64,
}

impl<'a> Joined<'a> {
    pub fn new(id: Option<&'a Id>, room: &'a str, online: usize, seq: u64) -> Self {
        Joined {
            kind: "joined",
            id,
            room,
            online,
            seq,
        }
    }
}

#[derive(Serialize)]
pub struct Left<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a Id>,
    pub room: &'a str,
}

impl<'a> Left<'a> {
    pub fn new(id: Option<&'a Id>, room: &'a str) -> Self {
        Left {
            kind: "left",
            id,
            room,
        }
    }
}

/// Reply to `publish` (with `room`) or `send` (with `to` and `stored`).
#[derive(Serialize)]
pub struct Ack<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a Id>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<&'a str>,
    pub seq: u64,
    /// For `send`: the message's conversation-order id (as in `direct`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u64>,
    /// Connections the message was handed to (for `send`: the recipient's).
    pub delivered: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored: Option<bool>,
    /// Set when the `id` repeated an earlier command: nothing new was stored
    /// or delivered, `seq` is the original's.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

impl<'a> Ack<'a> {
    pub fn publish(id: Option<&'a Id>, room: &'a str, seq: u64, delivered: usize) -> Self {
        Ack {
            kind: "ack",
            id,
            room: Some(room),
            to: None,
            seq,
            gid: None,
            delivered,
            stored: None,
            duplicate: false,
        }
    }

    pub fn send(id: Option<&'a Id>, to: &'a str, seq: u64, delivered: usize, stored: bool) -> Self {
        Ack {
            kind: "ack",
            id,
            room: None,
            to: Some(to),
            seq,
            gid: None,
            delivered,
            stored: Some(stored),
            duplicate: false,
        }
    }
}

#[derive(Serialize)]
pub struct Message<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub room: &'a str,
    pub seq: u64,
    pub from: &'a str,
    /// Server time, milliseconds since the Unix epoch.
    pub ts: u64,
    pub body: &'a RawValue,
}

impl<'a> Message<'a> {
    pub fn new(room: &'a str, seq: u64, from: &'a str, ts: u64, body: &'a RawValue) -> Self {
        Message {
            kind: "message",
            room,
            seq,
            from,
            ts,
            body,
        }
    }
}

#[derive(Serialize)]
pub struct Direct<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub from: &'a str,
    pub to: &'a str,
    /// Per-recipient inbox seq.
    pub seq: u64,
    /// Store-wide id: orders a conversation across both directions (the
    /// `before` cursor of `history` with `with`).
    pub gid: u64,
    pub ts: u64,
    pub body: &'a RawValue,
}

impl<'a> Direct<'a> {
    pub fn new(
        from: &'a str,
        to: &'a str,
        seq: u64,
        gid: u64,
        ts: u64,
        body: &'a RawValue,
    ) -> Self {
        Direct {
            kind: "direct",
            from,
            to,
            seq,
            gid,
            ts,
            body,
        }
    }
}

/// Presence change broadcast to a room.
#[derive(Serialize)]
pub struct PresenceChange<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub room: &'a str,
    /// `"join"` or `"leave"`.
    pub event: &'static str,
    pub user: &'a str,
    pub online: usize,
}

impl<'a> PresenceChange<'a> {
    pub fn join(room: &'a str, user: &'a str, online: usize) -> Self {
        PresenceChange {
            kind: "presence",
            room,
            event: "join",
            user,
            online,
        }
    }

    pub fn leave(room: &'a str, user: &'a str, online: usize) -> Self {
        PresenceChange {
            kind: "presence",
            room,
            event: "leave",
            user,
            online,
        }
    }
}

/// Reply to a `presence` query.
#[derive(Serialize)]
pub struct PresenceList<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a Id>,
    pub room: &'a str,
    pub online: usize,
    pub users: Vec<&'a str>,
}

impl<'a> PresenceList<'a> {
    pub fn new(id: Option<&'a Id>, room: &'a str, users: Vec<&'a str>) -> Self {
        PresenceList {
            kind: "presence",
            id,
            room,
            online: users.len(),
            users,
        }
    }
}

/// Part of a stream (a room, or this device's inbox) cannot be replayed:
/// everything up to `seq` is skipped; what follows continues from `seq + 1`.
#[derive(Serialize)]
pub struct Reset<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub inbox: bool,
    pub seq: u64,
}

impl<'a> Reset<'a> {
    pub fn room(room: &'a str, seq: u64) -> Self {
        Reset {
            kind: "reset",
            room: Some(room),
            inbox: false,
            seq,
        }
    }

    pub fn inbox(seq: u64) -> Self {
        Reset {
            kind: "reset",
            room: None,
            inbox: true,
            seq,
        }
    }
}

/// Read receipt: `by` read the messages they got from you up to `upto`
/// (their inbox seq).
#[derive(Serialize)]
pub struct ReadReceipt<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub by: &'a str,
    pub upto: u64,
}

impl<'a> ReadReceipt<'a> {
    pub fn new(by: &'a str, upto: u64) -> Self {
        ReadReceipt {
            kind: "read",
            by,
            upto,
        }
    }
}

/// Reply to `history`: past `message` (room) or `direct` (conversation)
/// events, oldest first.
#[derive(Serialize)]
pub struct History<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a Id>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub with: Option<&'a str>,
    /// Each element is a complete event object.
    pub messages: Vec<Box<RawValue>>,
}

#[derive(Serialize)]
pub struct Pong<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a Id>,
}

impl<'a> Pong<'a> {
    pub fn new(id: Option<&'a Id>) -> Self {
        Pong { kind: "pong", id }
    }
}

#[derive(Serialize)]
pub struct Error<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a Id>,
    pub code: &'static str,
    pub message: &'a str,
}

impl<'a> Error<'a> {
    pub fn new(id: Option<&'a Id>, code: ErrorCode, message: &'a str) -> Self {
        Error {
            kind: "error",
            id,
            code: code.as_str(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_keeps_body_bytes_verbatim() {
        let body = RawValue::from_string(r#"{"text": "hi  there"}"#.into()).unwrap();
        let bytes = encode(&Message::new("lobby", 3, "ann", 1700, &body));
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"type":"message","room":"lobby","seq":3,"from":"ann","ts":1700,"body":{"text": "hi  there"}}"#
        );
    }

    #[test]
    fn replies_echo_the_raw_id_and_omit_it_when_absent() {
        let id = Id::from_json(r#""abc""#).unwrap();
        let with = encode(&Pong::new(Some(&id)));
        assert_eq!(
            std::str::from_utf8(&with).unwrap(),
            r#"{"type":"pong","id":"abc"}"#
        );
        let without = encode(&Pong::new(None));
        assert_eq!(std::str::from_utf8(&without).unwrap(), r#"{"type":"pong"}"#);
    }

    #[test]
    fn send_ack_has_stored_publish_ack_has_room() {
        let a = String::from_utf8(encode(&Ack::send(None, "bob", 1, 2, false))).unwrap();
        let mut dup = Ack::publish(None, "r", 9, 0);
        dup.duplicate = true;
        assert!(String::from_utf8(encode(&dup))
            .unwrap()
            .ends_with(r#""duplicate":true}"#));
        assert_eq!(
            a,
            r#"{"type":"ack","to":"bob","seq":1,"delivered":2,"stored":false}"#
        );
        let p = String::from_utf8(encode(&Ack::publish(None, "r", 9, 3))).unwrap();
        assert_eq!(p, r#"{"type":"ack","room":"r","seq":9,"delivered":3}"#);
    }
}
