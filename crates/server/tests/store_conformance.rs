//! The `Store` contract (see `store/mod.rs`), written once and run against
//! every backend. A new backend plugs in with one `conformance!` line at the
//! bottom of this file; add `durable` if what it stores survives a reopen.

// Only the start of the harness is used here (no kills or restarts).
#[allow(dead_code)]
mod redis_server;

use std::any::Any;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use switchboard_server::cluster::{RedisSettings, RedisStore};
use switchboard_server::store::{
    Counter, DedupeRecord, DirectRecord, Kind, MemoryStore, Original, RoomRecord, SqliteStore,
    Store, Write, MAX_DEVICE_CURSORS, MAX_UNREAD,
};

type TestResult = Result<(), Box<dyn Error>>;

/// "No upper bound" for `before`, as the gateway passes it (SQLite integers
/// are signed, so `u64::MAX` is not a valid bound).
const NO_BOUND: u64 = i64::MAX as u64;

/// A unique directory, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "switchboard-store-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        release(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a backend needs for as long as a fixture lives (a server process),
/// by fixture directory: dropped with the directory.
type Held = Vec<(PathBuf, Box<dyn Any + Send>)>;
static HELD: Mutex<Held> = Mutex::new(Vec::new());

/// The thing held for `dir`, made by `make` on first use; `f` of it.
fn held<T: Any + Send, R>(dir: &Path, make: impl FnOnce() -> T, f: impl FnOnce(&T) -> R) -> R {
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    let at = match held.iter().position(|(d, _)| d == dir) {
        Some(at) => at,
        None => {
            held.push((dir.to_owned(), Box::new(make())));
            held.len() - 1
        }
    };
    match held[at].1.downcast_ref::<T>() {
        Some(thing) => f(thing),
        None => panic!("{dir:?} holds something else"),
    }
}

fn release(dir: &Path) {
    let gone: Held = {
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        let (gone, kept) = std::mem::take(&mut *held)
            .into_iter()
            .partition(|(d, _)| d == dir);
        *held = kept;
        gone
    };
    drop(gone);
}

/// A Redis store on a redis-server of its own for the fixture; opening
/// again is a new store (a new node) on the same running server.
fn open_redis(dir: &Path) -> Result<RedisStore, Box<dyn Error>> {
    let url = held(dir, redis_server::RedisServer::start, |server| server.url());
    Ok(RedisStore::open(RedisSettings {
        url,
        node: "n1".into(),
        timeout: Duration::from_secs(5),
        retention_count: 10_000,
        dedupe_window: Duration::from_secs(300),
        trim_every: None,
    })?)
}

type Opener = Box<dyn Fn(&Path) -> Result<Box<dyn Store>, Box<dyn Error>>>;

/// One backend under test: opens a store in (or again in) its own directory.
pub struct Fixture {
    dir: TempDir,
    opener: Opener,
}

impl Fixture {
    pub fn new(opener: Opener) -> Fixture {
        Fixture {
            dir: TempDir::new(),
            opener,
        }
    }

    /// Opens the store; a persistent backend finds what it stored before.
    pub fn open(&self) -> Result<Box<dyn Store>, Box<dyn Error>> {
        (self.opener)(&self.dir.0)
    }
}

/// Instantiates every test of `suite` for one backend:
/// `conformance!(name, |dir| Backend::open(dir))`, plus `durable` to also
/// run the reopen tests.
macro_rules! conformance {
    ($backend:ident, $open:expr) => {
        conformance!(@with $backend, $open, []);
    };
    ($backend:ident, $open:expr, durable) => {
        conformance!(@with $backend, $open, [reopening_keeps_everything]);
    };
    (@with $backend:ident, $open:expr, [$($extra:ident),*]) => {
        conformance!(@tests $backend, $open, [
            a_fresh_store_is_empty,
            commit_applies_every_write_of_a_batch,
            a_failed_commit_applies_nothing,
            recover_returns_last_seqs_last_gid_and_recent_dedupe,
            room_after_is_oldest_first_and_limited,
            room_before_returns_the_newest_oldest_first,
            room_oldest_follows_retention,
            inbox_after_and_inbox_oldest,
            conversation_covers_both_directions_in_gid_order,
            cursor_starts_at_zero_and_never_moves_back,
            trim_room_and_trim_inbox_retain_by_count,
            trim_drops_what_is_older_than_the_cut_offs,
            check_succeeds_on_a_working_store,
            counters_carry_the_newest_held_ts,
            forgetting_drops_a_counter_and_its_leftovers_while_floors_only_rise,
            device_cursors_are_capped_per_user,
            amend_changes_a_message_in_place_and_pages_skip_change_records,
            read_positions_only_move_forward_and_unread_counts_follow_them,
            forgetting_drops_the_read_positions_that_name_it,
            $($extra),*
        ]);
    };
    (@tests $backend:ident, $open:expr, [$($test:ident),* $(,)?]) => {
        mod $backend {
            use super::*;
            $(
                #[test]
                fn $test() -> TestResult {
                    let fixture = Fixture::new(Box::new(
                        |dir: &Path| -> Result<Box<dyn Store>, Box<dyn Error>> {
                            Ok(Box::new(($open)(dir)?))
                        },
                    ));
                    suite::$test(&fixture)
                }
            )*
        }
    };
}

