//! Parked connections (`gateway/park.rs`): an idle plain-TCP WebSocket
//! leaves its task and waits in the server's own epoll. These tests hold
//! connections parked (`switchboard_connections_parked` says when) and
//! check what an idle connection meets: pings both ways and the heartbeat
//! (answered without leaving the parking), a message, the hello deadline,
//! the peer going away; and that `--park-idle off` parks nothing.

mod common;

use std::time::Duration;

use common::{masked_frame, Client, RawClient, Server, TIMEOUT};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PARKED: &str = "switchboard_connections_parked";
const CONNECTIONS: &str = "switchboard_connections";
const RESUMES: &str = "switchboard_connections_resumed_total";

/// Waits until the server's metric `name` reads `want`.
async fn until_metric(server: &Server, name: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let value = server.metric(name).await;
        if value == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} is {value}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// As [`until_metric`], while `client` keeps reading (tungstenite answers
/// the server's pings only while it is read); text events are returned.
async fn until_metric_reading(
    server: &Server,
    client: &mut Client,
    name: &str,
    want: f64,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut events = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tokio::select! {
            message = client.ws.next() => match message {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                    events.push(serde_json::from_str(&text).expect("JSON event"));
                }
                Some(Ok(_)) => {}
                other => panic!("connection ended: {other:?}"),
            },
            _ = tick.tick() => {
                if server.metric(name).await == want {
                    return events;
                }
                assert!(tokio::time::Instant::now() < deadline, "{name} never reached {want}");
            }
        }
    }
}

/// The next frame from the server (unmasked, at most 64 KiB): opcode and
/// payload.
async fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    tokio::time::timeout(TIMEOUT, async {
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await.expect("frame head");
        let len = match head[1] & 0x7f {
            126 => usize::from(stream.read_u16().await.expect("length")),
            127 => panic!("unexpectedly large frame"),
            n => usize::from(n),
        };
        let mut payload = vec![0; len];
        stream.read_exact(&mut payload).await.expect("payload");
        (head[0] & 0x0f, payload)
    })
    .await
    .expect("timed out waiting for a frame")
}

/// The next text frame as JSON, skipping pings (unanswered).
async fn read_event(stream: &mut TcpStream) -> Value {
    loop {
        match read_frame(stream).await {
            (0x1, text) => return serde_json::from_slice(&text).expect("JSON event"),
            (0x9, _) => continue,
            (opcode, payload) => panic!("unexpected frame {opcode:#x} {payload:?}"),
        }
    }
}

#[tokio::test]
async fn a_parked_connection_answers_pings_and_the_heartbeat_without_a_task() {
    let server = Server::start_with(&["--heartbeat", "300ms"]);
    let mut raw = RawClient::connect(&server, "/ws?user=idle").await;
    assert_eq!(read_event(&mut raw.stream).await["type"], "welcome");
    until_metric(&server, PARKED, 1.0).await;

    // The client's ping is answered from the parking.
    raw.stream
        .write_all(&masked_frame(0x9, b"are you there"))
        .await
        .unwrap();
    assert_eq!(
        read_frame(&mut raw.stream).await,
        (0xA, b"are you there".to_vec())
    );

    // Three heartbeats: more than the two intervals after which a silent
    // peer is closed, so the pongs were taken as signs of life.
    for _ in 0..3 {
        let (opcode, payload) = read_frame(&mut raw.stream).await;
        assert_eq!(opcode, 0x9, "a heartbeat ping");
        raw.stream
            .write_all(&masked_frame(0xA, &payload))
            .await
            .unwrap();
    }
    // An unsolicited pong is fine too.
    raw.stream.write_all(&masked_frame(0xA, b"")).await.unwrap();
    assert_eq!(
        server.metric("switchboard_heartbeat_timeouts_total").await,
        0.0
    );
    // None of it took the connection out of the parking (not even for a
    // moment: it would have parked again at once, its first resumes).
    assert_eq!(server.metric(RESUMES).await, 0.0);
    assert_eq!(server.metric(PARKED).await, 1.0);
    assert_eq!(server.metric(CONNECTIONS).await, 1.0);

    // A command does, and is answered.
    raw.send_text(r#"{"type":"ping","id":"p"}"#).await;
    let pong = read_event(&mut raw.stream).await;
    assert_eq!((&pong["type"], &pong["id"]), (&json!("pong"), &json!("p")));
}

#[tokio::test]
async fn a_silent_parked_connection_is_still_closed_by_the_heartbeat() {
    let server = Server::start_with(&["--heartbeat", "200ms"]);
    let mut raw = RawClient::connect(&server, "/ws?user=silent").await;
    assert_eq!(read_event(&mut raw.stream).await["type"], "welcome");
    until_metric(&server, PARKED, 1.0).await;
    // Pings it never answers; then the heartbeat's close (4009).
    let close = loop {
        match read_frame(&mut raw.stream).await {
            (0x9, _) => continue,
            (0x8, payload) => break payload,
            other => panic!("unexpected frame {other:?}"),
        }
    };
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 4009);
    until_metric(&server, CONNECTIONS, 0.0).await;
    assert_eq!(server.metric(PARKED).await, 0.0);
}

