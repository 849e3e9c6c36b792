//! `switchboard-bench fanout`: N subscribers in one room (or relay channel),
//! P publishers; deliveries per second and end-to-end latency. Also drives a
//! Socket.IO server (`--mode socketio`, see [`super::socketio`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{oneshot, Notify};
use tokio::time::timeout;

use super::common::{self, Window, CLOSE_WAIT, HANDSHAKE_TIMEOUT};
use super::driver::{self, read_until, Frames, Gain, Outbox, Problems, Run};
use super::socketio;
use super::sse;
use super::wire::OP_TEXT;
use super::wire::{self, FrameBuf, Target};

/// Read buffer per subscriber.
const SUB_BUFFER: usize = 16 * 1024;
/// Latency samples a subscriber keeps before adding them to the histogram.
const SAMPLE_BATCH: usize = 512;
/// Most publishes put into one write.
const MAX_BATCH: u64 = 16;
/// Longest the run waits, after the window, for the last deliveries.
const DRAIN: Duration = Duration::from_secs(10);
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
    /// Socket.IO v4 events on /socket.io/ (WebSocket transport), for
    /// `bench/baselines/socketio-broadcast.js`.
    Socketio,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Room => "room",
            Mode::Relay => "relay",
            Mode::Socketio => "socketio",
        }
    }
}

/// How subscribers connect in room mode (publishers always use /ws).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// WebSocket, /ws.
    Ws,
    /// The HTTP fallback: events over SSE (GET /sse), the join POSTed.
    Sse,
}

