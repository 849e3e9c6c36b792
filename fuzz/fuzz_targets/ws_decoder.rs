//! The WebSocket frame decoder on arbitrary bytes. The first two bytes pick
//! the configuration (max message size, permessage-deflate on/off, read size);
//! the rest is the stream from the client. Checks: no panic, errors are 1002,
//! 1007 or 1009, nothing returned exceeds the limit, text is UTF-8, and the
//! outcome does not depend on how the stream is split into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_ws::{BytesMut, Decoder, DeflateConfig, Message, ProtocolError};

const MAXES: [usize; 8] = [0, 1, 2, 125, 126, 1000, 65_536, 1 << 20];

fn run(
    bytes: &[u8],
    max: usize,
    deflate: bool,
    read: usize,
) -> (Vec<Message>, Option<ProtocolError>) {
    let mut d = Decoder::new(
        max,
        deflate.then_some(DeflateConfig {
            server_max_window_bits: 15,
            compress_min: 0,
        }),
    );
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in bytes.chunks(read.max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(m)) => {
                    match &m {
                        Message::Text(p) => {
                            assert!(p.len() <= max);
                            assert!(std::str::from_utf8(p).is_ok());
                        }
                        Message::Binary(p) => assert!(p.len() <= max),
                        Message::Ping(p) | Message::Pong(p) => assert!(p.len() <= 125.min(max)),
                        Message::Close(_) => {}
                    }
                    out.push(m);
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(matches!(e.code.as_u16(), 1002 | 1007 | 1009), "{e:?}");
                    return (out, Some(e));
                }
            }
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let [a, b, stream @ ..] = data else {
        return;
    };
    let max = MAXES[(a & 7) as usize];
    let deflate = a & 8 != 0;
    let read = *b as usize + 1;
    let whole = run(stream, max, deflate, usize::MAX);
    let split = run(stream, max, deflate, read);
    assert_eq!(whole, split, "outcome depends on the read size {read}");
});