#[tokio::test]
async fn messages_reach_parked_connections_which_park_again() {
    let server = Server::start_with(&["--park-idle", "always"]);
    let mut ann = server.connect("ann").await;
    ann.join("room").await;
    let mut bob = server.connect("bob").await;
    bob.join("room").await;
    assert_eq!(ann.expect("presence").await["event"], "join");
    until_metric(&server, PARKED, 2.0).await;

    for n in 0..3 {
        let ack = bob
            .request(json!({"type": "publish", "room": "room", "body": n}))
            .await;
        assert_eq!(ack["type"], "ack");
        let message = ann.expect("message").await;
        assert_eq!(message["body"], n);
        until_metric(&server, PARKED, 2.0).await;
    }
    ann.expect_nothing_pending().await;
}

#[tokio::test]
async fn a_quiet_connection_parks_again_after_a_heartbeat_interval() {
    let server = Server::start_with(&["--heartbeat", "300ms", "--park-idle", "quiet"]);
    let mut ann = server.connect("ann").await;
    // Joining takes it out of the parking (it parked after its welcome);
    // one of its first commands, so it parks again at once.
    ann.join("room").await;
    until_metric(&server, PARKED, 1.0).await;
    // After its first four resumes a connection stays in its task while
    // it is busy: join and three pings, and the fourth ping is the fifth.
    for _ in 0..4 {
        assert_eq!(ann.request(json!({"type": "ping"})).await["type"], "pong");
    }
    assert_eq!(server.metric(PARKED).await, 0.0);
    // Quiet for a whole interval: it parks at the next heartbeat.
    let events = until_metric_reading(&server, &mut ann, PARKED, 1.0).await;
    assert!(events.is_empty(), "{events:?}");

    let mut bob = server.connect("bob").await;
    bob.join("room").await;
    // Bob's own first commands resume him; after five he stays in his task.
    for _ in 0..4 {
        bob.request(json!({"type": "ping"})).await;
    }
    // The presence change reached Ann where she is parked.
    let join = ann.expect("presence").await;
    assert_eq!(
        (&join["event"], &join["user"]),
        (&json!("join"), &json!("bob"))
    );
    // Messages too: written to her socket by the thread that delivers
    // them, without putting her connection back into a task.
    let resumes = server.metric(RESUMES).await;
    for n in 0..3 {
        bob.request(json!({"type": "publish", "room": "room", "body": n}))
            .await;
        assert_eq!(ann.expect("message").await["body"], n);
    }
    assert_eq!(server.metric(RESUMES).await, resumes);
    assert_eq!(server.metric(PARKED).await, 1.0);
}

/// Publishes `bodies` to room "room" through the HTTP API, one request
/// each, and waits for each to reach `member`.
async fn publish_via_api(
    server: &Server,
    key: &str,
    member: &mut Client,
    bodies: std::ops::Range<usize>,
) {
    for n in bodies {
        let body = json!({"body": n}).to_string();
        let (status, reply) = server
            .http("POST", "/api/rooms/room/messages", Some(key), Some(&body))
            .await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(member.expect("message").await["body"], n);
    }
}

