//! The README, run: every command in its fenced `sh` and `console` blocks
//! runs here, in order, against the real binary, and a `console` block's
//! output must be what the README shows, line for line (`…` stands for any
//! text within a line: session ids, timestamps). So the README cannot drift
//! from what the software does. Its `js` blocks run in
//! tests/node/readme.test.mjs (Node.js is not needed for `cargo test`).
//!
//! How a `console` block reads: `$ ` starts a command (a trailing `\`
//! continues it), the lines up to the next `$ ` are its output; in a
//! `switchboard connect` session, a line starting with `> ` is typed (in a
//! pseudo-terminal, as a person would), the others are printed. Sessions in
//! several terminals run side by side: a session that waits for something
//! another terminal causes (a message, a presence change, a direct) waits
//! while the next block runs, then goes on.
//!
//! What runs differently from a reader's machine, and why:
//! - `cargo run --release -- serve` and `switchboard serve` start the debug
//!   binary under test (a release build would take minutes), on a free
//!   port instead of 8080 (`127.0.0.1:8080` is replaced everywhere; other
//!   tests run at the same time), with a fresh data directory instead of
//!   ./switchboard-data. A second `serve` first stops the first one, as the
//!   README tells the reader to.
//! - Every other `switchboard` runs the same debug binary.
//! - [`SKIPPED`] lists the commands that do not run at all.

mod common;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::TIMEOUT;
use rexpect::process::wait::WaitStatus;
use rexpect::session::PtySession;

/// Commands of the README that are not run, and why.
const SKIPPED: &[(&str, &str)] = &[
    (
        "./scripts/test",
        "the whole suite, which runs this test (and takes about 16 minutes)",
    ),
    (
        "./scripts/test --quick",
        "the whole suite, which runs this test",
    ),
    (
        "./scripts/cluster",
        "Redis and three release nodes until Ctrl-C; crates/cli/tests/cluster.rs runs real nodes on a real redis-server",
    ),
    (
        "alias switchboard=target/release/switchboard",
        "no release build here: every `switchboard` runs the debug binary under test",
    ),
];

struct Block {
    lang: String,
    /// 1-based line of the opening fence, for messages.
    line: usize,
    lines: Vec<String>,
}

fn blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (n, line) in readme.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(lang)) => {
                open = Some(Block {
                    lang: lang.trim().to_string(),
                    line: n + 1,
                    lines: Vec::new(),
                })
            }
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some(block), None) => block.lines.push(line.to_string()),
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "the README ends inside a code block");
    blocks
}

/// A command and the output the README shows for it.
struct Step {
    command: String,
    output: Vec<String>,
    line: usize,
}

/// `$ ` commands (with `\` continuations) and their output lines.
fn console_steps(block: &Block) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut continued = false;
    for (i, line) in block.lines.iter().enumerate() {
        if continued {
            let step = steps.last_mut().expect("a command to continue");
            step.command.push('\n');
            step.command.push_str(line);
            continued = line.ends_with('\\');
        } else if let Some(command) = line.strip_prefix("$ ") {
            steps.push(Step {
                command: command.to_string(),
                output: Vec::new(),
                line: block.line + 1 + i,
            });
            continued = line.ends_with('\\');
        } else {
            let step = steps
                .last_mut()
                .unwrap_or_else(|| panic!("README:{}: output before any command", block.line));
            step.output.push(line.to_string());
        }
    }
    steps
}

/// An `sh` block: one command per line (and continuations), no output shown.
fn sh_steps(block: &Block) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut continued = false;
    for (i, line) in block.lines.iter().enumerate() {
        if continued {
            let step = steps.last_mut().expect("a command to continue");
            step.command.push('\n');
            step.command.push_str(line);
        } else if !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            steps.push(Step {
                command: line.to_string(),
                output: Vec::new(),
                line: block.line + 1 + i,
            });
        }
        continued = line.ends_with('\\');
    }
    steps
}

/// The command without a trailing comment or `&`, for recognising it.
fn bare(command: &str) -> &str {
    let command = command.split(" #").next().unwrap_or(command).trim();
    command.strip_suffix('&').unwrap_or(command).trim()
}

/// `…` matches any text within the line.
fn matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('…').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return pattern == text;
    }
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// A regex for one whole terminal line (`…`: any text). rexpect reads the
/// terminal byte by byte, each byte one `char`: literal text is matched in
/// that form. (rexpect's terminal does not echo what is typed.)
fn line_regex(pattern: &str) -> String {
    let escape = |text: &str| {
        let mut out = String::new();
        for c in text.bytes().map(char::from) {
            if "\\.+*?()|[]{}^$".contains(c) {
                out.push('\\');
            }
            out.push(c);
        }
        out
    };
    let parts: Vec<String> = pattern.split('…').map(escape).collect();
    format!("{}\r\n", parts.join(".*"))
}

