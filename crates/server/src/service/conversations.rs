//! `conversations`: the user's direct conversations and rooms, newest last
//! message first, each with its unread count and read positions, so every
//! device of the user shows the same badges (also `GET
//! /api/users/{user}/conversations`).
//!
//! Built from the store on each request: the peers the user exchanged
//! messages with (within retention) and the rooms with a stored read
//! position, at most [`MAX_LISTED`] of each. They are sorted and paged
//! without any message body; only the page's entries then have their last
//! message read and their unread counts counted, and the page is cut to a
//! byte budget (half of `--max-queue`, as `history` pages are) so the reply
//! always fits the connection's queue.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;
use switchboard_protocol::{self as proto, validate_user, ErrorCode, Id, MAX_HISTORY_LIMIT};

use super::replay::{direct_event, message_event};
use super::{validate_name, Rejection, Service};
use crate::auth::may_use;
use crate::store::{self, Store};

/// Most peers, and most rooms, one list considers: the most recent peers;
/// rooms beyond it are left out (a user reads fewer rooms than that).
pub const MAX_LISTED: usize = 1000;

/// Bytes of a reply around its entries' last messages: type, id, cursor,
/// names and counts of a 100-entry page.
const REPLY_ENVELOPE: usize = 48 * 1024;

/// A position in the list's order (newest first, then by key): the page
/// cursor, sent to clients as `TS/KEY`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Cursor {
    ts: u64,
    /// `room:NAME` or `user:NAME`.
    key: String,
}

impl Cursor {
    fn parse(text: &str) -> Option<Cursor> {
        let (ts, key) = text.split_once('/')?;
        let valid = key
            .strip_prefix("room:")
            .or_else(|| key.strip_prefix("user:"))
            .is_some_and(|name| !name.is_empty());
        valid.then_some(())?;
        Some(Cursor {
            ts: ts.parse().ok()?,
            key: key.to_string(),
        })
    }

    /// Whether an entry at `(ts, key)` comes after this cursor.
    fn precedes(&self, ts: u64, key: &str) -> bool {
        ts < self.ts || (ts == self.ts && key > self.key.as_str())
    }
}

/// One entry of a page.
pub struct Entry {
    /// `room:NAME` or `user:NAME`.
    key: String,
    /// The newest message's event, if one is held.
    last: Option<Vec<u8>>,
    unread: u64,
    read: u64,
    peer_read: Option<u64>,
}

pub struct ConversationsPage {
    pub entries: Vec<Entry>,
    pub next: Option<String>,
}

/// A validated request, ready to read on a task of its own.
pub struct ConversationsRead {
    store: Arc<dyn Store>,
    /// Most bytes of last messages one page carries (see the module doc).
    max_bytes: usize,
    user: String,
    /// A client's token limits the rooms listed (`None`: all; the backend
    /// sees all).
    rooms: Option<Vec<String>>,
    before: Option<Cursor>,
    limit: usize,
}

impl Service {
    /// Validates a `conversations` request: `limit` in 1..=100, `before` a
    /// `next` cursor. `rooms`: the client's token's room grant (filters
    /// rooms), `None` for any room or the backend.
    pub fn conversations(
        &self,
        user: &str,
        rooms: Option<&[String]>,
        before: Option<&str>,
        limit: usize,
    ) -> Result<ConversationsRead, Rejection> {
        validate_name(validate_user, user, "")?;
        if limit == 0 || limit > MAX_HISTORY_LIMIT {
            return Err(Rejection::bad_request(format!(
                "`limit` must be between 1 and {MAX_HISTORY_LIMIT}"
            )));
        }
        let before = match before {
            None => None,
            Some(text) => Some(Cursor::parse(text).ok_or_else(|| {
                Rejection::bad_request("`before` must be the `next` of an earlier page")
            })?),
        };
        Ok(ConversationsRead {
            store: self.store.clone(),
            max_bytes: self.page_bytes(REPLY_ENVELOPE),
            user: user.to_string(),
            rooms: rooms.map(<[String]>::to_vec),
            before,
            limit,
        })
    }
}

impl ConversationsRead {
    /// Reads the page (on the blocking pool).
    pub async fn run(self) -> Result<ConversationsPage, Rejection> {
        let read = tokio::task::spawn_blocking(move || self.read()).await;
        match read {
            Ok(Ok(page)) => Ok(page),
            Ok(Err(err)) => {
                tracing::error!(%err, "conversations read failed");
                Err(unavailable())
            }
            Err(err) => {
                tracing::error!(%err, "conversations read task failed");
                Err(unavailable())
            }
        }
    }

