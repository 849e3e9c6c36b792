//! `switchboard connect`: a small terminal client for the JSON protocol.
//!
//! Lines typed (or piped) on stdin become commands: `/join lobby`,
//! `/send bob hi`, …; plain text is published to the current room (the last
//! joined); a line starting with `{` is sent as raw JSON. Server events are
//! printed one per line, readably (`[lobby #12] alice: hello`). Direct
//! messages addressed to this user are confirmed with `received`, so the
//! next connection of the same device is not sent them again. At the end
//! of stdin (or `/quit`) the client waits for the replies still due, closes
//! the connection and exits: it works as well in a script as in a terminal.
//! When stdin is not a terminal, each line waits for the reply to the one
//! before, so that a script's output reads in the order of its commands.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::Connector;

#[derive(clap::Args)]
pub struct ConnectArgs {
    /// The server: ws://HOST:PORT/ws, wss://…, or http(s)://HOST:PORT
    /// (the /ws path is added when the URL has none).
    url: String,
    /// The user to be (servers with authentication off).
    #[arg(long, conflicts_with = "token")]
    user: Option<String>,
    /// A JWT (servers with authentication on; `switchboard token` mints
    /// one), sent in an `Authorization: Bearer` header.
    #[arg(long)]
    token: Option<String>,
    /// This device's id: the offline inbox is delivered and confirmed per
    /// device.
    #[arg(long)]
    device: Option<String>,
    /// Print every event as the JSON the server sent, and leave `received`
    /// to you (the raw protocol, for learning it or debugging a client).
    #[arg(long)]
    raw: bool,
}

/// How long the client waits for a reply it must have before going on (a
/// script's next line, or the exit). The server answers every command, so
/// this only bounds a hang on a server that stopped answering.
const REPLY_LIMIT: Duration = Duration::from_secs(10);

const HELP: &str = "\
commands:
  /join ROOM              join a room; plain lines are then published to it
  /leave [ROOM]           leave a room (default: the current one)
  /room ROOM              publish plain lines to ROOM (a room you joined)
  /send USER TEXT         a direct message to every device of USER
  /history [ROOM|@USER] [N]  the N (default 20) latest messages of a room or a conversation
  /presence [ROOM]        who is in a room
  /ping                   a round trip to the server
  /quit                   wait for the replies still due, then leave
  TEXT                    publish {\"text\": TEXT} to the current room (//TEXT: a TEXT starting with /)
  {…}                     send one raw JSON command (docs/PROTOCOL.md)";

pub fn run(args: ConnectArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let code = runtime.block_on(session(args))?;
    // A stdin reader thread may still be blocked on the terminal: exit
    // without waiting for it.
    std::process::exit(code)
}

/// The WebSocket URL: the scheme made ws(s), `/ws` when there is no path,
/// `user` and `device` added to the query.
fn ws_url(url: &str, user: Option<&str>, device: Option<&str>) -> anyhow::Result<String> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("ws" | "http", rest)) => ("ws", rest),
        Some(("wss" | "https", rest)) => ("wss", rest),
        Some((other, _)) => {
            return Err(anyhow!(
                "unsupported scheme `{other}` (ws, wss, http or https)"
            ))
        }
        None => ("ws", url),
    };
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    if authority.is_empty() {
        return Err(anyhow!("no host in `{url}`"));
    }
    let tail = tail.split('#').next().unwrap_or_default();
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    let path = if path.is_empty() || path == "/" {
        "/ws"
    } else {
        path
    };
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    for (key, value) in [("user", user), ("device", device)] {
        if let Some(value) = value {
            params.retain(|p| p.split('=').next() != Some(key));
            params.push(format!("{key}={}", percent_encode(value)));
        }
    }
    let query = if params.is_empty() {
        String::new()
    } else {
        format!("?{}", params.join("&"))
    };
    Ok(format!("{scheme}://{authority}{path}{query}"))
}

