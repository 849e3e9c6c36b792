//! Server frame encoding.

use bytes::Bytes;

use crate::CloseCode;

/// WebSocket frame opcodes (RFC 6455 5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    /// The 4-bit wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Parses a 4-bit wire value; `None` for reserved opcodes.
    pub fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// Close, Ping or Pong.
    pub fn is_control(self) -> bool {
        self.as_u8() & 0x8 != 0
    }
}

/// Length of the header of an unmasked frame carrying `len` payload bytes.
#[inline]
pub(crate) fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= 0xFFFF {
        4
    } else {
        10
    }
}

/// Writes the unmasked FIN header into `out`, which must be exactly `header_len(len)` long.
#[inline]
pub(crate) fn write_header(out: &mut [u8], opcode: OpCode, len: usize, rsv1: bool) {
    out[0] = 0x80 | if rsv1 { 0x40 } else { 0 } | opcode.as_u8();
    match out.len() {
        2 => out[1] = len as u8,
        4 => {
            out[1] = 126;
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out[1] = 127;
            out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// Encode one unmasked server frame with FIN set. `rsv1` = payload is deflate-compressed.
///
/// Returns header and payload in one contiguous `Bytes`, so it can be queued to many sockets as-is.
pub fn encode_frame(opcode: OpCode, payload: &[u8], rsv1: bool) -> Bytes {
    debug_assert!(
        !opcode.is_control() || payload.len() <= 125,
        "control payload > 125"
    );
    let h = header_len(payload.len());
    let mut header = [0u8; 10];
    write_header(&mut header[..h], opcode, payload.len(), rsv1);
    let mut out = Vec::with_capacity(h + payload.len());
    out.extend_from_slice(&header[..h]);
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// Maximum close reason length: a control payload is at most 125 bytes, 2 of them the code.
pub const MAX_CLOSE_REASON: usize = 123;

/// A close frame with `code` and `reason` (reason truncated to 123 bytes on a char boundary).
/// [`CloseCode::NO_STATUS`] gives a close frame without payload (1005 must not be sent).
pub fn close_frame(code: CloseCode, reason: &str) -> Bytes {
    if code == CloseCode::NO_STATUS {
        return encode_frame(OpCode::Close, b"", false);
    }
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0u8; 125];
    payload[..2].copy_from_slice(&code.as_u16().to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    encode_frame(OpCode::Close, &payload[..2 + end], false)
}
