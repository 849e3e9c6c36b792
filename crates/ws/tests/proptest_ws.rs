//! Property tests of everything in this crate that parses bytes from the
//! network: the frame [`Decoder`] (framing, fragmentation, UTF-8, close
//! payloads, permessage-deflate with its size limit) and the handshake:
//! [`validate_upgrade`], [`negotiate_deflate`] and [`accept_key`].
//!
//! Default: 256 cases per property (fast enough for `cargo test`). Longer runs:
//! `PROPTEST_CASES=100000 cargo test --release -p switchboard-ws --test proptest_ws`
//! (see docs/TESTING.md).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use proptest::prelude::*;
use proptest::sample::Index;
use switchboard_ws::{
    accept_key, negotiate_deflate, validate_upgrade, Bytes, BytesMut, CloseCode, Decoder,
    DeflateConfig, Message, OpCode, ProtocolError, Rejection, SharedMessage, UpgradeRequest,
};

// ---------------------------------------------------------------- client side (the reference)

const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// How a client frame writes its payload length. The decoder accepts
/// non-minimal encodings on data frames (as before this test existed); control
/// frames must use the 7-bit length (RFC 6455 5.5).
#[derive(Clone, Copy, Debug)]
enum LenEnc {
    Minimal,
    Force16,
    Force64,
}

