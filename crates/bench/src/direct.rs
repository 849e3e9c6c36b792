//! `switchboard-bench direct`: direct messages between pairs of users.
//!
//! N pairs of users (`PREFIX{i}a` and `PREFIX{i}b`, one connection each,
//! device `bench`); each connection `send`s direct messages to its partner,
//! flat out with up to W sends un-acked, or at `--rate` per connection (the
//! window still caps the un-acked sends). Every body carries its send time
//! (µs) and a tag of this run.
//!
//! Counted at the receivers: the partner's `direct` events (a user with one
//! connection gets no copies of its own sends; copies and directs from
//! anyone else are counted apart). Acks are matched to sends in order. A
//! direct the partner had acked but that never arrived by the end (after a
//! drain wait) is lost; one whose inbox seq is not above the last one is a
//! duplicate. Directs from an earlier run (the offline inbox delivered on
//! connect, which a run ends by confirming with `received`) are told apart
//! by the run tag and only counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use tokio::time::timeout;

use super::client::{self, Conn};
use super::common::{self, HANDSHAKE_TIMEOUT};
use super::driver::{self, Gain, OnData, Problems, Run};
use super::wire::{self, Target};

/// With sends in flight and no frame from the server for this long, the
/// connection gives up (the server has stalled).
const STALL: Duration = Duration::from_secs(10);
/// Longest the run waits, after the window, for the last acks and directs.
const DRAIN: Duration = Duration::from_secs(10);
/// Read buffer per connection.
const BUFFER: usize = 16 * 1024;
/// Most sends put into one write.
const MAX_BATCH: u64 = 64;
/// Latency samples a connection keeps before adding them to the histogram.
const SAMPLE_BATCH: usize = 256;

#[derive(clap::Args, Debug)]
pub struct DirectArgs {
    /// Server to measure: ws://HOST:PORT. Start Switchboard with
    /// `--rate-limit 0` (and `--store memory` to leave the disk out).
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    url: String,
    /// Pairs of users; each user has one connection (2 × N connections).
    #[arg(long, default_value_t = 1000)]
    pairs: usize,
    /// Most sends per connection without an ack yet.
    #[arg(long, default_value_t = 16)]
    window: u64,
    /// Direct messages per second per connection; 0 = flat out, paced only
    /// by the window.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[command(flatten)]
    timing: driver::Timing,
    /// Bytes of each message body, a JSON object {"t":µs,"r":run,"pad":"xx…"}.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// User names are PREFIX{i}a and PREFIX{i}b (letters, digits, - and _).
    #[arg(long, default_value = "d")]
    user_prefix: String,
    #[command(flatten)]
    dialing: driver::Dialing,
    #[command(flatten)]
    output: common::Output,
    /// Exit with an error on any lost or duplicated direct, `error` event,
    /// unanswered send or dropped connection (smoke tests; timing is never
    /// judged).
    #[arg(long)]
    strict: bool,
}

struct Cfg {
    prefix: String,
    window: u64,
    rate: f64,
    size: usize,
    /// Tags this run's bodies: `"r":RUN,`.
    run_tag: String,
    run: u64,
}

impl Cfg {
    fn user(&self, idx: usize) -> String {
        let side = if idx & 1 == 0 { 'a' } else { 'b' };
        format!("{}{}{side}", self.prefix, idx / 2)
    }
}

struct Shared {
    sent: AtomicU64,
    acked: AtomicU64,
    /// Directs of this run from the partner, duplicates excluded.
    delivered: AtomicU64,
    /// Deliveries per second of the measured window.
    per_second: Box<[AtomicU64]>,
    latency: Mutex<Histogram<u64>>,
    ack_latency: Mutex<Histogram<u64>>,
    events: common::Events,
}

impl Shared {
    fn record(hist: &Mutex<Histogram<u64>>, samples: &mut Vec<u64>) {
        if samples.is_empty() {
            return;
        }
        let mut hist = hist.lock().unwrap_or_else(|e| e.into_inner());
        for value in samples.drain(..) {
            hist.saturating_record(value.max(1));
        }
    }
}

