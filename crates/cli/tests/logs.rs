//! Logs: `--log-format json` writes one JSON object per line, text logs
//! carry no colour codes into a file, and no token, API key or message body
//! is logged at any level.

mod common;

use common::Server;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A log file for one test, removed when dropped.
struct LogFile(std::path::PathBuf);

impl LogFile {
    fn new(name: &str) -> LogFile {
        LogFile(
            std::env::temp_dir().join(format!("switchboard-log-{}-{name}.log", std::process::id())),
        )
    }

    fn read(&self) -> String {
        std::fs::read_to_string(&self.0).expect("read the log")
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Stops the server gracefully (so that everything it logs is written) and
/// returns its stderr and the rest of its stdout.
fn stop(mut server: Server, log: &LogFile) -> String {
    server.signal("TERM");
    assert_eq!(server.wait_exit(common::TIMEOUT), Some(0));
    format!("{}{}", log.read(), server.rest_of_stdout())
}

#[test]
fn json_logs_are_one_object_per_line() {
    let log = LogFile::new("json");
    let server =
        Server::start_logging_to(&log.0, &["--log-format", "json"], &[("RUST_LOG", "debug")]);
    let logs = stop(server, &log);
    let mut messages = Vec::new();
    for line in logs.lines() {
        let event: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line:?}"));
        assert!(event["level"].is_string(), "{line}");
        assert!(event["timestamp"].is_string(), "{line}");
        messages.push(event["message"].as_str().unwrap_or_default().to_string());
    }
    // The events' fields are at the top level, where shippers index them.
    assert!(messages.iter().any(|m| m == "listening"), "{logs}");
    assert!(messages.iter().any(|m| m == "shutdown complete"), "{logs}");
}

#[test]
fn text_logs_into_a_file_have_no_colour_codes() {
    let log = LogFile::new("text");
    let server = Server::start_logging_to(&log.0, &[], &[("RUST_LOG", "debug")]);
    let logs = stop(server, &log);
    assert!(logs.contains("listening"), "{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "escape codes in a redirected log: {logs:?}"
    );
}

const JWT_SECRET: &str = "jwt-secret-never-logged-7f3a";
const API_KEY: &str = "api-key-never-logged-91c2";

fn token(user: &str) -> String {
    let claims = json!({"sub": user, "exp": jsonwebtoken::get_current_timestamp() + 600});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("mint a token")
}

/// Sends one request and reads its response head (enough to know the
/// server handled it), for requests whose response does not end by itself.
async fn request_head(server: &Server, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(common::TIMEOUT, stream.read_u8())
            .await
            .expect("response timeout")
            .expect("read");
        head.push(byte);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn secrets_and_bodies_are_never_logged() {
    let log = LogFile::new("secrets");
    let server = Server::start_logging_to(
        &log.0,
        &[
            "--jwt-secret",
            JWT_SECRET,
            "--api-key",
            API_KEY,
            "--hello-timeout",
            "1s",
        ],
        &[("RUST_LOG", "trace")],
    );
    let hello_token = token("ann");
    let query_token = token("bob");
    let sse_token = token("cat");
    // Not valid tokens: a server may be tempted to log what it refused.
    let forged_token = "forged.token-never-logged.5d1e";
    let wrong_key = "wrong-api-key-never-logged-4b7a";
    let room_body = "room-body-never-logged-2c9f";
    let api_body = "api-body-never-logged-8e06";
    let direct_body = "direct-body-never-logged-a31d";

    // hello with a token, then a publish.
    let mut ann = common::Client::connect(&server.url("/ws")).await;
    let welcome = ann
        .request(json!({"type": "hello", "token": hello_token}))
        .await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    ann.join("lobby").await;
    ann.publish("lobby", json!({"text": room_body})).await;
    // A direct message.
    let mut bob = common::Client::connect(&server.url(&format!("/ws?token={query_token}"))).await;
    assert_eq!(bob.expect("welcome").await["user"], "bob");
    let reply = ann
        .request(json!({"type": "send", "to": "bob", "body": direct_body}))
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    assert_eq!(bob.expect("direct").await["body"], direct_body);
    // The API with the key, and with a wrong one.
    let (status, body) = server
        .http(
            "POST",
            "/api/rooms/lobby/messages",
            Some(API_KEY),
            Some(&json!({"body": {"text": api_body}}).to_string()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // (A publisher does not get its own messages back: this is the API's.)
    assert_eq!(ann.expect("message").await["body"]["text"], api_body);
    let (status, _) = server
        .http("GET", "/api/rooms", Some(wrong_key), None)
        .await;
    assert_eq!(status, 401);
    // A refused token in the query and in a hello.
    let mut forged =
        common::Client::connect(&server.url(&format!("/ws?token={forged_token}"))).await;
    let refusal = forged.recv().await;
    assert_eq!(refusal["type"], "error", "{refusal}");
    let mut forged_hello = common::Client::connect(&server.url("/ws")).await;
    let refusal = forged_hello
        .request(json!({"type": "hello", "token": forged_token}))
        .await;
    assert_eq!(refusal["type"], "error", "{refusal}");
    // The HTTP fallback with a token in the query.
    let head = request_head(
        &server,
        &format!(
            "GET /sse?token={sse_token} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop((ann, bob, forged, forged_hello));

    let logs = stop(server, &log);
    // The capture works and is at trace level: the start-up line is there.
    assert!(logs.contains("listening"), "{logs}");
    for secret in [
        JWT_SECRET,
        API_KEY,
        &hello_token,
        &query_token,
        &sse_token,
        forged_token,
        wrong_key,
        room_body,
        api_body,
        direct_body,
    ] {
        assert!(!logs.contains(secret), "`{secret}` was logged:\n{logs}");
    }
    // A token's signature alone is as much a secret as the whole.
    for whole in [&hello_token, &query_token, &sse_token] {
        let signature = whole.rsplit('.').next().unwrap_or(whole);
        assert!(
            !logs.contains(signature),
            "a token signature was logged:\n{logs}"
        );
    }
}
