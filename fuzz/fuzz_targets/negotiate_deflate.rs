//! `Sec-WebSocket-Extensions` negotiation (and `Sec-WebSocket-Key`) on
//! arbitrary header bytes; NUL separates header values. An accepted offer is
//! answered without context takeover both ways and with a 9..=15-bit window.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_ws::{accept_key, negotiate_deflate};

fuzz_target!(|data: &[u8]| {
    let values: Vec<&[u8]> = data.split(|&b| b == 0).collect();
    if let Some((config, response)) = negotiate_deflate(&values) {
        assert!((9..=15).contains(&config.server_max_window_bits));
        assert!(response.starts_with("permessage-deflate"));
        assert!(response.contains("; server_no_context_takeover"));
        assert!(response.contains("; client_no_context_takeover"));
        match response.split_once("server_max_window_bits=") {
            Some((_, n)) => assert_eq!(n.parse::<u8>().ok(), Some(config.server_max_window_bits)),
            None => assert_eq!(config.server_max_window_bits, 15),
        }
    }
    assert_eq!(accept_key(data).len(), 28);
});