/// Frames to a parked connection beyond what the parking writes itself put
/// it back into its task, and there it stays while they keep coming: were
/// it parked again at once, the first frames of each next burst would again
/// be written on the delivering thread (a 10,000-subscriber channel spent
/// its first seconds so).
#[tokio::test]
async fn a_connection_resumed_by_traffic_to_it_stays_in_its_task() {
    const KEY: &str = "park-test-api-key";
    let server = Server::start_with(&["--api-key", KEY, "--heartbeat", "60s"]);
    let mut ann = server.connect("ann").await;
    // Her join resumes her, and as one of her first commands she parks
    // again at once.
    ann.join("room").await;
    until_metric(&server, PARKED, 1.0).await;
    // More than the parking writes (8): resumed into her task.
    publish_via_api(&server, KEY, &mut ann, 0..12).await;
    let resumes = server.metric(RESUMES).await;
    assert!(resumes >= 2.0, "{resumes}");
    assert_eq!(server.metric(PARKED).await, 0.0);
    // The next burst finds her in her task: no further resume.
    publish_via_api(&server, KEY, &mut ann, 12..24).await;
    assert_eq!(server.metric(RESUMES).await, resumes);
    assert_eq!(server.metric(PARKED).await, 0.0);
}

#[tokio::test]
async fn the_hello_deadline_fires_while_parked() {
    let server = Server::start_with(&["--hello-timeout", "300ms"]);
    // No `?user=`: the server waits for `hello`, then makes it a guest.
    let mut raw = RawClient::connect(&server, "/ws").await;
    until_metric(&server, PARKED, 1.0).await;
    let welcome = read_event(&mut raw.stream).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert!(
        welcome["user"]
            .as_str()
            .is_some_and(|user| user.starts_with("guest")),
        "{welcome}"
    );
}

#[tokio::test]
async fn a_parked_connection_whose_peer_goes_away_is_cleaned_up() {
    let server = Server::start();
    let mut gone = RawClient::connect(&server, "/ws?user=gone").await;
    assert_eq!(read_event(&mut gone.stream).await["type"], "welcome");
    // Its welcome stays unread.
    let reset = RawClient::connect(&server, "/ws?user=reset").await;
    until_metric(&server, PARKED, 2.0).await;

    // One closes its side (FIN); the other closes with unread bytes, which
    // makes the kernel reset the connection (RST).
    gone.stream.shutdown().await.unwrap();
    drop(reset);
    until_metric(&server, CONNECTIONS, 0.0).await;
    assert_eq!(server.metric(PARKED).await, 0.0);
    // The server answered the half-close with its close frame.
    let (opcode, _) = read_frame(&mut gone.stream).await;
    assert_eq!(opcode, 0x8);
}

#[tokio::test]
async fn park_idle_off_keeps_idle_connections_in_their_tasks() {
    let server = Server::start_with(&["--park-idle", "off", "--heartbeat", "200ms"]);
    let mut raw = RawClient::connect(&server, "/ws?user=kept").await;
    assert_eq!(read_event(&mut raw.stream).await["type"], "welcome");
    // By its first heartbeat ping a connection would have parked long ago.
    let (opcode, payload) = read_frame(&mut raw.stream).await;
    assert_eq!(opcode, 0x9);
    raw.stream
        .write_all(&masked_frame(0xA, &payload))
        .await
        .unwrap();
    assert_eq!(server.metric(PARKED).await, 0.0);
    assert_eq!(server.metric(CONNECTIONS).await, 1.0);
}

