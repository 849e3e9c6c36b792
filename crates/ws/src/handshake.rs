//! Opening-handshake helpers: `Sec-WebSocket-Accept` and permessage-deflate negotiation.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The GUID of RFC 6455 section 1.3.
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key` (surrounding whitespace is ignored).
pub fn accept_key(client_key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(client_key.trim_ascii());
    h.update(WS_GUID);
    STANDARD.encode(h.finalize())
}

/// Negotiated permessage-deflate parameters for one connection.
///
/// Both directions always run without context takeover (see [`negotiate_deflate`]), so the
/// only per-connection parameter left is the window the server compresses with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeflateConfig {
    /// window bits the server compresses with (9..=15)
    pub server_max_window_bits: u8,
    /// Payloads shorter than this are sent uncompressed, as are payloads that
    /// compression does not shrink; `0` compresses every message, even when
    /// that makes it larger (for clients that mishandle mixed frames). A
    /// server policy, not negotiated: [`negotiate_deflate`] sets
    /// [`COMPRESS_MIN`](crate::COMPRESS_MIN). It must be the same for every
    /// recipient of one [`SharedMessage`](crate::SharedMessage).
    pub compress_min: usize,
}

/// Given all `Sec-WebSocket-Extensions` header values of a request, pick the first acceptable
/// permessage-deflate offer.
///
/// Returns the config and the exact response header value, or `None` (no offer / none acceptable
/// means "no compression", never an error). The response always contains
/// `server_no_context_takeover` and `client_no_context_takeover` (RFC 7692 7.1.1.1 / 7.1.1.2 allow
/// the server to add both), so a compressed frame is valid for every recipient and no inflate /
/// deflate context is kept between messages. `server_max_window_bits=N` (9..=15) is echoed and used;
/// N=8 declines that offer (zlib cannot produce an 8-bit window). `client_max_window_bits` (with or
/// without value) is accepted but not echoed: we inflate with a 15-bit window, which handles any
/// client window. Offers with unknown or duplicate parameters or bad values are declined.
pub fn negotiate_deflate(header_values: &[&[u8]]) -> Option<(DeflateConfig, String)> {
    for value in header_values {
        for offer in split_outside_quotes(value, b',') {
            if let Some(bits) = evaluate_offer(offer) {
                let mut resp = String::from(
                    "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                );
                let server_bits = match bits {
                    Some(n) => {
                        resp.push_str("; server_max_window_bits=");
                        resp.push_str(&n.to_string());
                        n
                    }
                    None => 15,
                };
                return Some((
                    DeflateConfig {
                        server_max_window_bits: server_bits,
                        compress_min: crate::COMPRESS_MIN,
                    },
                    resp,
                ));
            }
        }
    }
    None
}

/// Checks one comma-separated offer. `None` = not acceptable (or not permessage-deflate);
/// `Some(server_max_window_bits)` = acceptable.
fn evaluate_offer(offer: &[u8]) -> Option<Option<u8>> {
    let mut parts = split_outside_quotes(offer, b';');
    let name = parts.next()?.trim_ascii();
    if !name.eq_ignore_ascii_case(b"permessage-deflate") {
        return None;
    }
    let mut seen_server_nct = false;
    let mut seen_client_nct = false;
    let mut seen_client_bits = false;
    let mut server_bits: Option<u8> = None;
    for param in parts {
        let param = param.trim_ascii();
        if param.is_empty() {
            continue; // tolerate "a;;b" and a trailing ';'
        }
        let (key, value) = match param.iter().position(|&b| b == b'=') {
            Some(i) => (
                param[..i].trim_ascii(),
                Some(unquote(param[i + 1..].trim_ascii())?),
            ),
            None => (param, None),
        };
        if key.eq_ignore_ascii_case(b"server_no_context_takeover") {
            if seen_server_nct || value.is_some() {
                return None;
            }
            seen_server_nct = true;
        } else if key.eq_ignore_ascii_case(b"client_no_context_takeover") {
            if seen_client_nct || value.is_some() {
                return None;
            }
            seen_client_nct = true;
        } else if key.eq_ignore_ascii_case(b"server_max_window_bits") {
            if server_bits.is_some() {
                return None;
            }
            let n = parse_window_bits(&value?)?;
            if n == 8 {
                return None; // zlib cannot compress with a 256-byte window
            }
            server_bits = Some(n);
        } else if key.eq_ignore_ascii_case(b"client_max_window_bits") {
            if seen_client_bits {
                return None;
            }
            if let Some(v) = value {
                parse_window_bits(&v)?;
            }
            seen_client_bits = true;
        } else {
            return None;
        }
    }
    Some(server_bits)
}

/// RFC 7692: a decimal integer 8..=15 without leading zeroes.
fn parse_window_bits(v: &[u8]) -> Option<u8> {
    match v {
        [b'8'] => Some(8),
        [b'9'] => Some(9),
        [b'1', d @ b'0'..=b'5'] => Some(10 + (d - b'0')),
        _ => None,
    }
}

/// A parameter value: token or quoted-string (with `\` escapes). `None` when malformed.
fn unquote(v: &[u8]) -> Option<Vec<u8>> {
    if v.first() != Some(&b'"') {
        if v.is_empty() || v.contains(&b'"') {
            return None;
        }
        return Some(v.to_vec());
    }
    let mut out = Vec::with_capacity(v.len());
    let mut i = 1;
    while i < v.len() {
        match v[i] {
            b'\\' => {
                out.push(*v.get(i + 1)?);
                i += 2;
            }
            b'"' => {
                // closing quote must be the last byte
                return if i == v.len() - 1 && !out.is_empty() {
                    Some(out)
                } else {
                    None
                };
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    None // unterminated
}

/// Splits at `sep` bytes that are not inside a quoted-string.
fn split_outside_quotes(s: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut in_quotes = false;
        let mut i = 0;
        while i < s.len() {
            let b = s[i];
            if in_quotes {
                if b == b'\\' {
                    i += 1;
                } else if b == b'"' {
                    in_quotes = false;
                }
            } else if b == b'"' {
                in_quotes = true;
            } else if b == sep {
                rest = Some(&s[i + 1..]);
                return Some(&s[..i]);
            }
            i += 1;
        }
        rest = None;
        Some(s)
    })
}