#[derive(Default)]
struct ConnResult {
    /// Set up and in the run (connected, welcomed).
    joined: bool,
    sent: u64,
    acked: u64,
    acked_in_window: u64,
    /// `error` answers to sends.
    errors: u64,
    /// Sends never answered.
    unanswered: u64,
    /// Acks whose inbox seq was not above the previous ack's.
    ack_seq_out_of_order: u64,
    /// This run's directs from the partner (duplicates excluded).
    delivered: u64,
    delivered_in_window: u64,
    duplicates: u64,
    /// Inbox seqs skipped between two deliveries of this run.
    seq_gaps: u64,
    /// Directs from the partner of an earlier run (inbox backlog).
    stale: u64,
    /// Directs from anyone but the partner (copies of one's own sends).
    copies: u64,
    /// `reset` events (an inbox backlog beyond the replay limit).
    resets: u64,
    /// Highest inbox seq seen, confirmed with `received` at the end.
    max_seq: u64,
    /// Still connected when the run ended.
    alive: bool,
}

/// What a connection does with each text frame while sending.
struct Receiver<'a> {
    cfg: &'a Cfg,
    from_partner: &'a [u8],
    res: &'a mut ConnResult,
    in_flight: &'a mut VecDeque<u64>,
    samples: &'a mut Vec<u64>,
    ack_samples: &'a mut Vec<u64>,
    error_samples: Vec<String>,
    last_seq: u64,
    last_ack_seq: u64,
}

impl Receiver<'_> {
    /// `now` is when the frame was read; `measuring` whether that is in the
    /// window.
    fn on_text(&mut self, payload: &[u8], now: u64, measuring: bool) {
        if payload.starts_with(self.from_partner) {
            let seq = common::field_u64(payload, b"\"seq\":");
            if let Some(seq) = seq {
                self.res.max_seq = self.res.max_seq.max(seq);
            }
            let tagged = payload
                .windows(self.cfg.run_tag.len())
                .any(|w| w == self.cfg.run_tag.as_bytes());
            if !tagged {
                self.res.stale += 1;
                return;
            }
            match seq {
                Some(seq) if seq > self.last_seq => {
                    if self.last_seq != 0 && seq != self.last_seq + 1 {
                        self.res.seq_gaps += seq - self.last_seq - 1;
                    }
                    self.last_seq = seq;
                    self.res.delivered += 1;
                    if measuring {
                        self.res.delivered_in_window += 1;
                        if let Some(t) = common::stamp(payload).filter(|&t| t <= now) {
                            self.samples.push(now - t);
                        }
                    }
                }
                Some(_) => self.res.duplicates += 1,
                None => self.error(payload),
            }
        } else if client::is(payload, b"ack") {
            let Some(sent_at) = self.in_flight.pop_front() else {
                self.error(payload);
                return;
            };
            self.res.acked += 1;
            if measuring {
                self.res.acked_in_window += 1;
                self.ack_samples.push(now.saturating_sub(sent_at));
            }
            match common::field_u64(payload, b"\"seq\":") {
                Some(seq) if seq > self.last_ack_seq => self.last_ack_seq = seq,
                _ => self.res.ack_seq_out_of_order += 1,
            }
        } else if client::is(payload, b"error") {
            // A refused send is answered too: it frees its slot.
            self.in_flight.pop_front();
            self.error(payload);
        } else if client::is(payload, b"direct") {
            self.res.copies += 1;
        } else if client::is(payload, b"reset") {
            self.res.resets += 1;
        }
    }

    fn error(&mut self, payload: &[u8]) {
        self.res.errors += 1;
        if self.error_samples.len() < 3 {
            self.error_samples
                .push(String::from_utf8_lossy(payload).into_owned());
        }
    }
}