#[derive(clap::Args, Debug)]
pub struct FanoutArgs {
    /// Server to measure: ws://HOST:PORT (the path is set by --mode).
    /// Repeat it (or give a comma list) for the nodes of a cluster
    /// (room and relay modes, WebSocket subscribers): subscriber i and
    /// publisher j connect to node i and node j mod (number of URLs), and
    /// the latency of deliveries across nodes is also reported apart.
    #[arg(long, default_value = "ws://127.0.0.1:8080", value_delimiter = ',')]
    url: Vec<String>,
    /// `room`: /ws?user=… with join/publish/ack; `relay`: /relay/ROOM,
    /// raw text frames (start Switchboard with `--rate-limit 0` for room);
    /// `socketio`: a Socket.IO v4 server's `msg` events.
    #[arg(long, value_enum, default_value_t = Mode::Room)]
    mode: Mode,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Room mode: how subscribers connect (`sse`: the HTTP fallback
    /// transport; its server-side cost against `ws` in the same run).
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    transport: Transport,
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Messages per second per publisher; 0 = flat out, paced only by
    /// the windows (see --window).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[command(flatten)]
    timing: driver::Timing,
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
    #[command(flatten)]
    dialing: driver::Dialing,
    #[command(flatten)]
    output: common::Output,
    /// Exit with an error if a message was lost, a connection dropped or
    /// the server answered with an error (smoke tests; timing is never
    /// judged).
    #[arg(long)]
    strict: bool,
}

/// The parts of the arguments every task needs.
struct Cfg {
    mode: Mode,
    /// Servers the connections are spread over (1: a single server).
    nodes: usize,
    transport: Transport,
    subscribers: usize,
    publishers: usize,
    rate: f64,
    size: usize,
    window: u64,
    lead: u64,
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
            Mode::Socketio => socketio::PATH.to_string(),
        }
    }

    /// The send time stamped in a received message and, spread over
    /// several nodes, the publisher's node.
    fn stamp(&self, payload: &[u8]) -> Option<(u64, Option<u64>)> {
        match self.mode {
            Mode::Socketio => socketio::stamp(payload).map(|t| (t, None)),
            Mode::Room | Mode::Relay if self.nodes > 1 => common::stamp_and_node(payload),
            Mode::Room | Mode::Relay => common::stamp(payload).map(|t| (t, None)),
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

struct Shared {
    slots: Box<[Slot]>,
    latency: Mutex<Histogram<u64>>,
    /// Over several nodes: the latency of deliveries whose publisher is on
    /// another node than the subscriber, and on the same one.
    latency_cross: Mutex<Histogram<u64>>,
    latency_same: Mutex<Histogram<u64>>,
    /// The subscriber a waiting publisher watches (the slowest).
    watch: AtomicUsize,
    /// Woken by acks and by the watched subscriber.
    progress: Notify,
    /// Publishes written, all publishers.
    published: AtomicU64,
    events: common::Events,
}

impl Shared {
    fn record(&self, samples: &mut Vec<u64>) {
        Shared::record_in(&self.latency, samples);
    }

    fn record_in(hist: &Mutex<Histogram<u64>>, samples: &mut Vec<u64>) {
        if samples.is_empty() {
            return;
        }
        let mut hist = hist.lock().unwrap_or_else(|e| e.into_inner());
        for value in samples.drain(..) {
            hist.saturating_record(value.max(1));
        }
    }

    /// A subscriber's samples, all of them and (over several nodes) split
    /// by where the publisher was.
    fn record_all(&self, frames: &mut Subscriber<'_>) {
        self.record(&mut frames.samples);
        Shared::record_in(&self.latency_cross, &mut frames.cross);
        Shared::record_in(&self.latency_same, &mut frames.same);
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

    /// Deliveries still owed to the live subscribers, of `published`.
    fn missing(&self, published: u64) -> u64 {
        self.slots
            .iter()
            .map(|s| s.received.load(Ordering::Relaxed))
            .filter(|&r| r != u64::MAX)
            .map(|r| published.saturating_sub(r))
            .sum()
    }

    fn frames_total(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.frames.load(Ordering::Relaxed))
            .sum()
    }
}

#[derive(Default)]
struct SubResult {
    received: u64,
    in_window: u64,
    /// Still connected when the run ended.
    alive: bool,
}

/// What a subscriber does with each frame: counts bench messages (and
/// their latency, in the window), and becomes ready at `joined` (room),
/// the namespace connect (Socket.IO) or at once (relay).
struct Subscriber<'a> {
    run: &'a Run,
    sh: &'a Shared,
    cfg: &'a Cfg,
    idx: usize,
    mask: [u8; 4],
    res: SubResult,
    joined: bool,
    frames: u64,
    samples: Vec<u64>,
    /// This subscriber's node, over several nodes.
    node: Option<u64>,
    /// Over several nodes, the samples again: publisher on another node,
    /// and on this one.
    cross: Vec<u64>,
    same: Vec<u64>,
    /// When the current read arrived, and whether in the window.
    now: u64,
    measuring: bool,
}

impl<'a> Subscriber<'a> {
    fn new(run: &'a Run, sh: &'a Shared, cfg: &'a Cfg, idx: usize, mask: [u8; 4]) -> Self {
        Subscriber {
            run,
            sh,
            cfg,
            idx,
            mask,
            res: SubResult::default(),
            joined: false,
            frames: 0,
            samples: Vec::with_capacity(SAMPLE_BATCH),
            node: (cfg.nodes > 1).then_some((idx % cfg.nodes) as u64),
            cross: Vec::new(),
            same: Vec::new(),
            now: 0,
            measuring: false,
        }
    }

    fn joined(&mut self) {
        if !self.joined {
            self.joined = true;
            self.run.ready();
        }
    }
}

impl Frames for Subscriber<'_> {
    fn on_read(&mut self) {
        self.now = self.run.now_us();
        self.measuring = self.run.measuring(self.now);
    }

    fn on_data(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        self.frames += 1;
        if let Some((t, from)) = self.cfg.stamp(payload) {
            self.res.received += 1;
            if self.measuring && t <= self.now {
                self.res.in_window += 1;
                self.samples.push(self.now - t);
                if let (Some(node), Some(from)) = (self.node, from) {
                    let split = if node == from {
                        &mut self.same
                    } else {
                        &mut self.cross
                    };
                    split.push(self.now - t);
                }
            }
        } else if self.cfg.mode == Mode::Socketio {
            match socketio::on_packet(payload, out, self.mask) {
                socketio::Step::Connected => self.joined(),
                socketio::Step::Closed(how) => return Err(how),
                socketio::Step::Continue => {}
            }
        } else if !self.joined && payload.starts_with(b"{\"type\":\"joined\"") {
            self.joined();
        } else if payload.starts_with(b"{\"type\":\"error\"") {
            self.sh.events.server_error(payload);
            if !self.joined {
                return Err("join refused".into());
            }
        }
        Ok(())
    }

    fn after_read(&mut self) {
        let slot = &self.sh.slots[self.idx];
        slot.frames.store(self.frames, Ordering::Relaxed);
        slot.received.store(self.res.received, Ordering::SeqCst);
        if self.sh.watch.load(Ordering::SeqCst) == self.idx {
            self.sh.progress.notify_waiters();
        }
        if self.samples.len() >= SAMPLE_BATCH {
            self.sh.record(&mut self.samples);
            if self.node.is_some() {
                Shared::record_in(&self.sh.latency_cross, &mut self.cross);
                Shared::record_in(&self.sh.latency_same, &mut self.same);
            }
        }
    }
}

