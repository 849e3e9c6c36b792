//! A small, fast WebSocket (RFC 6455) server-side codec with permessage-deflate (RFC 7692).
//!
//! * Handshake: [`validate_upgrade`] checks an upgrade request and answers with the accept key
//!   and [`negotiate_deflate`]'s result (always without context takeover in both directions, so
//!   no per-connection compression state is kept between messages), or a [`Rejection`].
//! * Close codes: [`CloseCode`], with the rule for which codes may appear on the wire.
//! * Outgoing frames: [`encode_frame`], [`close_frame`] and [`SharedMessage`], which frames a
//!   message once per variant (plain / compressed per window size) for all recipients.
//! * Incoming frames: [`Decoder`], an incremental, allocation-free-when-idle decoder that enforces
//!   the RFC 6455 rules and reports violations as a [`ProtocolError`] carrying the close code.
//!
//! Closing: on `Message::Close` reply with `close_frame(code, "")` ([`CloseCode::NO_STATUS`],
//! a close without code, when the client sent none), then close the TCP connection (the server
//! closes first, RFC 6455 7.1.1). On a `ProtocolError` send `close_frame(err.code, err.reason)`
//! and close. Ignore (do not decode) any further input after a close frame was sent or received.

pub use bytes::{Bytes, BytesMut};

mod close;
mod decode;
mod deflate;
mod frame;
mod handshake;
mod shared;
mod utf8;

#[cfg(test)]
mod tests;

pub use close::CloseCode;
pub use decode::{Decoder, Message, ProtocolError};
pub use deflate::{deflate_message, COMPRESSION_LEVEL};
pub use frame::{close_frame, encode_frame, OpCode, MAX_CLOSE_REASON};
pub use handshake::{
    accept_key, negotiate_deflate, validate_upgrade, DeflateConfig, Handshake, Rejection,
    UpgradeRequest, SUPPORTED_VERSION,
};
pub use shared::{SharedMessage, COMPRESS_MIN};
