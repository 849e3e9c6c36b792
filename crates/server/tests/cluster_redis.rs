//! The cluster store against a real `redis-server` (started by the tests on
//! free ports, with its own AOF): seqs and gids shared by several nodes,
//! dedupe across nodes, retention by count, acks that survive `kill -9` of
//! Redis, `unavailable` while it is down and recovery by itself, a damaged
//! key, lost functions, and the durability check.
//!
//! "Nodes" here are separate [`RedisStore`]s, each with its own
//! connections, as separate processes would have.

mod redis_server;

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchboard_server::cluster::{check_durability, keys, RedisSettings, RedisStore};
use switchboard_server::store::{
    Assigned, DedupeRecord, DirectRecord, Kind, Original, RoomRecord, Store, StoreError, Write,
};

use redis_server::RedisServer;

/// A bounded wait for anything concurrent: a failure, never a hang.
const WAIT: Duration = Duration::from_secs(30);
/// The store's timeout in these tests.
const TIMEOUT: Duration = Duration::from_millis(500);
const WINDOW: Duration = Duration::from_secs(60);

fn node(server: &RedisServer, name: &str, retention: u64) -> RedisStore {
    RedisStore::open(RedisSettings {
        url: server.url(),
        node: name.into(),
        timeout: TIMEOUT,
        retention_count: retention,
        dedupe_window: WINDOW,
        trim_every: None,
    })
    .unwrap_or_else(|e| panic!("open: {e}"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Builds a batch as the writer does: provisional seqs (and gids) per
/// target, each entry followed by its amend and dedupe record, if any.
#[derive(Default)]
struct Batch {
    writes: Vec<Write>,
    provisional: HashMap<String, u64>,
    gid: u64,
}

impl Batch {
    fn next(&mut self, target: &str) -> u64 {
        let seq = self.provisional.entry(target.to_owned()).or_default();
        *seq += 1;
        *seq
    }

    fn dedupe(&mut self, user: &str, target: &str, seq: u64, ts: u64, id: Option<&str>) {
        if let Some(id) = id {
            self.writes.push(Write::Dedupe(DedupeRecord {
                user: user.into(),
                id: id.into(),
                target: target.into(),
                seq,
                ts,
            }));
        }
    }

    fn room(&mut self, room: &str, from: &str, body: &str, id: Option<&str>) -> &mut Batch {
        self.room_at(room, from, body, id, now(), None)
    }

    fn room_at(
        &mut self,
        room: &str,
        from: &str,
        body: &str,
        id: Option<&str>,
        ts: u64,
        sender: Option<u64>,
    ) -> &mut Batch {
        let target = format!("room:{room}");
        let seq = self.next(&target);
        self.writes.push(Write::Room(RoomRecord {
            room: room.into(),
            seq,
            from: from.into(),
            ts,
            body: body.into(),
            sender,
            ..RoomRecord::default()
        }));
        self.dedupe(from, &target, seq, ts, id);
        self
    }

    /// An edit of room message `target` with its amend.
    fn room_edit(&mut self, room: &str, from: &str, target: u64, body: &str, id: &str) {
        let ts = now();
        let key = format!("room:{room}");
        let seq = self.next(&key);
        self.writes.push(Write::Room(RoomRecord {
            room: room.into(),
            seq,
            from: from.into(),
            ts,
            body: body.into(),
            kind: Kind::Edit,
            target,
            ..RoomRecord::default()
        }));
        self.writes.push(Write::Amend {
            original: Original::Room {
                room: room.into(),
                seq: target,
            },
            body: Some(body.into()),
            ts,
        });
        self.dedupe(from, &key, seq, ts, Some(id));
    }

    fn direct(
        &mut self,
        from: &str,
        to: &str,
        body: &str,
        id: Option<&str>,
        sender: Option<u64>,
    ) -> &mut Batch {
        let ts = now();
        let target = format!("user:{to}");
        let seq = self.next(&target);
        self.gid += 1;
        self.writes.push(Write::Direct(DirectRecord {
            gid: self.gid,
            to: to.into(),
            seq,
            from: from.into(),
            ts,
            body: body.into(),
            sender,
            ..DirectRecord::default()
        }));
        self.dedupe(from, &target, seq, ts, id);
        self
    }
}

fn stored(a: &Assigned) -> (u64, u64) {
    match a {
        Assigned::Stored { seq, gid, .. } => (*seq, *gid),
        other => panic!("expected a stored entry, got {other:?}"),
    }
}

fn query<T: redis::FromRedisValue>(server: &RedisServer, cmd: &redis::Cmd) -> T {
    let mut conn = server
        .client()
        .get_connection_with_timeout(WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    cmd.query(&mut conn).unwrap_or_else(|e| panic!("{e}"))
}

/// The members of a log or inbox, in seq order (the records as stored).
fn members(server: &RedisServer, key: &str) -> Vec<String> {
    query(server, redis::cmd("ZRANGE").arg(key).arg(0).arg(-1))
}

/// A channel message: (origin, record).
fn parse_payload(payload: &[u8]) -> (String, String) {
    let text = std::str::from_utf8(payload).unwrap_or_else(|e| panic!("{e}"));
    let rest = text
        .strip_prefix("s|")
        .unwrap_or_else(|| panic!("payload {text:?} does not start with s|"));
    let (origin, record) = rest
        .split_once('|')
        .unwrap_or_else(|| panic!("payload {text:?} has no origin"));
    (origin.to_owned(), record.to_owned())
}

/// Names that need escaping or look like key syntax.
const ROOMS: [&str; 3] = ["lobby", "team \"a\"/{b}\\ 小明 😀", "x}:log"];
const USERS: [&str; 3] = ["u0", "u \"1\" {x}", "u2"];

#[test]
fn three_nodes_share_gapless_seqs_and_announce_every_entry() {
    let server = RedisServer::start();
    // A subscriber on every channel, as a node with local members.
    let mut sub = server
        .client()
        .get_connection_with_timeout(WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    // One PubSub for the whole test: dropping it unsubscribes.
    let mut pubsub = sub.as_pubsub();
    let channels = ROOMS
        .iter()
        .map(|room| keys::room_channel(room))
        .chain(USERS.iter().map(|user| keys::user_channel(user)));
    for channel in channels {
        pubsub.subscribe(channel).unwrap_or_else(|e| panic!("{e}"));
    }

    const NODES: usize = 3;
    const BATCHES: usize = 15;
    const PER_BATCH: usize = 8;
    let threads: Vec<_> = (0..NODES)
        .map(|n| {
            let store = node(&server, &format!("n{n}"), 10_000);
            std::thread::spawn(move || {
                // (room or "@user", seq, gid, body)
                let mut acked = Vec::new();
                for b in 0..BATCHES {
                    let mut batch = Batch::default();
                    let mut targets = Vec::new();
                    for k in 0..PER_BATCH {
                        let body = format!(r#"{{"n":{n},"b":{b},"k":{k},"s":"é\n\"q\" \u2028"}}"#);
                        let id = format!("\"{n}-{b}-{k}\"");
                        let sender = Some((n * 1000 + b * 10 + k) as u64);
                        if k % 4 == 3 {
                            let to = USERS[(n + b + k) % USERS.len()];
                            let from = USERS[(n + b + k + 1) % USERS.len()];
                            batch.direct(from, to, &body, Some(&id), sender);
                            targets.push((format!("@{to}"), body));
                        } else {
                            let room = ROOMS[(n + b + k) % ROOMS.len()];
                            batch.room_at(
                                room,
                                &format!("user {n}"),
                                &body,
                                Some(&id),
                                now(),
                                sender,
                            );
                            targets.push((room.to_owned(), body));
                        }
                    }
                    let assigned = store
                        .commit_assigning(&batch.writes)
                        .unwrap_or_else(|e| panic!("commit: {e}"));
                    assert_eq!(assigned.len(), PER_BATCH);
                    for ((target, body), a) in targets.into_iter().zip(&assigned) {
                        let (seq, gid) = stored(a);
                        acked.push((target, seq, gid, body));
                    }
                }
                acked
            })
        })
        .collect();
    let mut by_target: BTreeMap<String, Vec<(u64, u64, String)>> = BTreeMap::new();
    for thread in threads {
        for (target, seq, gid, body) in thread.join().unwrap_or_else(|_| panic!("a node panicked"))
        {
            by_target.entry(target).or_default().push((seq, gid, body));
        }
    }
    let total: usize = by_target.values().map(Vec::len).sum();
    assert_eq!(total, NODES * BATCHES * PER_BATCH);

    let store = node(&server, "reader", 10_000);
    let mut gids = Vec::new();
    for (target, acked) in &mut by_target {
        acked.sort();
        let seqs: Vec<u64> = acked.iter().map(|a| a.0).collect();
        let expected: Vec<u64> = (1..=acked.len() as u64).collect();
        assert_eq!(seqs, expected, "{target}: seqs from 1, gapless, each once");
        let bodies: Vec<(u64, String)> = match target.strip_prefix('@') {
            Some(user) => {
                gids.extend(acked.iter().map(|a| a.1));
                store
                    .inbox_after(user, 0, 1000)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .into_iter()
                    .map(|d| {
                        assert_eq!(d.to, user);
                        (d.seq, d.body)
                    })
                    .collect()
            }
            None => {
                assert!(acked.iter().all(|a| a.1 == 0), "rooms have no gids");
                store
                    .room_after(target, 0, 1000)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .into_iter()
                    .map(|r| (r.seq, r.body))
                    .collect()
            }
        };
        let acked_bodies: Vec<(u64, String)> = acked.iter().map(|a| (a.0, a.2.clone())).collect();
        assert_eq!(bodies, acked_bodies, "{target}: stored verbatim");
    }
    gids.sort();
    let expected: Vec<u64> = (1..=gids.len() as u64).collect();
    assert_eq!(gids, expected, "gids from 1, gapless, each once");

    // What the subscriber got: each room entry once on its channel, each
    // inbox entry on the recipient's and the sender's channel, in seq order
    // per channel, byte for byte the record stored.
    let expected_messages = total - gids.len() + 2 * gids.len();
    let mut received: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let deadline = Instant::now() + WAIT;
    for _ in 0..expected_messages {
        let left = deadline.saturating_duration_since(Instant::now());
        pubsub
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap_or_else(|e| panic!("{e}"));
        let msg = pubsub
            .get_message()
            .unwrap_or_else(|e| panic!("the subscriber did not get every message: {e}"));
        let (origin, record) = parse_payload(msg.get_payload_bytes());
        received
            .entry(msg.get_channel_name().to_owned())
            .or_default()
            .push((origin, record));
    }
    for room in ROOMS {
        let got = &received[&keys::room_channel(room)];
        let records: Vec<&String> = got.iter().map(|g| &g.1).collect();
        let stored = members(&server, &keys::room_log(room));
        assert_eq!(
            records,
            stored.iter().collect::<Vec<_>>(),
            "{room}: pub/sub"
        );
        for (origin, record) in got {
            let value: serde_json::Value =
                serde_json::from_str(record).unwrap_or_else(|e| panic!("{e}"));
            let n = value["body"]["n"]
                .as_u64()
                .unwrap_or_else(|| panic!("{record}"));
            let b = value["body"]["b"].as_u64().unwrap_or(0);
            let k = value["body"]["k"].as_u64().unwrap_or(0);
            assert_eq!(origin, &format!("n{n}:{}", n * 1000 + b * 10 + k));
            assert_eq!(value["room"], room);
        }
    }
    for user in USERS {
        let got: Vec<serde_json::Value> = received[&keys::user_channel(user)]
            .iter()
            .map(|g| serde_json::from_str(&g.1).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let mine: Vec<u64> = got
            .iter()
            .filter(|v| v["to"] == user)
            .map(|v| v["seq"].as_u64().unwrap_or(0))
            .collect();
        let expected: Vec<u64> = (1..=mine.len() as u64).collect();
        assert_eq!(mine, expected, "{user}: its inbox entries, in seq order");
        assert!(
            got.iter().all(|v| v["to"] == user || v["from"] == user),
            "{user}: only its own conversations"
        );
    }
}

#[test]
fn a_repeated_id_is_the_original_on_any_node() {
    let server = RedisServer::start();
    let a = node(&server, "a", 100);
    let b = node(&server, "b", 100);
    let mut first = Batch::default();
    first.room("r1", "ann", r#"{"t":"hi"}"#, Some(r#""m1""#));
    let got = a
        .commit_assigning(&first.writes)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        got,
        [Assigned::Stored {
            seq: 1,
            gid: 0,
            reach: 0
        }]
    );

    let mut again = Batch::default();
    // The same user, room and id through another node.
    again.room("r1", "ann", r#"{"t":"hi"}"#, Some(r#""m1""#));
    // The same id in another room, and by another user: new.
    again.room("r2", "ann", r#"{"t":"hi"}"#, Some(r#""m1""#));
    again.room("r1", "bob", r#"{"t":"hi"}"#, Some(r#""m1""#));
    // Twice in one batch: the second is the first's duplicate.
    again.room("r1", "ann", r#"{"t":"x"}"#, Some("7"));
    again.room("r1", "ann", r#"{"t":"x"}"#, Some("7"));
    // No id: never deduplicated.
    again.room("r1", "ann", r#"{"t":"x"}"#, None);
    again.room("r1", "ann", r#"{"t":"x"}"#, None);
    // Direct messages: the same on their own inboxes.
    again.direct("ann", "bob", "1", Some(r#""m1""#), None);
    again.direct("ann", "bob", "1", Some(r#""m1""#), None);
    let got = b
        .commit_assigning(&again.writes)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        got,
        [
            Assigned::Duplicate { seq: 1 },
            Assigned::Stored {
                seq: 1,
                gid: 0,
                reach: 0
            },
            Assigned::Stored {
                seq: 2,
                gid: 0,
                reach: 0
            },
            Assigned::Stored {
                seq: 3,
                gid: 0,
                reach: 0
            },
            Assigned::Duplicate { seq: 3 },
            Assigned::Stored {
                seq: 4,
                gid: 0,
                reach: 0
            },
            Assigned::Stored {
                seq: 5,
                gid: 0,
                reach: 0
            },
            Assigned::Stored {
                seq: 1,
                gid: 1,
                reach: 0
            },
            Assigned::Duplicate { seq: 1 },
        ]
    );
    let r1: Vec<u64> = a
        .room_after("r1", 0, 100)
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(r1, [1, 2, 3, 4, 5], "a duplicate adds nothing");
    assert_eq!(a.inbox_after("bob", 0, 10).map(|i| i.len()).ok(), Some(1));

    // An edit repeated through another node (with another body, as a
    // buggy client might): a duplicate, and its amend is not applied.
    let mut edit = Batch::default();
    edit.provisional.insert("room:r1".into(), 5);
    edit.room_edit("r1", "ann", 1, "\"v2\"", "\"e1\"");
    let got = a
        .commit_assigning(&edit.writes)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        got,
        [Assigned::Stored {
            seq: 6,
            gid: 0,
            reach: 0
        }]
    );
    let mut repeat = Batch::default();
    repeat.provisional.insert("room:r1".into(), 5);
    repeat.room_edit("r1", "ann", 1, "\"v3\"", "\"e1\"");
    let got = b
        .commit_assigning(&repeat.writes)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, [Assigned::Duplicate { seq: 6 }]);
    let original = b
        .room_entry("r1", 1)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("seq 1 is held"));
    assert_eq!(original.body, "\"v2\"");
    assert!(original.edited > 0);

    // An id older than the window is not a repeat.
    let mut late = Batch::default();
    late.room_at(
        "r1",
        "ann",
        "{}",
        Some("7"),
        now() + WINDOW.as_millis() as u64 + 1000,
        None,
    );
    let got = b
        .commit_assigning(&late.writes)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        got,
        [Assigned::Stored {
            seq: 7,
            gid: 0,
            reach: 0
        }]
    );

    // Every node recovers the ids; trim expires them.
    let ids = a.recover(0).unwrap_or_else(|e| panic!("{e}")).dedupe;
    assert_eq!(ids.len(), 6, "{ids:?}");
    b.trim(0, u64::MAX / 2).unwrap_or_else(|e| panic!("{e}"));
    assert!(a
        .recover(0)
        .unwrap_or_else(|e| panic!("{e}"))
        .dedupe
        .is_empty());
    let count: u64 = query(&server, redis::cmd("HLEN").arg(keys::DEDUPE));
    assert_eq!(count, 0);
    let mut resent = Batch::default();
    resent.room("r1", "ann", r#"{"t":"hi"}"#, Some(r#""m1""#));
    let got = a
        .commit_assigning(&resent.writes)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        got,
        [Assigned::Stored {
            seq: 8,
            gid: 0,
            reach: 0
        }]
    );
}

#[test]
fn retention_keeps_the_newest_count_exactly() {
    let server = RedisServer::start();
    let store = node(&server, "n", 5);
    for round in 0..3 {
        let mut batch = Batch::default();
        for i in 0..4 {
            batch.room("r", "ann", &format!("{{\"r\":{round},\"i\":{i}}}"), None);
        }
        // Retention by count is the store's own: the writer's trims are
        // ignored (this one would drop everything).
        batch.writes.push(Write::TrimRoom {
            room: "r".into(),
            upto: 1000,
        });
        store
            .commit_assigning(&batch.writes)
            .unwrap_or_else(|e| panic!("{e}"));
        let len: u64 = query(&server, redis::cmd("ZCARD").arg(keys::room_log("r")));
        assert!(len <= 5, "ZCARD {len} after round {round}");
    }
    let seqs: Vec<u64> = store
        .room_after("r", 0, 100)
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, [8, 9, 10, 11, 12]);
    let seq: u64 = query(
        &server,
        redis::cmd("HGET").arg(keys::room_meta("r")).arg("seq"),
    );
    assert_eq!(seq, 12);

    // An inbox: the dropped entries leave the gid and conversation indexes.
    let mut batch = Batch::default();
    for i in 0..7 {
        batch.direct("ann", "bob", &i.to_string(), None, None);
    }
    store
        .commit_assigning(&batch.writes)
        .unwrap_or_else(|e| panic!("{e}"));
    let held: Vec<u64> = store
        .inbox_after("bob", 0, 100)
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|d| d.seq)
        .collect();
    assert_eq!(held, [3, 4, 5, 6, 7]);
    assert_eq!(store.direct_entry(2).ok(), Some(None));
    assert!(matches!(store.direct_entry(3), Ok(Some(d)) if d.seq == 3));
    let conversation: Vec<u64> = store
        .conversation("ann", "bob", u64::MAX / 2, 100)
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|d| d.gid)
        .collect();
    assert_eq!(conversation, [3, 4, 5, 6, 7]);
    let indexed: u64 = query(&server, redis::cmd("HLEN").arg(keys::GIDS));
    assert_eq!(indexed, 5);
    assert_eq!(store.recover(0).map(|r| r.last_gid).ok(), Some(7));
}

#[test]
fn age_retention_runs_on_one_node_per_round() {
    let server = RedisServer::start();
    let shared = |name: &str| {
        RedisStore::open(RedisSettings {
            url: server.url(),
            node: name.into(),
            timeout: TIMEOUT,
            retention_count: 100,
            dedupe_window: WINDOW,
            trim_every: Some(Duration::from_secs(60)),
        })
        .unwrap_or_else(|e| panic!("open: {e}"))
    };
    let (a, b) = (shared("a"), shared("b"));
    let old = now() - 10_000;
    let expired = |store: &RedisStore| {
        let mut batch = Batch::default();
        batch.room_at("r", "ann", "1", None, old, None);
        store
            .commit_assigning(&batch.writes)
            .unwrap_or_else(|e| panic!("{e}"));
    };
    let held = |store: &RedisStore| store.room_after("r", 0, 10).map_or(0, |r| r.len());
    expired(&a);
    a.trim(old + 1, 0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(held(&a), 0, "a ran this round's retention");
    expired(&b);
    b.trim(old + 1, 0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(held(&b), 1, "b left the round to a");
    // The round's lease gone (expired), the next trim runs.
    let _: i64 = query(&server, redis::cmd("DEL").arg(keys::TRIM_LEASE));
    b.trim(old + 1, 0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(held(&b), 0);
}

#[test]
fn acked_entries_survive_kill_9_of_redis() {
    let mut server = RedisServer::start();
    let store = std::sync::Arc::new(node(&server, "n", 100_000));
    // Commit until Redis dies under the flood, keeping what was acked.
    let (acks, acked_rx) = mpsc::channel();
    let (done, done_rx) = mpsc::channel();
    let flood = {
        let store = store.clone();
        std::thread::spawn(move || {
            for b in 0u64.. {
                let mut batch = Batch::default();
                let bodies: Vec<String> = (0..20)
                    .map(|i| format!("{{\"b\":{b},\"i\":{i}}}"))
                    .collect();
                for body in &bodies {
                    batch.room("r", "ann", body, None);
                }
                match store.commit_assigning(&batch.writes) {
                    Ok(assigned) => {
                        for (a, body) in assigned.iter().zip(bodies) {
                            let _ = acks.send((stored(a).0, body));
                        }
                    }
                    Err(StoreError::Unavailable(_)) => break,
                    Err(other) => panic!("{other}"),
                }
            }
            let _ = done.send(());
        })
    };
    let mut acked = Vec::new();
    while acked.len() < 300 {
        acked.push(
            acked_rx
                .recv_timeout(WAIT)
                .unwrap_or_else(|e| panic!("no acks: {e}")),
        );
    }
    server.kill();
    done_rx
        .recv_timeout(WAIT)
        .unwrap_or_else(|e| panic!("the flood did not notice: {e}"));
    flood
        .join()
        .unwrap_or_else(|_| panic!("the flood panicked"));
    acked.extend(acked_rx.try_iter());

    server.restart();
    // The same store: it connects again by itself.
    let held: HashMap<u64, String> = read_when_back(&store)
        .into_iter()
        .map(|r| (r.seq, r.body))
        .collect();
    for (seq, body) in &acked {
        assert_eq!(held.get(seq), Some(body), "acked seq {seq} lost or changed");
    }
    let last = held.keys().max().copied().unwrap_or(0);
    assert_eq!(held.len() as u64, last, "gapless from 1");
    assert!(last >= acked.len() as u64);
    // It continues above everything stored: no seq reused.
    let next = commit_when_back(&store, "\"after\"");
    assert_eq!(next, last + 1);
}

fn read_when_back(store: &RedisStore) -> Vec<RoomRecord> {
    let deadline = Instant::now() + WAIT;
    loop {
        match store.room_after("r", 0, 1_000_000) {
            Ok(records) => return records,
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(other) => panic!("{other}"),
        }
    }
}

/// Commits one message to room `r` until Redis answers (it carries an id,
/// so a try that timed out after writing is not written twice); its seq.
fn commit_when_back(store: &RedisStore, id: &str) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut batch = Batch::default();
        batch.room("r", "ann", "{}", Some(id));
        match store.commit_assigning(&batch.writes) {
            Ok(assigned) => match assigned[..] {
                [Assigned::Stored { seq, .. } | Assigned::Duplicate { seq }] => return seq,
                ref other => panic!("{other:?}"),
            },
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(other) => panic!("{other}"),
        }
    }
}

#[test]
fn unavailable_promptly_while_redis_is_down_then_back_by_itself() {
    let mut server = RedisServer::start();
    let store = node(&server, "n", 100);
    let mut batch = Batch::default();
    batch.room("r", "ann", "1", None);
    assert_eq!(
        store.commit_assigning(&batch.writes).ok(),
        Some(vec![Assigned::Stored {
            seq: 1,
            gid: 0,
            reach: 0
        }])
    );
    server.kill();
    for _ in 0..2 {
        let started = Instant::now();
        let mut batch = Batch::default();
        batch
            .room("r", "ann", "2", Some("\"x\""))
            .room("r", "bob", "3", None);
        let result = store.commit_assigning(&batch.writes);
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{result:?}"
        );
        let read = store.room_after("r", 0, 10);
        assert!(matches!(read, Err(StoreError::Unavailable(_))), "{read:?}");
        assert!(matches!(store.check(), Err(StoreError::Unavailable(_))));
        // The timeout (500 ms) bounds it, with room for a loaded machine.
        let took = started.elapsed();
        assert!(took < TIMEOUT * 4, "took {took:?}");
    }
    server.restart();
    let seq = commit_when_back(&store, "\"x\"");
    assert_eq!(seq, 2, "continues where it was, nothing written while down");
    store.check().unwrap_or_else(|e| panic!("{e}"));

    // Restarted between two calls: the pooled connections are stale, and
    // neither a read nor the write after it fails for that.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| store.room_after("r", 0, 10).map(drop));
        }
    });
    server.restart();
    let read = store.room_after("r", 0, 10).map(|r| r.len());
    assert_eq!(read.ok(), Some(2));
    let mut batch = Batch::default();
    batch.room("r", "ann", "4", None);
    let result = store.commit_assigning(&batch.writes);
    assert_eq!(
        result.ok(),
        Some(vec![Assigned::Stored {
            seq: 3,
            gid: 0,
            reach: 0
        }])
    );
}

#[test]
fn a_damaged_key_fails_the_batch_whole_and_lost_functions_are_reloaded() {
    let server = RedisServer::start();
    let store = node(&server, "n", 100);
    let _: () = query(
        &server,
        redis::cmd("SET").arg(keys::room_meta("bad")).arg("x"),
    );
    let mut batch = Batch::default();
    batch
        .room("good", "ann", "1", Some("\"g\""))
        .room("bad", "ann", "1", None);
    let result = store.commit_assigning(&batch.writes);
    assert!(matches!(result, Err(StoreError::Corrupt(_))), "{result:?}");
    // Nothing of the batch was written (Redis does not roll back: the
    // function checks before it writes).
    assert_eq!(
        store.room_after("good", 0, 10).map(|r| r.len()).ok(),
        Some(0)
    );
    let seq: Option<u64> = query(
        &server,
        redis::cmd("HGET").arg(keys::room_meta("good")).arg("seq"),
    );
    assert_eq!(seq, None);
    assert!(store
        .recover(0)
        .map(|r| r.dedupe.is_empty())
        .unwrap_or(false));

    // Redis restarted empty (or flushed): the library is loaded again.
    let _: () = query(&server, redis::cmd("FUNCTION").arg("FLUSH"));
    let mut batch = Batch::default();
    batch.room("good", "ann", "2", None);
    assert_eq!(
        store.commit_assigning(&batch.writes).ok(),
        Some(vec![Assigned::Stored {
            seq: 1,
            gid: 0,
            reach: 0
        }])
    );
    let _: () = query(&server, redis::cmd("FUNCTION").arg("FLUSH"));
    assert_eq!(store.unread_room("good", "bob", 0).ok(), Some(1));
}

#[test]
fn durability_report_follows_the_redis_settings() {
    let durable = RedisServer::start();
    let report = node(&durable, "n", 10)
        .durability()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.holds(), "{}", report.message());
    assert_eq!(report.appendfsync, "always");
    assert_eq!(report.maxmemory_policy, "noeviction");

    let relaxed = RedisServer::start_with(&["--appendfsync", "everysec"]);
    let mut conn = relaxed
        .client()
        .get_connection_with_timeout(WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let report = check_durability(&mut conn).unwrap_or_else(|e| panic!("{e}"));
    assert!(!report.holds());
    assert_eq!(report.appendfsync, "everysec");
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.message().contains("appendfsync is \"everysec\""),
        "{}",
        report.message()
    );
    assert_eq!(
        node(&relaxed, "n", 10).durability().map(|r| r.holds()).ok(),
        Some(false)
    );
}