async fn connection(run: Arc<Run>, sh: Arc<Shared>, cfg: Arc<Cfg>, idx: usize) -> ConnResult {
    let mut res = ConnResult::default();
    let me = cfg.user(idx);
    let partner = cfg.user(idx ^ 1);
    let path = format!("/ws?user={me}&device=bench");
    let mut conn = match run.connect(idx, &path).await {
        Ok((stream, leftover)) => Conn::new(stream, leftover, BUFFER, wire::mask_for(idx)),
        Err(err) => {
            run.fail(format!("{me}: {err}"));
            return res;
        }
    };
    if let Err(err) = conn
        .wait_for(HANDSHAKE_TIMEOUT, |p| {
            client::is(p, b"welcome").then_some(())
        })
        .await
    {
        run.fail(format!("{me}: waiting for welcome: {err}"));
        return res;
    }
    res.joined = true;
    run.ready();
    let Some(window) = run.go().await else {
        return res;
    };
    let (start, end) = (window.start, window.end);
    let prefix = format!("{{\"type\":\"send\",\"to\":\"{partner}\",\"body\":");
    let from_partner = format!("{{\"type\":\"direct\",\"from\":\"{partner}\",");
    let mut message = Vec::with_capacity(cfg.size + prefix.len() + 32);
    let mut in_flight = VecDeque::with_capacity(cfg.window as usize);
    let mut samples = Vec::with_capacity(SAMPLE_BATCH);
    let mut ack_samples = Vec::with_capacity(SAMPLE_BATCH);
    let mut rx = Receiver {
        cfg: &cfg,
        from_partner: from_partner.as_bytes(),
        res: &mut res,
        in_flight: &mut in_flight,
        samples: &mut samples,
        ack_samples: &mut ack_samples,
        error_samples: Vec::new(),
        last_seq: 0,
        last_ack_seq: 0,
    };
    let started = run.now_us();
    let mut drain_deadline = None;
    let mut pending = conn.has_buffered();
    let outcome: Result<(), String> = loop {
        let now = run.now_us();
        let mut next_due = None;
        if now < end {
            let mut n = (cfg.window - rx.in_flight.len() as u64).min(MAX_BATCH);
            if cfg.rate > 0.0 && n > 0 {
                let due = ((now - started) as f64 * cfg.rate / 1e6) as u64 + 1;
                n = n.min(due.saturating_sub(rx.res.sent));
                if n == 0 {
                    let at = started + (rx.res.sent as f64 * 1e6 / cfg.rate) as u64;
                    next_due = Some(at.min(end));
                }
            }
            for _ in 0..n {
                message.clear();
                message.extend_from_slice(prefix.as_bytes());
                common::write_body(&mut message, now, Some(cfg.run), cfg.size);
                message.push(b'}');
                conn.push_text(&message);
                rx.in_flight.push_back(now);
            }
            if n > 0 {
                if let Err(err) = conn.flush().await {
                    break Err(err);
                }
                rx.res.sent += n;
                sh.sent.fetch_add(n, Ordering::Relaxed);
            }
        } else {
            if rx.in_flight.is_empty() {
                break Ok(());
            }
            let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN);
            if Instant::now() >= deadline {
                break Err(format!("{} sends never answered", rx.in_flight.len()));
            }
        }
        if !pending {
            let read = match next_due {
                Some(at) => {
                    let nap = Duration::from_micros(at.saturating_sub(now));
                    match timeout(nap, conn.fill()).await {
                        Ok(read) => read,
                        Err(_) => continue,
                    }
                }
                None => match timeout(STALL, conn.fill()).await {
                    Ok(read) => read,
                    Err(_) => Err(format!("nothing from the server for {STALL:?}")),
                },
            };
            if let Err(err) = read {
                break Err(err);
            }
        }
        pending = false;
        let at = run.now_us();
        let measuring = at >= start && at < end;
        let (acked, delivered) = (rx.res.acked, rx.res.delivered);
        let window_before = rx.res.delivered_in_window;
        if let Err(err) = conn.frames(|p| rx.on_text(p, at, measuring)) {
            break Err(err);
        }
        sh.acked.fetch_add(rx.res.acked - acked, Ordering::Relaxed);
        sh.delivered
            .fetch_add(rx.res.delivered - delivered, Ordering::Release);
        if measuring && rx.res.delivered_in_window > window_before {
            let second = ((at - start) / 1_000_000) as usize;
            if let Some(count) = sh.per_second.get(second) {
                count.fetch_add(
                    rx.res.delivered_in_window - window_before,
                    Ordering::Relaxed,
                );
            }
        }
        if rx.samples.len() >= SAMPLE_BATCH {
            Shared::record(&sh.latency, rx.samples);
        }
        if rx.ack_samples.len() >= SAMPLE_BATCH {
            Shared::record(&sh.ack_latency, rx.ack_samples);
        }
        if let Err(err) = conn.flush().await {
            break Err(err);
        }
    };
    rx.res.unanswered = rx.in_flight.len() as u64;
    run.drained();
    // Keep receiving the partner's last directs until everyone is done.
    let outcome = match outcome {
        Ok(()) => {
            let end = conn
                .read_until(
                    run.stopped(),
                    &mut OnData(|p: &[u8]| {
                        let delivered = rx.res.delivered;
                        rx.on_text(p, 0, false);
                        sh.delivered
                            .fetch_add(rx.res.delivered - delivered, Ordering::Release);
                    }),
                )
                .await;
            end.unasked().map_or(Ok(()), Err)
        }
        Err(how) => Err(how),
    };
    Shared::record(&sh.latency, rx.samples);
    Shared::record(&sh.ack_latency, rx.ack_samples);
    sh.events.samples(rx.error_samples.drain(..));
    if let Err(how) = &outcome {
        sh.events.ended(how.clone());
    }
    if outcome.is_ok() {
        res.alive = true;
        // This device has everything up to here: the next run's
        // connection is not sent it again.
        if res.max_seq > 0 {
            let received = format!("{{\"type\":\"received\",\"upto\":{}}}", res.max_seq);
            conn.push_text(received.as_bytes());
        }
        conn.close().await;
    }
    res
}

