//! The opening handshake (RFC 6455 §4.2): validating an upgrade request, `Sec-WebSocket-Accept`
//! and permessage-deflate negotiation. Plain inputs, no HTTP types: the server maps the result
//! onto its response.

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

/// The one `Sec-WebSocket-Version` we speak.
pub const SUPPORTED_VERSION: &str = "13";

/// The parts of an HTTP request the upgrade checks read. Header fields are given as all their
/// values; `Sec-WebSocket-Version` and `Sec-WebSocket-Key` must appear exactly once.
#[derive(Clone, Copy, Debug)]
pub struct UpgradeRequest<'a> {
    /// The request method, e.g. `GET`.
    pub method: &'a str,
    /// All `Upgrade` values.
    pub upgrade: &'a [&'a [u8]],
    /// All `Connection` values.
    pub connection: &'a [&'a [u8]],
    /// Whether the request is HTTP/1.1 or later (RFC 6455 §4.1: HTTP/1.0
    /// cannot upgrade).
    pub http11: bool,
    /// All `Sec-WebSocket-Version` values (exactly one is valid).
    pub version: &'a [&'a [u8]],
    /// All `Sec-WebSocket-Key` values (exactly one is valid).
    pub key: &'a [&'a [u8]],
    /// All `Sec-WebSocket-Extensions` values.
    pub extensions: &'a [&'a [u8]],
}

/// What to answer a valid upgrade request with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// The `Sec-WebSocket-Accept` value.
    pub accept: String,
    /// The negotiated permessage-deflate config and its `Sec-WebSocket-Extensions` value, if any.
    pub deflate: Option<(DeflateConfig, String)>,
}

/// Why an upgrade request is refused. The checks run in this order: [`Rejection::NotUpgrade`],
/// [`Rejection::OldHttp`], [`Rejection::MissingConnectionUpgrade`],
/// [`Rejection::RepeatedHeader`], [`Rejection::UnsupportedVersion`], [`Rejection::BadKey`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Not a GET with `Upgrade: websocket`.
    NotUpgrade,
    /// No `upgrade` token in `Connection`.
    MissingConnectionUpgrade,
    /// `Sec-WebSocket-Version` missing or not 13; answer with
    /// `Sec-WebSocket-Version: 13` ([`SUPPORTED_VERSION`]).
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` missing or not the base64 of 16 bytes.
    BadKey,
    /// An HTTP/1.0 request: upgrades need HTTP/1.1.
    OldHttp,
    /// `Sec-WebSocket-Key` or `Sec-WebSocket-Version` sent more than once
    /// (RFC 6455 §11.3.1, §11.3.5: each may appear once).
    RepeatedHeader,
}

impl Rejection {
    /// The HTTP status to answer with.
    pub fn status(self) -> u16 {
        match self {
            Rejection::NotUpgrade | Rejection::UnsupportedVersion => 426,
            Rejection::MissingConnectionUpgrade
            | Rejection::BadKey
            | Rejection::OldHttp
            | Rejection::RepeatedHeader => 400,
        }
    }

    /// The response body's text (without a trailing newline).
    pub fn message(self) -> &'static str {
        match self {
            Rejection::NotUpgrade => {
                "this endpoint speaks WebSocket: send an Upgrade: websocket request"
            }
            Rejection::MissingConnectionUpgrade => "missing Connection: Upgrade",
            Rejection::UnsupportedVersion => "unsupported Sec-WebSocket-Version (need 13)",
            Rejection::BadKey => "missing or invalid Sec-WebSocket-Key",
            Rejection::OldHttp => "WebSocket upgrades need HTTP/1.1",
            Rejection::RepeatedHeader => {
                "Sec-WebSocket-Key and Sec-WebSocket-Version may each appear only once"
            }
        }
    }
}

/// Checks an upgrade request (RFC 6455 §4.2.1) and, when it is valid, computes the accept key
/// and negotiates permessage-deflate.
pub fn validate_upgrade(req: &UpgradeRequest<'_>) -> Result<Handshake, Rejection> {
    if req.method != "GET" || !has_token(req.upgrade, b"websocket") {
        return Err(Rejection::NotUpgrade);
    }
    if !req.http11 {
        return Err(Rejection::OldHttp);
    }
    if !has_token(req.connection, b"upgrade") {
        return Err(Rejection::MissingConnectionUpgrade);
    }
    if req.version.len() > 1 || req.key.len() > 1 {
        return Err(Rejection::RepeatedHeader);
    }
    if req.version.first().copied() != Some(SUPPORTED_VERSION.as_bytes()) {
        return Err(Rejection::UnsupportedVersion);
    }
    let Some(key) = req.key.first().copied().filter(|k| valid_key(k)) else {
        return Err(Rejection::BadKey);
    };
    Ok(Handshake {
        accept: accept_key(key),
        deflate: negotiate_deflate(req.extensions),
    })
}

/// Whether a comma-separated header contains `token` (case-insensitive). A value with bytes
/// other than visible ASCII or tab counts as empty, as `http::HeaderValue::to_str` would.
fn has_token(values: &[&[u8]], token: &[u8]) -> bool {
    values.iter().any(|value| {
        value
            .iter()
            .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
            && value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    })
}

/// A Sec-WebSocket-Key is the base64 of 16 bytes: 24 characters ending in `==`.
fn valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
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
