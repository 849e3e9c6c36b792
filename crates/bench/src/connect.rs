//! `switchboard-bench connect`: N idle connections, opened and held; the
//! connect rate, handshake latency and the server's memory per connection.
//!
//! A process can hold fewer sockets than a server can take (on the machine
//! this was written on, a hard limit of 20 000 open files), so the
//! connections are opened by `--procs` worker processes: this binary run
//! again with the hidden `--worker FIRST:COUNT`. A worker opens connections
//! FIRST..FIRST+COUNT (the global number picks the user id, the room and the
//! source address, so workers never collide) and talks to the parent in JSON
//! lines on its stdout:
//!
//! ```text
//! {"kind":"ready"}                        started; waits for `go` on stdin
//! {"kind":"status","ready":…,"failed":…,"dropped":…}         every second
//! {"kind":"connected","ready":…,"failed":…,"handshake_us":[…],"ready_us":[…],"failures":{…}}
//! {"kind":"closed","closed":…,"dropped":…,"ends":{…}}        after stdin closed
//! ```
//!
//! The parent writes `go` to every worker at once, samples the server's RSS
//! before and after (once it has settled), holds the connections for
//! `--hold`, then closes the workers' stdin: they close their connections
//! politely, report and exit.
//!
//! With `--warmup-connections N` the parent first opens and closes N connections
//! itself, one at a time (each until ready), and samples the RSS again once
//! it has settled: the figures per connection from that "warmed" reading
//! leave out what a fresh server pays once (code first run, per-thread
//! buffers); the fresh ones are still reported as before.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::duration::parse as parse_duration;
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::{oneshot, Notify, SemaphorePermit};

use super::common::{self, CpuProbe, HANDSHAKE_TIMEOUT};
use super::driver::{self, End, Frames, Problems, Run};
use super::socketio;
use super::sse;
use super::wire::OP_TEXT;
use super::wire::{self, Target};

