//! `switchboard-bench churn`: short sessions, opened at a fixed rate.
//!
//! Each session connects (user `PREFIX{k}`), joins room `ROOM-(k mod R)`,
//! publishes one message, waits for its ack and closes (close handshake).
//! Sessions start at `--rate` per second for `--duration`, open loop: a
//! session due while `--max-in-flight` are still running is skipped (and
//! counted), so a slow server shows as skipped sessions and latency, not as
//! a slower schedule.
//!
//! Reported: completed sessions per second, failures by kind (connect
//! failed, handshake refused, error event, timeout, connection closed), and
//! the latency of each step: connect (TCP and upgrade), join (`join` to
//! `joined`), publish (`publish` to `ack`), and the whole session (from the
//! connect to the end of the close handshake).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::duration::parse as parse_duration;
use anyhow::bail;
use hdrhistogram::Histogram;
use tokio::time::timeout;

use super::client::{self, Conn};
use super::common::{self, Window};
use super::driver::{self, Gain, Problems};
use super::wire::{self, Target};

/// Read buffer per session.
const BUFFER: usize = 4 * 1024;

#[derive(clap::Args, Debug)]
pub struct ChurnArgs {
    /// Server to measure: ws://HOST:PORT. Start Switchboard with
    /// `--rate-limit 0 --max-connections-per-ip 0 --connect-rate-per-ip 0`.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    url: String,
    /// Sessions started per second.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// How long sessions are started for. Units: ms, s, m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Most sessions running at once; a session due beyond it is skipped.
    #[arg(long, default_value_t = 1000)]
    max_in_flight: usize,
    /// Rooms the sessions are spread over (session k joins ROOM-(k mod R)).
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Room names are PREFIX-0, PREFIX-1, …
    #[arg(long, default_value = "churn")]
    room_prefix: String,
    /// Users are PREFIX{k} (letters, digits, - and _).
    #[arg(long, default_value = "c")]
    user_prefix: String,
    /// Bytes of the message body, a JSON object {"t":µs,"pad":"xx…"}.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Longest each step (connect, join, publish) may take. Units: ms, s, m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Sessions per source address; past it sessions bind 127.0.0.2,
    /// 127.0.0.3, … (loopback targets only).
    #[arg(long, default_value_t = 10_000)]
    conns_per_ip: usize,
    #[command(flatten)]
    output: common::Output,
    /// Exit with an error if any session failed (smoke tests; timing, and
    /// sessions skipped at --max-in-flight, are never judged).
    #[arg(long)]
    strict: bool,
}

struct Cfg {
    target: Target,
    rooms: usize,
    room_json: Vec<String>,
    user_prefix: String,
    size: usize,
    timeout: Duration,
    conns_per_ip: usize,
}

struct Stats {
    connect: Histogram<u64>,
    join: Histogram<u64>,
    publish: Histogram<u64>,
    session: Histogram<u64>,
    /// Failures by kind, e.g. "timeout (join)".
    failures: BTreeMap<String, u64>,
    /// The first failure of each kind, in full.
    samples: BTreeMap<String, String>,
}

struct Shared {
    epoch: Instant,
    started: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    in_flight: AtomicUsize,
    stats: Mutex<Stats>,
}

impl Shared {
    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A failed step: its kind, and the detail for the samples.
struct Failure {
    kind: String,
    detail: String,
}

impl Failure {
    fn new(kind: impl Into<String>, detail: impl Into<String>) -> Failure {
        Failure {
            kind: kind.into(),
            detail: detail.into(),
        }
    }