struct Readme {
    addr: String,
    bin: PathBuf,
    /// Variables set by earlier commands (`export`, `TOKEN=$(…)`), as
    /// `export -p` writes them; every command starts by reading them.
    env_file: PathBuf,
    scratch: PathBuf,
    server: Option<Child>,
    sessions: Vec<Session>,
    /// Sessions waiting for another terminal, oldest first.
    parked: VecDeque<usize>,
}

impl Readme {
    /// The command as it runs here (see the module's doc).
    fn rewrite(&self, command: &str) -> String {
        let command = command.replace("127.0.0.1:8080", &self.addr);
        let command = command.trim_start();
        for prefix in [
            "cargo run --release -q -- ",
            "cargo run --release -- ",
            "switchboard ",
        ] {
            if let Some(rest) = command.strip_prefix(prefix) {
                return format!("\"$SWITCHBOARD_BIN\" {rest}");
            }
        }
        command.to_string()
    }

    /// `bash -c` with the variables of the commands before.
    fn bash(&self, script: &str) -> Command {
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(format!(
                // `switchboard` inside a command (`TOKEN=$(switchboard …)`).
                "set -a; . {env}; switchboard() {{ \"$SWITCHBOARD_BIN\" \"$@\"; }}\n{script}",
                env = self.env_file.display()
            ))
            .env("SWITCHBOARD_BIN", &self.bin)
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "0")
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
        command
    }

    fn run(&mut self, step: &Step) {
        let bare_command = bare(&step.command);
        if SKIPPED.iter().any(|(skipped, _)| *skipped == bare_command) {
            return;
        }
        let is_serve = ["cargo run --release -- serve", "switchboard serve"]
            .iter()
            .any(|s| bare_command == *s || bare_command.starts_with(&format!("{s} ")));
        if bare_command.starts_with("switchboard connect ") {
            // Settles the other sessions itself.
            return self.session(step);
        }
        if is_serve {
            self.serve(step);
        } else {
            self.shell(step);
        }
        // What a parked session waits for may be what this did.
        self.settle(None);
    }

    fn serve(&mut self, step: &Step) {
        if let Some(mut previous) = self.server.take() {
            let _ = previous.kill();
            let _ = previous.wait();
        }
        let data = self.scratch.join("data");
        let _ = std::fs::remove_dir_all(&data);
        let command = self.rewrite(bare(&step.command));
        let script = format!(
            "exec {command} --listen {addr} --data-dir {data}",
            addr = self.addr,
            data = data.display()
        );
        let mut child = self
            .bash(&script)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the server");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the server's first line");
        self.server = Some(child);
        let expected = step
            .output
            .iter()
            .map(|l| l.replace("127.0.0.1:8080", &self.addr));
        let shown: Vec<String> = expected.collect();
        assert!(
            shown.len() <= 1 && shown.iter().all(|l| matches(l, line.trim_end())),
            "README:{}: `{}` printed {line:?}, the README shows {:?}",
            step.line,
            step.command,
            step.output
        );
    }

    fn shell(&mut self, step: &Step) {
        let command = self.rewrite(&step.command);
        let script = format!(
            "{command}\nrc=$?; export -p > {env}; exit $rc",
            env = self.env_file.display()
        );
        let output = self
            .bash(&script)
            .stdin(Stdio::null())
            .output()
            .expect("run bash");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "README:{}: `{}` failed ({}):\n{stdout}{}",
            step.line,
            step.command,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        if step.output.is_empty() {
            return; // An `sh` block, or a command shown without output.
        }
        let printed: Vec<&str> = stdout.lines().collect();
        let expected: Vec<String> = step
            .output
            .iter()
            .map(|l| l.replace("127.0.0.1:8080", &self.addr))
            .collect();
        assert!(
            printed.len() == expected.len()
                && printed.iter().zip(&expected).all(|(p, e)| matches(e, p)),
            "README:{}: `{}` printed\n{stdout}\nthe README shows\n{}",
            step.line,
            step.command,
            step.output.join("\n")
        );
    }

    fn session(&mut self, step: &Step) {
        let command = self.rewrite(bare(&step.command));
        let bash = self.bash(&format!("exec {command}"));
        let pty = rexpect::session::spawn_command(bash, Some(TIMEOUT.as_millis() as u64))
            .expect("spawn a pseudo-terminal");
        let lines = step
            .output
            .iter()
            .map(|l| match l.strip_prefix("> ") {
                Some(typed) => Line::Typed(typed.to_string()),
                None => Line::Printed(l.replace("127.0.0.1:8080", &self.addr)),
            })
            .collect();
        self.sessions.push(Session {
            name: format!("README:{} `{}`", step.line, step.command),
            raw: step.command.contains("--raw"),
            pty,
            lines,
            next: 0,
            typed_any: false,
        });
        let index = self.sessions.len() - 1;
        match self.sessions[index].advance() {
            Outcome::Parked => {
                self.parked.push_back(index);
                self.settle(Some(index));
            }
            Outcome::Done => self.settle(None),
        }
    }

    /// Lets parked sessions go on, each as far as it can, but not the one
    /// that parked last: it waits for another terminal (or a later block).
    fn settle(&mut self, mut just_parked: Option<usize>) {
        while let Some(at) = self.parked.iter().position(|&i| Some(i) != just_parked) {
            let Some(index) = self.parked.remove(at) else {
                break;
            };
            match self.sessions[index].advance() {
                Outcome::Parked => {
                    self.parked.push_back(index);
                    just_parked = Some(index);
                }
                Outcome::Done => just_parked = None,
            }
        }
    }
}

