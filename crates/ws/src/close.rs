//! Close status codes (RFC 6455 §7.4).

use std::fmt;

/// A close status code.
///
/// Every value is one a close frame may carry, except [`CloseCode::NO_STATUS`]
/// (1005), which stands for "the frame had no code" and is sent as a close
/// frame without payload. Values come from the named constants,
/// [`CloseCode::application`] (4000–4999) or [`CloseCode::from_wire`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CloseCode(u16);

impl CloseCode {
    pub const NORMAL: CloseCode = CloseCode(1000);
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// Never on the wire (RFC 6455 §7.4.1): the close frame carried no code.
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// Data inconsistent with the message type, e.g. text that is not UTF-8.
    pub const INVALID_DATA: CloseCode = CloseCode(1007);
    pub const POLICY: CloseCode = CloseCode(1008);
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    pub const INTERNAL: CloseCode = CloseCode(1011);
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);

    /// An application's own code (RFC 6455 §7.4.2: 4000–4999, private use).
    ///
    /// Meant for constants, where an out-of-range code fails the build.
    ///
    /// # Panics
    /// When `code` is outside 4000–4999.
    pub const fn application(code: u16) -> CloseCode {
        assert!(
            matches!(code, 4000..=4999),
            "application close codes are 4000-4999"
        );
        CloseCode(code)
    }

    /// Whether `code` may appear in a close frame: 1000–1003, 1007–1011, the
    /// IANA-registered 1012–1014, and the 3000–4999 ranges for libraries and
    /// applications. 1004–1006, 1015 and everything else below 3000 or above
    /// 4999 may not.
    pub const fn allowed_on_wire(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }

    /// The code of a received close frame; `None` when it may not appear on
    /// the wire (see [`CloseCode::allowed_on_wire`]).
    pub const fn from_wire(code: u16) -> Option<CloseCode> {
        if Self::allowed_on_wire(code) {
            Some(CloseCode(code))
        } else {
            None
        }
    }

    /// The numeric value, as sent in a close frame.
    pub const fn as_u16(self) -> u16 {
        self.0
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> u16 {
        code.0
    }
}

/// Compares with a numeric code, so tests and logs can name codes by number.
impl PartialEq<u16> for CloseCode {
    fn eq(&self, other: &u16) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
