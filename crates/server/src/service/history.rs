//! `history`: past room messages or one-to-one conversation, newest page
//! first (`before` pages back), from the store.

use std::sync::Arc;

use serde_json::value::RawValue;
use switchboard_protocol::{validate_room, validate_user, ErrorCode, MAX_HISTORY_LIMIT};

use super::replay::{direct_event, message_event};
use super::{validate_name, Caller, Rejection, Service};
use crate::store::{self, Store};

/// The largest value SQLite integers hold: "no upper bound" for cursors.
const NO_BOUND: u64 = i64::MAX as u64;

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

    /// Reads the page (on the blocking pool): complete `message` or
    /// `direct` events, oldest first.
    pub async fn run(self) -> Result<Vec<Box<RawValue>>, Rejection> {
        let HistoryRead {
            store,
            me,
            target,
            before,
            limit,
        } = self;
        let read = tokio::task::spawn_blocking(move || -> store::Result<Vec<Vec<u8>>> {
            Ok(match &target {
                HistoryTarget::Room(room) => store
                    .room_before(room, before, limit)?
                    .into_iter()
                    .filter_map(message_event)
                    .collect(),
                HistoryTarget::With(with) => store
                    .conversation(&me, with, before, limit)?
                    .into_iter()
                    .filter_map(direct_event)
                    .collect(),
            })
        })
        .await;
        let events = match read {
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
        Ok(events
            .into_iter()
            .filter_map(|e| String::from_utf8(e).ok())
            .filter_map(|e| RawValue::from_string(e).ok())
            .collect())
    }
}

fn unavailable() -> Rejection {
    Rejection::new(ErrorCode::Unavailable, "history is unavailable right now")
}
