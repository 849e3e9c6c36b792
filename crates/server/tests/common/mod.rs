//! Helpers shared by the in-process hub and pipeline tests.

// Each test crate compiles its own copy and uses only some of it.
#![allow(dead_code)]

use std::collections::VecDeque;

use serde_json::Value;
use switchboard_server::hub::Conn;

/// The JSON event of one unmasked, uncompressed server text frame.
///
/// switchboard_ws's `Decoder` reads client frames (it rejects unmasked
/// ones), so the 2–10 byte header is parsed here.
pub fn event_of(frame: &[u8]) -> Value {
    assert!(frame.len() >= 2, "truncated frame");
    assert_eq!(
        frame[0], 0x81,
        "expected one final, uncompressed text frame"
    );
    let (header, len) = match frame[1] & 0x7f {
        126 => (4, u16::from_be_bytes([frame[2], frame[3]]) as usize),
        127 => {
            let mut len = [0u8; 8];
            len.copy_from_slice(&frame[2..10]);
            (10, u64::from_be_bytes(len) as usize)
        }
        n => (2, n as usize),
    };
    assert_eq!(frame.len(), header + len, "frame length mismatch");
    match serde_json::from_slice(&frame[header..]) {
        Ok(event) => event,
        Err(err) => panic!("frame is not JSON: {err}"),
    }
}

/// Everything queued on `conn` so far, as JSON events.
pub fn take_events(conn: &Conn) -> Vec<Value> {
    let mut batch = VecDeque::new();
    conn.take_batch(&mut batch);
    batch.iter().map(|frame| event_of(frame)).collect()
}

/// The events of type `kind`.
pub fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// The `seq` of every event of type `kind`, in order.
pub fn seqs(events: &[Value], kind: &str) -> Vec<u64> {
    of_type(events, kind)
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect()
}
