//! Client → server commands.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::names::{validate_device, validate_room, validate_user};
use crate::ErrorCode;

/// Deepest nesting of arrays/objects accepted in a `body`: deeper bodies
/// would break recipients whose JSON parsers limit depth (serde_json's
/// `Value` stops at 128, browsers and Python at around 1000).
pub const MAX_BODY_DEPTH: usize = 64;

/// Nesting depth of a JSON text (which is already known to be valid).
pub fn json_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Longest accepted command `id` string, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// A command id as the client wrote it (raw JSON: a string with its quotes, or
/// a number), so the reply echoes exactly what was sent.
#[derive(Clone, Debug)]
pub struct Id(Box<RawValue>);

impl Id {
    /// The raw JSON text of the id.
    pub fn as_json(&self) -> &str {
        self.0.get()
    }

    /// Builds an id from raw JSON text; `None` if it is not valid JSON.
    pub fn from_json(raw: &str) -> Option<Id> {
        RawValue::from_string(raw.to_owned()).ok().map(Id)
    }
}

impl PartialEq for Id {
    fn eq(&self, other: &Id) -> bool {
        self.as_json() == other.as_json()
    }
}
impl Eq for Id {}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_json())
    }
}

impl serde::Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// One decoded, validated command. Strings borrow from the frame when they
/// contain no escapes; `body` always borrows.
#[derive(Debug)]
pub enum Command<'a> {
    Hello {
        user: Option<Cow<'a, str>>,
        token: Option<Cow<'a, str>>,
        name: Option<Cow<'a, str>>,
        /// Stable id of the client device, for per-device inbox delivery.
        device: Option<Cow<'a, str>>,
    },
    Join {
        room: Cow<'a, str>,
        since: Option<u64>,
    },
    Leave {
        room: Cow<'a, str>,
    },
    Publish {
        room: Cow<'a, str>,
        body: &'a RawValue,
    },
    Send {
        to: Cow<'a, str>,
        body: &'a RawValue,
    },
    Presence {
        room: Cow<'a, str>,
    },
    /// Inbox entries up to `upto` were received by this device.
    Received {
        upto: u64,
    },
    /// I read a conversation up to `upto`: a direct one (the peer's
    /// messages up to my inbox seq) or a room (up to its seq).
    Read {
        target: Target<'a>,
        upto: u64,
    },
    /// The sender replaces the body of their message `target` (a room seq,
    /// or a direct message's gid).
    Edit {
        to: Target<'a>,
        target: u64,
        body: &'a RawValue,
    },
    /// The sender withdraws their message `target`.
    Recall {
        to: Target<'a>,
        target: u64,
    },
    /// An ephemeral event (typing): fanned out, never stored.
    Signal {
        to: Target<'a>,
        body: &'a RawValue,
    },
    /// The user's conversations and rooms, newest first.
    Conversations {
        /// The `next` of the previous page.
        before: Option<Cow<'a, str>>,
        limit: usize,
    },
    History {
        target: HistoryTarget<'a>,
        before: Option<u64>,
        limit: usize,
    },
    Ping,
}

/// A room, or a user (`to` of a change or signal; `from` of a direct `read`:
/// the peer of the conversation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    Room(Cow<'a, str>),
    User(Cow<'a, str>),
}

/// Largest `body` of a `signal`, in bytes: signals are small by nature
/// (typing flags), and every member of a room gets each one.
pub const MAX_SIGNAL_BODY: usize = 1024;

/// What a `history` command reads.
#[derive(Debug)]
pub enum HistoryTarget<'a> {
    Room(Cow<'a, str>),
    /// The one-to-one conversation with this user.
    With(Cow<'a, str>),
}

/// Largest `limit` a `history` command may ask for.
pub const MAX_HISTORY_LIMIT: usize = 100;
/// `limit` when a `history` command gives none.
pub const DEFAULT_HISTORY_LIMIT: usize = 50;

impl Command<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Hello { .. } => "hello",
            Command::Join { .. } => "join",
            Command::Leave { .. } => "leave",
            Command::Publish { .. } => "publish",
            Command::Send { .. } => "send",
            Command::Presence { .. } => "presence",
            Command::Received { .. } => "received",
            Command::Read { .. } => "read",
            Command::Edit { .. } => "edit",
            Command::Recall { .. } => "recall",
            Command::Signal { .. } => "signal",
            Command::Conversations { .. } => "conversations",
            Command::History { .. } => "history",
            Command::Ping => "ping",
        }
    }
}