impl Drop for Readme {
    /// Also when a step fails: the server must not outlive the test.
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

enum Line {
    Typed(String),
    Printed(String),
}

enum Outcome {
    /// Waits for a line that another terminal causes.
    Parked,
    /// The transcript is done and the client has exited.
    Done,
}

struct Session {
    name: String,
    raw: bool,
    pty: PtySession,
    lines: Vec<Line>,
    next: usize,
    typed_any: bool,
}

impl Session {
    /// Whether `line` is something another terminal causes (rather than a
    /// reply to what this one typed): a room message, a presence change, a
    /// direct message. Before anything is typed, every line is this
    /// session's own start (welcome, the inbox backlog).
    fn external(&self, line: &str) -> bool {
        if self.raw {
            return line.starts_with(r#"{"type":"message""#)
                || line.starts_with(r#"{"type":"direct""#)
                || (line.starts_with(r#"{"type":"presence""#) && line.contains(r#""event""#));
        }
        let words: Vec<&str> = line.split(' ').collect();
        line.starts_with('[')
            || (!line.starts_with(' ') && line.contains(" → "))
            || (words.len() > 2 && words[0] == "*" && (words[2] == "joined" || words[2] == "left"))
    }

    /// Waits for one whole line, with nothing unexpected before it.
    fn expect(&mut self, what: &str, regex: &str) {
        match self.pty.exp_regex(regex) {
            Ok((before, _)) => assert!(
                before.trim().is_empty(),
                "{}: before {what:?} it printed {before:?}",
                self.name
            ),
            Err(err) => panic!("{}: waiting for {what:?}: {err}", self.name),
        }
    }

    fn advance(&mut self) -> Outcome {
        let mut typed_here = false;
        while self.next < self.lines.len() {
            match &self.lines[self.next] {
                Line::Printed(line) => {
                    if self.typed_any && typed_here && self.external(line) {
                        return Outcome::Parked;
                    }
                    let (line, regex) = (line.clone(), line_regex(line));
                    self.expect(&line, &regex);
                }
                Line::Typed(line) => {
                    let line = line.clone();
                    if let Err(err) = self.pty.send_line(&line) {
                        panic!("{}: typing {line:?}: {err}", self.name);
                    }
                    typed_here = true;
                    self.typed_any = true;
                }
            }
            self.next += 1;
        }
        match self.pty.exp_eof() {
            Ok(rest) => assert!(
                rest.trim().is_empty(),
                "{}: printed {rest:?} at the end",
                self.name
            ),
            Err(err) => panic!(
                "{}: did not exit at the end of its transcript: {err}",
                self.name
            ),
        }
        let status = self.pty.process().wait();
        assert!(
            matches!(status, Ok(WaitStatus::Exited(_, 0))),
            "{}: exited with {status:?}",
            self.name
        );
        Outcome::Done
    }
}

#[test]
fn every_command_in_the_readme_runs_as_shown() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("read README.md");
    let scratch = common::temp_dir();
    std::fs::create_dir_all(&scratch).expect("scratch directory");
    let env_file = scratch.join("env");
    std::fs::write(&env_file, "").expect("env file");
    // A free port for every server the README starts (one at a time).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    let mut run = Readme {
        addr,
        bin: PathBuf::from(env!("CARGO_BIN_EXE_switchboard")),
        env_file,
        scratch: scratch.clone(),
        server: None,
        sessions: Vec::new(),
        parked: VecDeque::new(),
    };
    let blocks = blocks(&readme);
    let mut ran = 0;
    for block in &blocks {
        let steps = match block.lang.as_str() {
            "console" => console_steps(block),
            "sh" => sh_steps(block),
            "js" => continue, // tests/node/readme.test.mjs
            other => panic!(
                "README:{}: a ```{other} block: run it in a README test (this one, or tests/node/readme.test.mjs)",
                block.line
            ),
        };
        for step in &steps {
            run.run(step);
            ran += 1;
        }
    }
    let waiting: Vec<&str> = run
        .parked
        .iter()
        .map(|&i| run.sessions[i].name.as_str())
        .collect();
    assert!(
        waiting.is_empty(),
        "sessions still waiting at the end: {waiting:?}"
    );
    assert!(
        ran >= 10,
        "only {ran} commands found: is the README parsed right?"
    );
    drop(run);
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn wildcards() {
    assert!(matches("a…c", "abbbc"));
    assert!(matches("{\"s\":\"…\",\"t\":…}", "{\"s\":\"x\",\"t\":5}"));
    assert!(!matches("a…c", "abd"));
    assert!(matches("exact", "exact"));
    assert!(!matches("exact", "exactly"));
}
