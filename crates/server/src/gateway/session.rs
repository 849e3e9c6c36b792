//! A `/ws` connection speaking the JSON protocol: the WebSocket adapter of
//! [`ClientSession`]. It accepts text frames only, and turns a session's
//! [`Ending`] into a close code; everything else is the command layer's.

use std::sync::Arc;

use bytes::Bytes;
use switchboard_protocol::{close, ErrorCode};
use switchboard_ws::OpCode;
use tokio::time::Instant;

use super::socket::{CloseWith, Handler};
use crate::hub::Conn;
use crate::service::client::ClientSession;
use crate::service::login::Ending;
pub use crate::service::login::Start;
use crate::service::{Rejection, Service};

pub struct Session(ClientSession);

impl Session {
    pub fn new(
        service: Arc<Service>,
        conn: Arc<Conn>,
        start: Start,
        device: Option<String>,
    ) -> Session {
        let (session, started) = ClientSession::new(service, conn.clone(), start, device);
        if let Err(ending) = started {
            let close = close_for(ending);
            conn.close(close.code, close.reason, true);
        }
        Session(session)
    }
}

/// The close code and reason for each way a session ends (`docs/PROTOCOL.md`).
pub(super) fn close_for(ending: Ending) -> CloseWith {
    match ending {
        Ending::Unauthorized => CloseWith {
            code: close::UNAUTHORIZED,
            reason: "unauthorized",
        },
        Ending::TokenExpired => CloseWith {
            code: close::UNAUTHORIZED,
            reason: "token expired",
        },
        Ending::TooManyConnections => CloseWith {
            code: close::POLICY,
            reason: "too many connections for this user",
        },
        Ending::RateLimited => CloseWith {
            code: close::POLICY,
            reason: "rate limit exceeded",
        },
    }
}

impl Handler for Session {
    fn on_message(&mut self, opcode: OpCode, payload: Bytes) -> Result<(), CloseWith> {
        if !self.0.admit(&payload).map_err(close_for)? {
            return Ok(());
        }
        if opcode != OpCode::Text {
            self.0.reject(
                None,
                &Rejection::new(
                    ErrorCode::BadRequest,
                    "binary frames are not accepted on /ws: send JSON text frames",
                ),
            );
            return Ok(());
        }
        // The decoder validated UTF-8 already; this check is cheap and keeps
        // the code free of `unsafe`.
        let Ok(text) = std::str::from_utf8(&payload) else {
            return Err(CloseWith {
                code: close::INVALID_DATA,
                reason: "invalid UTF-8",
            });
        };
        self.0.handle(text).map_err(close_for)
    }

    fn deadline(&self) -> Option<Instant> {
        self.0.deadline()
    }

    fn on_deadline(&mut self) -> Result<(), CloseWith> {
        self.0.on_deadline().map_err(close_for)
    }

    fn on_close(&mut self) {
        self.0.close();
    }
}
