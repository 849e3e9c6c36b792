//! Durable storage: room messages, direct messages (per-recipient inboxes),
//! per-device inbox cursors, and the dedupe table.
//!
//! The [`Store`] trait is deliberately small and synchronous. Writes come from
//! one thread only (the [`crate::pipeline`] writer), in batches: one
//! [`Store::commit`] is one transaction and one fsync, however many messages
//! it carries. Seq numbers are assigned by the writer before the commit, so a
//! backend only has to store what it is given; that keeps the SQLite and
//! in-memory backends (and a Redis one) interchangeable. Reads may come from
//! any thread (they run on tokio's blocking pool).

mod memory;
mod sqlite;

pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

/// What a stored entry of a room or an inbox is. Changes and receipts are
/// sequenced with the messages, so a replay from any seq delivers them in
/// order, and the same per-device cursors confirm them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    #[default]
    Message,
    /// The sender replaced the body of message `target` (seq or gid).
    Edit,
    /// The sender withdrew message `target`.
    Recall,
    /// Inbox only: `from` read the inbox owner's messages up to `target`
    /// (an inbox seq of `from`).
    Read,
}

impl Kind {
    /// The stored code (SQLite column `kind`).
    pub fn code(self) -> i64 {
        match self {
            Kind::Message => 0,
            Kind::Edit => 1,
            Kind::Recall => 2,
            Kind::Read => 3,
        }
    }

    pub fn from_code(code: i64) -> Kind {
        match code {
            1 => Kind::Edit,
            2 => Kind::Recall,
            3 => Kind::Read,
            _ => Kind::Message,
        }
    }
}

/// A room entry as stored: a message, or a change of one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomRecord {
    pub room: String,
    pub seq: u64,
    pub from: String,
    pub ts: u64,
    /// The body's JSON text, exactly as the sender wrote it (current state:
    /// `null` once recalled).
    pub body: String,
    pub kind: Kind,
    /// Edit/recall: the seq of the message changed.
    pub target: u64,
    /// A message's last edit time (0: never edited).
    pub edited: u64,
    /// When a message was recalled (0: it was not).
    pub recalled: u64,
    /// Not stored: the connection that gets the ack instead of this entry
    /// (cluster mode announces it with the entry, so the node holding
    /// that connection skips it).
    pub sender: Option<u64>,
}

/// An inbox entry as stored: `seq` is the recipient's inbox seq, `gid` a
/// store-wide id that orders a conversation (both directions).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectRecord {
    pub gid: u64,
    pub to: String,
    pub seq: u64,
    pub from: String,
    pub ts: u64,
    pub body: String,
    pub kind: Kind,
    /// Edit/recall: the gid of the message changed; read: the `upto`.
    pub target: u64,
    pub edited: u64,
    pub recalled: u64,
    /// Not stored: as [`RoomRecord::sender`].
    pub sender: Option<u64>,
}

/// The message an edit or recall changes in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Original {
    Room {
        room: String,
        seq: u64,
    },
    /// `to`: the recipient, whose inbox holds it.
    Direct {
        to: String,
        gid: u64,
    },
}

/// What a repeated command id maps to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DedupeRecord {
    pub user: String,
    /// The raw JSON of the client's `id`.
    pub id: String,
    /// `room:NAME` or `user:NAME`: the target of the original command.
    pub target: String,
    pub seq: u64,
    pub ts: u64,
}

/// One write of a batch.
#[derive(Clone, Debug)]
pub enum Write {
    Room(RoomRecord),
    Direct(DirectRecord),
    Dedupe(DedupeRecord),
    /// A device confirmed its inbox up to `upto`. A cursor never moves
    /// back: a lower `upto` than the stored one is ignored.
    Cursor {
        user: String,
        device: String,
        upto: u64,
    },
    /// Retention by count: drop the room's messages with `seq <= upto`.
    TrimRoom {
        room: String,
        upto: u64,
    },
    /// Retention by count: drop the inbox entries with `seq <= upto`.
    TrimInbox {
        user: String,
        upto: u64,
    },
    /// Forget an idle room: its counter and any message still held (the
    /// writer forgets only rooms whose messages all expired). Comes with a
    /// [`Write::RoomFloor`] covering its last seq, so a seq is never reused.
    ForgetRoom {
        room: String,
    },
    /// Forget an idle inbox: its counter, any entry still held, and the
    /// cursors of every device of `user`.
    ForgetInbox {
        user: String,
    },
    /// Change a stored message in place: a new body (edit, `edited = ts`),
    /// or none (recall: the body becomes `null`, `recalled = ts`, and so
    /// does the body of every `edit` entry of it: a recall erases every
    /// version). A message no longer held is left alone.
    Amend {
        original: Original,
        body: Option<String>,
        ts: u64,
    },
    /// `user` read conversation `key` (`room:NAME` or `user:PEER`) up to
    /// `upto`. Never moves back.
    ReadPosition {
        user: String,
        key: String,
        upto: u64,
    },
    /// Raise a seq floor (never lowers it): a room or inbox without a
    /// counter whose name falls in `bucket` continues above `value`.
    RoomFloor {
        bucket: u32,
        value: u64,
    },
    InboxFloor {
        bucket: u32,
        value: u64,
    },
}

