//! Incremental decoder for client-to-server frames.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};
use flate2::Decompress;

use crate::deflate::{inflate_into, inflate_message, new_inflater, too_big, DEFLATE_TAIL};
use crate::utf8::Utf8Stream;
use crate::{CloseCode, DeflateConfig};

/// Why a connection must be failed: close code (1002 protocol error, 1007 invalid UTF-8,
/// 1009 too big) and a short reason. Send `close_frame(code, reason)` and close the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: CloseCode,
    pub reason: &'static str,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "websocket protocol error {}: {}", self.code, self.reason)
    }
}

impl std::error::Error for ProtocolError {}

const fn proto(reason: &'static str) -> ProtocolError {
    ProtocolError {
        code: CloseCode::PROTOCOL_ERROR,
        reason,
    }
}

const fn invalid_utf8() -> ProtocolError {
    ProtocolError {
        code: CloseCode::INVALID_DATA,
        reason: "invalid UTF-8",
    }
}

/// A complete message (or control frame) received from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// Whole message, UTF-8 validated, decompressed.
    Text(Bytes),
    /// Whole message, decompressed.
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    /// Close frame received. `None` = no status code. The payload was validated (code allowed
    /// by [`CloseCode::allowed_on_wire`], reason valid UTF-8, length != 1), else
    /// ProtocolError 1002 / 1007.
    Close(Option<(CloseCode, String)>),
}

/// A fragmented data message in progress (allocated only while one is).
struct Partial {
    text: bool,
    /// `Some` for a compressed message; dropped with the message (no context takeover).
    inflater: Option<Decompress>,
    /// The deflate stream signalled its end (BFINAL); further compressed input is ignored.
    stream_ended: bool,
    /// Reassembled (and, if compressed, already inflated) payload.
    data: Vec<u8>,
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug)]
struct Header {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    header_len: usize,
    payload_len: usize,
    mask: [u8; 4],
}

/// Incremental decoder for client->server frames of one connection.
///
/// Small when idle (no heap allocation while no fragmented message is in progress). The same
/// `BytesMut` read buffer must be passed to every call, with new bytes only appended at its end:
/// the decoder unmasks (and, for text, validates) the partially received frame at the front of
/// the buffer in place, remembering how far it got, so a large frame that arrives in many reads
/// is processed in O(n) and invalid UTF-8 is detected before the frame is complete.
///
/// After an error the connection must be failed; the decoder state is then unspecified.
pub struct Decoder {
    max_message: usize,
    deflate: bool,
    /// Payload bytes of the (incomplete) frame at the front of the buffer already unmasked.
    scanned: usize,
    /// Total size of the incomplete frame at the front of the buffer (0 = header incomplete).
    needed: usize,
    /// UTF-8 state of the text message being received.
    utf8: Utf8Stream,
    partial: Option<Box<Partial>>,
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("max_message", &self.max_message)
            .field("deflate", &self.deflate)
            .field("scanned", &self.scanned)
            .field("needed", &self.needed)
            .field("in_message", &self.partial.is_some())
            .finish()
    }
}

impl Decoder {
    /// `max_message`: max payload of one frame AND of one reassembled (and decompressed)
    /// message; beyond it decoding fails with 1009. `deflate`: the negotiated permessage-deflate
    /// config (`None` = RSV1 frames are a protocol error).
    pub fn new(max_message: usize, deflate: Option<DeflateConfig>) -> Self {
        Decoder {
            max_message,
            deflate: deflate.is_some(),
            scanned: 0,
            needed: 0,
            utf8: Utf8Stream::default(),
            partial: None,
        }
    }

    /// Total number of bytes `buf` must hold before the frame at its front is complete, as far as
    /// known after the last `decode` returned `Ok(None)` (0 = frame header not complete yet).
    /// Useful to reserve read-buffer space in one step for big frames:
    /// `buf.reserve(dec.bytes_needed().saturating_sub(buf.len()).max(4096))`.
    pub fn bytes_needed(&self) -> usize {
        self.needed
    }

    /// True while a fragmented data message is being reassembled.
    pub fn in_message(&self) -> bool {
        self.partial.is_some()
    }

