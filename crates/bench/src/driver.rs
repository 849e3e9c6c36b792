//! The one scenario driver: the phases a scenario runs through, and the one
//! socket read loop.
//!
//! Connect → ready → measured window → drain → report. A [`Run`] owns the
//! phases: it opens connections (under the scenario's connect concurrency,
//! from 127.0.0.x source addresses past `--conns-per-ip`), counts them
//! ready, opens the measured window (timeline, CPU probe of the server,
//! progress ticker) with the go signal, drains (bounded), stops the
//! connections and collects what they counted; [`finish`] writes the report.
//! A scenario supplies only what differs: what one connection does (its
//! task, talking to the run through the `Run`), what each frame means (a
//! [`Frames`] callback into [`read_until`]), its progress line, what
//! "drained" means and its result.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore, SemaphorePermit};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::common::{self, Cpu, Output, Window, HANDSHAKE_TIMEOUT};
use super::wire::{self, FrameBuf, Target};

/// How often the progress line is printed.
const TICK: Duration = Duration::from_secs(1);
/// A drain ends early once nothing has moved for this long.
const STILL: Duration = Duration::from_secs(1);
/// How often a drain looks at its counter.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// How a scenario opens its connections: the same flags where the
/// defaults are the same.
#[derive(clap::Args, Debug)]
pub struct Dialing {
    /// Connections per source address; past it connections bind
    /// 127.0.0.2, 127.0.0.3, … (loopback targets only).
    #[arg(long, default_value_t = 20_000)]
    pub conns_per_ip: usize,
    /// Handshakes in flight at once while connecting.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
}

/// The measured window's flags: the same for every scenario that has one.
#[derive(clap::Args, Debug)]
pub struct Timing {
    /// Measured time, after the warm-up. Units: ms, s, m.
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse)]
    pub duration: Duration,
    /// Time under load before measuring starts. Units: ms, s, m.
    #[arg(long, default_value = "1s", value_parser = crate::duration::parse)]
    pub warmup: Duration,
}

/// One run of a scenario, shared by the driver and every connection task.
pub struct Run {
    /// Time zero of the run's timeline (µs stamps are relative to it).
    pub epoch: Instant,
    /// Where connections go: one server, or the nodes of a cluster (the
    /// scenario picks one per connection with [`Run::node_for`]).
    targets: Vec<Target>,
    conns_per_ip: usize,
    /// Handshakes in flight at once.
    gate: Semaphore,
    /// Connections set up, and failures.
    pub setup: Setup,
    /// Connections done with the load (every request answered, or given up).
    drained: AtomicUsize,
    /// Known once the measured window is open (at the go signal).
    window: OnceLock<Window>,
    go: watch::Sender<bool>,
    stop: watch::Sender<bool>,
}

impl Run {
    pub fn new(target: Target, connect_concurrency: usize, conns_per_ip: usize) -> Arc<Run> {
        Run::spread(vec![target], connect_concurrency, conns_per_ip)
    }

    /// A run whose connections go to several servers (the nodes of a
    /// cluster); `targets` must not be empty.
    pub fn spread(
        targets: Vec<Target>,
        connect_concurrency: usize,
        conns_per_ip: usize,
    ) -> Arc<Run> {
        assert!(!targets.is_empty(), "a run needs a target");
        Arc::new(Run {
            epoch: Instant::now(),
            targets,
            conns_per_ip,
            gate: Semaphore::new(connect_concurrency.max(1)),
            setup: Setup::default(),
            drained: AtomicUsize::new(0),
            window: OnceLock::new(),
            go: watch::channel(false).0,
            stop: watch::channel(false).0,
        })
    }

    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    // --- Connect ---------------------------------------------------------