/// Device cursors kept per user: a `received` from yet another device drops
/// the cursor that is furthest behind (that device gets its backlog again).
/// Device names are the client's choice, so without a bound one user could
/// grow the table without end. Enforced by every backend at commit.
pub const MAX_DEVICE_CURSORS: usize = 64;

/// Unread counts stop at this (an app shows "999+" anyway); what a count
/// reads is bounded by the messages held (`--retention-count`).
pub const MAX_UNREAD: u64 = 1000;

/// A room's or inbox's counter as recovered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counter {
    pub name: String,
    /// The last seq ever committed.
    pub seq: u64,
    /// `ts` of the newest message still held, 0 if none: the writer
    /// forgets the counter once that is older than `--retention-age`.
    pub last_ts: u64,
}

/// What the writer needs at start-up to continue the sequences.
#[derive(Default, Debug)]
pub struct Recovered {
    /// Every room counter not forgotten.
    pub rooms: Vec<Counter>,
    /// Every inbox counter not forgotten.
    pub inboxes: Vec<Counter>,
    /// Seq floors (bucket, value) left by forgotten rooms and inboxes.
    pub room_floors: Vec<(u32, u64)>,
    pub inbox_floors: Vec<(u32, u64)>,
    /// Highest direct-message gid.
    pub last_gid: u64,
    /// Dedupe entries newer than the requested cut-off.
    pub dedupe: Vec<DedupeRecord>,
}

/// How long messages are kept (enforced by the pipeline).
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// Messages kept per room (and per inbox).
    pub count: u64,
    /// Messages older than this (ms) are dropped.
    pub age_ms: u64,
}