/// Appends one frame: `b0` is the first header byte (FIN, RSV bits, opcode).
fn put_frame(out: &mut Vec<u8>, b0: u8, payload: &[u8], mask: Option<[u8; 4]>, len: LenEnc) {
    out.push(b0);
    let m = if mask.is_some() { 0x80 } else { 0 };
    let n = payload.len();
    match (len, n) {
        (LenEnc::Minimal, 0..=125) => out.push(m | n as u8),
        (LenEnc::Minimal | LenEnc::Force16, 0..=0xFFFF) => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
}

/// Raw deflate as a client would send it: no context takeover; a sync flush
/// with the `00 00 ff ff` tail stripped (RFC 7692 7.2.1), or a final block.
fn client_deflate(data: &[u8], level: u32, window_bits: u8, final_block: bool) -> Vec<u8> {
    let mut c = Compress::new_with_window_bits(Compression::new(level), false, window_bits);
    let mut out = Vec::with_capacity(data.len() + 64);
    let flush = if final_block {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    loop {
        let input = &data[c.total_in() as usize..];
        let status = c.compress_vec(input, &mut out, flush).unwrap();
        let consumed = c.total_in() as usize == data.len();
        let done = if final_block {
            status == Status::StreamEnd
        } else {
            consumed && out.len() < out.capacity()
        };
        if done {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    if !final_block {
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
    }
    out
}

/// A tiny deterministic generator for masks and length encodings, so a
/// stream is fully described by its (shrinkable) plan plus one seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn mask(&mut self) -> [u8; 4] {
        (self.next() as u32).to_ne_bytes()
    }
    fn len_enc(&mut self) -> LenEnc {
        match self.next() % 8 {
            0 => LenEnc::Force16,
            1 => LenEnc::Force64,
            _ => LenEnc::Minimal,
        }
    }
}

// ---------------------------------------------------------------- plans of valid streams

#[derive(Clone, Debug)]
struct Control {
    /// 0x9 ping or 0xA pong.
    opcode: u8,
    payload: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
struct Deflate {
    level: u32,
    window_bits: u8,
    final_block: bool,
}

#[derive(Clone, Debug)]
struct DataMsg {
    text: bool,
    payload: Vec<u8>,
    /// Compressed (RSV1 on the first frame) when the connection has deflate.
    deflate: Option<Deflate>,
    /// Where the (compressed) payload is cut into fragments.
    cuts: Vec<Index>,
    /// Control frame sent after fragment `i` (`i` < number of cuts).
    controls: Vec<Option<Control>>,
}

#[derive(Clone, Debug)]
enum Item {
    Data(DataMsg),
    Control(Control),
}

#[derive(Clone, Debug)]
struct Plan {
    items: Vec<Item>,
    /// A close frame at the end: code and reason.
    close: Option<Option<(CloseCode, String)>>,
    seed: u64,
}

fn arb_control() -> impl Strategy<Value = Control> {
    (
        prop::sample::select(vec![0x9u8, 0xA]),
        prop::collection::vec(any::<u8>(), 0..=125),
    )
        .prop_map(|(opcode, payload)| Control { opcode, payload })
}

/// Payload bytes: short random, longer random, and very compressible ones
/// (which inflate to much more than their compressed size).
fn arb_payload(text: bool, max: usize) -> BoxedStrategy<Vec<u8>> {
    if text {
        prop_oneof![
            4 => "\\PC{0,40}".prop_map(String::into_bytes),
            2 => prop::collection::vec(any::<char>(), 0..max / 4)
                .prop_map(|c| c.into_iter().collect::<String>().into_bytes()),
            1 => ("\\PC{1,4}", 0..max / 4).prop_map(move |(s, n)| {
                let mut t = s.repeat(n.max(1));
                while t.len() > max {
                    t.pop();
                }
                t.into_bytes()
            }),
        ]
        .boxed()
    } else {
        prop_oneof![
            4 => prop::collection::vec(any::<u8>(), 0..40),
            2 => prop::collection::vec(any::<u8>(), 0..max),
            1 => (prop::collection::vec(any::<u8>(), 1..4), 0..max)
                .prop_map(|(unit, n)| unit.iter().copied().cycle().take(n).collect()),
        ]
        .boxed()
    }
}

fn arb_data(deflate: bool, max: usize) -> impl Strategy<Value = DataMsg> {
    let compress = if deflate {
        prop::option::weighted(
            0.7,
            (0u32..=9, 9u8..=15, prop::bool::weighted(0.2)).prop_map(
                |(level, window_bits, final_block)| Deflate {
                    level,
                    window_bits,
                    final_block,
                },
            ),
        )
        .boxed()
    } else {
        Just(None).boxed()
    };
    (
        any::<bool>(),
        compress,
        prop::collection::vec(any::<Index>(), 0..4),
    )
        .prop_flat_map(move |(text, deflate, cuts)| {
            let n = cuts.len();
            (
                arb_payload(text, max),
                Just(deflate),
                Just(cuts),
                prop::collection::vec(prop::option::weighted(0.3, arb_control()), n),
            )
                .prop_map(move |(payload, deflate, cuts, controls)| DataMsg {
                    text,
                    payload,
                    deflate,
                    cuts,
                    controls,
                })
        })
}

fn arb_close() -> impl Strategy<Value = Option<(CloseCode, String)>> {
    prop::option::of((
        prop_oneof![1000u16..=1003, 1007u16..=1014, 3000u16..=4999]
            .prop_map(|code| CloseCode::from_wire(code).expect("an allowed code")),
        "\\PC{0,30}".prop_map(|mut s: String| {
            while s.len() > 123 {
                s.pop();
            }
            s
        }),
    ))
}

/// A valid client stream. `max` bounds payload sizes (roughly).
fn arb_plan(deflate: bool, max: usize) -> impl Strategy<Value = Plan> {
    (
        prop::collection::vec(
            prop_oneof![
                4 => arb_data(deflate, max).prop_map(Item::Data),
                1 => arb_control().prop_map(Item::Control),
            ],
            0..6,
        ),
        prop::option::weighted(0.2, arb_close()),
        any::<u64>().prop_map(|s| s | 1),
    )
        .prop_map(|(items, close, seed)| Plan { items, close, seed })
}

/// A built stream and what decoding it must give.
struct Built {
    bytes: Vec<u8>,
    /// The messages the decoder must return, in order.
    expected: Vec<Message>,
    /// Per expected message: its largest frame payload and its total size.
    sizes: Vec<(usize, usize)>,
}

impl Plan {
    fn build(&self) -> Built {
        let mut rng = Rng(self.seed);
        let mut out = Vec::new();
        let mut expected = Vec::new();
        let mut sizes = Vec::new();
        let control = |c: &Control,
                       out: &mut Vec<u8>,
                       expected: &mut Vec<Message>,
                       sizes: &mut Vec<(usize, usize)>,
                       rng: &mut Rng| {
            put_frame(
                out,
                0x80 | c.opcode,
                &c.payload,
                Some(rng.mask()),
                LenEnc::Minimal,
            );
            let p = Bytes::from(c.payload.clone());
            expected.push(if c.opcode == 0x9 {
                Message::Ping(p)
            } else {
                Message::Pong(p)
            });
            sizes.push((c.payload.len(), c.payload.len()));
        };
        for item in &self.items {
            match item {
                Item::Control(c) => control(c, &mut out, &mut expected, &mut sizes, &mut rng),
                Item::Data(m) => {
                    let wire = match m.deflate {
                        Some(d) => {
                            client_deflate(&m.payload, d.level, d.window_bits, d.final_block)
                        }
                        None => m.payload.clone(),
                    };
                    let mut cuts: Vec<usize> =
                        m.cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
                    cuts.sort_unstable();
                    let mut bounds = vec![0];
                    bounds.extend(cuts);
                    bounds.push(wire.len());
                    let n = bounds.len() - 1;
                    let mut biggest = 0;
                    for i in 0..n {
                        let frag = &wire[bounds[i]..bounds[i + 1]];
                        biggest = biggest.max(frag.len());
                        let fin = if i == n - 1 { 0x80 } else { 0 };
                        let rsv1 = if i == 0 && m.deflate.is_some() {
                            0x40
                        } else {
                            0
                        };
                        let opcode = match (i, m.text) {
                            (0, true) => 0x1,
                            (0, false) => 0x2,
                            _ => 0x0,
                        };
                        put_frame(
                            &mut out,
                            fin | rsv1 | opcode,
                            frag,
                            Some(rng.mask()),
                            rng.len_enc(),
                        );
                        if i < n - 1 {
                            if let Some(c) = &m.controls[i] {
                                control(c, &mut out, &mut expected, &mut sizes, &mut rng);
                            }
                        }
                    }
                    let p = Bytes::from(m.payload.clone());
                    expected.push(if m.text {
                        Message::Text(p)
                    } else {
                        Message::Binary(p)
                    });
                    sizes.push((biggest, m.payload.len()));
                }
            }
        }
        if let Some(close) = &self.close {
            let mut payload = Vec::new();
            if let Some((code, reason)) = close {
                payload.extend_from_slice(&code.as_u16().to_be_bytes());
                payload.extend_from_slice(reason.as_bytes());
            }
            put_frame(&mut out, 0x88, &payload, Some(rng.mask()), LenEnc::Minimal);
            expected.push(Message::Close(close.clone()));
            sizes.push((payload.len(), payload.len()));
        }
        Built {
            bytes: out,
            expected,
            sizes,
        }
    }
}

// ---------------------------------------------------------------- running the decoder

fn deflate_config() -> DeflateConfig {
    DeflateConfig {
        server_max_window_bits: 15,
        compress_min: 0,
    }
}

#[derive(Debug, PartialEq)]
struct Outcome {
    messages: Vec<Message>,
    error: Option<ProtocolError>,
    /// Bytes left in the buffer (an incomplete frame) when no error occurred.
    left: usize,
}

/// Feeds `bytes` to a fresh decoder, cut at `cuts` (indexes into `bytes`),
/// decoding after every piece until it needs more input or fails.
fn run(max: usize, deflate: bool, bytes: &[u8], cuts: &[Index]) -> Outcome {
    let mut d = Decoder::new(max, deflate.then(deflate_config));
    let mut bounds: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    bounds.push(0);
    bounds.push(bytes.len());
    bounds.sort_unstable();
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    for w in bounds.windows(2) {
        buf.extend_from_slice(&bytes[w[0]..w[1]]);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(m)) => {
                    check_message(&m, max);
                    messages.push(m);
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(
                        matches!(e.code.as_u16(), 1002 | 1007 | 1009),
                        "unexpected close code {e:?}"
                    );
                    assert!(!e.reason.is_empty());
                    return Outcome {
                        messages,
                        error: Some(e),
                        left: 0,
                    };
                }
            }
        }
    }
    Outcome {
        messages,
        error: None,
        left: buf.len(),
    }
}

