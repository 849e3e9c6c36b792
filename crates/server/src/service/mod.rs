//! The command layer: what a client or a backend may do, with every limit
//! and validation in one place. Every entry point calls this and nothing
//! below it: the `/ws` session ([`client::ClientSession`], fed by
//! `gateway::session`), the HTTP API (`gateway::api`), and any future
//! transport. A transport only decodes, names the caller, calls, and encodes
//! the answer.
//!
//! Where a message goes from here: [`Service::submit`] validates it and
//! queues it on the [`crate::pipeline`] (sequenced, stored, then fanned out
//! by the [`crate::hub`]); joins, leaves and presence go to the hub
//! directly; replays and history read the [`crate::store`].
//!
//! | command      | module       |
//! |--------------|--------------|
//! | publish/send | [`message`]  |
//! | join/leave/presence, room list | [`rooms`] |
//! | history      | [`history`]  |
//! | received/read/signal | [`inbox`] |
//! | edit/recall  | [`message`]  |
//! | conversations | [`conversations`] |
//! | hello/token/expiry | [`login`] |
//! | per-connection rate | [`rate`] |

pub mod client;
pub mod conversations;
pub mod history;
pub mod inbox;
pub mod login;
pub mod message;
pub mod rate;
pub mod replay;
pub mod rooms;

use std::sync::Arc;

use switchboard_protocol::{self as proto, ErrorCode, Id};

use crate::auth::Authenticator;
use crate::config::Config;
use crate::hub::{Conn, Hub};
use crate::pipeline::Pipeline;
use crate::store::Store;

pub use history::HistoryTarget;
pub use message::Destination;

/// The server's state as the commands see it. Shared (`Arc`) by every
/// connection and request.
pub struct Service {
    /// Every limit comes from here (see `docs/SECURITY.md`).
    pub config: Config,
    pub hub: Arc<Hub>,
    /// Read side of the store (replays, history); writes go through `pipeline`.
    pub store: Arc<dyn Store>,
    pub pipeline: Pipeline,
    pub auth: Box<dyn Authenticator>,
    /// Cluster mode (`--redis`): the node's view of the other nodes.
    pub cluster: Option<Cluster>,
    /// `--rate-limit` and `--rate-burst`, for every session's bucket.
    pub command_rate: rate::Rate,
    /// [`rate::SIGNAL_RATE`], for every session's signal bucket.
    pub signal_rate: rate::Rate,
    /// The device id "", shared by every session that names no device.
    pub no_device: Arc<str>,
    /// Keys each session's id (`welcome`'s `session`) from its
    /// connection's id: random per process.
    pub session_ids: std::hash::RandomState,
}

/// What cluster mode adds to a node: it follows the rooms and users with a
/// member here, and tells the other nodes what is not a stored entry.
pub struct Cluster {
    pub follower: Arc<crate::cluster::Follower>,
    pub bus: Arc<crate::cluster::Bus>,
    /// For the goodbye at shutdown.
    pub conn: crate::cluster::Link,
    /// Reports this node's presence; stopped at the goodbye.
    pub presence: Arc<crate::cluster::Presence>,
}

impl Cluster {
    /// Ends this node's presence at once (graceful shutdown), within
    /// `limit`.
    pub async fn retire(&self, limit: std::time::Duration) {
        self.presence.stop();
        let node = self.follower.node().to_owned();
        match tokio::time::timeout(limit, crate::cluster::presence::retire(&self.conn, &node)).await
        {
            Ok(Ok(())) => tracing::info!("cluster: presence retired"),
            Ok(Err(err)) => tracing::warn!(%err, "cluster: retiring presence failed"),
            Err(_) => tracing::warn!("cluster: retiring presence timed out"),
        }
    }
}

/// A refused command: sent back as an `error` event (WebSocket) or an HTTP
/// status with the same code and message (API).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Rejection {
        Rejection {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Rejection {
        Rejection::new(ErrorCode::BadRequest, message)
    }
}

/// An identified client connection issuing a command: its token's room
/// grants apply, room commands need membership, and replies are queued on
/// its connection.
#[derive(Clone, Copy)]
pub struct Client<'a> {
    pub conn: &'a Arc<Conn>,
    /// The user this connection was identified as (the connection's).
    user: &'a Arc<str>,
    /// The token's room grant: `None`, any room.
    pub rooms: Option<&'a [String]>,
    /// The device id inbox delivery is tracked by ("" when not given).
    pub device: &'a Arc<str>,
}

impl Client<'_> {
    /// The user this connection was identified as.
    pub fn user(&self) -> Arc<str> {
        self.user.clone()
    }

    /// Refuses a room the token does not allow.
    pub fn check_room_access(&self, room: &str) -> Result<(), Rejection> {
        if crate::auth::may_use(self.rooms, room) {
            Ok(())
        } else {
            Err(Rejection::new(
                ErrorCode::Forbidden,
                format!("your token does not allow room `{room}`"),
            ))
        }
    }
}

/// Who issues a command.
#[derive(Clone, Copy)]
pub enum Caller<'a> {
    /// A client connection.
    Client(Client<'a>),
    /// The backend, through the HTTP API (it holds the API key): any room,
    /// no membership, `from` as it says.
    Backend { from: &'a str },
}

fn not_joined(room: &str) -> Rejection {
    Rejection::new(ErrorCode::NotJoined, format!("not joined to room `{room}`"))
}

fn validate_name(
    check: fn(&str) -> Result<(), String>,
    value: &str,
    what: &str,
) -> Result<(), Rejection> {
    check(value).map_err(|m| {
        if what.is_empty() {
            Rejection::bad_request(m)
        } else {
            Rejection::bad_request(format!("{what}: {m}"))
        }
    })
}

impl Service {
    /// Most bytes of events one page reply (`history`, `conversations`)
    /// carries, less `envelope` for the reply around them: half of
    /// `--max-queue`, so [`Service::reply_page`] always finds room for it.
    pub fn page_bytes(&self, envelope: usize) -> usize {
        (self.config.max_queue / 2).saturating_sub(envelope)
    }

    /// Queues a page reply of up to half a queue (see [`Service::page_bytes`]):
    /// waits until the queue has room for it, as replays do, so a reader
    /// that keeps up is never cut off as a slow consumer.
    pub async fn reply_page(&self, conn: &Conn, frame: Vec<u8>) {
        if conn.queued_bytes() + frame.len() > conn.queue_limit() {
            conn.wait_for_room().await;
        }
        self.hub.reply(conn, frame);
    }

    /// Queues an `error` event (echoing the command's `id`) on `conn`, and
    /// counts it.
    pub fn send_error(&self, conn: &Conn, id: Option<&Id>, refusal: &Rejection) {
        self.hub.metrics.error(refusal.code);
        let event = proto::Error::new(id, refusal.code, &refusal.message);
        self.hub.reply(conn, proto::encode(&event));
    }
}