async fn subscriber(run: Arc<Run>, sh: Arc<Shared>, cfg: Arc<Cfg>, idx: usize) -> SubResult {
    let slot = &sh.slots[idx];
    let gone = |sh: &Shared| {
        slot.received.store(u64::MAX, Ordering::SeqCst);
        sh.progress.notify_waiters();
    };
    if cfg.transport == Transport::Sse {
        return sse_subscriber(run, sh, cfg, idx).await;
    }
    let path = cfg.path(&format!("s{idx}"));
    let (stream, leftover) = match run.connect_node(run.node_for(idx), idx, &path).await {
        Ok(connection) => connection,
        Err(err) => {
            run.fail(format!("subscriber {idx}: {err}"));
            gone(&sh);
            return SubResult::default();
        }
    };
    let mask = wire::mask_for(idx);
    let mut out = Vec::new();
    if cfg.mode == Mode::Room {
        wire::encode_frame(&mut out, OP_TEXT, cfg.join.as_bytes(), mask);
    }
    let mut frames = Subscriber::new(&run, &sh, &cfg, idx, mask);
    if cfg.mode == Mode::Relay {
        frames.joined();
    }
    let end = driver::hold(
        stream,
        leftover,
        SUB_BUFFER,
        out,
        mask,
        run.stopped(),
        &mut frames,
    )
    .await;
    sh.record_all(&mut frames);
    let (mut res, joined) = (frames.res, frames.joined);
    match end.unasked() {
        None => res.alive = true,
        Some(how) => {
            gone(&sh);
            if joined {
                sh.events.ended(format!("subscriber: {how}"));
            } else {
                run.fail(format!("subscriber {idx}: {how} before joining"));
            }
        }
    }
    res
}

/// A room-mode subscriber over the HTTP fallback transport: the same
/// [`Subscriber`] counting, fed by [`sse::hold`].
async fn sse_subscriber(run: Arc<Run>, sh: Arc<Shared>, cfg: Arc<Cfg>, idx: usize) -> SubResult {
    let mut frames = Subscriber::new(&run, &sh, &cfg, idx, [0; 4]);
    let source = run.source_for(idx);
    let opened = {
        let _permit = run.permit().await;
        timeout(
            HANDSHAKE_TIMEOUT,
            sse::open(run.target(), source, &format!("?user=s{idx}")),
        )
        .await
    };
    let end = match opened {
        Ok(Ok(opened)) => {
            let first = Some(cfg.join.clone());
            sse::hold(
                opened,
                run.target(),
                source,
                first,
                run.stopped(),
                &mut frames,
            )
            .await
        }
        Ok(Err(err)) => driver::End::Gone(format!("{err:#}")),
        Err(_) => driver::End::Gone("GET /sse timed out".into()),
    };
    sh.record_all(&mut frames);
    let (mut res, joined) = (frames.res, frames.joined);
    match end.unasked() {
        None => res.alive = true,
        Some(how) => {
            sh.slots[idx].received.store(u64::MAX, Ordering::SeqCst);
            sh.progress.notify_waiters();
            if joined {
                sh.events.ended(format!("subscriber: {how}"));
            } else {
                run.fail(format!("subscriber {idx}: {how} before joining"));
            }
        }
    }
    res
}

/// What a publisher's reader tells its writer.
#[derive(Default)]
struct PubState {
    acked: AtomicU64,
    gone: AtomicBool,
}

/// The publisher's write half, shared by its publish loop and its reader
/// (pongs, the Socket.IO connect).
#[derive(Clone)]
struct Writer(Arc<tokio::sync::Mutex<OwnedWriteHalf>>);

impl Outbox for Writer {
    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.lock().await.write_all(bytes).await
    }
}

#[derive(Default)]
struct PubResult {
    sent: u64,
    in_window: u64,
    /// At a fixed rate: the most a send was late on its schedule.
    behind_max_us: u64,
    error: Option<String>,
}

