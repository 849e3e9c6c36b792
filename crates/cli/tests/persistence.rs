//! Durable messages: history, resume, offline inbox, read receipts, dedupe,
//! restarts — against the real binary on the embedded SQLite store.

mod common;

use common::{temp_dir, Client, Server};
use serde_json::{json, Value};

async fn history(c: &mut Client, query: Value) -> Vec<Value> {
    let mut q = query;
    q["type"] = json!("history");
    let reply = c.request(q).await;
    assert_eq!(reply["type"], "history", "{reply}");
    reply["messages"].as_array().unwrap().clone()
}

fn seqs(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn room_history_pages_newest_last() {
    let server = Server::start_with(&["--rate-limit", "0"]);
    let mut ann = server.connect("ann").await;
    ann.join("r").await;
    for n in 1..=30 {
        ann.publish("r", json!({"n": n})).await;
    }
    let latest = history(&mut ann, json!({"room": "r", "limit": 10})).await;
    assert_eq!(seqs(&latest), (21..=30).collect::<Vec<_>>());
    assert_eq!(latest[0]["type"], "message");
    assert_eq!(latest[0]["from"], "ann");
    assert_eq!(latest[0]["body"], json!({"n": 21}));
    let older = history(&mut ann, json!({"room": "r", "before": 21, "limit": 10})).await;
    assert_eq!(seqs(&older), (11..=20).collect::<Vec<_>>());
    let first = history(&mut ann, json!({"room": "r", "before": 3})).await;
    assert_eq!(seqs(&first), vec![1, 2]);
    // No membership needed to read history; an unknown room is empty.
    let mut bob = server.connect("bob").await;
    assert_eq!(
        history(&mut bob, json!({"room": "r", "limit": 1}))
            .await
            .len(),
        1
    );
    assert!(history(&mut bob, json!({"room": "nothing-here"}))
        .await
        .is_empty());

    // The same over HTTP with the API key.
    drop(server);
}

#[tokio::test]
async fn conversation_history_has_both_directions() {
    let server = Server::start();
    let mut ann = server.connect("ann").await;
    let mut bob = server.connect("bob").await;
    for i in 0..3 {
        ann.request(json!({"type": "send", "to": "bob", "body": format!("a{i}")}))
            .await;
        bob.expect("direct").await;
        bob.request(json!({"type": "send", "to": "ann", "body": format!("b{i}")}))
            .await;
        ann.expect("direct").await;
    }
    let h = history(&mut ann, json!({"with": "bob"})).await;
    let bodies: Vec<&str> = h.iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["a0", "b0", "a1", "b1", "a2", "b2"]);
    assert!(h.iter().all(|m| m["type"] == "direct"));
    let before = h[4]["gid"].as_u64().unwrap();
    let page = history(
        &mut ann,
        json!({"with": "bob", "before": before, "limit": 2}),
    )
    .await;
    let bodies: Vec<&str> = page.iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["a1", "b1"]);
    // A third user cannot read their conversation by asking about it.
    let mut cy = server.connect("cy").await;
    assert!(history(&mut cy, json!({"with": "bob"})).await.is_empty());
}

/// Acknowledged messages survive `kill -9`; seqs continue after a restart.
#[tokio::test]
async fn acked_messages_survive_kill_9_and_seqs_continue() {
    let dir = temp_dir();
    let server = Server::start_in(&dir, "127.0.0.1:0", &["--rate-limit", "0"], &[]);
    let mut ann = server.connect("ann").await;
    ann.join("r").await;
    for n in 1..=20 {
        assert_eq!(ann.publish("r", json!(n)).await["seq"], n);
    }
    let ack = ann
        .request(json!({"type": "send", "to": "bob", "body": "offline"}))
        .await;
    assert_eq!(ack["seq"], 1);
    let dir = server.kill();

    let server = Server::start_in(&dir, "127.0.0.1:0", &[], &[]);
    let mut ann = server.connect("ann").await;
    let joined = ann.join("r").await;
    assert_eq!(joined["seq"], 20);
    assert_eq!(
        seqs(&history(&mut ann, json!({"room": "r", "limit": 100})).await),
        (1..=20).collect::<Vec<_>>()
    );
    assert_eq!(ann.publish("r", json!(21)).await["seq"], 21);
    // Bob's inbox survived too.
    let mut bob = server.connect("bob").await;
    let d = bob.expect("direct").await;
    assert_eq!(
        (d["seq"].as_u64(), d["body"].as_str()),
        (Some(1), Some("offline"))
    );
    let ack = ann
        .request(json!({"type": "send", "to": "bob", "body": "again"}))
        .await;
    assert_eq!(ack["seq"], 2);
}

