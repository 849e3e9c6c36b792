//! `switchboard bench`: the load generator.
//!
//! One subcommand per scenario. Each drives any WebSocket server reachable at
//! `--url`: Switchboard itself, or a baseline such as
//! `bench/baselines/node-ws-broadcast.js`. A scenario prints a progress line
//! per second on stderr, then a human summary and one JSON line on stdout
//! (the JSON line also goes to `--json FILE`).
//!
//! The client side is deliberately tiny (module [`wire`]): a hand-rolled
//! RFC 6455 client on a bare `TcpStream` that parses frame headers and the
//! send timestamp and nothing else, so that on a small machine the load
//! generator takes as little CPU as possible away from the server it measures.

use clap::Subcommand;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Fan-out: N subscribers in one room (or relay channel) and P publishers.
    /// Measures deliveries per second and end-to-end latency.
    Fanout(fanout::FanoutArgs),
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.scenario {
        Scenario::Fanout(args) => fanout::run(args),
    }
}

/// A minimal WebSocket client: the upgrade handshake, masked client frames,
/// and a parser for the server's unmasked frames.
mod wire {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

    use anyhow::{bail, Context};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    pub const OP_CONTINUATION: u8 = 0x0;
    pub const OP_TEXT: u8 = 0x1;
    pub const OP_BINARY: u8 = 0x2;
    pub const OP_CLOSE: u8 = 0x8;
    pub const OP_PING: u8 = 0x9;
    pub const OP_PONG: u8 = 0xA;

    /// Largest server frame we accept (a guard against garbage lengths).
    const MAX_FRAME: usize = 64 << 20;
    /// Any valid key will do: we do not check the server's accept value.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    /// Where to connect, from `ws://HOST:PORT[/ignored]`.
    #[derive(Clone, Debug)]
    pub struct Target {
        pub addr: SocketAddr,
        /// The `Host` header.
        pub host: String,
    }

    impl Target {
        pub fn parse(url: &str) -> anyhow::Result<Target> {
            let rest = url
                .strip_prefix("ws://")
                .with_context(|| format!("--url must look like ws://HOST:PORT (got `{url}`)"))?;
            let host = rest.split(['/', '?']).next().unwrap_or_default();
            if host.is_empty() {
                bail!("--url has no host: `{url}`");
            }
            let has_port = match host.rfind(']') {
                Some(bracket) => host[bracket..].contains(':'),
                None => host.contains(':'),
            };
            let with_port = if has_port {
                host.to_string()
            } else {
                format!("{host}:80")
            };
            let addr = with_port
                .to_socket_addrs()
                .with_context(|| format!("cannot resolve `{with_port}`"))?
                .next()
                .with_context(|| format!("`{with_port}` resolves to no address"))?;
            Ok(Target {
                addr,
                host: host.to_string(),
            })
        }

        /// The source address for connection number `n`: the first
        /// `per_ip` connections let the kernel choose; later ones bind
        /// 127.0.0.2, 127.0.0.3, … so a loopback target can take more
        /// connections than one address has ephemeral ports.
        pub fn source_for(&self, n: usize, per_ip: usize) -> Option<IpAddr> {
            match self.addr.ip() {
                IpAddr::V4(ip) if ip.is_loopback() && per_ip > 0 && n >= per_ip => {
                    let host = n / per_ip + 1;
                    Some(IpAddr::V4(Ipv4Addr::new(
                        127,
                        (host >> 16) as u8,
                        (host >> 8) as u8,
                        host as u8,
                    )))
                }
                _ => None,
            }
        }
    }