/// Connections per worker process when `--procs` is not given.
const PER_PROC: usize = 15_000;
/// Read buffer per connection (grows when a larger frame arrives).
const READ_BUFFER: usize = 512;
/// How often the server's RSS is sampled while it settles.
const RSS_POLL: Duration = Duration::from_millis(100);
/// RSS unchanged for this long counts as settled.
const RSS_STABLE: Duration = Duration::from_secs(1);
/// Distinct failure reasons kept (with counts).
const MAX_REASONS: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// /ws?user=cN, then `join` a room and wait for `joined`: the realistic
    /// idle chat client.
    Room,
    /// /ws?user=cN: identified (wait for `welcome`), in no room.
    Ws,
    /// Raw /relay/CHANNEL (ready at the 101), which any plain WebSocket
    /// server (such as the Node.js baseline) also accepts.
    Relay,
    /// Socket.IO v4 on /socket.io/ (WebSocket transport): ready when the
    /// namespace is connected (`40{"sid":…}`).
    Socketio,
    /// Switchboard's HTTP fallback: GET /sse?user=cN, `join` POSTed, ready
    /// at `joined` (the idle chat client of `room`, without a WebSocket).
    Sse,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Room => "room",
            Mode::Ws => "ws",
            Mode::Relay => "relay",
            Mode::Socketio => "socketio",
            Mode::Sse => "sse",
        }
    }

    /// What "ready" means, for the summary.
    fn ready_event(self) -> &'static str {
        match self {
            Mode::Room => "joined",
            Mode::Ws => "welcome",
            Mode::Relay => "the 101",
            Mode::Socketio => "namespace connected",
            Mode::Sse => "joined",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct ConnectArgs {
    /// Server to measure: ws://HOST:PORT (the path is set by --mode).
    /// Repeat it (or give a comma list) for the nodes of a cluster:
    /// connection N goes to node N mod (number of URLs). Give their
    /// --server-pid in the same order (then any other process, such as
    /// Redis), for each node's memory per connection.
    #[arg(long, default_value = "ws://127.0.0.1:8080", value_delimiter = ',')]
    url: Vec<String>,
    /// `room`: /ws?user=cN and join a room; `ws`: /ws?user=cN, no room;
    /// `relay`: /relay/CHANNEL; `socketio`: a Socket.IO v4 server.
    #[arg(long, value_enum, default_value_t = Mode::Room)]
    mode: Mode,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Worker processes opening them (each process may hold only so many
    /// sockets). Default: one per 15 000 connections.
    #[arg(long)]
    procs: Option<usize>,
    /// Handshakes in flight at once, all workers together (in room,
    /// ws and socketio modes until the connection is ready).
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// Connections per source address; past it connections bind
    /// 127.0.0.2, 127.0.0.3, … (loopback targets only). One address
    /// reaches about 28 000 connections to one port, but the kernel's
    /// search for a free ephemeral port slows down long before (at 19 000
    /// from one address the client spends most of its CPU there).
    #[arg(long, default_value_t = 5_000)]
    conns_per_ip: usize,
    /// Room (room mode) or relay channel (relay mode) name prefix.
    #[arg(long, default_value = "idle")]
    room: String,
    /// Connections per room or relay channel: connection N is in
    /// ROOM-(N / room-size). 0 = all in one, ROOM (presence past 8 users
    /// online is batched, about one frame per member per second: see the
    /// `presence` scenario).
    #[arg(long, default_value_t = 100)]
    room_size: usize,
    /// How long to keep the connections open after measuring. Units: ms,
    /// s, m.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    hold: Duration,
    /// Longest wait for the server's RSS to settle (unchanged for 1 s)
    /// after connecting, and again after closing. Units: ms, s, m.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    settle: Duration,
    #[command(flatten)]
    output: common::Output,
    /// Exit with an error if a connection failed or dropped.
    #[arg(long)]
    strict: bool,
    /// Before measuring, open and close this many connections one at a
    /// time (each until ready), then read the server's RSS again: the
    /// `*_warmed` figures count from there (one-time costs left out).
    /// (A count, where other scenarios' `--warmup` is a duration.)
    #[arg(long = "warmup-connections", default_value_t = 0)]
    warmup: usize,
    /// Internal: run as a worker for connections FIRST..FIRST+COUNT.
    #[arg(long, hide = true)]
    worker: Option<String>,
}

pub fn run(args: ConnectArgs) -> anyhow::Result<()> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let targets = wire::parse_urls(&args.url)?;
    if targets.len() > 1 && args.mode == Mode::Sse {
        bail!("--mode sse takes one --url");
    }
    match args.worker.as_deref() {
        Some(range) => {
            let (first, count) = range
                .split_once(':')
                .and_then(|(f, c)| Some((f.parse().ok()?, c.parse().ok()?)))
                .context("--worker takes FIRST:COUNT")?;
            common::block_on(worker(args, targets, first, count))
        }
        None => parent(args),
    }
}

// ---------------------------------------------------------------------------
// The worker: opens its share of the connections and holds them.

/// What the connections of one worker share.
#[derive(Default)]
struct Tally {
    ready: AtomicUsize,
    failed: AtomicUsize,
    dropped: AtomicUsize,
    /// Woken when a connection becomes ready or fails.
    settled: Notify,
    handshake_us: Mutex<Vec<u64>>,
    ready_us: Mutex<Vec<u64>>,
    /// Why connections failed (before ready), with counts.
    failures: Mutex<BTreeMap<String, u64>>,
    /// How ready connections ended early, with counts.
    ends: Mutex<BTreeMap<String, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn count_reason(map: &Mutex<BTreeMap<String, u64>>, reason: String) {
    let mut map = lock(map);
    if map.len() < MAX_REASONS || map.contains_key(&reason) {
        *map.entry(reason).or_default() += 1;
    } else {
        *map.entry("(other reasons)".into()).or_default() += 1;
    }
}

impl Tally {
    fn fail(&self, reason: String) {
        count_reason(&self.failures, reason);
        self.failed.fetch_add(1, Ordering::SeqCst);
        self.settled.notify_one();
    }

    fn is_ready(&self, handshake: Duration, ready: Duration) {
        lock(&self.handshake_us).push(handshake.as_micros() as u64);
        lock(&self.ready_us).push(ready.as_micros() as u64);
        self.ready.fetch_add(1, Ordering::SeqCst);
        self.settled.notify_one();
    }

    fn status(&self) -> Value {
        json!({
            "kind": "status",
            "ready": self.ready.load(Ordering::SeqCst),
            "failed": self.failed.load(Ordering::SeqCst),
            "dropped": self.dropped.load(Ordering::SeqCst),
        })
    }
}

struct ConnCfg {
    mode: Mode,
    room: String,
    room_size: usize,
}

impl ConnCfg {
    fn group(&self, n: usize) -> String {
        match n.checked_div(self.room_size) {
            Some(group) => format!("{}-{group}", self.room),
            None => self.room.clone(),
        }
    }

    fn path(&self, n: usize) -> String {
        match self.mode {
            Mode::Room | Mode::Ws => format!("/ws?user=c{n}"),
            Mode::Relay => format!("/relay/{}", self.group(n)),
            Mode::Socketio => socketio::PATH.to_string(),
            Mode::Sse => format!("/sse?user=c{n}"),
        }
    }

    /// The `join` a room-mode connection sends first.
    fn join(&self, n: usize) -> String {
        let room = serde_json::to_string(&self.group(n)).unwrap_or_default();
        format!("{{\"type\":\"join\",\"room\":{room}}}")
    }

    /// A failure reason without what varies from one connection to the
    /// next (its path), so that equal failures are counted together.
    fn reason(&self, n: usize, reason: String) -> String {
        let pattern = match self.mode {
            Mode::Room | Mode::Ws => "/ws?user=cN",
            Mode::Relay => "/relay/CHANNEL",
            Mode::Socketio => socketio::PATH,
            Mode::Sse => "/sse?user=cN",
        };
        reason.replace(&self.path(n), pattern)
    }
}

/// Writes one JSON line to stdout (the parent reads it). A write error
/// means the parent is gone; closing stdin will end the worker.
fn report(value: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

async fn worker(
    args: ConnectArgs,
    targets: Vec<Target>,
    first: usize,
    count: usize,
) -> anyhow::Result<()> {
    let run = Run::spread(targets, args.connect_concurrency, args.conns_per_ip);
    // Stdin: `go`, then end of file = close everything.
    let (go_tx, go_rx) = oneshot::channel::<()>();
    std::thread::spawn({
        let run = run.clone();
        move || {
            let mut go_tx = Some(go_tx);
            let mut line = String::new();
            let stdin = std::io::stdin();
            loop {
                line.clear();
                match stdin.lock().read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line.trim() == "go" => {
                        if let Some(tx) = go_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(_) => {}
                }
            }
            run.stop();
        }
    });
    report(&json!({"kind": "ready"}));
    if go_rx.await.is_err() {
        return Ok(()); // The parent gave up before starting.
    }
    let cpu = CpuProbe::start(&[]);
    let connecting = Instant::now();

    let cfg = Arc::new(ConnCfg {
        mode: args.mode,
        room: args.room.clone(),
        room_size: args.room_size,
    });
    let tally = Arc::new(Tally::default());
    let tasks = run.spawn(first..first + count, |run, n| {
        idle_connection(run, tally.clone(), cfg.clone(), n)
    });
    let ticker = driver::every_second({
        let tally = tally.clone();
        move || report(&tally.status())
    });
    loop {
        let settled = tally.settled.notified();
        tokio::pin!(settled);
        settled.as_mut().enable();
        let done = tally.ready.load(Ordering::SeqCst) + tally.failed.load(Ordering::SeqCst);
        if done >= count {
            break;
        }
        settled.await;
    }
    // This worker's CPU time while connecting, in seconds.
    let cpu_s = cpu
        .finish()
        .client
        .map(|pct| pct / 100.0 * connecting.elapsed().as_secs_f64());
    report(&json!({
        "kind": "connected",
        "cpu_s": cpu_s,
        "ready": tally.ready.load(Ordering::SeqCst),
        "failed": tally.failed.load(Ordering::SeqCst),
        "handshake_us": *lock(&tally.handshake_us),
        "ready_us": *lock(&tally.ready_us),
        "failures": *lock(&tally.failures),
    }));
    run.stopped().await;
    ticker.abort();
    let mut closed = 0usize;
    for task in tasks {
        if let Ok(true) = task.await {
            closed += 1;
        }
    }
    report(&json!({
        "kind": "closed",
        "closed": closed,
        "dropped": tally.dropped.load(Ordering::SeqCst),
        "ends": *lock(&tally.ends),
    }));
    Ok(())
}

/// Whether a data frame from the server makes the connection ready; an
/// error ends it (a refusal before it is ready). Replies (the Socket.IO
/// connect and pongs) are queued in `out`.
fn on_data(
    mode: Mode,
    ready: bool,
    payload: &[u8],
    out: &mut Vec<u8>,
    mask: [u8; 4],
) -> Result<bool, String> {
    match mode {
        Mode::Room | Mode::Sse if payload.starts_with(b"{\"type\":\"joined\"") => Ok(true),
        Mode::Ws if payload.starts_with(b"{\"type\":\"welcome\"") => Ok(true),
        Mode::Room | Mode::Ws | Mode::Sse
            if !ready && payload.starts_with(b"{\"type\":\"error\"") =>
        {
            Err(format!(
                "server error: {}",
                String::from_utf8_lossy(payload)
            ))
        }
        Mode::Socketio => match socketio::on_packet(payload, out, mask) {
            socketio::Step::Connected => Ok(true),
            socketio::Step::Closed(how) => Err(how),
            socketio::Step::Continue => Ok(false),
        },
        _ => Ok(false),
    }
}

/// An idle connection's frames: it becomes ready (and gives up its place
/// among the handshakes) at the scenario's ready event, which must come
/// within [`HANDSHAKE_TIMEOUT`] of the connect.
struct Idle<'a> {
    tally: &'a Tally,
    mode: Mode,
    mask: [u8; 4],
    started: Instant,
    handshake: Duration,
    ready: bool,
    permit: Option<SemaphorePermit<'a>>,
}

impl Idle<'_> {
    fn now_ready(&mut self) {
        if !self.ready {
            self.ready = true;
            self.tally.is_ready(self.handshake, self.started.elapsed());
            self.permit = None;
        }
    }
}

impl Frames for Idle<'_> {
    fn on_data(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        if on_data(self.mode, self.ready, payload, out, self.mask)? {
            self.now_ready();
        }
        Ok(())
    }

    fn deadline(&self) -> Option<tokio::time::Instant> {
        (!self.ready).then(|| tokio::time::Instant::from_std(self.started + HANDSHAKE_TIMEOUT))
    }
}