/// `join` with `since` replays exactly what was missed, then live.
#[tokio::test]
async fn resume_replays_the_gap_then_live() {
    let server = Server::start_with(&["--rate-limit", "0"]);
    let mut ann = server.connect("ann").await;
    ann.join("r").await;
    for n in 1..=10 {
        ann.publish("r", json!(n)).await;
    }
    let mut bob = server.connect("bob").await;
    let joined = bob
        .request(json!({"type": "join", "room": "r", "since": 4}))
        .await;
    assert_eq!(joined["type"], "joined");
    assert_eq!(joined["seq"], 10);
    for seq in 5..=10 {
        let m = bob.expect("message").await;
        assert_eq!(m["seq"], seq);
        assert_eq!(m["body"], seq);
    }
    ann.expect("presence").await;
    ann.publish("r", json!(11)).await;
    assert_eq!(bob.expect("message").await["seq"], 11);
    bob.expect_nothing_pending().await;
    // since = latest: nothing to replay.
    let mut cy = server.connect("cy").await;
    cy.request(json!({"type": "join", "room": "r", "since": 11}))
        .await;
    cy.expect_nothing_pending().await;
}

/// The race: messages keep being published while a client resumes. It must
/// see every seq after `since` exactly once, in order.
#[tokio::test]
async fn resume_during_publishing_has_no_gap_and_no_duplicate() {
    let server = Server::start_with(&["--rate-limit", "0"]);
    let mut publisher = server.connect("pub").await;
    publisher.join("race").await;
    for n in 1..=50 {
        publisher.publish("race", json!(n)).await;
    }
    let total: u64 = 400;
    let publishing = tokio::spawn(async move {
        for n in 51..=total {
            publisher
                .send(json!({"type": "publish", "room": "race", "body": n}))
                .await;
        }
        let mut acks = 0;
        while acks < total - 50 {
            let e = publisher.recv().await;
            if e["type"] == "ack" {
                acks += 1;
            }
        }
        publisher
    });
    // Several clients resume at different points while the publisher runs.
    let mut resumers = Vec::new();
    for (i, since) in [0u64, 10, 25, 49].into_iter().enumerate() {
        let mut c = server.connect(&format!("r{i}")).await;
        c.send(json!({"type": "join", "room": "race", "since": since}))
            .await;
        resumers.push((c, since));
    }
    for (c, since) in &mut resumers {
        let joined = c.expect("joined").await;
        assert!(joined["seq"].as_u64().unwrap() >= 50);
        let mut next = *since + 1;
        while next <= total {
            let e = c.recv().await;
            match e["type"].as_str() {
                Some("message") => {
                    assert_eq!(e["seq"], next, "gap or duplicate after since={since}");
                    next += 1;
                }
                Some("presence") => {}
                other => panic!("unexpected {other:?}: {e}"),
            }
        }
    }
    publishing.await.unwrap();
}

#[tokio::test]
async fn reset_when_retention_no_longer_reaches_back() {
    let server = Server::start_with(&[
        "--rate-limit",
        "0",
        "--retention-count",
        "5",
        "--replay-limit",
        "100",
    ]);
    let mut ann = server.connect("ann").await;
    ann.join("r").await;
    for n in 1..=20 {
        ann.publish("r", json!(n)).await;
    }
    // Retention by count is applied in the same commit.
    let kept = history(&mut ann, json!({"room": "r", "limit": 100})).await;
    assert_eq!(seqs(&kept), (16..=20).collect::<Vec<_>>());
    let latest = kept.last().unwrap()["seq"].as_u64().unwrap();
    let oldest = kept[0]["seq"].as_u64().unwrap();
    let mut bob = server.connect("bob").await;
    bob.request(json!({"type": "join", "room": "r", "since": 2}))
        .await;
    let reset = bob.expect("reset").await;
    assert_eq!(reset["room"], "r");
    assert_eq!(reset["seq"], oldest - 1);
    for seq in oldest..=latest {
        assert_eq!(bob.expect("message").await["seq"], seq);
    }
}

