//! The JSON command decoder on arbitrary text: never panics, every error is
//! `bad_request` with a message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::{decode_command, ErrorCode};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match decode_command(text) {
        Ok(req) => {
            // The id, when there is one, is valid JSON we can echo.
            if let Some(id) = &req.id {
                assert!(!id.as_json().is_empty());
            }
        }
        Err(e) => {
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert!(!e.message.is_empty());
        }
    }
});
