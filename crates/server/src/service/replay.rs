//! Replays from the store to a connection: after `join` with `since`, and
//! the inbox after identification. Store reads run on the blocking pool;
//! results are queued to the connection while its live events are held
//! back (see `hub::gate`), then the gate opens.

use std::sync::Arc;

use serde_json::value::RawValue;
use switchboard_protocol as proto;

use super::Service;
use crate::hub::{Conn, Replay};
use crate::store::{self, DirectRecord, Kind, RoomRecord};

fn raw(body: String) -> Option<Box<RawValue>> {
    RawValue::from_string(body).ok()
}

/// 0 means "never": no marker.
fn marker(ts: u64) -> Option<u64> {
    (ts != 0).then_some(ts)
}

/// The event of a stored room entry: a `message` in its current state, or
/// an `edit`/`recall`.
pub fn message_event(m: RoomRecord) -> Option<Vec<u8>> {
    let body = raw(m.body)?;
    let change = |recall: bool| proto::Change {
        room: Some(&m.room),
        from: &m.from,
        to: None,
        seq: m.seq,
        gid: None,
        target: m.target,
        ts: m.ts,
        body: (!recall).then_some(&*body),
    };
    Some(match m.kind {
        Kind::Message => {
            let mut event = proto::Message::new(&m.room, m.seq, &m.from, m.ts, &body);
            event.edited = marker(m.edited);
            event.recalled = marker(m.recalled);
            proto::encode(&event)
        }
        Kind::Edit => proto::encode(proto::Event::Edit(&change(false))),
        Kind::Recall => proto::encode(proto::Event::Recall(&change(true))),
        Kind::Read => return None,
    })
}

/// The event of a stored inbox entry: a `direct` in its current state, an
/// `edit`/`recall`, or a `read` receipt.
pub fn direct_event(d: DirectRecord) -> Option<Vec<u8>> {
    let body = raw(d.body)?;
    let change = |recall: bool| proto::Change {
        room: None,
        from: &d.from,
        to: Some(&d.to),
        seq: d.seq,
        gid: Some(d.gid),
        target: d.target,
        ts: d.ts,
        body: (!recall).then_some(&*body),
    };
    Some(match d.kind {
        Kind::Message => {
            let mut event = proto::Direct::new(&d.from, &d.to, d.seq, d.gid, d.ts, &body);
            event.edited = marker(d.edited);
            event.recalled = marker(d.recalled);
            proto::encode(&event)
        }
        Kind::Edit => proto::encode(proto::Event::Edit(&change(false))),
        Kind::Recall => proto::encode(proto::Event::Recall(&change(true))),
        // The inbox owner is `to`; the reader `from`.
        Kind::Read => proto::encode(&proto::ReadReceipt::direct(&d.from, &d.to, d.target, d.seq)),
    })
}

/// Which part of `(after, upto]` can be replayed: the first seq to send, and
/// the `reset` seq to announce first if that is not `after + 1` (retention
/// dropped older ones, or more than `limit` are missing).
fn plan(range: Replay, oldest: Option<u64>, limit: usize) -> (u64, Option<u64>) {
    let wanted = range.after + 1;
    let mut start = wanted.max(range.upto.saturating_sub(limit as u64) + 1);
    start = match oldest {
        Some(oldest) => start.max(oldest),
        None => range.upto + 1,
    };
    let reset = (start > wanted).then(|| start - 1);
    (start, reset)
}

/// Reads the replayable part of `range` of one stream (a room or an inbox):
/// the `reset` seq to announce first, if any, and the records to send.
fn read_range<R>(
    range: Replay,
    limit: usize,
    oldest: impl FnOnce() -> store::Result<Option<u64>>,
    after: impl FnOnce(u64, usize) -> store::Result<Vec<R>>,
) -> store::Result<(Option<u64>, Vec<R>)> {
    if range.after >= range.upto {
        return Ok((None, Vec::new()));
    }
    let (start, reset) = plan(range, oldest()?, limit);
    let records = if start <= range.upto {
        after(start - 1, (range.upto - start + 1) as usize)?
    } else {
        Vec::new()
    };
    Ok((reset, records))
}

async fn send_all(app: &Service, conn: &Conn, reset: Option<Vec<u8>>, events: Vec<Vec<u8>>) {
    if let Some(reset) = reset {
        app.hub.reply(conn, reset);
    }
    for event in events {
        if conn.queued_bytes() > conn.queue_limit() / 2 {
            conn.wait_for_room().await;
        }
        app.hub.reply(conn, event);
    }
}