/// One connection: connect, get ready, stay idle (answering pings) until
/// told to stop, close politely. True if it was still open at the end.
async fn idle_connection(run: Arc<Run>, tally: Arc<Tally>, cfg: Arc<ConnCfg>, n: usize) -> bool {
    let Some(permit) = run.permit().await else {
        return false;
    };
    let started = Instant::now();
    if cfg.mode == Mode::Sse {
        return idle_sse(&run, &tally, &cfg, n, permit, started).await;
    }
    let path = cfg.path(n);
    let connected = tokio::select! {
        connected = run.dial_node(run.node_for(n), n, &path) => connected,
        () = run.stopped() => return false,
    };
    let (stream, leftover) = match connected {
        Ok(connection) => connection,
        Err(err) => {
            tally.fail(cfg.reason(n, err));
            return false;
        }
    };
    let mask = wire::mask_for(n);
    let mut out = Vec::new();
    if cfg.mode == Mode::Room {
        wire::encode_frame(&mut out, OP_TEXT, cfg.join(n).as_bytes(), mask);
    }
    let mut idle = Idle {
        tally: &tally,
        mode: cfg.mode,
        mask,
        started,
        handshake: started.elapsed(),
        ready: false,
        permit: Some(permit),
    };
    if cfg.mode == Mode::Relay {
        idle.now_ready();
    }
    let end = driver::hold(
        stream,
        leftover,
        READ_BUFFER,
        out,
        mask,
        run.stopped(),
        &mut idle,
    )
    .await;
    let ready = idle.ready;
    held(&tally, end, ready, cfg.mode)
}