/// Why a command was refused; `id` is set when the command's id could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    pub id: Option<Id>,
    pub code: ErrorCode,
    pub message: String,
}

/// Every field any command uses, captured as raw JSON. Unknown fields are
/// ignored so that newer clients can talk to older servers.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "present")]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    room: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    since: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    body: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    to: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    user: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    token: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    name: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    device: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    upto: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    from: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    with: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    before: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    limit: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    target: Option<&'a RawValue>,
}

/// Keeps an explicit `null` visible as `Some("null")` (plain `Option` would
/// turn it into `None`, and `"body": null` is a valid body).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

fn bad(id: &Option<Id>, message: String) -> CommandError {
    CommandError {
        id: id.clone(),
        code: ErrorCode::BadRequest,
        message,
    }
}

/// A decoded command and its `id`, if it had one.
#[derive(Debug)]
pub struct Request<'a> {
    pub id: Option<Id>,
    pub command: Command<'a>,
}

/// Reads only the `id` of a command (for replies to commands that are not
/// otherwise processed, e.g. rate-limited ones). `None` if there is no
/// readable id.
pub fn peek_id(text: &str) -> Option<Id> {
    #[derive(Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
    }
    let raw = serde_json::from_str::<IdOnly<'_>>(text).ok()?.id?;
    decode_id(raw).ok()
}

/// Decodes one text frame into a command.
pub fn decode_command(text: &str) -> Result<Request<'_>, CommandError> {
    let first = text.trim_start().as_bytes().first();
    if first != Some(&b'{') {
        let message = if first.is_none() {
            "empty frame: expected a JSON object".to_string()
        } else if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
            "a command must be a JSON object".to_string()
        } else {
            "malformed JSON: expected a JSON object".to_string()
        };
        return Err(bad(&None, message));
    }
    let env: Envelope<'_> = serde_json::from_str(text).map_err(|e| {
        let message = if e.is_syntax() || e.is_eof() {
            format!("malformed JSON: {e}")
        } else {
            format!("invalid command: {e}")
        };
        bad(&None, message)
    })?;

    let id = match env.id {
        None => None,
        Some(raw) if raw.get() == "null" => None,
        Some(raw) => Some(decode_id(raw)?),
    };
    let kind: Cow<'_, str> = match env.kind {
        None => return Err(bad(&id, "missing field `type`".into())),
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|_| bad(&id, "field `type` must be a string".into()))?,
    };

    let fields = Fields {
        env: &env,
        id: &id,
        command: &kind,
    };
    let command = match kind.as_ref() {
        "hello" => {
            let user: Option<Cow<'_, str>> = fields.optional("user", "a string")?;
            if let Some(user) = &user {
                validate_user(user).map_err(|m| bad(&id, m))?;
            }
            let name: Option<Cow<'_, str>> = fields.optional("name", "a string")?;
            if let Some(name) = &name {
                if name.len() > 128 || name.chars().any(char::is_control) {
                    return Err(bad(
                        &id,
                        "name must be at most 128 bytes without control characters".into(),
                    ));
                }
            }
            let device: Option<Cow<'_, str>> = fields.optional("device", "a string")?;
            if let Some(device) = &device {
                validate_device(device).map_err(|m| bad(&id, m))?;
            }
            Command::Hello {
                user,
                token: fields.optional("token", "a string")?,
                name,
                device,
            }
        }
        "join" => Command::Join {
            room: fields.room()?,
            since: fields.optional("since", "a non-negative integer")?,
        },
        "leave" => Command::Leave {
            room: fields.room()?,
        },
        "publish" => Command::Publish {
            room: fields.room()?,
            body: fields.body()?,
        },
        "send" => {
            let to: Cow<'_, str> = fields.required("to", "a string")?;
            validate_user(&to).map_err(|m| bad(&id, format!("to: {m}")))?;
            Command::Send {
                to,
                body: fields.body()?,
            }
        }
        "presence" => Command::Presence {
            room: fields.room()?,
        },
        "received" => Command::Received {
            upto: fields.required("upto", "a non-negative integer")?,
        },
        "read" => Command::Read {
            target: fields.room_or_user("from")?,
            upto: fields.required("upto", "a non-negative integer")?,
        },
        "edit" => Command::Edit {
            to: fields.room_or_user("to")?,
            target: fields.required("target", "a non-negative integer")?,
            body: fields.body()?,
        },
        "recall" => Command::Recall {
            to: fields.room_or_user("to")?,
            target: fields.required("target", "a non-negative integer")?,
        },
        "signal" => {
            let to = fields.room_or_user("to")?;
            let body = fields.body()?;
            if body.get().len() > MAX_SIGNAL_BODY {
                return Err(CommandError {
                    id: id.clone(),
                    code: ErrorCode::TooLarge,
                    message: format!("signal: `body` is larger than {MAX_SIGNAL_BODY} bytes"),
                });
            }
            Command::Signal { to, body }
        }
        "conversations" => {
            let limit: Option<usize> = fields.optional("limit", "a positive integer")?;
            let limit = limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
            if limit == 0 || limit > MAX_HISTORY_LIMIT {
                return Err(bad(
                    &id,
                    format!("conversations: `limit` must be between 1 and {MAX_HISTORY_LIMIT}"),
                ));
            }
            let before: Option<Cow<'_, str>> = fields.optional("before", "a string")?;
            if before.as_ref().is_some_and(|b| b.len() > 256) {
                return Err(bad(
                    &id,
                    "conversations: `before` is not a `next` cursor".into(),
                ));
            }
            Command::Conversations { before, limit }
        }
        "history" => {
            let room: Option<Cow<'_, str>> = fields.optional("room", "a string")?;
            let with: Option<Cow<'_, str>> = fields.optional("with", "a string")?;
            let target = match (room, with) {
                (Some(room), None) => {
                    validate_room(&room).map_err(|m| bad(&id, m))?;
                    HistoryTarget::Room(room)
                }
                (None, Some(with)) => {
                    validate_user(&with).map_err(|m| bad(&id, format!("with: {m}")))?;
                    HistoryTarget::With(with)
                }
                _ => {
                    return Err(bad(
                        &id,
                        "history: give exactly one of `room` or `with`".into(),
                    ))
                }
            };
            let limit: Option<usize> = fields.optional("limit", "a positive integer")?;
            let limit = limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
            if limit == 0 || limit > MAX_HISTORY_LIMIT {
                return Err(bad(
                    &id,
                    format!("history: `limit` must be between 1 and {MAX_HISTORY_LIMIT}"),
                ));
            }
            Command::History {
                target,
                before: fields.optional("before", "a non-negative integer")?,
                limit,
            }
        }
        "ping" => Command::Ping,
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(bad(&id, format!("unknown command type `{shown}`")));
        }
    };
    Ok(Request { id, command })
}

