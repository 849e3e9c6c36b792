//! Server → client events. [`Event`] is the only thing [`encode`] accepts:
//! its serde tag writes each event's `type` as the object's first field, so
//! no code spells a `type` string by hand. The per-event structs carry the
//! other fields; they borrow, so building an event copies nothing but the
//! final bytes.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::{ErrorCode, Id};

/// Every server → client event. Variants hold a reference so that
/// `encode(&Pong::new(id))` needs neither a move nor a copy of the event.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event<'a> {
    Welcome(&'a Welcome<'a>),
    Joined(&'a Joined<'a>),
    Left(&'a Left<'a>),
    Ack(&'a Ack<'a>),
    Message(&'a Message<'a>),
    Direct(&'a Direct<'a>),
    /// A presence change and a presence list share the wire type: the
    /// fields tell them apart (`event` vs `users`).
    #[serde(rename = "presence")]
    PresenceChange(&'a PresenceChange<'a>),
    #[serde(rename = "presence")]
    PresenceList(&'a PresenceList<'a>),
    /// Presence changes of a big room, batched over an interval (`joined`,
    /// `left`).
    #[serde(rename = "presence")]
    PresenceDelta(&'a PresenceDelta<'a>),
    Reset(&'a Reset<'a>),
    #[serde(rename = "read")]
    ReadReceipt(&'a ReadReceipt<'a>),
    History(&'a History<'a>),
    /// A stored change of a message by its sender (`edit` carries the new
    /// body, `recall` none).
    Edit(&'a Change<'a>),
    Recall(&'a Change<'a>),
    Signal(&'a Signal<'a>),
    Conversations(&'a Conversations<'a>),
    Pong(&'a Pong<'a>),
    Error(&'a Error<'a>),
}

macro_rules! into_event {
    ($($name:ident),* $(,)?) => {$(
        impl<'a> From<&'a $name<'a>> for Event<'a> {
            fn from(event: &'a $name<'a>) -> Self {
                Event::$name(event)
            }
        }
    )*};
}

into_event!(
    Welcome,
    Joined,
    Left,
    Ack,
    Message,
    Direct,
    PresenceChange,
    PresenceList,
    PresenceDelta,
    Reset,
    ReadReceipt,
    History,
    Signal,
    Conversations,
    Pong,
    Error,
);

/// Sent instead of an event that failed to serialize (see [`encode`]).
const ENCODE_FAILED: &[u8] =
    br#"{"type":"error","code":"unavailable","message":"the server could not encode a reply"}"#;

/// Serializes an event to the JSON bytes of one frame, written straight into
/// the output buffer (no intermediate `serde_json::Value`).
pub fn encode<'a>(event: impl Into<Event<'a>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    match serde_json::to_writer(&mut out, &event.into()) {
        Ok(()) => out,
        // Cannot happen: every field is a string, a number, a bool or raw
        // JSON already validated, and writing to a Vec cannot fail. Should a
        // future field break that, the client still gets a well-formed
        // `error` event, never an empty frame; debug builds (the tests) stop
        // here. (This crate does no I/O, logging included.)
        Err(err) => {
            debug_assert!(false, "event failed to serialize: {err}");
            ENCODE_FAILED.to_vec()
        }
    }
}

#[derive(Serialize)]
pub struct Welcome<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a Id>,
    pub user: &'a str,
    pub session: &'a str,
    /// Heartbeat interval in seconds.
    pub heartbeat: u64,
    /// Something the client should know about how it was identified (auth
    /// off: a token it sent was ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<&'a str>,
}

impl<'a> Welcome<'a> {
    pub fn new(id: Option<&'a Id>, user: &'a str, session: &'a str, heartbeat: u64) -> Self {
        Welcome {
            id,
            user,
            session,
            heartbeat,
            warning: None,
        }
    }
}

#[derive(Serialize)]
pub struct Joined<'a> {
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
            id,
            room,
            online,
            seq,
        }
    }
}

#[derive(Serialize)]
pub struct Left<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a Id>,
    pub room: &'a str,
}

impl<'a> Left<'a> {
    pub fn new(id: Option<&'a Id>, room: &'a str) -> Self {
        Left { id, room }
    }
}

/// Reply to `publish` (with `room`) or `send` (with `to` and `stored`).
#[derive(Serialize)]
pub struct Ack<'a> {
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
    pub room: &'a str,
    pub seq: u64,
    pub from: &'a str,
    /// Server time, milliseconds since the Unix epoch.
    pub ts: u64,
    pub body: &'a RawValue,
    /// Current state, in replays and history (live messages are original):
    /// when the message was last edited, or recalled (its body is then
    /// `null`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edited: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recalled: Option<u64>,
}