/// Why a store operation failed, by what can be done about it. Each backend
/// maps its own errors to these kinds; the text is the backend's own
/// description (shown by `/readyz`, the HTTP API and start-up errors).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or written right now (an I/O error, a
    /// lock held elsewhere, a file that cannot be opened): a retry may work.
    #[error("{0}")]
    Unavailable(String),
    /// No space left: writes work again once space is freed.
    #[error("{0}")]
    Full(String),
    /// The stored data is damaged or is not a store at all: retrying will
    /// not help, an operator has to.
    #[error("{0}")]
    Corrupt(String),
    /// A failure that is a bug rather than the environment's doing: a query
    /// the backend rejected, unexpected data, a read task that panicked.
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub trait Store: Send + Sync + 'static {
    /// Reads what the writer needs to continue; dedupe entries newer than
    /// `dedupe_since` (ms).
    fn recover(&self, dedupe_since: u64) -> Result<Recovered>;

    /// Applies a batch atomically and durably (one transaction). A room or
    /// inbox seq that is already stored fails the whole batch.
    fn commit(&self, batch: &[Write]) -> Result<()>;

    /// Room messages with `after < seq`, oldest first, at most `limit`.
    fn room_after(&self, room: &str, after: u64, limit: usize) -> Result<Vec<RoomRecord>>;

    /// The newest `limit` room **messages** (no change records) with
    /// `seq < before`, oldest first, in their current state.
    fn room_before(&self, room: &str, before: u64, limit: usize) -> Result<Vec<RoomRecord>>;

    /// One room entry by seq, if held.
    fn room_entry(&self, room: &str, seq: u64) -> Result<Option<RoomRecord>>;

    /// One inbox entry by gid, if held.
    fn direct_entry(&self, gid: u64) -> Result<Option<DirectRecord>>;

    /// Oldest seq still held for the room, if any.
    fn room_oldest(&self, room: &str) -> Result<Option<u64>>;

    /// Inbox entries of `user` with `after < seq`, oldest first.
    fn inbox_after(&self, user: &str, after: u64, limit: usize) -> Result<Vec<DirectRecord>>;

    /// Oldest inbox seq still held for `user`, if any.
    fn inbox_oldest(&self, user: &str) -> Result<Option<u64>>;

    /// The newest `limit` **messages** (no change records or receipts)
    /// between `a` and `b` (both directions) with `gid < before`, oldest
    /// first, in their current state.
    fn conversation(
        &self,
        a: &str,
        b: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<DirectRecord>>;

    /// Inbox position a device confirmed (0 if none).
    fn cursor(&self, user: &str, device: &str) -> Result<u64>;

    /// `user`'s read position in conversation `key` (0 if none).
    fn read_position(&self, user: &str, key: &str) -> Result<u64>;

    /// Every read position of `user`: (`key`, `upto`).
    fn read_positions(&self, user: &str) -> Result<Vec<(String, u64)>>;

    /// The peers `user` exchanged messages with (either direction): the
    /// newest gid between them and its `ts`, at most `limit` peers, those
    /// with the newest messages (no bodies: a list is paged before any is
    /// read).
    fn peers(&self, user: &str, limit: usize) -> Result<Vec<(String, u64, u64)>>;

    /// The newest message (not a change record) of `room`: (seq, ts).
    fn room_last(&self, room: &str) -> Result<Option<(u64, u64)>>;

    /// The newest message from `peer` held in `user`'s inbox: its seq.
    fn last_from(&self, user: &str, peer: &str) -> Result<Option<u64>>;

    /// Messages (not recalled) from `peer` in `user`'s inbox with
    /// `seq > after`, counted up to [`MAX_UNREAD`].
    fn unread_direct(&self, user: &str, peer: &str, after: u64) -> Result<u64>;

    /// Messages (not recalled) of `room` with `seq > after` not sent by
    /// `user`, counted up to [`MAX_UNREAD`].
    fn unread_room(&self, room: &str, user: &str, after: u64) -> Result<u64>;

    /// Drops messages older than `older_than` (ms since the epoch) and
    /// dedupe entries older than `dedupe_before`. Called by the writer
    /// between batches (retention by count rides on [`Write::TrimRoom`]).
    fn trim(&self, older_than: u64, dedupe_before: u64) -> Result<()>;

    /// Cheap health probe for `/readyz`.
    fn check(&self) -> Result<()>;

    /// Whether the store, not the writer, assigns seqs and gids at commit
    /// (cluster mode: the counters are shared by every node, so a node's
    /// own counters are only a guess). The writer then takes the numbers
    /// from [`Store::commit_assigning`], leaves dedupe to the store, and
    /// delivers nothing itself: every node delivers what the store
    /// announces, in seq order.
    fn assigns_seqs(&self) -> bool {
        false
    }

    /// Commits like [`Store::commit`] and says, for each [`Write::Room`]
    /// and [`Write::Direct`] of the batch in order, what it became. A store
    /// that does not assign seqs stores them as given.
    ///
    /// A store that assigns seqs takes the seqs and gids of the batch as
    /// provisional: it numbers each entry on from its shared counter, keeps
    /// retention by count itself (ignoring [`Write::TrimRoom`] and
    /// [`Write::TrimInbox`]), and checks each entry's [`Write::Dedupe`]
    /// (the one naming the same target and provisional seq) before writing
    /// it: a repeated id writes nothing and answers
    /// [`Assigned::Duplicate`], and the [`Write::Amend`] that follows the
    /// entry is skipped.
    fn commit_assigning(&self, batch: &[Write]) -> Result<Vec<Assigned>> {
        self.commit(batch)?;
        Ok(batch
            .iter()
            .filter_map(|w| match w {
                Write::Room(r) => Some(Assigned::Stored {
                    seq: r.seq,
                    gid: 0,
                    reach: 0,
                }),
                Write::Direct(d) => Some(Assigned::Stored {
                    seq: d.seq,
                    gid: d.gid,
                    reach: 0,
                }),
                _ => None,
            })
            .collect())
    }
}

/// What [`Store::commit_assigning`] made of one room or inbox entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assigned {
    /// Stored under `seq` (and `gid`, for an inbox entry; 0 for a room).
    /// `reach`: a store shared by nodes counts the connections it goes to
    /// (room members, or the recipient's devices, on every node, but the
    /// sending connection): the ack's `delivered`. 0 from other stores.
    Stored { seq: u64, gid: u64, reach: u64 },
    /// Its id was seen before: nothing was written; `seq` is the
    /// original's.
    Duplicate { seq: u64 },
}
