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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;

use super::client::{self, Conn};
use super::common::{self, HANDSHAKE_TIMEOUT};
use super::driver::{self, Gain, OnData, Problems, Run};
use super::wire::{self, Target};

/// With publishes in flight and no frame from the server for this long, the
/// publisher gives up (the server has stalled).
const STALL: Duration = Duration::from_secs(10);
/// Longest the run waits, after the window, for the last acks and messages.
const DRAIN: Duration = Duration::from_secs(10);
/// Setup time allowed per publisher, past the handshake timeout.
const SETUP_PER_CONN: Duration = Duration::from_millis(500);
/// Read buffer per publisher.
const BUFFER: usize = 64 * 1024;
/// Most publishes put into one write.
const MAX_BATCH: u64 = 256;

#[derive(clap::Args, Debug)]
pub struct PublishArgs {
    /// Server to measure: ws://HOST:PORT. Start Switchboard with
    /// `--rate-limit 0`, or the publishers are throttled and refused.
    /// Repeat it (or give a comma list) for the nodes of a cluster:
    /// publisher i connects to node i mod (number of URLs).
    #[arg(long, default_value = "ws://127.0.0.1:8080", value_delimiter = ',')]
    url: Vec<String>,
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
    #[command(flatten)]
    timing: driver::Timing,
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
    rooms: Box<[RoomCounters]>,
    /// Publishes written, all publishers (for the progress line).
    sent: AtomicU64,
}

