//! JWT authentication, room claims, token expiry and refresh, and the
//! `switchboard token` command.

mod common;

use std::process::Command;

use common::{Client, Ended, Server};
use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "test-secret-0123456789";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn ann(ttl: u64) -> String {
    token(json!({"sub": "ann", "exp": now() + ttl}))
}

fn auth_server(extra: &[&str]) -> Server {
    let mut args = vec!["--jwt-secret", SECRET, "--hello-timeout", "1s"];
    args.extend_from_slice(extra);
    Server::start_with(&args)
}

/// Reads until the connection ends; returns the `error` events seen and how it ended.
async fn refused(c: &mut Client) -> (Vec<Value>, Ended) {
    let mut errors = Vec::new();
    loop {
        match tokio::time::timeout(common::TIMEOUT, c.ws.next())
            .await
            .expect("not closed")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                errors.push(serde_json::from_str(&t).unwrap())
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f))) => {
                return (
                    errors,
                    Ended::Close(f.map(|f| u16::from(f.code)).unwrap_or(0)),
                )
            }
            Some(Ok(_)) => {}
            _ => return (errors, Ended::Dropped),
        }
    }
}

#[tokio::test]
async fn token_in_query_header_or_hello() {
    let server = auth_server(&[]);
    // ?token=
    let mut c = Client::connect(&server.url(&format!("/ws?token={}", ann(60)))).await;
    assert_eq!(c.expect("welcome").await["user"], "ann");
    // Authorization: Bearer
    let mut request = server.url("/ws").into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", ann(60)).parse().unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut c = Client::from_stream(ws);
    assert_eq!(c.expect("welcome").await["user"], "ann");
    // hello {token}; a user named in the query is ignored when auth is on.
    // The client is told at once that a token is required (newcomer.rs).
    let mut c = Client::connect(&server.url("/ws?user=mallory")).await;
    assert_eq!(c.expect("error").await["code"], "unauthorized");
    let w = c.request(json!({"type": "hello", "token": ann(60)})).await;
    assert_eq!(
        (w["type"].as_str(), w["user"].as_str()),
        (Some("welcome"), Some("ann"))
    );
}

#[tokio::test]
async fn missing_or_bad_tokens_get_unauthorized_and_4001() {
    let server = auth_server(&[]);
    let wrong_secret = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "ann", "exp": now() + 60}),
        &EncodingKey::from_secret(b"not the secret"),
    )
    .unwrap();
    let expired = token(json!({"sub": "ann", "exp": now() - 3600}));
    let early = token(json!({"sub": "ann", "exp": now() + 3600, "nbf": now() + 1800}));
    let no_sub = token(json!({"exp": now() + 60}));
    for (bad, why) in [
        (wrong_secret.as_str(), "bad token signature"),
        (expired.as_str(), "token expired"),
        (early.as_str(), "nbf"),
        (no_sub.as_str(), "invalid token"),
        ("garbage", "malformed token"),
    ] {
        // In the query...
        let mut c = Client::connect(&server.url(&format!("/ws?token={bad}"))).await;
        let (errors, end) = refused(&mut c).await;
        assert_eq!(end, Ended::Close(4001), "{why}");
        assert_eq!(errors[0]["code"], "unauthorized");
        assert!(
            errors[0]["message"].as_str().unwrap().contains(why),
            "{errors:?}"
        );
        // ...and in hello.
        let mut c = Client::connect(&server.url("/ws")).await;
        c.send(json!({"type": "hello", "token": bad, "id": 1}))
            .await;
        let (errors, end) = refused(&mut c).await;
        assert_eq!(end, Ended::Close(4001));
        assert_eq!(
            (errors[0]["code"].as_str(), errors[0]["id"].as_u64()),
            (Some("unauthorized"), Some(1))
        );
    }
    // Another command before hello.
    let mut c = Client::connect(&server.url("/ws")).await;
    c.send(json!({"type": "join", "room": "r"})).await;
    let (errors, end) = refused(&mut c).await;
    assert_eq!(
        (errors[0]["code"].as_str(), end),
        (Some("unauthorized"), Ended::Close(4001))
    );
    // Nothing at all within --hello-timeout.
    let mut c = Client::connect(&server.url("/ws")).await;
    let (errors, end) = refused(&mut c).await;
    assert_eq!(
        (errors[0]["code"].as_str(), end),
        (Some("unauthorized"), Ended::Close(4001))
    );
}

#[tokio::test]
async fn rooms_claim_limits_join_publish_and_history() {
    let server = auth_server(&[]);
    let t = token(json!({"sub": "ann", "exp": now() + 60, "rooms": ["team-*", "lobby"]}));
    let mut c = Client::connect(&server.url(&format!("/ws?token={t}"))).await;
    c.expect("welcome").await;
    c.join("team-red").await;
    c.join("lobby").await;
    for command in [
        json!({"type": "join", "room": "secret"}),
        json!({"type": "publish", "room": "secret", "body": 1}),
        json!({"type": "history", "room": "secret"}),
    ] {
        let e = c.request(command).await;
        assert_eq!(e["code"], "forbidden", "{e}");
    }
    c.publish("team-red", json!("ok")).await;
}

