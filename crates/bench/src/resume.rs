//! `switchboard-bench resume`: a resume storm.
//!
//! N clients (users `PREFIX{i}`) spread over R rooms (client `i` joins room
//! `i mod R`), and P publishers (`PREFIX-p{j}`, publisher `j` in rooms
//! `j, j + P, …`). Then:
//!
//! 1. live: the publishers publish M messages per room; every client
//!    receives them and keeps the last seq it saw;
//! 2. offline: every client closes; the publishers publish K more per room;
//! 3. storm: every client reconnects at once (up to `--connect-concurrency`
//!    handshakes in flight) and joins with `since` = its last seq. Its
//!    replay is complete when it has every message up to the room's last
//!    seq. With `--during D` the publishers publish D more per room during
//!    the storm, which the clients must get live, after their replay,
//!    without a gap or a duplicate.
//!
//! Reported: the time from the start of the storm until every client's
//! replay was complete, each client's resume latency (from the start of its
//! connect to its last replayed message), and, over all clients and both
//! connections, messages missing (seqs skipped, or never received) and
//! duplicated (a seq not above the last one), and `reset` events.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::duration::parse as parse_duration;
use anyhow::bail;
use tokio::sync::{mpsc, oneshot, watch};

use super::client::{self, Conn};
use super::common::{self, CpuProbe, HANDSHAKE_TIMEOUT};
use super::driver::{self, Frames, Gain, Problems, Run};
use super::wire::{self, Target};

/// Read buffer per client (it grows when a frame needs more).
const BUFFER: usize = 4 * 1024;
/// A publisher with publishes in flight and nothing from the server for
/// this long gives up.
const STALL: Duration = Duration::from_secs(10);
/// Longest the run waits for the live messages to reach every client.
const SETTLE: Duration = Duration::from_secs(30);
/// Most rooms one publisher joins (the server's default
/// `--max-rooms-per-connection`).
const ROOMS_PER_PUBLISHER: usize = 100;

// The phases, in order (a watch channel tells the clients).
const LIVE: u8 = 0;
const OFFLINE: u8 = 1;
const STORM: u8 = 2;
const STOP: u8 = 3;

fn phase_name(phase: u8) -> &'static str {
    match phase {
        LIVE => "live",
        OFFLINE => "offline",
        STORM => "storm",
        _ => "stopping",
    }
}

#[derive(clap::Args, Debug)]
pub struct ResumeArgs {
    /// Server to measure: ws://HOST:PORT. Start Switchboard with
    /// `--rate-limit 0 --max-connections-per-ip 0 --connect-rate-per-ip 0`.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    url: String,
    /// Client connections (users PREFIX0, PREFIX1, …).
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Rooms the clients are spread over (client i joins room i mod R).
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Publisher connections (raised to at least R/100: a connection may
    /// be in 100 rooms).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Messages per room published while every client is connected.
    #[arg(long, default_value_t = 20)]
    before: u64,
    /// Messages per room published while every client is offline.
    #[arg(long, default_value_t = 20)]
    offline: u64,
    /// Messages per room published during the reconnect storm.
    #[arg(long, default_value_t = 0)]
    during: u64,
    /// Most publishes per publisher without an ack yet.
    #[arg(long, default_value_t = 64)]
    window: u64,
    /// Bytes of each message body, a JSON object {"t":µs,"pad":"xx…"}.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Room names are PREFIX-0, PREFIX-1, …
    #[arg(long, default_value = "resume")]
    room_prefix: String,
    /// Client users are PREFIX{i}, publishers PREFIX-p{j} (letters,
    /// digits, - and _).
    #[arg(long, default_value = "r")]
    user_prefix: String,
    /// Handshakes in flight at once (while setting up, and in the storm).
    #[arg(long, default_value_t = 1000)]
    connect_concurrency: usize,
    /// Connections per source address; past it connections bind
    /// 127.0.0.2, 127.0.0.3, … (loopback targets only). The storm's
    /// connections use addresses of their own.
    #[arg(long, default_value_t = 5000)]
    conns_per_ip: usize,
    /// Longest the storm may take (every client resumed). Units: ms, s, m.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    output: common::Output,
    /// Exit with an error on any missing or duplicated message, `reset`,
    /// `error` event, failed or dropped connection, or a client not resumed
    /// within --timeout (smoke tests; timing is otherwise never judged).
    #[arg(long)]
    strict: bool,
}

struct Cfg {
    clients: usize,
    rooms: usize,
    publishers: usize,
    during: u64,
    window: u64,
    size: usize,
    room_prefix: String,
    user_prefix: String,
    storm_timeout: Duration,
    /// The rooms' names as JSON strings.
    room_json: Vec<String>,
}

impl Cfg {
    /// The room index of a room name.
    fn room_of(&self, name: &[u8]) -> Option<usize> {
        let rest = name
            .strip_prefix(self.room_prefix.as_bytes())?
            .strip_prefix(b"-")?;
        let r: usize = std::str::from_utf8(rest).ok()?.parse().ok()?;
        (r < self.rooms).then_some(r)
    }
}

struct Shared {
    /// Highest seq acked (or answered in `joined`) per room.
    room_top: Box<[AtomicU64]>,
    /// Each room's top when the storm started.
    top_at_storm: Box<[AtomicU64]>,
    /// Each client's last seq.
    last: Box<[AtomicU64]>,
    phase: AtomicU8,
    /// Connecting, and the connections set up (and failed).
    run: Arc<Run>,
    /// Clients whose first connection is over.
    closed: AtomicUsize,
    /// Clients reconnected in the storm.
    reconnected: AtomicUsize,
    /// Clients whose replay is complete.
    resumed: AtomicUsize,
    /// Clients done with the storm, one way or another.
    storm_over: AtomicUsize,
    /// The storm's start, µs since `epoch`.
    storm_start: AtomicU64,
    published: AtomicU64,
    received: AtomicU64,
    events: common::Events,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.run.now_us()
    }