fn room(room: &str, seq: u64, ts: u64) -> Write {
    Write::Room(RoomRecord {
        room: room.into(),
        seq,
        from: "alice".into(),
        ts,
        body: format!("{{\"n\":{seq}}}"),
        ..RoomRecord::default()
    })
}

fn direct(gid: u64, from: &str, to: &str, seq: u64, ts: u64) -> Write {
    Write::Direct(DirectRecord {
        gid,
        to: to.into(),
        seq,
        from: from.into(),
        ts,
        body: format!("{{\"gid\":{gid}}}"),
        ..DirectRecord::default()
    })
}

/// An edit (or recall) entry of `room` at `seq`, changing message `target`.
fn room_change(room: &str, seq: u64, kind: Kind, target: u64) -> Write {
    Write::Room(RoomRecord {
        room: room.into(),
        seq,
        from: "alice".into(),
        ts: 50,
        body: "null".into(),
        kind,
        target,
        ..RoomRecord::default()
    })
}

/// An inbox entry of `to` that is not a message (a change or a receipt).
fn inbox_entry(gid: u64, from: &str, to: &str, seq: u64, kind: Kind, target: u64) -> Write {
    Write::Direct(DirectRecord {
        gid,
        to: to.into(),
        seq,
        from: from.into(),
        ts: 50,
        body: "null".into(),
        kind,
        target,
        ..DirectRecord::default()
    })
}

fn read_position(user: &str, key: &str, upto: u64) -> Write {
    Write::ReadPosition {
        user: user.into(),
        key: key.into(),
        upto,
    }
}

fn dedupe(user: &str, id: &str, target: &str, seq: u64, ts: u64) -> DedupeRecord {
    DedupeRecord {
        user: user.into(),
        id: id.into(),
        target: target.into(),
        seq,
        ts,
    }
}

fn cursor(user: &str, device: &str, upto: u64) -> Write {
    Write::Cursor {
        user: user.into(),
        device: device.into(),
        upto,
    }
}

