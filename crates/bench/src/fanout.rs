//! `switchboard-bench fanout`: N subscribers in one room (or relay channel),
//! P publishers; deliveries per second and end-to-end latency. Also drives a
//! Socket.IO server (`--mode socketio`, see [`super::socketio`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::duration::parse as parse_duration;
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{oneshot, watch, Notify, Semaphore};
use tokio::time::timeout;

use super::common::{self, Window, CLOSE_WAIT, HANDSHAKE_TIMEOUT};
use super::socketio;
use super::wire::OP_TEXT;
use super::wire::{self, FrameBuf, Target};

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

#[derive(clap::Args, Debug)]
pub struct FanoutArgs {
    /// Server to measure: ws://HOST:PORT (the path is set by --mode).
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    url: String,
    /// `room`: /ws?user=… with join/publish/ack; `relay`: /relay/ROOM,
    /// raw text frames (start Switchboard with `--rate-limit 0` for room);
    /// `socketio`: a Socket.IO v4 server's `msg` events.
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
            Mode::Socketio => socketio::PATH.to_string(),
        }
    }

    /// The send time stamped in a received message.
    fn stamp(&self, payload: &[u8]) -> Option<u64> {
        match self.mode {
            Mode::Socketio => socketio::stamp(payload),
            Mode::Room | Mode::Relay => common::stamp(payload),
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
    /// Connections set up, and failures.
    setup: common::Setup,
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
        self.setup.fail(what);
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
    let source = cfg.target.source_for(idx, cfg.conns_per_ip);
    let path = cfg.path(&format!("s{idx}"));
    let (mut stream, leftover) = match common::connect(&cfg.target, source, &path, &gate).await {
        Ok(connection) => connection,
        Err(err) => {
            sh.fail(format!("subscriber {idx}: {err}"));
            gone(&sh);
            return res;
        }
    };
    let mask = wire::mask_for(idx);
    let mut out = Vec::new();
    let mut joined = cfg.mode == Mode::Relay;
    if joined {
        sh.setup.ready();
    } else if cfg.mode == Mode::Room {
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
    let end = loop {
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
        let dispatched = wire::dispatch(&mut buf, &mut out, mask, |payload, out| {
            frames += 1;
            if let Some(t) = cfg.stamp(payload) {
                res.received += 1;
                if measuring && t <= now {
                    res.in_window += 1;
                    samples.push(now - t);
                }
            } else if cfg.mode == Mode::Socketio {
                match socketio::on_packet(payload, out, mask) {
                    socketio::Step::Connected if !joined => {
                        joined = true;
                        sh.setup.ready();
                    }
                    socketio::Step::Closed(how) => return Err(how),
                    _ => {}
                }
            } else if !joined && payload.starts_with(b"{\"type\":\"joined\"") {
                joined = true;
                sh.setup.ready();
            } else if payload.starts_with(b"{\"type\":\"error\"") {
                sh.server_error(payload);
                if !joined {
                    return Err("join refused".into());
                }
            }
            Ok(false)
        });
        if let Err(how) = dispatched {
            break End::Gone(how);
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
            let (mut reader, mut writer) = stream.split();
            common::close_politely(&mut reader, &mut writer, mask).await;
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
    let source = cfg.target.source_for(conn_no, cfg.conns_per_ip);
    let path = cfg.path(&format!("p{idx}"));
    let (stream, leftover) = match common::connect(&cfg.target, source, &path, &gate).await {
        Ok(connection) => connection,
        Err(err) => {
            sh.fail(format!("publisher {idx}: {err}"));
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
        cfg.mode,
    ));
    if cfg.mode != Mode::Relay {
        // Room: join, wait for `joined`. Socket.IO: the reader answers the
        // open packet; wait for the namespace to be connected.
        let mut frame = Vec::new();
        if cfg.mode == Mode::Room {
            wire::encode_frame(&mut frame, OP_TEXT, cfg.join.as_bytes(), mask);
        }
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
    sh.setup.ready();
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
    mode: Mode,
) {
    let mut joined_tx = Some(joined_tx);
    let mut acked = 0u64;
    let mut out = Vec::new();
    let mut pending = !buf.is_empty();
    let end = loop {
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
        let dispatched = wire::dispatch(&mut buf, &mut out, mask, |p, out| {
            if mode == Mode::Socketio {
                match socketio::on_packet(p, out, mask) {
                    socketio::Step::Connected => {
                        if let Some(tx) = joined_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    socketio::Step::Closed(how) => return Err(how),
                    socketio::Step::Continue => {}
                }
            } else if p.starts_with(b"{\"type\":\"ack\"") {
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
            Ok(false)
        });
        if let Err(how) = dispatched {
            break End::Gone(how);
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
            // The publish loop is over: nobody else wants the writer.
            let mut writer = writer.lock().await;
            common::close_politely(&mut reader, &mut *writer, mask).await;
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
            match cfg.mode {
                Mode::Room => {
                    message.extend_from_slice(cfg.publish_prefix.as_bytes());
                    common::write_body(&mut message, t, None, cfg.size);
                    message.push(b'}');
                }
                Mode::Relay => common::write_body(&mut message, t, None, cfg.size),
                Mode::Socketio => socketio::write_event(&mut message, t, cfg.size),
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
    common::block_on(drive(args, target))
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
    let sh = Arc::new(Shared {
        epoch: Instant::now(),
        slots: (0..args.subscribers).map(|_| Slot::default()).collect(),
        window_start: AtomicU64::new(u64::MAX),
        window_end: AtomicU64::new(u64::MAX),
        latency: Mutex::new(common::latency_histogram()),
        watch: AtomicUsize::new(usize::MAX),
        progress: Notify::new(),
        setup: common::Setup::default(),
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
    sh.setup
        .wait_ready(args.subscribers, "subscribers", Duration::from_millis(20))
        .await?;
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
    sh.setup
        .wait_ready(
            args.subscribers + args.publishers,
            "publishers",
            Duration::from_millis(20),
        )
        .await?;
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

    let window = Window::open(sh.epoch, args.warmup, args.duration);
    let (start, end) = (window.start, window.end);
    sh.window_start.store(start, Ordering::SeqCst);
    sh.window_end.store(end, Ordering::SeqCst);
    let cpu_probe = window.spawn_cpu_probe(args.output.server_pid);
    let _ = go_tx.send(true);
    let ticker = window.spawn_progress({
        let sh = sh.clone();
        let (mut last_pub, mut last_recv) = (0u64, 0u64);
        move || {
            let published = sh.published.load(Ordering::Relaxed);
            let received = sh.received_total();
            let line = format!(
                "published {published} (+{}/s)  deliveries {received} (+{}/s)  live subscribers {}",
                published.saturating_sub(last_pub),
                received.saturating_sub(last_recv),
                sh.live_subscribers(),
            );
            last_pub = published;
            last_recv = received;
            line
        }
    });

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
        if complete || Instant::now() > drain_deadline || last.1.elapsed() > Duration::from_secs(1)
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
    let cpu = cpu_probe.await.unwrap_or_default();

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
    let events = std::mem::take(&mut *sh.events());
    let result = serde_json::json!({
        "scenario": "fanout",
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
        "client_cpu_pct": cpu.client,
        "server_cpu_pct": cpu.server,
        "other_cpu_pct": cpu.other,
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
    println!("  latency µs   {}", common::latency_line(&hist));
    println!("  cpu          {}", cpu.line());
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
    args.output.emit(result)?;
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
