//! `switchboard-bench publish`: what the write pipeline sustains.
//!
//! N publisher connections, each joined to one of R rooms (publisher `i`
//! joins `ROOM-(i mod R)`), each keeping up to W publishes un-acked. There
//! are no subscribers: with R = N every publisher is alone in its room and a
//! publish costs its commit and its ack; with fewer rooms the publishers of
//! a room also receive each other's messages. Switchboard acknowledges a
//! publish only once it is committed to the store, so with W = 1 the ack
//! latency is the commit latency, and with a larger W the writer can group
//! many publishes into one transaction.
//!
//! Counts acks received in the measured window (per second, and per
//! second of the window, to show stalls) and the latency of each: the time
//! from writing the publish to reading its ack. Acks are matched to
//! publishes in order (a connection's publishes are acknowledged in the
//! order they were sent); the seqs they carry are checked: increasing per
//! connection, and gapless per room.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::duration::parse as parse_duration;
use anyhow::bail;
use hdrhistogram::Histogram;
use tokio::sync::{watch, Semaphore};

use super::client::{self, Conn};
use super::common::{self, Window, HANDSHAKE_TIMEOUT};
use super::wire::{self, Target};

/// With publishes in flight and no frame from the server for this long, the
/// publisher gives up (the server has stalled).
const STALL: Duration = Duration::from_secs(10);
/// Longest the run waits, after the window, for the last acks and messages.
const DRAIN: Duration = Duration::from_secs(10);
/// Read buffer per publisher.
const BUFFER: usize = 64 * 1024;
/// Most publishes put into one write.
const MAX_BATCH: u64 = 256;

#[derive(clap::Args, Debug)]
pub struct PublishArgs {
    /// Server to measure: ws://HOST:PORT. Start Switchboard with
    /// `--rate-limit 0`, or the publishers are throttled and refused.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    url: String,
    /// Publisher connections (users p0, p1, …).
    #[arg(long, default_value_t = 16)]
    publishers: usize,
    /// Rooms the publishers are spread over (publisher i joins room
    /// i mod R). Defaults to --publishers: no two publishers share a room.
    #[arg(long)]
    rooms: Option<usize>,
    /// Most publishes per publisher without an ack yet. 1 = strictly one at
    /// a time (ack latency is the commit latency).
    #[arg(long, default_value_t = 64)]
    window: u64,
    /// Measured time, after the warm-up. Units: ms, s, m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Time publishing before measuring starts. Units: ms, s, m.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Bytes of each message body, a JSON object {"t":µs,"pad":"xx…"}.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Room names are PREFIX-0, PREFIX-1, …
    #[arg(long, default_value = "pub")]
    room_prefix: String,
    #[command(flatten)]
    output: common::Output,
    /// Exit with an error on any `error` event, missing ack, seq out of
    /// order, lost room message or dropped connection (smoke tests; timing
    /// is never judged).
    #[arg(long)]
    strict: bool,
}

/// What the publishers of one room share.
#[derive(Default)]
struct RoomCounters {
    /// Publishers in the room.
    members: usize,
    /// Acks received, all of the room's publishers.
    acked: AtomicU64,
    /// `message` events received, all of the room's publishers.
    messages: AtomicU64,
}

struct Shared {
    epoch: Instant,
    /// Measured window, µs since `epoch` (set before the go signal).
    window_start: AtomicU64,
    window_end: AtomicU64,
    rooms: Box<[RoomCounters]>,
    /// Publishers joined and waiting for the go signal.
    ready: AtomicUsize,
    /// Publishes written, all publishers (for the progress line).
    sent: AtomicU64,
    /// Publishers that have had every publish answered (or given up).
    drained: AtomicUsize,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn acked(&self) -> u64 {
        self.rooms
            .iter()
            .map(|r| r.acked.load(Ordering::Relaxed))
            .sum()
    }

    /// Room messages still on their way: each ack in a room means a message
    /// to each of the room's other publishers.
    fn messages_missing(&self) -> u64 {
        self.rooms
            .iter()
            .map(|r| {
                let expected = r.acked.load(Ordering::Acquire) * (r.members as u64 - 1);
                expected.saturating_sub(r.messages.load(Ordering::Acquire))
            })
            .sum()
    }
}

