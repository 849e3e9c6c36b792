//! Just enough Socket.IO v4 (engine.io protocol 4, WebSocket transport
//! only) to drive a Socket.IO server such as
//! `bench/baselines/socketio-broadcast.js`: every engine.io packet is one
//! text frame whose first byte is its type, and a Socket.IO packet is an
//! engine.io `4` (message) whose next byte is the Socket.IO type.
//!
//! ```text
//! server  0{"sid":…,"pingInterval":25000,…}   engine.io open
//! client  40                                  connect to namespace "/"
//! server  40{"sid":…}                         connected
//! server  2            client  3              engine.io ping / pong
//! client  42["msg","{\"t\":…}"]               an event (our publish)
//! server  42["msg","{\"t\":…}"]               the broadcast to the others
//! ```

use std::io::Write as _;

use super::common;
use super::wire::{self, OP_TEXT};

/// The WebSocket endpoint of a Socket.IO v4 server.
pub const PATH: &str = "/socket.io/?EIO=4&transport=websocket";

/// The event name we publish under.
const EVENT: &str = "msg";

/// What a text frame from the server means for the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do beyond any reply already queued (open, ping, events).
    Continue,
    /// `40{…}`: connected to the namespace, the connection is usable.
    Connected,
    /// The server refused or ended the session (`44…` connect error,
    /// `41` disconnect, engine.io `1` close).
    Closed(String),
}

/// Handles one text frame of the server: queues, as masked frames in `out`,
/// the namespace connect after the engine.io open and the pong for a ping.
pub fn on_packet(payload: &[u8], out: &mut Vec<u8>, mask: [u8; 4]) -> Step {
    match payload {
        [b'0', ..] => {
            wire::encode_frame(out, OP_TEXT, b"40", mask);
            Step::Continue
        }
        [b'2', rest @ ..] => {
            // Pong carries the ping's payload back (usually empty).
            let mut pong = Vec::with_capacity(1 + rest.len());
            pong.push(b'3');
            pong.extend_from_slice(rest);
            wire::encode_frame(out, OP_TEXT, &pong, mask);
            Step::Continue
        }
        [b'4', b'0', ..] => Step::Connected,
        [b'4', b'1', ..] => Step::Closed("socket.io disconnect".into()),
        [b'4', b'4', ..] => Step::Closed(format!(
            "socket.io connect error: {}",
            String::from_utf8_lossy(&payload[2..])
        )),
        [b'1', ..] => Step::Closed("engine.io close".into()),
        _ => Step::Continue,
    }
}

/// Writes the event `42["msg","<body>"]`, the body being the bench body
/// `{"t":T,"pad":"xx…"}` (`size` bytes) as a JSON string.
pub fn write_event(out: &mut Vec<u8>, t: u64, size: usize) {
    let _ = write!(out, "42[\"{EVENT}\",\"");
    let mut body = Vec::with_capacity(size + 32);
    common::write_body(&mut body, t, None, size);
    for &b in &body {
        // The body holds no backslashes or control characters.
        if b == b'"' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.extend_from_slice(b"\"]");
}

/// The stamp of a received event: the bench body inside the JSON string,
/// `{\"t\":T`.
pub fn stamp(payload: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"{\\\"t\\\":";
    if !payload.starts_with(b"42") {
        return None;
    }
    let at = payload.windows(KEY.len()).position(|w| w == KEY)?;
    let digits = &payload[at + KEY.len()..];
    let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&digits[..len]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_json() {
        let mut event = Vec::new();
        write_event(&mut event, 1_234_567, 100);
        let text = std::str::from_utf8(&event).unwrap();
        let array: serde_json::Value = serde_json::from_str(&text[2..]).unwrap();
        assert_eq!(array[0], "msg");
        let body: serde_json::Value = serde_json::from_str(array[1].as_str().unwrap()).unwrap();
        assert_eq!(body["t"], 1_234_567);
        assert_eq!(array[1].as_str().unwrap().len(), 100);
        assert_eq!(stamp(&event), Some(1_234_567));
        assert_eq!(stamp(b"40{\"sid\":\"x\"}"), None);
        assert_eq!(stamp(br#"42["msg","hi"]"#), None);
    }

    #[test]
    fn handshake_and_heartbeat_packets() {
        let mut out = Vec::new();
        let open = br#"0{"sid":"a","upgrades":[],"pingInterval":25000,"pingTimeout":20000}"#;
        assert_eq!(on_packet(open, &mut out, [1, 2, 3, 4]), Step::Continue);
        // One masked text frame of 2 bytes: "40".
        assert_eq!(&out[..2], &[0x81, 0x82]);
        let unmasked: Vec<u8> = out[6..]
            .iter()
            .zip([1, 2, 3, 4])
            .map(|(b, m)| b ^ m)
            .collect();
        assert_eq!(unmasked, b"40");
        out.clear();
        assert_eq!(on_packet(b"2", &mut out, [0; 4]), Step::Continue);
        assert_eq!(out, [0x81, 0x81, 0, 0, 0, 0, b'3']);
        assert_eq!(
            on_packet(br#"40{"sid":"b"}"#, &mut Vec::new(), [0; 4]),
            Step::Connected
        );
        assert!(matches!(
            on_packet(br#"44{"message":"no"}"#, &mut Vec::new(), [0; 4]),
            Step::Closed(_)
        ));
        assert_eq!(
            on_packet(br#"42["msg","x"]"#, &mut out, [0; 4]),
            Step::Continue
        );
    }
}