/// Percent-encodes all but the unreserved characters (user ids may be any
/// UTF-8, Chinese nicknames included).
fn percent_encode(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// TLS for wss://: the system's trusted roots (honouring `SSL_CERT_FILE`
/// and `SSL_CERT_DIR`, so a private CA can be trusted for one run).
fn tls_connector() -> anyhow::Result<Connector> {
    use tokio_rustls::rustls::{crypto::aws_lc_rs, ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        return Err(anyhow!("no trusted certificates found for wss://{why}"));
    }
    // The provider is named: which ones are compiled in depends on the
    // whole dependency graph, and the default lookup panics on two.
    let config = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Connector::Rustls(Arc::new(config)))
}

/// What a command the client sent is waiting for, to print its reply.
struct Pending {
    what: String,
    /// For a `join`: the room that was current before, restored if the
    /// join is refused.
    previous_room: Option<Option<String>>,
}

struct State {
    me: String,
    room: Option<String>,
    /// Commands sent and not answered yet, by id.
    pending: HashMap<String, Pending>,
    /// Raw lines sent that the server answers with an event without id:
    /// commands without an `id`, and lines that are not JSON (an `error`).
    anonymous: usize,
    /// A `welcome` is due (the URL or the token names the user) and has not
    /// come yet: nothing is sent before it, and the client does not leave
    /// before it.
    awaiting_welcome: bool,
    /// Whether a token was given: without one, `unauthorized` before
    /// `welcome` means this server wants one.
    has_token: bool,
    raw: bool,
    /// Ids are unique across runs: the server deduplicates publishes by
    /// (user, id) for minutes, also across connections.
    id_prefix: String,
    next_id: u64,
    /// The highest inbox seq delivered to this user, and the one confirmed.
    inbox_seen: u64,
    inbox_confirmed: u64,
    interactive: bool,
}

impl State {
    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("{}-{}", self.id_prefix, self.next_id)
    }

    fn waiting(&self) -> bool {
        !self.pending.is_empty() || self.anonymous > 0 || self.awaiting_welcome
    }
}

fn say(line: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    // stdout gone (a closed pipe): nothing left to tell anyone.
    let _ = writeln!(out, "{}", line.as_ref());
    let _ = out.flush();
}