#[tokio::test]
async fn replay_limit_sends_reset_then_the_newest() {
    let server = Server::start_with(&["--rate-limit", "0", "--replay-limit", "3"]);
    let mut ann = server.connect("ann").await;
    ann.join("r").await;
    for n in 1..=10 {
        ann.publish("r", json!(n)).await;
    }
    let mut bob = server.connect("bob").await;
    bob.request(json!({"type": "join", "room": "r", "since": 0}))
        .await;
    assert_eq!(bob.expect("reset").await["seq"], 7);
    for seq in 8..=10 {
        assert_eq!(bob.expect("message").await["seq"], seq);
    }
}

/// Offline inbox, per device: each device gets what it has not confirmed.
#[tokio::test]
async fn offline_inbox_is_delivered_per_device() {
    let server = Server::start();
    let mut ann = server.connect("ann").await;
    for i in 1..=3 {
        let ack = ann
            .request(json!({"type": "send", "to": "bob", "body": i}))
            .await;
        assert_eq!(
            (ack["delivered"].as_u64(), ack["stored"].as_bool()),
            (Some(0), Some(true))
        );
    }
    // Bob's phone connects: the three in order, then live ones.
    let mut phone = Client::connect(&server.url("/ws?user=bob&device=phone")).await;
    phone.expect("welcome").await;
    for seq in 1..=3 {
        let d = phone.expect("direct").await;
        assert_eq!(
            (d["seq"].as_u64(), d["body"].as_u64(), d["from"].as_str()),
            (Some(seq), Some(seq), Some("ann"))
        );
    }
    ann.request(json!({"type": "send", "to": "bob", "body": 4}))
        .await;
    assert_eq!(phone.expect("direct").await["seq"], 4);
    phone.send(json!({"type": "received", "upto": 4})).await;
    phone.expect_nothing_pending().await;
    drop(phone);

    // The phone reconnects: nothing pending any more.
    let mut phone = Client::connect(&server.url("/ws?user=bob&device=phone")).await;
    phone.expect("welcome").await;
    phone.expect_nothing_pending().await;
    // The laptop (another device, via hello) still gets everything.
    let mut laptop = Client::connect(&server.url("/ws")).await;
    laptop
        .request(json!({"type": "hello", "user": "bob", "device": "laptop"}))
        .await;
    for seq in 1..=4 {
        assert_eq!(laptop.expect("direct").await["seq"], seq);
    }
    laptop.expect_nothing_pending().await;
}

#[tokio::test]
async fn read_receipts_reach_the_senders_connections() {
    let server = Server::start();
    let mut ann = server.connect("ann").await;
    let mut ann2 = server.connect("ann").await;
    let mut bob = server.connect("bob").await;
    ann.request(json!({"type": "send", "to": "bob", "body": "hi"}))
        .await;
    ann2.expect("direct").await; // the copy for Ann's other device
    let d = bob.expect("direct").await;
    bob.send(json!({"type": "read", "from": "ann", "upto": d["seq"]}))
        .await;
    for c in [&mut ann, &mut ann2] {
        let r = c.expect("read").await;
        // Ann's inbox held nothing: the receipt is its entry 1.
        assert_eq!(
            r,
            json!({"type": "read", "by": "bob", "from": "ann", "upto": 1, "seq": 1})
        );
    }
}

