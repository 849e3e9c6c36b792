//! The systems the Node.js tutorials build by hand, each end to end against
//! the real binary.

mod common;

use common::{Client, Ended, RawClient, Server};
use serde_json::json;

/// Four users in a room: each message reaches the other three; the sender
/// gets an ack instead of its own message.
#[tokio::test]
async fn broadcast_chat() {
    let server = Server::start();
    let names = ["ann", "bob", "cy", "dee"];
    let mut clients = Vec::new();
    for name in names {
        let mut c = server.connect(name).await;
        c.join("chat").await;
        clients.push(c);
    }
    // Drain the presence joins of those who came later.
    for (i, c) in clients.iter_mut().enumerate() {
        for later in &names[i + 1..] {
            let p = c.expect("presence").await;
            assert_eq!(p["event"], "join");
            assert_eq!(p["user"], *later);
        }
    }
    for sender in 0..names.len() {
        let text = format!("hello from {}", names[sender]);
        let ack = clients[sender].publish("chat", json!({"text": text})).await;
        assert_eq!(ack["delivered"], 3);
        assert_eq!(ack["seq"], sender as u64 + 1);
        for (i, c) in clients.iter_mut().enumerate() {
            if i == sender {
                continue;
            }
            let m = c.expect("message").await;
            assert_eq!(m["room"], "chat");
            assert_eq!(m["from"], names[sender]);
            assert_eq!(m["body"]["text"], text);
            assert_eq!(m["seq"], ack["seq"]);
            assert!(m["ts"].as_u64().unwrap() > 1_600_000_000_000);
        }
    }
    // Nobody got their own message back, nor anything else.
    for c in &mut clients {
        c.expect_nothing_pending().await;
    }
}

/// A `send` to a user id reaches only that user.
#[tokio::test]
async fn user_id_routing() {
    let server = Server::start();
    let mut ann = server.connect("ann").await;
    let mut bob = server.connect("bob").await;
    let mut cy = server.connect("cy").await;
    let ack = ann
        .request(json!({"type": "send", "to": "bob", "body": {"text": "psst"}}))
        .await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["delivered"], 1);
    assert_eq!(ack["stored"], true);
    let d = bob.expect("direct").await;
    assert_eq!(d["from"], "ann");
    assert_eq!(d["to"], "bob");
    assert_eq!(d["body"]["text"], "psst");
    assert_eq!(d["seq"], ack["seq"]);
    assert_eq!(
        d["gid"], ack["gid"],
        "the ack places the message in the conversation"
    );
    cy.expect_nothing_pending().await;
    ann.expect_nothing_pending().await;
    // Sending to a user who is not online delivers nothing.
    let ack = ann
        .request(json!({"type": "send", "to": "nobody", "body": 1}))
        .await;
    assert_eq!(ack["delivered"], 0);
}

/// Phone → PC: a user with two connections gets the direct on both; the
/// sender's ack says delivered: 2; the sender's other connections get a copy.
#[tokio::test]
async fn multi_device_push() {
    let server = Server::start();
    let mut pc = server.connect("alice").await;
    let mut tablet = server.connect("alice").await;
    let mut phone = server.connect("bob").await;
    let mut bob_pc = server.connect("bob").await;
    let ack = phone
        .request(json!({"type": "send", "to": "alice", "body": {"url": "https://example.com"}}))
        .await;
    assert_eq!(ack["delivered"], 2);
    assert_eq!(ack["seq"], 1);
    for device in [&mut pc, &mut tablet] {
        let d = device.expect("direct").await;
        assert_eq!(d["from"], "bob");
        assert_eq!(d["body"]["url"], "https://example.com");
        assert_eq!(d["seq"], 1);
    }
    let copy = bob_pc.expect("direct").await;
    assert_eq!(copy["from"], "bob");
    assert_eq!(copy["to"], "alice");
    phone.expect_nothing_pending().await;
    // Per-recipient seq increases.
    let ack = phone
        .request(json!({"type": "send", "to": "alice", "body": 2}))
        .await;
    assert_eq!(ack["seq"], 2);
}

