//! Streaming UTF-8 validation: every byte is examined once (plus at most 3 carried over), so
//! validating a message fragment by fragment stays O(n) and fails as soon as an invalid
//! sequence is seen.

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Utf8Stream {
    /// Bytes of an incomplete (but so far valid) character at the end of the data fed so far.
    pending: [u8; 4],
    pending_len: u8,
}

impl Utf8Stream {
    /// Validates `data` as the continuation of everything fed before. Returns false as soon
    /// as the stream contains an invalid sequence; an incomplete character at the end is kept.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> bool {
        if self.pending_len > 0 {
            while let Some((&b, rest)) = data.split_first() {
                let n = self.pending_len as usize;
                self.pending[n] = b;
                self.pending_len += 1;
                data = rest;
                match std::str::from_utf8(&self.pending[..n + 1]) {
                    Ok(_) => {
                        self.pending_len = 0;
                        break;
                    }
                    Err(e) if e.error_len().is_some() => return false,
                    Err(_) => {}
                }
            }
            if self.pending_len > 0 {
                return true; // data exhausted, character still incomplete
            }
        }
        match std::str::from_utf8(data) {
            Ok(_) => true,
            Err(e) => {
                if e.error_len().is_some() {
                    return false;
                }
                let tail = &data[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                true
            }
        }
    }

    /// True when the data fed so far ends on a character boundary.
    pub(crate) fn is_complete(&self) -> bool {
        self.pending_len == 0
    }

    pub(crate) fn reset(&mut self) {
        self.pending_len = 0;
    }
}
