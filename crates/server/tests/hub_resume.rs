//! The hub in-process: the resume invariant (replay of `(after, upto]` from
//! the store, then the live events held while gated, nothing twice and
//! nothing missing, while messages keep being delivered), presence counts,
//! and slow consumers. Commits go to a real `MemoryStore` in the order the
//! pipeline uses: commit, `set_*_seq`, then deliver.

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde_json::value::RawValue;
use switchboard_protocol::{self as proto, Direct, Message};
use switchboard_server::hub::{Conn, Hub, Replay};
use switchboard_server::metrics::Metrics;
use switchboard_server::store::{DirectRecord, MemoryStore, RoomRecord, Store, Write};

use common::{of_type, seqs, take_events};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Large enough that no test here trips the slow-consumer limit by accident.
const ROOMY: usize = 64 << 20;
/// A bounded wait for the other thread: a failure, never a hang.
const WAIT: Duration = Duration::from_secs(30);

fn hub() -> Arc<Hub> {
    Arc::new(Hub::new(Arc::new(Metrics::new())))
}

fn body(seq: u64) -> Box<RawValue> {
    RawValue::from_string(format!("{{\"n\":{seq}}}")).unwrap_or_else(|e| panic!("{e}"))
}

/// A connection identified as `user`, its welcome already taken.
fn user_conn(hub: &Hub, user: &str, limit: usize) -> Arc<Conn> {
    let conn = hub.connect(None, limit);
    hub.identify(&conn, user, b"{\"type\":\"welcome\"}".to_vec(), 0)
        .unwrap_or_else(|e| panic!("identify: {e:?}"));
    hub.open_inbox(&conn);
    take_events(&conn);
    conn
}

/// Commits room message `seq`, then delivers it, as the pipeline does.
fn publish(hub: &Hub, store: &dyn Store, room: &Arc<str>, seq: u64) -> TestResult {
    let body = body(seq);
    store.commit(&[Write::Room(RoomRecord {
        room: room.to_string(),
        seq,
        from: "alice".into(),
        ts: 1,
        body: body.get().to_string(),
        ..RoomRecord::default()
    })])?;
    hub.set_room_seq(room, seq);
    hub.deliver_room(&Message::new(room, seq, "alice", 1, &body), None);
    Ok(())
}

/// Commits direct message `seq` to `to`'s inbox, then delivers it.
fn send(hub: &Hub, store: &dyn Store, to: &Arc<str>, seq: u64) -> TestResult {
    let body = body(seq);
    store.commit(&[Write::Direct(DirectRecord {
        gid: seq,
        to: to.to_string(),
        seq,
        from: "alice".into(),
        ts: 1,
        body: body.get().to_string(),
        ..DirectRecord::default()
    })])?;
    hub.set_inbox_seq(to, seq);
    hub.deliver_direct(&Direct::new("alice", to, seq, seq, 1, &body), None);
    Ok(())
}

/// Replays `range` of `room` from the store, then opens the gate (what
/// `gateway::replay::room` does, without the pacing).
fn replay_room(hub: &Hub, store: &dyn Store, conn: &Conn, room: &str, range: Replay) -> TestResult {
    if range.after < range.upto {
        let wanted = (range.upto - range.after) as usize;
        for m in store.room_after(room, range.after, wanted)? {
            assert!(m.seq <= range.upto, "room_after went past its limit");
            let body = RawValue::from_string(m.body)?;
            let event = proto::Message::new(&m.room, m.seq, &m.from, m.ts, &body);
            hub.reply(conn, proto::encode(&event));
        }
    }
    hub.open_room(conn, room);
    Ok(())
}

/// Replays `range` of `conn`'s inbox from the store, then opens the gate.
fn replay_inbox(hub: &Hub, store: &dyn Store, conn: &Conn, range: Replay) -> TestResult {
    if range.after < range.upto {
        let wanted = (range.upto - range.after) as usize;
        for d in store.inbox_after(conn.user(), range.after, wanted)? {
            let body = RawValue::from_string(d.body)?;
            let event = proto::Direct::new(&d.from, &d.to, d.seq, d.gid, d.ts, &body);
            hub.reply(conn, proto::encode(&event));
        }
    }
    hub.open_inbox(conn);
    Ok(())
}

fn names(list: &[&str]) -> Vec<Arc<str>> {
    list.iter().map(|n| Arc::from(*n)).collect()
}

fn join(hub: &Hub, conn: &Arc<Conn>, room: &str, since: Option<u64>) -> Option<Replay> {
    hub.join(conn, room, since, None)
}