    /// A `wait_for` error on step `step`: a timeout or the connection gone.
    fn waiting(step: &str, err: String) -> Failure {
        if err.starts_with("no answer within") {
            Failure::new(format!("timeout ({step})"), err)
        } else {
            Failure::new(format!("connection closed ({step})"), err)
        }
    }
}

/// Sorts a connect error: `wire::connect` says `connect to …` when the TCP
/// connect failed, `upgrade of … refused: HTTP/1.1 503 …` when the server
/// answered the upgrade with something else than 101.
fn connect_failure(err: &anyhow::Error) -> Failure {
    let detail = format!("{err:#}");
    let kind = if let Some(status) = detail.split_once("refused: HTTP/1.1 ") {
        let code: String = status.1.chars().take_while(char::is_ascii_digit).collect();
        format!("handshake refused ({code})")
    } else if detail.starts_with("connect to") || detail.starts_with("bind") {
        "connect failed".to_string()
    } else {
        "handshake failed".to_string()
    };
    Failure::new(kind, detail)
}

/// What a session measured, µs.
struct Timings {
    connect: u64,
    join: u64,
    publish: u64,
}

/// The answer to a command: `Ok` for `kind`, `Err` for an `error` event.
fn answer(payload: &[u8], kind: &[u8]) -> Option<Result<(), String>> {
    if client::is(payload, kind) {
        Some(Ok(()))
    } else if client::is(payload, b"error") {
        Some(Err(String::from_utf8_lossy(payload).into_owned()))
    } else {
        None
    }
}

async fn steps(sh: &Shared, cfg: &Cfg, k: u64) -> Result<(Conn, Timings), Failure> {
    let user = format!("{}{k}", cfg.user_prefix);
    let room = cfg.room_json[(k % cfg.rooms as u64) as usize].as_str();
    let source = cfg.target.source_for(k as usize, cfg.conns_per_ip);
    let path = format!("/ws?user={user}");
    let t0 = Instant::now();
    let (stream, leftover) =
        match timeout(cfg.timeout, wire::connect(&cfg.target, source, &path)).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(err)) => return Err(connect_failure(&err)),
            Err(_) => return Err(Failure::new("timeout (connect)", "handshake timed out")),
        };
    let connect = t0.elapsed().as_micros() as u64;
    let mut conn = Conn::new(stream, leftover, BUFFER, wire::mask_for(k as usize));

    let t1 = Instant::now();
    let join = format!("{{\"type\":\"join\",\"room\":{room}}}");
    conn.send_text(join.as_bytes())
        .await
        .map_err(|err| Failure::new("connection closed (join)", err))?;
    conn.wait_for(cfg.timeout, |p| answer(p, b"joined"))
        .await
        .map_err(|err| Failure::waiting("join", err))?
        .map_err(|err| Failure::new("error event (join)", err))?;
    let join = t1.elapsed().as_micros() as u64;

    let t2 = Instant::now();
    let mut message = Vec::with_capacity(cfg.size + 64);
    message.extend_from_slice(b"{\"type\":\"publish\",\"room\":");
    message.extend_from_slice(room.as_bytes());
    message.extend_from_slice(b",\"body\":");
    common::write_body(
        &mut message,
        sh.epoch.elapsed().as_micros() as u64,
        None,
        cfg.size,
    );
    message.push(b'}');
    conn.send_text(&message)
        .await
        .map_err(|err| Failure::new("connection closed (publish)", err))?;
    conn.wait_for(cfg.timeout, |p| answer(p, b"ack"))
        .await
        .map_err(|err| Failure::waiting("publish", err))?
        .map_err(|err| Failure::new("error event (publish)", err))?;
    let publish = t2.elapsed().as_micros() as u64;
    Ok((
        conn,
        Timings {
            connect,
            join,
            publish,
        },
    ))
}

