//! Property tests of everything in this crate that parses client input: the
//! JSON command decoder and the name validators (which also check the `user`
//! and `device` query parameters and the relay channel of the HTTP upgrade).
//!
//! Default: 256 cases per property (fast enough for `cargo test`). Longer runs:
//! `PROPTEST_CASES=100000 cargo test --release -p switchboard-protocol --test proptest_decode`
//! (see docs/TESTING.md).

use proptest::prelude::*;
use serde_json::{Map, Number, Value};
use switchboard_protocol::{
    decode_command, validate_device, validate_room, validate_user, Command, CommandError,
    ErrorCode, HistoryTarget, Id, Request, Target, DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT,
    MAX_ROOM_LEN, MAX_SIGNAL_BODY, MAX_USER_LEN,
};

/// Every field the decoder knows.
const FIELDS: [&str; 16] = [
    "type", "id", "room", "body", "to", "user", "token", "name", "device", "since", "upto", "from",
    "with", "before", "limit", "target",
];
const COMMANDS: [&str; 14] = [
    "hello",
    "join",
    "leave",
    "publish",
    "send",
    "presence",
    "received",
    "read",
    "history",
    "ping",
    "edit",
    "recall",
    "signal",
    "conversations",
];

// ---------------------------------------------------------------- strategies

/// Strings that hit the validators' edge cases: control characters, leading
/// or trailing whitespace, quotes and backslashes (escaped in JSON), non-ASCII,
/// and lengths around the limits.
fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "\\PC{0,12}",
        2 => prop::collection::vec(any::<char>(), 0..12).prop_map(|c| c.into_iter().collect()),
        1 => "[ a\"\\\\\\t\\n\u{7f}\u{85}\u{a0}\u{2028}é小]{0,6}",
        1 => (0usize..3, prop::sample::select(vec!['a', 'é', '小', '🚀']))
            .prop_map(|(k, c)| {
                // around MAX_USER_LEN / MAX_ROOM_LEN / MAX_ID_LEN bytes
                let target = [MAX_USER_LEN, MAX_ROOM_LEN, 128][k];
                let mut s = String::new();
                while s.len() + c.len_utf8() <= target {
                    s.push(c);
                }
                s
            }),
        1 => (0usize..3).prop_map(|k| "x".repeat([MAX_USER_LEN, MAX_ROOM_LEN, 128][k] + 1)),
    ]
}

fn arb_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u64..200).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
    ]
}