async fn session(args: ConnectArgs) -> anyhow::Result<i32> {
    let url = ws_url(&args.url, args.user.as_deref(), args.device.as_deref())?;
    let mut request = url
        .as_str()
        .into_client_request()
        .with_context(|| format!("bad URL `{url}`"))?;
    if let Some(token) = &args.token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| anyhow!("the token has characters a header cannot carry"))?;
        request.headers_mut().insert("authorization", value);
    }
    let connector = if url.starts_with("wss://") {
        Some(tls_connector()?)
    } else {
        None
    };
    let (ws, _) =
        match tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector)
            .await
        {
            Ok(connected) => connected,
            Err(tungstenite::Error::Http(response)) => {
                let body = response
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).trim().to_string())
                    .unwrap_or_default();
                return Err(anyhow!(
                    "{url} refused the connection: {} {body}",
                    response.status()
                ));
            }
            Err(err) => return Err(anyhow!("cannot connect to {url}: {err}")),
        };
    let (mut sink, mut stream) = ws.split();

    // Lines come from a thread: a blocking read of a terminal cannot be
    // cancelled, and tokio's stdin would hold up the exit until Enter.
    let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut state = State {
        me: String::new(),
        room: None,
        pending: HashMap::new(),
        anonymous: 0,
        id_prefix: format!("t{:08x}", rand::random::<u32>()),
        next_id: 0,
        inbox_seen: 0,
        inbox_confirmed: 0,
        interactive: std::io::stdin().is_terminal(),
        awaiting_welcome: args.user.is_some() || args.token.is_some() || url.contains("user="),
        has_token: args.token.is_some() || url.contains("token="),
        raw: args.raw,
    };
    let mut input_done = false;
    let mut closing = false;
    // Since the last command sent (or the end of input): see REPLY_LIMIT.
    let reply_deadline = tokio::time::sleep(Duration::MAX);
    tokio::pin!(reply_deadline);

    loop {
        if input_done && !closing && !state.waiting() {
            closing = true;
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            };
            // The server may have gone already; the read below then ends.
            let _ = sink.send(Message::Close(Some(frame))).await;
        }
        // A script's lines go one at a time (see the module's doc).
        let read_more = !input_done && (state.interactive || !state.waiting());
        let must_wait = (input_done || !state.interactive) && state.waiting() && !closing;
        tokio::select! {
            line = lines.recv(), if read_more => {
                let Some(line) = line else {
                    input_done = true;
                    reply_deadline.as_mut().reset(tokio::time::Instant::now() + REPLY_LIMIT);
                    continue;
                };
                match command(&mut state, &line) {
                    Action::Send(text) => {
                        reply_deadline.as_mut().reset(tokio::time::Instant::now() + REPLY_LIMIT);
                        if sink.send(Message::text(text)).await.is_err() {
                            say("error: the connection is gone");
                        }
                    }
                    Action::Say(text) => say(text),
                    Action::Quit => {
                        input_done = true;
                        reply_deadline.as_mut().reset(tokio::time::Instant::now() + REPLY_LIMIT);
                    }
                    Action::Nothing => {}
                }
            }
            message = stream.next() => {
                let mut next = message;
                // Everything that has arrived, then one `received` for it
                // all: a backlog of directs is confirmed in one command,
                // not one per message (that would run into the rate limit).
                loop {
                    match next {
                        Some(Ok(Message::Text(text))) => {
                            if let Some(code) = event(&mut state, &text) {
                                return Ok(code);
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            return Ok(ended(closing, frame));
                        }
                        Some(Ok(_)) => {}
                        Some(Err(err)) => {
                            say(format!("* connection lost: {err}"));
                            return Ok(1);
                        }
                        None => {
                            if closing {
                                return Ok(0);
                            }
                            say("* connection lost");
                            return Ok(1);
                        }
                    }
                    match stream.next().now_or_never() {
                        Some(more) => next = more,
                        None => break,
                    }
                }
                if state.inbox_seen > state.inbox_confirmed && !closing && !state.raw {
                    let received = json!({"type": "received", "upto": state.inbox_seen});
                    if sink.send(Message::text(received.to_string())).await.is_ok() {
                        state.inbox_confirmed = state.inbox_seen;
                    }
                }
            }
            _ = &mut reply_deadline, if must_wait => {
                say(format!(
                    "error: no reply to {} command(s) within {} s; going on without",
                    state.pending.len() + state.anonymous,
                    REPLY_LIMIT.as_secs()
                ));
                state.pending.clear();
                state.anonymous = 0;
            }
        }
    }
}

/// The exit code once the server closed the connection.
fn ended(closing: bool, frame: Option<CloseFrame>) -> i32 {
    if closing {
        return 0;
    }
    match frame {
        Some(frame) => say(format!(
            "* the server closed the connection: {} {}",
            u16::from(frame.code),
            frame.reason
        )),
        None => say("* the server closed the connection"),
    }
    1
}

enum Action {
    Send(String),
    Say(String),
    Quit,
    Nothing,
}