/// A repeated id is acknowledged again with the original seq and delivered
/// once — also after a restart.
#[tokio::test]
async fn repeated_ids_are_deduplicated_across_restarts() {
    let dir = temp_dir();
    let server = Server::start_in(&dir, "127.0.0.1:0", &[], &[]);
    let mut ann = server.connect("ann").await;
    let mut bob = server.connect("bob").await;
    ann.join("r").await;
    bob.join("r").await;
    ann.expect("presence").await;
    let first = ann
        .request(json!({"type": "publish", "room": "r", "body": "once", "id": "m-1"}))
        .await;
    assert_eq!(first["seq"], 1);
    assert!(first.get("duplicate").is_none());
    let again = ann
        .request(json!({"type": "publish", "room": "r", "body": "once", "id": "m-1"}))
        .await;
    assert_eq!(
        (again["seq"].as_u64(), again["duplicate"].as_bool()),
        (Some(1), Some(true))
    );
    let s1 = ann
        .request(json!({"type": "send", "to": "bob", "body": "dm", "id": 77}))
        .await;
    let s2 = ann
        .request(json!({"type": "send", "to": "bob", "body": "dm", "id": 77}))
        .await;
    assert_eq!(s1["seq"], s2["seq"]);
    assert_eq!(s2["duplicate"], true);
    assert_eq!(bob.expect("message").await["seq"], 1);
    assert_eq!(bob.expect("direct").await["seq"], 1);
    bob.expect_nothing_pending().await;
    // Another user may use the same id.
    let other = bob
        .request(json!({"type": "publish", "room": "r", "body": "mine", "id": "m-1"}))
        .await;
    assert_eq!(other["seq"], 2);
    assert!(other.get("duplicate").is_none());
    let dir = server.kill();

    let server = Server::start_in(&dir, "127.0.0.1:0", &[], &[]);
    let mut ann = server.connect("ann").await;
    ann.join("r").await;
    let after = ann
        .request(json!({"type": "publish", "room": "r", "body": "once", "id": "m-1"}))
        .await;
    assert_eq!(
        (after["seq"].as_u64(), after["duplicate"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(
        seqs(&history(&mut ann, json!({"room": "r"})).await),
        vec![1, 2]
    );
}

#[tokio::test]
async fn readyz_reports_the_store() {
    let server = Server::start();
    let (status, body) = server.http_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
}

/// Dedupe is keyed by (user, target, id): the same id for another room or
/// another recipient is a new message, stored and delivered — two devices
/// of one user that number their ids from 1 lose nothing. Also after a
/// restart (the SQLite dedupe table is keyed the same way).
#[tokio::test]
async fn the_same_id_for_another_room_or_recipient_is_a_new_message() {
    let dir = temp_dir();
    let server = Server::start_in(&dir, "127.0.0.1:0", &[], &[]);
    let mut ann = server.connect("ann").await;
    ann.join("room-a").await;
    ann.join("room-b").await;
    let a = ann
        .request(json!({"type": "publish", "room": "room-a", "body": "to a", "id": 7}))
        .await;
    let b = ann
        .request(json!({"type": "publish", "room": "room-b", "body": "to b", "id": 7}))
        .await;
    assert_eq!(
        (a["room"].as_str(), a["seq"].as_u64()),
        (Some("room-a"), Some(1))
    );
    assert_eq!(
        (b["room"].as_str(), b["seq"].as_u64()),
        (Some("room-b"), Some(1))
    );
    assert!(b.get("duplicate").is_none(), "{b}");
    let to_bob = ann
        .request(json!({"type": "send", "to": "bob", "body": "hi bob", "id": 7}))
        .await;
    let to_cy = ann
        .request(json!({"type": "send", "to": "cy", "body": "hi cy", "id": 7}))
        .await;
    assert!(to_bob.get("duplicate").is_none() && to_cy.get("duplicate").is_none());
    let dir = server.kill();

    let server = Server::start_in(&dir, "127.0.0.1:0", &[], &[]);
    let mut ann = server.connect("ann").await;
    ann.join("room-b").await;
    // Still deduplicated per target after the restart…
    let again = ann
        .request(json!({"type": "publish", "room": "room-b", "body": "to b", "id": 7}))
        .await;
    assert_eq!(again["duplicate"], true);
    // …and every message is stored where it was sent.
    let h = history(&mut ann, json!({"room": "room-b"})).await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["body"], "to b");
    let mut cy = server.connect("cy").await;
    assert_eq!(cy.expect("direct").await["body"], "hi cy"); // the offline inbox
    let h = history(&mut cy, json!({"with": "ann"})).await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["body"], "hi cy");
}
