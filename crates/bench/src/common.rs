//! What every scenario shares besides the driver: closing politely, the
//! timestamped bench body, the measured window's timeline and CPU
//! accounting, latency summaries, the run's events and the JSON result line.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use super::wire::{self, OP_CLOSE};

/// Longest a connection may take to be upgraded (and, where a scenario
/// joins a room, to be answered `joined`).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client waits for the server's side of the close handshake.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Runs a scenario on a multi-threaded Tokio runtime (one thread per core).
pub fn block_on<F: Future<Output = anyhow::Result<()>>>(scenario: F) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(scenario);
    runtime.shutdown_timeout(Duration::from_millis(200));
    outcome
}

/// Sends a close frame (1000) and waits, at most [`CLOSE_WAIT`], for the
/// server to finish the close handshake.
pub async fn close_politely<R, W>(reader: &mut R, writer: &mut W, mask: [u8; 4])
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut frame = Vec::new();
    wire::encode_frame(&mut frame, OP_CLOSE, &1000u16.to_be_bytes(), mask);
    let _ = timeout(CLOSE_WAIT, async {
        writer.write_all(&frame).await?;
        let mut sink = [0u8; 4096];
        while reader.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    })
    .await;
}

/// Whether `name` is fit for a user or room name prefix: letters, digits,
/// `-` and `_` (no escaping needed anywhere).
pub fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Writes the bench body `{"t":T,"pad":"xx…"}` (with a run tag `run`:
/// `{"t":T,"r":RUN,"pad":"xx…"}`), `size` bytes when size allows (at least
/// about 30).
pub fn write_body(out: &mut Vec<u8>, t: u64, run: Option<u64>, size: usize) {
    write_tagged_body(out, t, run.map(|run| ("r", run)), size);
}

/// [`write_body`] with the node the publisher is connected to,
/// `{"t":T,"n":NODE,"pad":"xx…"}`: a subscriber of a cluster tells
/// cross-node deliveries from same-node ones by it ([`stamp_and_node`]).
pub fn write_body_from(out: &mut Vec<u8>, t: u64, node: u64, size: usize) {
    write_tagged_body(out, t, Some(("n", node)), size);
}

fn write_tagged_body(out: &mut Vec<u8>, t: u64, tag: Option<(&str, u64)>, size: usize) {
    let start = out.len();
    let _ = write!(out, "{{\"t\":{t},");
    if let Some((key, value)) = tag {
        let _ = write!(out, "\"{key}\":{value},");
    }
    out.extend_from_slice(b"\"pad\":\"");
    let pad = size.saturating_sub(out.len() - start + 2);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
}

/// The send time and, when the body carries one, the publisher's node
/// (see [`write_body_from`]): the `"n":` right after the stamp only, so
/// that nothing else in the event can be taken for it.
pub fn stamp_and_node(payload: &[u8]) -> Option<(u64, Option<u64>)> {
    const KEY: &[u8] = b"{\"t\":";
    const NODE: &[u8] = b",\"n\":";
    let mut from = 0;
    loop {
        let at = from + payload[from..].iter().position(|&b| b == b'{')?;
        if payload[at..].starts_with(KEY) {
            let rest = &payload[at + KEY.len()..];
            let t = leading_u64(rest)?;
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            let node = rest[digits..].strip_prefix(NODE).and_then(leading_u64);
            return Some((t, node));
        }
        from = at + 1;
    }
}

/// Finds the `{"t":` a bench body starts with and parses the number.
pub fn stamp(payload: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"{\"t\":";
    let mut from = 0;
    loop {
        let at = from + payload[from..].iter().position(|&b| b == b'{')?;
        if payload[at..].starts_with(KEY) {
            return leading_u64(&payload[at + KEY.len()..]);
        }
        from = at + 1;
    }
}

/// The unsigned integer after the first occurrence of `key` (such as
/// `"seq":`) in a server event. Only for events whose other fields cannot
/// contain `key` (acks, `joined`: no user-supplied text).
pub fn field_u64(payload: &[u8], key: &[u8]) -> Option<u64> {
    let at = payload.windows(key.len()).position(|w| w == key)?;
    leading_u64(&payload[at + key.len()..])
}

fn leading_u64(bytes: &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    let mut digits = 0;
    for &b in bytes {
        if !b.is_ascii_digit() {
            break;
        }
        value = value.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
        digits += 1;
    }
    (digits > 0).then_some(value)
}

/// A latency histogram in µs: 1 µs to an hour, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
    hist.auto(true);
    hist
}

fn quantile(hist: &Histogram<u64>, q: f64) -> u64 {
    if hist.is_empty() {
        0
    } else {
        hist.value_at_quantile(q)
    }
}

