//! Raw relay, health, metrics and graceful shutdown.

mod common;

use std::time::Duration;

use common::{Client, Ended, Server};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn next_data(client: &mut Client) -> Message {
    loop {
        let m = tokio::time::timeout(common::TIMEOUT, client.ws.next())
            .await
            .expect("timeout")
            .unwrap()
            .unwrap();
        if !matches!(m, Message::Ping(_) | Message::Pong(_)) {
            return m;
        }
    }
}

/// Text and binary frames go unchanged to the channel's other connections
/// and to no other channel.
#[tokio::test]
async fn relay_forwards_frames_unchanged() {
    let server = Server::start();
    let mut a = Client::connect(&server.url("/relay/audio")).await;
    let mut b = Client::connect(&server.url("/relay/audio")).await;
    let mut c = Client::connect(&server.url("/relay/audio")).await;
    let mut other = Client::connect(&server.url("/relay/video")).await;

    let binary: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    a.ws.send(Message::binary(binary.clone())).await.unwrap();
    a.ws.send(Message::text("not even JSON {")).await.unwrap();
    for peer in [&mut b, &mut c] {
        assert_eq!(next_data(peer).await, Message::binary(binary.clone()));
        assert_eq!(next_data(peer).await, Message::text("not even JSON {"));
    }
    // The sender does not get its own frames without echo; the other channel
    // gets nothing. Prove it with a frame from the other side.
    b.ws.send(Message::text("from b")).await.unwrap();
    assert_eq!(next_data(&mut a).await, Message::text("from b"));
    assert_eq!(next_data(&mut c).await, Message::text("from b"));
    // Connected (registered before the 101) first, so the order is fixed:
    // `other`'s frame, then its own echo.
    let mut echo = Client::connect(&server.url("/relay/video?echo=true")).await;
    other.ws.send(Message::text("video")).await.unwrap();
    assert_eq!(next_data(&mut echo).await, Message::text("video"));
    echo.ws.send(Message::text("me too")).await.unwrap();
    assert_eq!(next_data(&mut echo).await, Message::text("me too"));
    assert_eq!(next_data(&mut other).await, Message::text("me too"));
    // None of the video frames reached the audio channel.
    c.ws.send(Message::text("from c")).await.unwrap();
    assert_eq!(next_data(&mut a).await, Message::text("from c"));
}

/// `?echo=only`: each connection is its own echo server. Its messages come
/// back to it, unchanged and in order, and reach no one else on the channel;
/// the channel's messages do not reach it. (What lets the Autobahn suite run
/// its cases in parallel: scripts/autobahn.)
#[tokio::test]
async fn relay_echo_only_is_a_private_echo() {
    let server = Server::start();
    let mut one = Client::connect(&server.url("/relay/conformance?echo=only")).await;
    let mut two = Client::connect(&server.url("/relay/conformance?echo=only")).await;
    let mut member = Client::connect(&server.url("/relay/conformance")).await;
    let mut echo = Client::connect(&server.url("/relay/conformance?echo=true")).await;

    let binary: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    one.ws.send(Message::binary(binary.clone())).await.unwrap();
    two.ws.send(Message::text("two")).await.unwrap();
    one.ws.send(Message::text("one")).await.unwrap();
    assert_eq!(next_data(&mut one).await, Message::binary(binary));
    assert_eq!(next_data(&mut one).await, Message::text("one"));
    assert_eq!(next_data(&mut two).await, Message::text("two"));

    // Channel traffic: `member` and `echo` (with its own echo) see only each
    // other. Two messages, so the first one's fan-out has surely ended when
    // the second arrives.
    for text in ["x", "y"] {
        echo.ws.send(Message::text(text)).await.unwrap();
        assert_eq!(next_data(&mut member).await, Message::text(text));
        assert_eq!(next_data(&mut echo).await, Message::text(text));
    }
    // Had `one` and `two` been sent anything of that (or of each other),
    // it would come before their own echo.
    for (client, text) in [(&mut one, "one again"), (&mut two, "two again")] {
        client.ws.send(Message::text(text)).await.unwrap();
        assert_eq!(next_data(client).await, Message::text(text));
    }
    // And none of the echo-only messages reached the channel: the next thing
    // `member` and `echo` get is `member`'s.
    member.ws.send(Message::text("z")).await.unwrap();
    assert_eq!(next_data(&mut echo).await, Message::text("z"));
    echo.ws.send(Message::text("last")).await.unwrap();
    assert_eq!(next_data(&mut member).await, Message::text("last"));
}