async fn publisher(run: Arc<Run>, sh: Arc<Shared>, cfg: Arc<Cfg>, idx: usize) -> PubResult {
    let conn_no = cfg.subscribers + idx;
    let path = cfg.path(&format!("p{idx}"));
    let node = run.node_for(idx);
    let (stream, leftover) = match run.connect_node(node, conn_no, &path).await {
        Ok(connection) => connection,
        Err(err) => {
            run.fail(format!("publisher {idx}: {err}"));
            return PubResult::default();
        }
    };
    let mask = wire::mask_for(conn_no);
    let (reader, writer) = stream.into_split();
    let mut writer = Writer(Arc::new(tokio::sync::Mutex::new(writer)));
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
        cfg.mode,
    ));
    if cfg.mode != Mode::Relay {
        // Room: join, wait for `joined`. Socket.IO: the reader answers the
        // open packet; wait for the namespace to be connected.
        let mut frame = Vec::new();
        if cfg.mode == Mode::Room {
            wire::encode_frame(&mut frame, OP_TEXT, cfg.join.as_bytes(), mask);
        }
        let sent = writer.send(&frame).await;
        let joined = match sent {
            Ok(()) => timeout(HANDSHAKE_TIMEOUT, joined_rx)
                .await
                .ok()
                .and_then(Result::ok)
                .is_some(),
            Err(_) => false,
        };
        if !joined {
            run.fail(format!("publisher {idx}: join not answered"));
            let _ = stop_tx.send(());
            let _ = reader_task.await;
            return PubResult::default();
        }
    }
    run.ready();
    let mut result = PubResult::default();
    if let Some(window) = run.go().await {
        // Over several nodes, each message names its publisher's node.
        let tag = (cfg.nodes > 1).then_some(node as u64);
        let to = (&writer, &*state, mask, tag);
        if let Err(err) = publish_loop(&run, &sh, &cfg, window, to, &mut result).await {
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

/// What a publisher's reader does with each frame: counts acks (and
/// refusals), and tells the publisher when it has joined.
struct PublisherFrames<'a> {
    sh: &'a Shared,
    state: &'a PubState,
    joined_tx: Option<oneshot::Sender<()>>,
    mask: [u8; 4],
    mode: Mode,
    acked: u64,
    before: u64,
}

impl PublisherFrames<'_> {
    fn joined(&mut self) {
        if let Some(tx) = self.joined_tx.take() {
            let _ = tx.send(());
        }
    }
}

