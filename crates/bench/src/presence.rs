//! `switchboard-bench presence`: a join storm into one room.
//!
//! `--users` clients connect (user `PREFIX{k}`) and join one room, their
//! starts spread evenly over `--over`. Every member counts the `presence`
//! frames (and their bytes) it receives from its join until the storm is
//! over: everyone joined and no presence frame anywhere for `--quiet`.
//!
//! Reported: presence frames per member (max, mean, p50, p99), how many of
//! them were single changes and how many batched deltas, totals, and what
//! the same storm costs when every join is sent to every member (n(n-1)/2
//! frames: the server's behaviour with `--presence-batch-above` at or
//! above `--users`, which a run can also measure directly). Also checked:
//! the last `online` each member saw is the room's final count.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::duration::parse as parse_duration;
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::time::timeout;

use super::client::{self, Conn};
use super::common::{self, CpuProbe};
use super::wire::{self, Target};

/// Read buffer per member: a delta lists at most 64 names.
const BUFFER: usize = 4 * 1024;

#[derive(clap::Args, Debug)]
pub struct PresenceArgs {
    /// Server to measure: ws://HOST:PORT. Start Switchboard with
    /// `--rate-limit 0 --max-connections-per-ip 0 --connect-rate-per-ip 0`.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    url: String,
    /// Users joining the room, one connection each.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// The joins' starts are spread evenly over this time. Units: ms, s, m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    over: Duration,
    /// The room.
    #[arg(long, default_value = "presence")]
    room: String,
    /// Users are PREFIX{k} (letters, digits, - and _).
    #[arg(long, default_value = "p")]
    user_prefix: String,
    /// The storm is over once every user joined and no presence frame
    /// arrived for this long (longer than the server's
    /// --presence-interval). Units: ms, s, m.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    quiet: Duration,
    /// Longest a connect or a join may take, and the longest wait for the
    /// storm to be over. Units: ms, s, m.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
    /// Connections per source address; past it they bind 127.0.0.2,
    /// 127.0.0.3, … (loopback targets only; one address reaches ~28 000).
    #[arg(long, default_value_t = 5_000)]
    conns_per_ip: usize,
    #[command(flatten)]
    output: common::Output,
    /// Exit with an error if a member failed, or ended with a wrong
    /// online count.
    #[arg(long)]
    strict: bool,
}

struct Cfg {
    target: Target,
    users: usize,
    over: Duration,
    join: Vec<u8>,
    user_prefix: String,
    timeout: Duration,
    conns_per_ip: usize,
}

struct Shared {
    epoch: Instant,
    joined: AtomicUsize,
    failed: AtomicUsize,
    /// Presence frames received by every member together.
    frames: AtomicU64,
    /// When the last presence frame arrived (µs since `epoch`).
    last_frame_us: AtomicU64,
    /// The first failures, in full.
    samples: Mutex<Vec<String>>,
}

impl Shared {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() < 5 {
            samples.push(what);
        }
    }
}

/// What one member saw.
#[derive(Default)]
struct Member {
    joined: bool,
    /// `join` sent → `joined` received, µs.
    join_us: u64,
    /// Presence frames: single changes (`event`) and batched deltas.
    singles: u64,
    deltas: u64,
    /// Payload bytes of those frames.
    bytes: u64,
    /// `online` of the last presence frame (or of `joined`).
    online: Option<u64>,
}

pub fn run(args: PresenceArgs) -> anyhow::Result<()> {
    common::block_on(run_async(args))
}