/// Whether a held connection was still open at the end; how it failed or
/// ended otherwise goes into the tally.
fn held(tally: &Tally, end: End, ready: bool, mode: Mode) -> bool {
    match end {
        End::Stopped => ready,
        End::Deadline => {
            tally.fail(format!(
                "connected but not ready ({}) within {HANDSHAKE_TIMEOUT:?}",
                mode.ready_event()
            ));
            false
        }
        End::Gone(how) if ready => {
            tally.dropped.fetch_add(1, Ordering::SeqCst);
            count_reason(&tally.ends, how);
            false
        }
        End::Gone(how) => {
            tally.fail(format!("before ready: {how}"));
            false
        }
    }
}

/// [`idle_connection`] over the HTTP fallback transport ([`sse::hold`]).
async fn idle_sse<'a>(
    run: &'a Run,
    tally: &'a Tally,
    cfg: &ConnCfg,
    n: usize,
    permit: SemaphorePermit<'a>,
    started: Instant,
) -> bool {
    let source = run.source_for(n);
    let query = format!("?user=c{n}");
    let opened = tokio::select! {
        opened = tokio::time::timeout(HANDSHAKE_TIMEOUT, sse::open(run.target(), source, &query)) => opened,
        () = run.stopped() => return false,
    };
    let opened = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(err)) => {
            tally.fail(cfg.reason(n, format!("{err:#}")));
            return false;
        }
        Err(_) => {
            tally.fail("GET /sse timed out".into());
            return false;
        }
    };
    let mut idle = Idle {
        tally,
        mode: cfg.mode,
        mask: [0; 4],
        started,
        handshake: started.elapsed(),
        ready: false,
        permit: Some(permit),
    };
    let first = Some(cfg.join(n));
    let end = sse::hold(
        opened,
        run.target(),
        source,
        first,
        run.stopped(),
        &mut idle,
    )
    .await;
    let ready = idle.ready;
    held(tally, end, ready, cfg.mode)
}

// ---------------------------------------------------------------------------
// The parent: starts the workers, measures, reports.

/// `--warmup-connections`: opens `count` connections one at a time, each closed once
/// ready (or failed). Returns how many got ready.
async fn warm_up(args: &ConnectArgs, count: usize) -> anyhow::Result<usize> {
    let targets = wire::parse_urls(&args.url)?;
    let cfg = Arc::new(ConnCfg {
        mode: args.mode,
        room: args.room.clone(),
        room_size: args.room_size,
    });
    let mut ready = 0;
    for n in 0..count {
        let run = Run::spread(targets.clone(), 1, args.conns_per_ip);
        let tally = Arc::new(Tally::default());
        let task = tokio::spawn(idle_connection(run.clone(), tally.clone(), cfg.clone(), n));
        loop {
            let settled = tally.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if tally.ready.load(Ordering::SeqCst) + tally.failed.load(Ordering::SeqCst) > 0 {
                break;
            }
            settled.await;
        }
        run.stop();
        let _ = task.await;
        ready += tally.ready.load(Ordering::SeqCst);
    }
    Ok(ready)
}

/// The server's memory, from /proc/PID/status, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Rss {
    vm_rss: u64,
    rss_anon: Option<u64>,
}

fn parse_status(status: &str) -> Option<Rss> {
    let field = |name: &str| {
        status.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(':')?;
            value.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
    };
    Some(Rss {
        vm_rss: field("VmRSS")?,
        rss_anon: field("RssAnon"),
    })
}