/// The nesting limit of a message `body` ([`MAX_BODY_DEPTH`]): a rule of
/// the wire format, checked by every decoder of messages (the `/ws`
/// commands here, the HTTP API's POST bodies) while decoding, so the body
/// is scanned once.
pub fn check_body_depth(body: &RawValue) -> Result<(), String> {
    if json_depth(body.get()) > MAX_BODY_DEPTH {
        return Err(format!(
            "`body` is nested deeper than {MAX_BODY_DEPTH} levels"
        ));
    }
    Ok(())
}

/// Validates a command `id` (a string of at most [`MAX_ID_LEN`] bytes, or a
/// number): the one check for every entry point that takes ids.
pub fn decode_id(raw: &RawValue) -> Result<Id, CommandError> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => {
            let s: Cow<'_, str> = serde_json::from_str(text)
                .map_err(|_| bad(&None, "field `id` is not a valid string".into()))?;
            if s.len() > MAX_ID_LEN {
                return Err(bad(
                    &None,
                    format!("field `id` is longer than {MAX_ID_LEN} bytes"),
                ));
            }
        }
        Some(b'-' | b'0'..=b'9') if text.len() <= 32 => {}
        _ => return Err(bad(&None, "field `id` must be a string or a number".into())),
    }
    Ok(Id(raw.to_owned()))
}

struct Fields<'e, 'a> {
    env: &'e Envelope<'a>,
    id: &'e Option<Id>,
    command: &'e str,
}

