//! Store failures: a clear error and no crash, never an ack for something
//! not stored, and recovery once the disk is usable again.
//!
//! The disk-full test mounts a small tmpfs, so it needs root (as CI and the
//! development machines have); it fails, rather than skips, without it.

mod common;

use std::process::{Command, Stdio};

use common::{temp_dir, Server};
use serde_json::json;

/// Runs `switchboard serve` expecting it to refuse to start.
fn start_fails(data_dir: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stdin(Stdio::null())
        .output()
        .expect("run switchboard");
    assert!(!out.status.success(), "server started on a bad data dir");
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit code (a panic would be 101)"
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn unusable_data_dir_is_a_clear_startup_error() {
    let dir = temp_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let stderr = start_fails(&file.join("data"));
    assert!(stderr.contains("cannot open the store"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn corrupted_database_is_a_clear_startup_error() {
    let dir = temp_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("switchboard.db"), vec![0x5a; 64 * 1024]).unwrap();
    let stderr = start_fails(&dir);
    assert!(stderr.contains("cannot open the store"), "{stderr}");
    assert!(stderr.contains("not a database"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Unmounts the tmpfs when the test ends, pass or fail.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn disk_full_gives_unavailable_and_recovers() {
    let dir = temp_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success(), "mounting a tmpfs needs root");
    let mount = Mount(dir.clone());
    let data = dir.join("data");
    let server = Server::start_in(&data, "127.0.0.1:0", &["--rate-limit", "0"], &[]);
    let mut ann = server.connect("ann").await;
    ann.join("r").await;
    // Fill the disk, keeping a few KiB for the database to grow into.
    let filler = dir.join("filler");
    let mut size = 0usize;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        while f.write_all(&[0u8; 16 * 1024]).is_ok() && f.flush().is_ok() {
            size += 16 * 1024;
        }
    }
    std::fs::write(&filler, vec![0u8; size.saturating_sub(64 * 1024)]).unwrap();

    // Publish until the store refuses.
    let pad = "p".repeat(4000);
    let mut acked = Vec::new();
    let refused = loop {
        let reply = ann
            .request(json!({"type": "publish", "room": "r", "body": {"pad": pad}}))
            .await;
        match reply["type"].as_str() {
            Some("ack") => acked.push(reply["seq"].as_u64().unwrap()),
            Some("error") => break reply,
            other => panic!("unexpected {other:?}"),
        }
        assert!(acked.len() < 10_000, "the disk never filled up");
    };
    assert_eq!(refused["code"], "unavailable");
    assert!(!acked.is_empty());
    // Acked seqs are gapless and all readable; the connection still works.
    assert_eq!(acked, (1..=acked.len() as u64).collect::<Vec<_>>());
    ann.expect_nothing_pending().await;
    let (status, body) = server.http_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        server
            .metric("switchboard_errors_total{code=\"unavailable\"}")
            .await
            >= 1.0
    );

    // Space comes back: the next publish gets the next seq, no gap.
    std::fs::remove_file(&filler).unwrap();
    let ack = ann.publish("r", json!("after")).await;
    assert_eq!(ack["seq"], acked.len() as u64 + 1);
    assert_eq!(server.http_get("/readyz").await.0, 200);
    let reply = ann
        .request(json!({"type": "history", "room": "r", "limit": 100}))
        .await;
    let seqs: Vec<u64> = reply["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    let last = acked.len() as u64 + 1;
    let expected: Vec<u64> = (last.saturating_sub(99).max(1)..=last).collect();
    assert_eq!(seqs, expected);
    drop(ann);
    drop(server);
    drop(mount);
}

/// A database whose pages are damaged (not a wholly foreign file) is found
/// at start-up, and the error says it is damaged and what to do.
#[test]
fn a_damaged_page_is_a_clear_startup_error_with_advice() {
    let dir = temp_dir();
    std::fs::create_dir_all(&dir).unwrap();
    // A real database, written by the server (its schema, then shut down).
    let mut server = Server::start_in(&dir, "127.0.0.1:0", &[], &[]);
    server.signal("TERM");
    assert_eq!(server.wait_exit(common::TIMEOUT), Some(0));
    let path = dir.join("switchboard.db");
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(
        bytes.len() > 3 * 4096,
        "a database of {} bytes",
        bytes.len()
    );
    // Keep page 1 (the header): damage the pages after it.
    bytes[4096..3 * 4096].fill(0x5a);
    std::fs::write(&path, bytes).unwrap();
    let stderr = start_fails(&dir);
    assert!(stderr.contains("cannot open the store"), "{stderr}");
    assert!(stderr.contains("the database is damaged"), "{stderr}");
    assert!(stderr.contains("from a backup"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