async fn session(sh: Arc<Shared>, cfg: Arc<Cfg>, k: u64) {
    let t0 = Instant::now();
    let outcome = steps(&sh, &cfg, k).await;
    match outcome {
        Ok((conn, timings)) => {
            conn.close().await;
            let total = t0.elapsed().as_micros() as u64;
            let mut stats = sh.stats();
            stats.connect.saturating_record(timings.connect.max(1));
            stats.join.saturating_record(timings.join.max(1));
            stats.publish.saturating_record(timings.publish.max(1));
            stats.session.saturating_record(total.max(1));
            drop(stats);
            sh.completed.fetch_add(1, Ordering::Relaxed);
        }
        Err(failure) => {
            let mut stats = sh.stats();
            *stats.failures.entry(failure.kind.clone()).or_default() += 1;
            stats.samples.entry(failure.kind).or_insert(failure.detail);
            drop(stats);
            sh.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    sh.in_flight.fetch_sub(1, Ordering::SeqCst);
}

pub fn run(args: ChurnArgs) -> anyhow::Result<()> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a number > 0");
    }
    if args.duration.is_zero() || args.rooms == 0 || args.max_in_flight == 0 {
        bail!("--duration, --rooms and --max-in-flight must be more than 0");
    }
    if !common::plain_name(&args.user_prefix) || !common::plain_name(&args.room_prefix) {
        bail!("--user-prefix and --room-prefix: letters, digits, - and _ only");
    }
    let target = Target::parse(&args.url)?;
    common::block_on(drive(args, target))
}

