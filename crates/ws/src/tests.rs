use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

use crate::*;

// ---------------------------------------------------------------- helpers

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Length encodings a client may use (non-minimal ones are legal).
#[derive(Clone, Copy)]
enum Len {
    Minimal,
    Force16,
    Force64,
}

fn client_frame_with(fin: bool, rsv: u8, opcode: u8, payload: &[u8], len: Len) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | (rsv << 4) | opcode];
    let n = payload.len();
    match (len, n) {
        (Len::Minimal, 0..=125) => out.push(0x80 | n as u8),
        (Len::Minimal, 126..=0xFFFF) | (Len::Force16, _) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

fn cframe(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame_with(fin, 0, opcode, payload, Len::Minimal)
}

/// RSV1 (compressed) client frame.
fn cframe_z(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame_with(fin, 0b100, opcode, payload, Len::Minimal)
}

fn dec() -> Decoder {
    Decoder::new(1 << 20, None)
}

fn dec_z() -> Decoder {
    Decoder::new(
        1 << 20,
        Some(DeflateConfig {
            server_max_window_bits: 15,
            compress_min: crate::COMPRESS_MIN,
        }),
    )
}

/// Decodes everything in `bytes` (fed at once) into messages.
fn decode_all(d: &mut Decoder, bytes: &[u8]) -> Result<Vec<Message>, ProtocolError> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(m) = d.decode(&mut buf)? {
        out.push(m);
    }
    assert!(buf.is_empty(), "left {} bytes", buf.len());
    Ok(out)
}

fn decode_err(d: &mut Decoder, bytes: &[u8]) -> CloseCode {
    let mut buf = BytesMut::from(bytes);
    loop {
        match d.decode(&mut buf) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("expected an error, decoder wants more input"),
            Err(e) => return e.code,
        }
    }
}

/// Reference raw-deflate compressor (client side): no context takeover, tail stripped.
fn client_deflate(data: &[u8], bits: u8, finish: bool) -> Vec<u8> {
    let mut c = Compress::new_with_window_bits(Compression::default(), false, bits);
    let mut out = Vec::with_capacity(data.len() + 1024);
    let flush = if finish {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    c.compress_vec(data, &mut out, flush).unwrap();
    assert_eq!(c.total_in() as usize, data.len());
    if !finish {
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
        out.truncate(out.len() - 4);
    }
    out
}

/// Reference inflater (client side) with the given window.
fn client_inflate(data: &[u8], bits: u8) -> Vec<u8> {
    let mut d = Decompress::new_with_window_bits(false, bits);
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 22);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    assert_eq!(d.total_in() as usize, input.len());
    out
}

/// Parses one unmasked server frame: (fin, rsv1, opcode, payload).
fn parse_server_frame(f: &[u8]) -> (bool, bool, u8, &[u8]) {
    let (len, hl) = match f[1] {
        126 => (u16::from_be_bytes([f[2], f[3]]) as usize, 4),
        127 => (
            u64::from_be_bytes(f[2..10].try_into().unwrap()) as usize,
            10,
        ),
        n => {
            assert!(n < 126, "server frames are unmasked");
            (n as usize, 2)
        }
    };
    assert_eq!(f.len(), hl + len, "one frame exactly");
    (f[0] & 0x80 != 0, f[0] & 0x40 != 0, f[0] & 0x0f, &f[hl..])
}

/// Deterministic pseudo-random bytes (incompressible).
fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// Compressible text.
fn text(n: usize) -> Vec<u8> {
    let words = [
        "switchboard ",
        "message ",
        "channel ",
        "héllo ",
        "wörld ",
        "ﬁ ",
        "🚀 ",
        "42 ",
    ];
    let mut s = Vec::with_capacity(n + 8);
    let mut i = 0u64;
    while s.len() < n {
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s.extend_from_slice(words[(i >> 59) as usize % words.len()].as_bytes());
    }
    // cut on a char boundary
    let mut end = n;
    while std::str::from_utf8(&s[..end]).is_err() {
        end -= 1;
    }
    s.truncate(end);
    s
}

// ---------------------------------------------------------------- handshake

