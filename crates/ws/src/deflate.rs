//! permessage-deflate (RFC 7692) compression and decompression, always without context takeover.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::{CloseCode, ProtocolError};

/// The 4 bytes an RFC 7692 sender strips from the end of a sync-flushed message (7.2.1) and the
/// receiver appends again before inflating (7.2.2).
pub(crate) const DEFLATE_TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// zlib level used for outgoing messages. With zlib-rs, level 3 compresses within ~3% of level 6
/// but up to twice as fast on large messages; level 1 (static Huffman only) is much worse on text.
/// Below ~1 KiB the per-message cost is dominated by resetting the state at every level >= 2.
pub const COMPRESSION_LEVEL: u32 = 3;

thread_local! {
    /// One compressor per window size 9..=15, created on first use and reset between messages.
    static DEFLATERS: RefCell<[Option<Compress>; 7]> = const { RefCell::new([const { None }; 7]) };
    /// A raw 15-bit inflater for single-frame messages, reset between messages.
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// Compress one whole message payload (no context takeover, raw deflate, the trailing
/// `00 00 ff ff` removed per RFC 7692 7.2.1). `window_bits` is clamped to 9..=15.
///
/// Uses a thread-local cached `flate2::Compress` per window size, reset between messages, so no
/// zlib state is allocated per message.
pub fn deflate_message(payload: &[u8], window_bits: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    deflate_append(payload, window_bits, &mut out, usize::MAX);
    out
}

/// Appends the compressed form of `payload` to `out`. Gives up (returns false, `out` holding
/// garbage past its original length) once more than `limit` compressed bytes were produced.
pub(crate) fn deflate_append(
    payload: &[u8],
    window_bits: u8,
    out: &mut Vec<u8>,
    limit: usize,
) -> bool {
    let bits = window_bits.clamp(9, 15);
    DEFLATERS.with(|cell| {
        let mut slots = cell.borrow_mut();
        let c = slots[(bits - 9) as usize].get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::new(COMPRESSION_LEVEL), false, bits)
        });
        c.reset();
        let start = out.len();
        let mut input = payload;
        loop {
            if out.capacity() - out.len() < 64 {
                let produced = out.len() - start;
                out.reserve(produced.max(payload.len() / 4).max(256));
            }
            let before = c.total_in();
            let status = c.compress_vec(input, out, FlushCompress::Sync);
            let used = (c.total_in() - before) as usize;
            input = &input[used..];
            if status.is_err() {
                // Cannot happen with a valid stream state; make sure the cached state is sane
                // for the next message and report failure.
                slots[(bits - 9) as usize] = None;
                return false;
            }
            if out.len() - start > limit {
                return false;
            }
            // The sync flush is complete once all input is consumed and zlib left output space.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        if out.len() - start >= 4 && out.ends_with(&DEFLATE_TAIL) {
            out.truncate(out.len() - 4);
        }
        true
    })
}

fn bad_data() -> ProtocolError {
    ProtocolError {
        code: CloseCode::PROTOCOL_ERROR,
        reason: "invalid compressed data",
    }
}

pub(crate) fn too_big() -> ProtocolError {
    ProtocolError {
        code: CloseCode::TOO_BIG,
        reason: "message too big",
    }
}

/// A fresh raw inflater with a 15-bit window (handles every client window size).
pub(crate) fn new_inflater() -> Decompress {
    Decompress::new_with_window_bits(false, 15)
}

/// Inflates `input` into `out`, failing with 1009 as soon as `out` would exceed `max` bytes and
/// with 1002 on corrupt data. Returns true once the deflate stream ended (a BFINAL block), after
/// which any remaining input is ignored.
pub(crate) fn inflate_into(
    d: &mut Decompress,
    mut input: &[u8],
    out: &mut Vec<u8>,
    max: usize,
) -> Result<bool, ProtocolError> {
    let limit = max.saturating_add(1);
    loop {
        if out.len() == out.capacity() {
            if out.len() >= limit {
                return Err(too_big());
            }
            let want = (out.capacity() * 2)
                .max(input.len() * 4)
                .max(1024)
                .min(limit);
            out.reserve_exact(want - out.len());
        }
        let in_before = d.total_in();
        let out_before = out.len();
        let status = d
            .decompress_vec(input, out, FlushDecompress::None)
            .map_err(|_| bad_data())?;
        let used = (d.total_in() - in_before) as usize;
        input = &input[used..];
        if out.len() > max {
            return Err(too_big());
        }
        if status == Status::StreamEnd {
            return Ok(true);
        }
        if input.is_empty() && out.len() < out.capacity() {
            return Ok(false);
        }
        if used == 0 && out.len() == out_before && out.len() < out.capacity() {
            // No progress although both input and output space are available.
            return Err(bad_data());
        }
    }
}

/// Inflates one complete single-frame message (`DEFLATE_TAIL` is appended here) with a cached
/// thread-local inflater.
pub(crate) fn inflate_message(compressed: &[u8], max: usize) -> Result<Vec<u8>, ProtocolError> {
    INFLATER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d = slot.get_or_insert_with(new_inflater);
        d.reset(false);
        let cap = compressed
            .len()
            .saturating_mul(3)
            .max(256)
            .min(max.saturating_add(1));
        let mut out = Vec::with_capacity(cap);
        let res = match inflate_into(d, compressed, &mut out, max) {
            Ok(true) => Ok(()),
            Ok(false) => inflate_into(d, &DEFLATE_TAIL, &mut out, max).map(|_| ()),
            Err(e) => Err(e),
        };
        if res.is_err() {
            // Drop a state that saw corrupt data rather than trusting reset() on it.
            *slot = None;
        }
        res.map(|()| out)
    })
}