#[test]
fn join_with_since_replays_then_releases_what_was_held_in_order() -> TestResult {
    let hub = hub();
    let store = MemoryStore::new();
    let room: Arc<str> = Arc::from("lobby");
    for seq in 1..=5 {
        publish(&hub, &store, &room, seq)?;
    }
    let conn = user_conn(&hub, "bob", ROOMY);
    let range = join(&hub, &conn, &room, Some(2)).ok_or("no replay range")?;
    assert_eq!(range, Replay { after: 2, upto: 5 });
    // Committed while the replay is pending: held back, not queued.
    publish(&hub, &store, &room, 6)?;
    publish(&hub, &store, &room, 7)?;
    let events = take_events(&conn);
    assert_eq!(of_type(&events, "joined").len(), 1);
    assert_eq!(events[0]["seq"], 5);
    assert!(seqs(&events, "message").is_empty());

    replay_room(&hub, &store, &conn, &room, range)?;
    publish(&hub, &store, &room, 8)?;
    assert_eq!(seqs(&take_events(&conn), "message"), [3, 4, 5, 6, 7, 8]);
    Ok(())
}

/// The pipeline sets the room's seq before it delivers: a join in between
/// sees the message as committed, so the replay sends it and live delivery
/// must skip it.
#[test]
fn a_message_committed_before_the_join_is_not_delivered_live() -> TestResult {
    let hub = hub();
    let store = MemoryStore::new();
    let room: Arc<str> = Arc::from("lobby");
    let conn = user_conn(&hub, "bob", ROOMY);
    // Someone is in the room, so it exists when the message is delivered.
    let other = user_conn(&hub, "carol", ROOMY);
    join(&hub, &other, &room, None);
    publish(&hub, &store, &room, 1)?;

    let body = body(2);
    store.commit(&[Write::Room(RoomRecord {
        room: room.to_string(),
        seq: 2,
        from: "alice".into(),
        ts: 1,
        body: body.get().to_string(),
        ..RoomRecord::default()
    })])?;
    hub.set_room_seq(&room, 2);
    let range = join(&hub, &conn, &room, Some(0)).ok_or("no replay range")?;
    assert_eq!(range, Replay { after: 0, upto: 2 });
    let delivered = hub.deliver_room(&Message::new(&room, 2, "alice", 1, &body), None);
    assert_eq!(delivered, 1, "only the member that joined before it");
    replay_room(&hub, &store, &conn, &room, range)?;
    publish(&hub, &store, &room, 3)?;
    assert_eq!(seqs(&take_events(&conn), "message"), [1, 2, 3]);
    Ok(())
}

#[test]
fn join_without_since_is_live_from_the_committed_seq() -> TestResult {
    let hub = hub();
    let store = MemoryStore::new();
    let room: Arc<str> = Arc::from("lobby");
    publish(&hub, &store, &room, 1)?;
    let conn = user_conn(&hub, "bob", ROOMY);
    assert_eq!(join(&hub, &conn, &room, None), None);
    publish(&hub, &store, &room, 2)?;
    let events = take_events(&conn);
    assert_eq!(seqs(&events, "joined"), [1]);
    assert_eq!(seqs(&events, "message"), [2]);
    Ok(())
}

/// The messages (room events, or directs) a connection got, which must be
/// exactly `first..=last`, in order.
fn assert_gapless(events: &[serde_json::Value], kind: &str, first: u64, last: u64) {
    let got = seqs(events, kind);
    let want: Vec<u64> = (first..=last).collect();
    if got != want {
        let missing: Vec<&u64> = want.iter().filter(|s| !got.contains(s)).collect();
        panic!(
            "{kind}: expected {first}..={last}, got {} events; missing {missing:?}; \
             first out of order at {:?}",
            got.len(),
            got.windows(2).position(|w| w[1] != w[0] + 1)
        );
    }
}

#[test]
fn concurrent_room_joins_with_since_see_every_message_once_in_order() -> TestResult {
    const N: u64 = 3000;
    let hub = hub();
    let store = Arc::new(MemoryStore::new());
    let room: Arc<str> = Arc::from("lobby");
    let (progress_tx, progress) = mpsc::channel::<u64>();
    let (joining_tx, joining) = mpsc::channel::<()>();
    let publisher = {
        let (hub, store, room) = (hub.clone(), store.clone(), room.clone());
        thread::spawn(move || -> Result<(), String> {
            for seq in 1..=N {
                publish(&hub, &*store, &room, seq).map_err(|e| e.to_string())?;
                if seq % 100 == 0 {
                    progress_tx.send(seq).map_err(|e| e.to_string())?;
                    // Go on only once the other side is joining, so every
                    // join overlaps with the publishing.
                    if seq < N {
                        joining.recv_timeout(WAIT).map_err(|e| e.to_string())?;
                    }
                }
            }
            Ok(())
        })
    };
    // Join while the publisher runs: a new connection after each progress
    // report, resuming from half-way through what was seen.
    let mut joined = Vec::new();
    while let Ok(seen) = progress.recv_timeout(WAIT) {
        let conn = user_conn(&hub, &format!("user{seen}"), ROOMY);
        let since = seen / 2;
        let _ = joining_tx.send(());
        let range = join(&hub, &conn, &room, Some(since)).ok_or("no replay range")?;
        assert_eq!(range.after, since);
        assert!(range.upto >= seen);
        replay_room(&hub, &*store, &conn, &room, range)?;
        joined.push((conn, since));
        if seen >= N {
            break;
        }
    }
    publisher.join().map_err(|_| "publisher panicked")??;
    assert_eq!(joined.len() as u64, N / 100);
    for (conn, since) in &joined {
        assert!(!conn.is_closing());
        assert_gapless(&take_events(conn), "message", since + 1, N);
    }
    Ok(())
}