/// One input line.
fn command(state: &mut State, line: &str) -> Action {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Action::Nothing;
    }
    if line.trim_start().starts_with('{') {
        return raw(state, line.trim());
    }
    let Some(shorthand) = line.strip_prefix('/').filter(|rest| !rest.starts_with('/')) else {
        // Plain text (`//…` stands for a text starting with `/`).
        let text = line.strip_prefix('/').unwrap_or(line);
        let Some(room) = state.room.clone() else {
            return Action::Say(
                "error: no room to publish to: /join ROOM first (/help lists the commands)".into(),
            );
        };
        let body = json!({"text": text});
        return send(
            state,
            json!({"type": "publish", "room": room, "body": body}),
            format!("publish to {room}"),
        );
    };
    let (name, rest) = shorthand
        .split_once(char::is_whitespace)
        .map(|(n, r)| (n, r.trim()))
        .unwrap_or((shorthand, ""));
    let words: Vec<&str> = rest.split_whitespace().collect();
    let usage = |text: &str| Action::Say(format!("error: usage: {text}"));
    match name {
        "join" => {
            let [room] = words[..] else {
                return usage("/join ROOM");
            };
            let previous = state.room.replace(room.to_string());
            let id = state.id();
            state.pending.insert(
                id.clone(),
                Pending {
                    what: format!("join {room}"),
                    previous_room: Some(previous),
                },
            );
            Action::Send(json!({"type": "join", "room": room, "id": id}).to_string())
        }
        "leave" => {
            let Some(room) = words
                .first()
                .map(|r| r.to_string())
                .or_else(|| state.room.clone())
            else {
                return usage("/leave ROOM");
            };
            if state.room.as_deref() == Some(&room) {
                state.room = None;
            }
            send(
                state,
                json!({"type": "leave", "room": room}),
                format!("leave {room}"),
            )
        }
        "room" => {
            let [room] = words[..] else {
                return usage("/room ROOM");
            };
            state.room = Some(room.to_string());
            Action::Say(format!("* plain lines now go to {room}"))
        }
        "send" => {
            let Some((to, text)) = rest.split_once(char::is_whitespace) else {
                return usage("/send USER TEXT");
            };
            let body = json!({"text": text.trim_start()});
            send(
                state,
                json!({"type": "send", "to": to, "body": body}),
                format!("send to {to}"),
            )
        }
        "history" => {
            let (target, limit) = match words[..] {
                [] => (None, None),
                [one] if one.parse::<u32>().is_ok() => (None, Some(one)),
                [target] => (Some(target), None),
                [target, limit] => (Some(target), Some(limit)),
                _ => return usage("/history [ROOM|@USER] [N]"),
            };
            let limit = match limit.map(str::parse::<u32>) {
                None => 20,
                Some(Ok(n)) => n,
                Some(Err(_)) => return usage("/history [ROOM|@USER] [N]"),
            };
            let mut cmd = json!({"type": "history", "limit": limit});
            let what = match target.map(str::to_owned).or_else(|| state.room.clone()) {
                Some(t) => match t.strip_prefix('@') {
                    Some(user) => {
                        cmd["with"] = json!(user);
                        format!("history with {user}")
                    }
                    None => {
                        cmd["room"] = json!(t);
                        format!("history of {t}")
                    }
                },
                None => return usage("/history [ROOM|@USER] [N]"),
            };
            send(state, cmd, what)
        }
        "presence" => {
            let Some(room) = words
                .first()
                .map(|r| r.to_string())
                .or_else(|| state.room.clone())
            else {
                return usage("/presence ROOM");
            };
            send(
                state,
                json!({"type": "presence", "room": room}),
                format!("presence in {room}"),
            )
        }
        "ping" => send(state, json!({"type": "ping"}), "ping".into()),
        "quit" | "exit" => Action::Quit,
        "help" | "?" => Action::Say(HELP.into()),
        other => Action::Say(format!(
            "error: unknown command /{other} (/help lists the commands)"
        )),
    }
}

/// A command with a fresh id, remembered until its reply.
fn send(state: &mut State, mut cmd: Value, what: String) -> Action {
    let id = state.id();
    cmd["id"] = json!(id);
    state.pending.insert(
        id,
        Pending {
            what,
            previous_room: None,
        },
    );
    Action::Send(cmd.to_string())
}

/// Commands whose success is answered (`received` and `read` are answered
/// only when refused; `hello`'s `welcome` is not told apart from the one a
/// connection gets anyway).
const ANSWERED: &[&str] = &[
    "join", "leave", "publish", "send", "history", "presence", "ping",
];

/// Replies that can answer a command sent without an `id`.
fn answers_anonymous(kind: &str, event: &Map<String, Value>) -> bool {
    match kind {
        "joined" | "left" | "ack" | "history" | "pong" | "error" => true,
        "presence" => event.contains_key("users"),
        _ => false,
    }
}