    /// A place among the handshakes in flight (`None` once the gate is
    /// closed, which it never is).
    pub async fn permit(&self) -> Option<SemaphorePermit<'_>> {
        self.gate.acquire().await.ok()
    }

    /// Connection number `n` connects and upgrades (from the source address
    /// for `n`), without waiting for a place among the handshakes.
    pub async fn dial(&self, n: usize, path: &str) -> Result<(TcpStream, Vec<u8>), String> {
        self.dial_node(0, n, path).await
    }

    /// [`Run::dial`] to node `node` (of the targets, modulo their number).
    pub async fn dial_node(
        &self,
        node: usize,
        n: usize,
        path: &str,
    ) -> Result<(TcpStream, Vec<u8>), String> {
        let target = &self.targets[node % self.targets.len()];
        let source = target.source_for(n, self.conns_per_ip);
        match timeout(HANDSHAKE_TIMEOUT, wire::connect(target, source, path)).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(err)) => Err(format!("{err:#}")),
            Err(_) => Err("handshake timed out".into()),
        }
    }

    /// Where connections go (the first node when there are several).
    pub fn target(&self) -> &Target {
        &self.targets[0]
    }

    /// The node of the `i`-th connection of a kind (subscriber, publisher):
    /// round-robin, so that every kind is spread evenly over the nodes.
    pub fn node_for(&self, i: usize) -> usize {
        i % self.targets.len()
    }

    /// The source address connection number `n` binds (see
    /// [`Target::source_for`]).
    pub fn source_for(&self, n: usize) -> Option<std::net::IpAddr> {
        self.target().source_for(n, self.conns_per_ip)
    }

    /// [`Run::dial`] holding a place among the handshakes meanwhile.
    pub async fn connect(&self, n: usize, path: &str) -> Result<(TcpStream, Vec<u8>), String> {
        self.connect_node(0, n, path).await
    }

    /// [`Run::dial_node`] holding a place among the handshakes meanwhile.
    pub async fn connect_node(
        &self,
        node: usize,
        n: usize,
        path: &str,
    ) -> Result<(TcpStream, Vec<u8>), String> {
        let _permit = self.permit().await;
        self.dial_node(node, n, path).await
    }

    // --- Ready -----------------------------------------------------------

    /// Spawns one task per connection number in `conns`.
    pub fn spawn<T, F>(
        self: &Arc<Self>,
        conns: std::ops::Range<usize>,
        task: impl Fn(Arc<Run>, usize) -> F,
    ) -> Vec<JoinHandle<T>>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        conns.map(|n| tokio::spawn(task(self.clone(), n))).collect()
    }

    /// One more connection is ready.
    pub fn ready(&self) {
        self.setup.ready();
    }

    /// A connection failed to set up.
    pub fn fail(&self, what: String) {
        self.setup.fail(what);
    }

    /// Waits until `want` connections are ready: fails at the first setup
    /// failure or after a deadline that grows with `want` by `per_conn`.
    /// Polls the counters: the connections count themselves, and a 20 ms
    /// look is cheap next to a setup that takes seconds.
    pub async fn wait_ready(
        &self,
        want: usize,
        what: &str,
        per_conn: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT + per_conn * want as u32;
        loop {
            if self.setup.failed_count() > 0 {
                let failures = self.setup.failures();
                anyhow::bail!(
                    "{} connection(s) failed while setting up {what}; first: {}",
                    failures.len(),
                    failures.first().map(String::as_str).unwrap_or("?")
                );
            }
            if self.setup.ready_count() >= want {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "timed out setting up {what}: {} of {want} ready",
                    self.setup.ready_count()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // --- The measured window ----------------------------------------------

    /// Opens the measured window after the warm-up and gives the go signal;
    /// the CPU probe covers exactly the window, and `line` is the
    /// scenario's part of the progress line printed every second.
    pub fn measure(
        &self,
        timing: &Timing,
        server_pids: &[u32],
        line: impl FnMut() -> String + Send + 'static,
    ) -> Measuring {
        let window = *self
            .window
            .get_or_init(|| Window::open(self.epoch, timing.warmup, timing.duration));
        let cpu = window.spawn_cpu_probe(server_pids.to_vec());
        self.go.send_replace(true);
        let mut line = line;
        let ticker = spawn_ticker(move || {
            let now = window.now_us();
            (window.elapsed_s(now), window.phase(now), line())
        });
        Measuring { cpu, ticker }
    }

    /// The measured window, once open.
    pub fn window(&self) -> Option<Window> {
        self.window.get().copied()
    }

    /// Waits for the go signal; the window it opened.
    pub async fn go(&self) -> Option<Window> {
        let mut go = self.go.subscribe();
        go.wait_for(|go| *go).await.ok()?;
        self.window()
    }

    /// Whether `now` (µs) is in the measured window.
    pub fn measuring(&self, now: u64) -> bool {
        self.window.get().is_some_and(|w| w.contains(now))
    }

    // --- Drain -------------------------------------------------------------

    /// A connection is done with its load.
    pub fn drained(&self) {
        self.drained.fetch_add(1, Ordering::SeqCst);
    }

    /// Waits until `want` connections are done with their load (or every
    /// task in `tasks` has ended).
    pub async fn wait_drained<T>(&self, want: usize, tasks: &[JoinHandle<T>]) {
        while self.drained.load(Ordering::SeqCst) < want && !tasks.iter().all(|t| t.is_finished()) {
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    /// Tells the connections to close.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// The stop signal (after the drain): connections close.
    pub async fn stopped(&self) {
        let mut stop = self.stop.subscribe();
        let _ = stop.wait_for(|stop| *stop).await;
    }

    /// Stops the connections, ends the progress line and collects the
    /// tasks' results and the CPU use over the window.
    pub async fn finish<T>(&self, measuring: Measuring, tasks: Vec<JoinHandle<T>>) -> (Vec<T>, Cpu)
    where
        T: Default,
    {
        self.stop();
        measuring.ticker.abort();
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(task.await.unwrap_or_default());
        }
        (results, measuring.cpu.await.unwrap_or_default())
    }
}

/// The measured window under way.
pub struct Measuring {
    cpu: JoinHandle<Cpu>,
    ticker: JoinHandle<()>,
}

/// Waits, at most `bound`, until `missing` (what has still to arrive) is 0
/// or has not changed for a second.
pub async fn drain(bound: Duration, mut missing: impl FnMut() -> u64) {
    let deadline = Instant::now() + bound;
    let mut last = (missing(), Instant::now());
    while last.0 > 0 && Instant::now() < deadline && last.1.elapsed() < STILL {
        tokio::time::sleep(DRAIN_POLL).await;
        let now_missing = missing();
        if now_missing != last.0 {
            last = (now_missing, Instant::now());
        }
    }
}

/// Calls `tick` every second (the first time a second from now), until
/// aborted.
pub fn every_second(mut tick: impl FnMut() + Send + 'static) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(TICK);
        interval.tick().await;
        loop {
            interval.tick().await;
            tick();
        }
    })
}

/// A count in the progress line, with what it gained since the last line.
#[derive(Default)]
pub struct Gain(u64);

impl Gain {
    /// `value (+gain/s)`.
    pub fn show(&mut self, value: u64) -> String {
        let gain = value.saturating_sub(self.0);
        self.0 = value;
        format!("{value} (+{gain}/s)")
    }
}

/// Prints a progress line on stderr every second, until aborted:
/// `[elapsed state] text`, from what `line` says.
pub fn spawn_ticker(
    mut line: impl FnMut() -> (f64, &'static str, String) + Send + 'static,
) -> JoinHandle<()> {
    every_second(move || {
        let (elapsed, state, text) = line();
        eprintln!("[{elapsed:5.1}s {state:>9}] {text}");
    })
}

/// A scenario's connection setup, shared by its tasks: how many
/// connections are ready, and which failed (and why).
#[derive(Default)]
pub struct Setup {
    ready: AtomicUsize,
    failed: AtomicUsize,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Setup {
    /// One more connection is set up.
    pub fn ready(&self) {
        self.ready.fetch_add(1, Ordering::SeqCst);
    }

    pub fn ready_count(&self) -> usize {
        self.ready.load(Ordering::SeqCst)
    }

    /// A connection failed to set up (or later, for the report).
    pub fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        self.lock().push(what);
    }

    pub fn failed_count(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }

    /// Every failure so far, in order.
    pub fn failures(&self) -> Vec<String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// --- Report ----------------------------------------------------------------

/// The report of a run: the scenario has printed its human summary; this
/// writes the JSON line (with the CPU use over the window, when measured)
/// and, with `--strict`, fails on the scenario's problems.
pub fn finish(
    output: &Output,
    mut result: serde_json::Value,
    cpu: Option<Cpu>,
    strict: bool,
    problems: Vec<String>,
) -> anyhow::Result<()> {
    if let (Some(cpu), Some(fields)) = (cpu, result.as_object_mut()) {
        fields.insert("client_cpu_pct".into(), cpu.client.into());
        fields.insert("server_cpu_pct".into(), cpu.server.into());
        fields.insert("other_cpu_pct".into(), cpu.other.into());
        // Several server processes (cluster nodes, Redis): what each took;
        // `server_cpu_pct` is their sum. Absent for one server, so that
        // its result is as it always was.
        // In the order the PIDs were given (a map would sort them).
        if cpu.by_pid.len() > 1 {
            let by_pid: Vec<serde_json::Value> = cpu
                .by_pid
                .iter()
                .map(|(pid, pct)| serde_json::json!({"pid": pid, "cpu_pct": pct}))
                .collect();
            fields.insert("server_cpu_pct_by_pid".into(), by_pid.into());
        }
        if !cpu.threads.is_empty() {
            let threads: Vec<serde_json::Value> = cpu
                .threads
                .iter()
                .map(|(name, pct)| serde_json::json!({"name": name, "cpu_pct": pct}))
                .collect();
            fields.insert("server_threads".into(), threads.into());
        }
    }
    output.emit(result)?;
    if strict && !problems.is_empty() {
        anyhow::bail!("--strict: {}", problems.join("; "));
    }
    Ok(())
}

/// How connections ended early, and the server's error events, for the
/// human summary.
pub fn print_events(ends: &BTreeMap<String, u64>, error_samples: &[String]) {
    for (how, count) in ends {
        println!("  ended early  {count} × {how}");
    }
    for sample in error_samples {
        println!("  server error {sample}");
    }
}

/// A hint when the server throttled the load generator.
pub fn print_rate_limit_hint(error_samples: &[String]) {
    if error_samples.iter().any(|e| e.contains("rate_limited")) {
        println!("  hint         start the server with --rate-limit 0 to measure it");
    }
}

/// A scenario's `--strict` problems.
#[derive(Default)]
pub struct Problems(Vec<String>);

impl Problems {
    /// Notes `what` when `bad`.
    pub fn check(&mut self, bad: bool, what: impl FnOnce() -> String) {
        if bad {
            self.0.push(what());
        }
    }

    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
}

// --- The read loop -----------------------------------------------------------

/// How a [`read_until`] loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The stop signal.
    Stopped,
    /// The [`Frames::deadline`] passed.
    Deadline,
    /// The connection ended (closed, broken, refused by the callback): how.
    Gone(String),
}

impl End {
    /// How the connection ended unasked, `None` if it was stopped.
    pub fn unasked(self) -> Option<String> {
        match self {
            End::Stopped => None,
            End::Deadline => Some("deadline passed".into()),
            End::Gone(how) => Some(how),
        }
    }
}

/// What a connection does with what it reads: the scenario's callback into
/// [`wire::dispatch`].
pub trait Frames {
    /// A read has arrived; its frames follow.
    fn on_read(&mut self) {}
    /// One data frame; replies go into `out`. `Err` ends the connection.
    fn on_data(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), String>;
    /// The frames of one read are handled.
    fn after_read(&mut self) {}
    /// While set, the loop ends ([`End::Deadline`]) when it passes.
    fn deadline(&self) -> Option<tokio::time::Instant> {
        None
    }
}

/// A [`Frames`] callback that only looks at each data frame.
pub struct OnData<F>(pub F);

impl<F: FnMut(&[u8])> Frames for OnData<F> {
    fn on_data(&mut self, payload: &[u8], _: &mut Vec<u8>) -> Result<(), String> {
        (self.0)(payload);
        Ok(())
    }
}

/// Where a connection's replies go: its write half, or one shared with a
/// task that writes too.
pub trait Outbox {
    fn send<'a>(
        &'a mut self,
        bytes: &'a [u8],
    ) -> impl Future<Output = std::io::Result<()>> + Send + 'a;
}

impl<W: AsyncWrite + Unpin + Send> Outbox for W {
    fn send<'a>(
        &'a mut self,
        bytes: &'a [u8],
    ) -> impl Future<Output = std::io::Result<()>> + Send + 'a {
        self.write_all(bytes)
    }
}

