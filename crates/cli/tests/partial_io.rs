//! Frames that do not arrive, or leave, in one piece. The connection's task
//! keeps what one poll leaves for the next (the bytes of a frame split
//! across reads, frames a full socket did not take) only while it has any
//! (`gateway::socket::Busy`): these tests go through each way it is made.

mod common;

use std::time::Duration;

use common::{masked_frame, RawClient, Server, TIMEOUT};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Takes one whole server frame off the front of `buf`, if it holds one.
fn take_frame(buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    if buf.len() < 2 {
        return None;
    }
    let (len, header) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().ok()?) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if buf.len() < header + len {
        return None;
    }
    let frame = (buf[0] & 0x0f, buf[header..header + len].to_vec());
    buf.drain(..header + len);
    Some(frame)
}

/// The next text frame's JSON (pings skipped), reading as needed.
async fn next_event(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Value {
    loop {
        while let Some((opcode, payload)) = take_frame(buf) {
            if opcode == 0x1 {
                return serde_json::from_slice(&payload).expect("event is JSON");
            }
        }
        read_more(stream, buf).await;
    }
}

/// Appends what the socket has next to `buf`; fails on a timeout or EOF.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = vec![0; 64 * 1024];
    let n = tokio::time::timeout(TIMEOUT, stream.read(&mut chunk))
        .await
        .expect("timed out waiting for the server")
        .expect("read");
    assert!(n > 0, "the connection ended");
    buf.extend_from_slice(&chunk[..n]);
}

/// The next event, which must be the reply of this type to command `id`.
async fn expect_reply(stream: &mut TcpStream, buf: &mut Vec<u8>, kind: &str, id: &str) {
    let event = next_event(stream, buf).await;
    assert_eq!(
        (event["type"].as_str(), event["id"].as_str()),
        (Some(kind), Some(id)),
        "{event}"
    );
}

/// A client that sends its first frame in the same write as the upgrade
/// request (before the 101, which RFC 6455 asks clients not to do, and some
/// do): hyper reads it with the request head, and the connection must start
/// with it rather than lose it.
#[tokio::test]
async fn a_frame_sent_with_the_upgrade_request_is_not_lost() {
    let server = Server::start();
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut bytes = b"GET /ws?user=eager HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    bytes.extend(masked_frame(
        0x1,
        br#"{"type":"join","room":"lobby","id":"j1"}"#,
    ));
    stream.write_all(&bytes).await.expect("write");
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        read_more(&mut stream, &mut buf).await;
    };
    assert!(
        buf.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    buf.drain(..head_end);
    assert_eq!(next_event(&mut stream, &mut buf).await["type"], "welcome");
    expect_reply(&mut stream, &mut buf, "joined", "j1").await;
}

/// A frame that arrives a byte at a time is decoded once whole, and the
/// next one, sent whole, still decodes after it.
#[tokio::test]
async fn a_frame_that_arrives_a_byte_at_a_time_is_decoded_once_whole() {
    let server = Server::start();
    let RawClient { mut stream } = RawClient::connect(&server, "/ws?user=trickle").await;
    stream.set_nodelay(true).expect("nodelay");
    let mut buf = Vec::new();
    assert_eq!(next_event(&mut stream, &mut buf).await["type"], "welcome");
    let frame = masked_frame(0x1, br#"{"type":"join","room":"lobby","id":"j1"}"#);
    for byte in &frame {
        stream
            .write_all(std::slice::from_ref(byte))
            .await
            .expect("write");
        // Pacing, not synchronisation: one segment per byte, so the server
        // reads the frame in pieces. Were two bytes read together, the test
        // would still be right, only less thorough.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    expect_reply(&mut stream, &mut buf, "joined", "j1").await;
    stream
        .write_all(&masked_frame(0x1, br#"{"type":"ping","id":"p1"}"#))
        .await
        .expect("write");
    expect_reply(&mut stream, &mut buf, "pong", "p1").await;
}

/// A subscriber that stops reading while its socket fills, but within its
/// queue budget, gets every message, in order, once it reads again: the
/// frames a full socket did not take are kept from one write to the next.
#[tokio::test]
async fn a_reader_that_pauses_gets_every_message_in_order_when_it_reads_again() {
    let server = Server::start_with(&["--max-queue", "32MiB", "--rate-limit", "0"]);
    let mut speaker = server.connect("speaker").await;
    speaker.join("lobby").await;
    // Receive buffer fixed at 64 KiB; the messages below are 16 MiB, four
    // times what the server's send buffer can grow to (`tcp_wmem`), and half
    // the queue budget.
    let RawClient { mut stream } = RawClient::connect_unread(&server, "/ws?user=pauser").await;
    stream
        .write_all(&masked_frame(
            0x1,
            br#"{"type":"join","room":"lobby","id":"j1"}"#,
        ))
        .await
        .expect("write");
    assert_eq!(speaker.expect("presence").await["user"], "pauser");
    let body = "p".repeat(16 * 1024);
    let count: u64 = 1024;
    for n in 1..=count {
        speaker.publish("lobby", json!({"n": n, "pad": body})).await;
    }
    // Every message is acknowledged, so delivered to the pauser's queue
    // (acks follow delivery); only now does it read.
    let mut buf = Vec::new();
    assert_eq!(next_event(&mut stream, &mut buf).await["type"], "welcome");
    assert_eq!(next_event(&mut stream, &mut buf).await["type"], "joined");
    for n in 1..=count {
        let event = next_event(&mut stream, &mut buf).await;
        assert_eq!(event["type"], "message", "{event}");
        assert_eq!(event["body"]["n"], n, "in order, none lost");
        assert_eq!(
            event["body"]["pad"].as_str().map(str::len),
            Some(body.len())
        );
    }
    assert_eq!(
        server
            .metric("switchboard_slow_consumer_disconnects_total")
            .await,
        0.0
    );
}