/// Connections that park and resume thousands of times, woken both ways
/// at once (their own commands, and messages pushed to them): every reply
/// and every message arrives. (A parking that registered its waker after
/// making the connection resumable could replace the waker of the task
/// that had just resumed it, which then waited forever; that race showed
/// once in about ten runs of the whole suite, and this test did not catch
/// it in eight runs: its window is a few instructions wide.)
#[tokio::test]
async fn connections_parking_and_resuming_under_load_lose_nothing() {
    const CLIENTS: usize = 12;
    const ROUNDS: usize = 200;
    let server = Server::start_with(&["--park-idle", "always", "--rate-limit", "0"]);
    let mut joined = Vec::new();
    for c in 0..CLIENTS {
        let mut client = server.connect(&format!("u{c}")).await;
        client.join("busy").await;
        joined.push(client);
    }
    let mut tasks = Vec::new();
    for mut client in joined {
        tasks.push(tokio::spawn(async move {
            let mut messages = 0;
            for round in 0..ROUNDS {
                let id = client
                    .command(json!({"type": "publish", "room": "busy", "body": round}))
                    .await;
                // Everyone else's messages arrive in between our ack.
                loop {
                    let event = client.recv().await;
                    match event["type"].as_str() {
                        Some("ack") if event["id"] == id => break,
                        Some("message") => messages += 1,
                        Some("presence") => {}
                        _ => panic!("unexpected {event}"),
                    }
                }
            }
            (client, messages)
        }));
    }
    let mut clients = Vec::new();
    let mut received = 0;
    for task in tasks {
        let (client, messages) = task.await.unwrap();
        received += messages;
        clients.push(client);
    }
    // Each client gets every other client's messages: what has not come
    // before its last ack comes before the others' `done` (a room's
    // messages arrive in seq order).
    for client in &mut clients {
        client
            .command(json!({"type": "publish", "room": "busy", "body": "done"}))
            .await;
    }
    for client in &mut clients {
        let mut done = 0;
        while done < CLIENTS - 1 {
            let event = client.recv().await;
            match (event["type"].as_str(), event["body"].as_str()) {
                (Some("message"), Some("done")) => done += 1,
                (Some("message"), _) => received += 1,
                _ => {}
            }
        }
    }
    assert_eq!(received, CLIENTS * (CLIENTS - 1) * ROUNDS);
}

/// One fan-out writes at most 1,024 frames to parked connections on its
/// own thread (`hub::fan_out`); the parked members past that are resumed
/// into their tasks, which spread the sends over the runtime's workers.
/// Without the budget a 10,000-subscriber channel spent its first second
/// writing 8 frames to each subscriber on one thread.
#[tokio::test]
async fn a_fan_out_past_its_inline_budget_resumes_the_rest_of_the_parked_members() {
    const INLINE: usize = switchboard_server::hub::fan_out::INLINE_PER_FAN_OUT;
    const SUBSCRIBERS: usize = INLINE + 76;
    let server = Server::start_with(&[
        "--max-connections-per-ip",
        "0",
        "--connect-rate-per-ip",
        "0",
        "--heartbeat",
        "60s",
    ]);
    let mut subscribers = Vec::with_capacity(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        subscribers.push(RawClient::connect(&server, "/relay/wide").await);
    }
    let mut publisher = RawClient::connect(&server, "/relay/wide").await;
    until_metric(&server, PARKED, (SUBSCRIBERS + 1) as f64).await;
    let before = server.metric(RESUMES).await;

    publisher.send_text("one").await;
    for subscriber in &mut subscribers {
        assert_eq!(
            read_frame(&mut subscriber.stream).await,
            (0x1, b"one".to_vec())
        );
    }
    // The publisher, resumed by its frame, and the 76 members past the
    // budget.
    let resumed = server.metric(RESUMES).await - before;
    assert_eq!(resumed, (1 + SUBSCRIBERS - INLINE) as f64);

    // The next message: the 1,024 still parked take it inline, the others
    // in their tasks; only the publisher is resumed again (as one of its
    // first commands, it parked again at once).
    publisher.send_text("two").await;
    for subscriber in &mut subscribers {
        assert_eq!(
            read_frame(&mut subscriber.stream).await,
            (0x1, b"two".to_vec())
        );
    }
    assert_eq!(server.metric(RESUMES).await - before, resumed + 1.0);
    assert!(server.metric(PARKED).await >= INLINE as f64);
}