impl Shared {
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
async fn join(run: &Run, idx: usize, room_json: &str) -> Result<(Conn, u64), String> {
    let (stream, leftover) = run
        .connect_node(run.node_for(idx), idx, &format!("/ws?user=p{idx}"))
        .await?;
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

/// One publisher: joins, publishes with up to `window` un-acked while the
/// window lasts, waits for the answers, then reads the room's messages
/// until the run stops. `None` if it never joined.
async fn publisher(run: Arc<Run>, sh: Arc<Shared>, cfg: Arc<Cfg>, idx: usize) -> Option<PubResult> {
    let room = idx % cfg.rooms;
    let mut res = PubResult::new(room, cfg.seconds);
    let joined = match serde_json::to_string(&format!("{}-{room}", cfg.room_prefix)) {
        Ok(room_json) => join(&run, idx, &room_json)
            .await
            .map(|(conn, seq)| (conn, seq, room_json)),
        Err(err) => Err(err.to_string()),
    };
    let (mut conn, joined_seq, room_json) = match joined {
        Ok(joined) => joined,
        Err(err) => {
            run.fail(format!("publisher {idx}: {err}"));
            return None;
        }
    };
    res.joined_seq = joined_seq;
    run.ready();
    let Some(window) = run.go().await else {
        return Some(res);
    };
    let (start, end) = (window.start, window.end);
    let counters = &sh.rooms[room];
    let prefix = format!("{{\"type\":\"publish\",\"room\":{room_json},\"body\":");
    let mut message = Vec::with_capacity(cfg.size + prefix.len() + 2);
    // Send times of the publishes in flight, oldest first.
    let mut in_flight = std::collections::VecDeque::with_capacity(cfg.window as usize);
    let mut drain_deadline = None;
    let outcome: Result<(), String> = loop {
        let now = run.now_us();
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
                let at = run.now_us();
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
    run.drained();
    if let Err(err) = outcome {
        res.ended = Some(format!("publisher {idx}: {err}"));
        return Some(res);
    }
    // Keep reading the room's messages until everyone is done.
    let end = conn
        .read_until(
            run.stopped(),
            &mut OnData(|payload: &[u8]| {
                if payload.starts_with(b"{\"type\":\"message\"") {
                    res.messages += 1;
                    counters.messages.fetch_add(1, Ordering::Release);
                } else if payload.starts_with(b"{\"type\":\"error\"")
                    || payload.starts_with(b"{\"type\":\"ack\"")
                {
                    res.error(payload);
                }
            }),
        )
        .await;
    match end.unasked() {
        None => conn.close().await,
        Some(how) => res.ended = Some(format!("publisher {idx}: {how}")),
    }
    Some(res)
}

pub fn run(args: PublishArgs) -> anyhow::Result<()> {
    let rooms = args.rooms.unwrap_or(args.publishers);
    if args.publishers == 0 || rooms == 0 || rooms > args.publishers {
        bail!("--publishers must be at least 1 and --rooms between 1 and --publishers");
    }
    if args.window == 0 {
        bail!("--window must be at least 1");
    }
    if args.timing.duration.is_zero() {
        bail!("--duration must be more than 0");
    }
    let targets = wire::parse_urls(&args.url)?;
    common::block_on(drive(args, rooms, targets))
}

async fn drive(args: PublishArgs, rooms: usize, targets: Vec<Target>) -> anyhow::Result<()> {
    let url = wire::urls_label(&args.url);
    let seconds = args.timing.duration.as_secs_f64();
    let cfg = Arc::new(Cfg {
        rooms,
        room_prefix: args.room_prefix.clone(),
        window: args.window,
        size: args.size,
        seconds: seconds.ceil() as usize,
    });
    let sh = Arc::new(Shared {
        rooms: (0..rooms)
            .map(|r| RoomCounters {
                members: (r..args.publishers).step_by(rooms).count(),
                ..RoomCounters::default()
            })
            .collect(),
        sent: AtomicU64::new(0),
    });
    eprintln!(
        "publish {}: {} publisher(s) over {rooms} room(s), window {}, {}-byte bodies, {:?} warm-up + {:?} measured",
        url, args.publishers, args.window, args.size, args.timing.warmup, args.timing.duration
    );

    // Connections from one source address, 64 handshakes at a time.
    let run = Run::spread(targets, 64, 0);
    let pubs = run.spawn(0..args.publishers, |run, idx| {
        publisher(run, sh.clone(), cfg.clone(), idx)
    });
    run.wait_ready(args.publishers, "publishers", SETUP_PER_CONN)
        .await?;
    // Let the presence events of the joins pass.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let measuring = run.measure(&args.timing, &args.output.server_pid, {
        let sh = sh.clone();
        let (mut sent, mut acked) = (Gain::default(), Gain::default());
        move || {
            format!(
                "sent {}  acked {}",
                sent.show(sh.sent.load(Ordering::Relaxed)),
                acked.show(sh.acked()),
            )
        }
    });

    // Wait until every publisher has its answers, then until the room
    // messages they caused have arrived (or nothing moves for a second).
    run.wait_drained(args.publishers, &pubs).await;
    driver::drain(DRAIN, || sh.messages_missing()).await;
    let (results, cpu) = run.finish(measuring, pubs).await;
    let results: Vec<PubResult> = results.into_iter().flatten().collect();
    let failures = run.setup.failures();

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
        "url": url,
        "publishers": args.publishers,
        "rooms": rooms,
        "window": args.window,
        "size": args.size,
        "warmup_s": args.timing.warmup.as_secs_f64(),
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
    });

    println!(
        "publish {} ({} publisher(s), {rooms} room(s), window {}, {} B bodies, {seconds} s measured)",
        url, args.publishers, args.window, args.size
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
    driver::print_events(&ends, &error_samples);
    for failure in &failures {
        println!("  failure      {failure}");
    }
    driver::print_rate_limit_hint(&error_samples);
    let mut problems = Problems::default();
    problems.check(acked_in_window == 0, || {
        "no acks in the measured window".into()
    });
    problems.check(errors > 0, || format!("{errors} error events"));
    problems.check(missing_acks > 0, || {
        format!("{missing_acks} publishes never answered")
    });
    problems.check(seq_out_of_order > 0 || seq_gaps > 0, || {
        format!("seqs: {seq_out_of_order} out of order, {seq_gaps} missing or extra")
    });
    problems.check(messages_lost > 0, || {
        format!("{messages_lost} room messages lost")
    });
    problems.check(!ends.is_empty() || !failures.is_empty(), || {
        format!("connections ended early: {ends:?} {failures:?}")
    });
    driver::finish(
        &args.output,
        result,
        Some(cpu),
        args.strict,
        problems.into_vec(),
    )
}
