//! Cluster mode: several real `switchboard serve --redis` processes on one
//! real `redis-server` (started here on a free port with its own AOF), as
//! one server. Clients connect to any node; rooms, directs, presence,
//! dedupe and resume work across nodes, and failures (a node or Redis
//! killed with SIGKILL, the pub/sub connection killed) lose nothing that
//! was acknowledged.

mod common;
#[path = "../../server/tests/redis_server/mod.rs"]
mod redis_server;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{Client, Server};
use redis_server::RedisServer;

/// The lease the node-kill test sets (`--node-lease`), and the documented
/// bound on a dead node's presence that follows from it (docs/OPERATIONS.md:
/// the lease + a fifth of it), plus what a loaded test machine adds.
const LEASE: &str = "2s";
const GHOST_BOUND: Duration = Duration::from_millis(2400);
const GHOST_SLACK: Duration = Duration::from_secs(4);

/// Nodes first: they are dropped (killed) before Redis.
struct Cluster {
    nodes: Vec<Server>,
    redis: RedisServer,
}

impl Cluster {
    fn start(n: usize) -> Cluster {
        let redis = RedisServer::start();
        let nodes = (0..n).map(|_| node(&redis, &[])).collect();
        Cluster { nodes, redis }
    }
}

fn node(redis: &RedisServer, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--redis", url.as_str()];
    args.extend_from_slice(extra);
    Server::start_with(&args)
}

/// The next event of `kind`, skipping presence traffic (which depends on
/// timing this test does not control).
async fn next(client: &mut Client, kind: &str) -> Value {
    loop {
        let event = client.recv().await;
        if event["type"] == kind {
            return event;
        }
        assert_eq!(event["type"], "presence", "expected {kind}, got {event}");
    }
}

/// Waits until `client` is told that `user` joined (or left, `joined`
/// false) `room`: a `presence` change or a batched delta.
async fn presence_change(client: &mut Client, room: &str, user: &str, joined: bool) -> Value {
    loop {
        let event = client.recv().await;
        if event["room"] != room {
            continue;
        }
        if event["type"] != "presence" {
            continue;
        }
        // A change, or a batched delta of a big room.
        let change =
            event["user"] == user && event["event"] == if joined { "join" } else { "leave" };
        let list = if joined {
            &event["joined"]
        } else {
            &event["left"]
        };
        let batched = list.as_array().is_some_and(|l| l.iter().any(|u| u == user));
        let hit = change || batched;
        if hit {
            return event;
        }
    }
}

