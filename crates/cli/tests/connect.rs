//! `switchboard connect`, the terminal client: driven in pseudo-terminals
//! as a person would (rexpect), and with piped stdin as a script would,
//! against the real server; a WebSocket test client checks what it sent.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;

use common::{Server, TIMEOUT};
use rexpect::session::PtySession;
use serde_json::json;

/// A terminal client in a pseudo-terminal.
fn terminal(server: &Server, args: &[&str]) -> PtySession {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .arg("connect")
        .arg(server.url("/ws"))
        .args(args)
        .env("RUST_BACKTRACE", "0");
    let timeout = TIMEOUT.as_millis() as u64;
    rexpect::session::spawn_command(command, Some(timeout)).expect("spawn in a pty")
}

/// rexpect reads the terminal byte by byte, each byte one `char`: a UTF-8
/// needle (→, ✓) is matched in that form.
fn bytes(text: &str) -> String {
    text.bytes().map(char::from).collect()
}

/// Waits for `text` on the terminal.
fn expect(term: &mut PtySession, text: &str) {
    if let Err(err) = term.exp_string(&bytes(text)) {
        panic!("waiting for {text:?}: {err}");
    }
}

fn typed(term: &mut PtySession, line: &str) {
    term.send_line(line).expect("type a line");
}

#[test]
fn two_terminals_chat_in_a_room_and_send_directs_both_ways() {
    let server = Server::start();
    let mut alice = terminal(&server, &["--user", "alice"]);
    expect(&mut alice, "* connected as alice");
    expect(&mut alice, "* type /help for the commands");
    typed(&mut alice, "/join lobby");
    expect(&mut alice, "* joined lobby (1 online, latest #0)");

    let mut bob = terminal(&server, &["--user", "bob"]);
    expect(&mut bob, "* connected as bob");
    typed(&mut bob, "/join lobby");
    expect(&mut bob, "* joined lobby (2 online, latest #0)");
    expect(&mut alice, "* bob joined lobby (2 online)");

    // Plain text goes to the current room.
    typed(&mut bob, "hi alice");
    expect(&mut bob, "✓ lobby #1 (delivered to 1)");
    expect(&mut alice, "[lobby #1] bob: hi alice");
    typed(&mut alice, "hello bob, 你好");
    expect(&mut alice, "✓ lobby #2 (delivered to 1)");
    expect(&mut bob, "[lobby #2] alice: hello bob, 你好");

    // Direct messages, both ways.
    typed(&mut alice, "/send bob psst");
    expect(&mut alice, "✓ to bob #1 (stored; 1 connection(s) online)");
    expect(&mut bob, "alice → you: psst");
    typed(&mut bob, "/send alice what?");
    expect(&mut bob, "✓ to alice #1");
    expect(&mut alice, "bob → you: what?");

    // Bad input: a clear error each, and the client goes on.
    typed(&mut alice, "{not json");
    expect(&mut alice, "error: bad_request: malformed JSON");
    typed(&mut alice, "/frobnicate");
    expect(
        &mut alice,
        "error: unknown command /frobnicate (/help lists the commands)",
    );
    typed(&mut alice, "/send bob");
    expect(&mut alice, "error: usage: /send USER TEXT");
    typed(
        &mut alice,
        r#"{"type":"publish","room":"kitchen","body":"x","id":"k1"}"#,
    );
    expect(&mut alice, "error (publish): not_joined");
    typed(&mut alice, "still here");
    expect(&mut bob, "[lobby #3] alice: still here");

    // Shorthands for history and presence.
    typed(&mut bob, "/history lobby 2");
    expect(&mut bob, "* history of lobby: 2 message(s)");
    expect(&mut bob, "[lobby #2] alice: hello bob, 你好");
    expect(&mut bob, "[lobby #3] alice: still here");
    typed(&mut bob, "/presence");
    expect(&mut bob, "* in lobby: 2 online: alice, bob");

    // Leaving is seen by the other side; /quit ends the client.
    typed(&mut alice, "/quit");
    if let Err(err) = alice.exp_eof() {
        panic!("alice's client did not exit on /quit: {err}");
    }
    expect(&mut bob, "* alice left lobby (1 online)");
    typed(&mut bob, "/quit");
    if let Err(err) = bob.exp_eof() {
        panic!("bob's client did not exit on /quit: {err}");
    }
}

