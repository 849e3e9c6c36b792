//! Abuse limits, each configurable: per-IP connections and connection rate,
//! connections per user, rooms per connection, body size, handshake timeout,
//! and the browser origin check.

mod common;

use common::{Client, Ended, Server};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

async fn status_of(server: &Server, path: &str, origin: Option<&str>) -> u16 {
    status_with_host(server, path, origin, None).await
}

/// The upgrade's status with these `Origin` and `Host` headers (`Host`
/// from the URL when None).
async fn status_with_host(
    server: &Server,
    path: &str,
    origin: Option<&str>,
    host: Option<&str>,
) -> u16 {
    let mut request = server.url(path).into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    if let Some(host) = host {
        request.headers_mut().insert("host", host.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, response)) => {
            drop(ws);
            response.status().as_u16()
        }
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn origins_outside_the_allow_list_get_403() {
    let server = Server::start_with(&[
        "--allowed-origins",
        "https://chat.example.com,https://*.example.org",
    ]);
    assert_eq!(
        status_of(&server, "/ws?user=a", Some("https://evil.example.net")).await,
        403
    );
    assert_eq!(
        status_of(&server, "/relay/x", Some("https://evil.example.net")).await,
        403
    );
    assert_eq!(
        status_of(&server, "/ws?user=a", Some("https://chat.example.com")).await,
        101
    );
    assert_eq!(
        status_of(&server, "/ws?user=a", Some("https://app.example.org")).await,
        101
    );
    // Pages the server serves itself at its address are allowed unlisted.
    let own = format!("http://{}", server.addr);
    assert_eq!(status_of(&server, "/ws?user=a", Some(&own)).await, 101);
    let localhost = format!("localhost:{}", server.addr.port());
    let origin = format!("http://{localhost}");
    assert_eq!(
        status_with_host(&server, "/ws?user=a", Some(&origin), Some(&localhost)).await,
        101
    );
    // DNS rebinding: a page at a name that resolves to this server has
    // Origin = Host too, but a name must be listed.
    let rebound = format!("rebind.example.net:{}", server.addr.port());
    let origin = format!("http://{rebound}");
    assert_eq!(
        status_with_host(&server, "/ws?user=a", Some(&origin), Some(&rebound)).await,
        403
    );
    assert_eq!(
        status_with_host(&server, "/relay/x", Some(&origin), Some(&rebound)).await,
        403
    );
    // Non-browser clients send no Origin.
    assert_eq!(status_of(&server, "/ws?user=a", None).await, 101);
    // Default: any origin.
    let open = Server::start();
    assert_eq!(
        status_of(&open, "/ws?user=a", Some("https://anything.test")).await,
        101
    );
}

#[tokio::test]
async fn connections_per_ip_are_limited() {
    let server = Server::start_with(&["--max-connections-per-ip", "2"]);
    let a = server.connect("a").await;
    let _b = server.connect("b").await;
    assert_eq!(status_of(&server, "/ws?user=c", None).await, 429);
    drop(a);
    // The slot frees when the connection is gone; wait for that through the
    // connection gauge rather than a sleep.
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    while server.metric("switchboard_connections").await > 1.0 {
        assert!(std::time::Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
    assert_eq!(status_of(&server, "/ws?user=c", None).await, 101);
}

#[tokio::test]
async fn connection_rate_per_ip_is_limited() {
    let server = Server::start_with(&["--connect-rate-per-ip", "2"]);
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(status_of(&server, &format!("/ws?user=u{i}"), None).await);
    }
    // A burst of twice the rate, then 429 (the test runs far faster than 2/s).
    assert_eq!(&statuses[..4], &[101, 101, 101, 101]);
    assert!(statuses[4..].contains(&429), "{statuses:?}");
}

#[tokio::test]
async fn connections_per_user_are_limited() {
    let server = Server::start_with(&["--max-connections-per-user", "2"]);
    let _a1 = server.connect("ann").await;
    let _a2 = server.connect("ann").await;
    let mut a3 = Client::connect(&server.url("/ws?user=ann")).await;
    let e = a3.expect("error").await;
    assert_eq!(e["code"], "forbidden");
    assert_eq!(a3.expect_end().await, Ended::Close(1008));
    // Other users are unaffected.
    server.connect("bob").await;
}

#[tokio::test]
async fn rooms_per_connection_and_body_size_are_limited() {
    let server = Server::start_with(&["--max-rooms-per-connection", "2", "--max-body", "100B"]);
    let mut c = server.connect("ann").await;
    c.join("a").await;
    c.join("b").await;
    c.join("a").await; // re-joining a room you are in is fine
    let e = c.request(json!({"type": "join", "room": "c"})).await;
    assert_eq!(e["code"], "forbidden");
    c.request(json!({"type": "leave", "room": "b"})).await;
    c.join("c").await;

    let e = c
        .request(json!({"type": "publish", "room": "a", "body": "x".repeat(200)}))
        .await;
    assert_eq!(e["code"], "too_large");
    let e = c
        .request(json!({"type": "send", "to": "bob", "body": "x".repeat(200)}))
        .await;
    assert_eq!(e["code"], "too_large");
    c.publish("a", json!("x".repeat(50))).await;
}

/// A client that never finishes its request head is dropped.
#[tokio::test]
async fn slow_handshakes_time_out() {
    let server = Server::start_with(&["--handshake-timeout", "300ms"]);
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /ws?user=slow HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(common::TIMEOUT, stream.read_to_end(&mut rest))
        .await
        .expect("the server kept a half-sent request open")
        .ok();
    // Others are served meanwhile and after.
    server.connect("ok").await;
}

/// A history page is bounded in bytes by `--max-queue` (half of it): a reply
/// is one frame and must fit the queue. A cut page says `truncated`, keeps
/// the newest messages, and paging on with `before` misses nothing.
#[tokio::test]
async fn history_pages_fit_the_outbound_queue() {
    let server = Server::start_with(&["--max-queue", "64KiB", "--rate-limit", "0"]);
    let mut c = server.connect("ann").await;
    c.join("big").await;
    let pad = "p".repeat(8 * 1024);
    for n in 1..=10 {
        c.publish("big", json!({"n": n, "pad": pad})).await;
    }
    let mut seen = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut query = json!({"type": "history", "room": "big", "limit": 10});
        if let Some(b) = before {
            query["before"] = json!(b);
        }
        let page = c.request(query).await;
        assert_eq!(page["type"], "history", "{page}");
        let messages = page["messages"].as_array().unwrap();
        let bytes: usize = messages.iter().map(|m| m.to_string().len()).sum();
        assert!(bytes <= 32 * 1024, "a page of {bytes} bytes");
        let seqs: Vec<u64> = messages
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        seen.splice(0..0, seqs.iter().copied());
        if page["truncated"] != true {
            break;
        }
        assert!(!seqs.is_empty() && seqs.len() < 10);
        before = seqs.first().copied();
    }
    assert_eq!(seen, (1..=10).collect::<Vec<u64>>());
}

/// History replies of up to half the queue each, asked for back to back,
/// all arrive: each waits for room in the queue instead of overflowing it
/// (which would drop a reader that keeps up as a slow consumer).
#[tokio::test]
async fn back_to_back_history_pages_do_not_overflow_the_queue() {
    let server = Server::start_with(&["--max-queue", "64KiB", "--rate-limit", "0"]);
    let mut c = server.connect("ann").await;
    c.join("big").await;
    let pad = "p".repeat(8 * 1024);
    for n in 1..=10 {
        c.publish("big", json!({"n": n, "pad": pad})).await;
    }
    for id in 1..=4 {
        c.send(json!({"type": "history", "room": "big", "limit": 10, "id": id}))
            .await;
    }
    // Replies may come in any order (each read runs on its own task).
    let mut ids = Vec::new();
    for _ in 1..=4 {
        let page = c.expect("history").await;
        assert_eq!(page["truncated"], true);
        ids.push(page["id"].as_u64().unwrap());
    }
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3, 4]);
    // Still connected.
    assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
}