struct Cfg {
    target: Target,
    rooms: usize,
    room_prefix: String,
    window: u64,
    size: usize,
    seconds: usize,
}

struct PubResult {
    room: usize,
    /// The room's seq when this publisher joined.
    joined_seq: u64,
    sent: u64,
    acked: u64,
    /// Acks received in the measured window.
    acked_in_window: u64,
    /// Acks per second of the window.
    per_second: Vec<u64>,
    /// Latency of the acks in the window, µs.
    latency: Histogram<u64>,
    /// Highest seq acknowledged.
    last_seq: u64,
    /// Acks whose seq was not above the previous one.
    seq_out_of_order: u64,
    /// `message` events from the room's other publishers.
    messages: u64,
    errors: u64,
    error_samples: Vec<String>,
    /// How the connection ended early, if it did.
    ended: Option<String>,
}

impl PubResult {
    fn new(room: usize, seconds: usize) -> PubResult {
        PubResult {
            room,
            joined_seq: 0,
            sent: 0,
            acked: 0,
            acked_in_window: 0,
            per_second: vec![0; seconds],
            latency: common::latency_histogram(),
            last_seq: 0,
            seq_out_of_order: 0,
            messages: 0,
            errors: 0,
            error_samples: Vec::new(),
            ended: None,
        }
    }

    fn error(&mut self, payload: &[u8]) {
        self.errors += 1;
        if self.error_samples.len() < 3 {
            self.error_samples
                .push(String::from_utf8_lossy(payload).into_owned());
        }
    }
}

/// Connects as `p{idx}` and joins the room; returns the room's seq.
async fn join(
    cfg: &Cfg,
    idx: usize,
    room_json: &str,
    gate: &Semaphore,
) -> Result<(Conn, u64), String> {
    let (stream, leftover) =
        common::connect(&cfg.target, None, &format!("/ws?user=p{idx}"), gate).await?;
    let mut conn = Conn::new(stream, leftover, BUFFER, wire::mask_for(idx));
    let join = format!("{{\"type\":\"join\",\"room\":{room_json}}}");
    conn.send_text(join.as_bytes())
        .await
        .map_err(|err| format!("sending join: {err}"))?;
    let seq = conn
        .wait_for(HANDSHAKE_TIMEOUT, |payload| {
            if client::is(payload, b"joined") {
                Some(common::field_u64(payload, b"\"seq\":").ok_or("joined without seq".into()))
            } else if client::is(payload, b"error") {
                let refusal = String::from_utf8_lossy(payload);
                Some(Err(format!("join refused: {refusal}")))
            } else {
                None
            }
        })
        .await
        .map_err(|err| format!("join not answered: {err}"))??;
    Ok((conn, seq))
}