/// Invariants of every message the decoder returns.
fn check_message(m: &Message, max: usize) {
    match m {
        Message::Text(p) => {
            assert!(p.len() <= max, "text of {} bytes > max {max}", p.len());
            assert!(std::str::from_utf8(p).is_ok(), "text is not UTF-8");
        }
        Message::Binary(p) => assert!(p.len() <= max, "binary of {} bytes > max {max}", p.len()),
        Message::Ping(p) | Message::Pong(p) => assert!(p.len() <= 125.min(max)),
        Message::Close(c) => {
            if let Some((code, reason)) = c {
                assert!(CloseCode::allowed_on_wire(code.as_u16()));
                assert!(reason.len() <= 123);
            }
        }
    }
}

// ---------------------------------------------------------------- arbitrary and malformed input

/// Frames with random header bits (FIN, RSV, opcode, mask bit, length
/// encoding) and random, deflated or UTF-8 payloads: each rule of RFC 6455
/// gets broken now and then, and the decoder's deeper states get reached.
fn arb_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        prop_oneof![8 => Just(0u8), 2 => Just(4u8), 1 => 0u8..8],
        prop_oneof![
            3 => Just(0x0u8), 3 => Just(0x1u8), 3 => Just(0x2u8), 1 => Just(0x8u8),
            1 => Just(0x9u8), 1 => Just(0xAu8), 1 => 0u8..16,
        ],
        prop::bool::weighted(0.95),
        prop_oneof![
            3 => prop::collection::vec(any::<u8>(), 0..40),
            2 => "\\PC{0,20}".prop_map(String::into_bytes),
            2 => (prop::collection::vec(any::<u8>(), 0..300), 0u32..=9, any::<bool>())
                .prop_map(|(data, level, fin)| client_deflate(&data, level, 15, fin)),
            1 => (any::<u16>(), "\\PC{0,10}").prop_map(|(code, r)| {
                let mut p = code.to_be_bytes().to_vec();
                p.extend_from_slice(r.as_bytes());
                p
            }),
            1 => prop::collection::vec(any::<u8>(), 0..200),
        ],
        any::<u64>(),
    )
        .prop_map(|(fin, rsv, opcode, masked, payload, seed)| {
            let mut rng = Rng(seed | 1);
            let mut out = Vec::new();
            let b0 = if fin { 0x80 } else { 0 } | (rsv << 4) | opcode;
            put_frame(
                &mut out,
                b0,
                &payload,
                masked.then(|| rng.mask()),
                rng.len_enc(),
            );
            out
        })
}