fn read_rss(pid: u32) -> Option<Rss> {
    parse_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// One worker process, as the parent sees it.
struct Worker {
    child: Child,
    /// Closed (dropped) to tell the worker to close its connections.
    stdin: Option<ChildStdin>,
    started: bool,
    ready: usize,
    failed: usize,
    dropped: usize,
    connected: Option<Value>,
    closed: Option<Value>,
    exited: bool,
}

/// The workers; dropping it (also on an error) closes their stdin, which
/// makes them close their connections and exit.
struct Fleet {
    workers: Vec<Worker>,
    rx: mpsc::Receiver<(usize, Option<Value>)>,
    server_pid: Option<u32>,
    epoch: Instant,
    next_tick: Instant,
    phase: &'static str,
    last_ready: usize,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for w in &mut self.workers {
            w.stdin = None;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for w in &mut self.workers {
            while matches!(w.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(w.child.try_wait(), Ok(None)) {
                let _ = w.child.kill();
                let _ = w.child.wait();
            }
        }
    }
}

impl Fleet {
    fn spawn(args: &ConnectArgs, procs: usize) -> anyhow::Result<Fleet> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let n = args.connections;
        let (tx, rx) = mpsc::channel();
        let mut fleet = Fleet {
            workers: Vec::with_capacity(procs),
            rx,
            server_pid: args.output.server_pid.first().copied(),
            epoch: Instant::now(),
            next_tick: Instant::now(),
            phase: "starting",
            last_ready: 0,
        };
        let concurrency = args.connect_concurrency.div_ceil(procs).max(1);
        for w in 0..procs {
            let first = n * w / procs;
            let count = n * (w + 1) / procs - first;
            let mut child = Command::new(&exe)
                .args(["connect", "--url", &wire::urls_label(&args.url), "--mode"])
                .arg(args.mode.name())
                .args(["--connections", &n.to_string()])
                .args(["--connect-concurrency", &concurrency.to_string()])
                .args(["--conns-per-ip", &args.conns_per_ip.to_string()])
                .args(["--room", &args.room])
                .args(["--room-size", &args.room_size.to_string()])
                .args(["--worker", &format!("{first}:{count}")])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting worker {w} ({})", exe.display()))?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let stdin = child.stdin.take();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    match serde_json::from_str::<Value>(&line) {
                        Ok(value) => {
                            if tx.send((w, Some(value))).is_err() {
                                return;
                            }
                        }
                        Err(_) => eprintln!("worker {w}: {line}"),
                    }
                }
                let _ = tx.send((w, None));
            });
            fleet.workers.push(Worker {
                child,
                stdin,
                started: false,
                ready: 0,
                failed: 0,
                dropped: 0,
                connected: None,
                closed: None,
                exited: false,
            });
        }
        Ok(fleet)
    }

    fn ready(&self) -> usize {
        self.workers.iter().map(|w| w.ready).sum()
    }

    fn failed(&self) -> usize {
        self.workers.iter().map(|w| w.failed).sum()
    }

    fn dropped(&self) -> usize {
        self.workers.iter().map(|w| w.dropped).sum()
    }

    /// Handles worker messages until `done` holds or `until` passes (false
    /// then), printing a progress line every second.
    fn pump(
        &mut self,
        until: Option<Instant>,
        done: impl Fn(&Fleet) -> bool,
    ) -> anyhow::Result<bool> {
        loop {
            if done(self) {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= self.next_tick {
                self.progress();
                self.next_tick += Duration::from_secs(1);
                continue;
            }
            if until.is_some_and(|until| now >= until) {
                return Ok(false);
            }
            let wake = until.map_or(self.next_tick, |until| until.min(self.next_tick));
            match self.rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok((w, Some(message))) => self.on_message(w, message),
                Ok((w, None)) => {
                    self.workers[w].exited = true;
                    if self.workers[w].closed.is_none() {
                        bail!("worker {w} exited before it was done (see its errors above)");
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if !self.workers.iter().all(|w| w.closed.is_some()) {
                        bail!("all workers are gone");
                    }
                    // All done and gone: only the clock is left to wait for.
                    std::thread::sleep(wake.saturating_duration_since(Instant::now()));
                }
            }
        }
    }

    fn on_message(&mut self, w: usize, message: Value) {
        let worker = &mut self.workers[w];
        let count = |key: &str| message[key].as_u64().unwrap_or(0) as usize;
        match message["kind"].as_str() {
            Some("ready") => worker.started = true,
            Some("status") => {
                worker.ready = count("ready");
                worker.failed = count("failed");
                worker.dropped = count("dropped");
            }
            Some("connected") => {
                worker.ready = count("ready");
                worker.failed = count("failed");
                worker.connected = Some(message);
            }
            Some("closed") => {
                worker.dropped = count("dropped");
                worker.closed = Some(message);
            }
            _ => eprintln!("worker {w}: unexpected {message}"),
        }
    }

    fn progress(&mut self) {
        let ready = self.ready();
        let rss = self
            .server_pid
            .and_then(read_rss)
            .map(|rss| format!("  server RSS {}", mib(rss.vm_rss)))
            .unwrap_or_default();
        eprintln!(
            "[{:5.1}s {:>10}] ready {ready} (+{}/s)  failed {}  dropped {}{rss}",
            self.epoch.elapsed().as_secs_f64(),
            self.phase,
            ready.saturating_sub(self.last_ready),
            self.failed(),
            self.dropped(),
        );
        self.last_ready = ready;
    }

    /// Waits, up to `max`, for the server's RSS to stay unchanged for
    /// [`RSS_STABLE`]. Returns the last reading, the time taken and
    /// whether it settled.
    fn settle(&mut self, pid: u32, max: Duration) -> anyhow::Result<(Option<Rss>, Duration, bool)> {
        let started = Instant::now();
        let mut last = read_rss(pid);
        let mut since = Instant::now();
        loop {
            let now = Instant::now();
            if now.duration_since(since) >= RSS_STABLE {
                return Ok((last, now.duration_since(started), true));
            }
            if now.duration_since(started) >= max {
                return Ok((last, now.duration_since(started), false));
            }
            self.pump(Some(now + RSS_POLL), |_| false)?;
            let rss = read_rss(pid);
            if rss.map(|r| r.vm_rss) != last.map(|r| r.vm_rss) {
                since = Instant::now();
            }
            last = rss;
        }
    }
}

/// A histogram of the latencies the workers sent.
fn histogram<'a>(reports: impl Iterator<Item = &'a Value>, key: &str) -> Histogram<u64> {
    let mut hist = common::latency_histogram();
    for report in reports {
        for v in report[key].as_array().into_iter().flatten() {
            if let Some(us) = v.as_u64() {
                hist.saturating_record(us.max(1));
            }
        }
    }
    hist
}

/// Sums the `{reason: count}` objects of the workers' reports.
fn merge_counts<'a>(reports: impl Iterator<Item = &'a Value>, key: &str) -> BTreeMap<String, u64> {
    let mut merged = BTreeMap::new();
    for report in reports {
        for (reason, count) in report[key].as_object().into_iter().flatten() {
            *merged.entry(reason.clone()).or_default() += count.as_u64().unwrap_or(0);
        }
    }
    merged
}

