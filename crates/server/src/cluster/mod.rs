//! Cluster mode on Redis (in progress, not wired into `serve` yet; see
//! "Cluster mode" in docs/ARCHITECTURE.md).
//!
//! N nodes share one Redis, which owns what must be one for all of them:
//! the seqs, the history and the dedupe ids. A write is one call of a Redis
//! Function (`functions.lua`), which checks the dedupe id, takes the next
//! seq, appends to the room's stream and publishes to the other nodes in
//! one atomic step; a node sends a whole batch of them in one pipeline.
//!
//! - [`sequencer`]: loads the library and commits batches.
//! - [`durability`]: whether the Redis configuration backs "an ack means
//!   durable".
//! - [`keys`]: the key schema, shared with the tests.

pub mod bus;
pub mod durability;
pub mod follower;
pub mod presence;
pub mod sequencer;

pub use bus::{Bus, Origin};
pub use follower::Follower;
pub use presence::Presence;

pub use durability::{check_durability, Durability};
pub use sequencer::{ChannelMessage, Job, Outcome, Publish, RedisSequencer, Settings};

/// The Redis Function library, loaded by every node at connect.
pub const LIBRARY: &str = include_str!("functions.lua");

/// Key and channel names. Every key of a room carries the hash tag
/// `{r:ROOM}`, so one publish touches one hash slot (the dedupe key
/// included: its target is part of the dedupe identity, so it can live in
/// the room's slot). Names may contain anything but control characters
/// (`protocol::names`), so `\x1f` separates a name from what follows it
/// where a name is not the last part: two rooms' or users' keys can never
/// be the same string.
pub mod keys {
    /// The room's counter: HASH `seq` (last seq), `ts` (its ts).
    pub fn room_meta(room: &str) -> String {
        format!("sb:{{r:{room}}}:meta")
    }

    /// The room's history: STREAM, ID `<seq>-0`, field `e` = the event.
    pub fn room_log(room: &str) -> String {
        format!("sb:{{r:{room}}}:log")
    }

    /// The channel every publish to the room is announced on.
    pub fn room_channel(room: &str) -> String {
        format!("sb:{{r:{room}}}:ch")
    }

    /// Users online in the room across the cluster: HASH user → number
    /// of nodes holding a connection of theirs in it (`presence.lua`).
    pub fn room_users(room: &str) -> String {
        format!("sb:{{r:{room}}}:users")
    }

    /// A user's inbox counter: HASH `seq`, `ts`.
    pub fn user_meta(user: &str) -> String {
        format!("sb:{{u:{user}}}:meta")
    }

    /// The channel a user's inbox entries (and the copies for the sender's
    /// devices, and events for them) are announced on.
    pub fn user_channel(user: &str) -> String {
        format!("sb:{{u:{user}}}:ch")
    }

    /// A publish to `room` by `user` with command id `id` (raw JSON),
    /// holding the original's seq for the dedupe window.
    pub fn room_dedupe(room: &str, user: &str, id: &str) -> String {
        format!("sb:{{r:{room}}}:dd\x1f{user}\x1f{id}")
    }
}