/// A line starting with `{`: sent exactly as typed, its reply awaited when
/// the server will send one.
fn raw(state: &mut State, line: &str) -> Action {
    let Ok(Value::Object(object)) = serde_json::from_str::<Value>(line) else {
        // Not a JSON object: sent anyway, so the server's own error shows.
        state.anonymous += 1;
        return Action::Send(line.to_string());
    };
    let kind = object.get("type").and_then(Value::as_str).unwrap_or("");
    if kind == "join" {
        if let Some(room) = object.get("room").and_then(Value::as_str) {
            state.room = Some(room.to_string());
        }
    }
    let id = match object.get("id") {
        Some(Value::String(id)) => Some(id.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let answered = ANSWERED.contains(&kind) || !KNOWN.contains(&kind);
    match id {
        Some(id) if answered => {
            let what = if kind.is_empty() { "raw command" } else { kind };
            state.pending.insert(
                id,
                Pending {
                    what: what.to_string(),
                    previous_room: None,
                },
            );
        }
        None if answered => state.anonymous += 1,
        _ => {}
    }
    Action::Send(line.to_string())
}

/// Every command type (an unknown one is answered with `bad_request`).
const KNOWN: &[&str] = &[
    "hello", "join", "leave", "publish", "send", "received", "read", "history", "presence", "ping",
];

/// The text of a message body: `{"text": …}` or a string as is, anything
/// else as JSON.
fn body_text(body: &Value) -> String {
    match body {
        Value::String(s) => s.clone(),
        Value::Object(o) => match o.get("text") {
            Some(Value::String(s)) if o.len() == 1 => s.clone(),
            _ => body.to_string(),
        },
        other => other.to_string(),
    }
}

fn str_of<'a>(event: &'a Map<String, Value>, key: &str) -> &'a str {
    event.get(key).and_then(Value::as_str).unwrap_or("?")
}

