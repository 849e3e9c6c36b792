//! Presence in big rooms: above `--presence-batch-above` users online, a
//! room sends at most one presence frame per `--presence-interval` (the
//! first change after a quiet interval at once, later ones as one delta at
//! the end of the interval); small rooms get every change at once.
//!
//! The waits of one interval below are what is tested (a quiet interval
//! makes the next change go out at once), not synchronisation: every
//! expectation awaits its event.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Client, Server};
use serde_json::{json, Value};

const ROOM: &str = "big";
const INTERVAL: Duration = Duration::from_millis(400);

fn start() -> Server {
    Server::start_with(&[
        "--store",
        "memory",
        "--presence-batch-above",
        "3",
        "--presence-interval",
        "400ms",
    ])
}

/// Lets a quiet interval pass on the server's clock: it sent its last
/// presence frame before we received it.
async fn quiet_interval() {
    tokio::time::sleep(INTERVAL + Duration::from_millis(50)).await;
}

fn change(event: &str, user: &str, online: u64) -> Value {
    json!({"type": "presence", "room": ROOM, "event": event, "user": user, "online": online})
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

/// Sends a command and returns its reply, skipping the events (presence)
/// queued before it.
async fn reply(c: &mut Client, command: Value) -> Value {
    let id = c.command(command).await;
    loop {
        let event = c.recv().await;
        if event["id"] == id {
            return event;
        }
    }
}

async fn join(c: &mut Client) -> Value {
    let joined = reply(c, json!({"type": "join", "room": ROOM})).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    joined
}

async fn leave(c: &mut Client) {
    let left = reply(c, json!({"type": "leave", "room": ROOM})).await;
    assert_eq!(left["type"], "left", "{left}");
}

async fn clients(server: &Server, prefix: &str, n: usize) -> Vec<(String, Client)> {
    let mut out = Vec::new();
    for i in 0..n {
        let name = format!("{prefix}{i:02}");
        out.push((name.clone(), server.connect(&name).await));
    }
    out
}

#[tokio::test]
async fn big_rooms_batch_presence_changes() {
    let server = start();
    let mut watch = server.connect("watch").await;
    watch.join(ROOM).await;
    // Everyone connects first, so each burst below is only joins and leaves.
    let mut a = clients(&server, "a", 3).await;
    let mut late = server.connect("late").await;
    let mut flicker = server.connect("flicker").await;
    let mut burst = clients(&server, "b", 40).await;

    // Up to 3 online: every change at once, as before batching.
    for (i, (name, c)) in a.iter_mut().take(2).enumerate() {
        join(c).await;
        assert_eq!(watch.recv().await, change("join", name, i as u64 + 2));
    }
    // The 4th user makes the room big; a frame went out just now, so the
    // change waits for the end of the interval and comes as a delta.
    let joined = join(&mut a[2].1).await;
    assert_eq!(joined["online"], 4, "the joiner still gets its count");
    assert_eq!(
        watch.recv().await,
        json!({"type": "presence", "room": ROOM, "online": 4, "joined": ["a02"], "left": []})
    );

    // After a quiet interval the next change goes out at once (leading).
    quiet_interval().await;
    let joined = join(&mut late).await;
    assert_eq!(joined["online"], 5);
    assert_eq!(watch.recv().await, change("join", "late", 5));

    // Within the cooldown: 40 joins, one user joining and leaving again,
    // one leaving. One delta: net changes only, 32 names listed, the rest
    // counted in `more`.
    for (_, c) in burst.iter_mut() {
        c.command(json!({"type": "join", "room": ROOM})).await;
    }
    join(&mut flicker).await;
    leave(&mut flicker).await;
    leave(&mut a[0].1).await;
    let delta = watch.expect("presence").await;
    assert_eq!(delta["online"], 5 + 40 - 1, "{delta}");
    assert_eq!(names(&delta["left"]), ["a00"], "{delta}");
    assert_eq!(delta["more"], 40 - 32, "{delta}");
    assert!(delta.get("event").is_none(), "{delta}");
    let listed = names(&delta["joined"]);
    assert_eq!(listed.len(), 32, "{delta}");
    let burst_names: HashSet<&str> = burst.iter().map(|(n, _)| n.as_str()).collect();
    let unique: HashSet<&str> = listed.iter().map(String::as_str).collect();
    assert_eq!(unique.len(), 32, "names listed twice: {delta}");
    assert!(unique.is_subset(&burst_names), "{delta}");
    for (_, c) in burst.iter_mut() {
        c.expect("joined").await;
    }
    watch.expect_nothing_pending().await;

    // The delta started a cooldown too: the next change is batched.
    leave(&mut a[1].1).await;
    assert_eq!(
        watch.recv().await,
        json!({"type": "presence", "room": ROOM, "online": 43, "joined": [], "left": ["a01"]})
    );

    // A leave and a rejoin of the same user within the cooldown cancel
    // out: nothing is sent, so after a quiet interval the next change is
    // again individual (and the first event the watcher sees).
    let (_, a2) = &mut a[2];
    leave(a2).await;
    join(a2).await;
    quiet_interval().await;
    leave(&mut late).await;
    assert_eq!(watch.recv().await, change("leave", "late", 42));

    // Leaves are capped the same way: 35 in one cooldown.
    for (_, c) in burst.iter_mut().take(35) {
        c.command(json!({"type": "leave", "room": ROOM})).await;
    }
    let delta = watch.expect("presence").await;
    assert_eq!(delta["online"], 42 - 35, "{delta}");
    assert_eq!(names(&delta["joined"]), Vec::<String>::new(), "{delta}");
    assert_eq!(names(&delta["left"]).len(), 32, "{delta}");
    assert_eq!(delta["more"], 3, "{delta}");
    watch.expect_nothing_pending().await;

    // The list is exact whatever the batches said.
    let list = watch
        .request(json!({"type": "presence", "room": ROOM}))
        .await;
    assert_eq!(list["online"], 7, "{list}");
}

#[tokio::test]
async fn small_rooms_get_every_change_at_once() {
    let server = start();
    let mut watch = server.connect("watch").await;
    watch.join(ROOM).await;
    let mut s1 = server.connect("s1").await;
    let mut s2 = server.connect("s2").await;
    // Back to back, far inside one interval: never more than 3 online, so
    // nothing is batched.
    join(&mut s1).await;
    join(&mut s2).await;
    leave(&mut s1).await;
    join(&mut s1).await;
    leave(&mut s2).await;
    for expected in [
        change("join", "s1", 2),
        change("join", "s2", 3),
        change("leave", "s1", 2),
        change("join", "s1", 3),
        change("leave", "s2", 2),
    ] {
        assert_eq!(watch.recv().await, expected);
    }
    watch.expect_nothing_pending().await;
}

#[tokio::test]
async fn a_room_that_empties_with_a_batch_pending_starts_afresh() {
    let server = start();
    let mut users = clients(&server, "u", 6).await;
    // Fill the room past the threshold; some changes end up batched.
    for (_, c) in users.iter_mut() {
        join(c).await;
    }
    // Everyone leaves within the cooldown: the batch has nobody to go to.
    for (_, c) in users.iter_mut() {
        leave(c).await;
    }
    // Rejoining later: a fresh room (online 1), no stale batch arrives.
    quiet_interval().await;
    let (_, first) = &mut users[0];
    let joined = join(first).await;
    assert_eq!(joined["online"], 1);
    first.expect_nothing_pending().await;
}