    /// Opens a TCP connection and performs the upgrade handshake. Returns
    /// the stream and any bytes read past the response head.
    pub async fn connect(
        target: &Target,
        source: Option<IpAddr>,
        path: &str,
    ) -> anyhow::Result<(TcpStream, Vec<u8>)> {
        let socket = if target.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("bind {ip}"))?;
        }
        let mut stream = socket
            .connect(target.addr)
            .await
            .with_context(|| format!("connect to {}", target.addr))?;
        stream.set_nodelay(true)?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            target.host
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::with_capacity(512);
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if buf.len() > 16 * 1024 {
                bail!("handshake response head too large");
            }
            if stream.read_buf(&mut buf).await? == 0 {
                bail!("connection closed during the handshake");
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]);
        let status = head.lines().next().unwrap_or_default();
        if !status.starts_with("HTTP/1.1 101") {
            bail!("upgrade of {path} refused: {status}");
        }
        Ok((stream, buf[head_end..].to_vec()))
    }

    /// Appends one masked client frame (FIN set) to `out`.
    pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
        out.push(0x80 | opcode);
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xFFFF {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        let start = out.len();
        out.extend_from_slice(payload);
        for (i, byte) in out[start..].iter_mut().enumerate() {
            *byte ^= mask[i & 3];
        }
    }

    /// A masking key per connection (never all zeros, so masking costs what
    /// it costs a real client).
    pub fn mask_for(n: usize) -> [u8; 4] {
        ((n as u32).wrapping_mul(0x9E37_79B9) | 0x0101_0101).to_be_bytes()
    }

    /// One server frame, borrowed from the read buffer.
    /// (Fragments are handed out one by one: a bench message is one frame.)
    pub struct Frame<'a> {
        pub opcode: u8,
        pub payload: &'a [u8],
    }

    /// A read buffer that hands out whole frames without copying them.
    pub struct FrameBuf {
        buf: Vec<u8>,
        start: usize,
        end: usize,
        /// Bytes the next frame needs from `start` (when known).
        need: usize,
    }

    impl FrameBuf {
        pub fn new(capacity: usize, leftover: Vec<u8>) -> FrameBuf {
            let end = leftover.len();
            let mut buf = leftover;
            buf.resize(capacity.max(end), 0);
            FrameBuf {
                buf,
                start: 0,
                end,
                need: 0,
            }
        }

        pub fn is_empty(&self) -> bool {
            self.start == self.end
        }

        /// Reads once from `stream` (cancel-safe); `Ok(0)` is EOF.
        pub async fn fill<R: AsyncRead + Unpin>(
            &mut self,
            stream: &mut R,
        ) -> std::io::Result<usize> {
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            }
            let room_needed = self.need.max(1);
            if self.buf.len() - self.start < room_needed || self.end == self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if self.buf.len() < room_needed || self.end == self.buf.len() {
                    let grown = room_needed.max(self.buf.len() * 2);
                    self.buf.resize(grown, 0);
                }
            }
            let n = stream.read(&mut self.buf[self.end..]).await?;
            self.end += n;
            Ok(n)
        }

        /// The next complete frame, `None` if more bytes are needed.
        pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, String> {
            let avail = &self.buf[self.start..self.end];
            if avail.len() < 2 {
                return Ok(None);
            }
            let (b0, b1) = (avail[0], avail[1]);
            if b1 & 0x80 != 0 {
                return Err("protocol error: the server sent a masked frame".into());
            }
            let (header, len) = match b1 & 0x7F {
                126 if avail.len() >= 4 => (4, u16::from_be_bytes([avail[2], avail[3]]) as usize),
                127 if avail.len() >= 10 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&avail[2..10]);
                    (
                        10,
                        usize::try_from(u64::from_be_bytes(n)).unwrap_or(usize::MAX),
                    )
                }
                126 | 127 => return Ok(None),
                n => (2, n as usize),
            };
            if len > MAX_FRAME {
                return Err(format!("protocol error: frame of {len} bytes"));
            }
            let total = header + len;
            if avail.len() < total {
                self.need = total;
                return Ok(None);
            }
            self.need = 0;
            let at = self.start;
            self.start += total;
            Ok(Some(Frame {
                opcode: b0 & 0x0F,
                payload: &self.buf[at + header..at + total],
            }))
        }
    }

    /// A close frame's status as text, e.g. `4008 slow consumer`.
    pub fn describe_close(payload: &[u8]) -> String {
        if payload.len() < 2 {
            return "close (no status)".into();
        }
        let code = u16::from_be_bytes([payload[0], payload[1]]);
        let reason = String::from_utf8_lossy(&payload[2..]);
        if reason.is_empty() {
            format!("close {code}")
        } else {
            format!("close {code} {reason}")
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn masked_frames_unmask_to_the_payload() {
            for len in [0usize, 5, 125, 126, 300, 65_535, 65_536] {
                let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let mut out = Vec::new();
                let mask = mask_for(7);
                encode_frame(&mut out, OP_TEXT, &payload, mask);
                let (header, got) = match out[1] & 0x7F {
                    126 => (4, u16::from_be_bytes([out[2], out[3]]) as usize),
                    127 => (
                        10,
                        u64::from_be_bytes(out[2..10].try_into().unwrap()) as usize,
                    ),
                    n => (2, n as usize),
                };
                assert_eq!(got, len);
                assert_eq!(out[0], 0x81);
                assert_ne!(out[1] & 0x80, 0);
                let key = &out[header..header + 4];
                let body: Vec<u8> = out[header + 4..]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ key[i & 3])
                    .collect();
                assert_eq!(body, payload);
            }
        }

        #[tokio::test]
        async fn frames_are_parsed_across_reads_and_lengths() {
            // Unmasked server frames: 7-bit, 16-bit and 64-bit lengths.
            let mut stream = Vec::new();
            for len in [3usize, 200, 70_000] {
                stream.push(0x82);
                if len < 126 {
                    stream.push(len as u8);
                } else if len <= 0xFFFF {
                    stream.push(126);
                    stream.extend_from_slice(&(len as u16).to_be_bytes());
                } else {
                    stream.push(127);
                    stream.extend_from_slice(&(len as u64).to_be_bytes());
                }
                stream.extend_from_slice(&vec![b'a'; len]);
            }
            stream.extend_from_slice(&[0x89, 0x01, b'p']);
            // Deliver it in awkward pieces.
            let mut chunks = stream
                .chunks(7)
                .map(|c| c.to_vec())
                .collect::<Vec<_>>()
                .into_iter();
            let mut buf = FrameBuf::new(64, Vec::new());
            let mut seen = Vec::new();
            loop {
                while let Some(frame) = buf.next_frame().unwrap() {
                    seen.push((frame.opcode, frame.payload.len()));
                }
                let Some(chunk) = chunks.next() else { break };
                let mut reader: &[u8] = &chunk;
                while !reader.is_empty() {
                    buf.fill(&mut reader).await.unwrap();
                    while let Some(frame) = buf.next_frame().unwrap() {
                        seen.push((frame.opcode, frame.payload.len()));
                    }
                }
            }
            assert_eq!(seen, vec![(2, 3), (2, 200), (2, 70_000), (OP_PING, 1)]);
        }

        #[test]
        fn urls_and_sources() {
            let t = Target::parse("ws://127.0.0.1:9000").unwrap();
            assert_eq!(t.addr.port(), 9000);
            assert_eq!(t.host, "127.0.0.1:9000");
            assert_eq!(Target::parse("ws://127.0.0.1/x").unwrap().addr.port(), 80);
            assert!(Target::parse("http://127.0.0.1:1").is_err());
            assert_eq!(t.source_for(5, 10), None);
            assert_eq!(t.source_for(10, 10), Some("127.0.0.2".parse().unwrap()));
            assert_eq!(t.source_for(2550, 10), Some("127.0.1.0".parse().unwrap()));
        }
    }
}

