//! `serve --config FILE`, `config check` and `config print` on the real
//! binary: the example file in the repository, precedence, errors with
//! their line, redaction.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Server;

/// The commented example in the repository root.
fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../switchboard.example.toml")
}

/// A configuration file for one test, removed when dropped.
struct File(PathBuf);

impl File {
    fn new(name: &str, text: &str) -> File {
        let path = std::env::temp_dir().join(format!(
            "switchboard-config-{}-{name}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).expect("write the config file");
        File(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the binary to completion, without SWITCHBOARD_* variables other
/// than `env`.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    for (name, _) in std::env::vars() {
        if name.starts_with("SWITCHBOARD_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run switchboard")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn the_example_file_checks_and_serves() {
    let example = example();
    let path = example.to_str().expect("UTF-8 path");
    let checked = run(&["config", "check", path], &[]);
    assert_eq!(checked.status.code(), Some(0), "{}", text(&checked.stderr));
    assert!(text(&checked.stdout).ends_with(": ok\n"));

    // The harness's --listen and --data-dir win over the file's.
    let server = Server::start_with(&["--config", path]);
    assert_eq!(server.http_get("/healthz").await.0, 200);
    // The file's allowed_origins took effect.
    let allowed = [("Origin", "https://chat.example.com")];
    assert!(
        common::upgrade_from("127.0.0.1", &server, "/ws?user=ann", &allowed)
            .await
            .is_ok()
    );
    let other = [("Origin", "https://elsewhere.example")];
    assert_eq!(
        common::upgrade_from("127.0.0.1", &server, "/ws?user=ann", &other)
            .await
            .err(),
        Some(403)
    );
}

#[test]
fn flags_beat_environment_beats_file_beats_defaults() {
    let file = File::new(
        "precedence",
        "heartbeat = \"30s\"\nmax_frame = \"1MiB\"\nmax_body = \"8KiB\"\n",
    );
    let printed = run(
        &[
            "config",
            "print",
            "--config",
            file.path(),
            "--max-body",
            "4KiB",
        ],
        &[
            ("SWITCHBOARD_MAX_FRAME", "2MiB"),
            ("SWITCHBOARD_MAX_BODY", "16KiB"),
        ],
    );
    assert_eq!(printed.status.code(), Some(0), "{}", text(&printed.stderr));
    let shown = text(&printed.stdout);
    let lines: Vec<&str> = shown.lines().collect();
    let expect = |line: String| assert!(lines.contains(&line.as_str()), "{line} in\n{shown}");
    expect(format!("heartbeat = \"30s\"  # {}:1", file.path()));
    expect("max_frame = \"2MiB\"  # SWITCHBOARD_MAX_FRAME".into());
    expect("max_body = \"4KiB\"  # --max-body".into());
    expect("rate_limit = 100  # default".into());

    // SWITCHBOARD_CONFIG names the file too.
    let printed = run(&["config", "print"], &[("SWITCHBOARD_CONFIG", file.path())]);
    assert!(
        text(&printed.stdout).contains("\nheartbeat = \"30s\""),
        "{}",
        text(&printed.stdout)
    );
}

#[test]
fn a_bad_file_is_refused_with_its_line() {
    let file = File::new(
        "bad",
        "# A comment.\nheartbeat = \"30s\"\nretention_age = \"30 days\"\n",
    );
    let expected = format!(
        "error: {}:3:17: retention_age: invalid `30 days`: unknown duration unit `days` (use ms, s, m, h or d)\n",
        file.path()
    );
    let checked = run(&["config", "check", file.path()], &[]);
    assert_eq!(checked.status.code(), Some(2));
    assert_eq!(text(&checked.stderr), expected);
    // `serve` refuses it the same way, before it listens.
    let served = run(&["serve", "--config", file.path()], &[]);
    assert_eq!(served.status.code(), Some(2));
    assert_eq!(text(&served.stderr), expected);
    assert_eq!(text(&served.stdout), "");

    let unknown = File::new("unknown", "listen = \"127.0.0.1:0\"\nmax_conections = 5\n");
    let checked = run(&["config", "check", unknown.path()], &[]);
    assert_eq!(checked.status.code(), Some(2));
    assert!(
        text(&checked.stderr).starts_with(&format!(
            "error: {}:2:1: unknown key `max_conections`",
            unknown.path()
        )),
        "{}",
        text(&checked.stderr)
    );
}

#[test]
fn check_applies_the_rules_serve_would() {
    // Half of a TLS pair.
    let half = File::new("half-tls", "tls_cert = \"/etc/ssl/cert.pem\"\n");
    let checked = run(&["config", "check", half.path()], &[]);
    assert_eq!(checked.status.code(), Some(2));
    assert!(
        text(&checked.stderr).contains("tls_cert (--tls-cert) is set but tls_key"),
        "{}",
        text(&checked.stderr)
    );
    // The other half from the environment completes it; the files are
    // then read, as at start-up.
    let checked = run(
        &["config", "check", half.path()],
        &[("SWITCHBOARD_TLS_KEY", "/nonexistent/key.pem")],
    );
    assert_eq!(checked.status.code(), Some(2));
    assert!(
        text(&checked.stderr).contains("/etc/ssl/cert.pem")
            || text(&checked.stderr).contains("/nonexistent/key.pem"),
        "{}",
        text(&checked.stderr)
    );
    // An unreadable JWT key.
    let jwks = File::new("jwks", "jwks = \"/nonexistent/jwks.json\"\n");
    let checked = run(&["config", "check", jwks.path()], &[]);
    assert_eq!(checked.status.code(), Some(2));
    assert!(
        text(&checked.stderr).contains("/nonexistent/jwks.json"),
        "{}",
        text(&checked.stderr)
    );
}

#[test]
fn print_redacts_secrets() {
    let file = File::new("secrets", "api_key = \"file-api-key-5e2d\"\n");
    let printed = run(
        &["config", "print", "--config", file.path()],
        &[("SWITCHBOARD_JWT_SECRET", "env-jwt-secret-77b1")],
    );
    assert_eq!(printed.status.code(), Some(0), "{}", text(&printed.stderr));
    let shown = text(&printed.stdout);
    assert!(!shown.contains("file-api-key-5e2d"), "{shown}");
    assert!(!shown.contains("env-jwt-secret-77b1"), "{shown}");
    assert!(
        shown.contains(&format!(
            "\napi_key = \"<redacted>\"  # {}:1\n",
            file.path()
        )),
        "{shown}"
    );
    assert!(
        shown.contains("\njwt_secret = \"<redacted>\"  # SWITCHBOARD_JWT_SECRET\n"),
        "{shown}"
    );
}