/// The `latency_us` object of a JSON result.
pub fn latency_json(hist: &Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "samples": hist.len(),
        "p50": quantile(hist, 0.5),
        "p90": quantile(hist, 0.9),
        "p99": quantile(hist, 0.99),
        "p999": quantile(hist, 0.999),
        "max": hist.max(),
        "mean": (hist.mean() * 10.0).round() / 10.0,
    })
}

/// `p50 … p90 … p99 … p99.9 … max … (N samples)`, for the human summary.
pub fn latency_line(hist: &Histogram<u64>) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
        quantile(hist, 0.5),
        quantile(hist, 0.9),
        quantile(hist, 0.99),
        quantile(hist, 0.999),
        hist.max(),
        hist.len()
    )
}

/// CPU use over the measured window, in percent of one core.
#[derive(Clone, Debug, Default)]
pub struct Cpu {
    /// This process (the load generator).
    pub client: Option<f64>,
    /// The server, when its PID was given (with several PIDs, their sum).
    pub server: Option<f64>,
    /// With several server PIDs: each one's share, in the order given.
    pub by_pid: Vec<(u32, Option<f64>)>,
    /// Everything else the machine did meanwhile (other processes,
    /// interrupts): a measurement is only clean when this is low.
    pub other: Option<f64>,
    /// With one server PID: each of its threads that used CPU in the window
    /// (its name, percent of one core), busiest first. Shows whether the
    /// work was spread over the cores or done by one thread.
    pub threads: Vec<(String, f64)>,
}

impl Cpu {
    /// `tokio-rt-worker 41.2%, tokio-rt-worker 40.9%, …`: the server's
    /// threads that used CPU, busiest first (None if not read).
    pub fn threads_line(&self) -> Option<String> {
        if self.threads.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .threads
            .iter()
            .map(|(name, pct)| format!("{name} {pct}%"))
            .collect();
        Some(parts.join(", "))
    }

    /// `client 80%  server 110%  everything else 2% (of one core)`.
    pub fn line(&self) -> String {
        let pct = |v: Option<f64>| v.map(|v| format!("{v}%")).unwrap_or_else(|| "n/a".into());
        let by_pid = if self.by_pid.len() > 1 {
            let parts: Vec<String> = self
                .by_pid
                .iter()
                .map(|(pid, v)| format!("{pid} {}", pct(*v)))
                .collect();
            format!(" ({})", parts.join(", "))
        } else {
            String::new()
        };
        format!(
            "client {}  server {}{by_pid}  everything else {} (of one core)",
            pct(self.client),
            pct(self.server),
            pct(self.other)
        )
    }
}

/// Readings taken at the start of the measured window.
pub struct CpuProbe {
    wall: Instant,
    /// The server's processes (none, one, or a cluster's nodes and Redis),
    /// each with its CPU seconds at the start.
    servers: Vec<(u32, Option<f64>)>,
    /// With one server PID: its threads' CPU seconds at the start, by TID.
    threads: HashMap<u32, (String, f64)>,
    client: Option<f64>,
    machine: Option<f64>,
}

impl CpuProbe {
    pub fn start(server_pids: &[u32]) -> CpuProbe {
        CpuProbe {
            wall: Instant::now(),
            servers: server_pids
                .iter()
                .map(|&p| (p, cpu_seconds(Some(p))))
                .collect(),
            threads: match server_pids {
                [pid] => thread_cpu_seconds(*pid),
                _ => HashMap::new(),
            },
            client: cpu_seconds(None),
            machine: machine_busy_seconds(),
        }
    }