impl<'a> Message<'a> {
    pub fn new(room: &'a str, seq: u64, from: &'a str, ts: u64, body: &'a RawValue) -> Self {
        Message {
            room,
            seq,
            from,
            ts,
            body,
            edited: None,
            recalled: None,
        }
    }
}

#[derive(Serialize)]
pub struct Direct<'a> {
    pub from: &'a str,
    pub to: &'a str,
    /// Per-recipient inbox seq.
    pub seq: u64,
    /// Store-wide id: orders a conversation across both directions (the
    /// `before` cursor of `history` with `with`).
    pub gid: u64,
    pub ts: u64,
    pub body: &'a RawValue,
    /// Current state, in replays and history (live messages are original):
    /// when the message was last edited, or recalled (its body is then
    /// `null`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edited: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recalled: Option<u64>,
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
            from,
            to,
            seq,
            gid,
            ts,
            body,
            edited: None,
            recalled: None,
        }
    }
}

/// `edit` or `recall` of a message, sequenced like a message: in a room
/// (`room`, the room's `seq`, `target` the original's seq) or in a
/// conversation (`to`, the recipient's inbox `seq`, a new `gid`, `target`
/// the original's gid).
#[derive(Serialize)]
pub struct Change<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    pub from: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<&'a str>,
    pub seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u64>,
    pub target: u64,
    pub ts: u64,
    /// The new body (`edit` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<&'a RawValue>,
}

/// An ephemeral event: to a room's members or to a user.
#[derive(Serialize)]
pub struct Signal<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    pub from: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<&'a str>,
    pub body: &'a RawValue,
}

/// Reply to `conversations`.
#[derive(Serialize)]
pub struct Conversations<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a Id>,
    pub conversations: Vec<ConversationItem<'a>>,
    /// Cursor of the next page (`before`), when more remain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One entry of the conversation list.
#[derive(Serialize)]
pub struct ConversationItem<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub with: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    /// The newest message, a complete `message` or `direct` event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<Box<RawValue>>,
    pub unread: u64,
    pub read: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_read: Option<u64>,
}

/// Presence change broadcast to a room.
#[derive(Serialize)]
pub struct PresenceChange<'a> {
    pub room: &'a str,
    /// `"join"` or `"leave"`.
    pub event: &'static str,
    pub user: &'a str,
    pub online: usize,
}

impl<'a> PresenceChange<'a> {
    pub fn join(room: &'a str, user: &'a str, online: usize) -> Self {
        PresenceChange {
            room,
            event: "join",
            user,
            online,
        }
    }

    pub fn leave(room: &'a str, user: &'a str, online: usize) -> Self {
        PresenceChange {
            room,
            event: "leave",
            user,
            online,
        }
    }
}

/// The net presence changes of a room over one interval, sent instead of
/// one [`PresenceChange`] per user to rooms with many users online (so a
/// join storm costs each member one frame per interval, not one per join).
/// `joined`/`left` list at most [`PresenceDelta::MAX_NAMES`] users each;
/// `more` counts the net changes not listed.
#[derive(Serialize)]
pub struct PresenceDelta<'a> {
    pub room: &'a str,
    pub online: usize,
    pub joined: Vec<&'a str>,
    pub left: Vec<&'a str>,
    #[serde(skip_serializing_if = "is_zero")]
    pub more: usize,
}

impl PresenceDelta<'_> {
    pub const MAX_NAMES: usize = 32;
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Reply to a `presence` query.
#[derive(Serialize)]
pub struct PresenceList<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a Id>,
    pub room: &'a str,
    pub online: usize,
    pub users: Vec<&'a str>,
}

impl<'a> PresenceList<'a> {
    pub fn new(id: Option<&'a Id>, room: &'a str, users: Vec<&'a str>) -> Self {
        PresenceList {
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub inbox: bool,
    pub seq: u64,
}

impl<'a> Reset<'a> {
    pub fn room(room: &'a str, seq: u64) -> Self {
        Reset {
            room: Some(room),
            inbox: false,
            seq,
        }
    }

    pub fn inbox(seq: u64) -> Self {
        Reset {
            room: None,
            inbox: true,
            seq,
        }
    }
}

/// A read position moved: `by` read `from`'s messages up to `upto` (an
/// inbox seq of `by`; `seq` is the receipt's place in `from`'s inbox), or
/// read `room` up to its seq `upto` (sent to `by`'s other devices only).
#[derive(Serialize)]
pub struct ReadReceipt<'a> {
    pub by: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    pub upto: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

impl<'a> ReadReceipt<'a> {
    /// `by` read `from`'s messages; `seq`: the receipt's inbox seq of `from`.
    pub fn direct(by: &'a str, from: &'a str, upto: u64, seq: u64) -> Self {
        ReadReceipt {
            by,
            from: Some(from),
            room: None,
            upto,
            seq: Some(seq),
        }
    }

    pub fn room(by: &'a str, room: &'a str, upto: u64) -> Self {
        ReadReceipt {
            by,
            from: None,
            room: Some(room),
            upto,
            seq: None,
        }
    }
}

/// Reply to `history`: past `message` (room) or `direct` (conversation)
/// events, oldest first.
#[derive(Serialize)]
pub struct History<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a Id>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub with: Option<&'a str>,
    /// Each element is a complete event object.
    pub messages: Vec<Box<RawValue>>,
    /// The page was cut short to fit the connection's outbound queue
    /// (`--max-queue`): older messages remain; ask again with `before`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// The user's stored read position (room seq, or own inbox seq).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read: Option<u64>,
    /// The peer's read position of the user's messages (`with` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_read: Option<u64>,
}

#[derive(Serialize)]
pub struct Pong<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a Id>,
}