/// Byte-level damage to a stream: flip, insert, remove or overwrite bytes.
#[derive(Clone, Debug)]
enum Mutation {
    Flip(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<Index>().prop_map(Mutation::Remove),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::Flip(i, b) => {
            let i = i.index(bytes.len());
            bytes[i] ^= b;
        }
        Mutation::Insert(i, b) => bytes.insert(i.index(bytes.len() + 1), *b),
        Mutation::Remove(i) => {
            bytes.remove(i.index(bytes.len()));
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
    }
}

/// `max_message` values around the interesting edges.
fn arb_max() -> impl Strategy<Value = usize> {
    prop_oneof![
        1 => 0usize..4,
        2 => 0usize..300,
        2 => Just(1usize << 20),
        1 => Just(usize::MAX),
    ]
}

fn arb_cuts() -> impl Strategy<Value = Vec<Index>> {
    prop_oneof![
        4 => prop::collection::vec(any::<Index>(), 0..8),
        1 => prop::collection::vec(any::<Index>(), 0..200),
    ]
}

// ---------------------------------------------------------------- properties

proptest! {
    /// Any bytes: no panic; every error is 1002, 1007 or 1009; no message is
    /// over the limit, every text is UTF-8 (checked in `run`).
    #[test]
    fn decoder_survives_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        max in arb_max(),
        deflate in any::<bool>(),
        cuts in arb_cuts(),
    ) {
        run(max, deflate, &bytes, &cuts);
    }

    /// Streams of frames that break the rules at random, with and without
    /// deflate: same invariants, and the outcome does not depend on how the
    /// bytes were split into reads.
    #[test]
    fn decoder_survives_malformed_frames(
        frames in prop::collection::vec(arb_frame(), 1..8),
        max in arb_max(),
        deflate in any::<bool>(),
        cuts in arb_cuts(),
    ) {
        let bytes = frames.concat();
        let at_once = run(max, deflate, &bytes, &[]);
        let split = run(max, deflate, &bytes, &cuts);
        prop_assert_eq!(at_once, split);
    }