async fn run_async(args: PresenceArgs) -> anyhow::Result<()> {
    if args.users == 0 {
        anyhow::bail!("--users must be at least 1");
    }
    if !common::plain_name(&args.room) || !common::plain_name(&args.user_prefix) {
        anyhow::bail!("--room and --user-prefix: letters, digits, - and _ only");
    }
    let cfg = Arc::new(Cfg {
        target: Target::parse(&args.url)?,
        users: args.users,
        over: args.over,
        join: format!("{{\"type\":\"join\",\"room\":\"{}\"}}", args.room).into_bytes(),
        user_prefix: args.user_prefix.clone(),
        timeout: args.timeout,
        conns_per_ip: args.conns_per_ip,
    });
    let sh = Arc::new(Shared {
        epoch: Instant::now(),
        joined: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        frames: AtomicU64::new(0),
        last_frame_us: AtomicU64::new(0),
        samples: Mutex::new(Vec::new()),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let cpu = CpuProbe::start(&args.output.server_pid);
    let start = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..args.users)
        .map(|k| tokio::spawn(member(k, start, cfg.clone(), sh.clone(), stop_rx.clone())))
        .collect();

    // Progress, until everyone joined (or failed) and presence went quiet.
    let deadline = Instant::now() + args.over + args.timeout;
    let mut last_print = Instant::now();
    let mut storm_s = None;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let joined = sh.joined.load(Ordering::Relaxed);
        let failed = sh.failed.load(Ordering::Relaxed);
        let done = joined + failed >= args.users;
        if done && storm_s.is_none() {
            storm_s = Some(sh.epoch.elapsed().as_secs_f64());
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprintln!(
                "[{:5.1}s] joined {joined}/{}  failed {failed}  presence frames {}",
                sh.epoch.elapsed().as_secs_f64(),
                args.users,
                sh.frames.load(Ordering::Relaxed)
            );
        }
        let now_us = sh.epoch.elapsed().as_micros() as u64;
        let last = sh.last_frame_us.load(Ordering::Relaxed);
        if done && now_us.saturating_sub(last) >= args.quiet.as_micros() as u64 {
            break;
        }
        if Instant::now() > deadline {
            eprintln!(
                "storm not over after {:?}: stopping",
                args.over + args.timeout
            );
            break;
        }
    }
    let _ = stop_tx.send(true);
    let mut members = Vec::with_capacity(args.users);
    // Connections close only once every member stopped counting: the
    // server's presence leaves for the first to close are not the storm's.
    let mut open = Vec::with_capacity(args.users);
    for task in tasks {
        let (member, conn) = task.await.unwrap_or_default();
        members.push(member);
        open.extend(conn);
    }
    let cpu = cpu.finish();
    drop(open);

    // --- The figures --------------------------------------------------------
    let joined: Vec<&Member> = members.iter().filter(|m| m.joined).collect();
    let n = joined.len() as u64;
    let mut frames: Vec<u64> = joined.iter().map(|m| m.singles + m.deltas).collect();
    frames.sort_unstable();
    let at = |q: f64| -> u64 {
        if frames.is_empty() {
            0
        } else {
            frames[((frames.len() - 1) as f64 * q).round() as usize]
        }
    };
    let total: u64 = frames.iter().sum();
    let singles: u64 = joined.iter().map(|m| m.singles).sum();
    let deltas: u64 = joined.iter().map(|m| m.deltas).sum();
    let bytes: u64 = joined.iter().map(|m| m.bytes).sum();
    let max_bytes = joined.iter().map(|m| m.bytes).max().unwrap_or(0);
    let mean = |sum: u64| {
        if n == 0 {
            0.0
        } else {
            (sum as f64 / n as f64 * 10.0).round() / 10.0
        }
    };
    let unbatched = n * n.saturating_sub(1) / 2;
    let ratio = if total == 0 {
        None
    } else {
        Some((unbatched as f64 / total as f64 * 10.0).round() / 10.0)
    };
    let wrong_online = joined.iter().filter(|m| m.online != Some(n)).count();
    let mut join_hist: Histogram<u64> = common::latency_histogram();
    for m in &joined {
        let _ = join_hist.record(m.join_us.max(1));
    }
    let failed = sh.failed.load(Ordering::Relaxed);
    let samples = sh.samples.lock().unwrap_or_else(|e| e.into_inner()).clone();

    println!(
        "presence: {n} of {} users joined one room over {:?} ({failed} failed)",
        args.users, args.over
    );
    println!(
        "  presence frames per member: max {}  p99 {}  p50 {}  mean {}",
        at(1.0),
        at(0.99),
        at(0.5),
        mean(total)
    );
    println!(
        "  total: {total} frames ({singles} single changes, {deltas} deltas), {bytes} bytes; \
         every join to every member would be {unbatched} (x{})",
        ratio.map_or("n/a".into(), |r| r.to_string())
    );
    println!("  bytes per member: mean {}  max {max_bytes}", mean(bytes));
    println!("  join → joined (µs): {}", common::latency_line(&join_hist));
    println!("  members whose last online count is not {n}: {wrong_online}");
    println!("  cpu: {}", cpu.line());
    for sample in &samples {
        println!("  failure: {sample}");
    }

    let result = serde_json::json!({
        "scenario": "presence",
        "users": args.users,
        "over_s": args.over.as_secs_f64(),
        "quiet_s": args.quiet.as_secs_f64(),
        "joined": n,
        "failed": failed,
        "storm_s": storm_s.map(|s| (s * 100.0).round() / 100.0),
        "frames_per_member": {
            "max": at(1.0),
            "p99": at(0.99),
            "p50": at(0.5),
            "mean": mean(total),
        },
        "bytes_per_member": { "mean": mean(bytes), "max": max_bytes },
        "total_frames": total,
        "single_frames": singles,
        "delta_frames": deltas,
        "total_bytes": bytes,
        "unbatched_frames": unbatched,
        "ratio_vs_unbatched": ratio,
        "wrong_online": wrong_online,
        "join_latency_us": common::latency_json(&join_hist),
        "cpu_percent": {
            "client": cpu.client,
            "server": cpu.server,
            "other": cpu.other,
        },
        "failure_samples": samples,
    });
    args.output.emit(result)?;
    if args.strict && (failed > 0 || wrong_online > 0 || n < args.users as u64) {
        anyhow::bail!("{failed} member(s) failed, {wrong_online} ended with a wrong online count");
    }
    Ok(())
}

