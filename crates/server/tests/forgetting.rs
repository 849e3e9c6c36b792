//! Bounded counters: the writer forgets rooms and inboxes whose messages all
//! expired and that nobody is connected to, without ever reusing a seq a
//! client may hold (see `hub::floors`); caps refuse new names beyond
//! `--max-rooms` / `--max-inboxes`; the dedupe window is capped.
//!
//! Run against the real pipeline and SQLite store. A sweep is asked for
//! (`Pipeline::sweep`) rather than waited for; "expired" needs the clock to
//! pass a 1 ms retention age, which `past` waits for.

mod common;

use std::error::Error;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use switchboard_protocol::{ErrorCode, Id};
use switchboard_server::hub::{floors, unix_ms, Conn, Delivery, Hub};
use switchboard_server::metrics::Metrics;
use switchboard_server::pipeline::{Destination, Job, Pipeline, Reply, Settings, Submission};
use switchboard_server::service::Rejection;
use switchboard_server::store::{Retention, SqliteStore, Store};
use tokio::sync::oneshot;

use common::{seqs, take_events};

type TestResult = Result<(), Box<dyn Error>>;

const WAIT: Duration = Duration::from_secs(30);
/// Retention age of these tests: a message is expired 1 ms after its commit.
const AGE_MS: u64 = 1;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-forgetting-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone, Copy)]
struct Caps {
    rooms: usize,
    inboxes: usize,
    dedupe: usize,
}

const NO_CAPS: Caps = Caps {
    rooms: usize::MAX,
    inboxes: usize::MAX,
    dedupe: usize::MAX,
};

/// A server's core (hub, pipeline) on the SQLite store in `dir`; a second
/// `Node` on the same directory is the server after a restart.
struct Node {
    store: Arc<SqliteStore>,
    hub: Arc<Hub>,
    pipeline: Pipeline,
}

impl Node {
    fn start(dir: &TempDir, caps: Caps) -> Result<Node, Box<dyn Error>> {
        let store = Arc::new(SqliteStore::open(&dir.0)?);
        let hub = Arc::new(Hub::new(Arc::new(Metrics::new())));
        let pipeline = Pipeline::start(
            store.clone(),
            hub.clone(),
            Settings {
                retention: Retention {
                    count: 1_000_000,
                    age_ms: AGE_MS,
                },
                dedupe_window: Duration::from_secs(3600),
                edit_window: Duration::from_secs(900),
                recall_window: Duration::from_secs(120),
                max_rooms: caps.rooms,
                max_inboxes: caps.inboxes,
                max_dedupe: caps.dedupe,
            },
        )?;
        Ok(Node {
            store,
            hub,
            pipeline,
        })
    }

    fn submit(
        &self,
        to: Destination,
        command_id: Option<&str>,
    ) -> Result<Result<Delivery, Rejection>, Box<dyn Error>> {
        let (tx, rx) = oneshot::channel();
        let id = command_id
            .map(|raw| Id::from_json(&format!("\"{raw}\"")).ok_or("bad id"))
            .transpose()?;
        let job = Job::Message(Submission {
            to,
            from: Arc::from("alice"),
            sender: None,
            body: RawValue::from_string("{\"text\":\"hi\"}".into())?,
            id,
            reply: Reply::Channel(tx),
            change: None,
        });
        if !self.pipeline.submit(job) {
            return Err("the pipeline stopped".into());
        }
        block_on(rx)
    }

    fn publish(&self, room: &str) -> Result<u64, Box<dyn Error>> {
        Ok(self
            .submit(Destination::Room(Arc::from(room)), None)?
            .map_err(|e| format!("refused: {e:?}"))?
            .seq)
    }

    fn send(&self, to: &str) -> Result<u64, Box<dyn Error>> {
        Ok(self
            .submit(Destination::User(Arc::from(to)), None)?
            .map_err(|e| format!("refused: {e:?}"))?
            .seq)
    }

