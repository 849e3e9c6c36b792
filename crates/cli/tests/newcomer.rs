//! What a newcomer trips over first, each answered with a clear message
//! instead of silence: a second server on a taken port, a token sent to a
//! server with auth off, and `?user=` without a token on a server with auth
//! on.

mod common;

use std::process::Command;

use common::{Client, Server};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "test-secret-0123456789";

fn token(user: &str) -> String {
    let claims = json!({"sub": user, "exp": jsonwebtoken::get_current_timestamp() + 600});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode a token")
}

#[test]
fn a_taken_port_is_named_with_the_way_out() {
    let first = Server::start();
    let data_dir = common::temp_dir();
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--store", "memory", "--listen"])
        .arg(first.addr.to_string())
        .arg("--data-dir")
        .arg(&data_dir)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run a second server");
    let _ = std::fs::remove_dir_all(&data_dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the second server started");
    assert!(
        stderr.contains(&format!("cannot listen on {}", first.addr)),
        "{stderr}"
    );
    assert!(stderr.contains("Address already in use"), "{stderr}");
    assert!(stderr.contains("stop it"), "{stderr}");
    assert!(stderr.contains("--listen"), "{stderr}");
}

#[tokio::test]
async fn auth_off_says_a_token_was_ignored() {
    let server = Server::start();
    // ?token= with ?user=: identified at once, as the user named.
    let mut c = Client::connect(&server.url("/ws?user=ann&token=abc.def.ghi")).await;
    let welcome = c.expect("welcome").await;
    assert_eq!(welcome["user"], "ann");
    let warning = welcome["warning"].as_str().unwrap_or_default();
    assert!(
        warning.contains("authentication is off") && warning.contains("token was ignored"),
        "{welcome}"
    );
    // ?token= alone: a guest, told why.
    let mut c = Client::connect(&server.url("/ws?token=abc.def.ghi")).await;
    c.command(json!({"type": "ping"})).await;
    let welcome = c.expect("welcome").await;
    assert!(welcome["user"]
        .as_str()
        .unwrap_or_default()
        .starts_with("guest-"));
    assert!(welcome["warning"].is_string(), "{welcome}");
    // hello.token.
    let mut c = Client::connect(&server.url("/ws")).await;
    let welcome = c
        .request(json!({"type": "hello", "user": "bob", "token": "abc.def.ghi"}))
        .await;
    assert_eq!(welcome["user"], "bob");
    assert!(welcome["warning"].is_string(), "{welcome}");
    // No token: no warning.
    let mut c = Client::connect(&server.url("/ws?user=cat")).await;
    let welcome = c.expect("welcome").await;
    assert!(welcome.get("warning").is_none(), "{welcome}");
}

#[tokio::test]
async fn auth_on_user_without_token_is_told_at_once_and_may_still_hello() {
    // A long --hello-timeout: the error must come at once, not when the
    // timeout ends (the test would hit common::TIMEOUT first).
    let server = Server::start_with(&["--jwt-secret", SECRET, "--hello-timeout", "60s"]);
    let mut c = Client::connect(&server.url("/ws?user=ann")).await;
    let error = c.expect("error").await;
    assert_eq!(error["code"], "unauthorized", "{error}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("a token is required"), "{error}");
    assert!(message.contains("within 60 s"), "{error}");
    assert!(error.get("id").is_none(), "{error}");
    // The window for a hello with a token is still open.
    let welcome = c
        .request(json!({"type": "hello", "token": token("ann")}))
        .await;
    assert_eq!(
        (welcome["type"].as_str(), welcome["user"].as_str()),
        (Some("welcome"), Some("ann"))
    );
    c.join("lobby").await;
    // Without ?user= nothing changes: the session waits for hello quietly.
    let mut quiet = Client::connect(&server.url("/ws")).await;
    let welcome = quiet
        .request(json!({"type": "hello", "token": token("bob")}))
        .await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
}
