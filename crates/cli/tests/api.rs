//! The server HTTP API for backends (SPEC §6).

mod common;

use common::Server;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "test-key-123";

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

#[tokio::test]
async fn api_publishes_sends_lists_and_disconnects() {
    let server = Server::start_with(&["--api-key", KEY]);
    let mut ann = server.connect("ann").await;
    ann.join("lobby").await;
    let mut bob = server.connect("bob").await;

    // Publish to a room as the backend.
    let (status, body) = server
        .http(
            "POST",
            "/api/rooms/lobby/messages",
            Some(KEY),
            Some(r#"{"body":{"text":"deploy done"},"from":"ci"}"#),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let r = parse(&body);
    assert_eq!(
        (r["seq"].as_u64(), r["delivered"].as_u64()),
        (Some(1), Some(1))
    );
    let m = ann.expect("message").await;
    assert_eq!(
        (m["from"].as_str(), m["body"]["text"].as_str()),
        (Some("ci"), Some("deploy done"))
    );

    // Send to a user; `from` defaults to "server".
    let (status, body) = server
        .http(
            "POST",
            "/api/users/bob/messages",
            Some(KEY),
            Some(r#"{"body":"hi"}"#),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let r = parse(&body);
    assert_eq!(
        (r["delivered"].as_u64(), r["stored"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(bob.expect("direct").await["from"], "server");

    // Idempotency key.
    let post = r#"{"body":"once","id":"job-7"}"#;
    let first = parse(
        &server
            .http("POST", "/api/rooms/lobby/messages", Some(KEY), Some(post))
            .await
            .1,
    );
    let again = parse(
        &server
            .http("POST", "/api/rooms/lobby/messages", Some(KEY), Some(post))
            .await
            .1,
    );
    assert_eq!(first["seq"], again["seq"]);
    assert_eq!(again["duplicate"], true);
    assert_eq!(ann.expect("message").await["body"], "once");
    ann.expect_nothing_pending().await;

    // Rooms, presence, history.
    let rooms = parse(&server.http("GET", "/api/rooms", Some(KEY), None).await.1);
    assert_eq!(
        rooms["rooms"],
        json!([{"room": "lobby", "seq": 2, "online": 1}])
    );
    let p = parse(
        &server
            .http("GET", "/api/rooms/lobby/presence", Some(KEY), None)
            .await
            .1,
    );
    assert_eq!(p, json!({"room": "lobby", "online": 1, "users": ["ann"]}));
    let h = parse(
        &server
            .http("GET", "/api/rooms/lobby/messages?limit=1", Some(KEY), None)
            .await
            .1,
    );
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);
    assert_eq!(h["messages"][0]["seq"], 2);
    let h = parse(
        &server
            .http("GET", "/api/rooms/lobby/messages?before=2", Some(KEY), None)
            .await
            .1,
    );
    assert_eq!(h["messages"][0]["body"]["text"], "deploy done");

    // Disconnect a user everywhere.
    let (status, body) = server
        .http("DELETE", "/api/users/bob/connections", Some(KEY), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(parse(&body)["disconnected"], 1);
    assert_eq!(bob.expect_end().await, common::Ended::Close(4003));
}

#[tokio::test]
async fn api_errors_are_clear() {
    let server = Server::start_with(&["--api-key", KEY]);
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        ("GET", "/api/rooms", None, None, 401, "unauthorized"),
        (
            "GET",
            "/api/rooms",
            Some("wrong"),
            None,
            401,
            "unauthorized",
        ),
        (
            "POST",
            "/api/rooms/lobby/messages",
            Some(KEY),
            Some("{not json"),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/rooms/lobby/messages",
            Some(KEY),
            Some(r#"{"from":"x"}"#),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/rooms/lobby/messages",
            Some(KEY),
            Some(r#"{"body":1,"from":""}"#),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/users/bob/messages",
            Some(KEY),
            Some(r#"{"body":1,"id":[1]}"#),
            400,
            "bad_request",
        ),
        (
            "GET",
            "/api/rooms/lobby/messages?limit=500",
            Some(KEY),
            None,
            400,
            "bad_request",
        ),
    ];
    for (method, path, key, body, status, code) in cases {
        let (got, text) = server.http(method, path, key, body).await;
        assert_eq!(got, status, "{method} {path}: {text}");
        let e = parse(&text);
        assert_eq!(e["error"]["code"], code, "{text}");
        assert!(!e["error"]["message"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn api_is_off_without_a_key() {
    let server = Server::start();
    let (status, body) = server
        .http("GET", "/api/rooms", Some("anything"), None)
        .await;
    assert_eq!(status, 404);
    assert!(body.contains("disabled"));
}

/// The limits on a message hold on the HTTP API as on `/ws`: `--max-body`
/// (413 `too_large`) and the nesting limit (400), for publish and send.
#[tokio::test]
async fn api_messages_obey_the_same_limits_as_websocket() {
    let server = Server::start_with(&["--api-key", KEY, "--max-body", "1KiB"]);
    let big = json!({ "body": "x".repeat(2000) }).to_string();
    let deep = format!(r#"{{"body":{}1{}}}"#, "[".repeat(65), "]".repeat(65));
    for path in ["/api/rooms/lobby/messages", "/api/users/bob/messages"] {
        let (status, text) = server.http("POST", path, Some(KEY), Some(&big)).await;
        assert_eq!(status, 413, "{path}: {text}");
        assert_eq!(parse(&text)["error"]["code"], "too_large", "{text}");
        let (status, text) = server.http("POST", path, Some(KEY), Some(&deep)).await;
        assert_eq!(status, 400, "{path}: {text}");
        assert_eq!(parse(&text)["error"]["code"], "bad_request", "{text}");
        let small = json!({ "body": "x".repeat(50) }).to_string();
        let (status, text) = server.http("POST", path, Some(KEY), Some(&small)).await;
        assert_eq!(status, 200, "{path}: {text}");
    }
    // Ids are bounded as on `/ws` (128 bytes).
    let long_id = json!({ "body": 1, "id": "i".repeat(129) }).to_string();
    let (status, text) = server
        .http(
            "POST",
            "/api/rooms/lobby/messages",
            Some(KEY),
            Some(&long_id),
        )
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("longer than 128 bytes"), "{text}");
    // Nothing refused was stored: the room holds the one accepted message.
    let (_, text) = server
        .http("GET", "/api/rooms/lobby/messages", Some(KEY), None)
        .await;
    assert_eq!(parse(&text)["messages"].as_array().map(Vec::len), Some(1));
}

/// Sends a request head announcing a 2 MB body, then nothing; returns the
/// status line the server answers with.
async fn announce_big_body(server: &Server, authorization: Option<&str>) -> String {
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST /api/rooms/x/messages HTTP/1.1\r\nHost: x\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n{{\"body\":\""
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = vec![0; 512];
    let n = tokio::time::timeout(common::TIMEOUT, stream.read(&mut response))
        .await
        .expect("the server held the connection without answering")
        .unwrap();
    String::from_utf8_lossy(&response[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Nobody makes the API hold a body it will refuse: the key is checked
/// before the body is read, a body is read within the handshake timeout,
/// and never beyond `--max-body` (plus room for `from` and `id`).
#[tokio::test]
async fn api_bodies_are_authenticated_bounded_and_timed() {
    let server = Server::start_with(&["--api-key", KEY, "--handshake-timeout", "1s"]);
    // No key, or a wrong one: refused at once, the body never read.
    assert!(announce_big_body(&server, None).await.contains(" 401 "));
    assert!(announce_big_body(&server, Some("Bearer nope"))
        .await
        .contains(" 401 "));
    // With the key: the body never arrives in full, so the read times out
    // (or stops at the size bound) instead of waiting for 2 MB.
    let status = announce_big_body(&server, Some(&format!("Bearer {KEY}"))).await;
    assert!(
        status.contains(" 408 ") || status.contains(" 413 "),
        "{status}"
    );
    // A body over the bound, sent in full, is refused as too large.
    let big = json!({ "body": "x".repeat(64 * 1024) }).to_string();
    let (status, text) = server
        .http("POST", "/api/rooms/lobby/messages", Some(KEY), Some(&big))
        .await;
    assert_eq!(status, 413, "{text}");
    assert_eq!(parse(&text)["error"]["code"], "too_large");
    // The server is fine.
    let (status, _) = server.http("GET", "/api/rooms", Some(KEY), None).await;
    assert_eq!(status, 200);
}

/// A query string or path the router cannot decode gets the API's JSON
/// error (after authentication), like every other bad request.
#[tokio::test]
async fn undecodable_api_queries_get_json_errors() {
    let server = Server::start_with(&["--api-key", KEY]);
    for path in [
        "/api/rooms/lobby/messages?limit=abc",
        "/api/rooms/lobby/messages?before=-1",
        "/api/rooms/%FF/presence",
    ] {
        let (status, text) = server.http("GET", path, Some(KEY), None).await;
        assert_eq!(status, 400, "{path}: {text}");
        assert_eq!(
            parse(&text)["error"]["code"],
            "bad_request",
            "{path}: {text}"
        );
    }
    // Without the key, the key is what is refused.
    let (status, text) = server
        .http("GET", "/api/rooms/lobby/messages?limit=abc", None, None)
        .await;
    assert_eq!(status, 401, "{text}");
}
