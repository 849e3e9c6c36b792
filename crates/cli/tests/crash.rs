//! Crash test: publishers under load, `kill -9` at a random moment, restart
//! on the same data directory. Every acknowledged message must be in
//! history with its seq, seqs must be gapless, resends with the same ids
//! must not duplicate anything, and resumed subscribers must see every
//! message exactly once.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{temp_dir, Client, Server};
use serde_json::{json, Value};

const PUBLISHERS: usize = 4;

/// One publisher: sends continuously with its own ids, remembering what was
/// acknowledged and what is still in flight.
async fn publish_until_killed(mut c: Client, who: usize) -> (BTreeMap<String, u64>, Vec<String>) {
    let mut acked = BTreeMap::new();
    let mut in_flight: Vec<String> = Vec::new();
    let mut n = 0u64;
    loop {
        // Keep a few in flight so batches form.
        while in_flight.len() < 8 {
            n += 1;
            let id = format!("p{who}-{n}");
            let sent = c
                .ws_send(json!({"type": "publish", "room": "crash", "body": id, "id": id}))
                .await;
            if !sent {
                return (acked, in_flight);
            }
            in_flight.push(id);
        }
        match c.try_recv().await {
            Some(e) if e["type"] == "ack" => {
                let id = e["id"].as_str().unwrap().to_string();
                in_flight.retain(|i| *i != id);
                acked.insert(id, e["seq"].as_u64().unwrap());
            }
            // Other publishers' messages and presence: not ours to check here.
            Some(e) if e["type"] == "message" || e["type"] == "presence" => {}
            Some(e) => panic!("unexpected {e}"),
            None => return (acked, in_flight),
        }
    }
}

#[tokio::test]
async fn kill_9_under_load_loses_nothing_acknowledged() {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let delay = Duration::from_millis(150 + u64::from(nanos % 600));
    eprintln!("crash test: kill -9 after {delay:?}");

    let dir = temp_dir();
    // Retention far above what the test publishes: history must hold it all.
    let args = ["--rate-limit", "0", "--retention-count", "10000000"];
    let server = Server::start_in(&dir, "127.0.0.1:0", &args, &[]);
    let addr = server.addr;
    // Two subscribers that will resume after the crash.
    let mut subscribers = Vec::new();
    for i in 0..2 {
        let mut s = server.connect(&format!("sub{i}")).await;
        s.join("crash").await;
        subscribers.push(s);
    }
    let mut tasks = Vec::new();
    for who in 0..PUBLISHERS {
        let mut c = server.connect(&format!("pub{who}")).await;
        c.join("crash").await;
        tasks.push(tokio::spawn(publish_until_killed(c, who)));
    }
    // Subscribers read live until the crash, remembering the last seq.
    let mut readers = Vec::new();
    for mut s in subscribers {
        readers.push(tokio::spawn(async move {
            let mut last = 0u64;
            while let Some(e) = s.try_recv().await {
                if e["type"] == "message" {
                    assert_eq!(e["seq"].as_u64().unwrap(), last + 1, "live gap");
                    last += 1;
                }
            }
            last
        }));
    }
    tokio::time::sleep(delay).await;
    let dir = server.kill();

    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut unacked: Vec<(usize, String)> = Vec::new();
    for (who, task) in tasks.into_iter().enumerate() {
        let (a, f) = task.await.unwrap();
        acked.extend(a);
        unacked.extend(f.into_iter().map(|id| (who, id)));
    }
    let mut last_seen = Vec::new();
    for r in readers {
        last_seen.push(r.await.unwrap());
    }
    assert!(
        !acked.is_empty(),
        "nothing was acknowledged before the crash"
    );

    // Restart on the same address and data.
    let server = Server::start_in(&dir, &addr.to_string(), &args, &[]);
    // Publishers resend what they never saw acknowledged, with the same ids.
    let mut resent: HashMap<String, (u64, bool)> = HashMap::new();
    for who in 0..PUBLISHERS {
        let mut c = server.connect(&format!("pub{who}")).await;
        c.join("crash").await;
        for (_, id) in unacked.iter().filter(|(w, _)| *w == who) {
            c.send(json!({"type": "publish", "room": "crash", "body": id, "id": id}))
                .await;
            let ack = loop {
                let e = c.recv().await;
                match e["type"].as_str() {
                    Some("ack") if e["id"] == json!(id) => break e,
                    Some("presence" | "message") => {}
                    _ => panic!("unexpected {e}"),
                }
            };
            resent.insert(
                id.clone(),
                (ack["seq"].as_u64().unwrap(), ack["duplicate"] == true),
            );
        }
    }

    // History: every acked message with its seq; seqs gapless; each body once.
    let mut reader = server.connect("auditor").await;
    let mut all: Vec<Value> = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut q = json!({"type": "history", "room": "crash", "limit": 100});
        if let Some(b) = before {
            q["before"] = json!(b);
        }
        let page = reader.request(q).await["messages"]
            .as_array()
            .unwrap()
            .clone();
        if page.is_empty() {
            break;
        }
        before = page[0]["seq"].as_u64();
        let mut page = page;
        page.extend(all);
        all = page;
        if before == Some(1) {
            break;
        }
    }
    let seqs: Vec<u64> = all.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    let max = *seqs.last().unwrap();
    if let Some((i, s)) = seqs.iter().enumerate().find(|(i, s)| **s != *i as u64 + 1) {
        panic!(
            "history is not gapless from 1: position {i} holds seq {s} (of {} messages)",
            seqs.len()
        );
    }
    let mut by_body: HashMap<String, u64> = HashMap::new();
    for m in &all {
        let body = m["body"].as_str().unwrap().to_string();
        assert!(
            by_body
                .insert(body.clone(), m["seq"].as_u64().unwrap())
                .is_none(),
            "{body} stored twice"
        );
    }
    for (id, seq) in &acked {
        assert_eq!(
            by_body.get(id),
            Some(seq),
            "acknowledged {id} (seq {seq}) missing or moved"
        );
    }
    for (id, (seq, _)) in &resent {
        assert_eq!(
            by_body.get(id),
            Some(seq),
            "resent {id} not stored at its acked seq"
        );
    }
    eprintln!(
        "crash test: {} acked before the kill, {} resent ({} were already stored), {} messages in history",
        acked.len(),
        resent.len(),
        resent.values().filter(|(_, dup)| *dup).count(),
        max
    );

    // Subscribers resume from what they saw: everything after, exactly once.
    for (i, since) in last_seen.into_iter().enumerate() {
        let mut s = Client::connect(&server.url(&format!("/ws?user=sub{i}"))).await;
        s.expect("welcome").await;
        s.send(json!({"type": "join", "room": "crash", "since": since}))
            .await;
        s.expect("joined").await;
        for seq in since + 1..=max {
            let m = s.expect("message").await;
            assert_eq!(m["seq"], seq, "resumed subscriber {i} from {since}");
        }
        s.expect_nothing_pending().await;
    }
}
