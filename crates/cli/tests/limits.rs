//! Abuse limits, each configurable: per-IP connections and connection rate,
//! connections per user, rooms per connection, body size, handshake timeout,
//! and the browser origin check.

mod common;

use common::{tcp_from, upgrade_from, Client, Ended, Server};
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

/// GET `path` over a connection from `source`; the status.
async fn get_from(source: &str, server: &Server, path: &str) -> u16 {
    let mut stream = tcp_from(source, server).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    // A refusal at accept may be followed by a reset (the server closed
    // without reading the request): what came before it counts.
    let _ = tokio::time::timeout(common::TIMEOUT, stream.read_to_end(&mut response))
        .await
        .expect("http timeout");
    let response = String::from_utf8_lossy(&response);
    response
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"))
}

/// Retries an upgrade from `source` that is refused with `refused` until
/// it is accepted: a slot frees once the server has seen a client's
/// connection end, which the client cannot observe.
async fn upgrade_when_free(source: &str, server: &Server, path: &str, refused: u16) -> Client {
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    loop {
        match upgrade_from(source, server, path, &[]).await {
            Ok(client) => return client,
            Err(status) => assert_eq!(status, refused),
        }
        assert!(std::time::Instant::now() < deadline, "no slot freed");
        // A poll interval: each refused try costs the server an accept.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Every connection from an address counts in its limit from accept:
/// WebSockets, and plain HTTP connections, idle or not. Over the limit a
/// connection is answered 429 at once; other addresses, and the address's
/// open connections, carry on.
#[tokio::test]
async fn connections_per_ip_are_limited() {
    let server = Server::start_with(&["--max-connections-per-ip", "2"]);
    let mut a = upgrade_from("127.0.0.2", &server, "/ws?user=a", &[])
        .await
        .expect("first connection");
    a.expect("welcome").await;
    // Says nothing: a slot all the same.
    let idle = tcp_from("127.0.0.2", &server).await;
    let refused = upgrade_from("127.0.0.2", &server, "/ws?user=b", &[]).await;
    assert_eq!(refused.err(), Some(429));
    assert_eq!(get_from("127.0.0.2", &server, "/healthz").await, 429);
    // Another address, and the connection already open, are unaffected.
    assert_eq!(
        server.metric("switchboard_connections_refused_total").await,
        2.0
    );
    server.connect("c").await;
    a.expect_nothing_pending().await;
    // A WebSocket's slot is free by the time its close handshake completes.
    a.ws.close(None).await.unwrap();
    assert!(matches!(a.expect_end().await, Ended::Close(_)));
    let mut b = upgrade_from("127.0.0.2", &server, "/ws?user=b", &[])
        .await
        .expect("the WebSocket's slot is free");
    b.expect("welcome").await;
    drop(idle);
    upgrade_when_free("127.0.0.2", &server, "/ws?user=d", 429).await;
}

/// `--max-connections` counts every connection from accept, idle ones
/// included; past it, WebSocket upgrades and plain HTTP get 503 and the
/// connections already open are not disturbed.
#[tokio::test]
async fn idle_connections_count_in_the_connection_limit() {
    let server = Server::start_with(&["--max-connections", "3"]);
    let mut bystander = server.connect("bystander").await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    // The server accepts in order, so the idle two hold the last slots
    // before the next connection is looked at.
    let refused = upgrade_from("127.0.0.1", &server, "/ws?user=x", &[]).await;
    assert_eq!(refused.err(), Some(503));
    assert_eq!(get_from("127.0.0.1", &server, "/healthz").await, 503);
    bystander.expect_nothing_pending().await;
    drop(idle);
    let mut late = upgrade_when_free("127.0.0.1", &server, "/ws?user=late", 503).await;
    late.expect("welcome").await;
}

/// An upgraded connection keeps the one slot it was accepted with (not
/// released when hyper lets go of the stream, not counted twice).
#[tokio::test]
async fn a_websocket_holds_exactly_one_slot() {
    let server = Server::start_with(&["--max-connections", "2"]);
    let mut a = server.connect("a").await;
    let _b = server.connect("b").await;
    assert_eq!(get_from("127.0.0.1", &server, "/healthz").await, 503);
    assert_eq!(
        upgrade_from("127.0.0.1", &server, "/ws?user=c", &[])
            .await
            .err(),
        Some(503)
    );
    a.ws.close(None).await.unwrap();
    assert!(matches!(a.expect_end().await, Ended::Close(_)));
    let mut c = server.connect("c").await;
    c.ws.close(None).await.unwrap();
    assert!(matches!(c.expect_end().await, Ended::Close(_)));
    // Refusals at accept are counted (asked with a slot free).
    assert_eq!(
        server.metric("switchboard_connections_refused_total").await,
        2.0
    );
}

/// Connections from a trusted proxy are not limited per IP as one client:
/// each WebSocket through it counts under its `X-Forwarded-For` address.
/// Direct clients are limited by their own address.
#[tokio::test]
async fn a_trusted_proxy_is_not_limited_per_ip_as_one_client() {
    let server = Server::start_with(&[
        "--max-connections-per-ip",
        "2",
        "--trusted-proxies",
        "127.0.0.2",
    ]);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tcp_from("127.0.0.2", &server).await);
    }
    let from = |client| [("x-forwarded-for", client)];
    let mut proxied = Vec::new();
    for user in ["p1", "p2"] {
        let path = format!("/ws?user={user}");
        let client = upgrade_from("127.0.0.2", &server, &path, &from("192.0.2.1")).await;
        proxied.push(client.expect("through the proxy"));
    }
    let third = upgrade_from("127.0.0.2", &server, "/ws?user=p3", &from("192.0.2.1")).await;
    assert_eq!(third.err(), Some(429), "the forwarded client's limit");
    let other = upgrade_from("127.0.0.2", &server, "/ws?user=q", &from("192.0.2.2")).await;
    assert!(other.is_ok(), "another client behind the proxy");
    assert_eq!(get_from("127.0.0.2", &server, "/healthz").await, 200);

    let _direct = [
        tcp_from("127.0.0.3", &server).await,
        tcp_from("127.0.0.3", &server).await,
    ];
    assert_eq!(get_from("127.0.0.3", &server, "/healthz").await, 429);
}