    fn read(&self) -> store::Result<ConversationsPage> {
        let store = &self.store;
        let user = self.user.as_str();
        let positions: HashMap<String, u64> = store.read_positions(user)?.into_iter().collect();
        // (ts, key, where its last message is: a gid, or a room seq)
        let mut all: Vec<(u64, String, u64)> = Vec::new();
        for (peer, gid, ts) in store.peers(user, MAX_LISTED)? {
            all.push((ts, format!("user:{peer}"), gid));
        }
        let rooms = positions
            .keys()
            .filter_map(|key| key.strip_prefix("room:"))
            .filter(|room| may_use(self.rooms.as_deref(), room))
            .take(MAX_LISTED);
        for room in rooms {
            let (seq, ts) = store.room_last(room)?.unwrap_or((0, 0));
            all.push((ts, format!("room:{room}"), seq));
        }
        all.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let page = all
            .into_iter()
            .filter(|(ts, key, _)| self.before.as_ref().is_none_or(|c| c.precedes(*ts, key)))
            .take(self.limit + 1);
        let mut entries = Vec::with_capacity(self.limit);
        let mut next = None;
        let mut bytes = 0;
        let mut last_kept: Option<(u64, String)> = None;
        for (ts, key, at) in page {
            let last = match key.split_once(':') {
                Some(("user", _)) => store.direct_entry(at)?.and_then(direct_event),
                Some((_, room)) if at > 0 => store.room_entry(room, at)?.and_then(message_event),
                _ => None,
            };
            let size = last.as_ref().map_or(0, Vec::len);
            // More than a page, or a page full of bytes: the rest is
            // the next page's (at least one entry per page).
            if entries.len() == self.limit || (!entries.is_empty() && bytes + size > self.max_bytes)
            {
                next = last_kept.map(|(ts, key)| format!("{ts}/{key}"));
                break;
            }
            bytes += size;
            let read = positions.get(&key).copied().unwrap_or(0);
            let (unread, peer_read) = match key.split_once(':') {
                // Notes to self are never unread.
                Some(("user", peer)) if peer == user => (0, Some(read)),
                Some(("user", peer)) => (
                    store.unread_direct(user, peer, read)?,
                    Some(store.read_position(peer, &format!("user:{user}"))?),
                ),
                Some((_, room)) => (store.unread_room(room, user, read)?, None),
                None => (0, None),
            };
            last_kept = Some((ts, key.clone()));
            entries.push(Entry {
                key,
                last,
                unread,
                read,
                peer_read,
            });
        }
        Ok(ConversationsPage { entries, next })
    }
}

impl ConversationsPage {
    /// The `conversations` event (the HTTP API sends the same object, less
    /// its `type` and `id`).
    pub fn encode(&self, id: Option<&Id>) -> Vec<u8> {
        let conversations = self
            .entries
            .iter()
            .map(|e| {
                let (with, room) = match e.key.split_once(':') {
                    Some(("user", peer)) => (Some(peer), None),
                    Some((_, room)) => (None, Some(room)),
                    None => (None, None),
                };
                proto::ConversationItem {
                    with,
                    room,
                    last: e
                        .last
                        .as_ref()
                        .and_then(|bytes| String::from_utf8(bytes.clone()).ok())
                        .and_then(|text| RawValue::from_string(text).ok()),
                    unread: e.unread,
                    read: e.read,
                    peer_read: e.peer_read,
                }
            })
            .collect();
        proto::encode(&proto::Conversations {
            id,
            conversations,
            next: self.next.clone(),
        })
    }
}

fn unavailable() -> Rejection {
    Rejection::new(
        ErrorCode::Unavailable,
        "the conversation list is unavailable right now",
    )
}

#[cfg(test)]
mod tests {
    use super::Cursor;

    #[test]
    fn a_cursor_round_trips_and_orders_newest_first_then_by_key() {
        let c = Cursor::parse("1700/room:lobby").unwrap();
        assert_eq!((c.ts, c.key.as_str()), (1700, "room:lobby"));
        assert!(c.precedes(1699, "room:a"));
        assert!(c.precedes(1700, "user:bob"));
        assert!(!c.precedes(1700, "room:a"));
        assert!(!c.precedes(1701, "user:z"));
        // A room name may hold '/': only the first one splits.
        assert_eq!(Cursor::parse("5/room:a/b").unwrap().key, "room:a/b");
        for bad in ["", "x/room:a", "5/", "5/room:", "5/team:a", "5room:a"] {
            assert!(Cursor::parse(bad).is_none(), "{bad}");
        }
    }
}