impl Frames for PublisherFrames<'_> {
    fn on_read(&mut self) {
        self.before = self.acked;
    }

    fn on_data(&mut self, p: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        if self.mode == Mode::Socketio {
            match socketio::on_packet(p, out, self.mask) {
                socketio::Step::Connected => self.joined(),
                socketio::Step::Closed(how) => return Err(how),
                socketio::Step::Continue => {}
            }
        } else if p.starts_with(b"{\"type\":\"ack\"") {
            self.acked += 1;
        } else if p.starts_with(b"{\"type\":\"joined\"") {
            self.joined();
        } else if p.starts_with(b"{\"type\":\"error\"") {
            // A refused publish is answered too: it frees its slot.
            self.acked += 1;
            self.sh.events.server_error(p);
        }
        Ok(())
    }

    fn after_read(&mut self) {
        if self.acked != self.before {
            self.state.acked.store(self.acked, Ordering::Release);
            self.sh.progress.notify_waiters();
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn publisher_reader(
    sh: Arc<Shared>,
    mut reader: tokio::net::tcp::OwnedReadHalf,
    mut buf: FrameBuf,
    mut writer: Writer,
    state: Arc<PubState>,
    joined_tx: oneshot::Sender<()>,
    stop: oneshot::Receiver<()>,
    mask: [u8; 4],
    mode: Mode,
) {
    let mut frames = PublisherFrames {
        sh: &sh,
        state: &state,
        joined_tx: Some(joined_tx),
        mask,
        mode,
        acked: 0,
        before: 0,
    };
    let stop = async {
        let _ = stop.await;
    };
    let end = read_until(
        &mut reader,
        &mut writer,
        &mut buf,
        &mut Vec::new(),
        mask,
        stop,
        &mut frames,
    )
    .await;
    match end.unasked() {
        None => {
            // The publish loop is over: nobody else wants the writer.
            let mut writer = writer.0.lock().await;
            common::close_politely(&mut reader, &mut *writer, mask).await;
        }
        Some(how) => {
            state.gone.store(true, Ordering::Release);
            sh.progress.notify_waiters();
            sh.events.ended(format!("publisher: {how}"));
        }
    }
}

/// A publisher's connection as its publish loop uses it: the writer, what
/// its reader counted, its mask and (over several nodes) its node.
type PubConn<'a> = (&'a Writer, &'a PubState, [u8; 4], Option<u64>);

async fn publish_loop(
    run: &Run,
    sh: &Shared,
    cfg: &Cfg,
    window: Window,
    (writer, state, mask, node): PubConn<'_>,
    result: &mut PubResult,
) -> anyhow::Result<()> {
    let (window_start, window_end) = (window.start, window.end);
    let started = run.now_us();
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
        let now = run.now_us();
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
            let body = |message: &mut Vec<u8>| match node {
                Some(node) => common::write_body_from(message, t, node, cfg.size),
                None => common::write_body(message, t, None, cfg.size),
            };
            match cfg.mode {
                Mode::Room => {
                    message.extend_from_slice(cfg.publish_prefix.as_bytes());
                    body(&mut message);
                    message.push(b'}');
                }
                Mode::Relay => body(&mut message),
                Mode::Socketio => socketio::write_event(&mut message, t, cfg.size),
            }
            wire::encode_frame(&mut batch, OP_TEXT, &message, mask);
            result.sent += 1;
            if t >= window_start && t < window_end {
                result.in_window += 1;
            }
        }
        writer
            .0
            .lock()
            .await
            .write_all(&batch)
            .await
            .context("write")?;
        sh.published.fetch_add(allowed, Ordering::AcqRel);
    }
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
    let targets = wire::parse_urls(&args.url)?;
    if targets.len() > 1 && (args.mode == Mode::Socketio || args.transport == Transport::Sse) {
        bail!("several --url: room or relay mode over WebSocket only");
    }
    common::block_on(drive(args, targets))
}

