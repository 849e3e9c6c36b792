//! The cluster sequencer against a real `redis-server` (started by the
//! tests on free ports, with its own AOF): seqs shared by several nodes,
//! dedupe across nodes, retention, acks that survive `kill -9` of Redis,
//! `unavailable` while it is down, and the durability check.
//!
//! "Nodes" here are separate [`RedisSequencer`]s, each with its own
//! connection, as separate processes would have.

mod redis_server;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::streams::StreamRangeReply;
use redis::Value;
use serde_json::value::RawValue;
use switchboard_protocol::Id;
use switchboard_server::cluster::{
    check_durability, keys, ChannelMessage, Job, Outcome, Publish, RedisSequencer, Settings,
};
use switchboard_server::store::StoreError;

use redis_server::RedisServer;

/// A bounded wait for anything asynchronous: a failure, never a hang.
const WAIT: Duration = Duration::from_secs(30);
/// The sequencer's timeout in these tests.
const TIMEOUT: Duration = Duration::from_millis(500);

fn settings(server: &RedisServer, retention: u64) -> Settings {
    Settings {
        url: server.url(),
        timeout: TIMEOUT,
        retention,
        dedupe_window: Duration::from_secs(60),
    }
}

async fn node(server: &RedisServer, retention: u64) -> RedisSequencer {
    RedisSequencer::connect(settings(server, retention))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

fn publish(room: &str, from: &str, body: &str, id: Option<&str>) -> Job {
    Job::Publish(Publish {
        room: room.into(),
        from: from.into(),
        body: RawValue::from_string(body.to_owned()).unwrap_or_else(|e| panic!("{e}")),
        id: id.map(|id| Id::from_json(id).unwrap_or_else(|| panic!("bad id {id}"))),
        origin: "test".into(),
    })
}

/// (seq, ts, event) of a new message; panics on anything else.
fn new(outcome: &Outcome) -> (u64, u64, Vec<u8>) {
    match outcome {
        Outcome::New { seq, ts, event } => (*seq, *ts, event.to_vec()),
        other => panic!("expected a new message, got {other:?}"),
    }
}

/// The room's stream: (seq, event) in stream order.
async fn log(server: &RedisServer, room: &str) -> Vec<(u64, Vec<u8>)> {
    let mut conn = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let reply: StreamRangeReply = redis::cmd("XRANGE")
        .arg(keys::room_log(room))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    reply
        .ids
        .into_iter()
        .map(|entry| {
            let seq = entry
                .id
                .strip_suffix("-0")
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("stream id {} is not <seq>-0", entry.id));
            assert_eq!(entry.map.len(), 1, "one field per entry");
            let event = match entry.map.get("e") {
                Some(Value::BulkString(bytes)) => bytes.clone(),
                other => panic!("field e: {other:?}"),
            };
            (seq, event)
        })
        .collect()
}