/// Sends `head` on a fresh connection and reads what comes back until the
/// server closes: the status line's code, or None when it closed without
/// answering.
async fn answer_to_head(server: &Server, head: String) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut read, mut write) = stream.split();
    let mut response = Vec::new();
    // Written while reading: the server may stop reading (and close) before
    // all of it is sent, which fails the write but not the test.
    let (_, read) = tokio::join!(
        write.write_all(head.as_bytes()),
        tokio::time::timeout(common::TIMEOUT, read.read_to_end(&mut response))
    );
    read.expect("the server neither answered nor closed").ok();
    let response = String::from_utf8_lossy(&response);
    response.get(9..12).and_then(|code| code.parse().ok())
}

/// A request head larger than 16 KiB is refused with 431, whether one line
/// is long or there are many lines; a head just under the bound is served.
#[tokio::test]
async fn request_heads_over_16_kib_get_431() {
    let server = Server::start();
    let request = |extra: &str| {
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n")
    };
    let long_line = format!("X-Pad: {}\r\n", "a".repeat(100 * 1024));
    assert_eq!(
        answer_to_head(&server, request(&long_line)).await,
        Some(431)
    );
    let long_line = format!("X-Pad: {}\r\n", "a".repeat(17 * 1024));
    assert_eq!(
        answer_to_head(&server, request(&long_line)).await,
        Some(431)
    );
    // Fewer headers than hyper's count limit (100), 18 KiB together.
    let many: String = (0..90)
        .map(|i| format!("X-Pad-{i}: {}\r\n", "b".repeat(200)))
        .collect();
    assert_eq!(answer_to_head(&server, request(&many)).await, Some(431));
    // Over the count limit, though small.
    let count: String = (0..120).map(|i| format!("X-N-{i}: 1\r\n")).collect();
    assert_eq!(answer_to_head(&server, request(&count)).await, Some(431));
    let fits = format!("X-Pad: {}\r\n", "a".repeat(15 * 1024));
    assert_eq!(answer_to_head(&server, request(&fits)).await, Some(200));
    // Others are served meanwhile.
    server.connect("ok").await;
}