/// The `rooms` claim holds for the messenger commands too, also after a
/// refresh narrowed it (memberships outlive the refresh), and hides the
/// rooms it does not allow from the conversation list.
#[tokio::test]
async fn rooms_claim_limits_read_edit_recall_signal_and_the_list() {
    let server = auth_server(&[]);
    let all = token(json!({"sub": "ann", "exp": now() + 60}));
    let mut wide = Client::connect(&server.url(&format!("/ws?token={all}"))).await;
    wide.expect("welcome").await;
    for room in ["secret", "team-red"] {
        wide.join(room).await;
        let ack = wide.publish(room, json!("x")).await;
        wide.send(json!({"type": "read", "room": room, "upto": ack["seq"]}))
            .await;
    }
    let list = wide.request(json!({"type": "conversations"})).await;
    assert_eq!(list["conversations"].as_array().unwrap().len(), 2, "{list}");

    let some = token(json!({"sub": "ann", "exp": now() + 60, "rooms": ["team-*"]}));
    let mut narrow = Client::connect(&server.url(&format!("/ws?token={some}"))).await;
    narrow.expect("welcome").await;
    for command in [
        json!({"type": "read", "room": "secret", "upto": 1}),
        json!({"type": "edit", "room": "secret", "target": 1, "body": 2}),
        json!({"type": "recall", "room": "secret", "target": 1}),
        json!({"type": "signal", "room": "secret", "body": 1}),
    ] {
        let e = narrow.request(command).await;
        assert_eq!(e["code"], "forbidden", "{e}");
    }
    let list = narrow.request(json!({"type": "conversations"})).await;
    let rooms: Vec<&str> = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["room"].as_str().unwrap())
        .collect();
    assert_eq!(rooms, ["team-red"], "{list}");

    // The wide connection narrows its token: its membership of `secret`
    // stays, its rights there do not.
    let w = wide.request(json!({"type": "hello", "token": some})).await;
    assert_eq!(w["type"], "welcome", "{w}");
    let e = wide
        .request(json!({"type": "signal", "room": "secret", "body": {"typing": true}}))
        .await;
    assert_eq!(e["code"], "forbidden", "{e}");
}

/// A connection whose token expires is closed with 4001, unless it sent a
/// fresh token with `hello` first.
#[tokio::test]
async fn expiring_tokens_close_unless_refreshed() {
    let server = auth_server(&["--jwt-leeway", "1ms"]);
    let mut stale = Client::connect(&server.url(&format!("/ws?token={}", ann(2)))).await;
    stale.expect("welcome").await;
    let mut fresh = Client::connect(&server.url(&format!("/ws?token={}", ann(2)))).await;
    fresh.expect("welcome").await;
    let w = fresh
        .request(json!({"type": "hello", "token": ann(600)}))
        .await;
    assert_eq!(w["type"], "welcome");
    // A token for someone else is not a refresh.
    let other = token(json!({"sub": "bob", "exp": now() + 600}));
    assert_eq!(
        fresh
            .request(json!({"type": "hello", "token": other}))
            .await["code"],
        "forbidden"
    );

    let (errors, end) = refused(&mut stale).await;
    assert_eq!(end, Ended::Close(4001));
    assert!(errors[0]["message"].as_str().unwrap().contains("expired"));
    // The refreshed one outlived the stale one's expiry.
    fresh.expect_nothing_pending().await;
}

fn openssl(args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .status()
        .expect("openssl");
    assert!(status.success(), "openssl {args:?}");
}