    /// Runs retention and forgetting now, once every message committed so
    /// far is past the retention age.
    fn sweep_after_expiry(&self) -> TestResult {
        past(unix_ms() + AGE_MS);
        let done = self.pipeline.sweep().ok_or("the pipeline stopped")?;
        block_on(done)?;
        Ok(())
    }

    fn room_counters(&self) -> Result<Vec<(String, u64)>, Box<dyn Error>> {
        let mut rooms: Vec<(String, u64)> = self
            .store
            .recover(0)?
            .rooms
            .into_iter()
            .map(|c| (c.name, c.seq))
            .collect();
        rooms.sort();
        Ok(rooms)
    }

    fn stop(self) {
        self.pipeline.stop();
    }
}

fn block_on<T>(rx: oneshot::Receiver<T>) -> Result<T, Box<dyn Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    Ok(runtime.block_on(async { tokio::time::timeout(WAIT, rx).await })??)
}

/// Waits for the wall clock to pass `ms` (what "expired" is measured by).
fn past(ms: u64) {
    while unix_ms() <= ms {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn member(hub: &Hub, user: &str, room: &str) -> Arc<Conn> {
    let conn = hub.connect(None, 64 << 20);
    hub.identify(&conn, user, b"{\"type\":\"welcome\"}".to_vec(), 0)
        .unwrap_or_else(|e| panic!("identify: {e:?}"));
    hub.open_inbox(&conn);
    hub.join(&conn, room, None, None);
    conn
}

/// A name other than `name` in the same floor bucket.
fn bucket_mate(name: &str) -> String {
    let bucket = floors::bucket(name);
    (0u64..)
        .map(|n| format!("room-{n}"))
        .find(|candidate| candidate != name && floors::bucket(candidate) == bucket)
        .unwrap_or_default()
}

#[test]
fn an_idle_room_is_forgotten_and_numbers_on_above_its_last_seq() -> TestResult {
    let dir = TempDir::new("idle-room");
    let node = Node::start(&dir, NO_CAPS)?;
    for expected in 1..=3 {
        assert_eq!(node.publish("lobby")?, expected);
    }
    node.publish("kept")?;
    let keeper = member(&node.hub, "bob", "kept");
    node.sweep_after_expiry()?;

    // Gone from memory and disk; a room with a member stays.
    assert_eq!(node.room_counters()?, [("kept".to_string(), 1)]);
    let listed: Vec<String> = node.hub.rooms().iter().map(|r| r.0.to_string()).collect();
    assert_eq!(listed, ["kept"]);
    // What a client holding `since: 3` could see next is above 3.
    assert_eq!(node.hub.room_seq("lobby"), 3);
    assert_eq!(node.publish("lobby")?, 4);
    drop(keeper);
    node.stop();

    // And after a restart, from the floor on disk.
    let node = Node::start(&dir, NO_CAPS)?;
    node.sweep_after_expiry()?;
    assert_eq!(node.room_counters()?, []);
    assert_eq!(node.publish("lobby")?, 5);
    // A sweep that finds nothing must not stop later ones from looking.
    node.sweep_after_expiry()?;
    node.sweep_after_expiry()?;
    assert_eq!(node.publish("lobby")?, 6);
    node.sweep_after_expiry()?;
    assert_eq!(node.room_counters()?, []);
    node.stop();
    Ok(())
}

#[test]
fn a_live_room_without_a_counter_keeps_its_numbering_when_its_bucket_rises() -> TestResult {
    let dir = TempDir::new("pinned");
    let node = Node::start(&dir, NO_CAPS)?;
    let quiet = bucket_mate("busy");
    // A member of a room nothing was published to: `joined` says seq 0.
    let watcher = member(&node.hub, "bob", &quiet);
    let joined = take_events(&watcher);
    assert_eq!(seqs(&joined, "joined"), [0]);
    for _ in 0..5 {
        node.publish("busy")?;
    }
    // "busy" is forgotten: its bucket's floor, shared with `quiet`, rises to 5.
    node.sweep_after_expiry()?;
    assert_eq!(node.hub.room_seq("busy"), 5);
    // The watcher was told 0, so the first message must be 1, not 6.
    assert_eq!(node.publish(&quiet)?, 1);
    assert_eq!(seqs(&take_events(&watcher), "message"), [1]);
    node.stop();
    Ok(())
}

#[test]
fn an_idle_inbox_is_forgotten_with_its_device_cursors() -> TestResult {
    let dir = TempDir::new("idle-inbox");
    let node = Node::start(&dir, NO_CAPS)?;
    assert_eq!(node.send("bob")?, 1);
    assert_eq!(node.send("bob")?, 2);
    assert!(node.pipeline.submit(Job::Cursor {
        user: "bob".into(),
        device: "phone".into(),
        upto: 2,
    }));
    // Jobs commit in order: once a later send is acked, the cursor is stored.
    node.send("carol")?;
    assert_eq!(node.store.cursor("bob", "phone")?, 2);
    node.sweep_after_expiry()?;
    let recovered = node.store.recover(0)?;
    assert!(recovered.inboxes.iter().all(|c| c.name != "bob"));
    assert_eq!(node.store.cursor("bob", "phone")?, 0);
    assert_eq!(node.hub.cursor("bob", "phone"), 0);
    assert_eq!(node.hub.inbox_seq("bob"), 2);
    assert_eq!(node.send("bob")?, 3);
    assert_eq!(
        node.store
            .inbox_after("bob", 0, 10)?
            .iter()
            .map(|d| d.seq)
            .collect::<Vec<_>>(),
        [3]
    );
    node.stop();
    Ok(())
}

#[test]
fn new_rooms_and_inboxes_beyond_the_caps_are_refused_until_idle_ones_go() -> TestResult {
    let dir = TempDir::new("caps");
    let caps = Caps {
        rooms: 2,
        inboxes: 1,
        dedupe: usize::MAX,
    };
    let node = Node::start(&dir, caps)?;
    node.publish("a")?;
    node.publish("b")?;
    let refused = node.submit(Destination::Room(Arc::from("c")), None)?;
    match refused {
        Err(e) => {
            assert_eq!(e.code, ErrorCode::Unavailable);
            assert!(e.message.contains("--max-rooms"), "{}", e.message);
        }
        Ok(d) => panic!("a third room was accepted: {d:?}"),
    }
    // Known rooms still take messages.
    assert_eq!(node.publish("a")?, 2);
    node.send("bob")?;
    match node.submit(Destination::User(Arc::from("carol")), None)? {
        Err(e) => assert!(e.message.contains("--max-inboxes"), "{}", e.message),
        Ok(d) => panic!("a second inbox was accepted: {d:?}"),
    }
    node.sweep_after_expiry()?;
    assert_eq!(node.publish("c")?, node.hub.room_floor("c") + 1);
    node.send("carol")?;
    node.stop();
    Ok(())
}

#[test]
fn the_dedupe_window_is_capped_oldest_first() -> TestResult {
    let dir = TempDir::new("dedupe");
    let caps = Caps {
        dedupe: 2,
        ..NO_CAPS
    };
    let node = Node::start(&dir, caps)?;
    let lobby = || Destination::Room(Arc::from("lobby"));
    for id in ["1", "2", "3"] {
        node.submit(lobby(), Some(id))?
            .map_err(|e| format!("{e:?}"))?;
    }
    let again = node
        .submit(lobby(), Some("3"))?
        .map_err(|e| format!("{e:?}"))?;
    assert!(again.duplicate);
    assert_eq!(again.seq, 3);
    // The oldest id fell out of the window: a resend is a new message.
    let first = node
        .submit(lobby(), Some("1"))?
        .map_err(|e| format!("{e:?}"))?;
    assert!(!first.duplicate);
    assert_eq!(first.seq, 4);
    node.stop();
    Ok(())
}
