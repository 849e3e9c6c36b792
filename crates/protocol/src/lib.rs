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
    check_body_depth, decode_command, decode_id, peek_id, Command, CommandError, HistoryTarget, Id,
    Request, Target, DEFAULT_HISTORY_LIMIT, MAX_BODY_DEPTH, MAX_HISTORY_LIMIT, MAX_SIGNAL_BODY,
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

/// WebSocket close codes Switchboard uses (see `docs/PROTOCOL.md`): the RFC 6455 codes it sends
/// and its own application codes (4000-4999).
pub mod close {
    pub use switchboard_ws::CloseCode;

    pub const NORMAL: CloseCode = CloseCode::NORMAL;
    pub const GOING_AWAY: CloseCode = CloseCode::GOING_AWAY;
    pub const PROTOCOL_ERROR: CloseCode = CloseCode::PROTOCOL_ERROR;
    pub const INVALID_DATA: CloseCode = CloseCode::INVALID_DATA;
    pub const POLICY: CloseCode = CloseCode::POLICY;
    pub const TOO_BIG: CloseCode = CloseCode::TOO_BIG;
    pub const INTERNAL: CloseCode = CloseCode::INTERNAL;
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode::TRY_AGAIN_LATER;
    pub const UNAUTHORIZED: CloseCode = CloseCode::application(4001);
    pub const KICKED: CloseCode = CloseCode::application(4003);
    pub const SLOW_CONSUMER: CloseCode = CloseCode::application(4008);
    pub const HEARTBEAT_TIMEOUT: CloseCode = CloseCode::application(4009);

    #[cfg(test)]
    mod tests {
        use super::*;

        /// The numbers are the contract with clients (docs/PROTOCOL.md).
        #[test]
        fn wire_values() {
            for (code, n) in [
                (NORMAL, 1000),
                (GOING_AWAY, 1001),
                (PROTOCOL_ERROR, 1002),
                (INVALID_DATA, 1007),
                (POLICY, 1008),
                (TOO_BIG, 1009),
                (INTERNAL, 1011),
                (TRY_AGAIN_LATER, 1013),
                (UNAUTHORIZED, 4001),
                (KICKED, 4003),
                (SLOW_CONSUMER, 4008),
                (HEARTBEAT_TIMEOUT, 4009),
            ] {
                assert_eq!(code.as_u16(), n);
                assert_eq!(CloseCode::from_wire(n), Some(code), "{n} may be sent");
            }
        }
    }
}