    /// A valid stream with a few damaged bytes: same invariants, and the same
    /// outcome however it is split.
    #[test]
    fn decoder_survives_damaged_streams(
        plan in arb_plan(true, 400),
        mutations in prop::collection::vec(arb_mutation(), 1..4),
        max in arb_max(),
        cuts in arb_cuts(),
    ) {
        let mut bytes = plan.build().bytes;
        for m in &mutations {
            mutate(&mut bytes, m);
        }
        let at_once = run(max, true, &bytes, &[]);
        let split = run(max, true, &bytes, &cuts);
        prop_assert_eq!(at_once, split);
    }

    /// Random messages (text/binary, random fragmentation, pings and pongs
    /// between fragments, random masks and length encodings, an optional
    /// close) decode to exactly what was sent, however the bytes are split.
    #[test]
    fn decoder_round_trip(
        plan in arb_plan(false, 2000),
        cuts in arb_cuts(),
    ) {
        let built = plan.build();
        let out = run(1 << 20, false, &built.bytes, &cuts);
        prop_assert_eq!(out, Outcome { messages: built.expected, error: None, left: 0 });
    }

    /// The same with permessage-deflate: compressed messages (any level,
    /// client window 9..=15, sync flush with the tail stripped or a final
    /// block; RSV1 on the first fragment only) mixed with plain ones.
    #[test]
    fn decoder_round_trip_compressed(
        plan in arb_plan(true, 2000),
        cuts in arb_cuts(),
    ) {
        let built = plan.build();
        let out = run(1 << 20, true, &built.bytes, &cuts);
        prop_assert_eq!(out, Outcome { messages: built.expected, error: None, left: 0 });
    }

    /// With a small `max_message`: a stream whose frames and (decompressed)
    /// messages all fit decodes completely; otherwise decoding fails with 1009
    /// after returning a prefix of the messages. Nothing returned exceeds the
    /// limit (checked in `run`), even for decompression bombs.
    #[test]
    fn decoder_enforces_max_message(
        plan in arb_plan(true, 3000),
        max in 0usize..1500,
        cuts in arb_cuts(),
    ) {
        let built = plan.build();
        let out = run(max, true, &built.bytes, &cuts);
        let fits = built
            .sizes
            .iter()
            .all(|&(frame, total)| frame <= max && total <= max);
        if fits {
            prop_assert_eq!(out, Outcome { messages: built.expected, error: None, left: 0 });
        } else {
            prop_assert_eq!(out.error.as_ref().map(|e| e.code.as_u16()), Some(1009));
            prop_assert!(out.messages.len() < built.expected.len());
            prop_assert_eq!(&out.messages[..], &built.expected[..out.messages.len()]);
        }
    }

    /// Close payloads: empty = no code; one byte = 1002; a code not allowed
    /// by RFC 6455 7.4 = 1002; a reason that is not UTF-8 = 1007.
    #[test]
    fn decoder_close_payloads(
        code in prop_oneof![any::<u16>(), 990u16..1020, 2990u16..3010, 4990u16..5010],
        reason in prop_oneof![
            "\\PC{0,20}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..20),
        ],
        short in 0usize..4,
        seed in any::<u64>(),
    ) {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(&reason);
        payload.truncate(if short < 2 { short } else { payload.len() });
        payload.truncate(125);
        let mut rng = Rng(seed | 1);
        let mut bytes = Vec::new();
        put_frame(&mut bytes, 0x88, &payload, Some(rng.mask()), LenEnc::Minimal);
        let out = run(1 << 20, false, &bytes, &[]);
        let allowed = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
        let (messages, error) = match payload.len() {
            0 => (vec![Message::Close(None)], None),
            1 => (vec![], Some(1002)),
            _ if !allowed => (vec![], Some(1002)),
            _ => match std::str::from_utf8(&payload[2..]) {
                Ok(r) => {
                    let code = CloseCode::from_wire(code).expect("an allowed code");
                    (vec![Message::Close(Some((code, r.to_string())))], None)
                }
                Err(_) => (vec![], Some(1007)),
            },
        };
        prop_assert_eq!(out.messages, messages);
        prop_assert_eq!(out.error.map(|e| e.code.as_u16()), error);
    }