/// Any JSON value, nested a few levels.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        arb_number(),
        arb_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec(("\\PC{0,6}", inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A value for one known field: mostly of a type the field could accept,
/// sometimes anything.
fn arb_field_value(field: &'static str) -> BoxedStrategy<Value> {
    match field {
        "type" => prop_oneof![
            6 => prop::sample::select(COMMANDS.to_vec()).prop_map(Value::from),
            1 => arb_json(),
        ]
        .boxed(),
        "id" => prop_oneof![
            3 => arb_text().prop_map(Value::String),
            3 => arb_number(),
            1 => arb_json(),
        ]
        .boxed(),
        "body" => arb_json().boxed(),
        "since" | "upto" | "before" | "limit" => prop_oneof![
            4 => arb_number(),
            1 => arb_json(),
        ]
        .boxed(),
        _ => prop_oneof![
            4 => arb_text().prop_map(Value::String),
            1 => arb_json(),
        ]
        .boxed(),
    }
}

/// A JSON object made of known fields (each present or not, in any order),
/// sometimes an unknown field, sometimes a duplicated key, with random
/// whitespace. Returned as (text, entries).
fn arb_command_object() -> impl Strategy<Value = (String, Vec<(String, Value)>)> {
    let fields: Vec<_> = FIELDS
        .iter()
        .map(|&f| {
            let weight = if f == "type" { 0.9 } else { 0.4 };
            prop::option::weighted(weight, arb_field_value(f))
                .prop_map(move |v| v.map(|v| (f.to_string(), v)))
        })
        .collect();
    let extra = prop::option::weighted(0.2, ("\\PC{0,8}", arb_json()));
    let dup = prop::option::weighted(0.05, (prop::sample::select(FIELDS.to_vec()), arb_json()));
    (
        fields,
        extra,
        dup,
        prop::sample::select(vec!["", " ", "\n\t "]),
    )
        .prop_flat_map(|(fields, extra, dup, ws)| {
            let mut entries: Vec<(String, Value)> = fields.into_iter().flatten().collect();
            entries.extend(extra);
            entries.extend(dup.map(|(k, v)| (k.to_string(), v)));
            (Just(entries).prop_shuffle(), Just(ws))
        })
        .prop_map(|(entries, ws)| (object_text(&entries, ws), entries))
}

fn object_text(entries: &[(String, Value)], ws: &str) -> String {
    let parts: Vec<String> = entries
        .iter()
        .map(|(k, v)| format!("{}{ws}:{ws}{}", Value::from(k.as_str()), v))
        .collect();
    format!("{ws}{{{ws}{}{ws}}}{ws}", parts.join(&format!("{ws},{ws}")))
}

/// Valid names per `validate_room` / `validate_user`.
fn arb_room() -> impl Strategy<Value = String> {
    arb_text().prop_filter("valid room", |s| validate_room(s).is_ok())
}
fn arb_user() -> impl Strategy<Value = String> {
    arb_text().prop_filter("valid user", |s| validate_user(s).is_ok())
}

/// A command id a client may send: a short string or an integer.
fn arb_id() -> impl Strategy<Value = Option<Value>> {
    prop::option::of(prop_oneof![
        arb_text()
            .prop_filter("short", |s| s.len() <= 128)
            .prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
    ])
}

/// A valid command, as the fields it is sent with.
#[derive(Clone, Debug)]
enum Valid {
    Hello {
        user: Option<String>,
        token: Option<String>,
        name: Option<String>,
        device: Option<String>,
    },
    Join {
        room: String,
        since: Option<u64>,
    },
    Leave {
        room: String,
    },
    Publish {
        room: String,
        body: Value,
    },
    Send {
        to: String,
        body: Value,
    },
    Presence {
        room: String,
    },
    Received {
        upto: u64,
    },
    Read {
        from: String,
        upto: u64,
    },
    History {
        room: Option<String>,
        with: Option<String>,
        before: Option<u64>,
        limit: Option<usize>,
    },
    Ping,
}

fn arb_valid() -> impl Strategy<Value = Valid> {
    let name = arb_text().prop_filter("valid name", |s| {
        s.len() <= 128 && !s.chars().any(char::is_control)
    });
    prop_oneof![
        (
            prop::option::of(arb_user()),
            prop::option::of("\\PC{0,40}"),
            prop::option::of(name),
            prop::option::of(arb_user()),
        )
            .prop_map(|(user, token, name, device)| Valid::Hello {
                user,
                token,
                name,
                device
            }),
        (arb_room(), prop::option::of(any::<u64>()))
            .prop_map(|(room, since)| Valid::Join { room, since }),
        arb_room().prop_map(|room| Valid::Leave { room }),
        (arb_room(), arb_json()).prop_map(|(room, body)| Valid::Publish { room, body }),
        (arb_user(), arb_json()).prop_map(|(to, body)| Valid::Send { to, body }),
        arb_room().prop_map(|room| Valid::Presence { room }),
        any::<u64>().prop_map(|upto| Valid::Received { upto }),
        (arb_user(), any::<u64>()).prop_map(|(from, upto)| Valid::Read { from, upto }),
        (
            prop_oneof![
                arb_room().prop_map(|r| (Some(r), None)),
                arb_user().prop_map(|w| (None, Some(w))),
            ],
            prop::option::of(any::<u64>()),
            prop::option::of(1..=MAX_HISTORY_LIMIT),
        )
            .prop_map(|((room, with), before, limit)| Valid::History {
                room,
                with,
                before,
                limit
            }),
        Just(Valid::Ping),
    ]
}

impl Valid {
    fn fields(&self) -> Vec<(&'static str, Value)> {
        fn opt<T: Into<Value> + Clone>(
            out: &mut Vec<(&'static str, Value)>,
            k: &'static str,
            v: &Option<T>,
        ) {
            if let Some(v) = v {
                out.push((k, v.clone().into()));
            }
        }
        let mut out = Vec::new();
        match self {
            Valid::Hello {
                user,
                token,
                name,
                device,
            } => {
                out.push(("type", "hello".into()));
                opt(&mut out, "user", user);
                opt(&mut out, "token", token);
                opt(&mut out, "name", name);
                opt(&mut out, "device", device);
            }
            Valid::Join { room, since } => {
                out.push(("type", "join".into()));
                out.push(("room", room.as_str().into()));
                opt(&mut out, "since", since);
            }
            Valid::Leave { room } => {
                out.push(("type", "leave".into()));
                out.push(("room", room.as_str().into()));
            }
            Valid::Publish { room, body } => {
                out.push(("type", "publish".into()));
                out.push(("room", room.as_str().into()));
                out.push(("body", body.clone()));
            }
            Valid::Send { to, body } => {
                out.push(("type", "send".into()));
                out.push(("to", to.as_str().into()));
                out.push(("body", body.clone()));
            }
            Valid::Presence { room } => {
                out.push(("type", "presence".into()));
                out.push(("room", room.as_str().into()));
            }
            Valid::Received { upto } => {
                out.push(("type", "received".into()));
                out.push(("upto", (*upto).into()));
            }
            Valid::Read { from, upto } => {
                out.push(("type", "read".into()));
                out.push(("from", from.as_str().into()));
                out.push(("upto", (*upto).into()));
            }
            Valid::History {
                room,
                with,
                before,
                limit,
            } => {
                out.push(("type", "history".into()));
                opt(&mut out, "room", room);
                opt(&mut out, "with", with);
                opt(&mut out, "before", before);
                opt(&mut out, "limit", &limit.map(|l| l as u64));
            }
            Valid::Ping => out.push(("type", "ping".into())),
        }
        out
    }

    /// Panics unless `cmd` carries exactly these values.
    fn check(&self, cmd: &Command<'_>, body_text: Option<&str>) {
        match (self, cmd) {
            (
                Valid::Hello {
                    user,
                    token,
                    name,
                    device,
                },
                Command::Hello {
                    user: u,
                    token: t,
                    name: n,
                    device: d,
                },
            ) => {
                assert_eq!(user.as_deref(), u.as_deref());
                assert_eq!(token.as_deref(), t.as_deref());
                assert_eq!(name.as_deref(), n.as_deref());
                assert_eq!(device.as_deref(), d.as_deref());
            }
            (Valid::Join { room, since }, Command::Join { room: r, since: s }) => {
                assert_eq!(room, r);
                assert_eq!(since, s);
            }
            (Valid::Leave { room }, Command::Leave { room: r })
            | (Valid::Presence { room }, Command::Presence { room: r }) => assert_eq!(room, r),
            (Valid::Publish { room, .. }, Command::Publish { room: r, body }) => {
                assert_eq!(room, r);
                assert_eq!(Some(body.get()), body_text);
            }
            (Valid::Send { to, .. }, Command::Send { to: t, body }) => {
                assert_eq!(to, t);
                assert_eq!(Some(body.get()), body_text);
            }
            (Valid::Received { upto }, Command::Received { upto: u }) => assert_eq!(upto, u),
            (
                Valid::Read { from, upto },
                Command::Read {
                    target: Target::User(f),
                    upto: u,
                },
            ) => {
                assert_eq!(from, f);
                assert_eq!(upto, u);
            }
            (
                Valid::History {
                    room,
                    with,
                    before,
                    limit,
                },
                Command::History {
                    target,
                    before: b,
                    limit: l,
                },
            ) => {
                match (room, with, target) {
                    (Some(room), None, HistoryTarget::Room(r)) => assert_eq!(room, r),
                    (None, Some(with), HistoryTarget::With(w)) => assert_eq!(with, w),
                    other => panic!("wrong history target {other:?}"),
                }
                assert_eq!(before, b);
                assert_eq!(limit.unwrap_or(DEFAULT_HISTORY_LIMIT), *l);
            }
            (Valid::Ping, Command::Ping) => {}
            (want, got) => panic!("decoded {got:?}, sent {want:?}"),
        }
    }
}

// ---------------------------------------------------------------- helpers

fn check_error(e: &CommandError) {
    assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}");
    assert!(!e.message.trim().is_empty(), "{e:?}");
}

/// Decodes and checks the invariants every result must keep.
fn decode_checked(text: &str) -> Result<Request<'_>, CommandError> {
    let res = decode_command(text);
    if let Err(e) = &res {
        check_error(e);
    }
    res
}

/// What the decoder must report as the command's id, given the (unique) `id`
/// entry: `Ok(None)` no id, `Ok(Some(raw))` that id echoed, `Err(())` the id
/// itself is refused (so nothing can be echoed).
fn expected_id(id: Option<&Value>) -> Result<Option<String>, ()> {
    match id {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::String(s)) if s.len() <= 128 => Ok(Some(v.to_string())),
        Some(v @ Value::Number(_)) if v.to_string().len() <= 32 => Ok(Some(v.to_string())),
        Some(_) => Err(()),
    }
}