impl<'a> Fields<'_, 'a> {
    fn raw(&self, field: &str) -> Option<&'a RawValue> {
        match field {
            "room" => self.env.room,
            "since" => self.env.since,
            "body" => self.env.body,
            "to" => self.env.to,
            "user" => self.env.user,
            "token" => self.env.token,
            "name" => self.env.name,
            "device" => self.env.device,
            "upto" => self.env.upto,
            "from" => self.env.from,
            "with" => self.env.with,
            "before" => self.env.before,
            "limit" => self.env.limit,
            "target" => self.env.target,
            _ => None,
        }
    }

    fn optional<T: Deserialize<'a>>(
        &self,
        field: &str,
        expected: &str,
    ) -> Result<Option<T>, CommandError> {
        match self.raw(field) {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) => serde_json::from_str(raw.get()).map(Some).map_err(|_| {
                bad(
                    self.id,
                    format!("{}: field `{field}` must be {expected}", self.command),
                )
            }),
        }
    }

    fn required<T: Deserialize<'a>>(&self, field: &str, expected: &str) -> Result<T, CommandError> {
        self.optional(field, expected)?.ok_or_else(|| {
            bad(
                self.id,
                format!("{}: missing field `{field}`", self.command),
            )
        })
    }

    fn room(&self) -> Result<Cow<'a, str>, CommandError> {
        let room: Cow<'a, str> = self.required("room", "a string")?;
        validate_room(&room).map_err(|m| bad(self.id, m))?;
        Ok(room)
    }

    /// Exactly one of `room` or the user field `user_field` (`to`, `from`).
    fn room_or_user(&self, user_field: &str) -> Result<Target<'a>, CommandError> {
        let room: Option<Cow<'a, str>> = self.optional("room", "a string")?;
        let user: Option<Cow<'a, str>> = self.optional(user_field, "a string")?;
        match (room, user) {
            (Some(room), None) => {
                validate_room(&room).map_err(|m| bad(self.id, m))?;
                Ok(Target::Room(room))
            }
            (None, Some(user)) => {
                validate_user(&user).map_err(|m| bad(self.id, format!("{user_field}: {m}")))?;
                Ok(Target::User(user))
            }
            _ => Err(bad(
                self.id,
                format!(
                    "{}: give exactly one of `room` or `{user_field}`",
                    self.command
                ),
            )),
        }
    }

    fn body(&self) -> Result<&'a RawValue, CommandError> {
        let body = self
            .raw("body")
            .ok_or_else(|| bad(self.id, format!("{}: missing field `body`", self.command)))?;
        check_body_depth(body).map_err(|m| bad(self.id, format!("{}: {m}", self.command)))?;
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> CommandError {
        decode_command(text).unwrap_err()
    }

    #[test]
    fn decodes_every_command() {
        assert!(matches!(
            decode_command(r#"{"type":"join","room":"lobby","since":5,"id":1}"#).unwrap().command,
            Command::Join { room, since: Some(5) } if room == "lobby"
        ));
        match decode_command(r#"{"type":"publish","room":"r","body":{"t":"hi"}}"#)
            .unwrap()
            .command
        {
            Command::Publish { room, body } => {
                assert_eq!(room, "r");
                assert_eq!(body.get(), r#"{"t":"hi"}"#);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            decode_command(r#"{"type":"send","to":"bob","body":"x"}"#)
                .unwrap()
                .command,
            Command::Send { .. }
        ));
        assert!(matches!(
            decode_command(r#"{"type":"ping"}"#).unwrap().command,
            Command::Ping
        ));
        assert!(matches!(
            decode_command(r#"{"type":"leave","room":"r"}"#).unwrap().command,
            Command::Leave { room } if room == "r"
        ));
        assert!(matches!(
            decode_command(r#"{"type":"hello","user":"小明"}"#).unwrap().command,
            Command::Hello { user: Some(u), token: None, name: None, .. } if u == "小明"
        ));
    }

    #[test]
    fn decodes_persistence_commands() {
        assert!(matches!(
            decode_command(r#"{"type":"received","upto":7}"#)
                .unwrap()
                .command,
            Command::Received { upto: 7 }
        ));
        assert!(matches!(
            decode_command(r#"{"type":"read","from":"bob","upto":3}"#).unwrap().command,
            Command::Read { target: Target::User(from), upto: 3 } if from == "bob"
        ));
        assert!(matches!(
            decode_command(r#"{"type":"history","room":"r","before":9,"limit":10}"#).unwrap().command,
            Command::History { target: HistoryTarget::Room(r), before: Some(9), limit: 10 } if r == "r"
        ));
        assert!(matches!(
            decode_command(r#"{"type":"history","with":"bob"}"#).unwrap().command,
            Command::History { target: HistoryTarget::With(w), before: None, limit: DEFAULT_HISTORY_LIMIT } if w == "bob"
        ));
        for bad in [
            r#"{"type":"history"}"#,
            r#"{"type":"history","room":"r","with":"b"}"#,
            r#"{"type":"history","room":"r","limit":0}"#,
            r#"{"type":"history","room":"r","limit":101}"#,
            r#"{"type":"received"}"#,
            r#"{"type":"read","from":"b"}"#,
            r#"{"type":"hello","device":""}"#,
        ] {
            assert_eq!(err(bad).code, ErrorCode::BadRequest, "{bad}");
        }
    }

    #[test]
    fn body_may_be_any_json_even_null() {
        match decode_command(r#"{"type":"publish","room":"r","body":null}"#)
            .unwrap()
            .command
        {
            Command::Publish { body, .. } => assert_eq!(body.get(), "null"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_bad_input_with_bad_request() {
        for text in [
            "not json",
            "[1,2]",
            "42",
            "",
            "{",
            r#"{"room":"r"}"#,
            r#"{"type":7}"#,
            r#"{"type":"dance"}"#,
            r#"{"type":"join"}"#,
            r#"{"type":"join","room":5}"#,
            r#"{"type":"join","room":""}"#,
            r#"{"type":"join","room":"r","since":-1}"#,
            r#"{"type":"publish","room":"r"}"#,
            r#"{"type":"send","body":1}"#,
            r#"{"type":"send","to":"","body":1}"#,
            r#"{"type":"ping","id":{"x":1}}"#,
        ] {
            assert_eq!(err(text).code, ErrorCode::BadRequest, "{text}");
        }
    }

    #[test]
    fn deeply_nested_bodies_are_refused() {
        let ok = format!(
            "{}1{}",
            "[".repeat(MAX_BODY_DEPTH),
            "]".repeat(MAX_BODY_DEPTH)
        );
        let deep = format!(
            "{}1{}",
            "[".repeat(MAX_BODY_DEPTH + 1),
            "]".repeat(MAX_BODY_DEPTH + 1)
        );
        assert!(decode_command(&format!(r#"{{"type":"publish","room":"r","body":{ok}}}"#)).is_ok());
        let e = err(&format!(r#"{{"type":"publish","room":"r","body":{deep}}}"#));
        assert!(e.message.contains("nested deeper"), "{}", e.message);
        // Brackets inside strings do not count.
        let text = format!(
            r#"{{"type":"publish","room":"r","body":"{}\"]"}}"#,
            "[".repeat(200)
        );
        assert!(decode_command(&text).is_ok());
        assert_eq!(json_depth(r#"{"a":[1,{"b":"]]]"}]}"#), 3);
    }

    #[test]
    fn peek_id_reads_only_the_id() {
        assert_eq!(
            peek_id(r#"{"type":"x","id":"a","room":5}"#),
            Id::from_json("\"a\"")
        );
        assert_eq!(peek_id(r#"{"id":7}"#), Id::from_json("7"));
        assert_eq!(peek_id(r#"{"id":[1]}"#), None);
        assert_eq!(peek_id("nope"), None);
    }

    #[test]
    fn error_keeps_the_id() {
        assert_eq!(
            err(r#"{"type":"join","id":"a1"}"#).id,
            Id::from_json("\"a1\"")
        );
        assert_eq!(err(r#"{"type":"nope","id":7}"#).id, Id::from_json("7"));
    }

    #[test]
    fn messages_name_the_problem() {
        assert!(err(r#"{"type":"join"}"#)
            .message
            .contains("missing field `room`"));
        assert!(err(r#"{"type":"join","room":1}"#)
            .message
            .contains("must be a string"));
        assert!(err(r#"{"type":"dance"}"#)
            .message
            .contains("unknown command type"));
        assert!(err("[]").message.contains("JSON object"));
        assert!(err("{nope").message.contains("malformed JSON"));
    }
}