/// `switchboard bench fanout`.
mod fanout {
    use std::collections::BTreeMap;
    use std::io::Write as _;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context};
    use hdrhistogram::Histogram;
    use switchboard_server::config::parse_duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::tcp::OwnedWriteHalf;
    use tokio::sync::{oneshot, watch, Notify, Semaphore};
    use tokio::time::timeout;

    use super::wire::{self, FrameBuf, Target};
    use super::wire::{OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT};

    const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// How long a client waits for the server's side of the close handshake.
    const CLOSE_WAIT: Duration = Duration::from_secs(2);
    /// Read buffer per subscriber.
    const SUB_BUFFER: usize = 16 * 1024;
    /// Latency samples a subscriber keeps before adding them to the histogram.
    const SAMPLE_BATCH: usize = 512;
    /// Most publishes put into one write.
    const MAX_BATCH: u64 = 16;
    /// Longest a waiting publisher sleeps before looking again (a safety net;
    /// it is normally woken by an ack or by the slowest subscriber).
    const RECHECK: Duration = Duration::from_millis(5);

    #[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
    pub enum Mode {
        /// The JSON protocol on /ws: join a room, publish, wait for acks.
        Room,
        /// Raw frames on /relay/CHANNEL, which any plain broadcast server
        /// (such as the Node.js baseline) also speaks.
        Relay,
    }

    impl Mode {
        fn name(self) -> &'static str {
            match self {
                Mode::Room => "room",
                Mode::Relay => "relay",
            }
        }
    }

    #[derive(clap::Args, Debug)]
    pub struct FanoutArgs {
        /// Server to measure: ws://HOST:PORT (the path is set by --mode).
        #[arg(long, default_value = "ws://127.0.0.1:8080")]
        url: String,
        /// `room`: /ws?user=… with join/publish/ack; `relay`: /relay/ROOM,
        /// raw text frames (start Switchboard with `--rate-limit 0` for room).
        #[arg(long, value_enum, default_value_t = Mode::Room)]
        mode: Mode,
        /// Subscriber connections.
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Publisher connections.
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Messages per second per publisher; 0 = flat out, paced only by
        /// the windows (see --window).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Measured time, after the warm-up. Units: ms, s, m.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Time publishing before measuring starts. Units: ms, s, m.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        warmup: Duration,
        /// Bytes of each message body, a JSON object {"t":µs,"pad":"xx…"}.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Room (room mode) or relay channel (relay mode).
        #[arg(long, default_value = "bench")]
        room: String,
        /// Room mode: most publishes per publisher without an ack yet (the
        /// server's back-pressure).
        #[arg(long, default_value_t = 64)]
        window: u64,
        /// Flat out (--rate 0): most messages, per publisher, published
        /// ahead of what the slowest subscriber has received. Bounds the
        /// server's queues, so latency is not just a growing backlog.
        /// Defaults to --window.
        #[arg(long)]
        lead: Option<u64>,
        /// Connections per source address; past it connections bind
        /// 127.0.0.2, 127.0.0.3, … (loopback targets only).
        #[arg(long, default_value_t = 20_000)]
        conns_per_ip: usize,
        /// Handshakes in flight at once while connecting.
        #[arg(long, default_value_t = 128)]
        connect_concurrency: usize,
        /// PID of the server process: its CPU use over the measured window
        /// is reported (Linux).
        #[arg(long)]
        server_pid: Option<u32>,
        /// Name of the target, copied into the JSON result.
        #[arg(long)]
        label: Option<String>,
        /// Also write the JSON result line to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Exit with an error if a message was lost, a connection dropped or
        /// the server answered with an error (smoke tests; timing is never
        /// judged).
        #[arg(long)]
        strict: bool,
    }

    /// The parts of the arguments every task needs.
    struct Cfg {
        target: Target,
        mode: Mode,
        subscribers: usize,
        publishers: usize,
        rate: f64,
        size: usize,
        window: u64,
        lead: u64,
        conns_per_ip: usize,
        /// `/relay/ROOM`.
        relay_path: String,
        /// `{"type":"join","room":ROOM}`.
        join: String,
        /// `{"type":"publish","room":ROOM,"body":` (the body and `}` follow).
        publish_prefix: String,
    }

    impl Cfg {
        fn path(&self, user: &str) -> String {
            match self.mode {
                Mode::Room => format!("/ws?user={user}"),
                Mode::Relay => self.relay_path.clone(),
            }
        }
    }

    /// What one subscriber publishes to the others, on its own cache line.
    #[derive(Default)]
    #[repr(align(128))]
    struct Slot {
        /// Bench messages received; `u64::MAX` once the connection is gone
        /// (so it no longer holds the publishers back).
        received: AtomicU64,
        /// Frames of any kind received (to see when the join storm is over).
        frames: AtomicU64,
    }

    #[derive(Default)]
    struct Events {
        /// How connections ended early, e.g. "close 4008 slow consumer".
        ends: BTreeMap<String, u64>,
        server_errors: u64,
        error_samples: Vec<String>,
        failures: Vec<String>,
    }

    struct Shared {
        epoch: Instant,
        slots: Box<[Slot]>,
        /// Measured window, µs since `epoch` (`u64::MAX` until known).
        window_start: AtomicU64,
        window_end: AtomicU64,
        latency: Mutex<Histogram<u64>>,
        /// The subscriber a waiting publisher watches (the slowest).
        watch: AtomicUsize,
        /// Woken by acks and by the watched subscriber.
        progress: Notify,
        /// Connections ready (handshaken; in room mode also joined).
        ready: AtomicUsize,
        failed: AtomicUsize,
        /// Publishes written, all publishers.
        published: AtomicU64,
        events: Mutex<Events>,
    }

    impl Shared {
        fn now_us(&self) -> u64 {
            self.epoch.elapsed().as_micros() as u64
        }

        fn events(&self) -> std::sync::MutexGuard<'_, Events> {
            self.events.lock().unwrap_or_else(|e| e.into_inner())
        }

        fn fail(&self, what: String) {
            self.failed.fetch_add(1, Ordering::SeqCst);
            self.events().failures.push(what);
        }

        fn ended(&self, how: &str) {
            *self.events().ends.entry(how.to_string()).or_default() += 1;
        }

        fn server_error(&self, payload: &[u8]) {
            let mut events = self.events();
            events.server_errors += 1;
            if events.error_samples.len() < 5 {
                events
                    .error_samples
                    .push(String::from_utf8_lossy(payload).into_owned());
            }
        }

        fn record(&self, samples: &mut Vec<u64>) {
            if samples.is_empty() {
                return;
            }
            let mut hist = self.latency.lock().unwrap_or_else(|e| e.into_inner());
            for value in samples.drain(..) {
                hist.saturating_record(value.max(1));
            }
        }

        /// Messages received by the slowest live subscriber; also makes it
        /// the one whose progress wakes waiting publishers.
        fn slowest(&self) -> u64 {
            let mut min = u64::MAX;
            for _ in 0..4 {
                let mut at = 0;
                min = u64::MAX;
                for (i, slot) in self.slots.iter().enumerate() {
                    let received = slot.received.load(Ordering::Relaxed);
                    if received < min {
                        min = received;
                        at = i;
                    }
                }
                if min == u64::MAX {
                    break;
                }
                // Publish the watch, then look again: a subscriber that moved
                // on in between may not have seen it (SeqCst on both sides).
                self.watch.store(at, Ordering::SeqCst);
                if self.slots[at].received.load(Ordering::SeqCst) == min {
                    break;
                }
            }
            min
        }

        fn live_subscribers(&self) -> usize {
            self.slots
                .iter()
                .filter(|s| s.received.load(Ordering::Relaxed) != u64::MAX)
                .count()
        }

        fn received_total(&self) -> u64 {
            self.slots
                .iter()
                .map(|s| s.received.load(Ordering::Relaxed))
                .filter(|&r| r != u64::MAX)
                .sum()
        }

        fn frames_total(&self) -> u64 {
            self.slots
                .iter()
                .map(|s| s.frames.load(Ordering::Relaxed))
                .sum()
        }
    }

    /// Finds the `{"t":` a bench body starts with and parses the number.
    fn stamp(payload: &[u8]) -> Option<u64> {
        const KEY: &[u8] = b"{\"t\":";
        let mut from = 0;
        loop {
            let at = from + payload[from..].iter().position(|&b| b == b'{')?;
            if payload[at..].starts_with(KEY) {
                let mut value: u64 = 0;
                let mut digits = 0;
                for &b in &payload[at + KEY.len()..] {
                    if !b.is_ascii_digit() {
                        break;
                    }
                    value = value.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
                    digits += 1;
                }
                return (digits > 0).then_some(value);
            }
            from = at + 1;
        }
    }

    /// Writes `{"t":T,"pad":"xx…"}`, `size` bytes when size allows.
    fn write_body(out: &mut Vec<u8>, t: u64, size: usize) {
        let start = out.len();
        let _ = write!(out, "{{\"t\":{t},\"pad\":\"");
        let pad = size.saturating_sub(out.len() - start + 2);
        out.resize(out.len() + pad, b'x');
        out.extend_from_slice(b"\"}");
    }

    #[derive(Default)]
    struct SubResult {
        received: u64,
        in_window: u64,
        /// Still connected when the run ended.
        alive: bool,
    }

    enum End {
        Stopped,
        Gone(String),
    }

    async fn subscriber(
        sh: Arc<Shared>,
        cfg: Arc<Cfg>,
        idx: usize,
        gate: Arc<Semaphore>,
        mut stop: oneshot::Receiver<()>,
    ) -> SubResult {
        let mut res = SubResult::default();
        let slot = &sh.slots[idx];
        let gone = |sh: &Shared| {
            slot.received.store(u64::MAX, Ordering::SeqCst);
            sh.progress.notify_waiters();
        };
        let connected = {
            let _permit = gate.acquire().await;
            let source = cfg.target.source_for(idx, cfg.conns_per_ip);
            timeout(
                HANDSHAKE_TIMEOUT,
                wire::connect(&cfg.target, source, &cfg.path(&format!("s{idx}"))),
            )
            .await
        };
        let (mut stream, leftover) = match connected {
            Ok(Ok(connection)) => connection,
            Ok(Err(err)) => {
                sh.fail(format!("subscriber {idx}: {err:#}"));
                gone(&sh);
                return res;
            }
            Err(_) => {
                sh.fail(format!("subscriber {idx}: handshake timed out"));
                gone(&sh);
                return res;
            }
        };
        let mask = wire::mask_for(idx);
        let mut out = Vec::new();
        let mut joined = cfg.mode == Mode::Relay;
        if joined {
            sh.ready.fetch_add(1, Ordering::SeqCst);
        } else {
            wire::encode_frame(&mut out, OP_TEXT, cfg.join.as_bytes(), mask);
            if let Err(err) = stream.write_all(&out).await {
                sh.fail(format!("subscriber {idx}: sending join: {err}"));
                gone(&sh);
                return res;
            }
            out.clear();
        }
        let mut buf = FrameBuf::new(SUB_BUFFER, leftover);
        let mut samples: Vec<u64> = Vec::with_capacity(SAMPLE_BATCH);
        let mut frames = 0u64;
        let mut pending = !buf.is_empty();
        let end = 'conn: loop {
            if !pending {
                let read = tokio::select! {
                    biased;
                    _ = &mut stop => break End::Stopped,
                    read = buf.fill(&mut stream) => read,
                };
                match read {
                    Ok(0) => break End::Gone("eof without close frame".into()),
                    Ok(_) => {}
                    Err(err) => break End::Gone(format!("read error: {}", err.kind())),
                }
            }
            pending = false;
            let now = sh.now_us();
            let measuring = now >= sh.window_start.load(Ordering::Relaxed)
                && now < sh.window_end.load(Ordering::Relaxed);
            loop {
                let frame = match buf.next_frame() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(err) => break 'conn End::Gone(err),
                };
                frames += 1;
                match frame.opcode {
                    OP_TEXT | OP_BINARY | OP_CONTINUATION => {
                        if let Some(t) = stamp(frame.payload) {
                            res.received += 1;
                            if measuring && t <= now {
                                res.in_window += 1;
                                samples.push(now - t);
                            }
                        } else if !joined && frame.payload.starts_with(b"{\"type\":\"joined\"") {
                            joined = true;
                            sh.ready.fetch_add(1, Ordering::SeqCst);
                        } else if frame.payload.starts_with(b"{\"type\":\"error\"") {
                            sh.server_error(frame.payload);
                            if !joined {
                                break 'conn End::Gone("join refused".into());
                            }
                        }
                    }
                    OP_PING => wire::encode_frame(&mut out, OP_PONG, frame.payload, mask),
                    OP_PONG => {}
                    OP_CLOSE => break 'conn End::Gone(wire::describe_close(frame.payload)),
                    other => break 'conn End::Gone(format!("protocol error: opcode {other}")),
                }
            }
            if !out.is_empty() {
                if let Err(err) = stream.write_all(&out).await {
                    break End::Gone(format!("write error: {}", err.kind()));
                }
                out.clear();
            }
            slot.frames.store(frames, Ordering::Relaxed);
            slot.received.store(res.received, Ordering::SeqCst);
            if sh.watch.load(Ordering::SeqCst) == idx {
                sh.progress.notify_waiters();
            }
            if samples.len() >= SAMPLE_BATCH {
                sh.record(&mut samples);
            }
        };
        sh.record(&mut samples);
        match end {
            End::Stopped => {
                res.alive = true;
                close_politely(&mut stream, mask).await;
            }
            End::Gone(how) => {
                gone(&sh);
                if joined {
                    sh.ended(&format!("subscriber: {how}"));
                } else {
                    sh.fail(format!("subscriber {idx}: {how} before joining"));
                }
            }
        }
        res
    }

    /// Sends a close frame and waits (bounded) for the server to finish.
    async fn close_politely(stream: &mut tokio::net::TcpStream, mask: [u8; 4]) {
        let mut frame = Vec::new();
        wire::encode_frame(&mut frame, OP_CLOSE, &1000u16.to_be_bytes(), mask);
        let _ = timeout(CLOSE_WAIT, async {
            stream.write_all(&frame).await?;
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            std::io::Result::Ok(())
        })
        .await;
    }

    /// What a publisher's reader tells its writer.
    #[derive(Default)]
    struct PubState {
        acked: AtomicU64,
        gone: AtomicBool,
    }

    type Writer = Arc<tokio::sync::Mutex<OwnedWriteHalf>>;

    #[derive(Default)]
    struct PubResult {
        sent: u64,
        in_window: u64,
        /// At a fixed rate: the most a send was late on its schedule.
        behind_max_us: u64,
        error: Option<String>,
    }

    async fn publisher(
        sh: Arc<Shared>,
        cfg: Arc<Cfg>,
        idx: usize,
        gate: Arc<Semaphore>,
        mut go: watch::Receiver<bool>,
    ) -> PubResult {
        let conn_no = cfg.subscribers + idx;
        let connected = {
            let _permit = gate.acquire().await;
            let source = cfg.target.source_for(conn_no, cfg.conns_per_ip);
            timeout(
                HANDSHAKE_TIMEOUT,
                wire::connect(&cfg.target, source, &cfg.path(&format!("p{idx}"))),
            )
            .await
        };
        let (stream, leftover) = match connected {
            Ok(Ok(connection)) => connection,
            Ok(Err(err)) => {
                sh.fail(format!("publisher {idx}: {err:#}"));
                return PubResult::default();
            }
            Err(_) => {
                sh.fail(format!("publisher {idx}: handshake timed out"));
                return PubResult::default();
            }
        };
        let mask = wire::mask_for(conn_no);
        let (reader, writer) = stream.into_split();
        let writer: Writer = Arc::new(tokio::sync::Mutex::new(writer));
        let state = Arc::new(PubState::default());
        let (joined_tx, joined_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let reader_task = tokio::spawn(publisher_reader(
            sh.clone(),
            reader,
            FrameBuf::new(SUB_BUFFER, leftover),
            writer.clone(),
            state.clone(),
            joined_tx,
            stop_rx,
            mask,
        ));
        if cfg.mode == Mode::Room {
            let mut frame = Vec::new();
            wire::encode_frame(&mut frame, OP_TEXT, cfg.join.as_bytes(), mask);
            let sent = writer.lock().await.write_all(&frame).await;
            let joined = match sent {
                Ok(()) => timeout(HANDSHAKE_TIMEOUT, joined_rx)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .is_some(),
                Err(_) => false,
            };
            if !joined {
                sh.fail(format!("publisher {idx}: join not answered"));
                let _ = stop_tx.send(());
                let _ = reader_task.await;
                return PubResult::default();
            }
        }
        sh.ready.fetch_add(1, Ordering::SeqCst);
        let mut result = PubResult::default();
        if go.wait_for(|go| *go).await.is_ok() {
            if let Err(err) = publish_loop(&sh, &cfg, &writer, &state, mask, &mut result).await {
                result.error = Some(format!("publisher {idx}: {err:#}"));
            }
            // Room mode: let the last acks come back before closing.
            if cfg.mode == Mode::Room {
                let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
                while state.acked.load(Ordering::Acquire) < result.sent
                    && !state.gone.load(Ordering::Acquire)
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        let _ = stop_tx.send(());
        let _ = reader_task.await;
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn publisher_reader(
        sh: Arc<Shared>,
        mut reader: tokio::net::tcp::OwnedReadHalf,
        mut buf: FrameBuf,
        writer: Writer,
        state: Arc<PubState>,
        joined_tx: oneshot::Sender<()>,
        mut stop: oneshot::Receiver<()>,
        mask: [u8; 4],
    ) {
        let mut joined_tx = Some(joined_tx);
        let mut acked = 0u64;
        let mut out = Vec::new();
        let mut pending = !buf.is_empty();
        let end = 'conn: loop {
            if !pending {
                let read = tokio::select! {
                    biased;
                    _ = &mut stop => break End::Stopped,
                    read = buf.fill(&mut reader) => read,
                };
                match read {
                    Ok(0) => break End::Gone("eof without close frame".into()),
                    Ok(_) => {}
                    Err(err) => break End::Gone(format!("read error: {}", err.kind())),
                }
            }
            pending = false;
            let before = acked;
            loop {
                let frame = match buf.next_frame() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(err) => break 'conn End::Gone(err),
                };
                match frame.opcode {
                    OP_TEXT | OP_BINARY | OP_CONTINUATION => {
                        let p = frame.payload;
                        if p.starts_with(b"{\"type\":\"ack\"") {
                            acked += 1;
                        } else if p.starts_with(b"{\"type\":\"joined\"") {
                            if let Some(tx) = joined_tx.take() {
                                let _ = tx.send(());
                            }
                        } else if p.starts_with(b"{\"type\":\"error\"") {
                            // A refused publish is answered too: it frees its slot.
                            acked += 1;
                            sh.server_error(p);
                        }
                    }
                    OP_PING => wire::encode_frame(&mut out, OP_PONG, frame.payload, mask),
                    OP_PONG => {}
                    OP_CLOSE => break 'conn End::Gone(wire::describe_close(frame.payload)),
                    other => break 'conn End::Gone(format!("protocol error: opcode {other}")),
                }
            }
            if !out.is_empty() {
                if let Err(err) = writer.lock().await.write_all(&out).await {
                    break End::Gone(format!("write error: {}", err.kind()));
                }
                out.clear();
            }
            if acked != before {
                state.acked.store(acked, Ordering::Release);
                sh.progress.notify_waiters();
            }
        };
        match end {
            End::Stopped => {
                let mut frame = Vec::new();
                wire::encode_frame(&mut frame, OP_CLOSE, &1000u16.to_be_bytes(), mask);
                let _ = timeout(CLOSE_WAIT, async {
                    writer.lock().await.write_all(&frame).await?;
                    let mut sink = [0u8; 4096];
                    while reader.read(&mut sink).await? > 0 {}
                    std::io::Result::Ok(())
                })
                .await;
            }
            End::Gone(how) => {
                state.gone.store(true, Ordering::Release);
                sh.progress.notify_waiters();
                sh.ended(&format!("publisher: {how}"));
            }
        }
    }

    async fn publish_loop(
        sh: &Shared,
        cfg: &Cfg,
        writer: &Writer,
        state: &PubState,
        mask: [u8; 4],
        result: &mut PubResult,
    ) -> anyhow::Result<()> {
        let window_start = sh.window_start.load(Ordering::Acquire);
        let window_end = sh.window_end.load(Ordering::Acquire);
        let started = sh.now_us();
        let lead_limit = cfg.lead.saturating_mul(cfg.publishers as u64);
        let mut floor = 0u64;
        let mut batch = Vec::with_capacity(MAX_BATCH as usize * (cfg.size + 96));
        let mut message = Vec::with_capacity(cfg.size + 96);
        loop {
            if state.gone.load(Ordering::Acquire) {
                bail!("connection lost");
            }
            // Register for wake-ups before looking at the counters.
            let notified = sh.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = sh.now_us();
            if now >= window_end {
                return Ok(());
            }
            let mut allowed = MAX_BATCH;
            if cfg.mode == Mode::Room {
                let in_flight = result.sent - state.acked.load(Ordering::Acquire).min(result.sent);
                allowed = allowed.min(cfg.window.saturating_sub(in_flight));
            }
            let mut due_later = None;
            if cfg.rate > 0.0 {
                // Every message has a scheduled send time. Its stamp is the
                // real send time (the timer is only good to a millisecond);
                // how far the publisher fell behind the schedule, e.g. held
                // up by acks, is reported separately (`behind_max_us`).
                let due = ((now - started) as f64 * cfg.rate / 1e6) as u64 + 1;
                let due = due.saturating_sub(result.sent);
                if due == 0 {
                    due_later = Some(started + (result.sent as f64 * 1e6 / cfg.rate) as u64);
                }
                allowed = allowed.min(due);
            } else {
                let published = sh.published.load(Ordering::Acquire);
                if published.saturating_sub(floor) >= lead_limit {
                    floor = sh.slowest();
                }
                allowed = allowed.min(lead_limit.saturating_sub(published.saturating_sub(floor)));
            }
            if allowed == 0 {
                match due_later {
                    Some(at) if at > now => {
                        tokio::time::sleep(Duration::from_micros(at - now)).await;
                    }
                    _ => {
                        let _ = timeout(RECHECK, notified).await;
                    }
                }
                continue;
            }
            batch.clear();
            for _ in 0..allowed {
                let t = now;
                if cfg.rate > 0.0 && t >= window_start {
                    let scheduled = started + (result.sent as f64 * 1e6 / cfg.rate) as u64;
                    result.behind_max_us = result.behind_max_us.max(t.saturating_sub(scheduled));
                }
                message.clear();
                if cfg.mode == Mode::Room {
                    message.extend_from_slice(cfg.publish_prefix.as_bytes());
                    write_body(&mut message, t, cfg.size);
                    message.push(b'}');
                } else {
                    write_body(&mut message, t, cfg.size);
                }
                wire::encode_frame(&mut batch, OP_TEXT, &message, mask);
                result.sent += 1;
                if t >= window_start && t < window_end {
                    result.in_window += 1;
                }
            }
            writer
                .lock()
                .await
                .write_all(&batch)
                .await
                .context("write")?;
            sh.published.fetch_add(allowed, Ordering::AcqRel);
        }
    }

    /// Process CPU time in seconds from /proc (Linux; None elsewhere).
    fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
        let path = match pid {
            Some(pid) => format!("/proc/{pid}/stat"),
            None => "/proc/self/stat".to_string(),
        };
        let stat = std::fs::read_to_string(path).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        // USER_HZ is 100 on every Linux configuration we run on.
        Some((utime + stime) / 100.0)
    }

    /// CPU time spent by the whole machine (all cores, not idle), in seconds.
    fn machine_busy_seconds() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        let ticks: Vec<f64> = line
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest is in user).
        let busy: f64 = ticks.iter().take(8).sum::<f64>() - ticks.get(3)? - ticks.get(4)?;
        Some(busy / 100.0)
    }

    pub fn run(args: FanoutArgs) -> anyhow::Result<()> {
        if args.subscribers == 0 || args.publishers == 0 {
            bail!("--subscribers and --publishers must be at least 1");
        }
        if args.window == 0 || args.lead == Some(0) {
            bail!("--window and --lead must be at least 1");
        }
        if !(args.rate.is_finite() && args.rate >= 0.0) {
            bail!("--rate must be a number >= 0");
        }
        let target = Target::parse(&args.url)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let outcome = runtime.block_on(drive(args, target));
        runtime.shutdown_timeout(Duration::from_millis(200));
        outcome
    }

    async fn wait_ready(sh: &Shared, want: usize, what: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT + Duration::from_millis(20 * want as u64);
        loop {
            if sh.failed.load(Ordering::SeqCst) > 0 {
                let events = sh.events();
                bail!(
                    "{} connection(s) failed while setting up {what}; first: {}",
                    events.failures.len(),
                    events.failures.first().map(String::as_str).unwrap_or("?")
                );
            }
            if sh.ready.load(Ordering::SeqCst) >= want {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out setting up {what}: {} of {want} ready",
                    sh.ready.load(Ordering::SeqCst)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn drive(args: FanoutArgs, target: Target) -> anyhow::Result<()> {
        let room_json = serde_json::to_string(&args.room)?;
        let lead = args.lead.unwrap_or(args.window);
        let cfg = Arc::new(Cfg {
            target,
            mode: args.mode,
            subscribers: args.subscribers,
            publishers: args.publishers,
            rate: args.rate,
            size: args.size,
            window: args.window,
            lead,
            conns_per_ip: args.conns_per_ip,
            relay_path: format!("/relay/{}", args.room),
            join: format!("{{\"type\":\"join\",\"room\":{room_json}}}"),
            publish_prefix: format!("{{\"type\":\"publish\",\"room\":{room_json},\"body\":"),
        });
        let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
        latency.auto(true);
        let sh = Arc::new(Shared {
            epoch: Instant::now(),
            slots: (0..args.subscribers).map(|_| Slot::default()).collect(),
            window_start: AtomicU64::new(u64::MAX),
            window_end: AtomicU64::new(u64::MAX),
            latency: Mutex::new(latency),
            watch: AtomicUsize::new(usize::MAX),
            progress: Notify::new(),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            published: AtomicU64::new(0),
            events: Mutex::new(Events::default()),
        });
        let mut pace = if args.rate > 0.0 {
            format!("{} msg/s per publisher", args.rate)
        } else {
            format!("flat out, lead {lead}")
        };
        if args.mode == Mode::Room {
            pace.push_str(&format!(", ack window {}", args.window));
        }
        eprintln!(
            "fanout {} {}: {} subscribers, {} publisher(s), {pace}, {}-byte bodies, {:?} warm-up + {:?} measured",
            args.mode.name(),
            args.url,
            args.subscribers,
            args.publishers,
            args.size,
            args.warmup,
            args.duration
        );

        let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
        let mut stops = Vec::with_capacity(args.subscribers);
        let mut subs = Vec::with_capacity(args.subscribers);
        let connect_started = Instant::now();
        for idx in 0..args.subscribers {
            let (tx, rx) = oneshot::channel();
            stops.push(tx);
            subs.push(tokio::spawn(subscriber(
                sh.clone(),
                cfg.clone(),
                idx,
                gate.clone(),
                rx,
            )));
        }
        wait_ready(&sh, args.subscribers, "subscribers").await?;
        let (go_tx, go_rx) = watch::channel(false);
        let pubs: Vec<_> = (0..args.publishers)
            .map(|idx| {
                tokio::spawn(publisher(
                    sh.clone(),
                    cfg.clone(),
                    idx,
                    gate.clone(),
                    go_rx.clone(),
                ))
            })
            .collect();
        wait_ready(&sh, args.subscribers + args.publishers, "publishers").await?;
        // Let the join storm (presence events to every member) pass, and the
        // relay registrations (which follow the 101) complete.
        let mut last = u64::MAX;
        let settle_deadline = Instant::now() + Duration::from_secs(60);
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let frames = sh.frames_total();
            if frames == last || Instant::now() > settle_deadline {
                break;
            }
            last = frames;
        }
        eprintln!(
            "connected {} in {:.1}s; publishing",
            args.subscribers + args.publishers,
            connect_started.elapsed().as_secs_f64()
        );

        let go = sh.now_us();
        let start = go + args.warmup.as_micros() as u64;
        let end = start + args.duration.as_micros() as u64;
        sh.window_start.store(start, Ordering::SeqCst);
        sh.window_end.store(end, Ordering::SeqCst);
        let cpu_probe = {
            let sh = sh.clone();
            let server_pid = args.server_pid;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_micros(start.saturating_sub(sh.now_us()))).await;
                let before = (
                    Instant::now(),
                    cpu_seconds(None),
                    server_pid.and_then(|p| cpu_seconds(Some(p))),
                    machine_busy_seconds(),
                );
                tokio::time::sleep(Duration::from_micros(end.saturating_sub(sh.now_us()))).await;
                let wall = before.0.elapsed().as_secs_f64();
                let pct = |a: Option<f64>, b: Option<f64>| {
                    Some(((b? - a?) / wall * 100.0 * 10.0).round() / 10.0)
                };
                let client = pct(before.1, cpu_seconds(None));
                let server = pct(before.2, server_pid.and_then(|p| cpu_seconds(Some(p))));
                // Everything else the machine did meanwhile (other processes,
                // interrupts): a measurement is only clean when this is low.
                let machine = pct(before.3, machine_busy_seconds());
                let other = match (machine, client, server) {
                    (Some(m), Some(c), s) => {
                        Some((((m - c - s.unwrap_or(0.0)) * 10.0).round() / 10.0).max(0.0))
                    }
                    _ => None,
                };
                (client, server, other)
            })
        };
        let _ = go_tx.send(true);
        let ticker = {
            let sh = sh.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.tick().await;
                let (mut last_pub, mut last_recv) = (0u64, 0u64);
                loop {
                    tick.tick().await;
                    let now = sh.now_us();
                    let phase = if now < start {
                        "warm-up"
                    } else if now < end {
                        "measuring"
                    } else {
                        "draining"
                    };
                    let published = sh.published.load(Ordering::Relaxed);
                    let received = sh.received_total();
                    eprintln!(
                        "[{:5.1}s {phase:>9}] published {published} (+{}/s)  deliveries {received} (+{}/s)  live subscribers {}",
                        now.saturating_sub(go) as f64 / 1e6,
                        published.saturating_sub(last_pub),
                        received.saturating_sub(last_recv),
                        sh.live_subscribers(),
                    );
                    last_pub = published;
                    last_recv = received;
                }
            })
        };

        let mut pub_results = Vec::with_capacity(pubs.len());
        for handle in pubs {
            pub_results.push(handle.await.unwrap_or_default());
        }
        // Drain: wait until every live subscriber has everything, or until
        // nothing moves for a second.
        let published_total = sh.published.load(Ordering::SeqCst);
        let drain_deadline = Instant::now() + Duration::from_secs(10);
        let mut last = (sh.received_total(), Instant::now());
        loop {
            let complete = sh
                .slots
                .iter()
                .all(|s| matches!(s.received.load(Ordering::Relaxed), r if r == u64::MAX || r >= published_total));
            if complete
                || Instant::now() > drain_deadline
                || last.1.elapsed() > Duration::from_secs(1)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            let received = sh.received_total();
            if received != last.0 {
                last = (received, Instant::now());
            }
        }
        ticker.abort();
        for stop in stops {
            let _ = stop.send(());
        }
        let mut sub_results = Vec::with_capacity(subs.len());
        for handle in subs {
            sub_results.push(handle.await.unwrap_or_default());
        }
        let (client_cpu, server_cpu, other_cpu) = cpu_probe.await.unwrap_or((None, None, None));

        // Results.
        let seconds = args.duration.as_secs_f64();
        let published: u64 = pub_results.iter().map(|p| p.in_window).sum();
        let deliveries: u64 = sub_results.iter().map(|s| s.in_window).sum();
        let received_total: u64 = sub_results.iter().map(|s| s.received).sum();
        let lost: u64 = sub_results
            .iter()
            .filter(|s| s.alive)
            .map(|s| published_total.saturating_sub(s.received))
            .sum();
        let disconnected = sub_results.iter().filter(|s| !s.alive).count();
        let publisher_errors: Vec<String> =
            pub_results.iter().filter_map(|p| p.error.clone()).collect();
        let hist = sh.latency.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let q = |quantile: f64| {
            if hist.is_empty() {
                0
            } else {
                hist.value_at_quantile(quantile)
            }
        };
        let events = std::mem::take(&mut *sh.events());
        let result = serde_json::json!({
            "scenario": "fanout",
            "label": args.label,
            "mode": args.mode.name(),
            "url": args.url,
            "subscribers": args.subscribers,
            "publishers": args.publishers,
            "rate": args.rate,
            "window": args.window,
            "lead": lead,
            "size": args.size,
            "warmup_s": args.warmup.as_secs_f64(),
            "duration_s": seconds,
            "published": published,
            "publishes_per_sec": (published as f64 / seconds).round(),
            "deliveries": deliveries,
            "deliveries_per_sec": (deliveries as f64 / seconds).round(),
            "latency_us": {
                "samples": hist.len(),
                "p50": q(0.5),
                "p90": q(0.9),
                "p99": q(0.99),
                "p999": q(0.999),
                "max": hist.max(),
                "mean": (hist.mean() * 10.0).round() / 10.0,
            },
            "published_total": published_total,
            "received_total": received_total,
            "lost": lost,
            "disconnected_subscribers": disconnected,
            "connection_ends": events.ends,
            "server_errors": events.server_errors,
            "server_error_samples": events.error_samples,
            "publisher_errors": publisher_errors,
            "behind_max_us": pub_results.iter().map(|p| p.behind_max_us).max().unwrap_or(0),
            "client_cpu_pct": client_cpu,
            "server_cpu_pct": server_cpu,
            "other_cpu_pct": other_cpu,
        });

        println!(
            "fanout {} {} ({} subscribers, {} publisher(s), {pace}, {} B bodies, {seconds} s measured)",
            args.mode.name(),
            args.url,
            args.subscribers,
            args.publishers,
            args.size
        );
        println!(
            "  published    {published} ({:.0}/s)",
            published as f64 / seconds
        );
        println!(
            "  deliveries   {deliveries} ({:.0}/s)",
            deliveries as f64 / seconds
        );
        println!(
            "  latency µs   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            hist.max(),
            hist.len()
        );
        let pct = |v: Option<f64>| v.map(|v| format!("{v}%")).unwrap_or_else(|| "n/a".into());
        println!(
            "  cpu          client {}  server {}  everything else {} (of one core)",
            pct(client_cpu),
            pct(server_cpu),
            pct(other_cpu)
        );
        println!(
            "  integrity    lost {lost}, disconnected subscribers {disconnected}, server errors {}, publisher errors {}",
            events.server_errors,
            publisher_errors.len()
        );
        for (how, count) in &events.ends {
            println!("  ended early  {count} × {how}");
        }
        for sample in &events.error_samples {
            println!("  server error {sample}");
        }
        for error in &publisher_errors {
            println!("  publisher    {error}");
        }
        let line = result.to_string();
        println!("{line}");
        if let Some(path) = &args.json {
            std::fs::write(path, format!("{line}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if args.strict {
            let mut problems = Vec::new();
            if deliveries == 0 {
                problems.push("no deliveries measured".to_string());
            }
            if lost > 0 {
                problems.push(format!("{lost} deliveries lost"));
            }
            if disconnected > 0 || !events.ends.is_empty() {
                problems.push(format!(
                    "{disconnected} subscribers disconnected ({:?})",
                    events.ends
                ));
            }
            if events.server_errors > 0 {
                problems.push(format!("{} server errors", events.server_errors));
            }
            if !publisher_errors.is_empty() {
                problems.push(format!("publisher errors: {publisher_errors:?}"));
            }
            if !problems.is_empty() {
                bail!("--strict: {}", problems.join("; "));
            }
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn bodies_have_the_requested_size_and_a_readable_stamp() {
            for size in [0usize, 30, 100, 1000] {
                let mut body = Vec::new();
                write_body(&mut body, 1_234_567, size);
                let text = std::str::from_utf8(&body).unwrap();
                let value: serde_json::Value = serde_json::from_str(text).unwrap();
                assert_eq!(value["t"], 1_234_567);
                if size >= 30 {
                    assert_eq!(body.len(), size);
                }
                assert_eq!(stamp(&body), Some(1_234_567));
            }
        }

        #[test]
        fn stamp_is_found_inside_room_messages_only() {
            let message = br#"{"type":"message","room":"bench","seq":3,"from":"p0","ts":1700000000000,"body":{"t":42,"pad":"xx"}}"#;
            assert_eq!(stamp(message), Some(42));
            assert_eq!(
                stamp(
                    br#"{"type":"presence","room":"bench","event":"join","user":"s1","online":2}"#
                ),
                None
            );
            assert_eq!(
                stamp(br#"{"type":"joined","room":"bench","online":2,"seq":0}"#),
                None
            );
        }
    }
}