fn num_of(event: &Map<String, Value>, key: &str) -> u64 {
    event.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn message_line(event: &Map<String, Value>) -> String {
    let body = body_text(event.get("body").unwrap_or(&Value::Null));
    format!(
        "[{} #{}] {}: {body}",
        str_of(event, "room"),
        num_of(event, "seq"),
        str_of(event, "from")
    )
}

fn direct_line(state: &State, event: &Map<String, Value>) -> String {
    let body = body_text(event.get("body").unwrap_or(&Value::Null));
    let name = |user: &str| {
        if user == state.me {
            "you".to_string()
        } else {
            user.to_string()
        }
    };
    format!(
        "{} → {}: {body}",
        name(str_of(event, "from")),
        name(str_of(event, "to"))
    )
}

/// One server event. `Some(code)`: the client must exit with it.
fn event(state: &mut State, text: &str) -> Option<i32> {
    let Ok(Value::Object(event)) = serde_json::from_str::<Value>(text) else {
        say(format!("? {text}"));
        return None;
    };
    let id = match event.get("id") {
        Some(Value::String(id)) => Some(id.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let kind = str_of(&event, "type");
    let pending = id.as_ref().and_then(|id| state.pending.remove(id));
    if id.is_none() && state.anonymous > 0 && answers_anonymous(kind, &event) {
        state.anonymous -= 1;
    }
    if kind == "welcome" {
        state.awaiting_welcome = false;
        state.me = str_of(&event, "user").to_string();
    }
    if kind == "direct" && str_of(&event, "to") == state.me {
        state.inbox_seen = state.inbox_seen.max(num_of(&event, "seq"));
    }
    if kind == "error"
        && str_of(&event, "code") == "unauthorized"
        && state.awaiting_welcome
        && !state.has_token
    {
        // Waiting out --hello-timeout would only end in the same refusal.
        say(format!(
            "error: unauthorized: {}",
            str_of(&event, "message")
        ));
        say("this server has authentication on: connect with --token (`switchboard token --user NAME` mints one for development)");
        return Some(1);
    }
    if state.raw {
        say(text);
        return None;
    }
    match kind {
        "welcome" => {
            say(format!("* connected as {}", state.me));
            if let Some(warning) = event.get("warning").and_then(Value::as_str) {
                say(format!("warning: {warning}"));
            }
            if state.interactive && pending.is_none() {
                say("* type /help for the commands");
            }
        }
        "joined" => {
            let room = str_of(&event, "room");
            say(format!(
                "* joined {room} ({} online, latest #{})",
                num_of(&event, "online"),
                num_of(&event, "seq")
            ));
        }
        "left" => say(format!("* left {}", str_of(&event, "room"))),
        "ack" => {
            let duplicate = if event.get("duplicate") == Some(&Value::Bool(true)) {
                ", a resend: stored once"
            } else {
                ""
            };
            if let Some(to) = event.get("to").and_then(Value::as_str) {
                say(format!(
                    "  ✓ to {to} #{} (stored; {} connection(s) online{duplicate})",
                    num_of(&event, "seq"),
                    num_of(&event, "delivered")
                ));
            } else {
                say(format!(
                    "  ✓ {} #{} (delivered to {}{duplicate})",
                    str_of(&event, "room"),
                    num_of(&event, "seq"),
                    num_of(&event, "delivered")
                ));
            }
        }
        "message" => say(message_line(&event)),
        "direct" => say(direct_line(state, &event)),
        "presence" => {
            let room = str_of(&event, "room");
            let online = num_of(&event, "online");
            match event.get("event").and_then(Value::as_str) {
                Some("join") => say(format!(
                    "* {} joined {room} ({online} online)",
                    str_of(&event, "user")
                )),
                Some("leave") => say(format!(
                    "* {} left {room} ({online} online)",
                    str_of(&event, "user")
                )),
                _ => {
                    let users: Vec<&str> = event
                        .get("users")
                        .and_then(Value::as_array)
                        .map(|u| u.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    say(format!(
                        "* in {room}: {online} online: {}",
                        users.join(", ")
                    ));
                }
            }
        }
        "history" => {
            let empty = Vec::new();
            let messages = event
                .get("messages")
                .and_then(Value::as_array)
                .unwrap_or(&empty);
            let of = match event.get("with").and_then(Value::as_str) {
                Some(user) => format!("conversation with {user}"),
                None => str_of(&event, "room").to_string(),
            };
            say(format!("* history of {of}: {} message(s)", messages.len()));
            for message in messages {
                if let Value::Object(m) = message {
                    match m.get("type").and_then(Value::as_str) {
                        Some("direct") => say(format!("  {}", direct_line(state, m))),
                        _ => say(format!("  {}", message_line(m))),
                    }
                }
            }
            if event.get("truncated") == Some(&Value::Bool(true)) {
                say("  (more before these: page with a raw history command and `before`)");
            }
        }
        "reset" => {
            if event.get("inbox") == Some(&Value::Bool(true)) {
                say(format!(
                    "* direct messages up to #{} were skipped (too many, or expired): /history @USER",
                    num_of(&event, "seq")
                ));
            } else {
                say(format!(
                    "* {}: messages up to #{} are no longer held",
                    str_of(&event, "room"),
                    num_of(&event, "seq")
                ));
            }
        }
        "read" => say(format!(
            "* {} read your messages up to #{}",
            str_of(&event, "by"),
            num_of(&event, "upto")
        )),
        "pong" => say("* pong"),
        "error" => {
            let context = pending
                .as_ref()
                .map(|p| format!(" ({})", p.what))
                .unwrap_or_default();
            say(format!(
                "error{context}: {}: {}",
                str_of(&event, "code"),
                str_of(&event, "message")
            ));
            if let Some(Pending {
                previous_room: Some(previous),
                ..
            }) = pending
            {
                state.room = previous;
            }
        }
        _ => say(text),
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url = |u: &str, user, device| ws_url(u, user, device).unwrap_or_else(|e| e.to_string());
        assert_eq!(url("ws://h:1/ws", None, None), "ws://h:1/ws");
        assert_eq!(url("http://h:1", Some("ann"), None), "ws://h:1/ws?user=ann");
        assert_eq!(url("https://h/", None, Some("pc")), "wss://h/ws?device=pc");
        assert_eq!(
            url("h:1", Some("李 雷"), None),
            "ws://h:1/ws?user=%E6%9D%8E%20%E9%9B%B7"
        );
        assert_eq!(
            url("ws://h/ws?user=x&a=1", Some("y"), None),
            "ws://h/ws?a=1&user=y"
        );
        assert!(url("ftp://h", None, None).contains("unsupported scheme"));
    }

    #[test]
    fn bodies() {
        assert_eq!(body_text(&json!({"text": "hi"})), "hi");
        assert_eq!(body_text(&json!("hi")), "hi");
        assert_eq!(
            body_text(&json!({"text": "hi", "x": 1})),
            r#"{"text":"hi","x":1}"#
        );
        assert_eq!(body_text(&json!(null)), "null");
    }
}
