//! Bad input gets a clear error, or the documented close code, and never
//! disturbs anyone else.

mod common;

use common::{masked_frame, Client, Ended, RawClient, Server};
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// A bystander in the room who must see every message, in order, whatever
/// the other client does.
async fn bystander(server: &Server) -> (Client, Client) {
    let mut watcher = server.connect("watcher").await;
    watcher.join("lobby").await;
    let mut speaker = server.connect("speaker").await;
    speaker.join("lobby").await;
    watcher.expect("presence").await;
    (watcher, speaker)
}

async fn still_fine(watcher: &mut Client, speaker: &mut Client, n: u64) {
    let ack = speaker.publish("lobby", json!({"n": n})).await;
    let m = watcher.expect("message").await;
    assert_eq!(m["body"]["n"], n);
    assert_eq!(m["seq"], ack["seq"]);
}

#[tokio::test]
async fn bad_commands_get_errors_and_the_connection_stays_usable() {
    let server = Server::start();
    let (mut watcher, mut speaker) = bystander(&server).await;
    let mut bad = server.connect("mallory").await;
    let long_room = "r".repeat(129);
    let long_user = "u".repeat(65);
    let cases: Vec<(String, &str, &str)> = vec![
        ("{not json".into(), "bad_request", "malformed JSON"),
        ("[1,2,3]".into(), "bad_request", "JSON object"),
        ("\"hello\"".into(), "bad_request", "JSON object"),
        ("".into(), "bad_request", "JSON object"),
        (
            r#"{"room":"lobby"}"#.into(),
            "bad_request",
            "missing field `type`",
        ),
        (
            r#"{"type":42}"#.into(),
            "bad_request",
            "`type` must be a string",
        ),
        (
            r#"{"type":"dance","id":"x1"}"#.into(),
            "bad_request",
            "unknown command type `dance`",
        ),
        (
            r#"{"type":"join"}"#.into(),
            "bad_request",
            "missing field `room`",
        ),
        (
            r#"{"type":"join","room":7}"#.into(),
            "bad_request",
            "`room` must be a string",
        ),
        (
            r#"{"type":"join","room":""}"#.into(),
            "bad_request",
            "room must not be empty",
        ),
        (
            format!(r#"{{"type":"join","room":"{long_room}"}}"#),
            "bad_request",
            "longer than 128",
        ),
        (
            r#"{"type":"join","room":"a\u0000b"}"#.into(),
            "bad_request",
            "control characters",
        ),
        (
            r#"{"type":"join","room":"lobby","since":"yesterday"}"#.into(),
            "bad_request",
            "`since`",
        ),
        (
            r#"{"type":"publish","room":"lobby"}"#.into(),
            "bad_request",
            "missing field `body`",
        ),
        (
            r#"{"type":"publish","room":"lobby","body":1}"#.into(),
            "not_joined",
            "not joined",
        ),
        (
            r#"{"type":"leave","room":"lobby"}"#.into(),
            "not_joined",
            "not joined",
        ),
        (
            r#"{"type":"send","to":"","body":1}"#.into(),
            "bad_request",
            "user must not be empty",
        ),
        (
            format!(r#"{{"type":"send","to":"{long_user}","body":1}}"#),
            "bad_request",
            "longer than 64",
        ),
        (
            r#"{"type":"send","to":["bob"],"body":1}"#.into(),
            "bad_request",
            "`to` must be a string",
        ),
        (
            r#"{"type":"ping","id":{"nested":true}}"#.into(),
            "bad_request",
            "`id` must be a string or a number",
        ),
    ];
    for (text, code, needle) in &cases {
        bad.send_text(text).await;
        let e = bad.expect("error").await;
        assert_eq!(e["code"], *code, "{text} -> {e}");
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{text}: message {message:?} lacks {needle:?}"
        );
    }
    // The id is echoed on errors when it could be read.
    let e = bad.request(json!({"type": "join"})).await;
    assert_eq!(e["type"], "error");
    // Binary frames on /ws are refused, not fatal.
    use futures_util::SinkExt;
    bad.ws
        .send(tokio_tungstenite::tungstenite::Message::binary(vec![
            1, 2, 3,
        ]))
        .await
        .unwrap();
    assert_eq!(bad.expect("error").await["code"], "bad_request");
    // Still usable, and nobody else noticed anything.
    bad.join("lobby").await;
    assert_eq!(watcher.expect("presence").await["user"], "mallory");
    assert_eq!(speaker.expect("presence").await["user"], "mallory");
    bad.expect_nothing_pending().await;
    still_fine(&mut watcher, &mut speaker, 1).await;
    assert!(
        server
            .metric("switchboard_errors_total{code=\"bad_request\"}")
            .await
            >= 20.0
    );
}

#[tokio::test]
async fn bad_user_in_query_is_refused_at_the_handshake() {
    let server = Server::start();
    let (status, body) = server.http_get("/ws?user=ann").await;
    // Not even an upgrade request: the endpoint says so.
    assert_eq!(status, 426, "{body}");
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(
        b"GET /ws?user= HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    use tokio::io::AsyncReadExt;
    let mut response = String::new();
    let mut chunk = [0u8; 1024];
    // The connection stays open (keep-alive), so read until the body is in.
    while !response.contains("user must not be empty") {
        let n = tokio::time::timeout(common::TIMEOUT, raw.read(&mut chunk))
            .await
            .expect("timeout")
            .unwrap();
        assert!(n > 0, "closed early: {response}");
        response.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("user must not be empty"), "{response}");
}

#[tokio::test]
async fn frame_over_the_limit_closes_with_1009() {
    let server = Server::start_with(&["--max-frame", "1KiB"]);
    let (mut watcher, mut speaker) = bystander(&server).await;
    let mut big = server.connect("big").await;
    big.join("lobby").await;
    watcher.expect("presence").await;
    speaker.expect("presence").await;
    let body = "x".repeat(2000);
    big.send(json!({"type": "publish", "room": "lobby", "body": body}))
        .await;
    assert_eq!(big.expect_end().await, Ended::Close(1009));
    assert_eq!(watcher.expect("presence").await["event"], "leave");
    assert_eq!(speaker.expect("presence").await["event"], "leave");
    still_fine(&mut watcher, &mut speaker, 2).await;
    // A message just under the limit is fine.
    let ok = "y".repeat(900);
    let ack = speaker.publish("lobby", json!(ok)).await;
    assert_eq!(watcher.expect("message").await["seq"], ack["seq"]);
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let server = Server::start();
    let (mut watcher, mut speaker) = bystander(&server).await;
    let mut bad = server.connect("bad").await;
    bad.send_raw_text(vec![b'{', 0xff, 0xfe, b'}']).await;
    assert_eq!(bad.expect_end().await, Ended::Close(1007));
    still_fine(&mut watcher, &mut speaker, 3).await;
}

#[tokio::test]
async fn unmasked_or_reserved_frames_close_with_1002() {
    let server = Server::start();
    let (mut watcher, mut speaker) = bystander(&server).await;
    let mut raw = RawClient::connect(&server, "/ws?user=raw").await;
    // An unmasked client frame is a protocol error.
    raw.stream
        .write_all(&[0x81, 0x02, b'{', b'}'])
        .await
        .unwrap();
    // The server sends `welcome`, then a close frame with 1002, then ends
    // the connection: the close frame is the last frame of the stream.
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    tokio::time::timeout(common::TIMEOUT, raw.stream.read_to_end(&mut all))
        .await
        .expect("not closed")
        .unwrap();
    assert_eq!(common::final_close_code(&all), 1002);

    // A frame with a reserved bit set (RSV2) on a fresh connection: 1002 too.
    let mut raw = RawClient::connect(&server, "/ws?user=raw2").await;
    let mut frame = masked_frame(0x1, b"{}");
    frame[0] |= 0x20;
    raw.stream.write_all(&frame).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(common::TIMEOUT, raw.stream.read_to_end(&mut all))
        .await
        .expect("not closed")
        .unwrap();
    assert_eq!(common::final_close_code(&all), 1002);
    still_fine(&mut watcher, &mut speaker, 4).await;
}

#[tokio::test]
async fn flooding_gets_rate_limited_then_closed_with_1008() {
    let server = Server::start_with(&["--rate-limit", "20", "--rate-burst", "20"]);
    let (mut watcher, mut speaker) = bystander(&server).await;
    let mut flood = server.connect("flood").await;
    // Far more than the burst, sent at once.
    for i in 0..200 {
        flood.send(json!({"type": "ping", "id": i})).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    let ended = loop {
        use futures_util::StreamExt;
        match tokio::time::timeout(common::TIMEOUT, flood.ws.next())
            .await
            .expect("timeout")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str() {
                    Some("pong") => pongs += 1,
                    Some("error") => {
                        assert_eq!(v["code"], "rate_limited");
                        assert!(v["id"].is_u64(), "the dropped command's id is echoed: {v}");
                        limited += 1;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f))) => {
                break f.map(|f| u16::from(f.code))
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break None,
        }
    };
    assert_eq!(pongs, 20, "the burst is served");
    assert_eq!(
        limited, 20,
        "then rate_limited errors up to the strike limit"
    );
    assert_eq!(ended, Some(1008));
    still_fine(&mut watcher, &mut speaker, 5).await;
}

/// A subscriber that stops reading is disconnected once its queue is full;
/// the room keeps flowing for everyone else, in order.
#[tokio::test]
async fn slow_consumer_is_disconnected_without_slowing_the_room() {
    let server = Server::start_with(&["--max-queue", "256KiB", "--rate-limit", "0"]);
    let (mut watcher, mut speaker) = bystander(&server).await;
    let mut slow = RawClient::connect_unread(&server, "/ws?user=slow").await;
    slow.send_text(r#"{"type":"join","room":"lobby"}"#).await;
    assert_eq!(watcher.expect("presence").await["user"], "slow");
    assert_eq!(speaker.expect("presence").await["user"], "slow");
    // 16 MiB in total: far beyond the socket buffers plus the 256 KiB queue.
    let body = "z".repeat(16 * 1024);
    let count: u64 = 1024;
    // The publisher stays at most WINDOW messages ahead of the watcher, so
    // the watcher is a reader that keeps up (its queue stays well under the
    // limit) while the raw client, which reads nothing, falls behind.
    const WINDOW: u64 = 4;
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0u64);
    let reader = tokio::spawn(async move {
        let mut saw_leave = false;
        let mut next = 1;
        while next <= count || !saw_leave {
            let e = watcher.recv().await;
            match e["type"].as_str() {
                Some("message") => {
                    assert_eq!(e["body"]["n"], next, "messages arrive in order, none lost");
                    let _ = progress_tx.send(next);
                    next += 1;
                }
                Some("presence") => {
                    assert_eq!(
                        (e["event"].as_str(), e["user"].as_str()),
                        (Some("leave"), Some("slow"))
                    );
                    saw_leave = true;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        saw_leave
    });
    let mut presence_seen = false;
    for n in 1..=count {
        progress.wait_for(|&got| got + WINDOW >= n).await.unwrap();
        speaker
            .send(json!({"type": "publish", "room": "lobby", "body": {"n": n, "pad": body}}))
            .await;
        let reply = speaker.recv().await;
        if reply["type"] == "presence" {
            assert_eq!(reply["event"], "leave");
            presence_seen = true;
            assert_eq!(speaker.expect("ack").await["seq"], n);
        } else {
            assert_eq!(reply["seq"], n, "{reply}");
        }
    }
    let saw_leave = reader.await.unwrap();
    assert!(presence_seen || speaker.expect("presence").await["event"] == "leave");
    assert!(saw_leave);
    assert_eq!(
        server
            .metric("switchboard_slow_consumer_disconnects_total")
            .await,
        1.0
    );
    drop(slow);
}

/// Sends a raw upgrade request and reads the answer up to `expected`.
async fn raw_upgrade(server: &Server, request: &str, expected: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    let mut chunk = [0u8; 1024];
    while !response.contains(expected) {
        let n = tokio::time::timeout(common::TIMEOUT, raw.read(&mut chunk))
            .await
            .expect("timeout")
            .unwrap();
        if n == 0 {
            break;
        }
        response.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
    response
}

/// RFC 6455: an upgrade needs HTTP/1.1 (§4.1), and the key and version are
/// sent once (§11.3.1, §11.3.5). Anything else is refused with 400.
#[tokio::test]
async fn http10_upgrades_and_repeated_handshake_headers_are_refused() {
    let server = Server::start();
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let version = "Sec-WebSocket-Version: 13\r\n";
    let head = "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
    let old = format!("GET /ws?user=ann HTTP/1.0\r\n{head}{key}{version}\r\n");
    let response = raw_upgrade(&server, &old, "need HTTP/1.1").await;
    assert!(response.contains(" 400 "), "{response}");
    assert!(response.contains("need HTTP/1.1"), "{response}");
    for repeated in [
        format!("GET /ws?user=ann HTTP/1.1\r\n{head}{key}{key}{version}\r\n"),
        format!("GET /ws?user=ann HTTP/1.1\r\n{head}{key}{version}{version}\r\n"),
    ] {
        let response = raw_upgrade(&server, &repeated, "may each appear only once").await;
        assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    }
    // A well-formed upgrade still works.
    server.connect("ann").await;
}