pub fn run(args: DirectArgs) -> anyhow::Result<()> {
    if args.pairs == 0 || args.window == 0 {
        bail!("--pairs and --window must be at least 1");
    }
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        bail!("--rate must be a number >= 0");
    }
    if args.timing.duration.is_zero() {
        bail!("--duration must be more than 0");
    }
    if !common::plain_name(&args.user_prefix) {
        bail!("--user-prefix: letters, digits, - and _ only");
    }
    let target = Target::parse(&args.url)?;
    common::block_on(drive(args, target))
}

async fn drive(args: DirectArgs, target: Target) -> anyhow::Result<()> {
    let conns = args.pairs * 2;
    let seconds = args.timing.duration.as_secs_f64();
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let cfg = Arc::new(Cfg {
        prefix: args.user_prefix.clone(),
        window: args.window,
        rate: args.rate,
        size: args.size,
        run_tag: format!(",\"r\":{run},"),
        run,
    });
    let sh = Arc::new(Shared {
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        per_second: (0..seconds.ceil() as usize)
            .map(|_| AtomicU64::new(0))
            .collect(),
        latency: Mutex::new(common::latency_histogram()),
        ack_latency: Mutex::new(common::latency_histogram()),
        events: common::Events::default(),
    });
    let pace = if args.rate > 0.0 {
        format!("{} msg/s per connection", args.rate)
    } else {
        "flat out".to_string()
    };
    eprintln!(
        "direct {}: {} pairs ({conns} connections), {pace}, window {}, {}-byte bodies, {:?} warm-up + {:?} measured",
        args.url, args.pairs, args.window, args.size, args.timing.warmup, args.timing.duration
    );

    let run = Run::new(
        target,
        args.dialing.connect_concurrency,
        args.dialing.conns_per_ip,
    );
    let connect_started = Instant::now();
    let tasks = run.spawn(0..conns, |run, idx| {
        connection(run, sh.clone(), cfg.clone(), idx)
    });
    run.wait_ready(conns, "connections", Duration::from_millis(10))
        .await?;
    eprintln!(
        "connected {conns} in {:.1}s; sending",
        connect_started.elapsed().as_secs_f64()
    );

    let measuring = run.measure(&args.timing, &args.output.server_pid, {
        let sh = sh.clone();
        let (mut acked, mut delivered) = (Gain::default(), Gain::default());
        move || {
            format!(
                "sent {}  acked {}  delivered {}",
                sh.sent.load(Ordering::Relaxed),
                acked.show(sh.acked.load(Ordering::Relaxed)),
                delivered.show(sh.delivered.load(Ordering::Relaxed)),
            )
        }
    });

    // Wait until every connection has its answers, then until the directs
    // acked have arrived (or nothing moves for a second).
    run.wait_drained(conns, &tasks).await;
    driver::drain(DRAIN, || {
        sh.acked
            .load(Ordering::Acquire)
            .saturating_sub(sh.delivered.load(Ordering::Acquire))
    })
    .await;
    let (results, cpu) = run.finish(measuring, tasks).await;

    // Results.
    let sum = |f: fn(&ConnResult) -> u64| results.iter().map(f).sum::<u64>();
    let delivered_in_window = sum(|r| r.delivered_in_window);
    let acked_in_window = sum(|r| r.acked_in_window);
    let sent = sum(|r| r.sent);
    let acked = sum(|r| r.acked);
    let delivered = sum(|r| r.delivered);
    let errors = sum(|r| r.errors);
    let unanswered = sum(|r| r.unanswered);
    let duplicates = sum(|r| r.duplicates);
    let seq_gaps = sum(|r| r.seq_gaps);
    let ack_seq_out_of_order = sum(|r| r.ack_seq_out_of_order);
    let stale = sum(|r| r.stale);
    let copies = sum(|r| r.copies);
    let resets = sum(|r| r.resets);
    // Lost: acked to the sender, never delivered to its partner.
    let (mut lost, mut unacked_delivered) = (0u64, 0u64);
    for (idx, r) in results.iter().enumerate() {
        let partner_acked = results.get(idx ^ 1).map_or(0, |p| p.acked);
        lost += partner_acked.saturating_sub(r.delivered);
        unacked_delivered += r.delivered.saturating_sub(partner_acked);
    }
    let dropped = results.iter().filter(|r| r.joined && !r.alive).count();
    let per_second: Vec<u64> = sh
        .per_second
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let whole = per_second.len().min(seconds.floor() as usize).max(1);
    let slowest_second = per_second[..whole.min(per_second.len())]
        .iter()
        .copied()
        .min()
        .unwrap_or(0);
    let hist = sh.latency.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let ack_hist = sh
        .ack_latency
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let events = sh.events.take();
    let failures = run.setup.failures();
    let result = serde_json::json!({
        "scenario": "direct",
        "url": args.url,
        "pairs": args.pairs,
        "connections": conns,
        "window": args.window,
        "rate": args.rate,
        "size": args.size,
        "warmup_s": args.timing.warmup.as_secs_f64(),
        "duration_s": seconds,
        "delivered": delivered_in_window,
        "delivered_per_sec": (delivered_in_window as f64 / seconds).round(),
        "acked": acked_in_window,
        "acks_per_sec": (acked_in_window as f64 / seconds).round(),
        "per_second": per_second,
        "slowest_second": slowest_second,
        "latency_us": common::latency_json(&hist),
        "ack_latency_us": common::latency_json(&ack_hist),
        "sent_total": sent,
        "acked_total": acked,
        "delivered_total": delivered,
        "lost": lost,
        "duplicates": duplicates,
        "seq_gaps": seq_gaps,
        "unanswered": unanswered,
        "delivered_unacked": unacked_delivered,
        "ack_seq_out_of_order": ack_seq_out_of_order,
        "server_errors": errors,
        "server_error_samples": events.error_samples,
        "stale_directs": stale,
        "copies": copies,
        "resets": resets,
        "dropped_connections": dropped,
        "connection_ends": events.ends,
        "setup_failures": failures,
    });

    println!(
        "direct {} ({} pairs, {pace}, window {}, {} B bodies, {seconds} s measured)",
        args.url, args.pairs, args.window, args.size
    );
    println!(
        "  delivered    {delivered_in_window} ({:.0}/s; slowest second {slowest_second})",
        delivered_in_window as f64 / seconds
    );
    println!(
        "  acked        {acked_in_window} ({:.0}/s)",
        acked_in_window as f64 / seconds
    );
    println!("  latency µs   {}", common::latency_line(&hist));
    println!("  ack µs       {}", common::latency_line(&ack_hist));
    println!("  cpu          {}", cpu.line());
    println!(
        "  integrity    sent {sent}, acked {acked}, delivered {delivered}, lost {lost}, duplicates {duplicates}, \
         seq gaps {seq_gaps}, errors {errors}, unanswered {unanswered}, ack seqs out of order {ack_seq_out_of_order}"
    );
    if stale + copies + resets > 0 {
        println!(
            "  other        {stale} directs of an earlier run, {copies} copies, {resets} inbox resets"
        );
    }
    driver::print_events(&events.ends, &events.error_samples);
    driver::print_rate_limit_hint(&events.error_samples);
    let mut problems = Problems::default();
    problems.check(delivered_in_window == 0, || {
        "no directs delivered in the measured window".into()
    });
    problems.check(lost > 0 || duplicates > 0 || seq_gaps > 0, || {
        format!("{lost} lost, {duplicates} duplicated, {seq_gaps} inbox seqs skipped")
    });
    problems.check(errors > 0, || format!("{errors} error events"));
    problems.check(unanswered > 0 || ack_seq_out_of_order > 0, || {
        format!("{unanswered} sends never answered, {ack_seq_out_of_order} acks out of order")
    });
    problems.check(dropped > 0 || !events.ends.is_empty(), || {
        format!("{dropped} connections dropped: {:?}", events.ends)
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
    fn bodies_carry_the_stamp_and_the_run() {
        let mut body = Vec::new();
        common::write_body(&mut body, 1234, Some(99), 100);
        assert_eq!(body.len(), 100);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (value["t"].as_u64(), value["r"].as_u64()),
            (Some(1234), Some(99))
        );
        assert_eq!(common::stamp(&body), Some(1234));
    }

    #[test]
    fn receiver_counts_partner_directs_acks_and_the_rest() {
        let cfg = Cfg {
            prefix: "d".into(),
            window: 4,
            rate: 0.0,
            size: 60,
            run_tag: ",\"r\":7,".into(),
            run: 7,
        };
        assert_eq!(
            (cfg.user(0), cfg.user(1), cfg.user(5)),
            ("d0a".into(), "d0b".into(), "d2b".into())
        );
        let mut res = ConnResult::default();
        let mut in_flight: VecDeque<u64> = [100, 200].into_iter().collect();
        let (mut samples, mut ack_samples) = (Vec::new(), Vec::new());
        let mut rx = Receiver {
            cfg: &cfg,
            from_partner: br#"{"type":"direct","from":"d0b","#,
            res: &mut res,
            in_flight: &mut in_flight,
            samples: &mut samples,
            ack_samples: &mut ack_samples,
            error_samples: Vec::new(),
            last_seq: 0,
            last_ack_seq: 0,
        };
        let direct = |seq: u64, run: u64| {
            format!(
                r#"{{"type":"direct","from":"d0b","to":"d0a","seq":{seq},"gid":9,"ts":1,"body":{{"t":400,"r":{run},"pad":"x"}}}}"#
            )
        };
        for (seq, run) in [(3, 6), (4, 7), (5, 7), (5, 7), (7, 7)] {
            rx.on_text(direct(seq, run).as_bytes(), 1000, true);
        }
        rx.on_text(
            br#"{"type":"ack","to":"d0b","seq":1,"delivered":1,"stored":true}"#,
            1000,
            true,
        );
        rx.on_text(br#"{"type":"direct","from":"d0a","to":"d0b","seq":2,"gid":9,"ts":1,"body":{"t":1,"r":7,"pad":""}}"#, 1000, true);
        rx.on_text(
            br#"{"type":"error","code":"too_large","message":"x"}"#,
            1000,
            true,
        );
        assert!(rx.in_flight.is_empty());
        assert_eq!(rx.samples.as_slice(), &[600, 600, 600]);
        assert_eq!(rx.ack_samples.as_slice(), &[900]);
        assert_eq!(
            (res.stale, res.delivered, res.duplicates, res.seq_gaps),
            (1, 3, 1, 1)
        );
        assert_eq!(
            (res.acked, res.errors, res.copies, res.max_seq),
            (1, 1, 1, 7)
        );
    }
}
