//! Property test of the query parameters and path segment of the WebSocket
//! upgrade (`/ws?user=..&device=..`, `/relay/{channel}?echo=..`) against the
//! real server: random, percent-encoded (often invalid) values get exactly
//! 400 when a value breaks the rules, and an upgrade otherwise; the server
//! never fails and stays healthy.
//!
//! Cases: `PROPTEST_CASES` (default 256), like the proptest targets in
//! crates/protocol and crates/ws. A failure prints the seed; rerun it with
//! `QUERY_FUZZ_SEED=<seed> PROPTEST_CASES=1`.

mod common;

use common::Server;
use switchboard_protocol::{validate_device, validate_room, validate_user};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

fn pct(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

/// A raw (encoded) value: plain characters, `+`, valid and invalid percent
/// escapes of any byte (control characters, invalid UTF-8, `&`, `=`, `/`),
/// percent-encoded non-ASCII characters.
fn raw_value(rng: &mut Rng, plus_is_space: bool) -> String {
    let mut s = String::new();
    for _ in 0..rng.below(10) {
        match rng.below(12) {
            0..=3 => s.push_str(rng.pick(&["a", "Z", "0", "-", "_", ".", "~", "bob", "lobby"])),
            4 if plus_is_space => s.push('+'),
            5 => s.push_str(&pct(&[rng.next() as u8])),
            6 => {
                let c = char::from_u32((rng.next() % 0x11_0000) as u32).unwrap_or('é');
                s.push_str(&pct(c.to_string().as_bytes()));
            }
            7 => s.push_str(rng.pick(&["%20", "%09", "%00", "%7F", "%C2%85", "%E2%80%A8"])),
            8 => s.push_str(rng.pick(&["%", "%G1", "%4", "%%"])),
            9 => s.push_str(rng.pick(&["%26", "%3D", "%2F", "%3F", "%23", "%2B", ";", "!", "*"])),
            10 => s.push_str(&"x".repeat(rng.below(140))),
            _ => s.push_str(&pct("小明".as_bytes())),
        }
    }
    s
}

/// Percent-decoding as `application/x-www-form-urlencoded` (queries) or as
/// a path segment (no `+`), then the text as the server sees it.
fn decode(raw: &str, plus_is_space: bool) -> Vec<u8> {
    let b = raw.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() && hex(b[i + 1]).is_some() && hex(b[i + 2]).is_some() => {
                out.push((hex(b[i + 1]).unwrap() * 16 + hex(b[i + 2]).unwrap()) as u8);
                i += 3;
                continue;
            }
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn form_value(raw: &str) -> String {
    String::from_utf8_lossy(&decode(raw, true)).into_owned()
}

/// One upgrade request; the status code of the answer.
async fn upgrade_status(server: &Server, target: &str) -> u16 {
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = tokio::time::timeout(common::TIMEOUT, stream.read(&mut buf))
            .await
            .expect("answer timeout")
            .expect("read");
        assert!(n > 0, "{target}: connection closed without an answer");
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{target}: bad status line {line:?}"))
}

/// A `/ws` request and whether the server must refuse it with 400.
fn ws_case(rng: &mut Rng) -> (String, bool) {
    let mut pairs = Vec::new();
    for _ in 0..rng.below(4) {
        let key = rng.pick(&["user", "user", "device", "device", "%75ser", "echo", "x"]);
        pairs.push((key.to_string(), raw_value(rng, true)));
    }
    let query: Vec<String> = pairs
        .iter()
        .map(|(k, v)| match rng.below(8) {
            0 => k.clone(), // no `=`: empty value
            _ => format!("{k}={v}"),
        })
        .collect();
    let query = query.join(if rng.below(10) == 0 { "&&" } else { "&" });
    // Model: the decoded pairs; a known field given twice is refused.
    let decoded: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (form_value(k), form_value(v))
        })
        .collect();
    let mut bad = false;
    for (field, validate) in [
        ("user", validate_user as fn(&str) -> Result<(), String>),
        ("device", validate_device),
    ] {
        let values: Vec<&String> = decoded
            .iter()
            .filter(|(k, _)| k == field)
            .map(|(_, v)| v)
            .collect();
        bad |= values.len() > 1 || values.first().is_some_and(|v| validate(v).is_err());
    }
    (format!("/ws?{query}"), bad)
}

/// A `/relay/{channel}` request and whether it must be refused with 400.
fn relay_case(rng: &mut Rng) -> (String, bool) {
    let mut channel = raw_value(rng, false);
    if channel.is_empty() {
        channel.push('c');
    }
    let decoded = decode(&channel, false);
    let mut bad = match std::str::from_utf8(&decoded) {
        Ok(name) => validate_room(name).is_err(),
        Err(_) => true,
    };
    let mut target = format!("/relay/{channel}");
    let echoes = rng.below(3);
    for i in 0..echoes {
        let value = match rng.below(3) {
            0 => rng.pick(&["true", "false", "only"]).to_string(),
            1 => rng
                .pick(&["1", "yes", "", "TRUE", "tru%65", "onl%79", "Only"])
                .to_string(),
            _ => raw_value(rng, true),
        };
        target.push(if i == 0 { '?' } else { '&' });
        target.push_str(&format!("echo={value}"));
        bad |= !matches!(form_value(&value).as_str(), "true" | "false" | "only");
    }
    bad |= echoes > 1;
    (target, bad)
}

#[tokio::test]
async fn upgrade_query_and_path_parameters() {
    let cases: u64 = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let seed: u64 = std::env::var("QUERY_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let server = Server::start_with(&["--connect-rate-per-ip", "0"]);
    for case in 0..cases {
        let case_seed = seed.wrapping_add(case.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
        let mut rng = Rng(case_seed);
        let (target, bad) = if rng.below(2) == 0 {
            ws_case(&mut rng)
        } else {
            relay_case(&mut rng)
        };
        let status = upgrade_status(&server, &target).await;
        let ok = if bad { status == 400 } else { status == 101 };
        assert!(
            ok,
            "{target}: got {status}, expected {} (rerun: QUERY_FUZZ_SEED={case_seed} \
             with case 0, i.e. PROPTEST_CASES=1)",
            if bad { 400 } else { 101 }
        );
    }
    // The server is still serving after all of that.
    assert_eq!(server.http_get("/healthz").await.0, 200);
}

/// A query string the router cannot decode (a repeated key, a bad value) is
/// refused like every other bad upgrade: 400, and counted as refused.
#[tokio::test]
async fn undecodable_queries_are_counted_refusals() {
    let server = Server::start();
    let refused = "switchboard_connections_refused_total";
    assert_eq!(server.metric(refused).await, 0.0);
    for (n, target) in [
        "/ws?user=a&user=b",
        "/ws?user=a&device=b&device=c",
        "/relay/lobby?echo=maybe",
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(upgrade_status(&server, target).await, 400, "{target}");
        assert_eq!(server.metric(refused).await, (n + 1) as f64, "{target}");
    }
}