    /// Any `Sec-WebSocket-Extensions` bytes: no panic; an accepted offer is
    /// answered without context takeover in both directions and a window of
    /// 9..=15 bits that matches the config.
    #[test]
    fn negotiate_survives_arbitrary_headers(
        values in prop::collection::vec(
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..60),
                arb_offer_text().prop_map(String::into_bytes),
            ],
            0..4,
        ),
    ) {
        let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        if let Some((config, response)) = negotiate_deflate(&refs) {
            check_response(&config, &response)?;
        }
    }

    /// Well-formed offers built from the RFC 7692 parameters (random case,
    /// spacing, quoting, order, duplicates and bad values): accepted exactly
    /// when the offer is acceptable, with the window it asked for.
    #[test]
    fn negotiate_matches_the_rfc(offers in prop::collection::vec(arb_offer(), 1..4)) {
        let header: Vec<String> = offers.iter().map(|o| o.text.clone()).collect();
        let header = header.join(", ");
        let got = negotiate_deflate(&[header.as_bytes()]);
        let want = offers.iter().find_map(|o| o.acceptable);
        match (got, want) {
            (None, None) => {}
            (Some((config, response)), Some(bits)) => {
                check_response(&config, &response)?;
                prop_assert_eq!(config.server_max_window_bits, bits.unwrap_or(15), "{}", header);
                prop_assert_eq!(
                    response.contains("server_max_window_bits"),
                    bits.is_some(),
                    "{}", header
                );
            }
            (got, want) => prop_assert!(false, "{header}: got {got:?}, want {want:?}"),
        }
    }

    /// The other direction of the same extension: every frame the server
    /// sends for a negotiated window (9..=15 bits) inflates, with a client
    /// inflater of exactly that window, to the original payload.
    #[test]
    fn server_frames_inflate_with_the_negotiated_window(
        text in any::<bool>(),
        payload in prop_oneof![
            arb_payload(false, 3000),
            (prop::collection::vec(any::<u8>(), 1..8), 0usize..70_000)
                .prop_map(|(unit, n)| unit.iter().copied().cycle().take(n).collect()),
        ],
        bits in 9u8..=15,
        compress_min in prop::sample::select(vec![0usize, 64]),
    ) {
        let (opcode, payload) = if text {
            (OpCode::Text, String::from_utf8_lossy(&payload).into_owned().into_bytes())
        } else {
            (OpCode::Binary, payload)
        };
        let msg = SharedMessage::new(opcode, Bytes::from(payload.clone()));
        let frame = msg.frame_for(Some(DeflateConfig { server_max_window_bits: bits, compress_min }));
        let (b0, body) = parse_server_frame(&frame);
        prop_assert_eq!(b0 & 0x8F, 0x80 | opcode.as_u8());
        if b0 & 0x40 == 0 {
            prop_assert_eq!(body, &payload[..]);
        } else {
            prop_assert_eq!(client_inflate(body, bits)?, payload);
        }
    }

    /// `accept_key` never panics, always gives 28 base64 characters and
    /// ignores surrounding whitespace.
    #[test]
    fn accept_key_any_input(
        key in prop::collection::vec(any::<u8>(), 0..64),
        pre in "[ \t]{0,3}",
        post in "[ \t\r\n]{0,3}",
    ) {
        let k = accept_key(&key);
        prop_assert_eq!(k.len(), 28);
        prop_assert!(k.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)));
        let padded = [pre.as_bytes(), key.trim_ascii(), post.as_bytes()].concat();
        prop_assert_eq!(accept_key(&padded), accept_key(&key));
    }

    /// Any method and header values: no panic; a refusal answers 400 or 426;
    /// an acceptance has version 13, a 28-character accept key and the
    /// deflate answer `negotiate_deflate` gives.
    #[test]
    fn validate_upgrade_any_headers(
        method in prop_oneof!["GET", "POST", "\\PC{0,8}"],
        upgrade in arb_header_values("websocket"),
        connection in arb_header_values("Upgrade"),
        version in prop::option::of(prop_oneof![
            Just(b"13".to_vec()),
            prop::collection::vec(any::<u8>(), 0..4),
        ]),
        key in prop::option::of(prop_oneof![
            "[A-Za-z0-9+/]{22}==".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..30),
        ]),
        extensions in prop::collection::vec(
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..60),
                arb_offer_text().prop_map(String::into_bytes),
            ],
            0..3,
        ),
    ) {
        let (upgrade, connection, extensions) =
            (refs(&upgrade), refs(&connection), refs(&extensions));
        let versions: Vec<&[u8]> = version.iter().map(Vec::as_slice).collect();
        let keys: Vec<&[u8]> = key.iter().map(Vec::as_slice).collect();
        let req = UpgradeRequest {
            method: &method,
            upgrade: &upgrade,
            connection: &connection,
            http11: true,
            version: &versions,
            key: &keys,
            extensions: &extensions,
        };
        match validate_upgrade(&req) {
            Ok(hs) => {
                prop_assert_eq!(hs.accept.len(), 28);
                prop_assert_eq!(version.as_deref(), Some(&b"13"[..]));
                prop_assert_eq!(hs.deflate, negotiate_deflate(&extensions));
            }
            Err(r) => {
                prop_assert!(matches!(r.status(), 400 | 426), "{:?}", r);
                if r == Rejection::UnsupportedVersion {
                    prop_assert_ne!(version.as_deref(), Some(&b"13"[..]));
                }
            }
        }
    }
}