    /// Consume complete frames from `buf` and return the next complete message, `Ok(None)` when
    /// more bytes are needed (the partial frame stays in `buf`). Call repeatedly until `Ok(None)`.
    /// Control frames arriving between fragments of a data message are returned immediately.
    /// Payloads are unmasked in place and returned as `buf.split_to(..).freeze()` slices
    /// (zero-copy for unfragmented, uncompressed messages).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
        loop {
            let Some(h) = self.parse_header(buf)? else {
                self.needed = 0;
                return Ok(None);
            };
            let total = h.header_len + h.payload_len;
            let avail = buf.len().min(total) - h.header_len;
            if avail > self.scanned {
                let chunk = &mut buf[h.header_len + self.scanned..h.header_len + avail];
                unmask(chunk, h.mask, self.scanned);
                if self.is_plain_text(&h) && !self.utf8.feed(chunk) {
                    return Err(invalid_utf8());
                }
                self.scanned = avail;
            }
            if avail < h.payload_len {
                self.needed = total;
                return Ok(None);
            }
            self.scanned = 0;
            self.needed = 0;
            buf.advance(h.header_len);
            let payload = buf.split_to(h.payload_len).freeze();
            if let Some(m) = self.on_frame(&h, payload)? {
                return Ok(Some(m));
            }
        }
    }

    /// Parses and validates the header at the front of `b` (`Ok(None)` = incomplete). Everything
    /// that can be judged from the bytes present is checked, so bad frames fail early.
    fn parse_header(&self, b: &[u8]) -> Result<Option<Header>, ProtocolError> {
        if b.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (b[0], b[1]);
        let fin = b0 & 0x80 != 0;
        let rsv1 = b0 & 0x40 != 0;
        if b0 & 0x30 != 0 {
            return Err(proto("reserved bits set"));
        }
        let opcode = b0 & 0x0F;
        let len7 = b1 & 0x7F;
        match opcode {
            0x8..=0xA => {
                if !fin {
                    return Err(proto("fragmented control frame"));
                }
                if len7 > 125 {
                    return Err(proto("control frame too long"));
                }
                if rsv1 {
                    return Err(proto("RSV1 set on a control frame"));
                }
            }
            0x0 => {
                if self.partial.is_none() {
                    return Err(proto("continuation frame without a message"));
                }
                if rsv1 {
                    return Err(proto("RSV1 set on a continuation frame"));
                }
            }
            0x1 | 0x2 => {
                if self.partial.is_some() {
                    return Err(proto("new message inside a fragmented message"));
                }
                if rsv1 && !self.deflate {
                    return Err(proto("RSV1 set without permessage-deflate"));
                }
            }
            _ => return Err(proto("reserved opcode")),
        }
        if b1 & 0x80 == 0 {
            return Err(proto("unmasked client frame"));
        }
        let (len, ext) = match len7 {
            126 => {
                if b.len() < 4 {
                    return Ok(None);
                }
                (u16::from_be_bytes([b[2], b[3]]) as u64, 2)
            }
            127 => {
                if b.len() < 10 {
                    return Ok(None);
                }
                let v = u64::from_be_bytes(b[2..10].try_into().unwrap());
                if v >> 63 != 0 {
                    return Err(proto("invalid frame length"));
                }
                (v, 8)
            }
            n => (n as u64, 0),
        };
        if len > self.max_message as u64 {
            return Err(too_big());
        }
        let len = len as usize;
        if let Some(p) = &self.partial {
            if opcode == 0 && p.inflater.is_none() && p.data.len() + len > self.max_message {
                return Err(too_big());
            }
        }
        let header_len = 2 + ext + 4;
        if b.len() < header_len {
            return Ok(None);
        }
        let mask = [b[2 + ext], b[3 + ext], b[4 + ext], b[5 + ext]];
        Ok(Some(Header {
            fin,
            rsv1,
            opcode,
            header_len,
            payload_len: len,
            mask,
        }))
    }

    /// Whether this frame's payload is (part of) an uncompressed text message, validated while
    /// it is unmasked.
    fn is_plain_text(&self, h: &Header) -> bool {
        match h.opcode {
            0x1 => !h.rsv1,
            0x0 => self
                .partial
                .as_ref()
                .is_some_and(|p| p.text && p.inflater.is_none()),
            _ => false,
        }
    }

    fn on_frame(&mut self, h: &Header, payload: Bytes) -> Result<Option<Message>, ProtocolError> {
        match h.opcode {
            0x8 => parse_close(&payload).map(Some),
            0x9 => Ok(Some(Message::Ping(payload))),
            0xA => Ok(Some(Message::Pong(payload))),
            0x1 | 0x2 => {
                let text = h.opcode == 0x1;
                if h.rsv1 {
                    if h.fin {
                        let data = inflate_message(&payload, self.max_message)?;
                        if text && std::str::from_utf8(&data).is_err() {
                            return Err(invalid_utf8());
                        }
                        return Ok(Some(data_message(text, Bytes::from(data))));
                    }
                    let mut p = Box::new(Partial {
                        text,
                        inflater: Some(new_inflater()),
                        stream_ended: false,
                        data: Vec::new(),
                    });
                    self.inflate_fragment(&mut p, &payload, false)?;
                    self.partial = Some(p);
                    Ok(None)
                } else if h.fin {
                    if text {
                        self.finish_text()?;
                    }
                    Ok(Some(data_message(text, payload)))
                } else {
                    let mut data =
                        Vec::with_capacity(payload.len().saturating_mul(2).min(self.max_message));
                    data.extend_from_slice(&payload);
                    self.partial = Some(Box::new(Partial {
                        text,
                        inflater: None,
                        stream_ended: false,
                        data,
                    }));
                    Ok(None)
                }
            }
            0x0 => {
                let Some(mut p) = self.partial.take() else {
                    return Err(proto("continuation frame without a message"));
                };
                if p.inflater.is_some() {
                    self.inflate_fragment(&mut p, &payload, h.fin)?;
                } else {
                    p.data.extend_from_slice(&payload);
                }
                if !h.fin {
                    self.partial = Some(p);
                    return Ok(None);
                }
                if p.text {
                    self.finish_text()?;
                }
                let Partial { text, data, .. } = *p;
                Ok(Some(data_message(text, Bytes::from(data))))
            }
            _ => unreachable!("opcode validated in parse_header"),
        }
    }

    /// Inflates one fragment of a compressed message (plus the RFC 7692 tail on the last one)
    /// and validates the new output of a text message.
    fn inflate_fragment(
        &mut self,
        p: &mut Partial,
        input: &[u8],
        fin: bool,
    ) -> Result<(), ProtocolError> {
        let start = p.data.len();
        let d = p.inflater.as_mut().expect("compressed message");
        if !p.stream_ended {
            p.stream_ended = inflate_into(d, input, &mut p.data, self.max_message)?;
        }
        if fin && !p.stream_ended {
            inflate_into(d, &DEFLATE_TAIL, &mut p.data, self.max_message)?;
        }
        if p.text && !self.utf8.feed(&p.data[start..]) {
            return Err(invalid_utf8());
        }
        if fin {
            // Free the inflate state right away, not only when the message is dropped.
            p.inflater = None;
        }
        Ok(())
    }

    fn finish_text(&mut self) -> Result<(), ProtocolError> {
        let complete = self.utf8.is_complete();
        self.utf8.reset();
        if complete {
            Ok(())
        } else {
            Err(invalid_utf8())
        }
    }
}

fn data_message(text: bool, payload: Bytes) -> Message {
    if text {
        Message::Text(payload)
    } else {
        Message::Binary(payload)
    }
}

fn parse_close(p: &[u8]) -> Result<Message, ProtocolError> {
    match p.len() {
        0 => Ok(Message::Close(None)),
        1 => Err(proto("close payload of 1 byte")),
        _ => {
            let Some(code) = CloseCode::from_wire(u16::from_be_bytes([p[0], p[1]])) else {
                return Err(proto("invalid close code"));
            };
            let reason = std::str::from_utf8(&p[2..]).map_err(|_| ProtocolError {
                code: CloseCode::INVALID_DATA,
                reason: "invalid UTF-8 in close reason",
            })?;
            Ok(Message::Close(Some((code, reason.to_owned()))))
        }
    }
}

/// XORs `data` with `mask`, where `data` starts at byte `offset` of the payload.
#[inline]
pub(crate) fn unmask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut m = mask;
    m.rotate_left(offset % 4);
    let m8 = [m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]];
    let m64 = u64::from_ne_bytes(m8);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().unwrap()) ^ m64;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i % 4];
    }
}