async fn publisher(
    sh: Arc<Shared>,
    cfg: Arc<Cfg>,
    idx: usize,
    gate: Arc<Semaphore>,
    mut go: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> Result<PubResult, String> {
    let room = idx % cfg.rooms;
    let mut res = PubResult::new(room, cfg.seconds);
    let room_json =
        serde_json::to_string(&format!("{}-{room}", cfg.room_prefix)).map_err(|e| e.to_string())?;
    let (mut conn, joined_seq) = join(&cfg, idx, &room_json, &gate)
        .await
        .map_err(|err| format!("publisher {idx}: {err}"))?;
    res.joined_seq = joined_seq;
    sh.ready.fetch_add(1, Ordering::SeqCst);
    if go.wait_for(|go| *go).await.is_err() {
        return Ok(res);
    }
    let counters = &sh.rooms[room];
    let start = sh.window_start.load(Ordering::Acquire);
    let end = sh.window_end.load(Ordering::Acquire);
    let prefix = format!("{{\"type\":\"publish\",\"room\":{room_json},\"body\":");
    let mut message = Vec::with_capacity(cfg.size + prefix.len() + 2);
    // Send times of the publishes in flight, oldest first.
    let mut in_flight = std::collections::VecDeque::with_capacity(cfg.window as usize);
    let mut drain_deadline = None;
    let outcome: Result<(), String> = loop {
        let now = sh.now_us();
        let room_free = cfg.window - in_flight.len() as u64;
        if now < end && room_free > 0 {
            for _ in 0..room_free.min(MAX_BATCH) {
                message.clear();
                message.extend_from_slice(prefix.as_bytes());
                common::write_body(&mut message, now, None, cfg.size);
                message.push(b'}');
                conn.push_text(&message);
                in_flight.push_back(now);
            }
            if let Err(err) = conn.flush().await {
                break Err(err);
            }
            let n = in_flight.len() as u64 - (cfg.window - room_free);
            res.sent += n;
            sh.sent.fetch_add(n, Ordering::Relaxed);
        } else if now >= end {
            if in_flight.is_empty() {
                break Ok(());
            }
            let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN);
            if Instant::now() >= deadline {
                break Err(format!("{} publishes never answered", in_flight.len()));
            }
        }
        let (acked_before, messages_before) = (res.acked, res.messages);
        let read = conn
            .read(STALL, |payload| {
                if payload.starts_with(b"{\"type\":\"message\"") {
                    res.messages += 1;
                    return;
                }
                let is_ack = payload.starts_with(b"{\"type\":\"ack\"");
                let is_error = payload.starts_with(b"{\"type\":\"error\"");
                if !(is_ack || is_error) {
                    return; // presence and the like
                }
                // Either answers the oldest publish in flight.
                let Some(sent_at) = in_flight.pop_front() else {
                    res.error(payload);
                    return;
                };
                if is_error {
                    res.error(payload);
                    return;
                }
                let at = sh.now_us();
                res.acked += 1;
                if (start..end).contains(&at) {
                    res.acked_in_window += 1;
                    res.latency
                        .saturating_record(at.saturating_sub(sent_at).max(1));
                    let second = ((at - start) / 1_000_000) as usize;
                    if let Some(count) = res.per_second.get_mut(second) {
                        *count += 1;
                    }
                }
                match common::field_u64(payload, b"\"seq\":") {
                    Some(seq) if seq > res.last_seq => res.last_seq = seq,
                    _ => res.seq_out_of_order += 1,
                }
            })
            .await;
        counters
            .acked
            .fetch_add(res.acked - acked_before, Ordering::Release);
        counters
            .messages
            .fetch_add(res.messages - messages_before, Ordering::Release);
        if let Err(err) = read {
            break Err(err);
        }
    };
    sh.drained.fetch_add(1, Ordering::SeqCst);
    if let Err(err) = outcome {
        res.ended = Some(format!("publisher {idx}: {err}"));
        return Ok(res);
    }
    // Keep reading the room's messages until everyone is done.
    loop {
        let messages_before = res.messages;
        let read = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            read = conn.read(DRAIN + STALL, |payload| {
                if payload.starts_with(b"{\"type\":\"message\"") {
                    res.messages += 1;
                } else if payload.starts_with(b"{\"type\":\"error\"")
                    || payload.starts_with(b"{\"type\":\"ack\"")
                {
                    res.error(payload);
                }
            }) => read,
        };
        counters
            .messages
            .fetch_add(res.messages - messages_before, Ordering::Release);
        if let Err(err) = read {
            res.ended = Some(format!("publisher {idx}: {err}"));
            return Ok(res);
        }
    }
    conn.close().await;
    Ok(res)
}

pub fn run(args: PublishArgs) -> anyhow::Result<()> {
    let rooms = args.rooms.unwrap_or(args.publishers);
    if args.publishers == 0 || rooms == 0 || rooms > args.publishers {
        bail!("--publishers must be at least 1 and --rooms between 1 and --publishers");
    }
    if args.window == 0 {
        bail!("--window must be at least 1");
    }
    if args.duration.is_zero() {
        bail!("--duration must be more than 0");
    }
    let target = Target::parse(&args.url)?;
    common::block_on(drive(args, rooms, target))
}