#[tokio::test]
async fn rs256_es256_and_jwks() {
    let dir = common::temp_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| dir.join(name).to_string_lossy().to_string();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &path("rsa.pem"),
    ]);
    openssl(&[
        "pkey",
        "-in",
        &path("rsa.pem"),
        "-pubout",
        "-out",
        &path("rsa.pub"),
    ]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &path("ec.pem"),
    ]);
    openssl(&[
        "pkey",
        "-in",
        &path("ec.pem"),
        "-pubout",
        "-out",
        &path("ec.pub"),
    ]);
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(path("rsa.pem")).unwrap()).unwrap();
    let ec = EncodingKey::from_ec_pem(&std::fs::read(path("ec.pem")).unwrap()).unwrap();
    let claims = json!({"sub": "ann", "exp": now() + 60});
    let sign = |alg, key: &EncodingKey, kid: Option<&str>| {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    };

    for (public, alg, key, other_alg, other_key) in [
        ("rsa.pub", Algorithm::RS256, &rsa, Algorithm::ES256, &ec),
        ("ec.pub", Algorithm::ES256, &ec, Algorithm::RS256, &rsa),
    ] {
        let server = Server::start_with(&["--jwt-public-key", &path(public)]);
        let mut c =
            Client::connect(&server.url(&format!("/ws?token={}", sign(alg, key, None)))).await;
        assert_eq!(c.expect("welcome").await["user"], "ann", "{alg:?}");
        // The other family, and HS256 signed with the public key text
        // (algorithm confusion), are refused.
        let pem = std::fs::read_to_string(path(public)).unwrap();
        let confused = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(pem.as_bytes()),
        )
        .unwrap();
        for bad in [sign(other_alg, other_key, None), confused] {
            let mut c = Client::connect(&server.url(&format!("/ws?token={bad}"))).await;
            assert_eq!(refused(&mut c).await.1, Ended::Close(4001));
        }
    }

    // JWKS: the token's kid picks the key.
    let mut rsa_jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap();
    rsa_jwk.common.key_id = Some("rsa-1".into());
    let mut ec_jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&ec, Algorithm::ES256).unwrap();
    ec_jwk.common.key_id = Some("ec-1".into());
    let set = jsonwebtoken::jwk::JwkSet {
        keys: vec![rsa_jwk, ec_jwk],
    };
    std::fs::write(path("jwks.json"), serde_json::to_vec(&set).unwrap()).unwrap();
    let server = Server::start_with(&["--jwks", &path("jwks.json")]);
    for t in [
        sign(Algorithm::RS256, &rsa, Some("rsa-1")),
        sign(Algorithm::ES256, &ec, Some("ec-1")),
    ] {
        let mut c = Client::connect(&server.url(&format!("/ws?token={t}"))).await;
        assert_eq!(c.expect("welcome").await["user"], "ann");
    }
    let unknown = sign(Algorithm::RS256, &rsa, Some("nope"));
    let mut c = Client::connect(&server.url(&format!("/ws?token={unknown}"))).await;
    let (errors, end) = refused(&mut c).await;
    assert_eq!(end, Ended::Close(4001));
    assert!(errors[0]["message"]
        .as_str()
        .unwrap()
        .contains("unknown key id"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn token_command_mints_a_working_token() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "token",
            "--user",
            "dev",
            "--ttl",
            "10m",
            "--rooms",
            "team-*,lobby",
            "--name",
            "Dev",
        ])
        .env("SWITCHBOARD_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let server = auth_server(&[]);
    let mut c = Client::connect(&server.url(&format!("/ws?token={minted}"))).await;
    assert_eq!(c.expect("welcome").await["user"], "dev");
    c.join("team-x").await;
    assert_eq!(
        c.request(json!({"type": "join", "room": "other"})).await["code"],
        "forbidden"
    );
}

/// A token whose `exp` is practically never (2^63 seconds and more) must not
/// overflow the expiry timer: the session works, and when it closes every
/// registration is undone (presence leave, connection gauge).
#[tokio::test]
async fn a_far_future_exp_neither_panics_nor_leaks_the_connection() {
    let server = auth_server(&[]);
    let bob = token(json!({"sub": "bob", "exp": now() + 600}));
    let mut watcher = Client::connect(&server.url(&format!("/ws?token={bob}"))).await;
    watcher.expect("welcome").await;
    watcher.join("lobby").await;
    for exp in [1u64 << 63, u64::MAX] {
        let t = token(json!({"sub": "ann", "exp": exp}));
        let mut c = Client::connect(&server.url(&format!("/ws?token={t}"))).await;
        assert_eq!(c.expect("welcome").await["user"], "ann");
        c.join("lobby").await;
        assert_eq!(watcher.expect("presence").await["event"], "join");
        c.publish("lobby", json!("still here")).await;
        assert_eq!(watcher.expect("message").await["body"], "still here");
        c.ws.close(None).await.unwrap();
        let leave = watcher.expect("presence").await;
        assert_eq!(
            (leave["event"].as_str(), leave["user"].as_str()),
            (Some("leave"), Some("ann"))
        );
        assert_eq!(server.metric("switchboard_connections").await, 1.0);
    }
}

/// Who is online in a room is the room's business: `presence` is refused
/// for a room the token's `rooms` claim does not allow.
#[tokio::test]
async fn rooms_claim_limits_presence() {
    let server = auth_server(&[]);
    let t = token(json!({"sub": "ann", "exp": now() + 60, "rooms": ["lobby"]}));
    let mut c = Client::connect(&server.url(&format!("/ws?token={t}"))).await;
    c.expect("welcome").await;
    let e = c
        .request(json!({"type": "presence", "room": "secret"}))
        .await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("forbidden"))
    );
    let p = c
        .request(json!({"type": "presence", "room": "lobby"}))
        .await;
    assert_eq!(p["type"], "presence", "{p}");
}

/// The `Authorization` scheme is case-insensitive (RFC 9110 §11.1):
/// `bearer` works like `Bearer`, for WebSocket tokens and the API key.
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let server = auth_server(&["--api-key", "k-123"]);
    let mut request = server.url("/ws").into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("bearer {}", ann(60)).parse().unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut c = Client::from_stream(ws);
    assert_eq!(c.expect("welcome").await["user"], "ann");
    let (status, body) = server
        .http_with_auth("GET", "/api/rooms", "BEARER k-123")
        .await;
    assert_eq!(status, 200, "{body}");
}