fn seqs_of_rooms(records: &[RoomRecord]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

fn seqs_of_directs(records: &[DirectRecord]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

fn gids(records: &[DirectRecord]) -> Vec<u64> {
    records.iter().map(|r| r.gid).collect()
}

/// `recover`'s per-room (or per-inbox) last seqs, sorted for comparison.
fn sorted(counters: Vec<Counter>) -> Vec<(String, u64)> {
    let mut pairs: Vec<(String, u64)> = counters.into_iter().map(|c| (c.name, c.seq)).collect();
    pairs.sort();
    pairs
}

/// `recover`'s counters as (name, seq, last_ts), sorted.
fn sorted_counters(counters: Vec<Counter>) -> Vec<(String, u64, u64)> {
    let mut out: Vec<(String, u64, u64)> = counters
        .into_iter()
        .map(|c| (c.name, c.seq, c.last_ts))
        .collect();
    out.sort();
    out
}

fn pairs(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn sorted_dedupe(mut records: Vec<DedupeRecord>) -> Vec<DedupeRecord> {
    records.sort_by(|a, b| (&a.user, &a.id).cmp(&(&b.user, &b.id)));
    records
}

mod suite {
    use super::*;

    pub fn a_fresh_store_is_empty(fixture: &Fixture) -> TestResult {
        let store = fixture.open()?;
        let recovered = store.recover(0)?;
        assert!(recovered.rooms.is_empty());
        assert!(recovered.inboxes.is_empty());
        assert_eq!(recovered.last_gid, 0);
        assert!(recovered.dedupe.is_empty());
        assert!(store.room_after("lobby", 0, 10)?.is_empty());
        assert!(store.room_before("lobby", NO_BOUND, 10)?.is_empty());
        assert_eq!(store.room_oldest("lobby")?, None);
        assert!(store.inbox_after("bob", 0, 10)?.is_empty());
        assert_eq!(store.inbox_oldest("bob")?, None);
        assert!(store.conversation("alice", "bob", NO_BOUND, 10)?.is_empty());
        assert_eq!(store.cursor("bob", "phone")?, 0);
        Ok(())
    }

    pub fn commit_applies_every_write_of_a_batch(fixture: &Fixture) -> TestResult {
        let store = fixture.open()?;
        store.commit(&[
            room("lobby", 1, 100),
            direct(1, "alice", "bob", 1, 100),
            room("lobby", 2, 101),
            Write::Dedupe(dedupe("alice", "\"a1\"", "room:lobby", 2, 101)),
            cursor("bob", "phone", 1),
        ])?;
        let messages = store.room_after("lobby", 0, 10)?;
        assert_eq!(seqs_of_rooms(&messages), [1, 2]);
        assert_eq!(messages[1].from, "alice");
        assert_eq!(messages[1].ts, 101);
        assert_eq!(messages[1].body, "{\"n\":2}");
        let inbox = store.inbox_after("bob", 0, 10)?;
        assert_eq!(inbox.len(), 1);
        assert_eq!(inbox[0].gid, 1);
        assert_eq!(inbox[0].from, "alice");
        assert_eq!(inbox[0].to, "bob");
        assert_eq!(inbox[0].body, "{\"gid\":1}");
        assert_eq!(store.cursor("bob", "phone")?, 1);
        assert_eq!(
            store.recover(0)?.dedupe,
            [dedupe("alice", "\"a1\"", "room:lobby", 2, 101)]
        );
        Ok(())
    }

    /// A batch that cannot be applied whole is not applied at all: its last
    /// write reuses a stored seq, which no backend may accept (a seq, once
    /// stored, names one message for good).
    pub fn a_failed_commit_applies_nothing(fixture: &Fixture) -> TestResult {
        let store = fixture.open()?;
        store.commit(&[room("lobby", 1, 100), direct(1, "alice", "bob", 1, 100)])?;
        let failed = store.commit(&[
            room("lobby", 2, 101),
            direct(2, "alice", "bob", 2, 101),
            Write::Dedupe(dedupe("alice", "\"x\"", "room:lobby", 2, 101)),
            cursor("bob", "phone", 2),
            Write::TrimInbox {
                user: "bob".into(),
                upto: 1,
            },
            room("lobby", 1, 101),
        ]);
        assert!(failed.is_err(), "a batch rewriting a stored seq must fail");
        assert_eq!(seqs_of_rooms(&store.room_after("lobby", 0, 10)?), [1]);
        assert_eq!(store.room_after("lobby", 0, 10)?[0].ts, 100);
        assert_eq!(seqs_of_directs(&store.inbox_after("bob", 0, 10)?), [1]);
        assert_eq!(store.cursor("bob", "phone")?, 0);
        let recovered = store.recover(0)?;
        assert_eq!(sorted(recovered.rooms), pairs(&[("lobby", 1)]));
        assert_eq!(sorted(recovered.inboxes), pairs(&[("bob", 1)]));
        assert_eq!(recovered.last_gid, 1);
        assert!(recovered.dedupe.is_empty());

        let failed = store.commit(&[room("lobby", 2, 101), direct(2, "alice", "bob", 1, 101)]);
        assert!(failed.is_err(), "a batch rewriting an inbox seq must fail");
        assert_eq!(seqs_of_rooms(&store.room_after("lobby", 0, 10)?), [1]);
        assert_eq!(gids(&store.inbox_after("bob", 0, 10)?), [1]);

        // The store is still usable, and the seqs were not taken.
        store.commit(&[room("lobby", 2, 102)])?;
        assert_eq!(seqs_of_rooms(&store.room_after("lobby", 0, 10)?), [1, 2]);
        Ok(())
    }

    pub fn recover_returns_last_seqs_last_gid_and_recent_dedupe(fixture: &Fixture) -> TestResult {
        let store = fixture.open()?;
        store.commit(&[
            room("lobby", 1, 100),
            room("lobby", 2, 100),
            room("games", 1, 100),
            direct(1, "alice", "bob", 1, 100),
            direct(2, "bob", "alice", 1, 100),
            direct(3, "alice", "bob", 2, 100),
            Write::Dedupe(dedupe("alice", "1", "room:lobby", 1, 100)),
        ])?;
        store.commit(&[
            room("lobby", 3, 200),
            Write::Dedupe(dedupe("alice", "2", "room:lobby", 3, 200)),
            Write::Dedupe(dedupe("bob", "\"x\"", "user:alice", 1, 300)),
        ])?;
        // Retention dropping every message of a room keeps its last seq:
        // a room's seq never goes back.
        store.commit(&[Write::TrimRoom {
            room: "games".into(),
            upto: 1,
        }])?;
        let recovered = store.recover(200)?;
        assert_eq!(
            sorted(recovered.rooms),
            pairs(&[("games", 1), ("lobby", 3)])
        );
        assert_eq!(
            sorted(recovered.inboxes),
            pairs(&[("alice", 1), ("bob", 2)])
        );
        assert_eq!(recovered.last_gid, 3);
        // Entries at the cut-off or newer are returned, older ones are not.
        assert_eq!(
            sorted_dedupe(recovered.dedupe),
            [
                dedupe("alice", "2", "room:lobby", 3, 200),
                dedupe("bob", "\"x\"", "user:alice", 1, 300),
            ]
        );
        assert_eq!(store.recover(301)?.dedupe, []);
        assert_eq!(store.recover(0)?.dedupe.len(), 3);
        Ok(())
    }

    pub fn room_after_is_oldest_first_and_limited(fixture: &Fixture) -> TestResult {
        let store = fixture.open()?;
        // Committed out of order and interleaved with another room.
        let mut batch: Vec<Write> = (1..=10).rev().map(|s| room("lobby", s, 100)).collect();
        batch.extend((1..=3).map(|s| room("games", s, 100)));
        store.commit(&batch)?;
        assert_eq!(
            seqs_of_rooms(&store.room_after("lobby", 0, 100)?),
            (1..=10).collect::<Vec<_>>()
        );
        assert_eq!(
            seqs_of_rooms(&store.room_after("lobby", 3, 4)?),
            [4, 5, 6, 7]
        );
        assert_eq!(seqs_of_rooms(&store.room_after("lobby", 9, 4)?), [10]);
        assert!(store.room_after("lobby", 10, 4)?.is_empty());
        assert!(store.room_after("lobby", 0, 0)?.is_empty());
        assert_eq!(
            seqs_of_rooms(&store.room_after("games", 0, 100)?),
            [1, 2, 3]
        );
        assert!(store
            .room_after("games", 0, 100)?
            .iter()
            .all(|r| r.room == "games"));
        assert!(store.room_after("nowhere", 0, 100)?.is_empty());
        Ok(())
    }

    pub fn room_before_returns_the_newest_oldest_first(fixture: &Fixture) -> TestResult {
        let store = fixture.open()?;
        let mut batch: Vec<Write> = (1..=10).map(|s| room("lobby", s, 100)).collect();
        batch.extend((1..=20).map(|s| room("games", s, 100)));
        store.commit(&batch)?;
        assert_eq!(seqs_of_rooms(&store.room_before("lobby", 8, 3)?), [5, 6, 7]);
        assert_eq!(
            seqs_of_rooms(&store.room_before("lobby", NO_BOUND, 3)?),
            [8, 9, 10]
        );
        assert_eq!(
            seqs_of_rooms(&store.room_before("lobby", NO_BOUND, 100)?),
            (1..=10).collect::<Vec<_>>()
        );
        assert_eq!(seqs_of_rooms(&store.room_before("lobby", 3, 100)?), [1, 2]);
        assert!(store.room_before("lobby", 1, 100)?.is_empty());
        assert!(store.room_before("lobby", NO_BOUND, 0)?.is_empty());
        assert!(store.room_before("nowhere", NO_BOUND, 10)?.is_empty());
        Ok(())
    }

    pub fn room_oldest_follows_retention(fixture: &Fixture) -> TestResult {
        let store = fixture.open()?;
        store.commit(&(1..=6).map(|s| room("lobby", s, 100)).collect::<Vec<_>>())?;
        assert_eq!(store.room_oldest("lobby")?, Some(1));
        store.commit(&[Write::TrimRoom {
            room: "lobby".into(),
            upto: 4,
        }])?;
        assert_eq!(store.room_oldest("lobby")?, Some(5));
        store.commit(&[Write::TrimRoom {
            room: "lobby".into(),
            upto: 6,
        }])?;
        assert_eq!(store.room_oldest("lobby")?, None);
        assert_eq!(store.room_oldest("nowhere")?, None);
        Ok(())
    }

    pub fn inbox_after_and_inbox_oldest(fixture: &Fixture) -> TestResult {
        let store = fixture.open()?;
        let mut batch = Vec::new();
        for seq in 1..=5 {
            batch.push(direct(seq * 2 - 1, "alice", "bob", seq, 100));
            batch.push(direct(seq * 2, "bob", "carol", seq, 100));
        }
        store.commit(&batch)?;
        let inbox = store.inbox_after("bob", 0, 100)?;
        assert_eq!(seqs_of_directs(&inbox), [1, 2, 3, 4, 5]);
        assert_eq!(gids(&inbox), [1, 3, 5, 7, 9]);
        assert!(inbox.iter().all(|d| d.to == "bob"));
        assert_eq!(seqs_of_directs(&store.inbox_after("bob", 2, 2)?), [3, 4]);
        assert!(store.inbox_after("bob", 5, 10)?.is_empty());
        assert!(store.inbox_after("bob", 0, 0)?.is_empty());
        // The sender's own inbox holds nothing it sent.
        assert!(store.inbox_after("alice", 0, 10)?.is_empty());
        assert_eq!(store.inbox_oldest("bob")?, Some(1));
        assert_eq!(store.inbox_oldest("alice")?, None);
        store.commit(&[Write::TrimInbox {
            user: "bob".into(),
            upto: 3,
        }])?;
        assert_eq!(store.inbox_oldest("bob")?, Some(4));
        assert_eq!(store.inbox_oldest("carol")?, Some(1));
        Ok(())
    }

    pub fn conversation_covers_both_directions_in_gid_order(fixture: &Fixture) -> TestResult {
        let store = fixture.open()?;
        store.commit(&[
            direct(1, "alice", "bob", 1, 100),
            direct(2, "bob", "alice", 1, 100),
            direct(3, "carol", "bob", 2, 100),
            direct(4, "alice", "bob", 3, 100),
            direct(5, "alice", "carol", 1, 100),
            direct(6, "bob", "alice", 2, 100),
            direct(7, "alice", "bob", 4, 100),
        ])?;
        let all = store.conversation("alice", "bob", NO_BOUND, 100)?;
        assert_eq!(gids(&all), [1, 2, 4, 6, 7]);
        assert!(all
            .iter()
            .all(|d| (d.from == "alice" && d.to == "bob") || (d.from == "bob" && d.to == "alice")));
        assert_eq!(
            gids(&store.conversation("bob", "alice", NO_BOUND, 100)?),
            [1, 2, 4, 6, 7]
        );
        // The newest `limit` before `before`, oldest first.
        assert_eq!(
            gids(&store.conversation("alice", "bob", NO_BOUND, 2)?),
            [6, 7]
        );
        assert_eq!(gids(&store.conversation("alice", "bob", 6, 2)?), [2, 4]);
        assert_eq!(gids(&store.conversation("alice", "bob", 2, 10)?), [1]);
        assert!(store.conversation("alice", "bob", 1, 10)?.is_empty());
        assert!(store.conversation("alice", "bob", NO_BOUND, 0)?.is_empty());
        assert_eq!(
            gids(&store.conversation("carol", "alice", NO_BOUND, 10)?),
            [5]
        );
        assert!(store.conversation("bob", "dave", NO_BOUND, 10)?.is_empty());
        Ok(())
    }

    /// The cursor is the highest position a device confirmed: an older
    /// confirmation arriving late must not make it see entries again.
    pub fn cursor_starts_at_zero_and_never_moves_back(fixture: &Fixture) -> TestResult {
        let store = fixture.open()?;
        assert_eq!(store.cursor("bob", "phone")?, 0);
        store.commit(&[cursor("bob", "phone", 3)])?;
        assert_eq!(store.cursor("bob", "phone")?, 3);
        store.commit(&[cursor("bob", "phone", 7), cursor("bob", "laptop", 2)])?;
        assert_eq!(store.cursor("bob", "phone")?, 7);
        assert_eq!(store.cursor("bob", "laptop")?, 2);
        store.commit(&[cursor("bob", "phone", 5)])?;
        assert_eq!(store.cursor("bob", "phone")?, 7);
        store.commit(&[cursor("bob", "laptop", 4), cursor("bob", "laptop", 1)])?;
        assert_eq!(store.cursor("bob", "laptop")?, 4);
        assert_eq!(store.cursor("alice", "phone")?, 0);
        Ok(())
    }

    /// The writer forgets a counter once its newest message is older than
    /// the retention age, so `recover` says when that was (0: none held).
    pub fn counters_carry_the_newest_held_ts(fixture: &Fixture) -> TestResult {
        let store = fixture.open()?;
        store.commit(&[
            room("lobby", 1, 100),
            room("lobby", 2, 250),
            room("games", 1, 100),
            direct(1, "alice", "bob", 1, 120),
            direct(2, "carol", "bob", 2, 180),
            direct(3, "bob", "alice", 1, 90),
        ])?;
        store.commit(&[Write::TrimRoom {
            room: "games".into(),
            upto: 1,
        }])?;
        let recovered = store.recover(0)?;
        assert_eq!(
            sorted_counters(recovered.rooms),
            [("games".into(), 1, 0), ("lobby".into(), 2, 250)]
        );
        assert_eq!(
            sorted_counters(recovered.inboxes),
            [("alice".into(), 1, 90), ("bob".into(), 2, 180)]
        );
        Ok(())
    }

    pub fn forgetting_drops_a_counter_and_its_leftovers_while_floors_only_rise(
        fixture: &Fixture,
    ) -> TestResult {
        let store = fixture.open()?;
        store.commit(&[
            room("lobby", 1, 100),
            room("games", 1, 100),
            room("games", 2, 100),
            direct(1, "alice", "bob", 1, 100),
            direct(2, "bob", "alice", 1, 100),
            cursor("bob", "phone", 1),
            cursor("alice", "phone", 1),
        ])?;
        store.commit(&[
            Write::ForgetRoom {
                room: "games".into(),
            },
            Write::RoomFloor {
                bucket: 7,
                value: 2,
            },
            Write::ForgetInbox { user: "bob".into() },
            Write::InboxFloor {
                bucket: 4095,
                value: 1,
            },
        ])?;
        // A lower value never lowers a floor.
        store.commit(&[Write::RoomFloor {
            bucket: 7,
            value: 1,
        }])?;
        let recovered = store.recover(0)?;
        assert_eq!(sorted(recovered.rooms), pairs(&[("lobby", 1)]));
        assert_eq!(sorted(recovered.inboxes), pairs(&[("alice", 1)]));
        assert_eq!(recovered.room_floors, [(7, 2)]);
        assert_eq!(recovered.inbox_floors, [(4095, 1)]);
        // What was left of them is gone; the rest is untouched.
        assert!(store.room_after("games", 0, 10)?.is_empty());
        assert_eq!(store.room_oldest("games")?, None);
        assert!(store.inbox_after("bob", 0, 10)?.is_empty());
        assert_eq!(store.cursor("bob", "phone")?, 0);
        assert_eq!(store.cursor("alice", "phone")?, 1);
        assert_eq!(seqs_of_directs(&store.inbox_after("alice", 0, 10)?), [1]);
        // A forgotten name numbers on from the floor; its counter is new.
        store.commit(&[room("games", 3, 200)])?;
        assert_eq!(
            sorted(store.recover(0)?.rooms),
            pairs(&[("games", 3), ("lobby", 1)])
        );
        Ok(())
    }

    /// Device names are the client's choice: one user's cursors are bounded,
    /// and the device furthest behind is the one dropped.
    pub fn device_cursors_are_capped_per_user(fixture: &Fixture) -> TestResult {
        let store = fixture.open()?;
        let max = MAX_DEVICE_CURSORS as u64;
        let batch: Vec<Write> = (1..=max)
            .map(|n| cursor("bob", &format!("device-{n}"), n + 10))
            .collect();
        store.commit(&batch)?;
        store.commit(&[cursor("alice", "phone", 1)])?;
        assert_eq!(store.cursor("bob", "device-1")?, 11);
        store.commit(&[cursor("bob", "one-more", 100)])?;
        assert_eq!(store.cursor("bob", "one-more")?, 100);
        assert_eq!(
            store.cursor("bob", "device-1")?,
            0,
            "the one furthest behind goes"
        );
        assert_eq!(store.cursor("bob", "device-2")?, 12);
        assert_eq!(store.cursor("bob", &format!("device-{max}"))?, max + 10);
        assert_eq!(
            store.cursor("alice", "phone")?,
            1,
            "another user keeps theirs"
        );
        Ok(())
    }

    pub fn trim_room_and_trim_inbox_retain_by_count(fixture: &Fixture) -> TestResult {
        let store = fixture.open()?;
        let mut batch: Vec<Write> = (1..=5).map(|s| room("lobby", s, 100)).collect();
        batch.extend((1..=5).map(|s| room("games", s, 100)));
        batch.extend((1..=5).map(|s| direct(s, "alice", "bob", s, 100)));
        batch.extend((1..=2).map(|s| direct(5 + s, "bob", "alice", s, 100)));
        store.commit(&batch)?;
        // In the same batch as new messages, as the pipeline does it.
        store.commit(&[
            room("lobby", 6, 101),
            Write::TrimRoom {
                room: "lobby".into(),
                upto: 3,
            },
            direct(8, "alice", "bob", 6, 101),
            Write::TrimInbox {
                user: "bob".into(),
                upto: 4,
            },
        ])?;
        assert_eq!(
            seqs_of_rooms(&store.room_after("lobby", 0, 100)?),
            [4, 5, 6]
        );
        assert_eq!(
            seqs_of_rooms(&store.room_after("games", 0, 100)?),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(seqs_of_directs(&store.inbox_after("bob", 0, 100)?), [5, 6]);
        assert_eq!(
            seqs_of_directs(&store.inbox_after("alice", 0, 100)?),
            [1, 2]
        );
        assert_eq!(
            gids(&store.conversation("alice", "bob", NO_BOUND, 100)?),
            [5, 6, 7, 8]
        );
        // Trimming past the end empties the room but keeps its last seq.
        store.commit(&[Write::TrimRoom {
            room: "lobby".into(),
            upto: 100,
        }])?;
        assert!(store.room_after("lobby", 0, 100)?.is_empty());
        let recovered = store.recover(0)?;
        assert_eq!(
            sorted(recovered.rooms),
            pairs(&[("games", 5), ("lobby", 6)])
        );
        assert_eq!(
            sorted(recovered.inboxes),
            pairs(&[("alice", 2), ("bob", 6)])
        );
        store.commit(&[room("lobby", 7, 102)])?;
        assert_eq!(seqs_of_rooms(&store.room_after("lobby", 0, 100)?), [7]);
        // Trimming what does not exist is not an error.
        store.commit(&[
            Write::TrimRoom {
                room: "nowhere".into(),
                upto: 3,
            },
            Write::TrimInbox {
                user: "nobody".into(),
                upto: 3,
            },
        ])?;
        Ok(())
    }

    /// Messages and dedupe entries strictly older than their cut-off go;
    /// those at the cut-off stay. (Timestamps rise with seqs, as the writer
    /// commits them.)
    pub fn trim_drops_what_is_older_than_the_cut_offs(fixture: &Fixture) -> TestResult {
        let store = fixture.open()?;
        let mut batch = Vec::new();
        for (i, ts) in [100, 200, 300, 400].into_iter().enumerate() {
            let seq = i as u64 + 1;
            batch.push(room("lobby", seq, ts));
            batch.push(direct(seq, "alice", "bob", seq, ts));
            batch.push(Write::Dedupe(dedupe(
                "alice",
                &seq.to_string(),
                "room:lobby",
                seq,
                ts,
            )));
        }
        store.commit(&batch)?;
        store.trim(300, 200)?;
        assert_eq!(seqs_of_rooms(&store.room_after("lobby", 0, 100)?), [3, 4]);
        assert_eq!(store.room_oldest("lobby")?, Some(3));
        assert_eq!(seqs_of_directs(&store.inbox_after("bob", 0, 100)?), [3, 4]);
        assert_eq!(store.inbox_oldest("bob")?, Some(3));
        let recovered = store.recover(0)?;
        let kept: Vec<u64> = sorted_dedupe(recovered.dedupe)
            .iter()
            .map(|d| d.seq)
            .collect();
        assert_eq!(kept, [2, 3, 4]);
        // Last seqs outlive the messages.
        assert_eq!(sorted(recovered.rooms), pairs(&[("lobby", 4)]));
        assert_eq!(sorted(recovered.inboxes), pairs(&[("bob", 4)]));
        store.trim(1000, 1000)?;
        assert!(store.room_after("lobby", 0, 100)?.is_empty());
        assert!(store.inbox_after("bob", 0, 100)?.is_empty());
        let recovered = store.recover(0)?;
        assert!(recovered.dedupe.is_empty());
        assert_eq!(sorted(recovered.rooms), pairs(&[("lobby", 4)]));
        // Every direct message is gone, its gid is not: gids are never reused.
        assert_eq!(recovered.last_gid, 4);
        Ok(())
    }

    pub fn check_succeeds_on_a_working_store(fixture: &Fixture) -> TestResult {
        let store = fixture.open()?;
        store.check()?;
        store.commit(&[room("lobby", 1, 100)])?;
        store.check()?;
        Ok(())
    }

    pub fn amend_changes_a_message_in_place_and_pages_skip_change_records(
        fixture: &Fixture,
    ) -> TestResult {
        let store = fixture.open()?;
        store.commit(&[
            room("r", 1, 10),
            room("r", 2, 11),
            room_change("r", 3, Kind::Edit, 1),
            Write::Amend {
                original: Original::Room {
                    room: "r".into(),
                    seq: 1,
                },
                body: Some("{\"n\":9}".into()),
                ts: 12,
            },
            room_change("r", 4, Kind::Recall, 2),
            Write::Amend {
                original: Original::Room {
                    room: "r".into(),
                    seq: 2,
                },
                body: None,
                ts: 13,
            },
            direct(5, "alice", "bob", 1, 10),
            inbox_entry(6, "alice", "bob", 2, Kind::Edit, 5),
            Write::Amend {
                original: Original::Direct {
                    to: "bob".into(),
                    gid: 5,
                },
                body: Some("\"fixed\"".into()),
                ts: 14,
            },
            // A message no longer held: nothing to change, not an error.
            Write::Amend {
                original: Original::Direct {
                    to: "bob".into(),
                    gid: 99,
                },
                body: None,
                ts: 14,
            },
        ])?;
        // Replays see every entry, the originals in their current state.
        let all = store.room_after("r", 0, 10)?;
        let kinds: Vec<Kind> = all.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [Kind::Message, Kind::Message, Kind::Edit, Kind::Recall]
        );
        assert_eq!(
            (all[0].body.as_str(), all[0].edited, all[0].recalled),
            ("{\"n\":9}", 12, 0)
        );
        assert_eq!((all[1].body.as_str(), all[1].recalled), ("null", 13));
        assert_eq!((all[2].target, all[3].target), (1, 2));
        // History pages hold messages only.
        assert_eq!(
            seqs_of_rooms(&store.room_before("r", NO_BOUND, 10)?),
            [1, 2]
        );
        assert_eq!(store.room_entry("r", 1)?.as_ref(), Some(&all[0]));
        assert_eq!(store.room_entry("r", 3)?.map(|e| e.kind), Some(Kind::Edit));
        assert_eq!(store.room_entry("r", 9)?, None);
        let original = store.direct_entry(5)?.ok_or("gid 5 is held")?;
        assert_eq!((original.body.as_str(), original.edited), ("\"fixed\"", 14));
        assert_eq!(store.direct_entry(6)?.map(|e| e.kind), Some(Kind::Edit));
        assert_eq!(store.direct_entry(99)?, None);
        assert_eq!(seqs_of_directs(&store.inbox_after("bob", 0, 10)?), [1, 2]);
        assert_eq!(
            gids(&store.conversation("bob", "alice", NO_BOUND, 10)?),
            [5]
        );

        // A recall erases every version: the edit entries' bodies too.
        let edit_with_body = |seq: u64, target: u64| {
            Write::Room(RoomRecord {
                room: "r".into(),
                seq,
                from: "alice".into(),
                ts: 60,
                body: "\"v2\"".into(),
                kind: Kind::Edit,
                target,
                ..RoomRecord::default()
            })
        };
        store.commit(&[
            edit_with_body(5, 1),
            edit_with_body(6, 99),
            Write::Direct(DirectRecord {
                gid: 7,
                to: "bob".into(),
                seq: 3,
                from: "alice".into(),
                ts: 60,
                body: "\"v3\"".into(),
                kind: Kind::Edit,
                target: 5,
                ..DirectRecord::default()
            }),
        ])?;
        store.commit(&[
            Write::Amend {
                original: Original::Room {
                    room: "r".into(),
                    seq: 1,
                },
                body: None,
                ts: 70,
            },
            Write::Amend {
                original: Original::Direct {
                    to: "bob".into(),
                    gid: 5,
                },
                body: None,
                ts: 70,
            },
        ])?;
        let bodies: Vec<(u64, String)> = store
            .room_after("r", 0, 10)?
            .into_iter()
            .map(|r| (r.seq, r.body))
            .collect();
        let bodies: Vec<(u64, &str)> = bodies.iter().map(|(s, b)| (*s, b.as_str())).collect();
        // seq 6 edits another message: kept.
        assert_eq!(
            bodies,
            [
                (1, "null"),
                (2, "null"),
                (3, "null"),
                (4, "null"),
                (5, "null"),
                (6, "\"v2\"")
            ]
        );
        let inbox: Vec<String> = store
            .inbox_after("bob", 0, 10)?
            .into_iter()
            .map(|d| d.body)
            .collect();
        assert_eq!(inbox, ["null", "null", "null"]);
        Ok(())
    }

    pub fn read_positions_only_move_forward_and_unread_counts_follow_them(
        fixture: &Fixture,
    ) -> TestResult {
        let store = fixture.open()?;
        store.commit(&[
            direct(1, "ann", "bob", 1, 10),
            direct(2, "ann", "bob", 2, 11),
            direct(3, "ann", "bob", 3, 12),
            direct(4, "carol", "bob", 4, 13),
            direct(5, "bob", "ann", 1, 14),
            // Bob's receipt in Ann's inbox: not a message, not a peer's newest.
            inbox_entry(6, "bob", "ann", 2, Kind::Read, 2),
            read_position("bob", "user:ann", 2),
            room("r", 1, 10),
            room("r", 2, 11),
            Write::Room(RoomRecord {
                room: "r".into(),
                seq: 3,
                from: "bob".into(),
                ts: 12,
                body: "{}".into(),
                ..RoomRecord::default()
            }),
            read_position("bob", "room:r", 1),
        ])?;
        store.commit(&[read_position("bob", "user:ann", 1)])?;
        assert_eq!(store.read_position("bob", "user:ann")?, 2);
        assert_eq!(store.read_position("bob", "user:carol")?, 0);
        assert_eq!(store.read_position("ann", "user:bob")?, 0);
        let mut positions = store.read_positions("bob")?;
        positions.sort();
        assert_eq!(positions, pairs(&[("room:r", 1), ("user:ann", 2)]));
        assert_eq!(store.unread_direct("bob", "ann", 2)?, 1);
        assert_eq!(store.unread_direct("bob", "carol", 0)?, 1);
        assert_eq!(store.unread_direct("ann", "bob", 0)?, 1);
        // Bob's own message in the room is not unread for him.
        assert_eq!(store.unread_room("r", "bob", 1)?, 1);
        assert_eq!(store.unread_room("r", "carol", 0)?, 3);
        // A recalled message is not unread.
        store.commit(&[Write::Amend {
            original: Original::Direct {
                to: "bob".into(),
                gid: 3,
            },
            body: None,
            ts: 20,
        }])?;
        assert_eq!(store.unread_direct("bob", "ann", 2)?, 0);
        let mut peers = store.peers("bob", 10)?;
        peers.sort();
        assert_eq!(
            peers,
            [("ann".to_string(), 5, 14), ("carol".to_string(), 4, 13)]
        );
        // The receipt (gid 6) is not Ann's newest with Bob.
        assert_eq!(store.peers("ann", 10)?, [("bob".to_string(), 5, 14)]);
        assert!(store.peers("dave", 10)?.is_empty());
        // The limit keeps the most recent.
        assert_eq!(store.peers("bob", 1)?, [("ann".to_string(), 5, 14)]);
        assert_eq!(store.last_from("bob", "ann")?, Some(3));
        assert_eq!(store.last_from("bob", "dave")?, None);
        assert_eq!(store.last_from("ann", "bob")?, Some(1));
        assert_eq!(store.room_last("r")?, Some((3, 12)));
        assert_eq!(store.room_last("nowhere")?, None);
        // Counting stops at MAX_UNREAD.
        let many: Vec<Write> = (4..=MAX_UNREAD + 10)
            .map(|seq| room("r", seq, 30))
            .collect();
        store.commit(&many)?;
        assert_eq!(store.unread_room("r", "carol", 0)?, MAX_UNREAD);
        Ok(())
    }

    pub fn forgetting_drops_the_read_positions_that_name_it(fixture: &Fixture) -> TestResult {
        let store = fixture.open()?;
        store.commit(&[
            room("r", 1, 10),
            read_position("bob", "room:r", 1),
            read_position("ann", "room:r", 1),
            read_position("bob", "user:ann", 3),
            read_position("ann", "user:bob", 2),
        ])?;
        store.commit(&[
            Write::ForgetRoom { room: "r".into() },
            Write::ForgetInbox { user: "bob".into() },
        ])?;
        assert_eq!(store.read_position("bob", "room:r")?, 0);
        assert_eq!(store.read_position("ann", "room:r")?, 0);
        // Bob's positions are in Bob's inbox, which is gone; Ann's are not.
        assert_eq!(store.read_position("bob", "user:ann")?, 0);
        assert_eq!(store.read_position("ann", "user:bob")?, 2);
        Ok(())
    }

    pub fn reopening_keeps_everything(fixture: &Fixture) -> TestResult {
        {
            let store = fixture.open()?;
            store.commit(&[
                room("lobby", 1, 100),
                room("lobby", 2, 100),
                room("lobby", 3, 100),
                room("games", 1, 100),
                direct(1, "alice", "bob", 1, 100),
                direct(2, "bob", "alice", 1, 100),
                Write::Dedupe(dedupe("alice", "\"a\"", "room:lobby", 3, 100)),
                cursor("bob", "phone", 1),
            ])?;
            store.commit(&[Write::TrimRoom {
                room: "games".into(),
                upto: 1,
            }])?;
            store.commit(&[
                Write::RoomFloor {
                    bucket: 3,
                    value: 9,
                },
                Write::InboxFloor {
                    bucket: 5,
                    value: 4,
                },
            ])?;
        }
        let store = fixture.open()?;
        store.check()?;
        let recovered = store.recover(0)?;
        assert_eq!(recovered.room_floors, [(3, 9)]);
        assert_eq!(recovered.inbox_floors, [(5, 4)]);
        assert_eq!(
            sorted(recovered.rooms),
            pairs(&[("games", 1), ("lobby", 3)])
        );
        assert_eq!(
            sorted(recovered.inboxes),
            pairs(&[("alice", 1), ("bob", 1)])
        );
        assert_eq!(recovered.last_gid, 2);
        assert_eq!(
            recovered.dedupe,
            [dedupe("alice", "\"a\"", "room:lobby", 3, 100)]
        );
        let lobby = store.room_after("lobby", 0, 10)?;
        assert_eq!(seqs_of_rooms(&lobby), [1, 2, 3]);
        assert_eq!(lobby[2].body, "{\"n\":3}");
        assert!(store.room_after("games", 0, 10)?.is_empty());
        assert_eq!(
            gids(&store.conversation("alice", "bob", NO_BOUND, 10)?),
            [1, 2]
        );
        assert_eq!(store.cursor("bob", "phone")?, 1);
        // And it carries on from there.
        store.commit(&[room("lobby", 4, 200)])?;
        assert_eq!(store.room_oldest("lobby")?, Some(1));
        assert_eq!(
            seqs_of_rooms(&store.room_before("lobby", NO_BOUND, 2)?),
            [3, 4]
        );
        Ok(())
    }
}

conformance!(memory, |_dir: &Path| Ok::<_, Box<dyn Error>>(
    MemoryStore::new()
));
conformance!(sqlite, SqliteStore::open, durable);
conformance!(redis, open_redis, durable);
