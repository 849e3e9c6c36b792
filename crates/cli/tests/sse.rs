//! The HTTP fallback transport (`GET /sse` + `POST /sse/SESSION`) over real
//! HTTP: the `/ws` protocol with the same identity, limits, heartbeat and
//! presence, and resume of a broken stream by `Last-Event-ID`.

mod common;

use std::time::Duration;

use common::{Server, TIMEOUT};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One server-sent event.
#[derive(Debug, Clone, Default)]
struct Event {
    id: Option<String>,
    kind: String,
    data: String,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {:?}", self.data))
    }
}

/// An open `GET /sse` response, read as a browser's EventSource would.
struct Stream {
    reader: BufReader<TcpStream>,
    /// Bytes of the current chunk still to read (chunked encoding).
    chunk_left: usize,
    /// Decoded body text not yet consumed as lines.
    text: String,
    /// Comment lines seen (`: ping`).
    comments: usize,
    ended: bool,
}

/// The answer to `GET /sse`: a stream, or a refusal with its status.
enum Opened {
    Stream(Stream),
    Refused(u16, String),
}

async fn open(server: &Server, query: &str, headers: &[(&str, &str)]) -> Opened {
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let mut request = format!(
        "GET /sse{query} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n",
        server.addr
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut reader = BufReader::new(tcp);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(TIMEOUT, reader.read_line(&mut line))
            .await
            .expect("response head in time")
            .expect("read");
        assert!(n > 0, "connection closed in the head: {head}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status: u16 = head[9..12].parse().expect("status");
    let lower = head.to_ascii_lowercase();
    if status != 200 {
        let length: usize = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await.expect("refusal body");
        return Opened::Refused(status, String::from_utf8_lossy(&body).into_owned());
    }
    assert!(lower.contains("content-type: text/event-stream"), "{head}");
    assert!(lower.contains("x-accel-buffering: no"), "{head}");
    assert!(lower.contains("transfer-encoding: chunked"), "{head}");
    Opened::Stream(Stream {
        reader,
        chunk_left: 0,
        text: String::new(),
        comments: 0,
        ended: false,
    })
}

async fn open_stream(server: &Server, query: &str, headers: &[(&str, &str)]) -> Stream {
    match open(server, query, headers).await {
        Opened::Stream(stream) => stream,
        Opened::Refused(status, body) => panic!("GET /sse{query} refused: {status} {body}"),
    }
}

impl Stream {
    /// More body text (one chunk's worth); false at the end of the body.
    async fn fill(&mut self) -> bool {
        if self.chunk_left == 0 {
            let mut size = String::new();
            if self.reader.read_line(&mut size).await.unwrap_or(0) == 0 {
                return false;
            }
            let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            if size == 0 {
                return false;
            }
            self.chunk_left = size;
        }
        let mut buf = vec![0; self.chunk_left];
        let n = self.reader.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return false;
        }
        self.chunk_left -= n;
        self.text
            .push_str(std::str::from_utf8(&buf[..n]).expect("UTF-8"));
        if self.chunk_left == 0 {
            let mut crlf = [0u8; 2];
            if self.reader.read_exact(&mut crlf).await.is_err() {
                return false;
            }
        }
        true
    }

    /// The next event, or `None` once the stream ended.
    async fn next(&mut self) -> Option<Event> {
        tokio::time::timeout(TIMEOUT, self.next_unbounded())
            .await
            .expect("an event in time")
    }

    async fn next_unbounded(&mut self) -> Option<Event> {
        let mut event = Event {
            kind: "message".into(),
            ..Event::default()
        };
        let mut fields = false;
        loop {
            while let Some(end) = self.text.find('\n') {
                let line: String = self.text.drain(..=end).collect();
                let line = line.trim_end_matches('\n');
                if line.is_empty() {
                    if fields {
                        return Some(event);
                    }
                    continue;
                }
                if line.starts_with(':') {
                    self.comments += 1;
                    continue;
                }
                let (name, value) = line.split_once(": ").unwrap_or((line, ""));
                match name {
                    "id" => event.id = Some(value.into()),
                    "event" => event.kind = value.into(),
                    "data" => event.data.push_str(value),
                    "retry" => {}
                    other => panic!("unknown field {other:?}"),
                }
                if name != "retry" {
                    fields = true;
                }
            }
            if self.ended || !self.fill().await {
                self.ended = true;
                return None;
            }
        }
    }

    /// The next protocol event (skipping none), as JSON, with its SSE id.
    async fn recv(&mut self) -> (String, Value) {
        let event = self.next().await.expect("stream ended");
        assert_eq!(event.kind, "message", "{event:?}");
        (event.id.clone().unwrap_or_default(), event.json())
    }

    async fn expect(&mut self, kind: &str) -> Value {
        let (_, event) = self.recv().await;
        assert_eq!(event["type"], kind, "{event}");
        event
    }

    /// The `session` event a stream starts with.
    async fn session(&mut self) -> (String, Value) {
        let event = self.next().await.expect("a session event");
        assert_eq!(event.kind, "session", "{event:?}");
        let data = event.json();
        (
            data["session"].as_str().unwrap_or_default().to_string(),
            data,
        )
    }

    /// The `close` event a stream ends with: (code, reason).
    async fn expect_close(&mut self) -> (u64, String) {
        loop {
            let event = self.next().await.expect("a close event before the end");
            if event.kind == "close" {
                let data = event.json();
                assert!(self.next().await.is_none(), "the stream ends after close");
                return (
                    data["code"].as_u64().unwrap_or(0),
                    data["reason"].as_str().unwrap_or("").to_string(),
                );
            }
        }
    }
}

/// `POST /sse/SESSION` with these command lines; status and body.
async fn post(
    server: &Server,
    session: &str,
    lines: &[Value],
    bearer: Option<&str>,
) -> (u16, String) {
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    post_raw(server, session, &body, bearer).await
}

async fn post_raw(
    server: &Server,
    session: &str,
    body: &str,
    bearer: Option<&str>,
) -> (u16, String) {
    send_raw(server, "POST", session, body, bearer).await
}

async fn send_raw(
    server: &Server,
    method: &str,
    session: &str,
    body: &str,
    bearer: Option<&str>,
) -> (u16, String) {
    send_with(server, method, session, body, bearer, None).await
}

async fn send_with(
    server: &Server,
    method: &str,
    session: &str,
    body: &str,
    bearer: Option<&str>,
    last_event_id: Option<&str>,
) -> (u16, String) {
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let mut request = format!(
        "{method} /sse/{session} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
        server.addr,
        body.len()
    );
    if let Some(token) = bearer {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(id) = last_event_id {
        request.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await.expect("write");
    tcp.write_all(body.as_bytes()).await.expect("write body");
    let mut response = String::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_string(&mut response))
        .await
        .expect("POST answered in time")
        .expect("read");
    let status = response[9..12].parse().expect("status");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A stream for `user` (auth off), past its `session` and `welcome`
/// events; and the session id.
async fn open_as(server: &Server, user: &str) -> (Stream, String) {
    let mut stream = open_stream(server, &format!("?user={user}"), &[]).await;
    let (session, _) = stream.session().await;
    stream.expect("welcome").await;
    (stream, session)
}

async fn post_ok(server: &Server, session: &str, lines: &[Value]) {
    let (status, body) = post(server, session, lines, None).await;
    assert_eq!(status, 204, "{body}");
}

#[tokio::test]
async fn an_sse_client_uses_every_command_with_websocket_clients() {
    let server = Server::start();
    let mut ann = open_stream(&server, "?user=ann&device=laptop", &[]).await;
    let (session, hello) = ann.session().await;
    assert_eq!(session.len(), 32, "{hello}");
    assert_eq!(hello["heartbeat"], 25_000);
    assert_eq!(hello["resumed"], false);
    assert_eq!(
        hello["user"], "ann",
        "identified by the query: no hello needed"
    );
    let welcome = ann.expect("welcome").await;
    assert_eq!(welcome["user"], "ann");

    let mut bob = server.connect("bob").await;
    bob.join("lobby").await;
    // Several commands in one POST run in order.
    post_ok(
        &server,
        &session,
        &[
            json!({"type": "join", "room": "lobby", "id": 1}),
            json!({"type": "publish", "room": "lobby", "body": {"text": "hi from sse"}, "id": 2}),
        ],
    )
    .await;
    let joined = ann.expect("joined").await;
    assert_eq!(
        (joined["id"].as_i64(), joined["online"].as_u64()),
        (Some(1), Some(2))
    );
    let ack = ann.expect("ack").await;
    assert_eq!(
        (ack["id"].as_i64(), ack["seq"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(bob.expect("presence").await["user"], "ann");
    let m = bob.expect("message").await;
    assert_eq!(
        (m["from"].as_str(), m["body"]["text"].as_str()),
        (Some("ann"), Some("hi from sse"))
    );

    // And back: a WebSocket user's message and direct reach the SSE user.
    bob.publish("lobby", json!({"text": "hi from ws"})).await;
    let (id, m) = ann.recv().await;
    assert_eq!(
        (m["type"].as_str(), m["body"]["text"].as_str()),
        (Some("message"), Some("hi from ws"))
    );
    assert!(id.starts_with(&format!("{session}:")), "{id}");
    bob.request(json!({"type": "send", "to": "ann", "body": "psst"}))
        .await;
    let d = ann.expect("direct").await;
    assert_eq!(
        (d["from"].as_str(), d["body"].as_str()),
        (Some("bob"), Some("psst"))
    );
    // `received` and `read` from the SSE side: bob gets the receipt.
    let upto = d["seq"].as_u64().unwrap_or(0);
    post_ok(
        &server,
        &session,
        &[
            json!({"type": "received", "upto": upto}),
            json!({"type": "read", "from": "bob", "upto": upto}),
        ],
    )
    .await;
    let receipt = bob.expect("read").await;
    assert_eq!(
        (receipt["by"].as_str(), receipt["upto"].as_u64()),
        (Some("ann"), Some(upto))
    );

    // The same presence: a user is a user, whatever carries them.
    let presence = bob
        .request(json!({"type": "presence", "room": "lobby"}))
        .await;
    assert_eq!(presence["users"], json!(["ann", "bob"]));
    post_ok(
        &server,
        &session,
        &[
            json!({"type": "history", "room": "lobby", "id": "h"}),
            json!({"type": "ping", "id": "p"}),
        ],
    )
    .await;
    // History is read from the store: its reply may come after the pong.
    let (_, first) = ann.recv().await;
    let (_, second) = ann.recv().await;
    let (history, pong) = if first["type"] == "history" {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(
        history["messages"].as_array().map(Vec::len),
        Some(2),
        "{history}"
    );
    assert_eq!(pong["id"], "p", "{pong}");

    // Bad input gets an error on the stream; the session goes on.
    post_ok(&server, &session, &[json!({"type": "nope", "id": 3})]).await;
    assert_eq!(ann.expect("error").await["code"], "bad_request");
    let (status, _) = post_raw(&server, &session, "{not json\n", None).await;
    assert_eq!(status, 204);
    assert_eq!(ann.expect("error").await["code"], "bad_request");

    // `leave` over SSE: bob sees ann go, ann gets `left`.
    post_ok(
        &server,
        &session,
        &[json!({"type": "leave", "room": "lobby", "id": "l"})],
    )
    .await;
    assert_eq!(ann.expect("left").await["id"], "l");
    let gone = bob.expect("presence").await;
    assert_eq!(
        (gone["user"].as_str(), gone["event"].as_str()),
        (Some("ann"), Some("leave"))
    );

    // Event ids count up by one, per session.
    post_ok(
        &server,
        &session,
        &[
            json!({"type": "ping", "id": "a"}),
            json!({"type": "ping", "id": "b"}),
        ],
    )
    .await;
    let (first, _) = ann.recv().await;
    let (second, _) = ann.recv().await;
    let n = |id: &str| {
        id.rsplit(':')
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(n(&second), n(&first) + 1);

    // Leaving by closing the stream: after the grace period, presence says so
    // (covered in the heartbeat test); an unknown session is 404.
    let (status, body) = post(&server, "0123", &[json!({"type": "ping"})], None).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not_found"), "{body}");
}

#[tokio::test]
async fn a_broken_stream_resumes_by_last_event_id_without_loss_or_duplicates() {
    let server = Server::start();
    let mut bob = server.connect("bob").await;
    bob.join("lobby").await;
    let (mut ann, session) = open_as(&server, "ann").await;
    post_ok(
        &server,
        &session,
        &[json!({"type": "join", "room": "lobby"})],
    )
    .await;
    ann.expect("joined").await;
    assert_eq!(bob.expect("presence").await["user"], "ann");
    bob.publish("lobby", json!(1)).await;
    let (last_id, m) = ann.recv().await;
    assert_eq!(m["seq"], 1);
    drop(ann);

    // While no stream is attached, events wait in the session.
    for n in 2..=4 {
        bob.publish("lobby", json!(n)).await;
    }
    let mut again = open_stream(&server, "?user=ann", &[("Last-Event-ID", &last_id)]).await;
    let (resumed_session, hello) = again.session().await;
    assert_eq!(resumed_session, session);
    assert_eq!(hello["resumed"], true);
    assert_eq!(hello["user"], "ann");
    let mut ids = Vec::new();
    for seq in 2..=4 {
        let (id, m) = again.recv().await;
        assert_eq!(
            (m["type"].as_str(), m["seq"].as_u64()),
            (Some("message"), Some(seq))
        );
        ids.push(id);
    }
    bob.publish("lobby", json!(5)).await;
    let (_, m) = again.recv().await;
    assert_eq!(m["seq"], 5, "live again, nothing twice");
    drop(again);

    // An id from further back gets those events again, with the same ids.
    let mut third = open_stream(&server, "?user=ann", &[("Last-Event-ID", &last_id)]).await;
    third.session().await;
    for (seq, id) in (2..=4).zip(&ids) {
        let (again_id, m) = third.recv().await;
        assert_eq!((&again_id, m["seq"].as_u64()), (id, Some(seq)));
    }
    drop(third);

    // An unknown session opens a new session instead.
    let mut fresh = open_stream(&server, "?user=ann", &[("Last-Event-ID", "feedbeef:3")]).await;
    let (other, hello) = fresh.session().await;
    assert_ne!(other, session);
    assert_eq!(hello["resumed"], false);
    fresh.expect("welcome").await;
    // So does ann's id presented by another user: none of ann's events.
    let mut mallory = open_stream(&server, "?user=mallory", &[("Last-Event-ID", &last_id)]).await;
    let (theirs, hello) = mallory.session().await;
    assert_ne!(theirs, session);
    assert_eq!(hello["resumed"], false);
    assert_eq!(mallory.expect("welcome").await["user"], "mallory");
}

#[tokio::test]
async fn auth_limits_and_origins_are_the_websocket_ones() {
    let secret = "sse-secret";
    let server = Server::start_with(&[
        "--jwt-secret",
        secret,
        "--allowed-origins",
        "https://chat.example.com",
        "--max-frame",
        "1KiB",
        "--hello-timeout",
        "300ms",
    ]);
    let token = |user: &str| common_token(secret, user);
    let ann_token = token("ann");

    // No token: as on /ws, the session waits for a `hello` with one, and
    // ends when none comes in time.
    let mut pending = open_stream(&server, "?user=ann", &[]).await;
    let (_, hello) = pending.session().await;
    assert!(hello.get("user").is_none(), "waits for a hello: {hello}");
    // Told at once that `?user=` is not enough...
    let error = pending.expect("error").await;
    assert_eq!(error["code"], "unauthorized");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .starts_with("a token is required"));
    // ...and ended when no token comes in time.
    let error = pending.expect("error").await;
    assert_eq!(error["message"], "no valid token received in time");
    assert_eq!(pending.expect_close().await.0, 4001);
    // A bad token: refused with a status EventSource does not retry.
    match open(&server, "?token=garbage", &[]).await {
        Opened::Refused(status, _) => assert_eq!(status, 401),
        Opened::Stream(_) => panic!("a stream with a bad token"),
    }
    // A foreign origin is refused as on /ws.
    match open(
        &server,
        &format!("?token={ann_token}"),
        &[("Origin", "https://evil.example.net")],
    )
    .await
    {
        Opened::Refused(status, _) => assert_eq!(status, 403),
        Opened::Stream(_) => panic!("a foreign origin got a stream"),
    }

    let mut ann = open_stream(
        &server,
        &format!("?token={ann_token}"),
        &[("Origin", "https://chat.example.com")],
    )
    .await;
    let (session, hello) = ann.session().await;
    assert_eq!(hello["user"], "ann", "identified by the token");
    assert_eq!(ann.expect("welcome").await["user"], "ann");

    // POSTs need a token for the same user.
    let ping = [json!({"type": "ping", "id": 1})];
    assert_eq!(post(&server, &session, &ping, None).await.0, 401);
    assert_eq!(
        post(&server, &session, &ping, Some(&token("mallory")))
            .await
            .0,
        401
    );
    assert_eq!(
        post(&server, &session, &ping, Some(&ann_token)).await.0,
        204
    );
    assert_eq!(ann.expect("pong").await["id"], 1);

    // A command over --max-frame is refused alone; the others run.
    let big = json!({"type": "publish", "room": "lobby", "body": "x".repeat(2000), "id": 2});
    let (status, _) = post(
        &server,
        &session,
        &[big, json!({"type": "ping", "id": 3})],
        Some(&ann_token),
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(ann.expect("error").await["code"], "too_large");
    assert_eq!(ann.expect("pong").await["id"], 3);
    // Too many commands in one POST.
    let many: Vec<Value> = (0..17).map(|n| json!({"type": "ping", "id": n})).collect();
    assert_eq!(
        post(&server, &session, &many, Some(&ann_token)).await.0,
        413
    );
}

#[tokio::test]
async fn a_session_opened_without_identity_says_so_and_takes_a_hello() {
    let server = Server::start();
    let mut anon = open_stream(&server, "", &[]).await;
    let (session, hello) = anon.session().await;
    assert!(hello.get("user").is_none(), "{hello}");
    post_ok(
        &server,
        &session,
        &[json!({"type": "hello", "user": "cid", "device": "tablet", "id": "h"})],
    )
    .await;
    let welcome = anon.expect("welcome").await;
    assert_eq!(
        (welcome["user"].as_str(), welcome["id"].as_str()),
        (Some("cid"), Some("h"))
    );
}

fn common_token(secret: &str, user: &str) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 3600;
    encode(
        &Header::default(),
        &json!({"sub": user, "exp": exp}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_else(|e| panic!("token: {e}"))
}

#[tokio::test]
async fn the_rate_limit_applies_per_session() {
    let server = Server::start_with(&["--rate-limit", "1", "--rate-burst", "2"]);
    let (mut ann, session) = open_as(&server, "ann").await;
    let pings: Vec<Value> = (0..3).map(|n| json!({"type": "ping", "id": n})).collect();
    post_ok(&server, &session, &pings).await;
    ann.expect("pong").await;
    ann.expect("pong").await;
    assert_eq!(ann.expect("error").await["code"], "rate_limited");
}

#[tokio::test]
async fn a_silent_session_is_reaped_and_a_posting_one_is_kept() {
    // 1 s: the busy session POSTs every 100 ms, far inside the two
    // intervals it is allowed, however slow a loaded machine makes a POST.
    let server = Server::start_with(&["--heartbeat", "1s"]);
    let mut quiet = open_stream(&server, "?user=quiet", &[]).await;
    quiet.session().await;
    quiet.expect("welcome").await;
    let mut busy = open_stream(&server, "?user=busy", &[]).await;
    let (busy_session, hello) = busy.session().await;
    assert_eq!(hello["heartbeat"], 1000);
    busy.expect("welcome").await;

    // The quiet one never POSTs: closed like a WebSocket that never pongs,
    // after the stream carried heartbeat comments.
    let keep_posting = async {
        loop {
            post_ok(&server, &busy_session, &[json!({"type": "ping"})]).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (code, reason) = tokio::select! {
        closed = quiet.expect_close() => closed,
        _ = keep_posting => unreachable!(),
    };
    assert_eq!(code, 4009, "{reason}");
    assert!(quiet.comments > 0, "heartbeat comments on the stream");
    // The one that POSTs is still there.
    post_ok(
        &server,
        &busy_session,
        &[json!({"type": "ping", "id": "still"})],
    )
    .await;
    loop {
        let (_, event) = busy.recv().await;
        if event["id"] == "still" {
            break;
        }
    }
}

#[tokio::test]
async fn an_abandoned_session_leaves_its_rooms_after_the_grace_period() {
    let server = Server::start_with(&["--heartbeat", "200ms"]);
    let mut bob = server.connect("bob").await;
    bob.join("lobby").await;
    let (ann, session) = open_as(&server, "ann").await;
    post_ok(
        &server,
        &session,
        &[json!({"type": "join", "room": "lobby"})],
    )
    .await;
    let join = bob.expect("presence").await;
    assert_eq!(
        (join["user"].as_str(), join["event"].as_str()),
        (Some("ann"), Some("join"))
    );
    drop(ann);
    let leave = bob.expect("presence").await;
    assert_eq!(
        (leave["user"].as_str(), leave["event"].as_str()),
        (Some("ann"), Some("leave"))
    );
    let (status, _) = post(&server, &session, &[json!({"type": "ping"})], None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_delete_ends_the_session_at_once() {
    // The default heartbeat: an abandoned session would stay for 50 s.
    let server = Server::start();
    let mut bob = server.connect("bob").await;
    bob.join("lobby").await;
    let (mut ann, session) = open_as(&server, "ann").await;
    post_ok(
        &server,
        &session,
        &[json!({"type": "join", "room": "lobby"})],
    )
    .await;
    assert_eq!(bob.expect("presence").await["event"], "join");

    assert_eq!(send_raw(&server, "DELETE", &session, "", None).await.0, 204);
    assert_eq!(
        ann.expect_close().await,
        (1000, "client closed".to_string())
    );
    let leave = bob.expect("presence").await;
    assert_eq!(
        (leave["user"].as_str(), leave["event"].as_str()),
        (Some("ann"), Some("leave"))
    );
    assert_eq!(
        post(&server, &session, &[json!({"type": "ping"})], None)
            .await
            .0,
        404
    );
    assert_eq!(send_raw(&server, "DELETE", &session, "", None).await.0, 404);
}

#[tokio::test]
async fn a_reader_that_stops_is_cut_off_without_slowing_the_room() {
    let server = Server::start_with(&["--max-queue", "64KiB", "--rate-limit", "0"]);
    let (mut stuck, session) = open_as(&server, "stuck").await;
    post_ok(
        &server,
        &session,
        &[json!({"type": "join", "room": "lobby"})],
    )
    .await;
    stuck.expect("joined").await;
    let mut bob = server.connect("bob").await;
    bob.join("lobby").await;
    let presence_before = bob
        .request(json!({"type": "presence", "room": "lobby"}))
        .await;
    assert_eq!(presence_before["users"], json!(["bob", "stuck"]));
    // `stuck` never reads again: its socket fills, then its queue, and it
    // leaves the room, while every publish is acked at once.
    let text = "y".repeat(16 * 1024);
    let mut left = false;
    for _ in 0..2000 {
        bob.command(json!({"type": "publish", "room": "lobby", "body": {"text": text}}))
            .await;
        let event = bob.recv().await;
        if event["type"] == "presence" {
            assert_eq!(
                (event["user"].as_str(), event["event"].as_str()),
                (Some("stuck"), Some("leave"))
            );
            left = true;
            break;
        }
        assert_eq!(event["type"], "ack", "{event}");
    }
    assert!(left, "the stuck reader was never dropped");
    let (status, _) = post(&server, &session, &[json!({"type": "ping"})], None).await;
    assert_eq!(status, 404);
    drop(stuck);
}

#[tokio::test]
async fn shutdown_ends_streams_with_a_close_event() {
    let mut server = Server::start();
    let mut ann = open_stream(&server, "?user=ann", &[]).await;
    ann.session().await;
    ann.expect("welcome").await;
    server.signal("TERM");
    let (code, _) = ann.expect_close().await;
    assert_eq!(code, 1001);
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
}

/// A session holds a place in the connection limits of its own (it outlives
/// the HTTP connections that carry it), besides its stream's connection.
#[tokio::test]
async fn sessions_count_in_the_connection_limits() {
    let server = Server::start_with(&["--max-connections", "3"]);

    let mut ann = open_stream(&server, "?user=ann", &[]).await;
    ann.session().await;
    ann.expect("welcome").await;

    // Its stream's connection and the session: 2 of 3. The next stream's
    // connection is the third, and its session is refused.
    match open(&server, "?user=bob", &[]).await {
        Opened::Refused(status, body) => {
            assert_eq!(status, 503, "{body}");
            assert!(body.contains("connection limit"), "{body}");
        }
        Opened::Stream(_) => panic!("a session beyond --max-connections"),
    }
}

/// A POST's `Last-Event-ID` confirms events: the session forgets them, so
/// a reattach from before that point gets a new session, from that point on
/// the same one.
#[tokio::test]
async fn posts_confirm_events_the_session_then_forgets() {
    let server = Server::start();
    let mut ann = open_stream(&server, "?user=ann", &[]).await;
    let (session, _) = ann.session().await;
    let (welcome_id, _) = ann.recv().await;
    post_ok(&server, &session, &[json!({"type": "ping", "id": 1})]).await;
    let (pong_id, pong) = ann.recv().await;
    assert_eq!(pong["type"], "pong");
    let (status, _) = send_with(
        &server,
        "POST",
        &session,
        "{\"type\":\"ping\",\"id\":2}\n",
        None,
        Some(&pong_id),
    )
    .await;
    assert_eq!(status, 204);
    ann.expect("pong").await;
    drop(ann);
    // The welcome was confirmed: not kept, so no reattach from before it.
    let mut before = open_stream(&server, "?user=ann", &[("Last-Event-ID", &welcome_id)]).await;
    let (other, hello) = before.session().await;
    assert_ne!(other, session);
    assert_eq!(hello["resumed"], false);
    drop(before);
    // From the confirmed one on, the same session.
    let mut after = open_stream(&server, "?user=ann", &[("Last-Event-ID", &pong_id)]).await;
    let (same, hello) = after.session().await;
    assert_eq!(
        (same.as_str(), hello["resumed"].as_bool()),
        (session.as_str(), Some(true))
    );
    assert_eq!(after.expect("pong").await["id"], 2);
}