/// A connection that never sends a request, and one left idle after a
/// request, are closed after `--handshake-timeout` (each holds a slot).
#[tokio::test]
async fn idle_http_connections_are_closed() {
    let server = Server::start_with(&["--handshake-timeout", "300ms"]);
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(common::TIMEOUT, silent.read_to_end(&mut rest))
        .await
        .expect("a silent connection was kept open")
        .ok();
    assert!(rest.is_empty());

    let mut kept = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(common::TIMEOUT, kept.read_to_end(&mut response))
        .await
        .expect("an idle keep-alive connection was kept open")
        .ok();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.ends_with("ok\n"),
        "answered once, then closed: {response}"
    );
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

/// The red team's "30k distinct recipients, kept forever": rooms and inboxes
/// with a seq counter are capped, and beyond the cap a new name is refused
/// with a clear error while known ones keep working, on /ws and the API.
#[tokio::test]
async fn new_rooms_and_recipients_beyond_the_caps_are_refused_clearly() {
    let server = Server::start_with(&["--max-rooms", "2", "--max-inboxes", "2", "--api-key", "k"]);
    let mut ann = server.connect("ann").await;
    for room in ["r1", "r2", "r3"] {
        ann.join(room).await;
    }
    for room in ["r1", "r2"] {
        let ack = ann.publish(room, json!("hi")).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let refused = ann
        .request(json!({"type": "publish", "room": "r3", "body": "hi"}))
        .await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "unavailable");
    assert!(
        refused["message"]
            .as_str()
            .unwrap_or("")
            .contains("--max-rooms"),
        "{refused}"
    );
    assert_eq!(ann.publish("r1", json!("again")).await["seq"], 2);

    for to in ["u1", "u2"] {
        let ack = ann
            .request(json!({"type": "send", "to": to, "body": "hi", "id": to}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let (status, body) = server
        .http(
            "POST",
            "/api/users/u3/messages",
            Some("k"),
            Some(r#"{"body":"hi"}"#),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("--max-inboxes"), "{body}");
    // Nothing was stored for the refused ones.
    let history = ann
        .request(json!({"type": "history", "room": "r3", "id": "h"}))
        .await;
    assert_eq!(history["messages"], json!([]), "{history}");
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