/// Each server process's memory (with several `--server-pid`): PID i < the
/// number of URLs is node i, which holds the connections N with N mod nodes
/// = i (of those that got ready, in proportion); any further PID (Redis)
/// is charged with all of them.
fn rss_by_pid(
    pids: &[u32],
    nodes: usize,
    n: usize,
    ready: usize,
    before: &[Option<Rss>],
    after: Vec<Option<Rss>>,
    after_close: Vec<Option<Rss>>,
) -> Vec<Value> {
    pids.iter()
        .enumerate()
        .map(|(i, pid)| {
            let conns = if i < nodes {
                let assigned = (i..n).step_by(nodes).count();
                (assigned * ready).checked_div(n).unwrap_or(0)
            } else {
                ready
            };
            let b = before.get(i).copied().flatten();
            let a = after.get(i).copied().flatten();
            let c = after_close.get(i).copied().flatten();
            json!({
                "pid": pid,
                "node": (i < nodes).then_some(i),
                "connections": conns,
                "before_kib": b.map(|r| r.vm_rss),
                "after_kib": a.map(|r| r.vm_rss),
                "after_close_kib": c.map(|r| r.vm_rss),
                "rss_per_conn_bytes": per_conn(b.map(|r| r.vm_rss), a.map(|r| r.vm_rss), conns),
                "rss_anon_per_conn_bytes": per_conn(
                    b.and_then(|r| r.rss_anon),
                    a.and_then(|r| r.rss_anon),
                    conns
                ),
            })
        })
        .collect()
}

/// Bytes per connection from two readings in KiB.
fn per_conn(before: Option<u64>, after: Option<u64>, conns: usize) -> Option<f64> {
    let (before, after) = (before?, after?);
    (conns > 0).then(|| ((after as f64 - before as f64) * 1024.0 / conns as f64).round())
}