async fn drive(args: ChurnArgs, target: Target) -> anyhow::Result<()> {
    let cfg = Arc::new(Cfg {
        target,
        rooms: args.rooms,
        room_json: (0..args.rooms)
            .map(|r| serde_json::to_string(&format!("{}-{r}", args.room_prefix)))
            .collect::<Result<_, _>>()?,
        user_prefix: args.user_prefix.clone(),
        size: args.size,
        timeout: args.timeout,
        conns_per_ip: args.conns_per_ip,
    });
    let sh = Arc::new(Shared {
        epoch: Instant::now(),
        started: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        stats: Mutex::new(Stats {
            connect: common::latency_histogram(),
            join: common::latency_histogram(),
            publish: common::latency_histogram(),
            session: common::latency_histogram(),
            failures: BTreeMap::new(),
            samples: BTreeMap::new(),
        }),
    });
    eprintln!(
        "churn {}: {} sessions/s for {:?} (at most {} at once), {} room(s): connect, join, publish, close",
        args.url, args.rate, args.duration, args.max_in_flight, args.rooms
    );
    let overflows_before = client::listen_overflows();
    let window = Window::open(sh.epoch, Duration::ZERO, args.duration);
    let cpu_probe = window.spawn_cpu_probe(args.output.server_pid.clone());
    let ticker = driver::spawn_ticker({
        let sh = sh.clone();
        let mut completed = Gain::default();
        move || {
            let now = window.now_us();
            let line = format!(
                "started {}  completed {}  failed {}  in flight {}",
                sh.started.load(Ordering::Relaxed),
                completed.show(sh.completed.load(Ordering::Relaxed)),
                sh.failed.load(Ordering::Relaxed),
                sh.in_flight.load(Ordering::Relaxed),
            );
            let phase = if now < window.end {
                "starting"
            } else {
                "finishing"
            };
            (window.elapsed_s(now), phase, line)
        }
    });

    // The schedule: session k is due at go + k / rate.
    let go = tokio::time::Instant::now();
    let total = (args.duration.as_secs_f64() * args.rate).floor() as u64;
    let mut tasks = Vec::with_capacity(total as usize);
    let mut skipped = 0u64;
    let mut late_max_us = 0u64;
    for k in 0..total {
        let due = go + Duration::from_secs_f64(k as f64 / args.rate);
        tokio::time::sleep_until(due).await;
        late_max_us = late_max_us.max(due.elapsed().as_micros() as u64);
        if sh.in_flight.load(Ordering::SeqCst) >= args.max_in_flight {
            skipped += 1;
            continue;
        }
        sh.in_flight.fetch_add(1, Ordering::SeqCst);
        sh.started.fetch_add(1, Ordering::Relaxed);
        tasks.push(tokio::spawn(session(sh.clone(), cfg.clone(), k)));
    }
    let start_span = go.elapsed().as_secs_f64();
    for task in tasks {
        let _ = task.await;
    }
    let finish_span = go.elapsed().as_secs_f64();
    ticker.abort();
    let cpu = cpu_probe.await.unwrap_or_default();
    let listen_overflows = overflows_before
        .zip(client::listen_overflows())
        .map(|(before, after)| after.saturating_sub(before));

    // Results.
    let seconds = args.duration.as_secs_f64();
    let started = sh.started.load(Ordering::SeqCst);
    let completed = sh.completed.load(Ordering::SeqCst);
    let failed = sh.failed.load(Ordering::SeqCst);
    let stats = sh.stats();
    let result = serde_json::json!({
        "scenario": "churn",
        "url": args.url,
        "rate": args.rate,
        "duration_s": seconds,
        "max_in_flight": args.max_in_flight,
        "rooms": args.rooms,
        "size": args.size,
        "scheduled": total,
        "started": started,
        "skipped": skipped,
        "completed": completed,
        "completed_per_sec": (completed as f64 / seconds * 10.0).round() / 10.0,
        "failed": failed,
        "failures": stats.failures,
        "failure_samples": stats.samples,
        "late_max_us": late_max_us,
        "listen_overflows": listen_overflows,
        "finish_s": (finish_span * 1000.0).round() / 1000.0,
        "connect_us": common::latency_json(&stats.connect),
        "join_us": common::latency_json(&stats.join),
        "publish_us": common::latency_json(&stats.publish),
        "session_us": common::latency_json(&stats.session),
    });
    println!(
        "churn {} ({} sessions/s for {seconds} s, at most {} at once, {} room(s))",
        args.url, args.rate, args.max_in_flight, args.rooms
    );
    println!(
        "  sessions     {completed} completed ({:.1}/s), {failed} failed, {skipped} skipped at the in-flight cap, of {total} scheduled",
        completed as f64 / seconds
    );
    println!(
        "  schedule     started over {start_span:.2} s (latest start {late_max_us} µs behind), all done after {finish_span:.2} s"
    );
    println!("  connect µs   {}", common::latency_line(&stats.connect));
    println!("  join µs      {}", common::latency_line(&stats.join));
    println!("  publish µs   {}", common::latency_line(&stats.publish));
    println!("  session µs   {}", common::latency_line(&stats.session));
    println!("  cpu          {}", cpu.line());
    if let Some(n) = listen_overflows.filter(|&n| n > 0) {
        println!(
            "  kernel       {n} connection attempts dropped, machine-wide, on a full listen queue (a dropped SYN is retried after 1 s, 3 s, …)"
        );
    }
    for (kind, count) in &stats.failures {
        let sample = stats.samples.get(kind).map_or("", String::as_str);
        println!("  failed       {count} × {kind}: first {sample}");
    }
    let mut problems = Problems::default();
    problems.check(completed == 0, || "no session completed".into());
    problems.check(failed > 0, || {
        format!("{failed} sessions failed: {:?}", stats.failures)
    });
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

    #[test]
    fn connect_failures_by_kind() {
        let refused =
            anyhow::anyhow!("upgrade of /ws?user=c1 refused: HTTP/1.1 429 Too Many Requests");
        assert_eq!(connect_failure(&refused).kind, "handshake refused (429)");
        let tcp =
            anyhow::anyhow!("Connection refused (os error 111)").context("connect to 127.0.0.1:1");
        assert_eq!(connect_failure(&tcp).kind, "connect failed");
        let eof = anyhow::anyhow!("connection closed during the handshake");
        assert_eq!(connect_failure(&eof).kind, "handshake failed");
        assert_eq!(
            Failure::waiting("join", "no answer within 10s".into()).kind,
            "timeout (join)"
        );
        assert_eq!(
            Failure::waiting("publish", "close 1001 going away".into()).kind,
            "connection closed (publish)"
        );
    }

    #[test]
    fn answers_and_errors() {
        assert_eq!(
            answer(
                br#"{"type":"joined","room":"churn-0","online":1,"seq":0}"#,
                b"joined"
            ),
            Some(Ok(()))
        );
        assert!(matches!(
            answer(
                br#"{"type":"error","code":"forbidden","message":"x"}"#,
                b"ack"
            ),
            Some(Err(_))
        ));
        assert_eq!(
            answer(
                br#"{"type":"presence","room":"churn-0","event":"join","user":"c2","online":2}"#,
                b"ack"
            ),
            None
        );
    }
}