/// Replays `range` of `room` to `conn`, then opens its gate.
pub fn room(app: Arc<Service>, conn: Arc<Conn>, room: String, range: Replay) {
    if range.after >= range.upto {
        // Nothing missed (the common reconnect): no store read, no task.
        app.hub.open_room(&conn, &room);
        return;
    }
    tokio::spawn(async move {
        let store = app.store.clone();
        let limit = app.config.replay_limit;
        let name = room.clone();
        let read = tokio::task::spawn_blocking(
            move || -> store::Result<(Option<u64>, Vec<RoomRecord>)> {
                read_range(
                    range,
                    limit,
                    || store.room_oldest(&name),
                    |after, n| store.room_after(&name, after, n),
                )
            },
        )
        .await;
        let (reset, records) = match read {
            Ok(Ok(found)) => found,
            other => {
                tracing::error!(room, ?other, "replay read failed");
                (Some(range.upto), Vec::new())
            }
        };
        let reset = reset.map(|seq| proto::encode(&proto::Reset::room(&room, seq)));
        let events = records
            .into_iter()
            .filter(|m| m.seq <= range.upto)
            .filter_map(message_event)
            .collect();
        send_all(&app, &conn, reset, events).await;
        app.hub.open_room(&conn, &room);
    });
}

/// Delivers `user`'s inbox entries after this device's cursor, up to
/// `range.upto`, then opens the inbox gate.
pub fn inbox(app: Arc<Service>, conn: Arc<Conn>, device: Arc<str>, range: Replay) {
    if app.cluster.is_some() {
        tokio::spawn(async move {
            let Some(cluster) = &app.cluster else { return };
            // Cluster mode: the replay must end at the cluster's seq, which
            // the hub knows once the node follows the user (live entries
            // above it are held by the gate meanwhile). A task waits, not
            // a thread: logins come in storms.
            if cluster
                .follower
                .follow_user_async(conn.user())
                .await
                .is_err()
            {
                conn.close(
                    proto::close::TRY_AGAIN_LATER,
                    "cluster store unavailable",
                    true,
                );
                return;
            }
            let upto = range.upto.max(app.hub.inbox_seq(conn.user()));
            inbox_upto(app, conn, device, Replay { upto, ..range });
        });
        return;
    }
    inbox_upto(app, conn, device, range);
}

fn inbox_upto(app: Arc<Service>, conn: Arc<Conn>, device: Arc<str>, range: Replay) {
    if range.upto == 0 {
        // The user never received a direct message: nothing to read.
        app.hub.open_inbox(&conn);
        return;
    }
    tokio::spawn(async move {
        let store = app.store.clone();
        let limit = app.config.replay_limit;
        let user = conn.user().to_string();
        // `received` positions not committed yet are known to the hub.
        let known = app.hub.cursor(&user, &device);
        let read = tokio::task::spawn_blocking(
            move || -> store::Result<(Option<u64>, Vec<DirectRecord>)> {
                let cursor = store.cursor(&user, &device)?.max(known);
                let range = Replay {
                    after: cursor.max(range.after),
                    upto: range.upto,
                };
                read_range(
                    range,
                    limit,
                    || store.inbox_oldest(&user),
                    |after, n| store.inbox_after(&user, after, n),
                )
            },
        )
        .await;
        let (reset, records) = match read {
            Ok(Ok(found)) => found,
            other => {
                tracing::error!(user = conn.user(), ?other, "inbox read failed");
                (Some(range.upto), Vec::new())
            }
        };
        let reset = reset.map(|seq| proto::encode(&proto::Reset::inbox(seq)));
        let events = records
            .into_iter()
            .filter(|d| d.seq <= range.upto)
            .filter_map(direct_event)
            .collect();
        send_all(&app, &conn, reset, events).await;
        app.hub.open_inbox(&conn);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_replays_everything_missing_when_held_and_within_limit() {
        assert_eq!(plan(Replay { after: 3, upto: 10 }, Some(1), 100), (4, None));
    }

    #[test]
    fn plan_resets_when_retention_dropped_the_start() {
        assert_eq!(
            plan(Replay { after: 3, upto: 10 }, Some(6), 100),
            (6, Some(5))
        );
        assert_eq!(
            plan(Replay { after: 3, upto: 10 }, None, 100),
            (11, Some(10))
        );
    }

    #[test]
    fn plan_sends_only_the_newest_past_the_limit() {
        assert_eq!(
            plan(Replay { after: 0, upto: 10 }, Some(1), 4),
            (7, Some(6))
        );
    }
}
