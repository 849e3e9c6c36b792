//! Messenger features against the real binary: stored read positions and
//! receipts, the conversation list, edit and recall, ephemeral signals.

mod common;

use common::{temp_dir, Client, Server};
use serde_json::{json, Value};

async fn device(server: &Server, user: &str, device: &str) -> Client {
    let mut c = Client::connect(&server.url(&format!("/ws?user={user}&device={device}"))).await;
    c.expect("welcome").await;
    c
}

async fn conversations(c: &mut Client, query: Value) -> Value {
    let mut q = query;
    q["type"] = json!("conversations");
    let reply = c.request(q).await;
    assert_eq!(reply["type"], "conversations", "{reply}");
    reply
}

/// (key, unread, read) of each entry, in the list's order.
fn summary(list: &Value) -> Vec<(String, u64, u64)> {
    list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let key = match (c["with"].as_str(), c["room"].as_str()) {
                (Some(with), _) => format!("user:{with}"),
                (_, Some(room)) => format!("room:{room}"),
                _ => panic!("entry names nothing: {c}"),
            };
            (
                key,
                c["unread"].as_u64().unwrap(),
                c["read"].as_u64().unwrap(),
            )
        })
        .collect()
}

async fn send(c: &mut Client, to: &str, body: Value) -> Value {
    let ack = c
        .request(json!({"type": "send", "to": to, "body": body}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ack
}

#[tokio::test]
async fn a_read_is_stored_and_told_to_the_peer_and_the_readers_other_devices() {
    let server = Server::start();
    let mut ann = device(&server, "ann", "pc").await;
    let mut phone = device(&server, "bob", "phone").await;
    let mut laptop = device(&server, "bob", "laptop").await;
    send(&mut ann, "bob", json!("one")).await;
    let last = send(&mut ann, "bob", json!("two")).await;
    for d in [&mut phone, &mut laptop] {
        d.expect("direct").await;
        d.expect("direct").await;
    }
    let upto = last["seq"].as_u64().unwrap();
    phone
        .send(json!({"type": "read", "from": "ann", "upto": upto}))
        .await;
    let receipt = ann.expect("read").await;
    assert_eq!(
        receipt,
        json!({"type": "read", "by": "bob", "from": "ann", "upto": upto, "seq": 1})
    );
    assert_eq!(laptop.expect("read").await, receipt);
    phone.expect_nothing_pending().await;
    // The same position again, or one past the inbox (lowered to it),
    // moves nothing and tells nobody.
    phone
        .send(json!({"type": "read", "from": "ann", "upto": upto}))
        .await;
    phone
        .send(json!({"type": "read", "from": "ann", "upto": 999}))
        .await;
    phone.expect_nothing_pending().await;
    laptop.expect_nothing_pending().await;
    ann.expect_nothing_pending().await;
    // Stored: both of Bob's devices and Ann see the same positions.
    let list = conversations(&mut laptop, json!({})).await;
    assert_eq!(summary(&list), [("user:ann".to_string(), 0, upto)]);
    assert_eq!(list["conversations"][0]["peer_read"], 0);
    let h = ann.request(json!({"type": "history", "with": "bob"})).await;
    assert_eq!(
        (h["read"].clone(), h["peer_read"].clone()),
        (json!(0), json!(upto))
    );
}

#[tokio::test]
async fn an_offline_sender_gets_the_receipt_on_reconnect_and_only_until_confirmed() {
    let server = Server::start();
    let mut ann = device(&server, "ann", "pc").await;
    let ack = send(&mut ann, "bob", json!("are you there?")).await;
    drop(ann);
    let mut bob = device(&server, "bob", "phone").await;
    let d = bob.expect("direct").await;
    assert_eq!(d["seq"], ack["seq"]);
    bob.send(json!({"type": "read", "from": "ann", "upto": d["seq"]}))
        .await;
    bob.expect_nothing_pending().await;

    let mut ann = device(&server, "ann", "pc").await;
    let receipt = ann.expect("read").await;
    assert_eq!(
        receipt,
        json!({"type": "read", "by": "bob", "from": "ann", "upto": d["seq"], "seq": 1})
    );
    ann.expect_nothing_pending().await;
    // Not confirmed: it comes again; confirmed: never again.
    drop(ann);
    let mut ann = device(&server, "ann", "pc").await;
    assert_eq!(ann.expect("read").await, receipt);
    ann.send(json!({"type": "received", "upto": 1})).await;
    ann.expect_nothing_pending().await;
    drop(ann);
    let mut ann = device(&server, "ann", "pc").await;
    ann.expect_nothing_pending().await;
    // Another device of Ann's has its own cursor, so it gets it too.
    let mut tablet = device(&server, "ann", "tablet").await;
    assert_eq!(tablet.expect("read").await, receipt);
}

#[tokio::test]
async fn the_conversation_list_agrees_across_devices_restarts_and_the_api() {
    let dir = temp_dir();
    let args = ["--api-key", "k"];
    let server = Server::start_in(&dir, "127.0.0.1:0", &args, &[]);
    let mut ann = device(&server, "ann", "pc").await;
    let mut carol = device(&server, "carol", "pc").await;
    let mut dave = device(&server, "dave", "pc").await;
    let mut phone = device(&server, "bob", "phone").await;
    phone.join("lobby").await;
    dave.join("lobby").await;
    phone.expect("presence").await;
    for n in 0..3 {
        send(&mut ann, "bob", json!(n)).await;
        phone.expect("direct").await;
    }
    send(&mut carol, "bob", json!("hi")).await;
    phone.expect("direct").await;
    let first = dave.publish("lobby", json!("a")).await;
    phone.expect("message").await;
    dave.publish("lobby", json!("b")).await;
    phone.expect("message").await;
    phone.publish("lobby", json!("mine")).await;
    dave.expect("message").await;
    phone
        .send(json!({"type": "read", "room": "lobby", "upto": first["seq"]}))
        .await;

    let list = conversations(&mut phone, json!({})).await;
    let mut expected = vec![
        ("room:lobby".to_string(), 1, 1),
        ("user:ann".to_string(), 3, 0),
        ("user:carol".to_string(), 1, 0),
    ];
    let mut got = summary(&list);
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    // Newest last message first.
    let ts: Vec<u64> = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["last"]["ts"].as_u64().unwrap())
        .collect();
    assert!(ts.windows(2).all(|w| w[0] >= w[1]), "{list}");
    assert_eq!(list["conversations"][0]["last"]["body"], "mine");
    assert!(list.get("next").is_none());
    // Pages: two, then the rest, nothing twice.
    let page1 = conversations(&mut phone, json!({"limit": 2})).await;
    let next = page1["next"].as_str().expect("a next cursor").to_string();
    let page2 = conversations(&mut phone, json!({"limit": 2, "before": next})).await;
    assert!(page2.get("next").is_none());
    let mut paged = summary(&page1);
    paged.extend(summary(&page2));
    assert_eq!(paged, summary(&list));
    let bad = phone
        .request(json!({"type": "conversations", "before": "yesterday"}))
        .await;
    assert_eq!(bad["code"], "bad_request", "{bad}");

    // A read on the phone clears the badge on the laptop.
    let mut laptop = device(&server, "bob", "laptop").await;
    for _ in 0..4 {
        laptop.expect("direct").await;
    }
    assert_eq!(
        summary(&conversations(&mut laptop, json!({})).await),
        summary(&list)
    );
    phone
        .send(json!({"type": "read", "from": "ann", "upto": 3}))
        .await;
    let told = laptop.expect("read").await;
    assert_eq!(
        (told["by"].clone(), told["from"].clone()),
        (json!("bob"), json!("ann"))
    );
    let after = conversations(&mut laptop, json!({})).await;
    assert!(
        summary(&after).contains(&("user:ann".to_string(), 0, 3)),
        "{after}"
    );

    // After a restart, the same list, also through the API.
    drop((ann, carol, dave, phone, laptop));
    // kill -9: what was acknowledged (and read positions) is on disk.
    let dir = server.kill();
    let server = Server::start_in(&dir, "127.0.0.1:0", &args, &[]);
    let mut phone = device(&server, "bob", "phone").await;
    // The phone never confirmed its inbox with `received`: it comes again.
    for _ in 0..4 {
        phone.expect("direct").await;
    }
    let again = conversations(&mut phone, json!({})).await;
    assert_eq!(summary(&again), summary(&after));
    let (status, body) = server
        .http("GET", "/api/users/bob/conversations", Some("k"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let api: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(api["user"], "bob");
    assert_eq!(summary(&api), summary(&after));
    let (status, _) = server
        .http(
            "GET",
            "/api/users/bob/conversations?limit=0",
            Some("k"),
            None,
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn room_edits_and_recalls_are_sequenced_stored_and_replayed() {
    let server = Server::start();
    let mut ann = server.connect("ann").await;
    let mut bob = server.connect("bob").await;
    ann.join("lobby").await;
    bob.join("lobby").await;
    ann.expect("presence").await;
    ann.publish("lobby", json!({"t": "helo"})).await;
    ann.publish("lobby", json!({"t": "oops"})).await;
    bob.expect("message").await;
    bob.expect("message").await;

    let edit =
        json!({"type": "edit", "room": "lobby", "target": 1, "body": {"t": "hello"}, "id": "e1"});
    let ack = ann.request(edit.clone()).await;
    assert_eq!(
        (ack["type"].clone(), ack["seq"].clone()),
        (json!("ack"), json!(3)),
        "{ack}"
    );
    let event = bob.expect("edit").await;
    assert_eq!(event["room"], "lobby");
    assert_eq!(event["seq"], 3);
    assert_eq!(event["target"], 1);
    assert_eq!(event["from"], "ann");
    assert_eq!(event["body"], json!({"t": "hello"}));
    // A resend is the same edit, not a second one.
    let again = ann.request(edit).await;
    assert_eq!(
        (again["seq"].clone(), again["duplicate"].clone()),
        (json!(3), json!(true))
    );

    let refused = bob
        .request(json!({"type": "recall", "room": "lobby", "target": 1}))
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let ack = ann
        .request(json!({"type": "recall", "room": "lobby", "target": 2}))
        .await;
    assert_eq!(ack["seq"], 4, "{ack}");
    let event = bob.expect("recall").await;
    assert_eq!(
        (event["seq"].clone(), event["target"].clone()),
        (json!(4), json!(2))
    );
    assert!(event.get("body").is_none(), "{event}");
    let twice = ann
        .request(json!({"type": "edit", "room": "lobby", "target": 2, "body": 1}))
        .await;
    assert_eq!(twice["code"], "bad_request", "{twice}");
    for target in [3, 99] {
        let missing = ann
            .request(json!({"type": "recall", "room": "lobby", "target": target}))
            .await;
        assert_eq!(missing["code"], "not_found", "{missing}");
    }
    bob.expect_nothing_pending().await;

    // History: the messages in their current state, no change records.
    let h = bob
        .request(json!({"type": "history", "room": "lobby"}))
        .await;
    let messages = h["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{h}");
    assert_eq!(messages[0]["body"], json!({"t": "hello"}));
    assert!(messages[0]["edited"].as_u64().is_some(), "{h}");
    assert_eq!(messages[1]["body"], Value::Null);
    assert!(messages[1]["recalled"].as_u64().is_some(), "{h}");
    // A resume from 0: every entry in seq order, originals as they are now.
    let mut carol = server.connect("carol").await;
    carol
        .request(json!({"type": "join", "room": "lobby", "since": 0}))
        .await;
    let replayed: Vec<(String, u64)> = [
        carol.recv().await,
        carol.recv().await,
        carol.recv().await,
        carol.recv().await,
    ]
    .iter()
    .map(|e| {
        (
            e["type"].as_str().unwrap().to_string(),
            e["seq"].as_u64().unwrap(),
        )
    })
    .collect();
    assert_eq!(
        replayed,
        [
            ("message".to_string(), 1),
            ("message".to_string(), 2),
            ("edit".to_string(), 3),
            ("recall".to_string(), 4)
        ]
    );
    carol.expect_nothing_pending().await;
}

#[tokio::test]
async fn a_direct_recall_reaches_a_peer_who_was_offline_and_the_senders_devices() {
    let server = Server::start();
    let mut ann = device(&server, "ann", "pc").await;
    let mut ann2 = device(&server, "ann", "phone").await;
    let ack = send(&mut ann, "bob", json!("wrong chat")).await;
    let gid = ack["gid"].as_u64().unwrap();
    ann2.expect("direct").await;
    let recall = ann
        .request(json!({"type": "recall", "to": "bob", "target": gid}))
        .await;
    assert_eq!(recall["type"], "ack", "{recall}");
    assert_eq!(recall["seq"], 2);
    let copy = ann2.expect("recall").await;
    assert_eq!(
        (copy["to"].clone(), copy["target"].clone()),
        (json!("bob"), json!(gid))
    );
    // Only the sender may, and only to the right recipient.
    let mut carol = server.connect("carol").await;
    let refused = carol
        .request(json!({"type": "recall", "to": "bob", "target": gid}))
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let wrong = ann
        .request(json!({"type": "edit", "to": "carol", "target": gid, "body": "x"}))
        .await;
    assert_eq!(wrong["code"], "forbidden", "{wrong}");

    let mut bob = device(&server, "bob", "phone").await;
    let original = bob.expect("direct").await;
    assert_eq!(original["gid"], gid);
    assert_eq!(original["body"], Value::Null);
    assert!(original["recalled"].as_u64().is_some(), "{original}");
    let change = bob.expect("recall").await;
    assert_eq!(
        (change["seq"].clone(), change["target"].clone()),
        (json!(2), json!(gid))
    );
    bob.expect_nothing_pending().await;
    let list = conversations(&mut bob, json!({})).await;
    assert_eq!(summary(&list), [("user:ann".to_string(), 0, 0)]);
    assert!(
        list["conversations"][0]["last"]["recalled"].is_u64(),
        "{list}"
    );
}

/// Each change has its own window: with recall at 1 ms and edit at an
/// hour, a message a few ms old can be edited and not recalled.
#[tokio::test]
async fn recall_and_edit_windows_are_enforced() {
    let server = Server::start_with(&["--recall-window", "1ms", "--edit-window", "1h"]);
    let mut ann = server.connect("ann").await;
    let mut bob = server.connect("bob").await;
    ann.join("r").await;
    bob.join("r").await;
    ann.expect("presence").await;
    ann.publish("r", json!(0)).await;
    let first = bob.expect("message").await["ts"].as_u64().unwrap();
    // Wait on the server's own clock: until a message is stamped later.
    loop {
        ann.publish("r", json!(1)).await;
        if bob.expect("message").await["ts"].as_u64().unwrap() > first + 1 {
            break;
        }
    }
    let late = ann
        .request(json!({"type": "recall", "room": "r", "target": 1}))
        .await;
    assert_eq!(late["code"], "forbidden", "{late}");
    assert!(
        late["message"].as_str().unwrap().contains("recall window"),
        "{late}"
    );
    let edited = ann
        .request(json!({"type": "edit", "room": "r", "target": 1, "body": 2}))
        .await;
    assert_eq!(edited["type"], "ack", "{edited}");
}

/// A recall erases every version: a peer who was offline while the
/// message was sent, edited and recalled never receives its text.
#[tokio::test]
async fn a_recall_after_an_edit_leaves_no_version_behind() {
    let server = Server::start();
    let mut ann = server.connect("ann").await;
    let ack = send(&mut ann, "bob", json!("first version")).await;
    let gid = ack["gid"].as_u64().unwrap();
    for (kind, body) in [("edit", json!("second version")), ("recall", Value::Null)] {
        let mut command = json!({"type": kind, "to": "bob", "target": gid});
        if kind == "edit" {
            command["body"] = body;
        }
        let ack = ann.request(command).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let mut bob = device(&server, "bob", "phone").await;
    let replay = [bob.recv().await, bob.recv().await, bob.recv().await];
    let kinds: Vec<&str> = replay.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["direct", "edit", "recall"]);
    for event in &replay {
        assert!(!event.to_string().contains("version"), "{event}");
    }
    bob.expect_nothing_pending().await;
}

/// A read position is kept only for a peer who sent the reader something,
/// and goes no further than that peer's newest message.
#[tokio::test]
async fn a_read_of_a_peer_who_sent_nothing_stores_nothing() {
    let server = Server::start();
    let mut ann = device(&server, "ann", "pc").await;
    let mut bob = device(&server, "bob", "pc").await;
    send(&mut ann, "bob", json!("hi")).await;
    bob.expect("direct").await;
    send(&mut bob, "bob", json!("a note to self")).await;
    for peer in ["nobody", "carol"] {
        bob.send(json!({"type": "read", "from": peer, "upto": 2}))
            .await;
    }
    // Ann's newest message to Bob is his inbox entry 1: the position stops there.
    bob.send(json!({"type": "read", "from": "ann", "upto": 2}))
        .await;
    assert_eq!(ann.expect("read").await["upto"], 1);
    let list = conversations(&mut bob, json!({})).await;
    let mut got = summary(&list);
    got.sort();
    assert_eq!(
        got,
        [
            ("user:ann".to_string(), 0, 1),
            ("user:bob".to_string(), 0, 0)
        ]
    );
    let mut nobody = device(&server, "nobody", "pc").await;
    nobody.expect_nothing_pending().await;
}

/// A page of the list never outgrows the connection's queue: with large
/// last messages it is cut short, and `next` carries on without a gap.
#[tokio::test]
async fn a_conversation_page_is_cut_to_fit_the_queue() {
    let server = Server::start_with(&["--max-queue", "64KiB", "--rate-limit", "0"]);
    let mut bob = device(&server, "bob", "pc").await;
    let big = "x".repeat(12 * 1024);
    for n in 0..8 {
        let mut peer = device(&server, &format!("peer{n}"), "pc").await;
        send(&mut peer, "bob", json!(big)).await;
        bob.expect("direct").await;
    }
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut query = json!({"limit": 100});
        if let Some(b) = &before {
            query["before"] = json!(b);
        }
        let page = conversations(&mut bob, query).await;
        pages += 1;
        seen.extend(summary(&page).into_iter().map(|(key, _, _)| key));
        match page["next"].as_str() {
            Some(next) => before = Some(next.to_string()),
            None => break,
        }
    }
    assert!(pages > 1, "one page of {} KiB", 8 * 12);
    seen.sort();
    let expected: Vec<String> = (0..8).map(|n| format!("user:peer{n}")).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn signals_are_fanned_out_never_stored_and_limited() {
    let server = Server::start();
    let mut ann = server.connect("ann").await;
    let mut bob = device(&server, "bob", "phone").await;
    ann.join("lobby").await;
    bob.join("lobby").await;
    ann.expect("presence").await;
    ann.send(json!({"type": "signal", "room": "lobby", "body": {"typing": true}}))
        .await;
    assert_eq!(
        bob.expect("signal").await,
        json!({"type": "signal", "room": "lobby", "from": "ann", "body": {"typing": true}})
    );
    ann.expect_nothing_pending().await;
    ann.send(json!({"type": "signal", "to": "bob", "body": {"typing": false}}))
        .await;
    assert_eq!(
        bob.expect("signal").await,
        json!({"type": "signal", "from": "ann", "to": "bob", "body": {"typing": false}})
    );
    let big = ann
        .request(json!({"type": "signal", "to": "bob", "body": "x".repeat(2000)}))
        .await;
    assert_eq!(big["code"], "too_large", "{big}");
    let outside = ann
        .request(json!({"type": "signal", "room": "elsewhere", "body": 1}))
        .await;
    assert_eq!(outside["code"], "not_joined", "{outside}");
    // 10 per second: a burst of 15 has refusals.
    for _ in 0..15 {
        ann.command(json!({"type": "signal", "to": "carol", "body": 1}))
            .await;
    }
    let mut limited = 0;
    for _ in 0..15 {
        match ann.try_recv().await {
            Some(e) if e["code"] == "rate_limited" => limited += 1,
            Some(e) => panic!("unexpected {e}"),
            None => break,
        }
        if limited == 5 {
            break;
        }
    }
    assert!(limited >= 5, "{limited} refusals");
    // Never stored: no history, nothing in the inbox on reconnect.
    let h = bob
        .request(json!({"type": "history", "room": "lobby"}))
        .await;
    assert_eq!(h["messages"], json!([]));
    drop(bob);
    let mut bob = device(&server, "bob", "phone").await;
    bob.expect_nothing_pending().await;
}