#[test]
fn accept_key_rfc_example() {
    assert_eq!(
        accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    assert_eq!(
        accept_key(b" dGhlIHNhbXBsZSBub25jZQ== "),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

const SAMPLE_KEY: &[u8] = b"dGhlIHNhbXBsZSBub25jZQ==";

/// A valid upgrade request (RFC 6455 §1.3's sample key, no extensions).
fn upgrade_request() -> UpgradeRequest<'static> {
    UpgradeRequest {
        method: "GET",
        upgrade: &[b"websocket"],
        connection: &[b"Upgrade"],
        http11: true,
        version: &[b"13"],
        key: &[SAMPLE_KEY],
        extensions: &[],
    }
}

#[test]
fn upgrade_accepts_the_rfc_sample() {
    let hs = validate_upgrade(&upgrade_request()).unwrap();
    assert_eq!(hs.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_eq!(hs.deflate, None);
}

#[test]
fn upgrade_accepts_token_lists_in_any_case() {
    let req = UpgradeRequest {
        upgrade: &[b"h2c", b" WebSocket "],
        connection: &[b"keep-alive, UPGRADE"],
        ..upgrade_request()
    };
    assert_eq!(
        validate_upgrade(&req).unwrap().accept,
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[test]
fn upgrade_negotiates_deflate() {
    let req = UpgradeRequest {
        extensions: &[b"x-foo", b"permessage-deflate; server_max_window_bits=10"],
        ..upgrade_request()
    };
    let (config, value) = validate_upgrade(&req).unwrap().deflate.unwrap();
    assert_eq!(config.server_max_window_bits, 10);
    assert_eq!(value, format!("{BASE}; server_max_window_bits=10"));
}

#[test]
fn upgrade_rejects_non_websocket_requests() {
    let rejected = |req: UpgradeRequest<'_>| validate_upgrade(&req).unwrap_err();
    for req in [
        UpgradeRequest {
            method: "POST",
            ..upgrade_request()
        },
        UpgradeRequest {
            upgrade: &[],
            ..upgrade_request()
        },
        UpgradeRequest {
            upgrade: &[b"websockets"],
            ..upgrade_request()
        },
        // Not visible ASCII: the value counts as empty.
        UpgradeRequest {
            upgrade: &[b"websocket, \xff"],
            ..upgrade_request()
        },
    ] {
        assert_eq!(rejected(req), Rejection::NotUpgrade, "{req:?}");
    }
    let r = Rejection::NotUpgrade;
    assert_eq!(r.status(), 426);
    assert_eq!(
        r.message(),
        "this endpoint speaks WebSocket: send an Upgrade: websocket request"
    );
}

#[test]
fn upgrade_rejects_missing_connection_upgrade() {
    for connection in [&[][..], &[&b"keep-alive"[..]][..], &[&b"upgrades"[..]][..]] {
        let req = UpgradeRequest {
            connection,
            ..upgrade_request()
        };
        assert_eq!(
            validate_upgrade(&req),
            Err(Rejection::MissingConnectionUpgrade)
        );
    }
    let r = Rejection::MissingConnectionUpgrade;
    assert_eq!(r.status(), 400);
    assert_eq!(r.message(), "missing Connection: Upgrade");
}

#[test]
fn upgrade_rejects_other_versions() {
    for version in [&[][..], &[&b"8"[..]], &[&b" 13"[..]], &[&b"13, 8"[..]]] {
        let req = UpgradeRequest {
            version,
            ..upgrade_request()
        };
        assert_eq!(validate_upgrade(&req), Err(Rejection::UnsupportedVersion));
    }
    let r = Rejection::UnsupportedVersion;
    assert_eq!(r.status(), 426);
    assert_eq!(r.message(), "unsupported Sec-WebSocket-Version (need 13)");
    assert_eq!(SUPPORTED_VERSION, "13");
}

#[test]
fn upgrade_rejects_bad_keys() {
    for key in [
        &[][..],
        &[&b""[..]],
        &[&b"dGhlIHNhbXBsZSBub25jZQ="[..]],
        &[&b"dGhlIHNhbXBsZSBub25jZQ==="[..]],
        &[&b" dGhlIHNhbXBsZSBub25jZQ=="[..]],
        &[&b"dGhlIHNhbXBsZSBub25jZ-=="[..]],
        &[&b"dGhlIHNhbXBsZSBub25jZQAA"[..]],
    ] {
        let req = UpgradeRequest {
            key,
            ..upgrade_request()
        };
        assert_eq!(validate_upgrade(&req), Err(Rejection::BadKey), "{key:?}");
    }
    let r = Rejection::BadKey;
    assert_eq!(r.status(), 400);
    assert_eq!(r.message(), "missing or invalid Sec-WebSocket-Key");
}

#[test]
fn upgrade_checks_run_in_order() {
    // Every check fails: the first one is reported.
    let req = UpgradeRequest {
        method: "POST",
        upgrade: &[],
        connection: &[],
        http11: false,
        version: &[],
        key: &[],
        extensions: &[],
    };
    assert_eq!(validate_upgrade(&req), Err(Rejection::NotUpgrade));
    let req = UpgradeRequest {
        method: "GET",
        upgrade: &[b"websocket"],
        ..req
    };
    assert_eq!(validate_upgrade(&req), Err(Rejection::OldHttp));
    let req = UpgradeRequest {
        http11: true,
        ..req
    };
    assert_eq!(
        validate_upgrade(&req),
        Err(Rejection::MissingConnectionUpgrade)
    );
    let req = UpgradeRequest {
        connection: &[b"upgrade"],
        ..req
    };
    assert_eq!(validate_upgrade(&req), Err(Rejection::UnsupportedVersion));
    let req = UpgradeRequest {
        version: &[b"13"],
        ..req
    };
    assert_eq!(validate_upgrade(&req), Err(Rejection::BadKey));
}

/// RFC 6455 §4.1: the upgrade needs HTTP/1.1; §11.3.1 and §11.3.5: the key
/// and the version are sent once (two keys make the accept ambiguous).
#[test]
fn upgrade_rejects_http10_and_repeated_headers() {
    let old = UpgradeRequest {
        http11: false,
        ..upgrade_request()
    };
    assert_eq!(validate_upgrade(&old), Err(Rejection::OldHttp));
    assert_eq!(Rejection::OldHttp.status(), 400);
    let two_keys = UpgradeRequest {
        key: &[SAMPLE_KEY, SAMPLE_KEY],
        ..upgrade_request()
    };
    let two_versions = UpgradeRequest {
        version: &[b"13", b"13"],
        ..upgrade_request()
    };
    for req in [two_keys, two_versions] {
        assert_eq!(validate_upgrade(&req), Err(Rejection::RepeatedHeader));
    }
    assert_eq!(Rejection::RepeatedHeader.status(), 400);
}

const BASE: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

fn neg(values: &[&str]) -> Option<(u8, String)> {
    let v: Vec<&[u8]> = values.iter().map(|s| s.as_bytes()).collect();
    negotiate_deflate(&v).map(|(c, s)| (c.server_max_window_bits, s))
}

#[test]
fn negotiate_plain_and_params() {
    assert_eq!(neg(&["permessage-deflate"]), Some((15, BASE.into())));
    assert_eq!(neg(&["PerMessage-Deflate"]), Some((15, BASE.into())));
    assert_eq!(
        neg(&["permessage-deflate; client_max_window_bits"]),
        Some((15, BASE.into()))
    );
    assert_eq!(
        neg(&["permessage-deflate; client_max_window_bits=12; client_no_context_takeover; server_no_context_takeover"]),
        Some((15, BASE.into()))
    );
    assert_eq!(
        neg(&["permessage-deflate; server_max_window_bits=10"]),
        Some((10, format!("{BASE}; server_max_window_bits=10")))
    );
    assert_eq!(
        neg(&["permessage-deflate; server_max_window_bits=9; client_max_window_bits"]),
        Some((9, format!("{BASE}; server_max_window_bits=9")))
    );
    assert_eq!(
        neg(&["  permessage-deflate ;\tserver_max_window_bits = 11 ; client_max_window_bits  "]),
        Some((11, format!("{BASE}; server_max_window_bits=11")))
    );
    assert_eq!(
        neg(&["permessage-deflate; server_max_window_bits=\"12\""]),
        Some((12, format!("{BASE}; server_max_window_bits=12")))
    );
    assert_eq!(
        neg(&["permessage-deflate; client_max_window_bits=\"1\\5\""]),
        Some((15, BASE.into()))
    );
    // tolerated empty params
    assert_eq!(neg(&["permessage-deflate;"]), Some((15, BASE.into())));
}

#[test]
fn negotiate_multiple_offers() {
    // Chrome / Firefox style
    assert_eq!(
        neg(&["permessage-deflate; client_max_window_bits, x-webkit-deflate-frame"]),
        Some((15, BASE.into()))
    );
    assert_eq!(
        neg(&["x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=13"]),
        Some((13, format!("{BASE}; server_max_window_bits=13")))
    );
    // first acceptable wins
    assert_eq!(
        neg(&["permessage-deflate; server_max_window_bits=9, permessage-deflate"]),
        Some((9, format!("{BASE}; server_max_window_bits=9")))
    );
    // 8 is skipped
    assert_eq!(
        neg(&["permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=12"]),
        Some((12, format!("{BASE}; server_max_window_bits=12")))
    );
    assert_eq!(neg(&["permessage-deflate; server_max_window_bits=8"]), None);
    // invalid first offer, valid second one in another header line
    assert_eq!(
        neg(&[
            "permessage-deflate; foo=1",
            "permessage-deflate; server_no_context_takeover"
        ]),
        Some((15, BASE.into()))
    );
    // a comma inside a quoted string does not split offers
    assert_eq!(
        neg(&["foo; bar=\"a,permessage-deflate\", permessage-deflate; server_max_window_bits=14"]),
        Some((14, format!("{BASE}; server_max_window_bits=14")))
    );
    // Autobahn 13.7 style
    assert_eq!(
        neg(&["permessage-deflate; client_no_context_takeover; client_max_window_bits; server_max_window_bits=9, permessage-deflate; client_no_context_takeover; client_max_window_bits, permessage-deflate; client_max_window_bits"]),
        Some((9, format!("{BASE}; server_max_window_bits=9")))
    );
}

#[test]
fn negotiate_declines_invalid() {
    for bad in [
        "",
        ",",
        "x-webkit-deflate-frame",
        "permessage-deflatex",
        "permessage-deflate; foo",
        "permessage-deflate; foo=bar",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=abc",
        "permessage-deflate; server_max_window_bits=09",
        "permessage-deflate; server_max_window_bits=",
        "permessage-deflate; server_max_window_bits=\"\"",
        "permessage-deflate; server_max_window_bits=\"10",
        "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=x",
        "permessage-deflate; client_max_window_bits; client_max_window_bits",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover=\"\"",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
    ] {
        assert_eq!(neg(&[bad]), None, "{bad:?}");
    }
    assert_eq!(neg(&[]), None);
    // invalid offers are skipped, not fatal
    assert_eq!(
        neg(&["permessage-deflate; server_max_window_bits=16, permessage-deflate; client_max_window_bits=abc, permessage-deflate; server_max_window_bits=15"]),
        Some((15, format!("{BASE}; server_max_window_bits=15")))
    );
}

// ---------------------------------------------------------------- encoding

#[test]
fn encode_frame_length_encodings() {
    for (n, hl) in [
        (0, 2),
        (1, 2),
        (125, 2),
        (126, 4),
        (65535, 4),
        (65536, 10),
        (70000, 10),
    ] {
        let p = noise(n, n as u64 + 1);
        let f = encode_frame(OpCode::Binary, &p, false);
        assert_eq!(f.len(), hl + n);
        let (fin, rsv1, op, payload) = parse_server_frame(&f);
        assert!(fin && !rsv1);
        assert_eq!(op, 2);
        assert_eq!(payload, &p[..]);
    }
    let f = encode_frame(OpCode::Text, b"hi", true);
    assert_eq!(&f[..], &[0xC1, 2, b'h', b'i']);
    assert_eq!(&encode_frame(OpCode::Ping, b"", false)[..], &[0x89, 0]);
    assert_eq!(
        &encode_frame(OpCode::Pong, b"x", false)[..],
        &[0x8A, 1, b'x']
    );
}

#[test]
fn close_frame_truncates_on_char_boundary() {
    assert_eq!(
        &close_frame(CloseCode::NORMAL, "")[..],
        &[0x88, 2, 0x03, 0xE8]
    );
    let f = close_frame(CloseCode::GOING_AWAY, "bye");
    assert_eq!(&f[..], &[0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']);
    // 61 two-byte chars = 122 bytes + one 3-byte char would be 125 > 123
    let reason = format!("{}€", "é".repeat(61));
    let f = close_frame(CloseCode::application(4000), &reason);
    let (_, _, op, payload) = parse_server_frame(&f);
    assert_eq!(op, 8);
    assert_eq!(payload.len(), 2 + 122);
    assert!(std::str::from_utf8(&payload[2..]).is_ok());
    let f = close_frame(CloseCode::application(4000), &"a".repeat(300));
    assert_eq!(parse_server_frame(&f).3.len(), 125);
}

// ---------------------------------------------------------------- decoding

#[test]
fn decode_round_trip_all_length_encodings() {
    for n in [0usize, 1, 5, 125, 126, 127, 1000, 65535, 65536, 100_000] {
        for len in [Len::Minimal, Len::Force16, Len::Force64] {
            if matches!(len, Len::Force16) && n > 0xFFFF {
                continue;
            }
            let p = noise(n, 7 + n as u64);
            let mut d = dec();
            let msgs = decode_all(&mut d, &client_frame_with(true, 0, 2, &p, len)).unwrap();
            assert_eq!(msgs, vec![Message::Binary(Bytes::from(p.clone()))]);
            let t = text(n);
            let msgs = decode_all(&mut d, &client_frame_with(true, 0, 1, &t, len)).unwrap();
            assert_eq!(msgs, vec![Message::Text(Bytes::from(t))]);
        }
    }
}

#[test]
fn decode_is_zero_copy_for_single_frames() {
    let mut d = dec();
    let f = cframe(true, 2, &noise(1000, 3));
    let mut buf = BytesMut::from(&f[..]);
    let base = buf.as_ptr() as usize;
    let Some(Message::Binary(b)) = d.decode(&mut buf).unwrap() else {
        panic!()
    };
    assert_eq!(
        b.as_ptr() as usize,
        base + 8,
        "payload is a slice of the read buffer"
    );
}

#[test]
fn decode_control_frames() {
    let mut d = dec();
    let mut s = cframe(true, 9, b"ping!");
    s.extend(cframe(true, 10, b""));
    s.extend(cframe(true, 8, b""));
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice("bye ✓".as_bytes());
    s.extend(cframe(true, 8, &close));
    s.extend(cframe(true, 8, &4999u16.to_be_bytes()));
    s.extend(cframe(true, 9, &[7u8; 125]));
    assert_eq!(
        decode_all(&mut d, &s).unwrap(),
        vec![
            Message::Ping(Bytes::from_static(b"ping!")),
            Message::Pong(Bytes::new()),
            Message::Close(None),
            Message::Close(Some((CloseCode::NORMAL, "bye ✓".into()))),
            Message::Close(Some((CloseCode::application(4999), String::new()))),
            Message::Ping(Bytes::from(vec![7u8; 125])),
        ]
    );
}

#[test]
fn close_codes() {
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
        4000, 4999,
    ] {
        let mut d = dec();
        let m = decode_all(&mut d, &cframe(true, 8, &code.to_be_bytes())).unwrap();
        assert!(
            matches!(&m[..], [Message::Close(Some((c, r)))] if *c == code && r.is_empty()),
            "{code}: {m:?}"
        );
    }
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        assert_eq!(
            decode_err(&mut dec(), &cframe(true, 8, &code.to_be_bytes())),
            1002,
            "{code}"
        );
    }
    assert_eq!(decode_err(&mut dec(), &cframe(true, 8, &[0x03])), 1002);
    assert_eq!(
        decode_err(&mut dec(), &cframe(true, 8, &[0x03, 0xE8, 0xFF])),
        1007
    );
}

#[test]
fn close_code_wire_rule() {
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
        4000, 4999,
    ] {
        assert!(CloseCode::allowed_on_wire(code), "{code}");
        assert_eq!(
            CloseCode::from_wire(code).map(CloseCode::as_u16),
            Some(code)
        );
    }
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        assert!(!CloseCode::allowed_on_wire(code), "{code}");
        assert_eq!(CloseCode::from_wire(code), None, "{code}");
    }
}

#[test]
fn close_code_constants_and_conversions() {
    for (code, n) in [
        (CloseCode::NORMAL, 1000u16),
        (CloseCode::GOING_AWAY, 1001),
        (CloseCode::PROTOCOL_ERROR, 1002),
        (CloseCode::UNSUPPORTED_DATA, 1003),
        (CloseCode::INVALID_DATA, 1007),
        (CloseCode::POLICY, 1008),
        (CloseCode::TOO_BIG, 1009),
        (CloseCode::INTERNAL, 1011),
        (CloseCode::TRY_AGAIN_LATER, 1013),
        (CloseCode::application(4000), 4000),
        (CloseCode::application(4999), 4999),
    ] {
        assert_eq!(code.as_u16(), n);
        assert_eq!(u16::from(code), n);
        assert_eq!(code.to_string(), n.to_string());
        assert!(
            CloseCode::allowed_on_wire(n),
            "every named code may be sent: {n}"
        );
    }
    assert_eq!(CloseCode::NO_STATUS, 1005);
    assert!(!CloseCode::allowed_on_wire(CloseCode::NO_STATUS.as_u16()));
}

#[test]
#[should_panic(expected = "application close codes are 4000-4999")]
fn close_code_application_range() {
    let _ = CloseCode::application(std::hint::black_box(3999));
}

#[test]
fn close_frame_without_status() {
    assert_eq!(
        &close_frame(CloseCode::NO_STATUS, "ignored")[..],
        &[0x88, 0]
    );
}

#[test]
fn decode_fragmented_with_interleaved_control() {
    let mut d = dec();
    let t = "fragmented 🚀 message".as_bytes();
    // split inside the 4-byte rocket
    let (a, rest) = t.split_at(13);
    let (b, c) = rest.split_at(2);
    let mut s = cframe(false, 1, a);
    s.extend(cframe(true, 9, b"p1"));
    s.extend(cframe(false, 0, b));
    s.extend(cframe(true, 10, b"p2"));
    s.extend(cframe(false, 0, b""));
    s.extend(cframe(true, 0, c));
    s.extend(cframe(false, 2, b"bin"));
    s.extend(cframe(true, 0, b"ary"));
    s.extend(cframe(true, 1, b""));
    assert_eq!(
        decode_all(&mut d, &s).unwrap(),
        vec![
            Message::Ping(Bytes::from_static(b"p1")),
            Message::Pong(Bytes::from_static(b"p2")),
            Message::Text(Bytes::from(t.to_vec())),
            Message::Binary(Bytes::from_static(b"binary")),
            Message::Text(Bytes::new()),
        ]
    );
    assert!(!d.in_message());
}

#[test]
fn decode_byte_by_byte() {
    let big = text(70_000);
    let mut s = cframe(true, 1, b"hello");
    s.extend(cframe(false, 1, &big[..30_000]));
    s.extend(cframe(true, 9, b"ping"));
    s.extend(cframe(true, 0, &big[30_000..]));
    s.extend(cframe(true, 2, &noise(300, 1)));
    s.extend(client_frame_with(true, 0, 2, b"x", Len::Force64));
    s.extend(cframe(true, 8, &1000u16.to_be_bytes()));
    let expected = decode_all(&mut dec(), &s).unwrap();
    assert_eq!(expected.len(), 6);
    assert_eq!(expected[2], Message::Text(Bytes::from(big)));

    let mut d = dec();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for &b in &s {
        buf.extend_from_slice(&[b]);
        while let Some(m) = d.decode(&mut buf).unwrap() {
            got.push(m);
        }
    }
    assert!(buf.is_empty());
    assert_eq!(got, expected);
}

#[test]
fn bytes_needed_hint() {
    let mut d = dec();
    let f = cframe(true, 2, &noise(70_000, 9));
    let mut buf = BytesMut::from(&f[..5]);
    assert_eq!(d.decode(&mut buf).unwrap(), None);
    assert_eq!(d.bytes_needed(), 0, "header incomplete");
    buf.extend_from_slice(&f[5..100]);
    assert_eq!(d.decode(&mut buf).unwrap(), None);
    assert_eq!(d.bytes_needed(), f.len());
    buf.extend_from_slice(&f[100..]);
    assert!(matches!(
        d.decode(&mut buf).unwrap(),
        Some(Message::Binary(_))
    ));
    assert_eq!(d.bytes_needed(), 0);
}

#[test]
fn protocol_errors() {
    let e = |bytes: Vec<u8>| decode_err(&mut dec(), &bytes);
    // unmasked
    assert_eq!(e(vec![0x81, 0x02, b'h', b'i']), 1002);
    // RSV2 / RSV3 / RSV1 without deflate
    assert_eq!(
        e(client_frame_with(true, 0b010, 1, b"x", Len::Minimal)),
        1002
    );
    assert_eq!(
        e(client_frame_with(true, 0b001, 1, b"x", Len::Minimal)),
        1002
    );
    assert_eq!(
        e(client_frame_with(true, 0b100, 1, b"x", Len::Minimal)),
        1002
    );
    // reserved opcodes
    for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        assert_eq!(e(cframe(true, op, b"")), 1002, "opcode {op}");
    }
    // fragmented control / too long control
    assert_eq!(e(cframe(false, 9, b"")), 1002);
    assert_eq!(e(cframe(true, 9, &[0u8; 126])), 1002);
    assert_eq!(e(cframe(true, 8, &[0x03, 0xE8].repeat(63))), 1002);
    // continuation without start; new data frame inside a message
    assert_eq!(e(cframe(true, 0, b"x")), 1002);
    assert_eq!(
        e([cframe(false, 1, b"a"), cframe(true, 1, b"b")].concat()),
        1002
    );
    assert_eq!(
        e([cframe(false, 2, b"a"), cframe(false, 2, b"b")].concat()),
        1002
    );
    // 64-bit length with the top bit set (header only)
    let mut f = vec![0x82, 0x80 | 127];
    f.extend_from_slice(&(1u64 << 63 | 5).to_be_bytes());
    assert_eq!(e(f), 1002);
    // invalid UTF-8 / truncated UTF-8
    assert_eq!(e(cframe(true, 1, b"a\xffb")), 1007);
    assert_eq!(e(cframe(true, 1, b"\xed\xa0\x80")), 1007); // surrogate
    assert_eq!(e(cframe(true, 1, b"ab\xe2\x82")), 1007);
    assert_eq!(
        e([cframe(false, 1, b"ab\xe2"), cframe(true, 0, b"\x82")].concat()),
        1007
    );
    assert_eq!(
        e([
            cframe(false, 1, b"ab\xe2"),
            cframe(true, 0, b"\x82\xac\xff")
        ]
        .concat()),
        1007
    );
}

#[test]
fn rsv1_rules_with_deflate() {
    let z = client_deflate(b"hello hello hello", 15, false);
    // RSV1 on a continuation frame
    let s = [cframe(false, 1, b"a"), cframe_z(true, 0, &z)].concat();
    assert_eq!(decode_err(&mut dec_z(), &s), 1002);
    // RSV1 on a control frame
    assert_eq!(decode_err(&mut dec_z(), &cframe_z(true, 9, b"")), 1002);
    // corrupt compressed data
    assert_eq!(
        decode_err(&mut dec_z(), &cframe_z(true, 2, &[0xff; 20])),
        1002
    );
}

#[test]
fn too_big() {
    // single frame beyond the limit fails from the header alone
    let mut d = Decoder::new(1000, None);
    let f = cframe(true, 2, &[0u8; 1001]);
    let mut buf = BytesMut::from(&f[..8]);
    assert_eq!(d.decode(&mut buf).unwrap_err().code, 1009);
    let mut d = Decoder::new(1000, None);
    assert_eq!(
        decode_all(&mut d, &cframe(true, 2, &[0u8; 1000]))
            .unwrap()
            .len(),
        1
    );
    let mut f = vec![0x82, 0x80 | 127];
    f.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
    assert_eq!(decode_err(&mut Decoder::new(1000, None), &f), 1009);
    // reassembled message beyond the limit
    let s = [cframe(false, 2, &[0u8; 600]), cframe(true, 0, &[0u8; 401])].concat();
    assert_eq!(decode_err(&mut Decoder::new(1000, None), &s), 1009);
    let s = [cframe(false, 2, &[0u8; 600]), cframe(true, 0, &[0u8; 400])].concat();
    assert_eq!(
        decode_all(&mut Decoder::new(1000, None), &s).unwrap().len(),
        1
    );
}

#[test]
fn utf8_fails_fast() {
    // invalid byte in the first fragment: fail before the message is complete
    let mut d = dec();
    let mut buf = BytesMut::from(
        &cframe(
            false,
            1,
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80",
        )[..],
    );
    assert_eq!(d.decode(&mut buf).unwrap_err().code, 1007);
    // ... and even inside a single frame that is still incomplete
    let mut d = dec();
    let f = cframe(
        true,
        1,
        &[
            b"valid text ".as_slice(),
            b"\xf4\x90\x80\x80",
            &[b'x'; 1000],
        ]
        .concat(),
    );
    let mut buf = BytesMut::from(&f[..20]);
    assert_eq!(d.decode(&mut buf).unwrap(), None);
    buf.extend_from_slice(&f[20..24]);
    assert_eq!(d.decode(&mut buf).unwrap_err().code, 1007);
    // an incomplete character at a fragment end is fine until the final fragment
    let mut d = dec();
    let mut buf = BytesMut::from(&cframe(false, 1, b"\xf0\x9f")[..]);
    assert_eq!(d.decode(&mut buf).unwrap(), None);
    buf.extend_from_slice(&cframe(false, 0, b"\x9a"));
    assert_eq!(d.decode(&mut buf).unwrap(), None);
    buf.extend_from_slice(&cframe(true, 0, b"\x80!"));
    assert_eq!(
        d.decode(&mut buf).unwrap(),
        Some(Message::Text(Bytes::from("🚀!")))
    );
}

#[test]
fn large_fragmented_text_is_linear() {
    // 4 MiB in 64-byte fragments: must be quick (O(n)), not O(n^2)
    let t = text(4 << 20);
    let mut s = Vec::with_capacity(t.len() * 2);
    let chunks: Vec<&[u8]> = t.chunks(64).collect();
    for (i, c) in chunks.iter().enumerate() {
        let op = if i == 0 { 1 } else { 0 };
        s.extend(cframe(i == chunks.len() - 1, op, c));
    }
    let start = std::time::Instant::now();
    let mut d = Decoder::new(16 << 20, None);
    let mut buf = BytesMut::new();
    let mut got = None;
    for piece in s.chunks(65536) {
        buf.extend_from_slice(piece);
        if let Some(m) = d.decode(&mut buf).unwrap() {
            got = Some(m);
        }
    }
    assert_eq!(got, Some(Message::Text(Bytes::from(t))));
    assert!(start.elapsed().as_secs() < 10);
}

// ---------------------------------------------------------------- compression

#[test]
fn compressed_round_trip() {
    for n in [0usize, 1, 100, 5000, 200_000] {
        let t = text(n);
        for finish in [false, true] {
            // single frame, text and binary
            let z = client_deflate(&t, 15, finish);
            let m = decode_all(&mut dec_z(), &cframe_z(true, 1, &z)).unwrap();
            assert_eq!(m, vec![Message::Text(Bytes::from(t.clone()))]);
            let m = decode_all(&mut dec_z(), &cframe_z(true, 2, &z)).unwrap();
            assert_eq!(m, vec![Message::Binary(Bytes::from(t.clone()))]);
            // fragmented compressed message, with a ping in between, fed byte by byte
            let mut s = Vec::new();
            let pieces: Vec<&[u8]> = if z.is_empty() {
                vec![&[]]
            } else {
                z.chunks(z.len().div_ceil(3)).collect()
            };
            for (i, c) in pieces.iter().enumerate() {
                let fin = i == pieces.len() - 1;
                s.extend(if i == 0 {
                    cframe_z(fin, 1, c)
                } else {
                    cframe(fin, 0, c)
                });
                if i == 0 {
                    s.extend(cframe(true, 9, b"p"));
                }
            }
            let whole = decode_all(&mut dec_z(), &s).unwrap();
            let ping = Message::Ping(Bytes::from_static(b"p"));
            let msg = Message::Text(Bytes::from(t.clone()));
            let expected = if pieces.len() > 1 {
                vec![ping, msg]
            } else {
                vec![msg, ping]
            };
            assert_eq!(whole, expected);
            if n <= 5000 {
                let mut d = dec_z();
                let mut buf = BytesMut::new();
                let mut got = Vec::new();
                for &b in &s {
                    buf.extend_from_slice(&[b]);
                    while let Some(m) = d.decode(&mut buf).unwrap() {
                        got.push(m);
                    }
                }
                assert_eq!(got, whole);
            }
        }
    }
    // several messages on one decoder (thread-local inflater reused)
    let mut d = dec_z();
    for i in 0..20 {
        let t = text(1000 + i * 37);
        let m = decode_all(
            &mut d,
            &cframe_z(true, 1, &client_deflate(&t, 9 + (i % 7) as u8, false)),
        )
        .unwrap();
        assert_eq!(m, vec![Message::Text(Bytes::from(t))]);
    }
    // uncompressed messages still work on a deflate connection
    let m = decode_all(&mut dec_z(), &cframe(true, 1, b"plain")).unwrap();
    assert_eq!(m, vec![Message::Text(Bytes::from_static(b"plain"))]);
}

#[test]
fn compressed_invalid_utf8() {
    let z = client_deflate(b"abc\xff def", 15, false);
    assert_eq!(decode_err(&mut dec_z(), &cframe_z(true, 1, &z)), 1007);
    // fails at the first fragment already
    let z = client_deflate(
        &[b"abc\xc0\xaf".as_slice(), &text(10_000)].concat(),
        15,
        false,
    );
    let mut d = dec_z();
    let mut buf = BytesMut::from(&cframe_z(false, 1, &z[..z.len() / 2])[..]);
    assert_eq!(d.decode(&mut buf).unwrap_err().code, 1007);
    // truncated character at the end
    let z = client_deflate(b"abc\xe2\x82", 15, false);
    let s = [cframe_z(false, 1, &z[..2]), cframe(true, 0, &z[2..])].concat();
    assert_eq!(decode_err(&mut dec_z(), &s), 1007);
}

#[test]
fn decompression_bomb() {
    let zeros = vec![0u8; 16 << 20];
    let z = client_deflate(&zeros, 15, false);
    assert!(z.len() < 20_000);
    // single frame
    let mut d = Decoder::new(
        1 << 20,
        Some(DeflateConfig {
            server_max_window_bits: 15,
            compress_min: crate::COMPRESS_MIN,
        }),
    );
    assert_eq!(decode_err(&mut d, &cframe_z(true, 2, &z)), 1009);
    // fragmented: fails on the first fragment, before the rest arrives
    let mut d = Decoder::new(
        1 << 20,
        Some(DeflateConfig {
            server_max_window_bits: 15,
            compress_min: crate::COMPRESS_MIN,
        }),
    );
    let mut buf = BytesMut::from(&cframe_z(false, 2, &z[..z.len() / 2])[..]);
    assert_eq!(d.decode(&mut buf).unwrap_err().code, 1009);
    // exactly at the limit is fine
    let z = client_deflate(&zeros[..1 << 20], 15, false);
    let mut d = Decoder::new(
        1 << 20,
        Some(DeflateConfig {
            server_max_window_bits: 15,
            compress_min: crate::COMPRESS_MIN,
        }),
    );
    let m = decode_all(&mut d, &cframe_z(true, 2, &z)).unwrap();
    assert_eq!(
        m,
        vec![Message::Binary(Bytes::from(zeros[..1 << 20].to_vec()))]
    );
    let mut d = Decoder::new(
        (1 << 20) - 1,
        Some(DeflateConfig {
            server_max_window_bits: 15,
            compress_min: crate::COMPRESS_MIN,
        }),
    );
    assert_eq!(decode_err(&mut d, &cframe_z(true, 2, &z)), 1009);
}

#[test]
fn deflate_message_all_windows() {
    let t = text(100_000);
    for _round in 0..2 {
        for bits in 9..=15u8 {
            let z = deflate_message(&t, bits);
            assert!(z.len() < t.len() / 2);
            assert!(!z.ends_with(&[0, 0, 0xff, 0xff]));
            assert_eq!(client_inflate(&z, bits), t, "window {bits}");
        }
    }
    assert_eq!(client_inflate(&deflate_message(b"", 15), 15), b"");
    assert_eq!(client_inflate(&deflate_message(b"x", 9), 9), b"x");
    // decodable by our own decoder
    let z = deflate_message(&t, 12);
    let m = decode_all(&mut dec_z(), &cframe_z(true, 1, &z)).unwrap();
    assert_eq!(m, vec![Message::Text(Bytes::from(t))]);
}

// ---------------------------------------------------------------- SharedMessage

fn ptr(b: &Bytes) -> *const u8 {
    b.as_ptr()
}

#[test]
fn shared_message_variants_computed_once() {
    let t = text(50_000);
    let m = SharedMessage::new(OpCode::Text, Bytes::from(t.clone()));
    let plain = m.frame_for(None);
    assert_eq!(ptr(&plain), ptr(&m.frame_for(None)));
    assert_eq!(parse_server_frame(&plain), (true, false, 1, &t[..]));

    let cfg = |bits| {
        Some(DeflateConfig {
            server_max_window_bits: bits,
            compress_min: crate::COMPRESS_MIN,
        })
    };
    let mut seen = Vec::new();
    for bits in 9..=15u8 {
        let f1 = m.frame_for(cfg(bits));
        let f2 = m.frame_for(cfg(bits));
        assert_eq!(ptr(&f1), ptr(&f2), "window {bits} computed once");
        assert_ne!(ptr(&f1), ptr(&plain));
        let (fin, rsv1, op, z) = parse_server_frame(&f1);
        assert!(fin && rsv1);
        assert_eq!(op, 1);
        assert!(z.len() < t.len() / 2);
        assert_eq!(client_inflate(z, bits), t, "window {bits}");
        seen.push(ptr(&f1));
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 7, "one variant per window size");
    assert_eq!(ptr(&plain), ptr(&m.frame_for(None)));
}

#[test]
fn shared_message_small_and_incompressible() {
    let cfg = Some(DeflateConfig {
        server_max_window_bits: 15,
        compress_min: crate::COMPRESS_MIN,
    });
    // below COMPRESS_MIN: plain
    let m = SharedMessage::new(OpCode::Text, Bytes::from(vec![b'a'; COMPRESS_MIN - 1]));
    assert_eq!(ptr(&m.frame_for(cfg)), ptr(&m.frame_for(None)));
    // incompressible: plain
    let m = SharedMessage::new(OpCode::Binary, Bytes::from(noise(10_000, 5)));
    let f = m.frame_for(cfg);
    assert_eq!(ptr(&f), ptr(&m.frame_for(None)));
    assert!(!parse_server_frame(&f).1);
    // a payload that fits every window is compressed once for all windows
    let t = text(400);
    let m = SharedMessage::new(OpCode::Text, Bytes::from(t.clone()));
    let f9 = m.frame_for(Some(DeflateConfig {
        server_max_window_bits: 9,
        compress_min: crate::COMPRESS_MIN,
    }));
    let f15 = m.frame_for(cfg);
    assert_eq!(ptr(&f9), ptr(&f15));
    let (_, rsv1, _, z) = parse_server_frame(&f9);
    assert!(rsv1);
    assert_eq!(client_inflate(z, 9), t);
    // compressed at exactly COMPRESS_MIN when it helps
    let m = SharedMessage::new(OpCode::Text, Bytes::from(vec![b'a'; COMPRESS_MIN]));
    assert!(parse_server_frame(&m.frame_for(cfg)).1);
}

#[test]
fn shared_message_concurrent() {
    let m = std::sync::Arc::new(SharedMessage::new(
        OpCode::Binary,
        Bytes::from(text(30_000)),
    ));
    let cfg = Some(DeflateConfig {
        server_max_window_bits: 11,
        compress_min: crate::COMPRESS_MIN,
    });
    let ptrs: Vec<usize> = (0..4)
        .map(|_| {
            let m = m.clone();
            std::thread::spawn(move || m.frame_for(cfg).as_ptr() as usize)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert!(ptrs.iter().all(|&p| p == ptrs[0]));
}

#[test]
fn decoder_is_small_when_idle() {
    assert!(
        std::mem::size_of::<Decoder>() <= 48,
        "{}",
        std::mem::size_of::<Decoder>()
    );
}