/// Several rooms, per-room online counts (users, not connections), presence
/// join/leave events, a presence query, and leave on a dead connection.
#[tokio::test]
async fn rooms() {
    let server = Server::start();
    let mut ann = server.connect("ann").await;
    let j = ann.join("red").await;
    assert_eq!(j["online"], 1);
    assert_eq!(j["seq"], 0);
    ann.join("blue").await;

    let mut bob = server.connect("bob").await;
    assert_eq!(bob.join("red").await["online"], 2);
    let p = ann.expect("presence").await;
    assert_eq!(
        p,
        json!({"type": "presence", "room": "red", "event": "join", "user": "bob", "online": 2})
    );

    // Bob's second connection does not change the count or announce anything.
    let mut bob2 = server.connect("bob").await;
    assert_eq!(bob2.join("red").await["online"], 2);
    ann.expect_nothing_pending().await;

    let list = ann
        .request(json!({"type": "presence", "room": "red"}))
        .await;
    assert_eq!(list["online"], 2);
    assert_eq!(list["users"], json!(["ann", "bob"]));
    let list = ann
        .request(json!({"type": "presence", "room": "blue"}))
        .await;
    assert_eq!(list["users"], json!(["ann"]));

    // Messages stay in their room.
    bob.publish("red", json!("to red")).await;
    assert_eq!(ann.expect("message").await["room"], "red");
    assert_eq!(bob2.expect("message").await["body"], "to red");
    let err = bob
        .request(json!({"type": "publish", "room": "blue", "body": 1}))
        .await;
    assert_eq!(err["code"], "not_joined");

    // One of Bob's connections leaves: he is still online.
    let left = bob.request(json!({"type": "leave", "room": "red"})).await;
    assert_eq!(left["type"], "left");
    ann.expect_nothing_pending().await;

    // His last connection dies without a close frame: presence leave.
    let mut raw = RawClient::connect(&server, "/ws?user=cy").await;
    raw.send_text(r#"{"type":"join","room":"red"}"#).await;
    let p = ann.expect("presence").await;
    assert_eq!(
        (
            p["event"].as_str(),
            p["user"].as_str(),
            p["online"].as_u64()
        ),
        (Some("join"), Some("cy"), Some(3))
    );
    bob2.expect("presence").await;
    drop(raw);
    let p = ann.expect("presence").await;
    assert_eq!(
        p,
        json!({"type": "presence", "room": "red", "event": "leave", "user": "cy", "online": 2})
    );
    bob2.expect("presence").await;

    drop(bob2);
    let p = ann.expect("presence").await;
    assert_eq!(
        p,
        json!({"type": "presence", "room": "red", "event": "leave", "user": "bob", "online": 1})
    );
    let list = ann
        .request(json!({"type": "presence", "room": "red"}))
        .await;
    assert_eq!(list["users"], json!(["ann"]));
}

/// `hello` identifies a connection that did not give `?user=`; without it a
/// connection becomes a guest on its first command.
#[tokio::test]
async fn hello_and_guests() {
    let server = Server::start();
    let mut c = Client::connect(&server.url("/ws")).await;
    let w = c.request(json!({"type": "hello", "user": "小明"})).await;
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["user"], "小明");
    assert!(w["session"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(w["heartbeat"], 25);
    let again = c.request(json!({"type": "hello", "user": "other"})).await;
    assert_eq!(again["code"], "bad_request");

    let mut g = Client::connect(&server.url("/ws")).await;
    g.send(json!({"type": "ping", "id": 1})).await;
    let w = g.expect("welcome").await;
    assert!(w["user"].as_str().unwrap().starts_with("guest-"));
    assert_eq!(g.expect("pong").await["id"], 1);
}

/// Server ping frames every interval; app-level ping/pong; a silent peer is
/// closed after two intervals and its presence leave is broadcast.
#[tokio::test]
async fn heartbeat() {
    let server = Server::start_with(&["--heartbeat", "300ms"]);
    let mut ann = server.connect("ann").await;
    ann.join("room").await;
    let pong = ann.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");

    // A raw client that never answers pings (and sends nothing else).
    let mut raw = RawClient::connect(&server, "/ws?user=ghost").await;
    raw.send_text(r#"{"type":"join","room":"room"}"#).await;
    assert_eq!(ann.expect("presence").await["event"], "join");

    // Ann sees ping frames; tungstenite answers them for her.
    use futures_util::StreamExt;
    let mut pings = 0;
    let mut leave = None;
    while leave.is_none() {
        let msg = tokio::time::timeout(common::TIMEOUT, ann.ws.next())
            .await
            .expect("timeout")
            .unwrap()
            .unwrap();
        match msg {
            tokio_tungstenite::tungstenite::Message::Ping(_) => pings += 1,
            tokio_tungstenite::tungstenite::Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["type"], "presence");
                leave = Some(v);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let leave = leave.unwrap();
    assert_eq!(leave["event"], "leave");
    assert_eq!(leave["user"], "ghost");
    assert!(pings >= 2, "saw {pings} pings before the ghost was dropped");
    // Ann, who answered every ping, is still connected.
    ann.expect_nothing_pending().await;
    assert!(server.metric("switchboard_heartbeat_timeouts_total").await >= 1.0);
    let _ = Ended::Dropped;
}