/// The one socket read loop: writes what is queued in `out`, reads (until
/// `stop` or the callback's deadline), hands the frames to `frames` (pongs
/// for pings, see [`wire::dispatch`]), again.
pub async fn read_until<R, W, F>(
    reader: &mut R,
    writer: &mut W,
    buf: &mut FrameBuf,
    out: &mut Vec<u8>,
    mask: [u8; 4],
    stop: impl Future<Output = ()>,
    frames: &mut F,
) -> End
where
    R: AsyncRead + Unpin,
    W: Outbox,
    F: Frames,
{
    tokio::pin!(stop);
    let mut pending = !buf.is_empty();
    loop {
        if !out.is_empty() {
            if let Err(err) = writer.send(out).await {
                return End::Gone(format!("write error: {}", err.kind()));
            }
            out.clear();
        }
        if !pending {
            let deadline = frames.deadline();
            let read = tokio::select! {
                biased;
                () = &mut stop => return End::Stopped,
                () = sleep_until(deadline), if deadline.is_some() => return End::Deadline,
                read = buf.fill(reader) => read,
            };
            match read {
                Ok(0) => return End::Gone("eof without close frame".into()),
                Ok(_) => {}
                Err(err) => return End::Gone(format!("read error: {}", err.kind())),
            }
        }
        pending = false;
        frames.on_read();
        let dispatched = wire::dispatch(buf, out, mask, |payload, out| {
            frames.on_data(payload, out).map(|()| false)
        });
        if let Err(how) = dispatched {
            return End::Gone(how);
        }
        frames.after_read();
    }
}