#[test]
fn concurrent_identifies_see_every_direct_once_in_order() -> TestResult {
    const N: u64 = 3000;
    let hub = hub();
    let store = Arc::new(MemoryStore::new());
    let bob: Arc<str> = Arc::from("bob");
    let (progress_tx, progress) = mpsc::channel::<u64>();
    let (joining_tx, joining) = mpsc::channel::<()>();
    let sender = {
        let (hub, store, bob) = (hub.clone(), store.clone(), bob.clone());
        thread::spawn(move || -> Result<(), String> {
            for seq in 1..=N {
                send(&hub, &*store, &bob, seq).map_err(|e| e.to_string())?;
                if seq % 100 == 0 {
                    progress_tx.send(seq).map_err(|e| e.to_string())?;
                    // Go on only once the other side is joining, so every
                    // join overlaps with the publishing.
                    if seq < N {
                        joining.recv_timeout(WAIT).map_err(|e| e.to_string())?;
                    }
                }
            }
            Ok(())
        })
    };
    let mut conns = Vec::new();
    while let Ok(seen) = progress.recv_timeout(WAIT) {
        let conn = hub.connect(None, ROOMY);
        let _ = joining_tx.send(());
        let range = hub
            .identify(&conn, &bob, b"{\"type\":\"welcome\"}".to_vec(), 0)
            .map_err(|e| format!("identify: {e:?}"))?;
        assert_eq!(range.after, 0);
        assert!(range.upto >= seen);
        replay_inbox(&hub, &*store, &conn, range)?;
        conns.push(conn);
        if seen >= N {
            break;
        }
    }
    sender.join().map_err(|_| "sender panicked")??;
    assert_eq!(conns.len() as u64, N / 100);
    for conn in &conns {
        let events = take_events(conn);
        assert_eq!(events[0]["type"], "welcome");
        assert_gapless(&events, "direct", 1, N);
    }
    Ok(())
}

#[test]
fn identify_replays_the_inbox_then_releases_held_directs() -> TestResult {
    let hub = hub();
    let store = MemoryStore::new();
    let bob: Arc<str> = Arc::from("bob");
    send(&hub, &store, &bob, 1)?;
    send(&hub, &store, &bob, 2)?;
    let conn = hub.connect(None, ROOMY);
    let range = hub
        .identify(&conn, &bob, b"{\"type\":\"welcome\"}".to_vec(), 0)
        .map_err(|e| format!("identify: {e:?}"))?;
    assert_eq!(range, Replay { after: 0, upto: 2 });
    send(&hub, &store, &bob, 3)?;
    assert!(seqs(&take_events(&conn), "direct").is_empty());
    replay_inbox(&hub, &store, &conn, range)?;
    send(&hub, &store, &bob, 4)?;
    assert_eq!(seqs(&take_events(&conn), "direct"), [1, 2, 3, 4]);
    Ok(())
}

/// As for rooms: a direct whose inbox seq was set before `identify` is
/// the replay's to send, not live delivery's.
#[test]
fn a_direct_committed_before_identify_is_not_delivered_live() -> TestResult {
    let hub = hub();
    let store = MemoryStore::new();
    let bob: Arc<str> = Arc::from("bob");
    let other = user_conn(&hub, "bob", ROOMY);
    send(&hub, &store, &bob, 1)?;

    let body = body(2);
    store.commit(&[Write::Direct(DirectRecord {
        gid: 2,
        to: bob.to_string(),
        seq: 2,
        from: "alice".into(),
        ts: 1,
        body: body.get().to_string(),
        ..DirectRecord::default()
    })])?;
    hub.set_inbox_seq(&bob, 2);
    let conn = hub.connect(None, ROOMY);
    let range = hub
        .identify(&conn, &bob, b"{\"type\":\"welcome\"}".to_vec(), 0)
        .map_err(|e| format!("identify: {e:?}"))?;
    assert_eq!(range, Replay { after: 0, upto: 2 });
    let delivered = hub.deliver_direct(&Direct::new("alice", &bob, 2, 2, 1, &body), None);
    assert_eq!(delivered, 1, "only the connection identified before it");
    replay_inbox(&hub, &store, &conn, range)?;
    send(&hub, &store, &bob, 3)?;
    assert_eq!(seqs(&take_events(&conn), "direct"), [1, 2, 3]);
    assert_eq!(seqs(&take_events(&other), "direct"), [1, 2, 3]);
    Ok(())
}

