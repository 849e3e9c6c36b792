//! Cluster mode on Redis (`serve --redis`; see "Cluster mode" in
//! docs/ARCHITECTURE.md).
//!
//! N nodes share one Redis, which owns what must be one for all of them:
//! the seqs, the history and the dedupe ids. [`RedisStore`] is the
//! [`crate::store::Store`] of cluster mode: a batch is one call of a Redis
//! Function (`functions.lua`), which checks the dedupe ids, takes the next
//! seqs, stores the entries and publishes them to every node in one atomic
//! step.
//!
//! - [`store`]: the store (layout and record format documented there).
//! - [`follower`]: a node's listening side: follows the rooms and users
//!   with a member here and delivers their entries in seq order.
//! - [`bus`]: what a node tells the others that is not stored.
//! - [`presence`]: cluster-wide presence, leases and the reaper.
//! - [`durability`]: whether the Redis configuration backs "an ack means
//!   durable".
//! - [`keys`]: the key schema, shared with the tests.

pub mod bus;
pub mod durability;
pub mod follower;
pub mod link;
pub mod presence;
pub mod store;

pub use bus::{Bus, Origin};
pub use durability::{check_durability, Durability};
pub use follower::Follower;
pub use link::Link;
pub use presence::Presence;
pub use store::{RedisSettings, RedisStore};

/// A Redis URL fit for logs and errors: the credentials (between `://`
/// and `@`) are replaced by `…`.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}…{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The Redis Function library, loaded by every node at connect.
pub const LIBRARY: &str = include_str!("functions.lua");

/// Key and channel names (`functions.lua` builds the same ones). Every key
/// starts with `sb:`. A room's keys carry the hash tag `{r:ROOM}` and a
/// user's `{u:USER}`, so one name's keys stay together. Names may contain
/// anything but control characters (`protocol::names`), so `\x1f`
/// separates a name from what follows it where a name is not the last
/// part: two names' keys or fields can never be the same string.
#[cfg(test)]
mod tests {
    #[test]
    fn redacted_urls_hide_credentials_only() {
        use super::redacted;
        assert_eq!(redacted("redis://u:secret@h:6379/0"), "redis://…@h:6379/0");
        assert_eq!(redacted("redis://:p@ss@h"), "redis://…@h");
        assert_eq!(redacted("redis://h:6379"), "redis://h:6379");
    }
}

pub mod keys {
    /// The separator between names (a control character: no name has it).
    pub const SEP: char = '\x1f';

    /// The room's counter: HASH `seq` (last seq ever), `ts` (ts of the
    /// newest entry written).
    pub fn room_meta(room: &str) -> String {
        format!("sb:{{r:{room}}}:meta")
    }

    /// The room's entries: ZSET, score = seq, member = the record JSON.
    pub fn room_log(room: &str) -> String {
        format!("sb:{{r:{room}}}:log")
    }

    /// SET of the users holding a read position `room:ROOM` (for forgetting
    /// the room).
    pub fn room_readers(room: &str) -> String {
        format!("sb:{{r:{room}}}:readers")
    }

    /// The channel the room's new entries are announced on.
    pub fn room_channel(room: &str) -> String {
        format!("sb:{{r:{room}}}:ch")
    }

    /// Users online in the room across the cluster: HASH user → number
    /// of nodes holding a connection of theirs in it (`presence.lua`).
    pub fn room_users(room: &str) -> String {
        format!("sb:{{r:{room}}}:users")
    }

    /// The inbox counter of `user`: HASH `seq`, `ts`.
    pub fn user_meta(user: &str) -> String {
        format!("sb:{{u:{user}}}:meta")
    }

    /// The inbox of `user`: ZSET, score = inbox seq, member = record JSON.
    pub fn inbox(user: &str) -> String {
        format!("sb:{{u:{user}}}:inbox")
    }

    /// Device cursors of `user`: HASH device → upto.
    pub fn cursors(user: &str) -> String {
        format!("sb:{{u:{user}}}:cur")
    }

    /// Read positions of `user`: HASH key (`room:NAME`, `user:PEER`) → upto.
    pub fn reads(user: &str) -> String {
        format!("sb:{{u:{user}}}:reads")
    }

    /// The peers `user` has a conversation with: ZSET, member = peer,
    /// score = the newest gid written between them (the held newest is
    /// read from [`conversation`]).
    pub fn peers(user: &str) -> String {
        format!("sb:{{u:{user}}}:peers")
    }

    /// The channel the new entries of `user`'s inbox, and the messages
    /// `user` sent, are announced on.
    pub fn user_channel(user: &str) -> String {
        format!("sb:{{u:{user}}}:ch")
    }

    /// STRING: the data set's identity, set by the first node that opens
    /// it. A commit that finds another (or none: Redis lost its data)
    /// refuses to number anything.
    pub const EPOCH: &str = "sb:cluster";

    /// STRING, with an expiry: the node running retention this round.
    pub const TRIM_LEASE: &str = "sb:trim";

    /// STRING: the last gid ever given.
    pub const GID: &str = "sb:gid";

    /// HASH gid → `TO\x1fSEQ\x1fFROM`: where an inbox entry is held.
    pub const GIDS: &str = "sb:gids";

    /// The messages between `a` and `b` (both directions): ZSET, score =
    /// gid, member = `TO\x1fSEQ`.
    pub fn conversation(a: &str, b: &str) -> String {
        let (a, b) = if b < a { (b, a) } else { (a, b) };
        format!("sb:conv:{a}{SEP}{b}")
    }

    /// SET of the rooms with a counter.
    pub const ROOMS: &str = "sb:rooms";

    /// SET of the users with an inbox counter.
    pub const INBOXES: &str = "sb:inboxes";

    /// HASH bucket → seq floor of forgotten rooms.
    pub const ROOM_FLOORS: &str = "sb:floors:room";

    /// HASH bucket → seq floor of forgotten inboxes.
    pub const INBOX_FLOORS: &str = "sb:floors:inbox";

    /// HASH [`dedupe_field`] → `SEQ|TS`.
    pub const DEDUPE: &str = "sb:dd";

    /// ZSET, member = [`dedupe_field`], score = its ts (for expiry).
    pub const DEDUPE_TS: &str = "sb:dd:ts";

    /// The dedupe identity: `USER\x1fTARGET\x1fID` (`ID` is raw JSON, which
    /// cannot hold a raw control character either).
    pub fn dedupe_field(user: &str, target: &str, id: &str) -> String {
        format!("{user}{SEP}{target}{SEP}{id}")
    }
}
