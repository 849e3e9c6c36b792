//! Encode-once messages for fan-out.

use std::sync::OnceLock;

use bytes::Bytes;

use crate::deflate::deflate_append;
use crate::frame::{encode_frame, header_len, write_header, OpCode};
use crate::DeflateConfig;

/// Payloads shorter than this are never compressed (the RSV1 frame would rarely be smaller and
/// compression costs more than it saves).
pub const COMPRESS_MIN: usize = 64;

/// A message encoded once and framed lazily once per variant, shared by all recipients (put it
/// in an `Arc`). Variants: the plain frame, and a compressed frame per server window size 9..=15.
pub struct SharedMessage {
    opcode: OpCode,
    payload: Bytes,
    plain: OnceLock<Bytes>,
    /// Index = window bits - 9. Holds the plain frame when compression does not shrink it.
    deflated: [OnceLock<Bytes>; 7],
}

impl std::fmt::Debug for SharedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMessage")
            .field("opcode", &self.opcode)
            .field("len", &self.payload.len())
            .finish()
    }
}

impl SharedMessage {
    /// `opcode` should be Text or Binary (other opcodes are framed, never compressed).
    /// For Text the caller guarantees `payload` is valid UTF-8.
    pub fn new(opcode: OpCode, payload: Bytes) -> Self {
        SharedMessage {
            opcode,
            payload,
            plain: OnceLock::new(),
            deflated: Default::default(),
        }
    }

    pub fn opcode(&self) -> OpCode {
        self.opcode
    }

    /// The uncompressed message payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The uncompressed frame (computed at most once).
    pub fn plain_frame(&self) -> Bytes {
        self.plain
            .get_or_init(|| encode_frame(self.opcode, &self.payload, false))
            .clone()
    }

    /// The frame bytes for a recipient: the plain frame when `deflate` is `None`, the payload is
    /// shorter than its `compress_min` or compression does not shrink it (unless `compress_min`
    /// is 0); otherwise a compressed
    /// RSV1 frame made without context takeover for the recipient's window bits. Each variant is
    /// computed at most once (thread-safe); later calls are a `Bytes` clone.
    ///
    /// A payload no longer than 2^bits is compressed once for all such windows: its
    /// back-references cannot reach further than the payload length, so the 15-bit output is
    /// valid for every client window that covers the whole payload.
    pub fn frame_for(&self, deflate: Option<DeflateConfig>) -> Bytes {
        let Some(cfg) = deflate else {
            return self.plain_frame();
        };
        if self.payload.len() < cfg.compress_min
            || !matches!(self.opcode, OpCode::Text | OpCode::Binary)
        {
            return self.plain_frame();
        }
        let mut bits = cfg.server_max_window_bits.clamp(9, 15);
        if self.payload.len() <= 1usize << bits {
            bits = 15;
        }
        self.deflated[(bits - 9) as usize]
            .get_or_init(|| {
                compressed_frame(self.opcode, &self.payload, bits, cfg.compress_min == 0)
                    .unwrap_or_else(|| self.plain_frame())
            })
            .clone()
    }
}

/// Builds the RSV1 frame, or `None` when compression does not make the frame
/// smaller (unless `always`).
fn compressed_frame(opcode: OpCode, payload: &[u8], bits: u8, always: bool) -> Option<Bytes> {
    // Compress right behind 10 reserved bytes, then write the header just in front of the data,
    // so the frame is built without copying the compressed payload.
    const RESERVED: usize = 10;
    let mut buf = Vec::with_capacity(RESERVED + payload.len() / 2 + 64);
    buf.resize(RESERVED, 0);
    let limit = if always {
        usize::MAX
    } else {
        payload.len().saturating_sub(1)
    };
    if !deflate_append(payload, bits, &mut buf, limit) {
        return None;
    }
    let clen = buf.len() - RESERVED;
    let h = header_len(clen);
    if !always && clen + h >= header_len(payload.len()) + payload.len() {
        return None;
    }
    write_header(&mut buf[RESERVED - h..RESERVED], opcode, clen, true);
    // Do not keep a mostly empty allocation alive while the frame sits in send queues.
    if buf.capacity() - buf.len() > buf.len() / 4 + 64 {
        buf.shrink_to_fit();
    }
    Some(Bytes::from(buf).slice(RESERVED - h..))
}