impl<'a> Pong<'a> {
    pub fn new(id: Option<&'a Id>) -> Self {
        Pong { id }
    }
}

#[derive(Serialize)]
pub struct Error<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a Id>,
    pub code: &'static str,
    pub message: &'a str,
}

impl<'a> Error<'a> {
    pub fn new(id: Option<&'a Id>, code: ErrorCode, message: &'a str) -> Self {
        Error {
            id,
            code: code.as_str(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

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

    #[test]
    fn welcome_encoding() {
        let id = Id::from_json("7").unwrap();
        assert_eq!(
            text(encode(&Welcome::new(Some(&id), "ann", "s1", 25))),
            r#"{"type":"welcome","id":7,"user":"ann","session":"s1","heartbeat":25}"#
        );
        assert_eq!(
            text(encode(&Welcome::new(None, "ann", "s1", 25))),
            r#"{"type":"welcome","user":"ann","session":"s1","heartbeat":25}"#
        );
    }

    #[test]
    fn joined_and_left_encoding() {
        let id = Id::from_json(r#""j""#).unwrap();
        assert_eq!(
            text(encode(&Joined::new(Some(&id), "lobby", 2, 40))),
            r#"{"type":"joined","id":"j","room":"lobby","online":2,"seq":40}"#
        );
        assert_eq!(
            text(encode(&Joined::new(None, "lobby", 1, 0))),
            r#"{"type":"joined","room":"lobby","online":1,"seq":0}"#
        );
        assert_eq!(
            text(encode(&Left::new(Some(&id), "lobby"))),
            r#"{"type":"left","id":"j","room":"lobby"}"#
        );
        assert_eq!(
            text(encode(&Left::new(None, "lobby"))),
            r#"{"type":"left","room":"lobby"}"#
        );
    }

    #[test]
    fn ack_encoding_with_every_optional_field() {
        let id = Id::from_json("1").unwrap();
        let mut send = Ack::send(Some(&id), "bob", 4, 1, true);
        send.gid = Some(99);
        send.duplicate = true;
        assert_eq!(
            text(encode(&send)),
            r#"{"type":"ack","id":1,"to":"bob","seq":4,"gid":99,"delivered":1,"stored":true,"duplicate":true}"#
        );
    }

    #[test]
    fn direct_keeps_body_bytes_verbatim() {
        let body = RawValue::from_string(r#"[1, "two" ,{}]"#.into()).unwrap();
        assert_eq!(
            text(encode(&Direct::new("ann", "bob", 5, 12, 1700, &body))),
            r#"{"type":"direct","from":"ann","to":"bob","seq":5,"gid":12,"ts":1700,"body":[1, "two" ,{}]}"#
        );
    }

    #[test]
    fn presence_change_and_list_share_the_presence_type() {
        assert_eq!(
            text(encode(&PresenceChange::join("lobby", "ann", 3))),
            r#"{"type":"presence","room":"lobby","event":"join","user":"ann","online":3}"#
        );
        assert_eq!(
            text(encode(&PresenceChange::leave("lobby", "ann", 2))),
            r#"{"type":"presence","room":"lobby","event":"leave","user":"ann","online":2}"#
        );
        let id = Id::from_json(r#""p""#).unwrap();
        assert_eq!(
            text(encode(&PresenceList::new(
                Some(&id),
                "lobby",
                vec!["ann", "bob"]
            ))),
            r#"{"type":"presence","id":"p","room":"lobby","online":2,"users":["ann","bob"]}"#
        );
        assert_eq!(
            text(encode(&PresenceList::new(None, "lobby", vec![]))),
            r#"{"type":"presence","room":"lobby","online":0,"users":[]}"#
        );
    }

    #[test]
    fn presence_delta_encoding() {
        let delta = PresenceDelta {
            room: "lobby",
            online: 40,
            joined: vec!["ann", "bob"],
            left: vec!["cy"],
            more: 0,
        };
        assert_eq!(
            text(encode(&delta)),
            r#"{"type":"presence","room":"lobby","online":40,"joined":["ann","bob"],"left":["cy"]}"#
        );
        let delta = PresenceDelta {
            room: "lobby",
            online: 40,
            joined: vec![],
            left: vec![],
            more: 7,
        };
        assert_eq!(
            text(encode(&delta)),
            r#"{"type":"presence","room":"lobby","online":40,"joined":[],"left":[],"more":7}"#
        );
    }

    #[test]
    fn reset_encoding() {
        assert_eq!(
            text(encode(&Reset::room("lobby", 8))),
            r#"{"type":"reset","room":"lobby","seq":8}"#
        );
        assert_eq!(
            text(encode(&Reset::inbox(3))),
            r#"{"type":"reset","inbox":true,"seq":3}"#
        );
    }

    #[test]
    fn read_receipt_encoding() {
        assert_eq!(
            text(encode(&ReadReceipt::direct("bob", "ann", 17, 4))),
            r#"{"type":"read","by":"bob","from":"ann","upto":17,"seq":4}"#
        );
        assert_eq!(
            text(encode(&ReadReceipt::room("bob", "lobby", 9))),
            r#"{"type":"read","by":"bob","room":"lobby","upto":9}"#
        );
    }

    #[test]
    fn history_keeps_each_event_verbatim() {
        let id = Id::from_json(r#""h""#).unwrap();
        let past = RawValue::from_string(r#"{"type":"message", "seq":1}"#.into()).unwrap();
        let room = History {
            id: Some(&id),
            room: Some("lobby"),
            with: None,
            messages: vec![past],
            truncated: false,
            read: Some(1),
            peer_read: None,
        };
        assert_eq!(
            text(encode(&room)),
            r#"{"type":"history","id":"h","room":"lobby","messages":[{"type":"message", "seq":1}],"read":1}"#
        );
        let conversation = History {
            id: None,
            room: None,
            with: Some("bob"),
            messages: Vec::new(),
            truncated: true,
            read: None,
            peer_read: None,
        };
        assert_eq!(
            text(encode(&conversation)),
            r#"{"type":"history","with":"bob","messages":[],"truncated":true}"#
        );
    }

    #[test]
    fn changes_signals_and_markers_encoding() {
        let body = RawValue::from_string(r#"{"t":"hi!"}"#.into()).unwrap();
        let edit = Change {
            room: Some("lobby"),
            from: "ann",
            to: None,
            seq: 60,
            gid: None,
            target: 58,
            ts: 9,
            body: Some(&body),
        };
        assert_eq!(
            text(encode(Event::Edit(&edit))),
            r#"{"type":"edit","room":"lobby","from":"ann","seq":60,"target":58,"ts":9,"body":{"t":"hi!"}}"#
        );
        let recall = Change {
            room: None,
            from: "ann",
            to: Some("bob"),
            seq: 5,
            gid: Some(816),
            target: 812,
            ts: 9,
            body: None,
        };
        assert_eq!(
            text(encode(Event::Recall(&recall))),
            r#"{"type":"recall","from":"ann","to":"bob","seq":5,"gid":816,"target":812,"ts":9}"#
        );
        let null = RawValue::from_string("null".into()).unwrap();
        let mut gone = Message::new("lobby", 58, "ann", 1, &null);
        gone.recalled = Some(9);
        assert_eq!(
            text(encode(&gone)),
            r#"{"type":"message","room":"lobby","seq":58,"from":"ann","ts":1,"body":null,"recalled":9}"#
        );
        let typing = RawValue::from_string(r#"{"typing":true}"#.into()).unwrap();
        let signal = Signal {
            room: None,
            from: "ann",
            to: Some("bob"),
            body: &typing,
        };
        assert_eq!(
            text(encode(&signal)),
            r#"{"type":"signal","from":"ann","to":"bob","body":{"typing":true}}"#
        );
    }

    #[test]
    fn error_encoding() {
        let id = Id::from_json(r#"{"k":1}"#).unwrap();
        assert_eq!(
            text(encode(&Error::new(
                Some(&id),
                ErrorCode::NotJoined,
                "join first"
            ))),
            r#"{"type":"error","id":{"k":1},"code":"not_joined","message":"join first"}"#
        );
        assert_eq!(
            text(encode(&Error::new(
                None,
                ErrorCode::RateLimited,
                "slow \"down\""
            ))),
            r#"{"type":"error","code":"rate_limited","message":"slow \"down\""}"#
        );
    }

    #[test]
    fn encode_failure_fallback_is_a_well_formed_error_event() {
        let expected = Error::new(
            None,
            ErrorCode::Unavailable,
            "the server could not encode a reply",
        );
        assert_eq!(encode(&expected), ENCODE_FAILED);
    }
}