    fn fail(&self, what: String) {
        self.run.fail(what);
    }

    fn ended(&self, how: String) {
        self.events.ended(how);
    }

    fn server_error(&self, payload: &[u8]) {
        self.events.server_error(payload);
    }
}

/// A client's view of its room's seqs.
#[derive(Default, Clone, Copy)]
struct Track {
    last: u64,
    received: u64,
    /// Seqs skipped.
    gaps: u64,
    /// Seqs not above the last one.
    duplicates: u64,
    resets: u64,
    /// Seqs skipped by a `reset`.
    reset_skipped: u64,
    errors: u64,
}

impl Track {
    fn on_event(&mut self, sh: &Shared, payload: &[u8]) {
        if client::is(payload, b"message") {
            let Some(seq) = common::field_u64(payload, b"\"seq\":") else {
                self.errors += 1;
                sh.server_error(payload);
                return;
            };
            if seq <= self.last {
                self.duplicates += 1;
            } else {
                self.gaps += seq - self.last - 1;
                self.last = seq;
                self.received += 1;
            }
        } else if client::is(payload, b"reset") {
            // Announced: seqs up to the reset's are skipped, not missing.
            self.resets += 1;
            sh.server_error(payload);
            if let Some(seq) = common::field_u64(payload, b"\"seq\":") {
                if seq > self.last {
                    self.reset_skipped += seq - self.last;
                    self.last = seq;
                }
            }
        } else if client::is(payload, b"error") {
            self.errors += 1;
            sh.server_error(payload);
        }
    }
}

#[derive(Default)]
struct ClientResult {
    room: usize,
    /// First connection.
    live: Track,
    /// Reconnection.
    storm: Track,
    /// The seq the client resumed from.
    since: u64,
    joined_seq: Option<u64>,
    /// Storm: the handshake, µs.
    connect_us: Option<u64>,
    /// Storm: from the start of the connect to the replay complete, µs.
    resume_us: Option<u64>,
    /// Storm: when the replay was complete, µs since the epoch.
    done_at: Option<u64>,
    /// Storm: reconnected.
    reconnected: bool,
}

fn joined_seq(payload: &[u8]) -> Option<Result<u64, String>> {
    if client::is(payload, b"joined") {
        Some(common::field_u64(payload, b"\"seq\":").ok_or_else(|| "joined without seq".into()))
    } else if client::is(payload, b"error") {
        Some(Err(format!(
            "join refused: {}",
            String::from_utf8_lossy(payload)
        )))
    } else {
        None
    }
}

/// Waits for the phase to reach `phase`; false if the run was abandoned.
async fn reached(rx: &mut watch::Receiver<u8>, phase: u8) -> bool {
    rx.wait_for(|p| *p >= phase).await.is_ok()
}

/// A client's frames: its room's seqs tracked, and shown to the run after
/// each read; in the storm, also the rejoin's answer and when the replay is
/// complete.
struct ClientFrames<'a> {
    sh: &'a Shared,
    idx: usize,
    track: Track,
    received_before: u64,
    storm: Option<Resuming>,
}

/// A reconnected client's progress.
struct Resuming {
    /// The room's last seq when the storm began.
    top: u64,
    /// Publishes during the storm: the replay ends at the `joined` seq.
    during: bool,
    joined: Option<u64>,
    done_at: Option<u64>,
}