async fn drive(args: FanoutArgs, targets: Vec<Target>) -> anyhow::Result<()> {
    let room_json = serde_json::to_string(&args.room)?;
    let lead = args.lead.unwrap_or(args.window);
    let url = wire::urls_label(&args.url);
    let nodes = targets.len();
    let cfg = Arc::new(Cfg {
        mode: args.mode,
        nodes,
        transport: args.transport,
        subscribers: args.subscribers,
        publishers: args.publishers,
        rate: args.rate,
        size: args.size,
        window: args.window,
        lead,
        relay_path: format!("/relay/{}", args.room),
        join: format!("{{\"type\":\"join\",\"room\":{room_json}}}"),
        publish_prefix: format!("{{\"type\":\"publish\",\"room\":{room_json},\"body\":"),
    });
    let sh = Arc::new(Shared {
        slots: (0..args.subscribers).map(|_| Slot::default()).collect(),
        latency: Mutex::new(common::latency_histogram()),
        latency_cross: Mutex::new(common::latency_histogram()),
        latency_same: Mutex::new(common::latency_histogram()),
        watch: AtomicUsize::new(usize::MAX),
        progress: Notify::new(),
        published: AtomicU64::new(0),
        events: common::Events::default(),
    });
    let mut pace = if args.rate > 0.0 {
        format!("{} msg/s per publisher", args.rate)
    } else {
        format!("flat out, lead {lead}")
    };
    if args.mode == Mode::Room {
        pace.push_str(&format!(", ack window {}", args.window));
    }
    if args.transport == Transport::Sse {
        if args.mode != Mode::Room {
            bail!("--transport sse needs --mode room");
        }
        pace.push_str(", subscribers over SSE");
    }
    eprintln!(
        "fanout {} {}: {} subscribers, {} publisher(s), {pace}, {}-byte bodies, {:?} warm-up + {:?} measured",
        args.mode.name(),
        url,
        args.subscribers,
        args.publishers,
        args.size,
        args.timing.warmup,
        args.timing.duration
    );

    let run = Run::spread(
        targets,
        args.dialing.connect_concurrency,
        args.dialing.conns_per_ip,
    );
    let connect_started = Instant::now();
    let subs = run.spawn(0..args.subscribers, |run, idx| {
        subscriber(run, sh.clone(), cfg.clone(), idx)
    });
    run.wait_ready(args.subscribers, "subscribers", Duration::from_millis(20))
        .await?;
    let pubs = run.spawn(0..args.publishers, |run, idx| {
        publisher(run, sh.clone(), cfg.clone(), idx)
    });
    run.wait_ready(
        args.subscribers + args.publishers,
        "publishers",
        Duration::from_millis(20),
    )
    .await?;
    // Let the join storm (presence frames, batched past 8 users) pass, and the
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

    let measuring = run.measure(&args.timing, &args.output.server_pid, {
        let sh = sh.clone();
        let (mut published, mut received) = (Gain::default(), Gain::default());
        move || {
            format!(
                "published {}  deliveries {}  live subscribers {}",
                published.show(sh.published.load(Ordering::Relaxed)),
                received.show(sh.received_total()),
                sh.live_subscribers(),
            )
        }
    });

    let mut pub_results = Vec::with_capacity(pubs.len());
    for handle in pubs {
        pub_results.push(handle.await.unwrap_or_default());
    }
    // Drain: until every live subscriber has everything, or nothing moves
    // for a second.
    let published_total = sh.published.load(Ordering::SeqCst);
    driver::drain(DRAIN, || sh.missing(published_total)).await;
    let (sub_results, cpu) = run.finish(measuring, subs).await;

    // Results.
    let seconds = args.timing.duration.as_secs_f64();
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
    let events = sh.events.take();
    let mut result = serde_json::json!({
        "scenario": "fanout",
        // Room mode with SSE subscribers is its own target in the report.
        "mode": match (args.mode, args.transport) {
            (Mode::Room, Transport::Sse) => "sse",
            (mode, _) => mode.name(),
        },
        "url": url,
        "subscribers": args.subscribers,
        "publishers": args.publishers,
        "rate": args.rate,
        "window": args.window,
        "lead": lead,
        "size": args.size,
        "warmup_s": args.timing.warmup.as_secs_f64(),
        "duration_s": seconds,
        "published": published,
        "publishes_per_sec": (published as f64 / seconds).round(),
        "deliveries": deliveries,
        "deliveries_per_sec": (deliveries as f64 / seconds).round(),
        "latency_us": common::latency_json(&hist),
        "published_total": published_total,
        "received_total": received_total,
        "lost": lost,
        "disconnected_subscribers": disconnected,
        "connection_ends": events.ends,
        "server_errors": events.server_errors,
        "server_error_samples": events.error_samples,
        "publisher_errors": publisher_errors,
        "behind_max_us": pub_results.iter().map(|p| p.behind_max_us).max().unwrap_or(0),
    });

    println!(
        "fanout {} {} ({} subscribers, {} publisher(s), {pace}, {} B bodies, {seconds} s measured)",
        args.mode.name(),
        url,
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
    println!("  latency µs   {}", common::latency_line(&hist));
    if nodes > 1 {
        // Only over several nodes: a single server's result is unchanged.
        let cross = sh
            .latency_cross
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let same = sh
            .latency_same
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        println!("  cross-node   {}", common::latency_line(&cross));
        println!("  same node    {}", common::latency_line(&same));
        result["nodes"] = nodes.into();
        result["latency_cross_node_us"] = common::latency_json(&cross);
        result["latency_same_node_us"] = common::latency_json(&same);
    }
    println!("  cpu          {}", cpu.line());
    if let Some(threads) = cpu.threads_line() {
        println!("  threads      {threads}");
    }
    println!(
        "  integrity    lost {lost}, disconnected subscribers {disconnected}, server errors {}, publisher errors {}",
        events.server_errors,
        publisher_errors.len()
    );
    driver::print_events(&events.ends, &events.error_samples);
    for error in &publisher_errors {
        println!("  publisher    {error}");
    }
    let mut problems = Problems::default();
    problems.check(deliveries == 0, || "no deliveries measured".into());
    problems.check(lost > 0, || format!("{lost} deliveries lost"));
    problems.check(disconnected > 0 || !events.ends.is_empty(), || {
        format!(
            "{disconnected} subscribers disconnected ({:?})",
            events.ends
        )
    });
    problems.check(events.server_errors > 0, || {
        format!("{} server errors", events.server_errors)
    });
    problems.check(!publisher_errors.is_empty(), || {
        format!("publisher errors: {publisher_errors:?}")
    });
    driver::finish(
        &args.output,
        result,
        Some(cpu),
        args.strict,
        problems.into_vec(),
    )
}