#[tokio::test]
async fn health_and_metrics() {
    let server = Server::start();
    assert_eq!(server.http_get("/healthz").await, (200, "ok\n".to_string()));
    let mut ann = server.connect("ann").await;
    let mut bob = server.connect("bob").await;
    ann.join("r").await;
    bob.join("r").await;
    ann.expect("presence").await;
    ann.publish("r", json!("hi")).await;
    bob.expect("message").await;
    let e = ann.request(json!({"type": "leave", "room": "nope"})).await;
    assert_eq!(e["code"], "not_joined");

    let (status, text) = server.http_get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "switchboard_connections 2",
        "switchboard_users 2",
        "switchboard_rooms 1",
        "switchboard_errors_total{code=\"not_joined\"} 1",
        "switchboard_slow_consumer_disconnects_total 0",
        "# TYPE switchboard_fanout_duration_seconds histogram",
        "switchboard_fanout_duration_seconds_count 1",
    ] {
        assert!(text.contains(name), "metrics lack {name:?}:\n{text}");
    }
    // join ×2, publish, leave
    assert_eq!(server.metric("switchboard_messages_in_total").await, 4.0);
    assert!(server.metric("switchboard_messages_out_total").await >= 1.0);
    assert!(server.metric("switchboard_bytes_out_total").await > 0.0);
    drop(bob);
    // The gauge follows the disconnect (awaited through the presence event).
    assert_eq!(ann.expect("presence").await["event"], "leave");
    assert_eq!(server.metric("switchboard_users").await, 1.0);
}

/// Once a wave of connections has come and gone, the server gives the
/// memory they freed back to the system (`memory.rs`), and counts it.
#[tokio::test]
async fn a_wave_of_connections_is_followed_by_a_memory_trim() {
    let server = Server::start();
    assert_eq!(server.metric("switchboard_memory_trims_total").await, 0.0);
    let mut wave = Vec::new();
    for i in 0..40 {
        wave.push(server.connect(&format!("u{i}")).await);
    }
    drop(wave);
    // 80 opened and closed, then quiet: trimmed within a tick or two. Each
    // `/metrics` request is a connection too, so they are spaced wider than
    // the 250 ms the server waits for quiet.
    let deadline = tokio::time::Instant::now() + common::TIMEOUT;
    while server.metric("switchboard_memory_trims_total").await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no trim after the wave"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

/// SIGTERM: every client gets close 1001 (after what was queued for it) and
/// the process exits 0 within the shutdown timeout.
#[tokio::test]
async fn graceful_shutdown_closes_with_1001_and_exits_0() {
    let mut server = Server::start_with(&["--shutdown-timeout", "3s"]);
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c = server.connect(&format!("u{i}")).await;
        c.join("r").await;
        clients.push(c);
    }
    let mut relay = Client::connect(&server.url("/relay/x")).await;
    relay.ws.send(Message::text("x")).await.unwrap();
    // Every client has seen all joins, so the server has all of them registered.
    for (i, c) in clients.iter_mut().enumerate() {
        for _ in i + 1..5 {
            c.expect("presence").await;
        }
        c.expect_nothing_pending().await;
    }
    server.signal("TERM");
    for c in &mut clients {
        assert_eq!(c.expect_end().await, Ended::Close(1001));
    }
    assert_eq!(relay.expect_end().await, Ended::Close(1001));
    assert_eq!(server.wait_exit(Duration::from_secs(5)), Some(0));
}

/// `--max-connections` (here set through its environment variable): the
/// connection past the limit gets 503, and a slot frees when a client leaves.
#[tokio::test]
async fn connection_limit_refuses_with_503() {
    let server = Server::start_with_env(&[], &[("SWITCHBOARD_MAX_CONNECTIONS", "2")]);
    let mut a = server.connect("a").await;
    a.join("r").await;
    let mut b = server.connect("b").await;
    b.join("r").await;
    a.expect("presence").await;
    let refused = tokio_tungstenite::connect_async(server.url("/ws?user=c")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected 503, got {other:?}"),
    }
    drop(b);
    // Once the departure is visible, the slot is free again.
    assert_eq!(a.expect("presence").await["event"], "leave");
    let mut c = server.connect("c").await;
    c.join("r").await;
    a.expect("presence").await;
    drop(c);
    assert_eq!(a.expect("presence").await["event"], "leave");
    // (Every connection holds a slot, this query's too: asked with one free.)
    assert_eq!(
        server.metric("switchboard_connections_refused_total").await,
        1.0
    );
}

#[test]
fn help_documents_every_flag_and_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--heartbeat",
        "--max-frame",
        "--rate-limit",
        "--rate-burst",
        "--max-queue",
        "--max-connections",
        "--compress-min",
        "--hello-timeout",
        "--handshake-timeout",
        "--shutdown-timeout",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
        let var = format!("SWITCHBOARD_{}", flag[2..].replace('-', "_").to_uppercase());
        assert!(help.contains(&var), "{var} missing from --help");
    }
}