async fn drive(args: PublishArgs, rooms: usize, target: Target) -> anyhow::Result<()> {
    let seconds = args.duration.as_secs_f64();
    let cfg = Arc::new(Cfg {
        target,
        rooms,
        room_prefix: args.room_prefix.clone(),
        window: args.window,
        size: args.size,
        seconds: seconds.ceil() as usize,
    });
    let sh = Arc::new(Shared {
        epoch: Instant::now(),
        window_start: AtomicU64::new(u64::MAX),
        window_end: AtomicU64::new(u64::MAX),
        rooms: (0..rooms)
            .map(|r| RoomCounters {
                members: (r..args.publishers).step_by(rooms).count(),
                ..RoomCounters::default()
            })
            .collect(),
        ready: AtomicUsize::new(0),
        sent: AtomicU64::new(0),
        drained: AtomicUsize::new(0),
    });
    eprintln!(
        "publish {}: {} publisher(s) over {rooms} room(s), window {}, {}-byte bodies, {:?} warm-up + {:?} measured",
        args.url, args.publishers, args.window, args.size, args.warmup, args.duration
    );

    let gate = Arc::new(Semaphore::new(64));
    let (go_tx, go_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut pubs: Vec<_> = (0..args.publishers)
        .map(|idx| {
            tokio::spawn(publisher(
                sh.clone(),
                cfg.clone(),
                idx,
                gate.clone(),
                go_rx.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    // Wait for every publisher to have joined (or for one to fail).
    let setup_deadline = Instant::now() + HANDSHAKE_TIMEOUT * 2;
    while sh.ready.load(Ordering::SeqCst) < args.publishers {
        if let Some(at) = pubs.iter().position(|p| p.is_finished()) {
            let failed = pubs.swap_remove(at).await;
            match failed {
                Ok(Err(err)) => bail!("setting up: {err}"),
                _ => bail!("setting up: a publisher stopped early"),
            }
        }
        if Instant::now() > setup_deadline {
            bail!(
                "timed out setting up: {} of {} publishers joined",
                sh.ready.load(Ordering::SeqCst),
                args.publishers
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let the presence events of the joins pass.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let window = Window::open(sh.epoch, args.warmup, args.duration);
    let (start, end) = (window.start, window.end);
    sh.window_start.store(start, Ordering::SeqCst);
    sh.window_end.store(end, Ordering::SeqCst);
    let cpu_probe = window.spawn_cpu_probe(args.output.server_pid);
    let _ = go_tx.send(true);
    let ticker = window.spawn_progress({
        let sh = sh.clone();
        let (mut last_sent, mut last_acked) = (0u64, 0u64);
        move || {
            let sent = sh.sent.load(Ordering::Relaxed);
            let acked = sh.acked();
            let line = format!(
                "sent {sent} (+{}/s)  acked {acked} (+{}/s)",
                sent.saturating_sub(last_sent),
                acked.saturating_sub(last_acked),
            );
            last_sent = sent;
            last_acked = acked;
            line
        }
    });

    // Wait until every publisher has its answers, then until the room
    // messages they caused have arrived (or nothing moves for a second).
    while sh.drained.load(Ordering::SeqCst) < args.publishers
        && !pubs.iter().all(|p| p.is_finished())
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_deadline = Instant::now() + DRAIN;
    let mut last = (sh.messages_missing(), Instant::now());
    while last.0 > 0 && Instant::now() < drain_deadline && last.1.elapsed() < Duration::from_secs(1)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let missing = sh.messages_missing();
        if missing != last.0 {
            last = (missing, Instant::now());
        }
    }
    let _ = stop_tx.send(true);
    ticker.abort();
    let mut results = Vec::with_capacity(pubs.len());
    let mut failures = Vec::new();
    for handle in pubs {
        match handle.await {
            Ok(Ok(result)) => results.push(result),
            Ok(Err(err)) => failures.push(err),
            Err(err) => failures.push(format!("publisher task: {err}")),
        }
    }
    let cpu = cpu_probe.await.unwrap_or_default();

    // Results.
    let mut latency = common::latency_histogram();
    let mut per_second = vec![0u64; cfg.seconds];
    let mut ends: BTreeMap<String, u64> = BTreeMap::new();
    let mut error_samples = Vec::new();
    for r in &results {
        latency.add(&r.latency).ok();
        for (total, n) in per_second.iter_mut().zip(&r.per_second) {
            *total += n;
        }
        if let Some(how) = &r.ended {
            // "publisher 3: close 1008 …" → counted by what happened.
            let what = how.split_once(": ").map_or(how.as_str(), |(_, w)| w);
            *ends.entry(what.to_string()).or_default() += 1;
        }
        for sample in &r.error_samples {
            if error_samples.len() < 5 {
                error_samples.push(sample.clone());
            }
        }
    }
    let sum = |f: fn(&PubResult) -> u64| results.iter().map(f).sum::<u64>();
    let acked_in_window = sum(|r| r.acked_in_window);
    let sent = sum(|r| r.sent);
    let acked = sum(|r| r.acked);
    let errors = sum(|r| r.errors);
    let missing_acks = sent.saturating_sub(acked + errors);
    let seq_out_of_order = sum(|r| r.seq_out_of_order);
    // Per room: every seq from the join on must have been acked to one of
    // its publishers, exactly once.
    let mut seq_gaps = 0u64;
    for room in 0..rooms {
        let members: Vec<&PubResult> = results.iter().filter(|r| r.room == room).collect();
        let Some(base) = members.iter().map(|r| r.joined_seq).min() else {
            continue;
        };
        let top = members.iter().map(|r| r.last_seq).max().unwrap_or(base);
        let acks: u64 = members.iter().map(|r| r.acked).sum();
        seq_gaps += (top.saturating_sub(base)).abs_diff(acks);
    }
    let messages: u64 = sum(|r| r.messages);
    let messages_lost = sh.messages_missing();
    // Seconds whose acks are all in the window (a fractional last second
    // would look like a slump).
    let whole = per_second.len().min(seconds.floor() as usize).max(1);
    let slowest_second = per_second[..whole.min(per_second.len())]
        .iter()
        .copied()
        .min()
        .unwrap_or(0);
    let result = serde_json::json!({
        "scenario": "publish",
        "url": args.url,
        "publishers": args.publishers,
        "rooms": rooms,
        "window": args.window,
        "size": args.size,
        "warmup_s": args.warmup.as_secs_f64(),
        "duration_s": seconds,
        "acked": acked_in_window,
        "acks_per_sec": (acked_in_window as f64 / seconds).round(),
        "per_second": per_second,
        "slowest_second": slowest_second,
        "latency_us": common::latency_json(&latency),
        "sent_total": sent,
        "acked_total": acked,
        "missing_acks": missing_acks,
        "seq_out_of_order": seq_out_of_order,
        "seq_gaps": seq_gaps,
        "room_messages_received": messages,
        "room_messages_lost": messages_lost,
        "server_errors": errors,
        "server_error_samples": error_samples,
        "connection_ends": ends,
        "setup_failures": failures,
        "client_cpu_pct": cpu.client,
        "server_cpu_pct": cpu.server,
        "other_cpu_pct": cpu.other,
    });

    println!(
        "publish {} ({} publisher(s), {rooms} room(s), window {}, {} B bodies, {seconds} s measured)",
        args.url, args.publishers, args.window, args.size
    );
    println!(
        "  acked        {acked_in_window} ({:.0}/s; slowest second {slowest_second})",
        acked_in_window as f64 / seconds
    );
    println!("  ack latency  µs {}", common::latency_line(&latency));
    println!("  cpu          {}", cpu.line());
    println!(
        "  integrity    sent {sent}, acked {acked}, errors {errors}, missing acks {missing_acks}, \
         seqs out of order {seq_out_of_order}, seq gaps {seq_gaps}, room messages {messages} ({messages_lost} lost)"
    );
    for (how, count) in &ends {
        println!("  ended early  {count} × {how}");
    }
    for sample in &error_samples {
        println!("  server error {sample}");
    }
    for failure in &failures {
        println!("  failure      {failure}");
    }
    if error_samples.iter().any(|e| e.contains("rate_limited")) {
        println!("  hint         start the server with --rate-limit 0 to measure it");
    }
    args.output.emit(result)?;

    if args.strict {
        let mut problems = Vec::new();
        if acked_in_window == 0 {
            problems.push("no acks in the measured window".to_string());
        }
        if errors > 0 {
            problems.push(format!("{errors} error events"));
        }
        if missing_acks > 0 {
            problems.push(format!("{missing_acks} publishes never answered"));
        }
        if seq_out_of_order > 0 || seq_gaps > 0 {
            problems.push(format!(
                "seqs: {seq_out_of_order} out of order, {seq_gaps} missing or extra"
            ));
        }
        if messages_lost > 0 {
            problems.push(format!("{messages_lost} room messages lost"));
        }
        if !ends.is_empty() || !failures.is_empty() {
            problems.push(format!("connections ended early: {ends:?} {failures:?}"));
        }
        if !problems.is_empty() {
            bail!("--strict: {}", problems.join("; "));
        }
    }
    Ok(())
}