/// A connection held by one task: [`read_until`] over its two halves and,
/// once stopped, the polite close.
pub async fn hold(
    mut stream: TcpStream,
    leftover: Vec<u8>,
    capacity: usize,
    mut out: Vec<u8>,
    mask: [u8; 4],
    stop: impl Future<Output = ()>,
    frames: &mut impl Frames,
) -> End {
    let mut buf = FrameBuf::new(capacity, leftover);
    let (mut reader, mut writer) = stream.split();
    let end = read_until(
        &mut reader,
        &mut writer,
        &mut buf,
        &mut out,
        mask,
        stop,
        frames,
    )
    .await;
    if end == End::Stopped {
        common::close_politely(&mut reader, &mut writer, mask).await;
    }
    end
}

/// Sleeps until `deadline`, or for ever without one.
pub async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{OP_CLOSE, OP_PING, OP_TEXT};

    fn server_frames(frames: &[(u8, &[u8])]) -> Vec<u8> {
        let mut stream = Vec::new();
        for (opcode, payload) in frames {
            stream.push(0x80 | opcode);
            stream.push(payload.len() as u8);
            stream.extend_from_slice(payload);
        }
        stream
    }

    #[derive(Default)]
    struct Count {
        reads: usize,
        seen: Vec<Vec<u8>>,
        after: usize,
    }

    impl Frames for Count {
        fn on_read(&mut self) {
            self.reads += 1;
        }
        fn on_data(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
            if payload == b"reply" {
                out.extend_from_slice(b"R");
            }
            self.seen.push(payload.to_vec());
            Ok(())
        }
        fn after_read(&mut self) {
            self.after += 1;
        }
    }

    #[tokio::test]
    async fn the_read_loop_feeds_frames_writes_replies_and_ends_on_close() {
        let stream = server_frames(&[
            (OP_TEXT, b"one"),
            (OP_TEXT, b"reply"),
            (OP_PING, b"p"),
            (OP_CLOSE, &[0x03, 0xE8]),
        ]);
        let mut reader: &[u8] = &stream;
        let mut written = Vec::new();
        let mut buf = FrameBuf::new(64, Vec::new());
        let mut frames = Count::default();
        let end = read_until(
            &mut reader,
            &mut written,
            &mut buf,
            &mut Vec::new(),
            [0; 4],
            std::future::pending(),
            &mut frames,
        )
        .await;
        assert_eq!(end, End::Gone("close 1000".into()));
        assert_eq!(frames.seen, [b"one".to_vec(), b"reply".to_vec()]);
        assert_eq!((frames.reads, frames.after), (1, 0));
        // Nothing written: the close ended the loop before the replies went.
        assert!(written.is_empty());
    }

    #[tokio::test]
    async fn the_read_loop_writes_queued_replies_and_stops_on_the_signal() {
        let stream = server_frames(&[(OP_TEXT, b"reply"), (OP_PING, b"p")]);
        let mut reader = tokio_test_reader(stream);
        let mut written = Vec::new();
        let mut buf = FrameBuf::new(64, Vec::new());
        let mut frames = Count::default();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut out = Vec::new();
        let loop_ = read_until(
            &mut reader,
            &mut written,
            &mut buf,
            &mut out,
            [0; 4],
            async {
                let _ = stop_rx.await;
            },
            &mut frames,
        );
        let (end, ()) = tokio::join!(loop_, async {
            // The loop is parked on the (empty) socket once the frames are
            // handled: only then does the stop signal win.
            tokio::task::yield_now().await;
            let _ = stop_tx.send(());
        });
        assert_eq!(end, End::Stopped);
        assert_eq!(frames.seen, [b"reply".to_vec()]);
        assert_eq!(frames.after, 1);
        // The callback's reply, then the pong (masked with a zero key).
        assert_eq!(
            written,
            [b"R".as_slice(), &[0x8A, 0x81, 0, 0, 0, 0, b'p']].concat()
        );
    }

    /// A reader that yields `bytes`, then waits forever (an idle socket).
    fn tokio_test_reader(bytes: Vec<u8>) -> impl AsyncRead + Unpin {
        tokio::io::AsyncReadExt::chain(std::io::Cursor::new(bytes), Pending)
    }

    struct Pending;

    impl AsyncRead for Pending {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_drain_ends_when_nothing_is_missing() {
        let started = Instant::now();
        drain(Duration::from_secs(10), || 0).await;
        assert!(started.elapsed() < STILL);
    }
}