async fn query<T: redis::FromRedisValue>(server: &RedisServer, cmd: &redis::Cmd) -> T {
    let mut conn = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    cmd.query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Names that need escaping or look like key syntax.
const ROOMS: [&str; 3] = ["lobby", "team \"a\"/{b}\\ 小明 😀", "x}:log"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_gapless_seqs_and_identical_bytes() {
    let server = RedisServer::start();
    // A subscriber on every room channel, as a node with local members.
    let mut pubsub = server
        .client()
        .get_async_pubsub()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for room in ROOMS {
        pubsub
            .subscribe(keys::room_channel(room))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let channels: HashMap<String, &str> = ROOMS
        .iter()
        .map(|room| (keys::room_channel(room), *room))
        .collect();

    const NODES: usize = 3;
    const BATCHES: usize = 15;
    const PER_BATCH: usize = 8;
    let mut tasks = Vec::new();
    for n in 0..NODES {
        let sequencer = node(&server, 10_000).await;
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for b in 0..BATCHES {
                let jobs: Vec<(String, Job)> = (0..PER_BATCH)
                    .map(|k| {
                        let room = ROOMS[(n + b + k) % ROOMS.len()];
                        let body = format!(r#"{{"n":{n},"b":{b},"k":{k},"s":"é\n\"q\" \u2028"}}"#);
                        let id = format!("\"{n}-{b}-{k}\"");
                        let job = publish(room, &format!("user {n}"), &body, Some(&id));
                        (room.to_owned(), job)
                    })
                    .collect();
                let batch: Vec<Job> = jobs.iter().map(|(_, j)| j.clone()).collect();
                let outcomes = sequencer.commit(&batch).await;
                assert_eq!(outcomes.len(), batch.len());
                for ((room, _), outcome) in jobs.into_iter().zip(&outcomes) {
                    acked.push((room, new(outcome)));
                }
            }
            acked
        }));
    }
    let mut by_room: BTreeMap<String, Vec<(u64, u64, Vec<u8>)>> = BTreeMap::new();
    for task in tasks {
        for (room, acked) in task.await.unwrap_or_else(|e| panic!("{e}")) {
            by_room.entry(room).or_default().push(acked);
        }
    }
    let total = NODES * BATCHES * PER_BATCH;
    assert_eq!(by_room.values().map(Vec::len).sum::<usize>(), total);

    // What the subscriber got, per room, in arrival order.
    let mut received: HashMap<&str, Vec<(u64, Vec<u8>)>> = HashMap::new();
    let mut stream = pubsub.on_message();
    let deadline = Instant::now() + WAIT;
    for _ in 0..total {
        let msg = tokio::time::timeout_at(deadline.into(), stream.next())
            .await
            .unwrap_or_else(|_| panic!("the subscriber did not get every message"))
            .unwrap_or_else(|| panic!("the subscription ended"));
        let room = channels[msg.get_channel_name()];
        let m = ChannelMessage::parse(msg.get_payload_bytes())
            .unwrap_or_else(|| panic!("bad payload {:?}", msg.get_payload_bytes()));
        assert_eq!(m.origin, b"test");
        received
            .entry(room)
            .or_default()
            .push((m.seq, m.event.to_vec()));
    }

    for (room, mut acked) in by_room {
        acked.sort();
        let seqs: Vec<u64> = acked.iter().map(|a| a.0).collect();
        let expected: Vec<u64> = (1..=acked.len() as u64).collect();
        assert_eq!(seqs, expected, "{room}: seqs from 1, gapless, each once");
        assert!(
            acked.windows(2).all(|w| w[0].1 <= w[1].1),
            "{room}: ts never goes back"
        );
        let acked: Vec<(u64, Vec<u8>)> = acked.into_iter().map(|(s, _, e)| (s, e)).collect();
        // The event the node built (protocol::encode) is the event Redis
        // stored and published, byte for byte.
        assert_eq!(log(&server, &room).await, acked, "{room}: stream");
        assert_eq!(received[room.as_str()], acked, "{room}: pub/sub");
        let first: serde_json::Value =
            serde_json::from_slice(&acked[0].1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first["type"], "message");
        assert_eq!(first["room"], room.as_str());
        assert_eq!(first["seq"], 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_id_is_the_original_on_any_node() {
    let server = RedisServer::start();
    let a = node(&server, 100).await;
    let b = node(&server, 100).await;
    let first = a
        .commit(&[publish("r1", "ann", r#"{"t":"hi"}"#, Some(r#""m1""#))])
        .await;
    assert_eq!(new(&first[0]).0, 1);

    let again = b
        .commit(&[
            // The same user, room and id through another node.
            publish("r1", "ann", r#"{"t":"hi"}"#, Some(r#""m1""#)),
            // The same id in another room, and by another user: new.
            publish("r2", "ann", r#"{"t":"hi"}"#, Some(r#""m1""#)),
            publish("r1", "bob", r#"{"t":"hi"}"#, Some(r#""m1""#)),
            // Twice in one batch: the second is the first's duplicate.
            publish("r1", "ann", r#"{"t":"x"}"#, Some("7")),
            publish("r1", "ann", r#"{"t":"x"}"#, Some("7")),
            // No id: never deduplicated.
            publish("r1", "ann", r#"{"t":"x"}"#, None),
            publish("r1", "ann", r#"{"t":"x"}"#, None),
        ])
        .await;
    assert!(
        matches!(again[0], Outcome::Duplicate { seq: 1 }),
        "{again:?}"
    );
    assert_eq!(new(&again[1]).0, 1, "r2 has its own seqs");
    assert_eq!(new(&again[2]).0, 2);
    assert_eq!(new(&again[3]).0, 3);
    assert!(
        matches!(again[4], Outcome::Duplicate { seq: 3 }),
        "{again:?}"
    );
    assert_eq!(new(&again[5]).0, 4);
    assert_eq!(new(&again[6]).0, 5);

    let r1: Vec<u64> = log(&server, "r1").await.iter().map(|e| e.0).collect();
    assert_eq!(r1, [1, 2, 3, 4, 5], "a duplicate adds nothing");
    assert_eq!(log(&server, "r2").await.len(), 1);
    // The dedupe key expires with the window.
    let ttl: i64 = query(
        &server,
        redis::cmd("PTTL").arg(keys::room_dedupe("r1", "ann", r#""m1""#)),
    )
    .await;
    assert!(ttl > 0 && ttl <= 60_000, "PTTL {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_newest_count_exactly() {
    let server = RedisServer::start();
    let node = node(&server, 5).await;
    for round in 0..3 {
        let jobs: Vec<Job> = (0..4)
            .map(|i| publish("r", "ann", &format!("{{\"r\":{round},\"i\":{i}}}"), None))
            .collect();
        for outcome in node.commit(&jobs).await {
            new(&outcome);
        }
        let len: u64 = query(&server, redis::cmd("XLEN").arg(keys::room_log("r"))).await;
        assert!(len <= 5, "XLEN {len} after round {round}");
    }
    let seqs: Vec<u64> = log(&server, "r").await.iter().map(|e| e.0).collect();
    assert_eq!(seqs, [8, 9, 10, 11, 12]);
    let seq: u64 = query(
        &server,
        redis::cmd("HGET").arg(keys::room_meta("r")).arg("seq"),
    )
    .await;
    assert_eq!(seq, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_kill_9_of_redis() {
    let mut server = RedisServer::start();
    let node = node(&server, 100_000).await;
    // Publish until Redis dies under the flood, keeping what was acked.
    let (acks, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let flood = {
        let node = node.clone();
        tokio::spawn(async move {
            for b in 0u64.. {
                let jobs: Vec<Job> = (0..20)
                    .map(|i| publish("r", "ann", &format!("{{\"b\":{b},\"i\":{i}}}"), None))
                    .collect();
                let outcomes = node.commit(&jobs).await;
                for outcome in outcomes {
                    match outcome {
                        Outcome::New { seq, event, .. } => {
                            let _ = acks.send((seq, event.to_vec()));
                        }
                        Outcome::Failed(StoreError::Unavailable(_)) => return,
                        other => panic!("{other:?}"),
                    }
                }
            }
        })
    };
    let mut acked = Vec::new();
    while acked.len() < 300 {
        let ack = tokio::time::timeout(WAIT, acked_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no acks"))
            .unwrap_or_else(|| panic!("the flood stopped early"));
        acked.push(ack);
    }
    server.kill();
    tokio::time::timeout(WAIT, flood)
        .await
        .unwrap_or_else(|_| panic!("the flood did not notice"))
        .unwrap_or_else(|e| panic!("{e}"));
    while let Ok(ack) = acked_rx.try_recv() {
        acked.push(ack);
    }

    server.restart();
    let stored: HashMap<u64, Vec<u8>> = log(&server, "r").await.into_iter().collect();
    for (seq, event) in &acked {
        assert_eq!(
            stored.get(seq),
            Some(event),
            "acked seq {seq} lost or changed"
        );
    }
    // The same sequencer continues above everything stored: no seq reused.
    let last = stored.keys().max().copied().unwrap_or(0);
    assert!(last >= acked.len() as u64);
    let next = commit_when_back(&node, publish("r", "ann", "{}", Some("\"after\""))).await;
    assert_eq!(next, last + 1);
}

/// Commits one job until Redis answers (the job carries an id, so a try
/// that timed out after writing is not written twice); its seq.
async fn commit_when_back(node: &RedisSequencer, job: Job) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        match node.commit(std::slice::from_ref(&job)).await.remove(0) {
            Outcome::New { seq, .. } | Outcome::Duplicate { seq } => return seq,
            Outcome::Failed(StoreError::Unavailable(_)) if Instant::now() < deadline => {}
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_promptly_while_redis_is_down_then_back_by_itself() {
    let mut server = RedisServer::start();
    let node = node(&server, 100).await;
    assert_eq!(
        new(&node.commit(&[publish("r", "ann", "1", None)]).await[0]).0,
        1
    );
    server.kill();
    for _ in 0..2 {
        let started = Instant::now();
        let outcomes = node
            .commit(&[
                publish("r", "ann", "2", Some("\"x\"")),
                publish("r", "bob", "3", None),
            ])
            .await;
        let took = started.elapsed();
        assert_eq!(outcomes.len(), 2);
        for outcome in &outcomes {
            assert!(
                matches!(outcome, Outcome::Failed(StoreError::Unavailable(_))),
                "{outcome:?}"
            );
        }
        // The timeout (500 ms) bounds it, with room for a loaded machine.
        assert!(took < TIMEOUT * 4, "took {took:?}");
    }
    server.restart();
    let seq = commit_when_back(&node, publish("r", "ann", "2", Some("\"x\""))).await;
    assert_eq!(seq, 2, "continues where it was, nothing written while down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_room_fails_alone_and_lost_functions_are_reloaded() {
    let server = RedisServer::start();
    let node = node(&server, 100).await;
    let _: () = query(
        &server,
        redis::cmd("SET").arg(keys::room_meta("bad")).arg("x"),
    )
    .await;
    // A log ahead of its counter (the counter lost): refused, not reused.
    let _: String = query(
        &server,
        redis::cmd("XADD")
            .arg(keys::room_log("behind"))
            .arg("5-0")
            .arg("e")
            .arg("{}"),
    )
    .await;
    let outcomes = node
        .commit(&[
            publish("bad", "ann", "1", None),
            publish("good", "ann", "1", None),
            publish("behind", "ann", "1", None),
        ])
        .await;
    assert!(
        matches!(outcomes[0], Outcome::Failed(StoreError::Corrupt(_))),
        "{outcomes:?}"
    );
    assert_eq!(new(&outcomes[1]).0, 1);
    assert!(
        matches!(outcomes[2], Outcome::Failed(StoreError::Corrupt(_))),
        "{outcomes:?}"
    );
    let seq: Option<u64> = query(
        &server,
        redis::cmd("HGET").arg(keys::room_meta("behind")).arg("seq"),
    )
    .await;
    assert_eq!(seq, None, "a refused publish writes nothing");

    // Redis restarted empty (or flushed): the library is loaded again.
    let _: () = query(&server, redis::cmd("FUNCTION").arg("FLUSH")).await;
    let outcomes = node.commit(&[publish("good", "ann", "2", None)]).await;
    assert_eq!(new(&outcomes[0]).0, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_report_follows_the_redis_settings() {
    let durable = RedisServer::start();
    let report = check_durability(&mut node(&durable, 10).await.connection())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.holds(), "{}", report.message());
    assert_eq!(report.appendfsync, "always");
    assert_eq!(report.maxmemory_policy, "noeviction");

    let relaxed = RedisServer::start_with(&["--appendfsync", "everysec"]);
    let report = check_durability(&mut node(&relaxed, 10).await.connection())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!report.holds());
    assert_eq!(report.appendfsync, "everysec");
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.message().contains("appendfsync is \"everysec\""),
        "{}",
        report.message()
    );
}
