//! A small, fast WebSocket (RFC 6455) server-side codec with permessage-deflate (RFC 7692).
//!
//! * Handshake helpers: [`accept_key`], [`negotiate_deflate`] (always without context takeover in
//!   both directions, so no per-connection compression state is kept between messages).
//! * Outgoing frames: [`encode_frame`], [`close_frame`] and [`SharedMessage`], which frames a
//!   message once per variant (plain / compressed per window size) for all recipients.
//! * Incoming frames: [`Decoder`], an incremental, allocation-free-when-idle decoder that enforces
//!   the RFC 6455 rules and reports violations as a [`ProtocolError`] carrying the close code.
//!
//! Closing: on `Message::Close` reply with `close_frame(code, "")` (1000 when the client sent no
//! code), then close the TCP connection (the server closes first, RFC 6455 7.1.1). On a
//! `ProtocolError` send `close_frame(err.code, err.reason)` and close. Ignore (do not decode) any
//! further input after a close frame was sent or received.

pub use bytes::{Bytes, BytesMut};

mod decode;
mod deflate;
mod frame;
mod handshake;
mod shared;
mod utf8;

#[cfg(test)]
mod tests;

pub use decode::{close_code_allowed, Decoder, Message, ProtocolError};
pub use deflate::{deflate_message, COMPRESSION_LEVEL};
pub use frame::{close_frame, encode_frame, OpCode, MAX_CLOSE_REASON};
pub use handshake::{accept_key, negotiate_deflate, DeflateConfig};
pub use shared::{SharedMessage, COMPRESS_MIN};
