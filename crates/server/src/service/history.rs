//! `history`: past room messages or one-to-one conversation, newest page
//! first (`before` pages back), from the store.

use std::sync::Arc;

use serde_json::value::RawValue;
use switchboard_protocol::{validate_room, validate_user, ErrorCode, MAX_HISTORY_LIMIT};

use super::replay::{direct_event, message_event};
use super::{validate_name, Caller, Rejection, Service};
use crate::store::{self, Store};

/// Bytes of a `history` reply around its events: type, id (≤ 128 B), room
/// or user name (≤ 128 B), and the commas between events (a 100-event page).
const REPLY_ENVELOPE: usize = 1024;

/// The largest value SQLite integers hold: "no upper bound" for cursors.
const NO_BOUND: u64 = i64::MAX as u64;

/// One page of history: complete `message` or `direct` events, oldest
/// first.
pub struct HistoryPage {
    pub messages: Vec<Box<RawValue>>,
    /// Older messages were left out to keep the page within its byte
    /// budget (the newest ones are kept, so paging on with `before` from the
    /// oldest one returned continues without a gap).
    pub truncated: bool,
    /// The caller's stored read position (clients only).
    pub read: Option<u64>,
    /// The peer's position in the conversation (`with` only).
    pub peer_read: Option<u64>,
}

/// What `history` reads.
#[derive(Clone, Debug)]
pub enum HistoryTarget {
    Room(String),
    /// The caller's conversation with this user.
    With(String),
}

/// A validated history request, ready to read (owns what it needs, so a
/// transport can run it on a task of its own).
pub struct HistoryRead {
    store: Arc<dyn Store>,
    /// Most bytes of events one page may carry: half of `--max-queue`, less
    /// room for the reply around them. A reply is one frame, and it is
    /// queued once the queue is at most half full, so it always fits.
    max_bytes: usize,
    me: String,
    target: HistoryTarget,
    before: u64,
    limit: usize,
}

impl Service {
    /// Validates a history request: names, `limit` in 1..=MAX_HISTORY_LIMIT,
    /// and for a client its token's room grant. Conversations are the
    /// caller's own (a backend has none).
    pub fn history(
        &self,
        caller: Caller<'_>,
        target: HistoryTarget,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryRead, Rejection> {
        if limit == 0 || limit > MAX_HISTORY_LIMIT {
            return Err(Rejection::bad_request(format!(
                "`limit` must be between 1 and {MAX_HISTORY_LIMIT}"
            )));
        }
        match &target {
            HistoryTarget::Room(room) => {
                validate_name(validate_room, room, "")?;
                if let Caller::Client(client) = &caller {
                    client.check_room_access(room)?;
                }
            }
            HistoryTarget::With(with) => validate_name(validate_user, with, "with")?,
        }
        let me = match caller {
            Caller::Client(client) => client.user().to_string(),
            Caller::Backend { .. } => String::new(),
        };
        Ok(HistoryRead {
            store: self.store.clone(),
            max_bytes: self.page_bytes(REPLY_ENVELOPE),
            me,
            target,
            before: before.unwrap_or(NO_BOUND).min(NO_BOUND),
            limit,
        })
    }
}

impl HistoryRead {
    pub fn target(&self) -> &HistoryTarget {
        &self.target
    }

    /// Reads the page (on the blocking pool).
    pub async fn run(self) -> Result<HistoryPage, Rejection> {
        let HistoryRead {
            store,
            max_bytes,
            me,
            target,
            before,
            limit,
        } = self;
        type Read = (Vec<Vec<u8>>, Option<u64>, Option<u64>);
        let read = tokio::task::spawn_blocking(move || -> store::Result<Read> {
            Ok(match &target {
                HistoryTarget::Room(room) => {
                    let events = store
                        .room_before(room, before, limit)?
                        .into_iter()
                        .filter_map(message_event)
                        .collect();
                    let read = if me.is_empty() {
                        None
                    } else {
                        Some(store.read_position(&me, &format!("room:{room}"))?)
                    };
                    (events, read, None)
                }
                HistoryTarget::With(with) => {
                    let events = store
                        .conversation(&me, with, before, limit)?
                        .into_iter()
                        .filter_map(direct_event)
                        .collect();
                    let read = store.read_position(&me, &format!("user:{with}"))?;
                    let peer_read = store.read_position(with, &format!("user:{me}"))?;
                    (events, Some(read), Some(peer_read))
                }
            })
        })
        .await;
        let (events, read, peer_read) = match read {
            Ok(Ok(events)) => events,
            Ok(Err(err)) => {
                tracing::error!(%err, "history read failed");
                return Err(unavailable());
            }
            Err(err) => {
                tracing::error!(%err, "history read task failed");
                return Err(unavailable());
            }
        };
        let mut page = within_budget(events, max_bytes);
        page.read = read;
        page.peer_read = peer_read;
        Ok(page)
    }
}

/// Keeps the newest events whose total size fits `max_bytes` (at least one,
/// which `--max-body` already bounds), oldest first.
fn within_budget(events: Vec<Vec<u8>>, max_bytes: usize) -> HistoryPage {
    let mut used = 0;
    let mut keep = 0;
    for event in events.iter().rev() {
        if keep > 0 && used + event.len() > max_bytes {
            break;
        }
        used += event.len();
        keep += 1;
    }
    let truncated = keep < events.len();
    let skip = events.len() - keep;
    let messages = events
        .into_iter()
        .skip(skip)
        .filter_map(|e| String::from_utf8(e).ok())
        .filter_map(|e| RawValue::from_string(e).ok())
        .collect();
    HistoryPage {
        messages,
        truncated,
        read: None,
        peer_read: None,
    }
}

fn unavailable() -> Rejection {
    Rejection::new(ErrorCode::Unavailable, "history is unavailable right now")
}

#[cfg(test)]
mod tests {
    use super::within_budget;

    fn event(n: usize) -> Vec<u8> {
        format!("{{\"n\":\"{}\"}}", "x".repeat(n)).into_bytes()
    }

    #[test]
    fn a_page_within_budget_is_whole() {
        let page = within_budget(vec![event(10), event(10)], 1000);
        assert_eq!(page.messages.len(), 2);
        assert!(!page.truncated);
    }

    #[test]
    fn an_oversized_page_keeps_the_newest_that_fit() {
        let events = vec![event(100), event(1), event(2), event(3)];
        let sizes: Vec<usize> = events.iter().map(Vec::len).collect();
        let budget = sizes[1] + sizes[2] + sizes[3];
        let page = within_budget(events, budget);
        assert!(page.truncated);
        let kept: Vec<&str> = page.messages.iter().map(|m| m.get()).collect();
        assert_eq!(kept, [r#"{"n":"x"}"#, r#"{"n":"xx"}"#, r#"{"n":"xxx"}"#]);
    }

    #[test]
    fn one_event_is_sent_even_over_budget() {
        let page = within_budget(vec![event(50), event(50)], 10);
        assert_eq!(page.messages.len(), 1);
        assert!(page.truncated);
    }
}