fn id_text(id: &Option<Id>) -> Option<&str> {
    id.as_ref().map(Id::as_json)
}

// ---------------------------------------------------------------- properties

proptest! {
    #![proptest_config(ProptestConfig {
        // Shrinking a JSON document can take long; failures are rare.
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    })]

    /// Arbitrary text (unicode, control characters, nothing JSON-like) never
    /// panics the decoder and only ever gives `bad_request` errors.
    #[test]
    fn decode_never_panics_on_arbitrary_strings(text in any::<String>()) {
        let _ = decode_checked(&text);
    }

    /// Text built from JSON punctuation, keywords and field names reaches the
    /// parser's deeper states.
    #[test]
    fn decode_never_panics_on_json_like_strings(
        text in "[{}\\[\\]\":,. 0-9eE+\\-\\\\u]{0,20}(\"(type|id|room|body|since|limit)\"[:,]?|true|null|[{}\\[\\]\":,0-9\\-\\\\ ]{0,10}){0,6}",
    ) {
        let _ = decode_checked(&text);
    }

    /// Any JSON value: no panic, and anything but an object is refused with a
    /// message saying a command is a JSON object.
    #[test]
    fn decode_any_json_value(value in arb_json()) {
        let text = value.to_string();
        let res = decode_checked(&text);
        if !value.is_object() {
            let e = res.expect_err("only objects are commands");
            prop_assert!(e.message.contains("JSON object"), "{}", e.message);
        }
    }

    /// Objects with random values (of random types) in the known fields: no
    /// panic, errors are `bad_request` with a message, the id is echoed in
    /// errors (and successes) whenever it is a short string or a number, and
    /// a decoded command carries exactly the values that were sent.
    #[test]
    fn decode_random_objects((text, entries) in arb_command_object()) {
        let res = decode_checked(&text);
        let mut keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_unstable();
        let unique = keys.windows(2).all(|w| w[0] != w[1]);
        if !unique {
            // serde refuses duplicate fields (only for known fields, which
            // may shadow each other otherwise).
            let dup_known = keys.windows(2).any(|w| w[0] == w[1] && FIELDS.contains(&w[0]));
            if dup_known {
                prop_assert!(res.is_err(), "duplicate field accepted: {text}");
            }
            return Ok(());
        }
        let get = |k: &str| entries.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        let id = match expected_id(get("id")) {
            Ok(id) => id,
            Err(()) => {
                let e = res.expect_err("an invalid id must be refused");
                prop_assert!(e.id.is_none());
                prop_assert!(e.message.contains("`id`"), "{}", e.message);
                return Ok(());
            }
        };
        match &res {
            Err(e) => prop_assert_eq!(id_text(&e.id), id.as_deref(), "{}", text),
            Ok(req) => {
                prop_assert_eq!(id_text(&req.id), id.as_deref(), "{}", text);
                check_decoded(&req.command, &get);
            }
        }
    }

    /// Valid commands (all kinds, random valid names, random JSON bodies, an
    /// optional id) decode to the same values; bodies keep their exact bytes.
    #[test]
    fn valid_commands_round_trip(
        valid in arb_valid(),
        id in arb_id(),
        extra in prop::option::weighted(0.2, ("x-[a-z]{1,6}", arb_json())),
        ws in prop::sample::select(vec!["", " ", "\r\n "]),
    ) {
        let mut entries: Vec<(String, Value)> =
            valid.fields().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        if let Some(id) = &id {
            entries.push(("id".into(), id.clone()));
        }
        entries.extend(extra);
        let text = object_text(&entries, ws);
        let body_text = entries.iter().find(|(k, _)| k == "body").map(|(_, v)| v.to_string());
        let req = match decode_command(&text) {
            Ok(req) => req,
            Err(e) => return Err(TestCaseError::fail(format!("{text}: {e:?}"))),
        };
        let want_id = id.as_ref().map(Value::to_string);
        prop_assert_eq!(id_text(&req.id), want_id.as_deref());
        valid.check(&req.command, body_text.as_deref());
    }

    /// The name validators (rooms, users, devices; also used for the `user`
    /// and `device` query parameters and relay channels) never panic and
    /// accept exactly the documented names.
    #[test]
    fn validators_accept_exactly_the_documented_names(s in arb_text()) {
        let shape_ok = !s.is_empty()
            && !s.chars().any(char::is_control)
            && !s.starts_with(char::is_whitespace)
            && !s.ends_with(char::is_whitespace);
        for (res, max) in [
            (validate_room(&s), MAX_ROOM_LEN),
            (validate_user(&s), MAX_USER_LEN),
            (validate_device(&s), MAX_USER_LEN),
        ] {
            let want = shape_ok && s.len() <= max;
            prop_assert_eq!(res.is_ok(), want, "{:?}: {:?}", s, res);
            if let Err(m) = res {
                prop_assert!(!m.is_empty());
            }
        }
    }

    /// A room (or user) that reaches the decoder through JSON escaping is
    /// judged exactly like the same name given to the validator directly.
    #[test]
    fn decoder_and_validators_agree(s in arb_text()) {
        let room = Value::from(s.as_str());
        let join = decode_checked(&format!(r#"{{"type":"join","room":{room}}}"#)).is_ok();
        prop_assert_eq!(join, validate_room(&s).is_ok());
        let send = decode_checked(&format!(r#"{{"type":"send","to":{room},"body":1}}"#)).is_ok();
        prop_assert_eq!(send, validate_user(&s).is_ok());
        let hello = decode_checked(&format!(r#"{{"type":"hello","device":{room}}}"#)).is_ok();
        prop_assert_eq!(hello, validate_device(&s).is_ok());
    }
}

/// For a successfully decoded random object: the command's values are the
/// ones in the object.
fn check_decoded<'v>(cmd: &Command<'_>, get: &dyn Fn(&str) -> Option<&'v Value>) {
    let s = |k: &str| get(k).and_then(Value::as_str);
    let u = |k: &str| get(k).and_then(Value::as_u64);
    assert_eq!(get("type").and_then(Value::as_str), Some(cmd.name()));
    match cmd {
        Command::Hello {
            user,
            token,
            name,
            device,
        } => {
            assert_eq!(user.as_deref(), s("user"));
            assert_eq!(token.as_deref(), s("token"));
            assert_eq!(name.as_deref(), s("name"));
            assert_eq!(device.as_deref(), s("device"));
        }
        Command::Join { room, since } => {
            assert_eq!(Some(room.as_ref()), s("room"));
            assert_eq!(*since, u("since"));
        }
        Command::Leave { room } | Command::Presence { room } => {
            assert_eq!(Some(room.as_ref()), s("room"))
        }
        Command::Publish { room, body } => {
            assert_eq!(Some(room.as_ref()), s("room"));
            assert_eq!(
                Some(body.get().to_string()),
                get("body").map(Value::to_string)
            );
        }
        Command::Send { to, body } => {
            assert_eq!(Some(to.as_ref()), s("to"));
            assert_eq!(
                Some(body.get().to_string()),
                get("body").map(Value::to_string)
            );
        }
        Command::Received { upto } => assert_eq!(Some(*upto), u("upto")),
        Command::Read { target, upto } => {
            match target {
                Target::Room(r) => assert_eq!(Some(r.as_ref()), s("room")),
                Target::User(f) => assert_eq!(Some(f.as_ref()), s("from")),
            }
            assert_eq!(Some(*upto), u("upto"));
        }
        Command::Edit { to, target, body } => {
            match to {
                Target::Room(r) => assert_eq!(Some(r.as_ref()), s("room")),
                Target::User(t) => assert_eq!(Some(t.as_ref()), s("to")),
            }
            assert_eq!(Some(*target), u("target"));
            assert_eq!(
                Some(body.get().to_string()),
                get("body").map(Value::to_string)
            );
        }
        Command::Recall { to, target } => {
            match to {
                Target::Room(r) => assert_eq!(Some(r.as_ref()), s("room")),
                Target::User(t) => assert_eq!(Some(t.as_ref()), s("to")),
            }
            assert_eq!(Some(*target), u("target"));
        }
        Command::Signal { to, body } => {
            match to {
                Target::Room(r) => assert_eq!(Some(r.as_ref()), s("room")),
                Target::User(t) => assert_eq!(Some(t.as_ref()), s("to")),
            }
            assert!(body.get().len() <= MAX_SIGNAL_BODY);
        }
        Command::Conversations { before, limit } => {
            assert_eq!(before.as_deref(), s("before"));
            assert_eq!(
                *limit as u64,
                u("limit").unwrap_or(DEFAULT_HISTORY_LIMIT as u64)
            );
        }
        Command::History {
            target,
            before,
            limit,
        } => {
            match target {
                HistoryTarget::Room(r) => assert_eq!(Some(r.as_ref()), s("room")),
                HistoryTarget::With(w) => assert_eq!(Some(w.as_ref()), s("with")),
            }
            assert_eq!(*before, u("before"));
            assert_eq!(
                *limit as u64,
                u("limit").unwrap_or(DEFAULT_HISTORY_LIMIT as u64)
            );
        }
        Command::Ping => {}
    }
}