/// One member: waits for its start, connects, joins, counts presence
/// frames until told to stop. Returns the connection still open.
async fn member(
    k: usize,
    start: tokio::time::Instant,
    cfg: Arc<Cfg>,
    sh: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> (Member, Option<Conn>) {
    let mut seen = Member::default();
    let offset = cfg.over.mul_f64(k as f64 / cfg.users as f64);
    tokio::time::sleep_until(start + offset).await;
    let source = cfg.target.source_for(k, cfg.conns_per_ip);
    let path = format!("/ws?user={}{k}", cfg.user_prefix);
    let (stream, leftover) =
        match timeout(cfg.timeout, wire::connect(&cfg.target, source, &path)).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(err)) => {
                sh.fail(format!("user {k}: {err:#}"));
                return (seen, None);
            }
            Err(_) => {
                sh.fail(format!("user {k}: connect timed out"));
                return (seen, None);
            }
        };
    let mut conn = Conn::new(stream, leftover, BUFFER, wire::mask_for(k));
    let sent = Instant::now();
    if let Err(err) = conn.send_text(&cfg.join).await {
        sh.fail(format!("user {k}: join: {err}"));
        return (seen, None);
    }
    let join_deadline = tokio::time::Instant::now() + cfg.timeout;
    loop {
        let read = tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = tokio::time::sleep_until(join_deadline), if !seen.joined => {
                sh.fail(format!("user {k}: no `joined` within {:?}", cfg.timeout));
                break;
            }
            read = conn.fill() => read,
        };
        if let Err(err) = read {
            sh.fail(format!("user {k}: {err}"));
            break;
        }
        let mut frames = 0;
        let handled = conn.frames(|payload| {
            if client::is(payload, b"presence") {
                frames += 1;
                seen.bytes += payload.len() as u64;
                if payload.windows(9).any(|w| w == b"\"joined\":") {
                    seen.deltas += 1;
                } else {
                    seen.singles += 1;
                }
                seen.online = common::field_u64(payload, b"\"online\":").or(seen.online);
            } else if client::is(payload, b"joined") && !seen.joined {
                seen.joined = true;
                seen.join_us = sent.elapsed().as_micros() as u64;
                seen.online = common::field_u64(payload, b"\"online\":");
                sh.joined.fetch_add(1, Ordering::Relaxed);
            } else if client::is(payload, b"error") {
                sh.fail(format!(
                    "user {k}: {}",
                    String::from_utf8_lossy(&payload[..payload.len().min(200)])
                ));
            }
        });
        if frames > 0 {
            sh.frames.fetch_add(frames, Ordering::Relaxed);
            sh.last_frame_us
                .fetch_max(sh.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        if let Err(err) = handled {
            sh.fail(format!("user {k}: {err}"));
            break;
        }
        // Pongs for the server's pings.
        if let Err(err) = conn.flush().await {
            sh.fail(format!("user {k}: {err}"));
            break;
        }
    }
    (seen, Some(conn))
}