impl Frames for ClientFrames<'_> {
    fn on_read(&mut self) {
        self.received_before = self.track.received;
    }

    fn on_data(&mut self, p: &[u8], _: &mut Vec<u8>) -> Result<(), String> {
        match (&mut self.storm, joined_seq(p)) {
            (Some(storm), Some(Ok(seq))) if storm.joined.is_none() => storm.joined = Some(seq),
            (Some(_), Some(_)) => {
                self.track.errors += 1;
                self.sh.server_error(p);
            }
            _ => self.track.on_event(self.sh, p),
        }
        Ok(())
    }

    fn after_read(&mut self) {
        let sh = self.sh;
        sh.last[self.idx].store(self.track.last, Ordering::Relaxed);
        sh.received.fetch_add(
            self.track.received - self.received_before,
            Ordering::Relaxed,
        );
        let Some(storm) = &mut self.storm else {
            return;
        };
        if let (None, Some(seq)) = (storm.done_at, storm.joined) {
            let target = if storm.during {
                seq
            } else {
                seq.max(storm.top)
            };
            if self.track.last >= target {
                storm.done_at = Some(sh.now_us());
                sh.resumed.fetch_add(1, Ordering::SeqCst);
                sh.storm_over.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

async fn client(
    sh: Arc<Shared>,
    cfg: Arc<Cfg>,
    idx: usize,
    mut phase: watch::Receiver<u8>,
) -> ClientResult {
    let run = &sh.run;
    let room = idx % cfg.rooms;
    let mut res = ClientResult {
        room,
        ..ClientResult::default()
    };
    let user = format!("{}{idx}", cfg.user_prefix);
    let path = format!("/ws?user={user}");
    let join = format!("{{\"type\":\"join\",\"room\":{}}}", cfg.room_json[room]);
    let mask = wire::mask_for(idx);

    // 1. Connect and join; receive the live messages.
    let joined = async {
        let (stream, leftover) = run.connect(idx, &path).await?;
        let mut conn = Conn::new(stream, leftover, BUFFER, mask);
        conn.send_text(join.as_bytes()).await?;
        let seq = conn.wait_for(HANDSHAKE_TIMEOUT, joined_seq).await??;
        Ok::<_, String>((conn, seq))
    }
    .await;
    let (mut conn, seq) = match joined {
        Ok(joined) => joined,
        Err(err) => {
            sh.fail(format!("{user}: {err}"));
            sh.closed.fetch_add(1, Ordering::SeqCst);
            return res;
        }
    };
    sh.last[idx].store(seq, Ordering::Relaxed);
    run.ready();
    let mut frames = ClientFrames {
        sh: &sh,
        idx,
        track: Track {
            last: seq,
            ..Track::default()
        },
        received_before: 0,
        storm: None,
    };
    let end = conn
        .read_until(
            async {
                reached(&mut phase, OFFLINE).await;
            },
            &mut frames,
        )
        .await;
    res.live = frames.track;
    // 2. Offline.
    match end.unasked() {
        None => conn.close().await,
        Some(err) => sh.ended(format!("first connection: {err}")),
    }
    sh.closed.fetch_add(1, Ordering::SeqCst);
    if !reached(&mut phase, STORM).await {
        return res;
    }

    // 3. The storm: reconnect, join with since.
    let since = res.live.last;
    res.since = since;
    let permit = run.permit().await;
    let began = sh.now_us();
    let connected = run.dial(cfg.clients + idx, &path).await;
    drop(permit);
    let mut conn = match connected {
        Ok((stream, leftover)) => Conn::new(stream, leftover, BUFFER, mask),
        Err(err) => {
            sh.fail(format!("{user}: reconnecting: {err}"));
            sh.storm_over.fetch_add(1, Ordering::SeqCst);
            return res;
        }
    };
    res.connect_us = Some(sh.now_us() - began);
    res.reconnected = true;
    sh.reconnected.fetch_add(1, Ordering::SeqCst);
    let rejoin = format!(
        "{{\"type\":\"join\",\"room\":{},\"since\":{since}}}",
        cfg.room_json[room]
    );
    let mut frames = ClientFrames {
        sh: &sh,
        idx,
        track: Track {
            last: since,
            ..Track::default()
        },
        received_before: 0,
        storm: Some(Resuming {
            // Known at the start of the storm: where the replay must reach.
            top: sh.top_at_storm[room].load(Ordering::Acquire),
            during: cfg.during > 0,
            joined: None,
            done_at: None,
        }),
    };
    let ended = match conn.send_text(rejoin.as_bytes()).await {
        Err(err) => Some(err),
        Ok(()) => conn
            .read_until(
                async {
                    reached(&mut phase, STOP).await;
                },
                &mut frames,
            )
            .await
            .unasked(),
    };
    res.storm = frames.track;
    if let Some(storm) = frames.storm {
        res.joined_seq = storm.joined;
        res.done_at = storm.done_at;
        res.resume_us = storm.done_at.map(|done| done - began);
    }
    match ended {
        None => conn.close().await,
        Some(err) => {
            sh.ended(format!("reconnection: {err}"));
            if res.done_at.is_none() {
                sh.storm_over.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    res
}

enum Cmd {
    /// Publish this many messages in each of the publisher's rooms; answer
    /// with the number refused.
    Publish(u64, oneshot::Sender<Result<u64, String>>),
}

async fn publisher(
    sh: Arc<Shared>,
    cfg: Arc<Cfg>,
    j: usize,
    ready: oneshot::Sender<Result<(), String>>,
    mut cmds: mpsc::Receiver<Cmd>,
) {
    let rooms: Vec<usize> = (j..cfg.rooms).step_by(cfg.publishers).collect();
    let conn_no = 2 * cfg.clients + j;
    let path = format!("/ws?user={}-p{j}", cfg.user_prefix);
    let joined = async {
        // The publishers connect one by one.
        let (stream, leftover) = sh.run.dial(conn_no, &path).await?;
        let mut conn = Conn::new(stream, leftover, 64 * 1024, wire::mask_for(conn_no));
        for &room in &rooms {
            let join = format!("{{\"type\":\"join\",\"room\":{}}}", cfg.room_json[room]);
            conn.push_text(join.as_bytes());
        }
        conn.flush().await?;
        for _ in &rooms {
            let (room, seq) = conn
                .wait_for(HANDSHAKE_TIMEOUT, |p| {
                    let seq = joined_seq(p)?;
                    let room = client::field_str(p, b"\"room\":").and_then(|n| cfg.room_of(n));
                    Some(seq.map(|seq| (room, seq)))
                })
                .await??;
            if let Some(r) = room {
                sh.room_top[r].fetch_max(seq, Ordering::SeqCst);
            }
        }
        Ok::<_, String>(conn)
    }
    .await;
    let mut conn = match joined {
        Ok(conn) => {
            let _ = ready.send(Ok(()));
            conn
        }
        Err(err) => {
            let _ = ready.send(Err(format!("publisher {j}: {err}")));
            return;
        }
    };
    loop {
        let cmd = tokio::select! {
            biased;
            cmd = cmds.recv() => cmd,
            read = conn.fill() => {
                // Between batches: presence events, pings.
                let read = read.and_then(|()| conn.frames(|p| {
                    if client::is(p, b"error") {
                        sh.server_error(p);
                    }
                }));
                if let Err(err) = read {
                    sh.ended(format!("publisher: {err}"));
                    return;
                }
                if conn.flush().await.is_err() {
                    return;
                }
                continue;
            }
        };
        let Some(Cmd::Publish(per_room, reply)) = cmd else {
            break;
        };
        let outcome = publish(&sh, &cfg, &mut conn, &rooms, per_room).await;
        let failed = outcome.is_err();
        let _ = reply.send(outcome);
        if failed {
            return;
        }
    }
    conn.close().await;
}

/// Publishes `per_room` messages in each of `rooms`, at most `cfg.window`
/// un-acked; returns how many were refused.
async fn publish(
    sh: &Shared,
    cfg: &Cfg,
    conn: &mut Conn,
    rooms: &[usize],
    per_room: u64,
) -> Result<u64, String> {
    let total = per_room * rooms.len() as u64;
    let (mut sent, mut answered, mut refused) = (0u64, 0u64, 0u64);
    let mut message = Vec::with_capacity(cfg.size + 96);
    while answered < total {
        let mut n = 0;
        while sent < total && sent - answered < cfg.window {
            let room = rooms[(sent % rooms.len() as u64) as usize];
            message.clear();
            message.extend_from_slice(b"{\"type\":\"publish\",\"room\":");
            message.extend_from_slice(cfg.room_json[room].as_bytes());
            message.extend_from_slice(b",\"body\":");
            common::write_body(&mut message, sh.now_us(), None, cfg.size);
            message.push(b'}');
            conn.push_text(&message);
            sent += 1;
            n += 1;
        }
        sh.published.fetch_add(n, Ordering::Relaxed);
        conn.flush()
            .await
            .map_err(|err| format!("publishing: {err}"))?;
        conn.read(STALL, |p| {
            if client::is(p, b"ack") {
                answered += 1;
                let room = client::field_str(p, b"\"room\":").and_then(|name| cfg.room_of(name));
                match (room, common::field_u64(p, b"\"seq\":")) {
                    (Some(r), Some(seq)) => {
                        sh.room_top[r].fetch_max(seq, Ordering::SeqCst);
                    }
                    _ => {
                        refused += 1;
                        sh.server_error(p);
                    }
                }
            } else if client::is(p, b"error") {
                answered += 1;
                refused += 1;
                sh.server_error(p);
            }
        })
        .await
        .map_err(|err| format!("publishing: {err}"))?;
    }
    Ok(refused)
}

pub fn run(args: ResumeArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.rooms == 0 || args.publishers == 0 || args.window == 0 {
        bail!("--clients, --rooms, --publishers and --window must be at least 1");
    }
    if args.before + args.offline + args.during == 0 {
        bail!("nothing to publish: --before, --offline and --during are all 0");
    }
    if !common::plain_name(&args.user_prefix) || !common::plain_name(&args.room_prefix) {
        bail!("--user-prefix and --room-prefix: letters, digits, - and _ only");
    }
    let target = Target::parse(&args.url)?;
    common::block_on(drive(args, target))
}

/// Waits until `done` holds (looking every 10 ms), giving up after
/// `limit`; true if it holds.
async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `per_room` to every publisher, then awaits their answers.
async fn publish_all(
    senders: &[mpsc::Sender<Cmd>],
    per_room: u64,
) -> Vec<oneshot::Receiver<Result<u64, String>>> {
    let mut replies = Vec::with_capacity(senders.len());
    for tx in senders {
        let (reply_tx, reply_rx) = oneshot::channel();
        if tx.send(Cmd::Publish(per_room, reply_tx)).await.is_ok() {
            replies.push(reply_rx);
        } else {
            let (dead_tx, dead_rx) = oneshot::channel();
            let _ = dead_tx.send(Err("publisher gone".into()));
            replies.push(dead_rx);
        }
    }
    replies
}

/// The publishers' answers: messages refused, and what went wrong.
async fn answers(replies: Vec<oneshot::Receiver<Result<u64, String>>>) -> (u64, Vec<String>) {
    let (mut refused, mut problems) = (0, Vec::new());
    for reply in replies {
        match reply.await {
            Ok(Ok(n)) => refused += n,
            Ok(Err(err)) => problems.push(err),
            Err(_) => problems.push("publisher gone".into()),
        }
    }
    (refused, problems)
}

async fn drive(args: ResumeArgs, target: Target) -> anyhow::Result<()> {
    let publishers = args
        .publishers
        .max(args.rooms.div_ceil(ROOMS_PER_PUBLISHER))
        .min(args.rooms);
    let cfg = Arc::new(Cfg {
        clients: args.clients,
        rooms: args.rooms,
        publishers,
        during: args.during,
        window: args.window,
        size: args.size,
        room_prefix: args.room_prefix.clone(),
        user_prefix: args.user_prefix.clone(),
        storm_timeout: args.timeout,
        room_json: (0..args.rooms)
            .map(|r| serde_json::to_string(&format!("{}-{r}", args.room_prefix)))
            .collect::<Result<_, _>>()?,
    });
    let sh = Arc::new(Shared {
        room_top: (0..args.rooms).map(|_| AtomicU64::new(0)).collect(),
        top_at_storm: (0..args.rooms).map(|_| AtomicU64::new(0)).collect(),
        last: (0..args.clients).map(|_| AtomicU64::new(0)).collect(),
        phase: AtomicU8::new(LIVE),
        run: Run::new(target, args.connect_concurrency, args.conns_per_ip),
        closed: AtomicUsize::new(0),
        reconnected: AtomicUsize::new(0),
        resumed: AtomicUsize::new(0),
        storm_over: AtomicUsize::new(0),
        storm_start: AtomicU64::new(0),
        published: AtomicU64::new(0),
        received: AtomicU64::new(0),
        events: common::Events::default(),
    });
    eprintln!(
        "resume {}: {} clients over {} rooms, {publishers} publisher(s); per room {} live, {} offline, {} during the storm; connect concurrency {}",
        args.url, args.clients, args.rooms, args.before, args.offline, args.during, args.connect_concurrency
    );
    let ticker = driver::spawn_ticker({
        let sh = sh.clone();
        let clients = args.clients;
        let mut received = Gain::default();
        move || {
            let phase = sh.phase.load(Ordering::Relaxed);
            let state = match phase {
                LIVE => format!("joined {}/{clients}", sh.run.setup.ready_count()),
                OFFLINE => format!("closed {}/{clients}", sh.closed.load(Ordering::Relaxed)),
                _ => format!(
                    "reconnected {}/{clients}  resumed {}",
                    sh.reconnected.load(Ordering::Relaxed),
                    sh.resumed.load(Ordering::Relaxed)
                ),
            };
            let line = format!(
                "{state}  published {}  received {}",
                sh.published.load(Ordering::Relaxed),
                received.show(sh.received.load(Ordering::Relaxed))
            );
            (
                sh.run.epoch.elapsed().as_secs_f64(),
                phase_name(phase),
                line,
            )
        }
    });
    let outcome = storm(&args, &cfg, &sh).await;
    ticker.abort();
    outcome
}

async fn storm(args: &ResumeArgs, cfg: &Arc<Cfg>, sh: &Arc<Shared>) -> anyhow::Result<()> {
    let n = args.clients;
    let setup_started = Instant::now();
    // Publishers first (they report each room's seq), then the clients.
    let mut senders = Vec::with_capacity(cfg.publishers);
    let mut pub_tasks = Vec::with_capacity(cfg.publishers);
    for j in 0..cfg.publishers {
        let (tx, rx) = mpsc::channel(4);
        let (ready_tx, ready_rx) = oneshot::channel();
        pub_tasks.push(tokio::spawn(publisher(
            sh.clone(),
            cfg.clone(),
            j,
            ready_tx,
            rx,
        )));
        senders.push(tx);
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => bail!("setting up: {err}"),
            Err(_) => bail!("setting up: publisher {j} stopped"),
        }
    }
    let (phase_tx, phase_rx) = watch::channel(LIVE);
    let tasks = sh.run.spawn(0..n, |_, idx| {
        client(sh.clone(), cfg.clone(), idx, phase_rx.clone())
    });
    sh.run
        .wait_ready(n, "clients", Duration::from_millis(5))
        .await?;
    let setup_s = setup_started.elapsed().as_secs_f64();
    eprintln!(
        "{n} clients joined in {setup_s:.1}s; publishing {} per room",
        args.before
    );

    // 1. Live.
    let mut publisher_problems = Vec::new();
    let mut refused = 0;
    let everyone_has_it = || {
        (0..n).all(|idx| {
            sh.last[idx].load(Ordering::Relaxed)
                >= sh.room_top[idx % cfg.rooms].load(Ordering::Relaxed)
        })
    };
    if args.before > 0 {
        let (r, problems) = answers(publish_all(&senders, args.before).await).await;
        refused += r;
        publisher_problems.extend(problems);
    }
    let live_complete = wait_until(SETTLE, &everyone_has_it).await;
    if !live_complete {
        eprintln!("warning: not every client got every live message within {SETTLE:?}");
    }

    // 2. Offline.
    sh.phase.store(OFFLINE, Ordering::SeqCst);
    let _ = phase_tx.send(OFFLINE);
    let closing = Instant::now();
    wait_until(
        common::CLOSE_WAIT * 4 + Duration::from_millis(n as u64),
        || sh.closed.load(Ordering::SeqCst) >= n,
    )
    .await;
    eprintln!(
        "{} clients closed in {:.1}s; publishing {} per room",
        sh.closed.load(Ordering::SeqCst),
        closing.elapsed().as_secs_f64(),
        args.offline
    );
    if args.offline > 0 {
        let (r, problems) = answers(publish_all(&senders, args.offline).await).await;
        refused += r;
        publisher_problems.extend(problems);
    }

    // 3. The storm.
    for (at_storm, top) in sh.top_at_storm.iter().zip(sh.room_top.iter()) {
        at_storm.store(top.load(Ordering::SeqCst), Ordering::SeqCst);
    }
    let overflows_before = client::listen_overflows();
    let probe = CpuProbe::start(&args.output.server_pid);
    let storm_start = sh.now_us();
    sh.storm_start.store(storm_start, Ordering::SeqCst);
    sh.phase.store(STORM, Ordering::SeqCst);
    let _ = phase_tx.send(STORM);
    eprintln!("reconnect storm: {n} clients");
    let during = if args.during > 0 {
        Some(publish_all(&senders, args.during).await)
    } else {
        None
    };
    let storm_ended = wait_until(cfg.storm_timeout, || {
        sh.storm_over.load(Ordering::SeqCst) >= n
    })
    .await;
    let storm_wall = (sh.now_us() - storm_start) as f64 / 1e6;
    let cpu = probe.finish();
    let listen_overflows = overflows_before
        .zip(client::listen_overflows())
        .map(|(before, after)| after.saturating_sub(before));
    let mut caught_up = None;
    if let Some(replies) = during {
        let (r, problems) = answers(replies).await;
        refused += r;
        publisher_problems.extend(problems);
        if wait_until(SETTLE, &everyone_has_it).await {
            caught_up = Some((sh.now_us() - storm_start) as f64 / 1e6);
        }
    }
    if !storm_ended {
        eprintln!(
            "warning: the storm did not end within {:?}",
            cfg.storm_timeout
        );
    }
    sh.phase.store(STOP, Ordering::SeqCst);
    let _ = phase_tx.send(STOP);
    let mut results = Vec::with_capacity(n);
    for task in tasks {
        results.push(task.await.unwrap_or_default());
    }
    drop(senders);
    for task in pub_tasks {
        let _ = task.await;
    }

    // Results.
    let final_top: Vec<u64> = sh
        .room_top
        .iter()
        .map(|t| t.load(Ordering::SeqCst))
        .collect();
    let top_at_storm: Vec<u64> = sh
        .top_at_storm
        .iter()
        .map(|t| t.load(Ordering::SeqCst))
        .collect();
    let mut resume = common::latency_histogram();
    let mut since_storm = common::latency_histogram();
    let mut connect = common::latency_histogram();
    let (mut missing_live, mut missing_resume, mut duplicates, mut resets, mut errors) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut reset_skipped = 0u64;
    let (mut live_received, mut storm_received, mut joined_mismatch, mut not_resumed) =
        (0u64, 0u64, 0u64, 0usize);
    let mut last_done = storm_start;
    for r in &results {
        live_received += r.live.received;
        storm_received += r.storm.received;
        missing_live += r.live.gaps;
        let end = r.storm.last.max(r.since);
        missing_resume += r.storm.gaps + final_top[r.room].saturating_sub(end);
        duplicates += r.live.duplicates + r.storm.duplicates;
        resets += r.live.resets + r.storm.resets;
        reset_skipped += r.live.reset_skipped + r.storm.reset_skipped;
        errors += r.live.errors + r.storm.errors;
        if r.reconnected && args.during == 0 && r.joined_seq != Some(top_at_storm[r.room]) {
            joined_mismatch += 1;
        }
        match (r.done_at, r.resume_us) {
            (Some(done), Some(us)) => {
                last_done = last_done.max(done);
                resume.saturating_record(us.max(1));
                since_storm.saturating_record(done.saturating_sub(storm_start).max(1));
            }
            _ => not_resumed += 1,
        }
        if let Some(us) = r.connect_us {
            connect.saturating_record(us.max(1));
        }
    }
    let missing = missing_live + missing_resume;
    let storm_s = (not_resumed == 0).then(|| (last_done - storm_start) as f64 / 1e6);
    let events = sh.events.take();
    let failures = sh.run.setup.failures();
    let result = serde_json::json!({
        "scenario": "resume",
        "url": args.url,
        "clients": n,
        "rooms": args.rooms,
        "publishers": cfg.publishers,
        "before": args.before,
        "offline": args.offline,
        "during": args.during,
        "size": args.size,
        "connect_concurrency": args.connect_concurrency,
        "setup_s": (setup_s * 1000.0).round() / 1000.0,
        "storm_s": storm_s.map(|s| (s * 1e6).round() / 1e6),
        "storm_wall_s": (storm_wall * 1000.0).round() / 1000.0,
        "caught_up_s": caught_up,
        "resumed": n - not_resumed,
        "not_resumed": not_resumed,
        "resume_latency_us": common::latency_json(&resume),
        "since_storm_us": common::latency_json(&since_storm),
        "connect_latency_us": common::latency_json(&connect),
        "live_received": live_received,
        "storm_received": storm_received,
        "missing": missing,
        "missing_live": missing_live,
        "missing_resume": missing_resume,
        "duplicates": duplicates,
        "resets": resets,
        "reset_skipped": reset_skipped,
        "joined_seq_mismatch": joined_mismatch,
        "server_errors": errors,
        "publishes_refused": refused,
        "publisher_problems": publisher_problems,
        "server_error_samples": events.error_samples,
        "connection_ends": events.ends,
        "failures": failures.len(),
        "failure_samples": failures.iter().take(5).collect::<Vec<_>>(),
        "live_complete": live_complete,
        "listen_overflows": listen_overflows,
    });

    println!(
        "resume {} ({n} clients, {} rooms, {} publisher(s); per room {} live, {} offline, {} during; connect concurrency {})",
        args.url, args.rooms, cfg.publishers, args.before, args.offline, args.during, args.connect_concurrency
    );
    println!("  setup        {n} clients joined in {setup_s:.1} s; {live_received} live messages received");
    match storm_s {
        Some(s) => println!(
            "  storm        every client resumed {s:.3} s after the storm began ({storm_received} messages received after reconnecting)"
        ),
        None => println!(
            "  storm        {not_resumed} of {n} clients NOT resumed within {:?} ({storm_received} messages received after reconnecting)",
            cfg.storm_timeout
        ),
    }
    if let Some(s) = caught_up {
        println!("  caught up    with the messages published during the storm after {s:.3} s");
    }
    println!("  resume µs    {}", common::latency_line(&resume));
    println!("  since storm  {}", common::latency_line(&since_storm));
    println!("  connect µs   {}", common::latency_line(&connect));
    println!("  cpu          {} (during the storm)", cpu.line());
    if let Some(n) = listen_overflows.filter(|&n| n > 0) {
        println!(
            "  kernel       {n} connection attempts dropped, machine-wide, on a full listen queue (a dropped SYN is retried after 1 s, 3 s, …)"
        );
    }
    println!(
        "  integrity    missing {missing} (live {missing_live}, resume {missing_resume}), duplicates {duplicates}, \
         resets {resets} ({reset_skipped} seqs skipped), joined seq mismatches {joined_mismatch}, errors {errors}, publishes refused {refused}, \
         failed connections {}",
        failures.len()
    );
    for (how, count) in &events.ends {
        println!("  ended early  {count} × {how}");
    }
    for failure in failures.iter().take(5) {
        println!("  failure      {failure}");
    }
    for sample in &events.error_samples {
        println!("  server said  {sample}");
    }
    for problem in &publisher_problems {
        println!("  publisher    {problem}");
    }
    let mut problems = Problems::default();
    problems.check(missing > 0 || duplicates > 0, || {
        format!("{missing} messages missing, {duplicates} duplicated")
    });
    problems.check(resets > 0, || {
        format!("{resets} resets ({reset_skipped} seqs skipped)")
    });
    problems.check(not_resumed > 0, || {
        format!("{not_resumed} clients not resumed")
    });
    problems.check(errors > 0 || refused > 0 || joined_mismatch > 0, || {
        format!(
            "{errors} error events, {refused} publishes refused, {joined_mismatch} joined seqs wrong"
        )
    });
    problems.check(
        !failures.is_empty() || !events.ends.is_empty() || !publisher_problems.is_empty(),
        || {
            format!(
                "{} connections failed, ended early: {:?}, publishers: {publisher_problems:?}",
                failures.len(),
                events.ends
            )
        },
    );
    driver::finish(
        &args.output,
        result,
        Some(cpu),
        args.strict,
        problems.into_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared {
            room_top: Box::new([]),
            top_at_storm: Box::new([]),
            last: Box::new([]),
            phase: AtomicU8::new(LIVE),
            run: Run::new(Target::parse("ws://127.0.0.1:1").unwrap(), 1, 0),
            closed: AtomicUsize::new(0),
            reconnected: AtomicUsize::new(0),
            resumed: AtomicUsize::new(0),
            storm_over: AtomicUsize::new(0),
            storm_start: AtomicU64::new(0),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
            events: common::Events::default(),
        }
    }

    fn message(seq: u64) -> Vec<u8> {
        format!(
            r#"{{"type":"message","room":"resume-0","seq":{seq},"from":"r-p0","ts":1,"body":{{"t":5,"pad":"x"}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn gaps_duplicates_and_resets_are_told_apart() {
        let sh = shared();
        let mut track = Track {
            last: 10,
            ..Track::default()
        };
        for seq in [11, 12, 12, 15, 14, 16] {
            track.on_event(&sh, &message(seq));
        }
        track.on_event(
            &sh,
            br#"{"type":"presence","room":"resume-0","event":"join","user":"r1","online":2}"#,
        );
        assert_eq!((track.last, track.received), (16, 4));
        assert_eq!((track.gaps, track.duplicates), (2, 2));
        track.on_event(&sh, br#"{"type":"reset","room":"resume-0","seq":30}"#);
        track.on_event(&sh, &message(31));
        assert_eq!((track.resets, track.reset_skipped), (1, 14));
        assert_eq!((track.last, track.gaps), (31, 2));
        track.on_event(
            &sh,
            br#"{"type":"error","code":"bad_request","message":"x"}"#,
        );
        assert_eq!(track.errors, 1);
    }

    #[test]
    fn room_names_map_back_to_indexes() {
        let cfg = Cfg {
            clients: 1,
            rooms: 3,
            publishers: 1,
            during: 0,
            window: 1,
            size: 10,
            room_prefix: "resume".into(),
            user_prefix: "r".into(),
            storm_timeout: Duration::from_secs(1),
            room_json: Vec::new(),
        };
        assert_eq!(cfg.room_of(b"resume-2"), Some(2));
        assert_eq!(cfg.room_of(b"resume-3"), None);
        assert_eq!(cfg.room_of(b"resumex-1"), None);
        assert_eq!(cfg.room_of(b"other-1"), None);
    }
}