async fn presence_list(client: &mut Client, room: &str) -> Vec<String> {
    let id = client
        .command(json!({"type": "presence", "room": room}))
        .await;
    loop {
        let event = client.recv().await;
        if event["id"] == id {
            assert_eq!(event["type"], "presence", "{event}");
            let mut users: Vec<String> = event["users"]
                .as_array()
                .unwrap_or_else(|| panic!("no users in {event}"))
                .iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect();
            users.sort();
            return users;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spans_three_nodes_with_one_presence() {
    let cluster = Cluster::start(3);
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    let mut ann = a.connect("ann").await;
    let mut bob = b.connect("bob").await;
    let mut cat = c.connect("cat").await;
    ann.join("lobby").await;
    let joined = bob.join("lobby").await;
    presence_change(&mut ann, "lobby", "bob", true).await;
    assert!(joined["online"].as_u64() >= Some(2), "{joined}");
    cat.join("lobby").await;
    presence_change(&mut ann, "lobby", "cat", true).await;
    presence_change(&mut bob, "lobby", "cat", true).await;
    assert_eq!(
        presence_list(&mut cat, "lobby").await,
        ["ann", "bob", "cat"]
    );

    let ack = ann.publish("lobby", json!({"text": "hi"})).await;
    assert_eq!(ack["seq"], 1, "{ack}");
    // Counted on every node: bob's and cat's connections.
    assert_eq!(ack["delivered"], 2, "{ack}");
    for client in [&mut bob, &mut cat] {
        let m = next(client, "message").await;
        assert_eq!(
            (m["seq"].clone(), m["from"].clone()),
            (json!(1), json!("ann"))
        );
        assert_eq!(m["body"], json!({"text": "hi"}));
    }
    // A node hears only the rooms it has members in: the lobby's channel
    // has one subscriber per node here, a room nobody joined has none.
    let mut redis = cluster
        .redis
        .client()
        .get_connection()
        .unwrap_or_else(|e| panic!("redis: {e}"));
    let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg("sb:{r:lobby}:ch")
        .arg("sb:{r:elsewhere}:ch")
        .query(&mut redis)
        .unwrap_or_else(|e| panic!("PUBSUB NUMSUB: {e}"));
    assert_eq!(counts[0].1, 3, "{counts:?}");
    assert_eq!(counts[1].1, 0, "{counts:?}");
    // The sender got the ack instead of the message.
    let ack = bob.publish("lobby", json!("two")).await;
    assert_eq!(ack["seq"], 2);
    assert_eq!(next(&mut ann, "message").await["seq"], 2);
    assert_eq!(next(&mut cat, "message").await["seq"], 2);
    ann.expect_nothing_pending().await;
    bob.expect_nothing_pending().await;

    // A second device of a user on another node is not a second user.
    let mut ann2 = c.connect("ann").await;
    ann2.join("lobby").await;
    // `joined` answers before the join reaches Redis: wait until both nodes
    // count ann there, or ann's leave from node a could come first and be
    // announced (then ann2's join after it), a real leave and join.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let nodes: Option<u64> = redis::cmd("HGET")
            .arg("sb:{r:lobby}:users")
            .arg("ann")
            .query(&mut redis)
            .unwrap_or_else(|e| panic!("HGET: {e}"));
        if nodes == Some(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ann2's join never reached Redis: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(ann);
    let mut seen = presence_list(&mut bob, "lobby").await;
    seen.dedup();
    assert_eq!(seen, ["ann", "bob", "cat"]);
    // Leaving from every node is one leave.
    drop(ann2);
    presence_change(&mut bob, "lobby", "ann", false).await;
    assert_eq!(presence_list(&mut bob, "lobby").await, ["bob", "cat"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directs_reach_every_device_on_every_node_and_wait_offline() {
    let cluster = Cluster::start(3);
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    let mut ann = a.connect("ann").await;
    let mut ann_tablet = c.connect("ann").await;
    let mut bob_phone = b.connect("bob").await;
    let mut bob_pc = c.connect("bob").await;
    // The nodes report their connections as they come; an ack counts what
    // was reported when it was written.
    wait_for_conns(&cluster.redis, "sb:{u:bob}:conns", 2).await;
    let reply = ann
        .request(json!({"type": "send", "to": "bob", "body": {"text": "yo"}}))
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    assert_eq!(reply["seq"], 1, "{reply}");
    assert_eq!(
        reply["delivered"], 2,
        "both devices, on two other nodes: {reply}"
    );
    for device in [&mut bob_phone, &mut bob_pc] {
        let d = next(device, "direct").await;
        assert_eq!(
            (d["from"].clone(), d["seq"].clone()),
            (json!("ann"), json!(1))
        );
    }
    // The sender's other device gets its copy, from its own node.
    let copy = next(&mut ann_tablet, "direct").await;
    assert_eq!(copy["to"], "bob");
    ann.expect_nothing_pending().await;

    // Offline: written through A, read through B.
    let reply = ann
        .request(json!({"type": "send", "to": "dave", "body": "later"}))
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    let mut dave = b.connect("dave").await;
    let d = next(&mut dave, "direct").await;
    assert_eq!(
        (d["body"].clone(), d["seq"].clone()),
        (json!("later"), json!(1))
    );
    // Confirmed on B, it is not replayed on C.
    dave.send(json!({"type": "received", "upto": 1})).await;
    dave.expect_nothing_pending().await;
    drop(dave);
    let mut dave = Client::connect(&c.url("/ws?user=dave")).await;
    next(&mut dave, "welcome").await;
    dave.expect_nothing_pending().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_id_is_deduplicated_on_another_node() {
    let cluster = Cluster::start(2);
    let [a, b] = &cluster.nodes[..] else {
        unreachable!()
    };
    let mut watcher = b.connect("watcher").await;
    watcher.join("room").await;
    let mut first = a.connect("ann").await;
    first.join("room").await;
    let publish = json!({"type": "publish", "room": "room", "id": "m-1", "body": 1});
    let ack = first.request(publish.clone()).await;
    assert_eq!(ack["seq"], 1, "{ack}");
    // B has delivered seq 1 to its members once the watcher has it. A join
    // on B before that would receive it live (correctly) ahead of the
    // resend's ack, which `request` below takes as the next event.
    assert_eq!(next(&mut watcher, "message").await["seq"], 1);
    // The same client, failed over to B, resends.
    let mut again = b.connect("ann").await;
    again.join("room").await;
    let dup = again.request(publish).await;
    assert_eq!(dup["type"], "ack", "{dup}");
    assert_eq!(
        (dup["seq"].clone(), dup["duplicate"].clone()),
        (json!(1), json!(true))
    );
    let later = first.publish("room", json!(2)).await;
    assert_eq!(later["seq"], 2);
    // Exactly once: the next message the watcher sees is seq 2.
    assert_eq!(next(&mut watcher, "message").await["seq"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_on_three_nodes_give_one_gapless_order() {
    const EACH: u64 = 150;
    let cluster = Cluster::start(3);
    let mut subscribers = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let mut s = node.connect(&format!("sub{i}")).await;
        s.join("race").await;
        subscribers.push(s);
    }
    let mut publishers = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let mut p = node.connect(&format!("pub{i}")).await;
        p.join("race").await;
        publishers.push(p);
    }
    let tasks: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(i, mut p)| {
            tokio::spawn(async move {
                // Pipelined: every publish goes out before any ack is read.
                for n in 0..EACH {
                    p.send(json!({"type": "publish", "room": "race", "id": format!("{i}-{n}"), "body": [i, n]}))
                        .await;
                }
                // The publishers are members too: skip what they receive.
                let mut acked = 0;
                while acked < EACH {
                    let event = p.recv().await;
                    match event["type"].as_str() {
                        Some("ack") => acked += 1,
                        Some("message" | "presence") => {}
                        _ => panic!("publisher {i} got {event}"),
                    }
                }
                p
            })
        })
        .collect();
    let mut orders = Vec::new();
    for s in subscribers.iter_mut() {
        let mut order = Vec::new();
        while (order.len() as u64) < 3 * EACH {
            let m = next(s, "message").await;
            order.push((m["seq"].as_u64().unwrap_or(0), m["body"].clone()));
        }
        orders.push(order);
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("publisher: {e}"));
    }
    let seqs: Vec<u64> = orders[0].iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=3 * EACH).collect::<Vec<_>>(), "gapless from 1");
    assert_eq!(orders[0], orders[1], "node 0 and 1 agree");
    assert_eq!(orders[0], orders[2], "node 0 and 2 agree");
    // Each publisher's own messages are in the order it sent them.
    for i in 0..3u64 {
        let mine: Vec<u64> = orders[0]
            .iter()
            .filter(|(_, b)| b[0] == i)
            .filter_map(|(_, b)| b[1].as_u64())
            .collect();
        assert_eq!(mine, (0..EACH).collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_nothing_and_its_users_leave_within_the_bound() {
    let redis = RedisServer::start();
    // A lease must be at least twice the Redis timeout.
    let short = ["--node-lease", LEASE, "--redis-timeout", "1s"];
    let survivor = node(&redis, &short);
    let doomed = node(&redis, &short);
    let mut bob = survivor.connect("bob").await;
    bob.join("ops").await;
    let mut ann = doomed.connect("ann").await;
    ann.join("ops").await;
    presence_change(&mut bob, "ops", "ann", true).await;
    let mut last_seen = 0;
    for n in 0..20 {
        bob.publish("ops", json!(n)).await;
        last_seen = next(&mut ann, "message").await["seq"].as_u64().unwrap_or(0);
    }
    let killed = Instant::now();
    doomed.kill();
    // Published while ann is away: she must get all of it on resume.
    for n in 20..40 {
        bob.publish("ops", json!(n)).await;
    }
    presence_change(&mut bob, "ops", "ann", false).await;
    let ghost = killed.elapsed();
    assert!(
        ghost <= GHOST_BOUND + GHOST_SLACK,
        "the dead node's user left after {ghost:?}"
    );
    eprintln!("ghost presence lasted {ghost:?} (bound {GHOST_BOUND:?})");

    let mut ann = survivor.connect("ann").await;
    let joined = ann
        .request(json!({"type": "join", "room": "ops", "since": last_seen}))
        .await;
    assert_eq!(joined["type"], "joined", "{joined}");
    let mut got = Vec::new();
    while got.len() < 20 {
        got.push(next(&mut ann, "message").await["seq"].as_u64().unwrap_or(0));
    }
    assert_eq!(got, (21..=40).collect::<Vec<_>>(), "0 lost, 0 duplicated");
    ann.expect_nothing_pending().await;
}

/// Polls (with a deadline) until the connection counts in `key` (a
/// `…:conns` hash, node → count) add up to `n`.
async fn wait_for_conns(redis: &RedisServer, key: &str, n: u64) {
    let mut conn = redis
        .client()
        .get_connection()
        .unwrap_or_else(|e| panic!("redis: {e}"));
    let deadline = Instant::now() + common::TIMEOUT;
    loop {
        let counts: Vec<u64> = redis::cmd("HVALS")
            .arg(key)
            .query(&mut conn)
            .unwrap_or_else(|e| panic!("HVALS: {e}"));
        if counts.iter().sum::<u64>() == n {
            return;
        }
        assert!(Instant::now() < deadline, "{key}: {counts:?}, want {n}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls (with a deadline) until Redis has `n` pub/sub clients.
async fn wait_for_pubsub_clients(redis: &mut redis::Connection, n: usize) {
    let deadline = Instant::now() + common::TIMEOUT;
    loop {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query(redis)
            .unwrap_or_else(|e| panic!("CLIENT LIST: {e}"));
        if list.lines().count() >= n {
            return;
        }
        assert!(Instant::now() < deadline, "pub/sub clients: {list}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `/readyz` (with a deadline) until it answers 200.
async fn wait_ready(node: &Server) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = node.http_get("/readyz").await;
        if status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "not ready: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pubsub_connection_loses_no_message() {
    let cluster = Cluster::start(2);
    let [a, b] = &cluster.nodes[..] else {
        unreachable!()
    };
    let mut listener = b.connect("listener").await;
    listener.join("flow").await;
    let mut talker = a.connect("talker").await;
    talker.join("flow").await;
    let mut redis = cluster
        .redis
        .client()
        .get_connection()
        .unwrap_or_else(|e| panic!("redis: {e}"));
    for n in 1..=200u64 {
        talker
            .send(json!({"type": "publish", "room": "flow", "body": n}))
            .await;
        if n % 50 == 0 {
            // Both nodes' pub/sub connections are there (again) first.
            wait_for_pubsub_clients(&mut redis, 2).await;
            let killed: u64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .query(&mut redis)
                .unwrap_or_else(|e| panic!("CLIENT KILL: {e}"));
            assert!(killed >= 1, "no pub/sub connection to kill");
        }
    }
    let mut seqs = Vec::new();
    while seqs.len() < 200 {
        seqs.push(
            next(&mut listener, "message").await["seq"]
                .as_u64()
                .unwrap_or(0),
        );
    }
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_keeps_every_ack_and_the_nodes_recover() {
    let mut cluster = Cluster::start(2);
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut talker = a.connect("talker").await;
    talker.join("log").await;
    let mut reader = b.connect("reader").await;
    reader.join("log").await;
    // Pipelined publishes with ids, half before the kill.
    for n in 0..100u64 {
        talker
            .send(json!({"type": "publish", "room": "log", "id": format!("k{n}"), "body": n}))
            .await;
    }
    cluster.redis.kill();
    let mut acked: Vec<(u64, u64)> = Vec::new();
    let mut unavailable = 0;
    while acked.len() + unavailable < 100 {
        let reply = talker.recv().await;
        match reply["type"].as_str() {
            Some("ack") => {
                let n: u64 = reply["id"].as_str().unwrap_or("k0")[1..]
                    .parse()
                    .unwrap_or(0);
                acked.push((n, reply["seq"].as_u64().unwrap_or(0)));
            }
            Some("error") => {
                assert_eq!(reply["code"], "unavailable", "{reply}");
                unavailable += 1;
            }
            _ => {}
        }
    }
    // While Redis is down: not ready, connections stay open.
    let (status, _) = a.http_get("/readyz").await;
    assert_eq!(status, 503);
    cluster.redis.restart();
    // Resend everything with the same ids: the acked ones are duplicates
    // with their original seq, the rest get new seqs; no seq is reused.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seqs = std::collections::BTreeMap::new();
    for n in 0..100u64 {
        loop {
            let id = talker
                .command(
                    json!({"type": "publish", "room": "log", "id": format!("k{n}"), "body": n}),
                )
                .await;
            let reply = loop {
                let event = talker.recv().await;
                if event["id"] == id {
                    break event;
                }
                // An announcement lost with Redis is filled from the store
                // once it is back, and a fill names no sender: the talker
                // may get its own earlier message. And the reader's
                // presence: `joined` answers before the join reaches
                // Redis, which was killed right after, so its announcement
                // may come only now (seen once); a node that could not
                // renew its lease for 5 s would also be reaped and resync
                // (a leave, then a join: OPERATIONS.md, "What each
                // failure does"). Nothing else.
                assert!(
                    event["type"] == "message"
                        || (event["type"] == "presence" && event["user"] == "reader"),
                    "{event}"
                );
                assert_eq!(event["room"], "log", "{event}");
            };
            if reply["type"] == "ack" {
                let seq = reply["seq"].as_u64().unwrap_or(0);
                if let Some(&(_, before)) = acked.iter().find(|(m, _)| *m == n) {
                    assert_eq!(seq, before, "an acked id kept its seq");
                }
                assert!(seqs.insert(seq, n).is_none(), "seq {seq} given twice");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the node did not recover: {reply}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(seqs.len(), 100);
    // History holds every message once, with its seq.
    let history = talker
        .request(json!({"type": "history", "room": "log", "limit": 100}))
        .await;
    let held: HashSet<u64> = history["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{history}"))
        .iter()
        .filter_map(|m| m["seq"].as_u64())
        .collect();
    for seq in seqs.keys() {
        assert!(held.contains(seq), "seq {seq} missing from history");
    }
    // Both nodes find their way back by themselves.
    wait_ready(a).await;
    wait_ready(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_disconnects_a_user_on_every_node() {
    let redis = RedisServer::start();
    let a = node(&redis, &["--api-key", "k"]);
    let b = node(&redis, &["--api-key", "k"]);
    let mut on_b = b.connect("eve").await;
    on_b.join("hall").await;
    on_b.publish("hall", json!("hello")).await;
    // A node with nobody in the room still answers for the cluster, once
    // eve's join has reached Redis (`joined` answers before it does).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = a
            .http("GET", "/api/rooms/hall/presence", Some("k"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        let presence: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        if presence["users"] == json!(["eve"]) {
            break;
        }
        assert_eq!(presence["users"], json!([]), "{body}");
        assert!(
            Instant::now() < deadline,
            "eve never showed on node a: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = a.http("GET", "/api/rooms", Some("k"), None).await;
    assert_eq!(status, 200, "{body}");
    let rooms: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(
        rooms["rooms"],
        json!([{"room": "hall", "seq": 1, "online": 1}]),
        "{body}"
    );
    let (status, body) = a
        .http("DELETE", "/api/users/eve/connections", Some("k"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(on_b.expect_end().await, common::Ended::Close(4003));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messenger_features_work_across_nodes() {
    let redis = RedisServer::start();
    let a = node(&redis, &["--api-key", "k"]);
    let b = node(&redis, &["--api-key", "k"]);
    let mut ann = a.connect("ann").await;
    let mut bob = b.connect("bob").await;
    ann.join("team").await;
    bob.join("team").await;
    presence_change(&mut ann, "team", "bob", true).await;

    // Edit and recall in a room, judged wherever the message was written.
    let ack = ann.publish("team", json!("draft")).await;
    let seq = ack["seq"].clone();
    assert_eq!(next(&mut bob, "message").await["body"], "draft");
    let edited = bob
        .request(json!({"type": "edit", "room": "team", "target": seq, "body": "mine?"}))
        .await;
    assert_eq!(
        (edited["type"].clone(), edited["code"].clone()),
        (json!("error"), json!("forbidden"))
    );
    let edited = ann
        .request(json!({"type": "edit", "room": "team", "target": seq, "body": "final"}))
        .await;
    assert_eq!(edited["type"], "ack", "{edited}");
    let edit = next(&mut bob, "edit").await;
    assert_eq!(
        (edit["target"].clone(), edit["body"].clone()),
        (seq.clone(), json!("final"))
    );
    let page = bob
        .request(json!({"type": "history", "room": "team", "limit": 10}))
        .await;
    assert_eq!(page["messages"][0]["body"], "final", "{page}");

    // A direct, its read receipt back to the sender on the other node,
    // and the reader's position in the conversation list.
    let sent = ann
        .request(json!({"type": "send", "to": "bob", "body": "lunch?"}))
        .await;
    assert_eq!(sent["type"], "ack", "{sent}");
    let direct = next(&mut bob, "direct").await;
    bob.send(json!({"type": "read", "from": "ann", "upto": direct["seq"]}))
        .await;
    let receipt = next(&mut ann, "read").await;
    assert_eq!(
        (receipt["by"].clone(), receipt["upto"].clone()),
        (json!("bob"), direct["seq"].clone())
    );
    let list = bob.request(json!({"type": "conversations"})).await;
    let with_ann = list["conversations"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["with"] == "ann").cloned())
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(with_ann["unread"], 0, "{list}");

    // Typing reaches the other node, and is not stored.
    ann.send(json!({"type": "signal", "room": "team", "body": {"typing": true}}))
        .await;
    let typing = next(&mut bob, "signal").await;
    assert_eq!(typing["from"], "ann");

    // The HTTP API of either node sees the same room.
    let (status, body) = b
        .http("GET", "/api/rooms/team/messages?limit=10", Some("k"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("final"), "{body}");
    let (status, body) = a
        .http(
            "POST",
            "/api/rooms/team/messages",
            Some("k"),
            Some(r#"{"body":"from the backend"}"#),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(next(&mut bob, "message").await["body"], "from the backend");
    assert_eq!(next(&mut ann, "message").await["body"], "from the backend");

    // Resume on the other node: `join` with `since` replays what was missed.
    let last = ann.publish("team", json!("one more")).await["seq"].clone();
    drop(ann);
    let mut ann = b.connect("ann").await;
    let id = ann
        .command(json!({"type": "join", "room": "team", "since": 1}))
        .await;
    // Her inbox replay (bob's read receipt, never confirmed) may come
    // first.
    let joined = loop {
        let event = ann.recv().await;
        if event["id"] == id {
            break event;
        }
        assert_eq!(event["type"], "read", "{event}");
    };
    assert_eq!(joined["seq"], last, "{joined}");
    let mut replayed = Vec::new();
    loop {
        let event = ann.recv().await;
        if event["type"] == "message" || event["type"] == "edit" {
            replayed.push(event["seq"].as_u64().unwrap_or(0));
            if event["seq"] == last {
                break;
            }
        }
    }
    let expect: Vec<u64> = (2..=last.as_u64().unwrap_or(0)).collect();
    assert_eq!(replayed, expect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_rooms_start_at_one_even_within_one_batch() {
    let cluster = Cluster::start(1);
    let mut ann = cluster.nodes[0].connect("ann").await;
    for n in 0..40 {
        ann.join(&format!("fresh{n}")).await;
    }
    // Pipelined: the writer takes many of them in one batch.
    for n in 0..40 {
        ann.send(json!({"type": "publish", "room": format!("fresh{n}"), "body": n}))
            .await;
        ann.send(json!({"type": "send", "to": format!("new{n}"), "body": n}))
            .await;
    }
    for _ in 0..80 {
        let reply = ann.recv().await;
        assert_eq!(reply["type"], "ack", "{reply}");
        assert_eq!(reply["seq"], 1, "every room and inbox starts at 1: {reply}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_data_gets_no_write_rather_than_reused_seqs() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let mut ann = node.connect("ann").await;
    ann.join("log").await;
    assert_eq!(ann.publish("log", json!(1)).await["seq"], 1);
    assert_eq!(ann.publish("log", json!(2)).await["seq"], 2);
    let mut redis = cluster
        .redis
        .client()
        .get_connection()
        .unwrap_or_else(|e| panic!("redis: {e}"));
    // What a Redis restarted without its data looks like.
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut redis)
        .unwrap_or_else(|e| panic!("FLUSHALL: {e}"));
    let reply = ann
        .request(json!({"type": "publish", "room": "log", "body": 3}))
        .await;
    assert_eq!(
        reply["type"], "error",
        "seq 1 again would be a lie: {reply}"
    );
    assert_eq!(reply["code"], "unavailable", "{reply}");
    let (status, body) = node.http_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
}

/// A TCP proxy in front of Redis whose open connections can be frozen:
/// bytes stop flowing both ways while the sockets stay open, as after a
/// failover behind a NAT or a stalled network path. Connections made after
/// a freeze flow normally.
struct FreezingProxy {
    port: u16,
    /// Bumped by `freeze`; a connection made under an older generation
    /// stops forwarding.
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl FreezingProxy {
    async fn start(upstream: u16) -> FreezingProxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("proxy bind: {e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let generation = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let current = generation.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                let born = current.load(Ordering::SeqCst);
                let current = current.clone();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let live = move || current.load(Ordering::SeqCst) == born;
                    let live2 = live.clone();
                    let up = async move { pump(&mut cr, &mut sw, live).await };
                    let down = async move { pump(&mut sr, &mut cw, live2).await };
                    tokio::join!(up, down);
                });
            }
        });
        FreezingProxy { port, generation }
    }

    fn freeze(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies until EOF; once frozen, reads nothing more and writes nothing
/// (the socket stays open, silent).
async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    live: impl Fn() -> bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !live() {
            std::future::pending::<()>().await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !live() {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_pubsub_connection_is_found_and_nothing_is_missed() {
    let redis = RedisServer::start();
    let proxy = FreezingProxy::start(redis.port).await;
    let direct = node(&redis, &[]);
    let through = format!("redis://127.0.0.1:{}", proxy.port);
    let behind = Server::start_with(&["--redis", &through]);
    let mut listener = behind.connect("listener").await;
    listener.join("quiet").await;
    let mut talker = direct.connect("talker").await;
    talker.join("quiet").await;
    assert_eq!(talker.publish("quiet", json!(1)).await["seq"], 1);
    assert_eq!(next(&mut listener, "message").await["seq"], 1);

    // Every connection of the node behind the proxy goes silent (its
    // sockets stay open): no error tells the node anything.
    proxy.freeze();
    let frozen = Instant::now();
    for n in 2..=20 {
        talker.publish("quiet", json!(n)).await;
    }
    let mut seqs = Vec::new();
    while seqs.len() < 19 {
        seqs.push(
            next(&mut listener, "message").await["seq"]
                .as_u64()
                .unwrap_or(0),
        );
    }
    assert_eq!(seqs, (2..=20).collect::<Vec<_>>(), "in order, none missed");
    // Bound: the probe (1 s + 2 s to answer) and a reconnect.
    eprintln!(
        "silent connection found and caught up after {:?}",
        frozen.elapsed()
    );
}