/// A client with piped stdin and stdout, read line by line.
struct Piped {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Piped {
    fn start(server: &Server, args: &[&str]) -> Piped {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("connect")
            .arg(server.url("/ws"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn switchboard connect");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        // A thread, so that waiting for a line is bounded by TIMEOUT.
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Piped {
            child,
            stdin,
            lines,
        }
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("write to the client");
    }

    /// Lines up to and including the first that contains `text`.
    fn until(&mut self, text: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(TIMEOUT) {
                Ok(line) => {
                    let found = line.contains(text);
                    seen.push(line);
                    if found {
                        return seen;
                    }
                }
                Err(_) => panic!("no line with {text:?}; got {seen:#?}"),
            }
        }
    }

    /// Closes stdin: the client finishes, exits. Its remaining output and
    /// exit code.
    fn finish(mut self) -> (Vec<String>, Option<i32>) {
        drop(self.stdin.take());
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(TIMEOUT) {
            rest.push(line);
        }
        let status = self.child.wait().expect("wait for the client");
        (rest, status.code())
    }
}

#[tokio::test]
async fn a_script_waits_for_its_acks_and_the_inbox_is_confirmed_per_device() {
    let server = Server::start();
    let mut carol = server.connect("carol").await;
    let ack = carol
        .request(json!({"type": "send", "to": "bob", "body": {"text": "first"}}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");

    // Bob's phone: the waiting direct is shown and confirmed; then a script
    // publishes and the client exits once the acks are in.
    let mut phone = Piped::start(&server, &["--user", "bob", "--device", "phone"]);
    let seen = phone.until("carol → you: first");
    assert_eq!(seen[0], "* connected as bob", "{seen:?}");
    phone.type_line("/join lobby");
    phone.type_line("from a script");
    phone.type_line("/send carol done");
    let (rest, code) = phone.finish();
    assert_eq!(code, Some(0), "{rest:?}");
    assert_eq!(
        rest,
        [
            "* joined lobby (1 online, latest #0)",
            "  ✓ lobby #1 (delivered to 0)",
            "  ✓ to carol #1 (stored; 1 connection(s) online)",
        ]
    );
    let direct = carol.expect("direct").await;
    assert_eq!(direct["body"], json!({"text": "done"}));
    let history = carol
        .request(json!({"type": "history", "room": "lobby"}))
        .await;
    assert_eq!(
        history["messages"][0]["body"],
        json!({"text": "from a script"})
    );

    // The phone again: "first" was confirmed, so only the new one comes.
    // (Live directs wait behind the inbox delivery: were "first" sent
    // again, it would come before "second".)
    let mut phone = Piped::start(&server, &["--user", "bob", "--device", "phone"]);
    phone.until("* connected as bob");
    carol
        .request(json!({"type": "send", "to": "bob", "body": {"text": "second"}}))
        .await;
    let seen = phone.until("carol → you: second");
    assert_eq!(seen, ["carol → you: second"]);
    let (rest, code) = phone.finish();
    assert_eq!((rest.len(), code), (0, Some(0)), "{rest:?}");

    // Another device has its own cursor: it gets both.
    let mut laptop = Piped::start(&server, &["--user", "bob", "--device", "laptop"]);
    let seen = laptop.until("carol → you: second");
    assert_eq!(
        seen,
        [
            "* connected as bob",
            "carol → you: first",
            "carol → you: second"
        ]
    );
    let (_, code) = laptop.finish();
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn raw_mode_prints_the_json_and_a_refused_connection_says_why() {
    let server = Server::start();
    let mut raw = Piped::start(&server, &["--user", "dan", "--raw"]);
    let seen = raw.until("welcome");
    assert!(
        seen[0].starts_with(r#"{"type":"welcome","user":"dan""#),
        "{seen:?}"
    );
    raw.type_line(r#"{"type":"join","room":"r","id":7}"#);
    raw.type_line(r#"{"type":"publish","room":"r","body":[1,2]}"#);
    let (rest, code) = raw.finish();
    assert_eq!(code, Some(0));
    assert_eq!(
        rest,
        [
            r#"{"type":"joined","id":7,"room":"r","online":1,"seq":0}"#,
            r#"{"type":"ack","room":"r","seq":1,"delivered":0}"#,
        ]
    );

    // A server with auth on, and no token: told at once, exit 1.
    let auth = Server::start_with(&["--jwt-secret", "s3cret", "--hello-timeout", "60s"]);
    let refused = Piped::start(&auth, &["--user", "dan"]);
    let (lines, code) = refused.finish();
    assert_eq!(code, Some(1), "{lines:?}");
    assert!(
        lines[0].starts_with("error: unauthorized: a token is required"),
        "{lines:?}"
    );
    assert!(lines[1].contains("--token"), "{lines:?}");

    // A bad URL or an HTTP refusal: a one-line reason, exit 1.
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["connect", &server.url("/ws?user=%20bad")])
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run connect");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refused the connection: 400"), "{stderr}");
}