fn parent(args: ConnectArgs) -> anyhow::Result<()> {
    let n = args.connections;
    let procs = args
        .procs
        .unwrap_or_else(|| n.div_ceil(PER_PROC))
        .clamp(1, n);
    eprintln!(
        "connect {} {}: {n} connections from {procs} process(es), {} handshakes in flight{}",
        args.mode.name(),
        wire::urls_label(&args.url),
        args.connect_concurrency,
        match (args.mode, args.room_size) {
            (Mode::Room | Mode::Relay, 0) => format!(", all in {}", args.room),
            (Mode::Room | Mode::Relay, size) => format!(", {size} per room"),
            _ => String::new(),
        }
    );
    let mut fleet = Fleet::spawn(&args, procs)?;
    fleet.next_tick = Instant::now() + Duration::from_secs(1);
    let started = fleet.pump(Some(Instant::now() + Duration::from_secs(10)), |f| {
        f.workers.iter().all(|w| w.started)
    })?;
    if !started {
        bail!("the workers did not start within 10 s");
    }

    // Connect. The first PID is "the server" of the single-server fields;
    // with several, each one's memory is also reported (`rss_by_pid`).
    let pids = args.output.server_pid.clone();
    let pid = pids.first().copied();
    let before = match pid {
        Some(pid) => Some(read_rss(pid).with_context(|| format!("reading /proc/{pid}/status"))?),
        None => None,
    };
    let before_each: Vec<Option<Rss>> = pids.iter().map(|&p| read_rss(p)).collect();
    // `--warmup-connections`, then the warmed reading (once settled).
    let mut warmed = None;
    let mut warmup_ready = 0;
    if args.warmup > 0 {
        common::block_on(async {
            warmup_ready = warm_up(&args, args.warmup).await?;
            Ok(())
        })?;
        eprintln!(
            "warm-up: {warmup_ready} of {} connections ready, one at a time",
            args.warmup
        );
        if let Some(pid) = pid {
            fleet.phase = "warming";
            warmed = fleet.settle(pid, args.settle)?.0;
        }
    }
    let cpu = CpuProbe::start(&pids);
    fleet.phase = "connecting";
    fleet.epoch = Instant::now();
    fleet.next_tick = fleet.epoch + Duration::from_secs(1);
    fleet.last_ready = 0;
    for w in &mut fleet.workers {
        if let Some(stdin) = w.stdin.as_mut() {
            stdin
                .write_all(b"go\n")
                .and_then(|()| stdin.flush())
                .context("starting a worker")?;
        }
    }
    fleet.pump(None, |f| f.workers.iter().all(|w| w.connected.is_some()))?;
    let connect_time = fleet.epoch.elapsed();
    let cpu = cpu.finish();
    let ready = fleet.ready();
    let failed = fleet.failed();
    eprintln!(
        "ready {ready} of {n} in {:.2} s, {failed} failed",
        connect_time.as_secs_f64()
    );

    // Let the server settle, then read its memory.
    let mut settled = None;
    let mut settled_rest = Vec::new();
    if let Some(pid) = pid {
        fleet.phase = "settling";
        settled = Some(fleet.settle(pid, args.settle)?);
        // The other processes, one after the other (each has had the
        // first one's settling time already).
        for &other in &pids[1..] {
            settled_rest.push(fleet.settle(other, args.settle)?);
        }
    }
    let dropped_before_hold = fleet.dropped();

    // Hold, then close.
    fleet.phase = "holding";
    fleet.pump(Some(Instant::now() + args.hold), |_| false)?;
    fleet.phase = "closing";
    let closing = Instant::now();
    for w in &mut fleet.workers {
        w.stdin = None;
    }
    fleet.pump(None, |f| f.workers.iter().all(|w| w.closed.is_some()))?;
    let close_time = closing.elapsed();
    let mut after_close = None;
    let mut after_close_rest = Vec::new();
    if let Some(pid) = pid {
        fleet.phase = "closed";
        after_close = Some(fleet.settle(pid, args.settle)?);
        for &other in &pids[1..] {
            after_close_rest.push(fleet.settle(other, args.settle)?);
        }
    }

    // Results.
    let connected_reports = || fleet.workers.iter().filter_map(|w| w.connected.as_ref());
    let closed_reports = || fleet.workers.iter().filter_map(|w| w.closed.as_ref());
    let handshake = histogram(connected_reports(), "handshake_us");
    let ready_lat = histogram(connected_reports(), "ready_us");
    let failures = merge_counts(connected_reports(), "failures");
    let ends = merge_counts(closed_reports(), "ends");
    let dropped = fleet.dropped();
    let closed: u64 = closed_reports()
        .map(|r| r["closed"].as_u64().unwrap_or(0))
        .sum();
    let seconds = connect_time.as_secs_f64();
    let rate = (ready as f64 / seconds).round();
    let after = settled.and_then(|(rss, _, _)| rss);
    let closed_rss = after_close.and_then(|(rss, _, _)| rss);
    // The first PID's connections: all of them, or over several nodes the
    // first node's share (see `rss_by_pid`).
    let first_conns = if args.url.len() > 1 {
        ((0..n).step_by(args.url.len()).count() * ready)
            .checked_div(n)
            .unwrap_or(0)
    } else {
        ready
    };
    // Growth per connection (VmRSS, RssAnon) from a reading to `after`.
    let growth = |from: Option<Rss>| {
        (
            per_conn(from.map(|r| r.vm_rss), after.map(|r| r.vm_rss), first_conns),
            per_conn(
                from.and_then(|r| r.rss_anon),
                after.and_then(|r| r.rss_anon),
                first_conns,
            ),
        )
    };
    let (rss_per_conn, anon_per_conn) = growth(before);
    let (rss_per_conn_warmed, anon_per_conn_warmed) = growth(warmed);
    // The workers' CPU over the parent's window (they idle once connected).
    let client_cpu = connected_reports()
        .map(|r| r["cpu_s"].as_f64())
        .sum::<Option<f64>>()
        .map(|s| (s / seconds * 100.0 * 10.0).round() / 10.0);
    let other_cpu = cpu
        .other
        .zip(client_cpu)
        .map(|(other, client)| ((other - client) * 10.0).round().max(0.0) / 10.0);
    let cpu_us_per_conn = cpu
        .server
        .filter(|_| ready > 0)
        .map(|pct| (pct / 100.0 * seconds * 1e6 / ready as f64).round());
    let by_pid = rss_by_pid(
        &pids,
        args.url.len(),
        n,
        ready,
        &before_each,
        settled.iter().chain(&settled_rest).map(|s| s.0).collect(),
        after_close
            .iter()
            .chain(&after_close_rest)
            .map(|s| s.0)
            .collect(),
    );
    let mut result = json!({
        "scenario": "connect",
        "mode": args.mode.name(),
        "url": wire::urls_label(&args.url),
        "connections": n,
        "procs": procs,
        "connect_concurrency": args.connect_concurrency,
        "room_size": args.room_size,
        "ready": ready,
        "failed": failed,
        "failures": failures,
        "connect_s": (seconds * 1000.0).round() / 1000.0,
        "connects_per_sec": rate,
        "handshake_us": common::latency_json(&handshake),
        "ready_us": common::latency_json(&ready_lat),
        "server_cpu_pct": cpu.server,
        "client_cpu_pct": client_cpu,
        "other_cpu_pct": other_cpu,
        "server_cpu_us_per_conn": cpu_us_per_conn,
        "rss_kib": {
            "before": before.map(|r| r.vm_rss),
            "warmed": warmed.map(|r| r.vm_rss),
            "after": after.map(|r| r.vm_rss),
            "after_close": closed_rss.map(|r| r.vm_rss),
        },
        "rss_anon_kib": {
            "before": before.and_then(|r| r.rss_anon),
            "warmed": warmed.and_then(|r| r.rss_anon),
            "after": after.and_then(|r| r.rss_anon),
            "after_close": closed_rss.and_then(|r| r.rss_anon),
        },
        "rss_per_conn_bytes": rss_per_conn,
        "rss_anon_per_conn_bytes": anon_per_conn,
        "warmup": args.warmup,
        "warmup_ready": warmup_ready,
        "rss_per_conn_bytes_warmed": rss_per_conn_warmed,
        "rss_anon_per_conn_bytes_warmed": anon_per_conn_warmed,
        "settle_s": settled.map(|(_, t, _)| (t.as_secs_f64() * 10.0).round() / 10.0),
        "settled": settled.map(|(_, _, ok)| ok),
        "hold_s": args.hold.as_secs_f64(),
        "dropped": dropped,
        "dropped_before_hold": dropped_before_hold,
        "connection_ends": ends,
        "closed_politely": closed,
        "close_s": (close_time.as_secs_f64() * 1000.0).round() / 1000.0,
    });

    if pids.len() > 1 {
        // Only with several processes: one server's result is unchanged.
        result["rss_by_pid"] = by_pid.clone().into();
        result["nodes"] = args.url.len().into();
    }
    println!(
        "connect {} {} ({n} connections, {procs} process(es), {} handshakes in flight)",
        args.mode.name(),
        wire::urls_label(&args.url),
        args.connect_concurrency
    );
    println!("  connected    {ready} of {n} in {seconds:.2} s ({rate}/s), failed {failed}");
    println!("  handshake µs {}", common::latency_line(&handshake));
    if args.mode != Mode::Relay {
        println!(
            "  ready µs     {}  (until {})",
            common::latency_line(&ready_lat),
            args.mode.ready_event()
        );
    }
    if let (Some(before), Some((after, took, ok))) = (before, settled) {
        let after = after.unwrap_or_default();
        println!(
            "  server RSS   {} before, {} after ({} in {:.1} s): {} B per connection",
            mib(before.vm_rss),
            mib(after.vm_rss),
            if ok { "settled" } else { "still changing" },
            took.as_secs_f64(),
            rss_per_conn.map_or("?".into(), |v| v.to_string()),
        );
        if let (Some(b), Some(a)) = (before.rss_anon, after.rss_anon) {
            println!(
                "  RssAnon      {} before, {} after: {} B per connection",
                mib(b),
                mib(a),
                anon_per_conn.map_or("?".into(), |v| v.to_string()),
            );
        }
        if let Some(warmed) = warmed {
            println!(
                "  warmed       {} connections opened and closed first: RSS {}, {} B per connection (RssAnon {} B)",
                args.warmup,
                mib(warmed.vm_rss),
                rss_per_conn_warmed.map_or("?".into(), |v| v.to_string()),
                anon_per_conn_warmed.map_or("?".into(), |v| v.to_string()),
            );
        }
        if let Some(closed) = closed_rss {
            println!("  after close  RSS {}", mib(closed.vm_rss));
        }
    }
    if pids.len() > 1 {
        for entry in &by_pid {
            let kib = |key: &str| entry[key].as_u64().map_or("?".into(), mib);
            println!(
                "  pid {:<8} {} connections: RSS {} before, {} after, {} after close: {} B per connection",
                entry["pid"],
                entry["connections"],
                kib("before_kib"),
                kib("after_kib"),
                kib("after_close_kib"),
                entry["rss_per_conn_bytes"]
            );
        }
    }
    let pct = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v}%"));
    println!(
        "  cpu          while connecting: server {} ({} µs per connection), client {}, everything else {} (of one core)",
        pct(cpu.server),
        cpu_us_per_conn.map_or("?".into(), |v| v.to_string()),
        pct(client_cpu),
        pct(other_cpu),
    );
    println!(
        "  held         {:?}; dropped {dropped}; closed politely {closed} in {:.2} s",
        args.hold,
        close_time.as_secs_f64()
    );
    for (reason, count) in &failures {
        println!("  failed       {count} × {reason}");
    }
    for (how, count) in &ends {
        println!("  ended early  {count} × {how}");
    }
    let mut problems = Problems::default();
    problems.check(ready < n, || {
        format!("{} of {n} connections not ready ({failures:?})", n - ready)
    });
    problems.check(dropped > 0, || {
        format!("{dropped} connections dropped ({ends:?})")
    });
    // The CPU fields are the workers' and the server's while connecting.
    driver::finish(&args.output, result, None, args.strict, problems.into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let status = "Name:\tswitchboard\nVmHWM:\t  9000 kB\nVmRSS:\t   12345 kB\nRssAnon:\t    8000 kB\nRssFile:\t 4345 kB\n";
        assert_eq!(
            parse_status(status),
            Some(Rss {
                vm_rss: 12345,
                rss_anon: Some(8000)
            })
        );
        assert_eq!(
            parse_status("VmRSS:\t 10 kB\n"),
            Some(Rss {
                vm_rss: 10,
                rss_anon: None
            })
        );
        assert_eq!(parse_status("Name: x\n"), None);
    }

    #[test]
    fn per_connection_bytes() {
        assert_eq!(per_conn(Some(1000), Some(2000), 1024), Some(1000.0));
        assert_eq!(per_conn(Some(1000), None, 10), None);
        assert_eq!(per_conn(Some(2000), Some(1000), 1024), Some(-1000.0));
    }

    #[test]
    fn paths_and_rooms() {
        let cfg = ConnCfg {
            mode: Mode::Relay,
            room: "idle".into(),
            room_size: 100,
        };
        assert_eq!(cfg.path(250), "/relay/idle-2");
        assert_eq!(cfg.group(99), "idle-0");
        let ws = ConnCfg {
            mode: Mode::Ws,
            room_size: 0,
            ..cfg
        };
        assert_eq!(ws.path(7), "/ws?user=c7");
        assert_eq!(ws.group(12345), "idle");
        assert_eq!(
            ws.reason(7, "upgrade of /ws?user=c7 refused: 429".into()),
            "upgrade of /ws?user=cN refused: 429"
        );
    }

    #[test]
    fn frames_before_and_after_ready() {
        // Pings and close frames are handled by `wire::dispatch` (tested there).
        let mut out = Vec::new();
        let joined = br#"{"type":"joined","room":"idle-0","online":1,"seq":0}"#;
        assert_eq!(
            on_data(Mode::Room, false, joined, &mut out, [0; 4]),
            Ok(true)
        );
        let welcome = br#"{"type":"welcome","user":"c1","session":"s","heartbeat":25}"#;
        assert_eq!(
            on_data(Mode::Room, false, welcome, &mut out, [0; 4]),
            Ok(false)
        );
        assert_eq!(
            on_data(Mode::Ws, false, welcome, &mut out, [0; 4]),
            Ok(true)
        );
        let error = br#"{"type":"error","code":"x"}"#;
        assert!(on_data(Mode::Ws, false, error, &mut out, [0; 4]).is_err());
        assert_eq!(on_data(Mode::Ws, true, error, &mut out, [0; 4]), Ok(false));
        assert!(out.is_empty());
    }
}