    pub fn finish(self) -> Cpu {
        let wall = self.wall.elapsed().as_secs_f64();
        let pct =
            |a: Option<f64>, b: Option<f64>| Some(((b? - a?) / wall * 100.0 * 10.0).round() / 10.0);
        let client = pct(self.client, cpu_seconds(None));
        let by_pid: Vec<(u32, Option<f64>)> = self
            .servers
            .iter()
            .map(|&(p, before)| (p, pct(before, cpu_seconds(Some(p)))))
            .collect();
        // The sum, if every process could be read (a partial sum would
        // pass for the whole server's).
        let server = if by_pid.is_empty() {
            None
        } else {
            by_pid
                .iter()
                .map(|(_, v)| *v)
                .sum::<Option<f64>>()
                .map(|s| (s * 10.0).round() / 10.0)
        };
        let machine = pct(self.machine, machine_busy_seconds());
        let other = match (machine, client, server) {
            (Some(m), Some(c), s) => {
                Some((((m - c - s.unwrap_or(0.0)) * 10.0).round() / 10.0).max(0.0))
            }
            _ => None,
        };
        let mut threads: Vec<(String, f64)> = match self.servers.as_slice() {
            [(pid, _)] if !self.threads.is_empty() => thread_cpu_seconds(*pid)
                .into_iter()
                .filter_map(|(tid, (name, after))| {
                    // A thread started in the window counts from zero.
                    let before = self.threads.get(&tid).map_or(0.0, |(_, s)| *s);
                    let pct = pct(Some(before), Some(after))?;
                    (pct > 0.0).then_some((name, pct))
                })
                .collect(),
            _ => Vec::new(),
        };
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        Cpu {
            client,
            server,
            by_pid,
            other,
            threads,
        }
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

/// Each thread of a process: its name and CPU time in seconds, by TID
/// (Linux; empty elsewhere).
fn thread_cpu_seconds(pid: u32) -> HashMap<u32, (String, f64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return HashMap::new();
    };
    tasks
        .filter_map(|task| {
            let task = task.ok()?;
            let tid: u32 = task.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1.to_string();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((tid, (name, (utime + stime) / 100.0)))
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_requested_size_and_a_readable_stamp() {
        for size in [0usize, 30, 100, 1000] {
            let mut body = Vec::new();
            write_body(&mut body, 1_234_567, None, size);
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
    fn a_processs_threads_are_read_with_their_names() {
        let (started, running) = std::sync::mpsc::channel::<()>();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        // The name is set by the new thread itself: read /proc once it runs.
        let thread = std::thread::Builder::new()
            .name("probe-test".into())
            .spawn(move || {
                started.send(()).unwrap();
                stopped.recv()
            })
            .unwrap();
        running.recv().unwrap();
        let threads = thread_cpu_seconds(std::process::id());
        stop.send(()).unwrap();
        thread.join().unwrap().unwrap();
        assert!(
            threads.values().any(|(name, _)| name == "probe-test"),
            "{threads:?}"
        );
    }

    #[test]
    fn bodies_can_name_the_publishers_node() {
        let mut body = Vec::new();
        write_body_from(&mut body, 77, 2, 100);
        assert_eq!(body.len(), 100);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (value["t"].as_u64(), value["n"].as_u64()),
            (Some(77), Some(2))
        );
        let message = [
            br#"{"type":"message","room":"n","seq":1,"from":"p0","body":"#.as_slice(),
            &body,
            b"}",
        ]
        .concat();
        assert_eq!(stamp_and_node(&message), Some((77, Some(2))));
        assert_eq!(stamp(&message), Some(77));
        body.clear();
        write_body(&mut body, 5, Some(9), 60);
        assert_eq!(stamp_and_node(&body), Some((5, None)));
        assert_eq!(stamp_and_node(br#"{"type":"joined"}"#), None);
    }

    #[test]
    fn stamp_is_found_inside_room_messages_only() {
        let message = br#"{"type":"message","room":"bench","seq":3,"from":"p0","ts":1700000000000,"body":{"t":42,"pad":"xx"}}"#;
        assert_eq!(stamp(message), Some(42));
        assert_eq!(
            stamp(br#"{"type":"presence","room":"bench","event":"join","user":"s1","online":2}"#),
            None
        );
        assert_eq!(
            stamp(br#"{"type":"joined","room":"bench","online":2,"seq":0}"#),
            None
        );
    }

    #[test]
    fn results_carry_their_identity() {
        let output = Output {
            server_pid: Vec::new(),
            label: Some("switchboard room".into()),
            server: Some("switchboard".into()),
            store: None,
            json: None,
        };
        let dir = std::env::temp_dir().join(format!("bench-output-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.json");
        let output = Output {
            json: Some(path.clone()),
            ..output
        };
        output
            .emit(serde_json::json!({"scenario": "fanout", "mode": "room"}))
            .unwrap();
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            written,
            serde_json::json!({
                "scenario": "fanout",
                "mode": "room",
                "label": "switchboard room",
                "server": "switchboard",
                "store": null,
            })
        );
    }

    #[test]
    fn fields_of_acks_and_joined() {
        let ack = br#"{"type":"ack","room":"pub-3","seq":1234,"delivered":0}"#;
        assert_eq!(field_u64(ack, b"\"seq\":"), Some(1234));
        assert_eq!(field_u64(ack, b"\"delivered\":"), Some(0));
        assert_eq!(field_u64(ack, b"\"id\":"), None);
        let joined = br#"{"type":"joined","room":"pub-0","online":1,"seq":0}"#;
        assert_eq!(field_u64(joined, b"\"seq\":"), Some(0));
    }
}

/// The timeline of one run, in µs since the run's epoch: the go signal, then
/// `warmup`, then the measured window `[start, end)`.
#[derive(Clone, Copy)]
pub struct Window {
    epoch: Instant,
    pub go: u64,
    pub start: u64,
    pub end: u64,
}

impl Window {
    /// A window opening now (after `warmup`) on a run that began at `epoch`.
    pub fn open(epoch: Instant, warmup: Duration, duration: Duration) -> Window {
        let go = epoch.elapsed().as_micros() as u64;
        let start = go + warmup.as_micros() as u64;
        Window {
            epoch,
            go,
            start,
            end: start + duration.as_micros() as u64,
        }
    }

    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Whether `now` is in the measured window.
    pub fn contains(&self, now: u64) -> bool {
        now >= self.start && now < self.end
    }

    /// For the progress line.
    pub fn phase(&self, now: u64) -> &'static str {
        if now < self.start {
            "warm-up"
        } else if now < self.end {
            "measuring"
        } else {
            "draining"
        }
    }

    /// Seconds since the go signal.
    pub fn elapsed_s(&self, now: u64) -> f64 {
        now.saturating_sub(self.go) as f64 / 1e6
    }

    /// Reads CPU use over exactly the measured window.
    pub fn spawn_cpu_probe(self, server_pids: Vec<u32>) -> tokio::task::JoinHandle<Cpu> {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_micros(
                self.start.saturating_sub(self.now_us()),
            ))
            .await;
            let probe = CpuProbe::start(&server_pids);
            tokio::time::sleep(Duration::from_micros(
                self.end.saturating_sub(self.now_us()),
            ))
            .await;
            probe.finish()
        })
    }
}

/// Where a scenario's result goes, what it reports about the server, and
/// what identifies the result (so a report can find it by these keys rather
/// than by file name or position): the same flags for every scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Output {
    /// PID of the server process: its CPU use (and, for `connect`, its
    /// memory) is reported (Linux, from /proc). Repeat it (or give a comma
    /// list) for a server of several processes, such as the nodes of a
    /// cluster and its Redis: their CPU is summed (and shown each), and
    /// `connect` reports each one's memory.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Name of the target, copied into the JSON result.
    #[arg(long)]
    pub label: Option<String>,
    /// The server measured (e.g. `switchboard`, `node-ws`, `socketio`),
    /// copied into the JSON result as `server`.
    #[arg(long)]
    pub server: Option<String>,
    /// The server's store (`sqlite`, `memory`), copied into the JSON result
    /// as `store`.
    #[arg(long)]
    pub store: Option<String>,
    /// Also write the JSON result line to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl Output {
    /// Adds the result's identity (`label`, `server`, `store`) to a
    /// scenario's result object, prints it as one JSON line and, with
    /// `--json FILE`, writes it there.
    pub fn emit(&self, mut result: serde_json::Value) -> anyhow::Result<()> {
        if let Some(fields) = result.as_object_mut() {
            fields.insert("label".into(), self.label.clone().into());
            fields.insert("server".into(), self.server.clone().into());
            fields.insert("store".into(), self.store.clone().into());
        }
        let line = result.to_string();
        println!("{line}");
        if let Some(path) = &self.json {
            std::fs::write(path, format!("{line}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

/// Server error events a run keeps in full (the rest are only counted).
const ERROR_SAMPLES: usize = 5;

/// What went wrong in a run, for the report: how connections ended early,
/// and the server's `error` events.
#[derive(Default)]
pub struct Events(std::sync::Mutex<EventLog>);

#[derive(Default)]
pub struct EventLog {
    /// How connections ended early, e.g. "close 4008 slow consumer", with
    /// counts.
    pub ends: BTreeMap<String, u64>,
    pub server_errors: u64,
    /// The first few error events, in full.
    pub error_samples: Vec<String>,
}

impl Events {
    fn lock(&self) -> std::sync::MutexGuard<'_, EventLog> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection ended early.
    pub fn ended(&self, how: impl Into<String>) {
        *self.lock().ends.entry(how.into()).or_default() += 1;
    }

    /// The server sent an error event.
    pub fn server_error(&self, payload: &[u8]) {
        let mut log = self.lock();
        log.server_errors += 1;
        if log.error_samples.len() < ERROR_SAMPLES {
            log.error_samples
                .push(String::from_utf8_lossy(payload).into_owned());
        }
    }

    /// Error events a connection kept (and counted) itself.
    pub fn samples(&self, samples: impl IntoIterator<Item = String>) {
        let mut log = self.lock();
        for sample in samples {
            if log.error_samples.len() < ERROR_SAMPLES {
                log.error_samples.push(sample);
            }
        }
    }

    /// Everything so far, for the report.
    pub fn take(&self) -> EventLog {
        std::mem::take(&mut *self.lock())
    }
}
