//! Switchboard wire protocol: the JSON commands a client sends and the events
//! the server sends back. No I/O here; see `docs/PROTOCOL.md` for the contract.
//!
//! Decoding is deliberately two-step: first every known field is captured as
//! raw JSON ([`Envelope`]), then each command validates exactly the fields it
//! needs. That way a bad field still lets us echo the command's `id`, and the
//! message `body` travels through the server as the client's own bytes,
//! never re-parsed or re-serialized.

mod command;
mod event;
mod names;

pub use command::{
    decode_command, json_depth, peek_id, Command, CommandError, HistoryTarget, Id, Request,
    DEFAULT_HISTORY_LIMIT, MAX_BODY_DEPTH, MAX_HISTORY_LIMIT,
};
pub use event::*;
pub use names::{validate_device, validate_room, validate_user, MAX_ROOM_LEN, MAX_USER_LEN};

/// Error codes carried by `error` events (SPEC §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotJoined,
    NotFound,
    TooLarge,
    RateLimited,
    Unavailable,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotJoined,
        ErrorCode::NotFound,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

/// WebSocket close codes Switchboard uses (see `docs/PROTOCOL.md`).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const UNAUTHORIZED: u16 = 4001;
    pub const KICKED: u16 = 4003;
    pub const SLOW_CONSUMER: u16 = 4008;
    pub const HEARTBEAT_TIMEOUT: u16 = 4009;
}