fn refs(values: &[Vec<u8>]) -> Vec<&[u8]> {
    values.iter().map(Vec::as_slice).collect()
}

/// Values of a token-list header: often containing `token` (random case,
/// padding, other tokens), sometimes arbitrary bytes.
fn arb_header_values(token: &'static str) -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(
        prop_oneof![
            3 => (any::<bool>(), "[ \t]{0,2}", "(, ?[a-z0-9-]{1,8})?").prop_map(
                move |(upper, pad, rest)| {
                    let token = if upper { token.to_uppercase() } else { token.to_owned() };
                    format!("{pad}{token}{pad}{rest}").into_bytes()
                }
            ),
            1 => prop::collection::vec(any::<u8>(), 0..20),
        ],
        0..3,
    )
}

/// Splits one unmasked server frame into its first byte and payload.
fn parse_server_frame(f: &[u8]) -> (u8, &[u8]) {
    let (len, at) = match f[1] {
        126 => (u16::from_be_bytes([f[2], f[3]]) as usize, 4),
        127 => (
            u64::from_be_bytes(f[2..10].try_into().unwrap()) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    assert_eq!(f.len(), at + len, "exactly one frame");
    (f[0], &f[at..])
}

/// A client's raw inflater with `bits` window (as negotiated), tail appended.
fn client_inflate(data: &[u8], bits: u8) -> Result<Vec<u8>, TestCaseError> {
    let mut d = Decompress::new_with_window_bits(false, bits);
    let input = [data, &TAIL].concat();
    let mut out = Vec::with_capacity(data.len() * 4 + 1024);
    loop {
        let used = d.total_in() as usize;
        d.decompress_vec(&input[used..], &mut out, FlushDecompress::Sync)
            .map_err(|e| TestCaseError::fail(format!("client inflate ({bits} bits): {e}")))?;
        if d.total_in() as usize == input.len() && out.len() < out.capacity() {
            return Ok(out);
        }
        out.reserve(out.capacity());
    }
}

// ---------------------------------------------------------------- extension offers

fn check_response(config: &DeflateConfig, response: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        (9..=15).contains(&config.server_max_window_bits),
        "{config:?}"
    );
    prop_assert!(response.starts_with("permessage-deflate"), "{response}");
    prop_assert!(
        response.contains("; server_no_context_takeover"),
        "{response}"
    );
    prop_assert!(
        response.contains("; client_no_context_takeover"),
        "{response}"
    );
    if let Some(i) = response.find("server_max_window_bits=") {
        let n: u8 = response[i + "server_max_window_bits=".len()..]
            .parse()
            .map_err(|e| TestCaseError::fail(format!("{response}: {e}")))?;
        prop_assert_eq!(n, config.server_max_window_bits);
    } else {
        prop_assert_eq!(config.server_max_window_bits, 15);
    }
    prop_assert!(!response.contains("client_max_window_bits"), "{response}");
    Ok(())
}

/// Text that looks like an extension header, for the no-panic property.
fn arb_offer_text() -> impl Strategy<Value = String> {
    "((permessage-deflate|x-webkit-deflate-frame|[a-z]{0,5})( ?; ?(server|client)_(no_context_takeover|max_window_bits)(=(\"?[0-9]{0,3}\"?|\"[\\\\\";,]{0,3}\"?))?){0,4} ?[,;]? ?){0,3}"
}

#[derive(Clone, Debug)]
struct Offer {
    text: String,
    /// `None` = must be declined; `Some(server_max_window_bits)` = acceptable.
    acceptable: Option<Option<u8>>,
}

#[derive(Clone, Debug)]
enum Param {
    ServerNct,
    ClientNct,
    ServerBits(Option<String>),
    ClientBits(Option<String>),
    Unknown,
}

fn arb_bits_value() -> impl Strategy<Value = Option<String>> {
    prop::option::weighted(
        0.9,
        prop_oneof![
            8 => (8u8..=15).prop_map(|n| n.to_string()),
            1 => prop_oneof![Just("7"), Just("16"), Just("09"), Just(""), Just("x"), Just("1 5")]
                .prop_map(String::from),
        ],
    )
}

fn arb_offer() -> impl Strategy<Value = Offer> {
    let param = prop_oneof![
        Just(Param::ServerNct),
        Just(Param::ClientNct),
        arb_bits_value().prop_map(Param::ServerBits),
        arb_bits_value().prop_map(Param::ClientBits),
        Just(Param::Unknown),
    ];
    (
        prop::sample::select(vec![
            "permessage-deflate",
            "PerMessage-Deflate",
            "x-webkit-deflate-frame",
        ]),
        prop::collection::vec((param, any::<bool>(), any::<bool>(), any::<bool>()), 0..5),
        prop::sample::select(vec!["", " ", "  "]),
    )
        .prop_map(|(name, params, sp)| {
            let mut text = name.to_string();
            let mut acceptable = name.eq_ignore_ascii_case("permessage-deflate");
            let (mut snct, mut cnct, mut sbits, mut cbits) = (false, false, false, false);
            let mut bits = None;
            let valid_bits = |v: &str| match v.parse::<u8>() {
                Ok(n) if (8..=15).contains(&n) && !v.starts_with('0') && v.len() <= 2 => Some(n),
                _ => None,
            };
            for (p, upper, quoted, with_value) in params {
                let (key, value) = match &p {
                    Param::ServerNct => ("server_no_context_takeover", None),
                    Param::ClientNct => ("client_no_context_takeover", None),
                    Param::ServerBits(v) => ("server_max_window_bits", v.clone()),
                    Param::ClientBits(v) => ("client_max_window_bits", v.clone()),
                    Param::Unknown => ("mystery", None),
                };
                // A value on a flag parameter makes the offer invalid.
                let value = match (&p, with_value) {
                    (Param::ServerNct | Param::ClientNct, true) => Some("1".to_string()),
                    _ => value,
                };
                let key = if upper {
                    key.to_ascii_uppercase()
                } else {
                    key.to_string()
                };
                text.push_str(&format!("{sp};{sp}{key}"));
                if let Some(v) = &value {
                    if quoted {
                        text.push_str(&format!("=\"{v}\""));
                    } else {
                        text.push_str(&format!("={v}"));
                    }
                }
                // What RFC 7692 (and our policy) says about this parameter.
                // An empty quoted string is an invalid value; unquoted
                // values with spaces are not a token.
                let v = value.as_deref();
                match p {
                    Param::ServerNct | Param::ClientNct => {
                        let seen = if matches!(p, Param::ServerNct) {
                            &mut snct
                        } else {
                            &mut cnct
                        };
                        if *seen || v.is_some() {
                            acceptable = false;
                        }
                        *seen = true;
                    }
                    Param::ServerBits(_) => {
                        match v.and_then(valid_bits) {
                            Some(n) if !sbits && n != 8 => bits = Some(n),
                            _ => acceptable = false,
                        }
                        sbits = true;
                    }
                    Param::ClientBits(_) => {
                        if cbits || (v.is_some() && v.and_then(valid_bits).is_none()) {
                            acceptable = false;
                        }
                        cbits = true;
                    }
                    Param::Unknown => acceptable = false,
                }
            }
            Offer {
                text,
                acceptable: acceptable.then_some(bits),
            }
        })
}