#[test]
fn presence_counts_users_not_connections() -> TestResult {
    let hub = hub();
    let alice1 = user_conn(&hub, "alice", ROOMY);
    let alice2 = user_conn(&hub, "alice", ROOMY);
    let bob = user_conn(&hub, "bob", ROOMY);

    join(&hub, &alice1, "lobby", None);
    assert_eq!(take_events(&alice1)[0]["online"], 1);
    join(&hub, &bob, "lobby", None);
    assert_eq!(take_events(&bob)[0]["online"], 2);
    let seen = take_events(&alice1);
    let presence = of_type(&seen, "presence");
    assert_eq!(presence.len(), 1);
    assert_eq!(presence[0]["event"], "join");
    assert_eq!(presence[0]["user"], "bob");
    assert_eq!(presence[0]["online"], 2);

    // A second connection of an online user changes nothing for the others.
    join(&hub, &alice2, "lobby", None);
    assert_eq!(take_events(&alice2)[0]["online"], 2);
    assert!(take_events(&bob).is_empty());
    assert_eq!(hub.presence("lobby"), names(&["alice", "bob"]));

    assert!(hub.leave(&alice1, "lobby"));
    assert!(!hub.leave(&alice1, "lobby"));
    assert!(take_events(&bob).is_empty(), "alice is still online");
    hub.disconnect(&alice2);
    let seen = take_events(&bob);
    let presence = of_type(&seen, "presence");
    assert_eq!(presence.len(), 1);
    assert_eq!(presence[0]["event"], "leave");
    assert_eq!(presence[0]["user"], "alice");
    assert_eq!(presence[0]["online"], 1);
    assert_eq!(hub.presence("lobby"), names(&["bob"]));
    assert_eq!(hub.rooms(), [(Arc::<str>::from("lobby"), 0, 1)]);

    hub.disconnect(&bob);
    assert!(hub.presence("lobby").is_empty());
    Ok(())
}

#[test]
fn a_slow_consumer_is_dropped_without_affecting_the_others() -> TestResult {
    let hub = hub();
    let store = MemoryStore::new();
    let room: Arc<str> = Arc::from("lobby");
    let fast = user_conn(&hub, "fast", ROOMY);
    // Room for a few events only, and it never reads.
    let slow = user_conn(&hub, "slow", 400);
    join(&hub, &fast, &room, None);
    join(&hub, &slow, &room, None);
    take_events(&fast);

    let mut received = Vec::new();
    for seq in 1..=20 {
        publish(&hub, &store, &room, seq)?;
        received.extend(seqs(&take_events(&fast), "message"));
    }
    assert_eq!(received, (1..=20).collect::<Vec<_>>());
    let reason = slow
        .close_reason()
        .ok_or("the slow consumer was not closed")?;
    assert_eq!(reason.code, proto::close::SLOW_CONSUMER);
    assert!(!reason.graceful);
    assert!(fast.close_reason().is_none());
    // Only the fast member still receives.
    let body = body(21);
    store.commit(&[Write::Room(RoomRecord {
        room: room.to_string(),
        seq: 21,
        from: "alice".into(),
        ts: 1,
        body: body.get().to_string(),
        ..RoomRecord::default()
    })])?;
    hub.set_room_seq(&room, 21);
    assert_eq!(
        hub.deliver_room(&Message::new(&room, 21, "alice", 1, &body), None),
        1
    );
    assert_eq!(seqs(&take_events(&fast), "message"), [21]);
    Ok(())
}

#[test]
fn events_held_during_a_replay_count_against_the_queue_limit() -> TestResult {
    let hub = hub();
    let store = MemoryStore::new();
    let room: Arc<str> = Arc::from("lobby");
    let fast = user_conn(&hub, "fast", ROOMY);
    join(&hub, &fast, &room, None);
    publish(&hub, &store, &room, 1)?;
    let gated = user_conn(&hub, "gated", 400);
    join(&hub, &gated, &room, Some(0)).ok_or("no replay range")?;
    take_events(&gated);
    take_events(&fast);
    // The replay never finishes: what is held grows until it is too much.
    for seq in 2..=20 {
        publish(&hub, &store, &room, seq)?;
    }
    let reason = gated
        .close_reason()
        .ok_or("the gated member was not closed")?;
    assert_eq!(reason.code, proto::close::SLOW_CONSUMER);
    assert_eq!(
        seqs(&take_events(&fast), "message"),
        (2..=20).collect::<Vec<_>>()
    );
    Ok(())
}
