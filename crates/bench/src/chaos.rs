//! `switchboard-bench chaos`: randomized clients against a real server, with
//! the protocol's guarantees checked throughout.
//!
//! N clients (users `PREFIX-c{i}`), each joined to two of K rooms, loop over
//! weighted random actions: publish (fresh id, or the previous id again to
//! the same room: a duplicate ack with the original seq is expected), a
//! direct to another client, history, presence, malformed commands (an
//! `error` is expected and the connection must stay usable), an abrupt
//! disconnect followed by a reconnect that resumes with `join … since`, and
//! pauses in reading (a slow reader; being closed as a slow consumer is
//! allowed, the client then reconnects and resumes). A bystander, a
//! well-behaved publisher and listener in a room of their own, publishes at
//! a fixed rate and times its round trips.
//!
//! Invariants (each violation counted by kind; `--strict` fails on any):
//! per (client, room) the seqs seen (messages, own acks, replays after a
//! resume) cover every seq from the first join on, each once per
//! connection and in increasing order, except what a `reset` skips; per
//! client the inbox seqs of directs likewise; a duplicate ack carries the
//! original seq; every acked (room, seq) is in history at the end, with the
//! body that was published; the bystander's listener gets every message
//! its publisher had acked; the server's RSS stays under `--max-rss`; and
//! the server answers `ping` at the end.
//!
//! Token expiry (`--jwt-secret`, the server's secret; `--jwt-leeway`, the
//! server's leeway): every connection, the bystander's and the end-of-run
//! checks' too, authenticates with an HS256 token for its user (`sub`,
//! `exp`) signed by the bench, in `?token=` or in a first `hello` (drawn
//! per connection), living a time drawn from `--token-ttl`. When a chaos
//! client's token comes due, between its random actions, it either renews
//! it (`hello` with a fresh token at 30–70 % of its life: a `welcome` for
//! the same user is expected and the connection carries on, nothing lost)
//! or, for 30 % of tokens, lets it lapse: it waits, reading, for the
//! `unauthorized` error and the close 4001 "token expired", which must come
//! no earlier than `exp` + leeway and at most 3 s after (the server counts
//! whole seconds), then reconnects with a fresh token and resumes with
//! `join … since` (the invariants above hold across it). A close for a
//! lapsing token that comes during another action, or for a token whose
//! renewal the client was too busy to send in time, is counted, not a
//! violation. Violations: a 4001 close before `exp` + leeway
//! (`expired_early`), no close 3 s after (`expiry_not_enforced`), a lapse
//! ended by another close (`expiry_wrong_close`), a close although the
//! renewal went out at least 1 s before `exp` + leeway (`renewal_ignored`),
//! a renewal not answered with `welcome` (`renewal_refused`). The drain
//! renews every token; the bystander renews in time and must never be
//! closed.
//!
//! The random choices come from `--seed` (printed): a client's sequence of
//! actions is a function of the seed and its index; what the server does
//! meanwhile (timing, interleaving) is not. The token choices (lifetimes,
//! renew or lapse, query or `hello`) come from streams of their own; when
//! they come due, among the actions, depends on the clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;

use super::client::{self, field_str, Conn};
use super::common::{self, field_u64, HANDSHAKE_TIMEOUT};
use super::driver::{self, End, Gain, OnData, Problems, Run};
use super::wire::{self, Target};

/// Read buffer per connection (it grows when a frame needs more).
const BUFFER: usize = 16 * 1024;
/// Longest a command waits for its reply.
const REPLY_WAIT: Duration = Duration::from_secs(10);
/// Longest the run waits after the window for every client to catch up.
const DRAIN: Duration = Duration::from_secs(15);
/// Rooms each client joins (of `--rooms`).
const ROOMS_PER_CLIENT: usize = 2;
/// A hole wider than this is counted at once rather than remembered seq by seq.
const MAX_HOLE: u64 = 100_000;
/// Violations kept in full for the report (all are counted).
const VIOLATION_SAMPLES: usize = 50;
/// An id longer than the protocol allows (128 bytes).
const OVERSIZED_ID: usize = 200;
/// History page size at the end-of-run check.
const HISTORY_PAGE: u64 = 100;
/// How often the server's RSS is read.
const RSS_EVERY: Duration = Duration::from_millis(250);

#[derive(clap::Args, Debug)]
pub struct ChaosArgs {
    /// Server to test: ws://127.0.0.x:PORT (loopback only: the test is
    /// hostile). Start Switchboard with `--rate-limit 0` or keep
    /// `--actions` under its rate limit.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    url: String,
    /// Chaos clients.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Rooms the clients are spread over (each client joins two).
    #[arg(long, default_value_t = 5)]
    rooms: usize,
    /// Seed of the random choices (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Mean actions per second per client.
    #[arg(long, default_value_t = 4.0)]
    actions: f64,
    /// Messages per second the bystander publishes.
    #[arg(long, default_value_t = 20.0)]
    bystander_rate: f64,
    /// Bound on the server's RSS in MiB (read from /proc/PID/status of
    /// --server-pid); passing it is a violation.
    #[arg(long)]
    max_rss: Option<u64>,
    #[command(flatten)]
    timing: driver::Timing,
    #[command(flatten)]
    dialing: driver::Dialing,
    #[command(flatten)]
    output: common::Output,
    /// Exit with an error on any violation (timing is never judged).
    #[arg(long)]
    strict: bool,
    /// Auth on: every connection presents an HS256 token for its user
    /// signed with SECRET (the server's --jwt-secret), and tokens are
    /// renewed with `hello` or left to expire.
    #[arg(long)]
    jwt_secret: Option<String>,
    /// Token lifetimes, drawn uniformly from LO..HI (one duration: fixed).
    /// With --jwt-secret.
    #[arg(long, default_value = "2s..6s", value_parser = parse_ttl)]
    token_ttl: TtlRange,
    /// The server's --jwt-leeway (whole seconds): a lapsed token's
    /// connection must be closed with 4001 from `exp` + this on, and
    /// within a few seconds after.
    #[arg(long, default_value = "1s", value_parser = parse_leeway)]
    jwt_leeway: Duration,
}

/// `--token-ttl`: the range token lifetimes are drawn from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TtlRange {
    lo: Duration,
    hi: Duration,
}

/// `2s..6s`, or one duration (`4s`) for a fixed lifetime; at least 1 s.
fn parse_ttl(text: &str) -> Result<TtlRange, String> {
    let (lo, hi) = match text.split_once("..") {
        Some((lo, hi)) => (crate::duration::parse(lo)?, crate::duration::parse(hi)?),
        None => {
            let ttl = crate::duration::parse(text)?;
            (ttl, ttl)
        }
    };
    if lo < Duration::from_secs(1) || hi < lo {
        return Err(format!(
            "token lifetimes `{text}`: LO..HI with 1s <= LO <= HI"
        ));
    }
    Ok(TtlRange { lo, hi })
}

/// Whole seconds, zero allowed (the server counts its leeway in seconds).
fn parse_leeway(text: &str) -> Result<Duration, String> {
    let number = text
        .trim()
        .trim_end_matches(|c: char| c.is_ascii_alphabetic());
    if number.parse::<f64>().is_ok_and(|v| v == 0.0) {
        return Ok(Duration::ZERO);
    }
    let leeway = crate::duration::parse(text)?;
    if leeway.subsec_nanos() != 0 {
        return Err(format!(
            "leeway `{text}`: whole seconds (the server ignores fractions)"
        ));
    }
    Ok(leeway)
}

// --- Randomness ----------------------------------------------------------------

/// SplitMix64: small, fast, and the same sequence for the same seed.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Rng {
        let mut rng = Rng(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
        rng.next();
        rng
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A duration uniform in `[lo, hi)`.
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        lo + hi.saturating_sub(lo).mul_f64(self.unit())
    }
}

/// What a client does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Publish,
    Resend,
    Direct,
    History,
    Presence,
    Ping,
    Malformed,
    Disconnect,
    SlowRead,
    /// Auth on, when the token is due: `hello` with a fresh token.
    Renew,
    /// Auth on, when the token is due: wait for the server's 4001 close.
    Lapse,
}

/// The actions' weights (out of their sum).
const WEIGHTS: [(Action, u64); 9] = [
    (Action::Publish, 40),
    (Action::Resend, 8),
    (Action::Direct, 12),
    (Action::History, 8),
    (Action::Presence, 7),
    (Action::Ping, 5),
    (Action::Malformed, 10),
    (Action::Disconnect, 6),
    (Action::SlowRead, 4),
];

fn pick(rng: &mut Rng) -> Action {
    let total: u64 = WEIGHTS.iter().map(|(_, w)| w).sum();
    let mut at = rng.below(total);
    for (action, weight) in WEIGHTS {
        if at < weight {
            return action;
        }
        at -= weight;
    }
    Action::Ping
}

// --- Tokens (--jwt-secret) -------------------------------------------------------

/// Share of the chaos clients' tokens left to expire (the rest are renewed).
const LAPSE_SHARE: f64 = 0.3;
/// A token kept alive is renewed when this share (drawn in between) of
/// what was left of its lifetime when issued has passed: before `exp`.
const RENEW_FROM: f64 = 0.3;
const RENEW_TO: f64 = 0.7;
/// A client letting its token lapse starts waiting for the close this long
/// before `exp` + leeway (an action under way may run into the close too).
const LAPSE_LEAD: Duration = Duration::from_millis(250);
/// How long after `exp` + leeway the 4001 close may come: the server counts
/// whole seconds (up to 1 s late), the rest is load.
const LAPSE_GRACE: Duration = Duration::from_secs(3);
/// A close this much before `exp` + leeway is early (clock reads apart).
const EARLY_SLACK: Duration = Duration::from_millis(50);
/// A renewal sent at least this long before `exp` + leeway must be honoured.
const RENEW_RACE: Duration = Duration::from_secs(1);
/// The end-of-run checks' tokens: long enough for the checks, never renewed.
const CHECKER_TTL: Duration = Duration::from_secs(600);
/// Rng streams of the clients' tokens (apart from their action streams).
const TOKEN_STREAM: u64 = 1 << 32;

/// Signs the run's tokens (`--jwt-secret`).
struct Auth {
    key: jsonwebtoken::EncodingKey,
    ttl: TtlRange,
    leeway: Duration,
}

/// A connection's token as its client sees it: from when the server must
/// close the connection unless renewed, and what the client will do.
#[derive(Clone, Copy, Debug)]
struct Token {
    /// The `exp` claim (seconds since the epoch).
    exp: u64,
    /// `exp` + leeway: from here on, not before, the server closes with 4001.
    closes_at: Instant,
    /// When a client keeping the token renews it.
    renew_at: Instant,
    /// Left to expire (chaos clients during the window; the drain renews).
    lapse: bool,
    /// When a `hello` with a fresh token went out (no `welcome` yet).
    renewal_sent: Option<Instant>,
}

impl Token {
    /// When the client acts on its token: renews it, or starts waiting for
    /// the close.
    fn due(&self) -> Instant {
        if self.lapse {
            self.closes_at
                .checked_sub(LAPSE_LEAD)
                .unwrap_or(self.closes_at)
        } else {
            self.renew_at
        }
    }

    /// The token's action once it is due: renew or lapse.
    fn step(&self, now: Instant) -> Option<Action> {
        (now >= self.due()).then_some(if self.lapse {
            Action::Lapse
        } else {
            Action::Renew
        })
    }
}

fn since_epoch() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// `exp` of a token issued at `now` (since the epoch) to live `ttl`:
/// rounded up, so that it lives at least `ttl`.
fn token_exp(now: Duration, ttl: Duration) -> u64 {
    let at = now + ttl;
    at.as_secs() + u64::from(at.subsec_nanos() > 0)
}

impl Auth {
    fn new(secret: &str, ttl: TtlRange, leeway: Duration) -> Auth {
        Auth {
            key: jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            ttl,
            leeway,
        }
    }

    /// An HS256 JWT for `user` (`sub`) expiring at `exp`.
    fn sign(&self, user: &str, exp: u64) -> Result<String, String> {
        let claims = serde_json::json!({ "sub": user, "exp": exp });
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|err| format!("signing: {err}"))
    }

    /// A fresh token for `user`, living a time drawn from `--token-ttl`;
    /// left to lapse ([`LAPSE_SHARE`] of them) when `may_lapse`.
    fn issue(&self, user: &str, rng: &mut Rng, may_lapse: bool) -> Result<(String, Token), String> {
        let ttl = rng.between(self.ttl.lo, self.ttl.hi);
        let (renew, fate) = (rng.unit(), rng.unit());
        let now = Instant::now();
        let issued = since_epoch();
        let exp = token_exp(issued, ttl);
        let left = Duration::from_secs(exp).saturating_sub(issued);
        let token = Token {
            exp,
            closes_at: now + left + self.leeway,
            renew_at: now + left.mul_f64(RENEW_FROM + (RENEW_TO - RENEW_FROM) * renew),
            lapse: may_lapse && fate < LAPSE_SHARE,
            renewal_sent: None,
        };
        Ok((self.sign(user, exp)?, token))
    }
}

/// `hello` carrying a token.
fn hello_cmd(jwt: &str, id: &str) -> String {
    format!("{{\"type\":\"hello\",\"token\":\"{jwt}\",\"id\":\"{id}\"}}")
}

/// `Ok` for a `welcome` to `user`, else the frame.
fn check_welcome(p: &[u8], user: &str) -> Result<(), String> {
    if client::is(p, b"welcome") && field_str(p, b"\"user\":") == Some(user.as_bytes()) {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(p).into_owned())
    }
}

/// The close of a connection whose token expired.
fn is_expiry_close(how: &str) -> bool {
    how.starts_with("close 4001 token expired")
}

/// The `unauthorized` error the server sends before that close.
fn is_expiry_notice(p: &[u8]) -> bool {
    let has = |needle: &[u8]| p.windows(needle.len()).any(|w| w == needle);
    client::is(p, b"error") && has(b"\"code\":\"unauthorized\"") && has(b"token expired")
}

/// What a connection's unasked end means.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// A slow consumer's close (4008): allowed.
    SlowConsumer,
    /// 4001 for a token the client let lapse, not before time.
    Lapsed,
    /// 4001 for a token the client meant to renew but did not in time (it
    /// was busy elsewhere): allowed, counted.
    MissedRenewal,
    /// 4001 before `exp` + leeway: a violation.
    ExpiredEarly,
    /// 4001 although a renewal went out in time: a violation.
    RenewalIgnored,
    /// Anything else: a violation.
    Lost,
}

/// Judges how a connection ended unasked, at `now`, `token` in force.
fn judge_end(how: &str, token: Option<&Token>, now: Instant) -> Verdict {
    if how.contains("4008") {
        return Verdict::SlowConsumer;
    }
    let Some(t) = token.filter(|_| is_expiry_close(how)) else {
        return Verdict::Lost;
    };
    if now + EARLY_SLACK < t.closes_at {
        Verdict::ExpiredEarly
    } else if t
        .renewal_sent
        .is_some_and(|sent| sent + RENEW_RACE <= t.closes_at)
    {
        Verdict::RenewalIgnored
    } else if t.lapse {
        Verdict::Lapsed
    } else {
        Verdict::MissedRenewal
    }
}

// --- Violations ----------------------------------------------------------------

/// Every broken invariant: counted by kind, the first few kept in full.
#[derive(Default)]
struct Violations(Mutex<(BTreeMap<&'static str, u64>, Vec<String>)>);

impl Violations {
    fn add(&self, kind: &'static str, what: impl FnOnce() -> String) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *v.0.entry(kind).or_default() += 1;
        if v.1.len() < VIOLATION_SAMPLES {
            let line = format!("{kind}: {}", what());
            v.1.push(line);
        }
    }

    fn add_n(&self, kind: &'static str, n: u64, what: impl FnOnce() -> String) {
        if n > 0 {
            self.add(kind, what);
            let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
            *v.0.entry(kind).or_default() += n - 1;
        }
    }

    fn take(&self) -> (BTreeMap<&'static str, u64>, Vec<String>) {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

// --- The run's shared state ----------------------------------------------------

struct Cfg {
    clients: usize,
    rooms: usize,
    seed: u64,
    /// Users are PREFIX-c{i}, rooms PREFIX-{r}: fresh per run, so that
    /// rooms start empty and inboxes hold nothing from an earlier run.
    prefix: String,
    think: Duration,
}

impl Cfg {
    fn user(&self, idx: usize) -> String {
        format!("{}-c{idx}", self.prefix)
    }

    fn room(&self, r: usize) -> String {
        format!("{}-{r}", self.prefix)
    }

    fn room_of(&self, name: &[u8]) -> Option<usize> {
        let rest = name
            .strip_prefix(self.prefix.as_bytes())?
            .strip_prefix(b"-")?;
        let r: usize = std::str::from_utf8(rest).ok()?.parse().ok()?;
        (r < self.rooms).then_some(r)
    }

    /// The rooms client `idx` joins.
    fn rooms_of(&self, idx: usize) -> Vec<usize> {
        let n = ROOMS_PER_CLIENT.min(self.rooms);
        (0..n).map(|k| (idx + k) % self.rooms).collect()
    }
}

struct Shared {
    run: Arc<Run>,
    cfg: Cfg,
    /// Auth on (`--jwt-secret`).
    auth: Option<Auth>,
    /// From `exp` + leeway to the 4001 close, µs (lapses waited for).
    expiry_delays: Mutex<Histogram<u64>>,
    violations: Violations,
    events: common::Events,
    /// Highest seq acked per room (what every member must reach).
    room_top: Box<[AtomicU64]>,
    /// Clients done with their actions.
    done: AtomicUsize,
    counts: Counts,
}

#[derive(Default)]
struct Counts {
    actions: AtomicU64,
    published: AtomicU64,
    duplicate_acks: AtomicU64,
    directs: AtomicU64,
    malformed: AtomicU64,
    disconnects: AtomicU64,
    reconnects: AtomicU64,
    slow_reads: AtomicU64,
    slow_consumer_closes: AtomicU64,
    resets: AtomicU64,
    received: AtomicU64,
    renewals: AtomicU64,
    /// Lapses waited for and closed with 4001 in time.
    lapses: AtomicU64,
    /// Lapsed tokens whose close came while the client was doing something
    /// else.
    lapses_unwatched: AtomicU64,
    /// Renewals too late because the client was busy (closed with 4001).
    missed_renewals: AtomicU64,
    bystander_renewals: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

// --- One client's view of its rooms and inbox ------------------------------------

/// A client's view of one room's seqs.
#[derive(Default, Debug)]
struct RoomTrack {
    /// Highest seq accounted for (seen as a message, or acked to us).
    last: u64,
    /// Seqs below `last` not seen yet (an ack may come after later
    /// messages; a replay fills them).
    missing: BTreeSet<u64>,
    /// The last message seq on the current connection.
    conn_prev: u64,
    /// Seqs up to this one may come again: the replay we asked for.
    replay_upto: u64,
    /// Joined on the current connection.
    joined: bool,
}

impl RoomTrack {
    /// Seq `seq` accounted for; false if it was already.
    fn account(&mut self, seq: u64, sh: &Shared, who: &str) -> bool {
        if seq > self.last {
            let hole = seq - self.last - 1;
            if hole > MAX_HOLE {
                sh.violations.add_n("gap", hole, || {
                    format!("{who}: {hole} seqs skipped after {}", self.last)
                });
            } else {
                self.missing.extend(self.last + 1..seq);
            }
            self.last = seq;
            true
        } else {
            self.missing.remove(&seq)
        }
    }

    fn message(&mut self, seq: u64, sh: &Shared, who: &str) {
        if seq <= self.conn_prev {
            sh.violations.add("duplicate", || {
                format!(
                    "{who}: seq {seq} after {} on one connection",
                    self.conn_prev
                )
            });
            return;
        }
        self.conn_prev = seq;
        if !self.account(seq, sh, who) && seq > self.replay_upto {
            sh.violations
                .add("duplicate", || format!("{who}: seq {seq} seen twice"));
        }
    }

    fn own_ack(&mut self, seq: u64, sh: &Shared, who: &str) {
        if !self.account(seq, sh, who) {
            sh.violations.add("ack_seq_seen", || {
                format!("{who}: own publish acked with seq {seq}, already seen as a message")
            });
        }
    }

    fn reset(&mut self, seq: u64) {
        self.missing.retain(|&s| s > seq);
        self.last = self.last.max(seq);
        self.conn_prev = self.conn_prev.max(seq);
    }

    /// Where a resume starts: before the oldest seq not seen.
    fn since(&self) -> u64 {
        self.missing
            .first()
            .map_or(self.last, |&first| first.saturating_sub(1))
    }
}

/// The last publish of a client, which it may resend.
#[derive(Clone)]
struct Published {
    room: usize,
    id: String,
    seq: u64,
}

struct ClientState {
    idx: usize,
    user: String,
    rooms: Vec<usize>,
    /// Indexed by room number (only `rooms` are used).
    tracks: Vec<RoomTrack>,
    inbox_last: u64,
    inbox_conn_prev: u64,
    inbox_replay_upto: u64,
    inbox_confirmed: u64,
    last_publish: Option<Published>,
    /// (room, seq, n) of every publish acked to this client.
    acked: Vec<(usize, u64, u64)>,
    received: u64,
    next_n: u64,
    /// Auth on: the token of the current connection.
    token: Option<Token>,
    /// The token choices (apart from the actions, which stay a function
    /// of the seed).
    token_rng: Rng,
}

impl ClientState {
    /// A client that has seen nothing yet.
    fn new(idx: usize, user: String, rooms: Vec<usize>, tracks: Vec<RoomTrack>) -> ClientState {
        ClientState {
            idx,
            user,
            rooms,
            tracks,
            inbox_last: 0,
            inbox_conn_prev: 0,
            inbox_replay_upto: 0,
            inbox_confirmed: 0,
            last_publish: None,
            acked: Vec::new(),
            received: 0,
            next_n: 0,
            token: None,
            token_rng: Rng::new(0, TOKEN_STREAM + idx as u64),
        }
    }
}

impl ClientState {
    /// An event that is not the reply being waited for.
    fn on_event(&mut self, sh: &Shared, p: &[u8]) {
        if client::is(p, b"message") {
            self.received += 1;
            let room = field_str(p, b"\"room\":").and_then(|r| sh.cfg.room_of(r));
            let seq = field_u64(p, b"\"seq\":");
            match (room, seq) {
                (Some(r), Some(seq)) if self.tracks[r].joined => {
                    let who = format!("{} in room {r}", self.user);
                    self.tracks[r].message(seq, sh, &who);
                }
                _ => sh.violations.add("foreign_message", || {
                    format!("{}: {}", self.user, String::from_utf8_lossy(p))
                }),
            }
        } else if client::is(p, b"direct") {
            self.received += 1;
            if field_str(p, b"\"to\":") != Some(self.user.as_bytes()) {
                return; // a copy of one of our own sends
            }
            let Some(seq) = field_u64(p, b"\"seq\":") else {
                sh.violations.add("bad_event", || {
                    format!("{}: {}", self.user, String::from_utf8_lossy(p))
                });
                return;
            };
            self.inbox(seq, sh);
        } else if client::is(p, b"reset") {
            bump(&sh.counts.resets);
            let seq = field_u64(p, b"\"seq\":").unwrap_or(0);
            if p.windows(14).any(|w| w == b"\"inbox\":true") {
                self.inbox_last = self.inbox_last.max(seq);
                self.inbox_conn_prev = self.inbox_conn_prev.max(seq);
            } else if let Some(r) = field_str(p, b"\"room\":").and_then(|r| sh.cfg.room_of(r)) {
                self.tracks[r].reset(seq);
            }
        } else if client::is(p, b"error") {
            if self.token.is_some() && is_expiry_notice(p) {
                return; // the 4001 close that follows is judged
            }
            sh.events.server_error(p);
            sh.violations.add("unexpected_error", || {
                format!("{}: {}", self.user, String::from_utf8_lossy(p))
            });
        }
    }

    fn inbox(&mut self, seq: u64, sh: &Shared) {
        if seq <= self.inbox_conn_prev {
            sh.violations.add("inbox_duplicate", || {
                format!(
                    "{}: inbox seq {seq} after {} on one connection",
                    self.user, self.inbox_conn_prev
                )
            });
            return;
        }
        self.inbox_conn_prev = seq;
        if seq > self.inbox_last {
            let hole = seq - self.inbox_last - 1;
            sh.violations.add_n("inbox_gap", hole, || {
                format!("{}: inbox seq {seq} after {}", self.user, self.inbox_last)
            });
            self.inbox_last = seq;
        } else if seq > self.inbox_replay_upto {
            sh.violations.add("inbox_duplicate", || {
                format!("{}: inbox seq {seq} seen twice", self.user)
            });
        }
    }

    /// `received` for the directs not confirmed yet (so that a reconnect
    /// is not sent the whole inbox again).
    fn confirm_inbox(&mut self, conn: &mut Conn) {
        if self.inbox_last > self.inbox_confirmed {
            conn.push_text(
                format!("{{\"type\":\"received\",\"upto\":{}}}", self.inbox_last).as_bytes(),
            );
            self.inbox_confirmed = self.inbox_last;
        }
    }

    /// Every track is at least at its room's top.
    fn caught_up(&self, sh: &Shared) -> bool {
        self.rooms
            .iter()
            .all(|&r| self.tracks[r].last >= sh.room_top[r].load(Ordering::SeqCst))
    }
}

// --- A client --------------------------------------------------------------------

/// What a client hands back at the end.
#[derive(Default)]
struct ClientOutcome {
    acked: Vec<(usize, u64, u64)>,
}

/// Sends `cmd` and waits for the event `reply` picks out (other events go to
/// the client's tracks).
async fn request<T>(
    conn: &mut Conn,
    st: &mut ClientState,
    sh: &Shared,
    cmd: &[u8],
    mut reply: impl FnMut(&[u8]) -> Option<T>,
) -> Result<T, String> {
    conn.send_text(cmd).await?;
    conn.wait_for(REPLY_WAIT, |p| {
        let answer = reply(p);
        if answer.is_none() {
            st.on_event(sh, p);
        }
        answer
    })
    .await
}

/// The reply carrying `"id":"ID"`.
fn with_id<'a>(id: &'a str) -> impl Fn(&[u8]) -> bool + 'a {
    move |p| field_str(p, b"\"id\":") == Some(id.as_bytes())
}

/// Connects and joins every room of the client (with `since` where it had
/// joined before).
async fn connect(sh: &Shared, st: &mut ClientState, first: bool) -> Result<Conn, String> {
    let mut hello = None;
    let path = match &sh.auth {
        None => format!("/ws?user={}", st.user),
        Some(auth) => {
            let (jwt, token) = auth.issue(&st.user, &mut st.token_rng, true)?;
            st.token = Some(token);
            // The token in the query, or in the first `hello`.
            if st.token_rng.below(2) == 0 {
                format!("/ws?token={jwt}")
            } else {
                hello = Some(hello_cmd(&jwt, "w"));
                "/ws".to_string()
            }
        }
    };
    let (stream, leftover) = sh.run.connect(st.idx, &path).await?;
    let mut conn = Conn::new(stream, leftover, BUFFER, wire::mask_for(st.idx));
    // The inbox delivered on connect may repeat what was not confirmed.
    st.inbox_conn_prev = 0;
    st.inbox_replay_upto = st.inbox_last;
    if sh.auth.is_some() {
        if let Some(hello) = hello {
            conn.send_text(hello.as_bytes()).await?;
        }
        let user = st.user.clone();
        conn.wait_for(REPLY_WAIT, |p| {
            (client::is(p, b"welcome") || client::is(p, b"error")).then(|| check_welcome(p, &user))
        })
        .await?
        .map_err(|text| format!("token refused: {text}"))?;
    }
    for r in st.rooms.clone() {
        let room = sh.cfg.room(r);
        let id = format!("j{r}");
        let cmd = if first {
            format!("{{\"type\":\"join\",\"room\":\"{room}\",\"id\":\"{id}\"}}")
        } else {
            let t = &mut st.tracks[r];
            t.replay_upto = t.last;
            t.conn_prev = t.since();
            format!(
                "{{\"type\":\"join\",\"room\":\"{room}\",\"since\":{},\"id\":\"{id}\"}}",
                t.conn_prev
            )
        };
        let is_reply = with_id(&id);
        let seq = request(&mut conn, st, sh, cmd.as_bytes(), |p| {
            is_reply(p).then(|| {
                if client::is(p, b"joined") {
                    field_u64(p, b"\"seq\":").ok_or_else(|| "joined without seq".to_string())
                } else {
                    Err(format!("join refused: {}", String::from_utf8_lossy(p)))
                }
            })
        })
        .await??;
        let t = &mut st.tracks[r];
        if first {
            t.last = seq;
            t.conn_prev = seq;
            t.replay_upto = seq;
        }
        t.joined = true;
    }
    Ok(conn)
}

/// Reconnects after a lost connection (bounded attempts), resuming.
async fn reconnect(sh: &Shared, st: &mut ClientState) -> Option<Conn> {
    for t in &mut st.tracks {
        t.joined = false;
    }
    let mut last_err = String::new();
    for attempt in 0..5u32 {
        match connect(sh, st, false).await {
            Ok(conn) => {
                bump(&sh.counts.reconnects);
                return Some(conn);
            }
            Err(err) => last_err = err,
        }
        for t in &mut st.tracks {
            t.joined = false;
        }
        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
    }
    sh.violations
        .add("reconnect_failed", || format!("{}: {last_err}", st.user));
    None
}

/// How a lost connection ended: a slow-consumer close is allowed, and so
/// is a 4001 close once the token expired unrenewed (see [`judge_end`]).
fn lost(sh: &Shared, st: &ClientState, how: &str) {
    let now = Instant::now();
    let token = st.token.as_ref();
    // How far from `exp` + leeway the end came, and the token's story.
    let when = || {
        token.map_or_else(String::new, |t| {
            let (sign, off) = match now.checked_duration_since(t.closes_at) {
                Some(after) => ("+", after),
                None => ("-", t.closes_at - now),
            };
            let renewal = t
                .renewal_sent
                .map(|sent| {
                    format!(
                        ", renewal sent {:?} before",
                        t.closes_at.saturating_duration_since(sent)
                    )
                })
                .unwrap_or_default();
            format!(" at exp + leeway {sign}{off:?} (exp {}{renewal})", t.exp)
        })
    };
    match judge_end(how, token, now) {
        Verdict::SlowConsumer => bump(&sh.counts.slow_consumer_closes),
        Verdict::Lapsed => bump(&sh.counts.lapses_unwatched),
        Verdict::MissedRenewal => bump(&sh.counts.missed_renewals),
        Verdict::ExpiredEarly => sh
            .violations
            .add("expired_early", || format!("{}: {how}{}", st.user, when())),
        Verdict::RenewalIgnored => sh.violations.add("renewal_ignored", || {
            format!("{}: {how}{}", st.user, when())
        }),
        Verdict::Lost => {
            sh.events.ended(how.to_string());
            sh.violations.add("connection_lost", || {
                format!("{}: {how}{}", st.user, when())
            });
        }
    }
}

async fn client(sh: Arc<Shared>, idx: usize) -> ClientOutcome {
    let cfg = &sh.cfg;
    let rooms = cfg.rooms_of(idx);
    let tracks = (0..cfg.rooms).map(|_| RoomTrack::default()).collect();
    let mut st = ClientState::new(idx, cfg.user(idx), rooms, tracks);
    let mut rng = Rng::new(cfg.seed, idx as u64 + 1);
    st.token_rng = Rng::new(cfg.seed, TOKEN_STREAM + idx as u64);
    let conn = match connect(&sh, &mut st, true).await {
        Ok(conn) => conn,
        Err(err) => {
            sh.run.fail(format!("{}: {err}", st.user));
            return ClientOutcome::default();
        }
    };
    sh.run.ready();
    let Some(window) = sh.run.go().await else {
        return ClientOutcome::default();
    };
    let end = sh.run.epoch + Duration::from_micros(window.end);
    let mut conn = Some(conn);
    let mut reported = 0;
    while Instant::now() < end {
        let Some(c) = conn.as_mut() else { break };
        // Think, reading meanwhile (not past the token's turn).
        let mut think = rng.between(Duration::ZERO, cfg.think * 2);
        if let Some(t) = &st.token {
            think = think.min(t.due().saturating_duration_since(Instant::now()));
        }
        let thought = c
            .read_until(
                tokio::time::sleep(think),
                &mut OnData(|p: &[u8]| st.on_event(&sh, p)),
            )
            .await;
        let mut outcome = match thought {
            End::Stopped => Ok(()),
            other => Err(other.unasked().unwrap_or_default()),
        };
        if outcome.is_ok() {
            st.confirm_inbox(c);
            bump(&sh.counts.actions);
            // The token's turn comes between the random actions.
            let action = st
                .token
                .and_then(|t| t.step(Instant::now()))
                .unwrap_or_else(|| pick(&mut rng));
            outcome = act(&sh, &mut st, c, &mut rng, action).await;
        }
        sh.counts
            .received
            .fetch_add(st.received - reported, Ordering::Relaxed);
        reported = st.received;
        match outcome {
            Ok(()) => {}
            Err(how) if how == DISCONNECTED => {
                // The socket goes now, before the pause offline.
                drop(conn.take());
                tokio::time::sleep(rng.between(Duration::ZERO, Duration::from_millis(500))).await;
                conn = reconnect(&sh, &mut st).await;
            }
            Err(how) if how == LAPSED => {
                drop(conn.take());
                conn = reconnect(&sh, &mut st).await;
            }
            Err(how) => {
                lost(&sh, &st, &how);
                drop(conn.take());
                conn = reconnect(&sh, &mut st).await;
            }
        }
    }
    sh.done.fetch_add(1, Ordering::SeqCst);
    // Drain: catch up with every room's top once every client is done.
    let deadline = Instant::now() + DRAIN;
    while Instant::now() < deadline {
        if conn.is_none() {
            conn = reconnect(&sh, &mut st).await;
            if conn.is_none() {
                break;
            }
        }
        let Some(c) = conn.as_mut() else { break };
        if sh.done.load(Ordering::SeqCst) >= cfg.clients && st.caught_up(&sh) {
            break;
        }
        // Every token is renewed now, lapsing ones too.
        if st.token.is_some_and(|t| Instant::now() >= t.renew_at) {
            if let Err(how) = act(&sh, &mut st, c, &mut rng, Action::Renew).await {
                lost(&sh, &st, &how);
                conn = None;
                continue;
            }
        }
        match c
            .read(Duration::from_millis(100), |p| st.on_event(&sh, p))
            .await
        {
            Ok(()) => {}
            Err(how) if how.starts_with("nothing from the server") => {}
            Err(how) => {
                lost(&sh, &st, &how);
                conn = None;
            }
        }
    }
    sh.counts
        .received
        .fetch_add(st.received - reported, Ordering::Relaxed);
    if !st.caught_up(&sh) {
        for &r in &st.rooms {
            let top = sh.room_top[r].load(Ordering::SeqCst);
            let behind = top.saturating_sub(st.tracks[r].last);
            sh.violations.add_n("not_caught_up", behind, || {
                format!(
                    "{} in room {r}: at seq {} of {top} after the drain",
                    st.user, st.tracks[r].last
                )
            });
        }
    }
    for &r in &st.rooms {
        let t = &st.tracks[r];
        sh.violations.add_n("gap", t.missing.len() as u64, || {
            format!(
                "{} in room {r}: {} seqs never seen, first {:?}",
                st.user,
                t.missing.len(),
                t.missing.first()
            )
        });
    }
    if let Some(c) = conn {
        c.close().await;
    }
    sh.run.drained();
    ClientOutcome { acked: st.acked }
}

/// The `Err` of an action that dropped its own connection.
const DISCONNECTED: &str = "disconnected on purpose";
/// The `Err` of a lapse, judged already: the connection is to be replaced.
const LAPSED: &str = "token lapsed";

/// One action. `Err` if the connection is gone (`DISCONNECTED`: on purpose).
async fn act(
    sh: &Shared,
    st: &mut ClientState,
    conn: &mut Conn,
    rng: &mut Rng,
    action: Action,
) -> Result<(), String> {
    let n = st.next_n;
    st.next_n += 1;
    let rid = format!("q{n}");
    match action {
        Action::Publish | Action::Resend => {
            let resend = match (&st.last_publish, action) {
                (Some(last), Action::Resend) => Some(last.clone()),
                _ => None,
            };
            let (r, id, body_n) = match &resend {
                Some(last) => (last.room, last.id.clone(), n),
                None => {
                    let r = st.rooms[rng.below(st.rooms.len() as u64) as usize];
                    (r, format!("p{}-{n}", st.idx), n)
                }
            };
            let cmd = format!(
                "{{\"type\":\"publish\",\"room\":\"{}\",\"id\":\"{id}\",\"body\":{{\"c\":{},\"n\":{body_n}}}}}",
                sh.cfg.room(r),
                st.idx
            );
            let is_reply = with_id(&id);
            let (ok, seq, duplicate, text) = request(conn, st, sh, cmd.as_bytes(), |p| {
                is_reply(p).then(|| {
                    (
                        client::is(p, b"ack"),
                        field_u64(p, b"\"seq\":"),
                        p.windows(16).any(|w| w == b"\"duplicate\":true"),
                        String::from_utf8_lossy(p).into_owned(),
                    )
                })
            })
            .await?;
            let Some(seq) = seq.filter(|_| ok) else {
                sh.violations
                    .add("publish_refused", || format!("{}: {text}", st.user));
                return Ok(());
            };
            match resend {
                Some(last) => {
                    bump(&sh.counts.duplicate_acks);
                    if !duplicate {
                        sh.violations.add("resend_not_deduplicated", || {
                            format!("{}: resent id {} answered {text}", st.user, last.id)
                        });
                        // Stored again: account for it as a publish.
                        st.tracks[r].own_ack(seq, sh, &st.user);
                    } else if seq != last.seq {
                        sh.violations.add("duplicate_ack_seq", || {
                            format!(
                                "{}: resent id {} acked with seq {seq}, original {}",
                                st.user, last.id, last.seq
                            )
                        });
                    }
                }
                None => {
                    bump(&sh.counts.published);
                    if duplicate {
                        sh.violations.add("fresh_id_duplicate", || {
                            format!("{}: fresh id {id} acked as a duplicate: {text}", st.user)
                        });
                        return Ok(());
                    }
                    let who = format!("{} in room {r}", st.user);
                    st.tracks[r].own_ack(seq, sh, &who);
                    st.acked.push((r, seq, body_n));
                    sh.room_top[r].fetch_max(seq, Ordering::SeqCst);
                    st.last_publish = Some(Published {
                        room: r,
                        id: id.clone(),
                        seq,
                    });
                }
            }
        }
        Action::Direct => {
            let clients = sh.cfg.clients as u64;
            let to = (st.idx as u64 + 1 + rng.below(clients.saturating_sub(1).max(1))) % clients;
            let cmd = format!(
                "{{\"type\":\"send\",\"to\":\"{}\",\"id\":\"d{}-{n}\",\"body\":{{\"c\":{},\"n\":{n}}}}}",
                sh.cfg.user(to as usize),
                st.idx,
                st.idx
            );
            let id = format!("d{}-{n}", st.idx);
            let is_reply = with_id(&id);
            let answer = request(conn, st, sh, cmd.as_bytes(), |p| {
                is_reply(p).then(|| {
                    client::is(p, b"ack")
                        .then_some(())
                        .ok_or_else(|| String::from_utf8_lossy(p).into_owned())
                })
            })
            .await?;
            bump(&sh.counts.directs);
            if let Err(text) = answer {
                sh.violations
                    .add("send_refused", || format!("{}: {text}", st.user));
            }
        }
        Action::History => {
            let r = rng.below(sh.cfg.rooms as u64) as usize;
            let limit = 1 + rng.below(HISTORY_PAGE);
            let cmd = format!(
                "{{\"type\":\"history\",\"room\":\"{}\",\"limit\":{limit},\"id\":\"{rid}\"}}",
                sh.cfg.room(r)
            );
            let is_reply = with_id(&rid);
            let page = request(conn, st, sh, cmd.as_bytes(), |p| {
                is_reply(p).then(|| p.to_vec())
            })
            .await?;
            if let Err(what) = check_history_page(&page) {
                sh.violations
                    .add("bad_history_page", || format!("{}: {what}", st.user));
            }
        }
        Action::Presence => {
            let r = rng.below(sh.cfg.rooms as u64) as usize;
            let cmd = format!(
                "{{\"type\":\"presence\",\"room\":\"{}\",\"id\":\"{rid}\"}}",
                sh.cfg.room(r)
            );
            let is_reply = with_id(&rid);
            let ok = request(conn, st, sh, cmd.as_bytes(), |p| {
                is_reply(p).then(|| client::is(p, b"presence"))
            })
            .await?;
            if !ok {
                sh.violations.add("bad_reply", || {
                    format!("{}: presence not answered", st.user)
                });
            }
        }
        Action::Ping => ping(conn, st, sh, &rid).await?,
        Action::Malformed => {
            bump(&sh.counts.malformed);
            let cmd = match rng.below(5) {
                0 => format!(
                    "{{\"type\":\"publish\",\"room\":\"{}\",\"bo",
                    sh.cfg.room(0)
                ),
                1 => "[1,2,3]".to_string(),
                2 => format!("{{\"type\":\"frobnicate\",\"id\":\"{rid}\"}}"),
                3 => format!(
                    "{{\"type\":\"ping\",\"id\":\"{}\"}}",
                    "x".repeat(OVERSIZED_ID)
                ),
                // Publishing to a room not joined.
                _ => format!(
                    "{{\"type\":\"publish\",\"room\":\"{}-nowhere\",\"body\":1,\"id\":\"{rid}\"}}",
                    sh.cfg.prefix
                ),
            };
            let got = request(conn, st, sh, cmd.as_bytes(), |p| {
                (client::is(p, b"error") || client::is(p, b"pong") || client::is(p, b"ack"))
                    .then(|| client::is(p, b"error"))
            })
            .await?;
            if !got {
                sh.violations.add("malformed_accepted", || {
                    format!("{}: no error for {cmd:.80}", st.user)
                });
            }
            // The connection stays usable.
            ping(conn, st, sh, &rid).await?;
        }
        Action::Disconnect => {
            bump(&sh.counts.disconnects);
            // Half the time a reset (no FIN), else a plain drop (FIN).
            if rng.below(2) == 0 {
                // A zero linger resets at once: the drop does not block.
                #[allow(deprecated)]
                let _ = conn.stream.set_linger(Some(Duration::ZERO));
            }
            return Err(DISCONNECTED.to_string());
        }
        Action::SlowRead => {
            bump(&sh.counts.slow_reads);
            let mut pause = rng.between(Duration::from_millis(500), Duration::from_secs(3));
            // Not past a renewal (a lapse may come in the middle).
            if let Some(t) = st.token.filter(|t| !t.lapse) {
                pause = pause.min(t.renew_at.saturating_duration_since(Instant::now()));
            }
            tokio::time::sleep(pause).await;
        }
        Action::Renew => {
            let Some(auth) = &sh.auth else {
                return Ok(());
            };
            let (jwt, fresh) = auth.issue(&st.user, &mut st.token_rng, true)?;
            if let Some(t) = st.token.as_mut() {
                t.renewal_sent = Some(Instant::now());
            }
            let user = st.user.clone();
            let is_reply = with_id(&rid);
            let welcome = request(conn, st, sh, hello_cmd(&jwt, &rid).as_bytes(), |p| {
                is_reply(p).then(|| check_welcome(p, &user))
            })
            .await?;
            match welcome {
                Ok(()) => {
                    st.token = Some(fresh);
                    bump(&sh.counts.renewals);
                }
                Err(text) => {
                    sh.violations
                        .add("renewal_refused", || format!("{user}: {text}"));
                    // Judged once: the close to come is the old token's.
                    if let Some(t) = st.token.as_mut() {
                        t.renewal_sent = None;
                        t.lapse = true;
                    }
                }
            }
        }
        Action::Lapse => {
            let Some(t) = st.token else {
                return Ok(());
            };
            let until = tokio::time::Instant::from_std(t.closes_at + LAPSE_GRACE);
            let ended = conn
                .read_until(
                    tokio::time::sleep_until(until),
                    &mut OnData(|p: &[u8]| st.on_event(sh, p)),
                )
                .await;
            let now = Instant::now();
            let Some(how) = ended.unasked() else {
                sh.violations.add("expiry_not_enforced", || {
                    format!(
                        "{}: still open {:?} after exp + leeway (exp {})",
                        st.user,
                        now - t.closes_at,
                        t.exp
                    )
                });
                return Err(LAPSED.into());
            };
            if !is_expiry_close(&how) {
                if how.contains("4008") {
                    return Err(how); // allowed as ever
                }
                sh.events.ended(how.clone());
                sh.violations.add("expiry_wrong_close", || {
                    format!("{}: token lapsed, connection ended: {how}", st.user)
                });
                return Err(LAPSED.into());
            }
            if judge_end(&how, Some(&t), now) == Verdict::ExpiredEarly {
                sh.violations.add("expired_early", || {
                    format!(
                        "{}: {how} {:?} before exp + leeway (exp {})",
                        st.user,
                        t.closes_at - now,
                        t.exp
                    )
                });
            } else {
                bump(&sh.counts.lapses);
                let delay = now.saturating_duration_since(t.closes_at).as_micros() as u64;
                sh.expiry_delays
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .saturating_record(delay.max(1));
            }
            return Err(LAPSED.into());
        }
    }
    Ok(())
}

async fn ping(conn: &mut Conn, st: &mut ClientState, sh: &Shared, id: &str) -> Result<(), String> {
    let cmd = format!("{{\"type\":\"ping\",\"id\":\"{id}\"}}");
    let is_reply = with_id(id);
    let pong = request(conn, st, sh, cmd.as_bytes(), |p| {
        is_reply(p).then(|| client::is(p, b"pong"))
    })
    .await?;
    if !pong {
        sh.violations.add("bad_reply", || {
            format!("{}: ping not answered with pong", st.user)
        });
    }
    Ok(())
}

/// A history page's seqs are increasing and gapless (a page is contiguous).
fn check_history_page(page: &[u8]) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_slice(page).map_err(|err| format!("history reply not JSON: {err}"))?;
    if value["type"] != "history" {
        return Err(format!(
            "not a history reply: {:.200}",
            String::from_utf8_lossy(page)
        ));
    }
    let seqs: Vec<u64> = value["messages"]
        .as_array()
        .ok_or("history without messages")?
        .iter()
        .filter_map(|m| m["seq"].as_u64())
        .collect();
    match seqs.windows(2).find(|w| w[1] != w[0] + 1) {
        Some(w) => Err(format!("history page jumps from seq {} to {}", w[0], w[1])),
        None => Ok(()),
    }
}

// --- The bystander -------------------------------------------------------------

#[derive(Default)]
struct Bystander {
    /// Publish → ack, µs.
    rtt: Option<Histogram<u64>>,
    /// Publish → the listener's message, µs.
    e2e: Option<Histogram<u64>>,
    published: u64,
    received: u64,
    lost: u64,
    duplicates: u64,
}

/// What the bystander's listener heard: every seq after its join, once,
/// in order.
struct Heard {
    /// Publish → this message, µs.
    e2e: Histogram<u64>,
    last: u64,
    received: u64,
    lost: u64,
    duplicates: u64,
}

impl Heard {
    fn message(&mut self, p: &[u8], epoch: Instant) {
        if !client::is(p, b"message") {
            return;
        }
        let Some(seq) = field_u64(p, b"\"seq\":") else {
            return;
        };
        if seq <= self.last {
            self.duplicates += 1;
            return;
        }
        self.lost += seq - self.last - 1;
        self.last = seq;
        self.received += 1;
        if let Some(t) = common::stamp(p) {
            let now = epoch.elapsed().as_micros() as u64;
            self.e2e.saturating_record(now.saturating_sub(t).max(1));
        }
    }
}

/// A well-behaved publisher and listener in a room of their own.
async fn bystander(sh: Arc<Shared>, rate: f64) -> Result<Bystander, String> {
    let room = format!("{}-bystander", sh.cfg.prefix);
    let n = sh.cfg.clients;
    let join = format!("{{\"type\":\"join\",\"room\":\"{room}\"}}");
    let joined = |p: &[u8]| client::is(p, b"joined").then(|| field_u64(p, b"\"seq\":"));
    let (by, byl) = (
        format!("{}-by", sh.cfg.prefix),
        format!("{}-byl", sh.cfg.prefix),
    );
    let [mut publisher_rng, mut listener_rng] =
        [1, 2].map(|k| Rng::new(sh.cfg.seed, TOKEN_STREAM - k));
    // Auth on: a token in the query, renewed in time and never left to lapse.
    let open = |k: usize, user: String, rng: &mut Rng| {
        let issued = sh
            .auth
            .as_ref()
            .map(|auth| auth.issue(&user, rng, false))
            .transpose();
        let sh = sh.clone();
        let join = join.clone();
        async move {
            let (path, token) = match issued? {
                Some((jwt, token)) => (format!("/ws?token={jwt}"), Some(token)),
                None => (format!("/ws?user={user}"), None),
            };
            let (stream, leftover) = sh.run.connect(n + k, &path).await?;
            let mut conn = Conn::new(stream, leftover, BUFFER, wire::mask_for(n + k));
            conn.send_text(join.as_bytes()).await?;
            let seq = conn.wait_for(HANDSHAKE_TIMEOUT, joined).await?.unwrap_or(0);
            Ok::<_, String>((conn, seq, token))
        }
    };
    let (mut publisher, _, mut publisher_token) = open(0, by.clone(), &mut publisher_rng).await?;
    let (mut listener, start, mut listener_token) = open(1, byl.clone(), &mut listener_rng).await?;
    sh.run.ready();
    sh.run.ready();
    // The tokens are kept alive while the clients connect too (nobody
    // publishes yet).
    let (mut publisher_renewals, mut listener_renewals) = (0, 0);
    let window = loop {
        let due = [publisher_token, listener_token]
            .iter()
            .flatten()
            .map(|t| tokio::time::Instant::from_std(t.renew_at))
            .min();
        let renewal_due = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            window = sh.run.go() => break window,
            () = renewal_due => {
                keep_token(&sh, &mut publisher, &by, &mut publisher_token,
                    &mut publisher_rng, &mut publisher_renewals, |_| {})
                    .await
                    .map_err(|err| format!("bystander publisher: {err}"))?;
                keep_token(&sh, &mut listener, &byl, &mut listener_token,
                    &mut listener_rng, &mut listener_renewals, |_| {})
                    .await
                    .map_err(|err| format!("bystander listener: {err}"))?;
            }
        }
    };
    let Some(window) = window else {
        return Err("no go signal".into());
    };
    let acked_top = Arc::new(AtomicU64::new(start));
    let publishing_done = Arc::new(AtomicUsize::new(0));
    // The listener: every seq after `start`, once, in order.
    let listen = {
        let (acked_top, publishing_done) = (acked_top.clone(), publishing_done.clone());
        let epoch = sh.run.epoch;
        let sh = sh.clone();
        tokio::spawn(async move {
            let mut heard = Heard {
                e2e: common::latency_histogram(),
                last: start,
                received: 0,
                lost: 0,
                duplicates: 0,
            };
            let deadline_after_done = DRAIN;
            let mut done_at: Option<Instant> = None;
            loop {
                if publishing_done.load(Ordering::SeqCst) > 0 {
                    let at = *done_at.get_or_insert_with(Instant::now);
                    if heard.last >= acked_top.load(Ordering::SeqCst)
                        || at.elapsed() > deadline_after_done
                    {
                        break;
                    }
                }
                keep_token(
                    &sh,
                    &mut listener,
                    &byl,
                    &mut listener_token,
                    &mut listener_rng,
                    &mut listener_renewals,
                    |p| heard.message(p, epoch),
                )
                .await
                .map_err(|err| format!("bystander listener: {err}"))?;
                let read = listener
                    .read(Duration::from_millis(100), |p| heard.message(p, epoch))
                    .await;
                match read {
                    Ok(()) => {}
                    Err(how) if how.starts_with("nothing from the server") => {}
                    Err(how) => return Err(format!("bystander listener: {how}")),
                }
            }
            heard.lost += acked_top.load(Ordering::SeqCst).saturating_sub(heard.last);
            listener.close().await;
            Ok::<_, String>(heard)
        })
    };
    let mut rtt = common::latency_histogram();
    let mut published = 0u64;
    let period = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = sh.run.epoch + Duration::from_micros(window.end);
    let mut failure = None;
    while Instant::now() < end {
        ticks.tick().await;
        let renewed = keep_token(
            &sh,
            &mut publisher,
            &by,
            &mut publisher_token,
            &mut publisher_rng,
            &mut publisher_renewals,
            |_| {},
        )
        .await;
        if let Err(err) = renewed {
            failure = Some(format!("bystander publisher: {err}"));
            break;
        }
        let sent = sh.run.now_us();
        let id = format!("b{published}");
        let mut body = Vec::new();
        common::write_body(&mut body, sent, None, 40);
        let cmd = format!(
            "{{\"type\":\"publish\",\"room\":\"{room}\",\"id\":\"{id}\",\"body\":{}}}",
            String::from_utf8_lossy(&body)
        );
        let is_reply = with_id(&id);
        let answer = async {
            publisher.send_text(cmd.as_bytes()).await?;
            publisher
                .wait_for(REPLY_WAIT, |p| {
                    is_reply(p).then(|| {
                        field_u64(p, b"\"seq\":")
                            .filter(|_| client::is(p, b"ack"))
                            .ok_or_else(|| String::from_utf8_lossy(p).into_owned())
                    })
                })
                .await?
        }
        .await;
        match answer {
            Ok(seq) => {
                rtt.saturating_record((sh.run.now_us() - sent).max(1));
                acked_top.fetch_max(seq, Ordering::SeqCst);
                published += 1;
            }
            Err(err) => {
                failure = Some(format!("bystander publisher: {err}"));
                break;
            }
        }
    }
    publishing_done.store(1, Ordering::SeqCst);
    publisher.close().await;
    let Heard {
        e2e,
        received,
        lost,
        duplicates,
        ..
    } = listen
        .await
        .map_err(|err| format!("bystander listener: {err}"))??;
    if let Some(failure) = failure {
        return Err(failure);
    }
    Ok(Bystander {
        rtt: Some(rtt),
        e2e: Some(e2e),
        published,
        received,
        lost,
        duplicates,
    })
}

/// A bystander's token, renewed once due: `hello` with a fresh one, then
/// its `welcome` (frames before it go to `other`). `Err` if the token is
/// refused or the connection ends.
async fn keep_token(
    sh: &Shared,
    conn: &mut Conn,
    user: &str,
    token: &mut Option<Token>,
    rng: &mut Rng,
    renewals: &mut u64,
    mut other: impl FnMut(&[u8]),
) -> Result<(), String> {
    let (Some(auth), Some(t)) = (&sh.auth, token.as_ref()) else {
        return Ok(());
    };
    if Instant::now() < t.renew_at {
        return Ok(());
    }
    let (jwt, fresh) = auth.issue(user, rng, false)?;
    let id = format!("r{renewals}");
    conn.send_text(hello_cmd(&jwt, &id).as_bytes()).await?;
    let is_reply = with_id(&id);
    conn.wait_for(REPLY_WAIT, |p| {
        if is_reply(p) {
            Some(check_welcome(p, user))
        } else {
            other(p);
            None
        }
    })
    .await?
    .map_err(|text| format!("renewal refused: {text}"))?;
    *token = Some(fresh);
    *renewals += 1;
    bump(&sh.counts.bystander_renewals);
    Ok(())
}

/// The path of an end-of-run check's connection: with auth on, a token
/// good for [`CHECKER_TTL`] in the query.
fn checker_path(sh: &Shared, user: &str) -> Result<String, String> {
    match &sh.auth {
        Some(auth) => {
            let jwt = auth.sign(user, token_exp(since_epoch(), CHECKER_TTL))?;
            Ok(format!("/ws?token={jwt}"))
        }
        None => Ok(format!("/ws?user={user}")),
    }
}

// --- End-of-run checks -----------------------------------------------------------

/// What the history check found.
#[derive(Default)]
struct HistoryCheck {
    checked: u64,
    /// Acked seqs older than what the room still holds (retention).
    expired: u64,
    pages: u64,
}

/// Every acked (room, seq) is in the room's history with its body.
async fn check_history(
    sh: &Shared,
    acked: &[(usize, u64, usize, u64)],
) -> Result<HistoryCheck, String> {
    let mut check = HistoryCheck::default();
    let idx = sh.cfg.clients + 2;
    let path = checker_path(sh, &format!("{}-check", sh.cfg.prefix))?;
    let (stream, leftover) = sh.run.connect(idx, &path).await?;
    let mut conn = Conn::new(stream, leftover, BUFFER, wire::mask_for(idx));
    for r in 0..sh.cfg.rooms {
        let mut want: Vec<&(usize, u64, usize, u64)> = acked.iter().filter(|a| a.0 == r).collect();
        want.sort_by_key(|a| a.1);
        let Some(first) = want.first().map(|a| a.1) else {
            continue;
        };
        let mut held: HashMap<u64, (u64, u64)> = HashMap::new();
        let mut before: Option<u64> = None;
        let mut oldest_held = u64::MAX;
        let mut ran_out = false;
        loop {
            let id = format!("h{}", check.pages);
            check.pages += 1;
            let cmd = match before {
                Some(b) => format!(
                    "{{\"type\":\"history\",\"room\":\"{}\",\"before\":{b},\"limit\":{HISTORY_PAGE},\"id\":\"{id}\"}}",
                    sh.cfg.room(r)
                ),
                None => format!(
                    "{{\"type\":\"history\",\"room\":\"{}\",\"limit\":{HISTORY_PAGE},\"id\":\"{id}\"}}",
                    sh.cfg.room(r)
                ),
            };
            conn.send_text(cmd.as_bytes()).await?;
            let is_reply = with_id(&id);
            let page = conn
                .wait_for(REPLY_WAIT, |p| is_reply(p).then(|| p.to_vec()))
                .await?;
            let value: serde_json::Value = serde_json::from_slice(&page)
                .map_err(|err| format!("history reply not JSON: {err}"))?;
            let messages = value["messages"].as_array().ok_or_else(|| {
                format!(
                    "not a history page: {:.200}",
                    String::from_utf8_lossy(&page)
                )
            })?;
            let truncated = value["truncated"].as_bool().unwrap_or(false);
            for m in messages {
                if let Some(seq) = m["seq"].as_u64() {
                    let body = &m["body"];
                    held.insert(
                        seq,
                        (
                            body["c"].as_u64().unwrap_or(u64::MAX),
                            body["n"].as_u64().unwrap_or(u64::MAX),
                        ),
                    );
                    oldest_held = oldest_held.min(seq);
                }
            }
            if oldest_held <= first {
                break;
            }
            if messages.is_empty() || (messages.len() < HISTORY_PAGE as usize && !truncated) {
                ran_out = true;
                break;
            }
            if before == Some(oldest_held) {
                // The page brought nothing older: paging would not end.
                sh.violations.add("history_stuck", || {
                    format!("room {r}: paging before {oldest_held} brings nothing older")
                });
                break;
            }
            before = Some(oldest_held);
        }
        for &&(room, seq, client, n) in &want {
            check.checked += 1;
            match held.get(&seq) {
                Some(&(c, got_n)) if c == client as u64 && got_n == n => {}
                Some(&(c, got_n)) => sh.violations.add("history_mismatch", || {
                    format!(
                        "room {room} seq {seq}: acked to c{client} (n {n}), history has c{c} n {got_n}"
                    )
                }),
                None if ran_out && seq < oldest_held => check.expired += 1,
                None => sh.violations.add("not_in_history", || {
                    format!("room {room} seq {seq} (acked to c{client}) not in history")
                }),
            }
        }
    }
    conn.close().await;
    Ok(check)
}

/// The server still answers `ping` on a fresh connection.
async fn final_ping(sh: &Shared) -> Result<(), String> {
    let idx = sh.cfg.clients + 3;
    let path = checker_path(sh, &format!("{}-ping", sh.cfg.prefix))?;
    let (stream, leftover) = sh.run.connect(idx, &path).await?;
    let mut conn = Conn::new(stream, leftover, BUFFER, wire::mask_for(idx));
    conn.send_text(br#"{"type":"ping","id":"last"}"#).await?;
    let pong = conn
        .wait_for(REPLY_WAIT, |p| {
            with_id("last")(p).then(|| client::is(p, b"pong"))
        })
        .await?;
    conn.close().await;
    if pong {
        Ok(())
    } else {
        Err("ping answered with something else".into())
    }
}

/// The server's resident set in KiB (Linux, /proc/PID/status VmRSS).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// --- The run ----------------------------------------------------------------------

pub fn run(args: ChaosArgs) -> anyhow::Result<()> {
    let target = Target::parse(&args.url)?;
    if !target.addr.ip().is_loopback() {
        bail!(
            "chaos only runs against a loopback server (127.0.0.x), not {}",
            target.addr
        );
    }
    if args.clients < 2 || args.rooms == 0 {
        bail!("--clients must be at least 2 and --rooms at least 1");
    }
    if !(args.actions > 0.0 && args.actions.is_finite()) {
        bail!("--actions must be positive");
    }
    if args.jwt_secret.as_deref() == Some("") {
        bail!("--jwt-secret must not be empty");
    }
    common::block_on(chaos(args, target))
}

async fn chaos(args: ChaosArgs, target: Target) -> anyhow::Result<()> {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seed = args.seed.unwrap_or(clock.as_nanos() as u64);
    // Fresh names per run (not from the seed: the same seed may run twice
    // against one server).
    let prefix = format!("chaos{:x}", (clock.as_micros() as u64) & 0xFF_FFFF_FFFF);
    eprintln!("chaos: seed {seed} (--seed {seed} repeats the choices); names {prefix}-*");
    let auth = args.jwt_secret.as_deref().map(|secret| {
        eprintln!(
            "chaos: auth on, tokens living {:?}..{:?}, server leeway {} s",
            args.token_ttl.lo,
            args.token_ttl.hi,
            args.jwt_leeway.as_secs()
        );
        Auth::new(secret, args.token_ttl, args.jwt_leeway)
    });
    let run = Run::new(
        target,
        args.dialing.connect_concurrency,
        args.dialing.conns_per_ip,
    );
    let sh = Arc::new(Shared {
        run: run.clone(),
        cfg: Cfg {
            clients: args.clients,
            rooms: args.rooms,
            seed,
            prefix,
            think: Duration::from_secs_f64(1.0 / args.actions),
        },
        auth,
        expiry_delays: Mutex::new(common::latency_histogram()),
        violations: Violations::default(),
        events: common::Events::default(),
        room_top: (0..args.rooms).map(|_| AtomicU64::new(0)).collect(),
        done: AtomicUsize::new(0),
        counts: Counts::default(),
    });
    let by = tokio::spawn(bystander(sh.clone(), args.bystander_rate));
    let tasks = run.spawn(0..args.clients, |_, idx| client(sh.clone(), idx));
    run.wait_ready(args.clients + 2, "chaos clients", Duration::from_millis(10))
        .await?;
    eprintln!("{} clients and the bystander connected", args.clients);

    // The server's RSS, sampled until the end.
    let peak_rss = Arc::new(AtomicU64::new(0));
    // The first PID's memory: chaos drives one server.
    let rss_probe = args.output.server_pid.first().copied().map(|pid| {
        let peak = peak_rss.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(RSS_EVERY);
            loop {
                every.tick().await;
                if let Some(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
            }
        })
    });
    let measuring =
        run.measure(&args.timing, &args.output.server_pid, {
            let sh = sh.clone();
            let peak = peak_rss.clone();
            let mut received = Gain::default();
            move || {
                let c = &sh.counts;
                let tokens = if sh.auth.is_some() {
                    format!(
                        "  renewals {}  lapses {}",
                        c.renewals.load(Ordering::Relaxed),
                        c.lapses.load(Ordering::Relaxed)
                            + c.lapses_unwatched.load(Ordering::Relaxed)
                    )
                } else {
                    String::new()
                };
                format!(
                "actions {}  published {}  received {}  reconnects {}{tokens}  violations {}  rss {} MiB",
                c.actions.load(Ordering::Relaxed),
                c.published.load(Ordering::Relaxed),
                received.show(c.received.load(Ordering::Relaxed)),
                c.reconnects.load(Ordering::Relaxed),
                sh.violations.0.lock().map(|v| v.0.values().sum::<u64>()).unwrap_or(0),
                peak.load(Ordering::Relaxed) / 1024
            )
            }
        });
    let started = Instant::now();
    // The clients end on their own (after the window and their drain).
    run.wait_drained(args.clients, &tasks).await;
    let (outcomes, cpu) = run.finish(measuring, tasks).await;
    let by = match by.await {
        Ok(Ok(by)) => by,
        Ok(Err(err)) => {
            sh.violations.add("bystander", || err);
            Bystander::default()
        }
        Err(err) => {
            sh.violations.add("bystander", || format!("task: {err}"));
            Bystander::default()
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(probe) = rss_probe {
        probe.abort();
    }
    if by.lost > 0 {
        sh.violations.add_n("bystander_lost", by.lost, || {
            format!("{} messages lost", by.lost)
        });
    }
    if by.duplicates > 0 {
        sh.violations
            .add_n("bystander_duplicate", by.duplicates, || {
                format!("{} messages twice", by.duplicates)
            });
    }

    // Every ack in history.
    let acked: Vec<(usize, u64, usize, u64)> = outcomes
        .iter()
        .enumerate()
        .flat_map(|(c, o)| o.acked.iter().map(move |&(r, seq, n)| (r, seq, c, n)))
        .collect();
    let history = match check_history(&sh, &acked).await {
        Ok(check) => check,
        Err(err) => {
            sh.violations.add("history_check", || err);
            HistoryCheck::default()
        }
    };
    let pong = final_ping(&sh).await;
    if let Err(err) = &pong {
        let err = err.clone();
        sh.violations.add("no_pong_at_end", || err);
    }
    let peak_rss_kib = args
        .output
        .server_pid
        .first()
        .copied()
        .and_then(rss_kib)
        .map(|now| peak_rss.fetch_max(now, Ordering::Relaxed).max(now));
    if let (Some(bound), Some(peak)) = (args.max_rss, peak_rss_kib) {
        if peak > bound * 1024 {
            sh.violations.add("rss_over_bound", || {
                format!(
                    "server RSS peaked at {} MiB, bound {bound} MiB",
                    peak / 1024
                )
            });
        }
    }
    if args.max_rss.is_some() && peak_rss_kib.is_none() {
        sh.violations.add("rss_unreadable", || {
            "--max-rss needs --server-pid of a running server".into()
        });
    }

    let (kinds, samples) = sh.violations.take();
    let total: u64 = kinds.values().sum();
    let events = sh.events.take();
    let failures = run.setup.failures();
    let c = &sh.counts;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let rtt = by.rtt.unwrap_or_else(common::latency_histogram);
    let e2e = by.e2e.unwrap_or_else(common::latency_histogram);
    let expiry = std::mem::replace(
        &mut *sh.expiry_delays.lock().unwrap_or_else(|e| e.into_inner()),
        common::latency_histogram(),
    );
    let tokens = sh.auth.as_ref().map(|auth| {
        serde_json::json!({
            "ttl_s": [auth.ttl.lo.as_secs_f64(), auth.ttl.hi.as_secs_f64()],
            "leeway_s": auth.leeway.as_secs(),
            "renewals": load(&c.renewals),
            "lapses": load(&c.lapses),
            "lapses_unwatched": load(&c.lapses_unwatched),
            "missed_renewals": load(&c.missed_renewals),
            "bystander_renewals": load(&c.bystander_renewals),
            "expiry_close_after_us": common::latency_json(&expiry),
        })
    });
    let result = serde_json::json!({
        "scenario": "chaos",
        "url": args.url,
        "seed": seed,
        "clients": args.clients,
        "rooms": args.rooms,
        "duration_s": args.timing.duration.as_secs_f64(),
        "actions_per_client_per_s": args.actions,
        "elapsed_s": (elapsed * 10.0).round() / 10.0,
        "actions": load(&c.actions),
        "published": load(&c.published),
        "resends": load(&c.duplicate_acks),
        "directs": load(&c.directs),
        "malformed": load(&c.malformed),
        "disconnects": load(&c.disconnects),
        "reconnects": load(&c.reconnects),
        "slow_reads": load(&c.slow_reads),
        "slow_consumer_closes": load(&c.slow_consumer_closes),
        "resets": load(&c.resets),
        "received": load(&c.received),
        "tokens": tokens,
        "history_checked": history.checked,
        "history_expired": history.expired,
        "history_pages": history.pages,
        "bystander": {
            "published": by.published,
            "received": by.received,
            "lost": by.lost,
            "duplicates": by.duplicates,
            "rtt_us": common::latency_json(&rtt),
            "e2e_us": common::latency_json(&e2e),
        },
        "peak_rss_mib": peak_rss_kib.map(|k| (k as f64 / 1024.0 * 10.0).round() / 10.0),
        "max_rss_mib": args.max_rss,
        "answers_ping": pong.is_ok(),
        "violations_total": total,
        "violation_counts": kinds,
        "violations": samples,
        "connection_ends": events.ends,
        "failures": failures.len(),
        "failure_samples": failures.iter().take(5).collect::<Vec<_>>(),
    });
    println!(
        "chaos {} ({} clients, {} rooms, {:?}, seed {seed}{})",
        args.url,
        args.clients,
        args.rooms,
        args.timing.duration,
        if sh.auth.is_some() { ", auth on" } else { "" }
    );
    println!(
        "  actions      {} (published {}, resent {}, directs {}, malformed {}, disconnects {}, slow reads {})",
        load(&c.actions),
        load(&c.published),
        load(&c.duplicate_acks),
        load(&c.directs),
        load(&c.malformed),
        load(&c.disconnects),
        load(&c.slow_reads)
    );
    println!(
        "  connections  {} reconnects, {} closed as slow consumers, {} resets",
        load(&c.reconnects),
        load(&c.slow_consumer_closes),
        load(&c.resets)
    );
    if sh.auth.is_some() {
        println!(
            "  tokens       {} renewed, {} lapsed and closed 4001 (+{} mid-action), {} renewals missed while busy, bystander {} renewed",
            load(&c.renewals),
            load(&c.lapses),
            load(&c.lapses_unwatched),
            load(&c.missed_renewals),
            load(&c.bystander_renewals)
        );
        println!(
            "  expiry µs    close after exp + leeway: {}",
            common::latency_line(&expiry)
        );
    }
    println!(
        "  history      {} acked seqs checked in {} pages ({} beyond retention)",
        history.checked, history.pages, history.expired
    );
    println!(
        "  bystander    {} published, {} received, {} lost, {} duplicated",
        by.published, by.received, by.lost, by.duplicates
    );
    println!("  rtt µs       {}", common::latency_line(&rtt));
    println!("  e2e µs       {}", common::latency_line(&e2e));
    match peak_rss_kib {
        Some(k) => println!(
            "  server rss   peak {} MiB{}",
            k / 1024,
            args.max_rss
                .map(|b| format!(" (bound {b} MiB)"))
                .unwrap_or_default()
        ),
        None => println!("  server rss   n/a (no --server-pid)"),
    }
    println!("  cpu          {}", cpu.line());
    println!("  end          server answers ping: {}", pong.is_ok());
    println!("  violations   {total}");
    for (kind, count) in &kinds {
        println!("    {count} × {kind}");
    }
    for sample in samples.iter().take(10) {
        println!("    e.g. {sample}");
    }
    for failure in failures.iter().take(5) {
        println!("  failure      {failure}");
    }
    let mut problems = Problems::default();
    problems.check(total > 0, || format!("{total} violations: {kinds:?}"));
    problems.check(!failures.is_empty(), || {
        format!("{} connections failed to set up", failures.len())
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

    fn shared(rooms: usize) -> Shared {
        Shared {
            run: Run::new(Target::parse("ws://127.0.0.1:1").unwrap(), 1, 0),
            cfg: Cfg {
                clients: 2,
                rooms,
                seed: 1,
                prefix: "t".into(),
                think: Duration::from_millis(1),
            },
            auth: None,
            expiry_delays: Mutex::new(common::latency_histogram()),
            violations: Violations::default(),
            events: common::Events::default(),
            room_top: (0..rooms).map(|_| AtomicU64::new(0)).collect(),
            done: AtomicUsize::new(0),
            counts: Counts::default(),
        }
    }

    fn kinds(sh: &Shared) -> BTreeMap<&'static str, u64> {
        sh.violations.take().0
    }

    #[test]
    fn the_same_seed_gives_the_same_choices() {
        let mut a = Rng::new(42, 7);
        let mut b = Rng::new(42, 7);
        let mut c = Rng::new(42, 8);
        let xs: Vec<Action> = (0..50).map(|_| pick(&mut a)).collect();
        let ys: Vec<Action> = (0..50).map(|_| pick(&mut b)).collect();
        let zs: Vec<Action> = (0..50).map(|_| pick(&mut c)).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        assert!(WEIGHTS
            .iter()
            .all(|(action, _)| (0..10_000).any(|_| pick(&mut a) == *action)));
    }

    #[test]
    fn late_acks_fill_holes_and_repeats_are_duplicates() {
        let sh = shared(1);
        let mut t = RoomTrack {
            last: 10,
            conn_prev: 10,
            replay_upto: 10,
            joined: true,
            ..RoomTrack::default()
        };
        // Our publish got seq 12; its ack comes after message 13.
        t.message(11, &sh, "c0");
        t.message(13, &sh, "c0");
        assert_eq!(t.since(), 11);
        t.own_ack(12, &sh, "c0");
        assert!(t.missing.is_empty());
        assert_eq!(t.since(), 13);
        assert!(kinds(&sh).is_empty());
        t.message(13, &sh, "c0");
        assert_eq!(kinds(&sh).get("duplicate"), Some(&1));
        // A hole nobody fills is still missing at the end.
        t.message(16, &sh, "c0");
        assert_eq!(t.missing.iter().copied().collect::<Vec<_>>(), [14, 15]);
        // A reset skips what it announces.
        t.reset(15);
        assert!(t.missing.is_empty());
        assert!(kinds(&sh).is_empty());
    }

    #[test]
    fn a_resume_replays_from_the_oldest_hole_without_duplicates() {
        let sh = shared(1);
        let mut t = RoomTrack {
            last: 20,
            missing: [18].into_iter().collect(),
            conn_prev: 20,
            joined: true,
            ..RoomTrack::default()
        };
        // Reconnect: the replay starts after 17 and repeats 19 and 20.
        t.replay_upto = t.last;
        t.conn_prev = t.since();
        assert_eq!(t.conn_prev, 17);
        for seq in [18, 19, 20, 21] {
            t.message(seq, &sh, "c0");
        }
        assert!(kinds(&sh).is_empty());
        assert!(t.missing.is_empty());
        assert_eq!(t.last, 21);
        // Out of order on one connection is a violation.
        t.message(19, &sh, "c0");
        assert_eq!(kinds(&sh).get("duplicate"), Some(&1));
    }

    #[test]
    fn history_pages_must_be_contiguous() {
        assert!(check_history_page(
            br#"{"type":"history","room":"r","messages":[{"seq":4},{"seq":5}]}"#
        )
        .is_ok());
        assert!(check_history_page(
            br#"{"type":"history","room":"r","messages":[{"seq":4},{"seq":6}]}"#
        )
        .is_err());
        assert!(check_history_page(br#"{"type":"error","code":"x"}"#).is_err());
    }

    #[test]
    fn token_flags_parse() {
        let secs = Duration::from_secs;
        assert_eq!(
            parse_ttl("2s..6s"),
            Ok(TtlRange {
                lo: secs(2),
                hi: secs(6)
            })
        );
        assert_eq!(
            parse_ttl("3s"),
            Ok(TtlRange {
                lo: secs(3),
                hi: secs(3)
            })
        );
        assert!(parse_ttl("6s..2s").is_err());
        assert!(parse_ttl("500ms..2s").is_err());
        assert!(parse_ttl("2s..").is_err());
        assert_eq!(parse_leeway("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_leeway("0"), Ok(Duration::ZERO));
        assert_eq!(parse_leeway("1s"), Ok(secs(1)));
        assert!(parse_leeway("1.5s").is_err());
        assert!(parse_leeway("-1s").is_err());
    }

    #[test]
    fn exp_is_rounded_up_to_live_at_least_the_ttl() {
        let secs = Duration::from_secs;
        assert_eq!(token_exp(secs(100), secs(5)), 105);
        assert_eq!(token_exp(Duration::from_millis(100_200), secs(5)), 106);
        assert_eq!(token_exp(Duration::from_millis(100_999), secs(2)), 103);
    }

    fn auth(lo: u64, hi: u64, leeway: u64) -> Auth {
        let ttl = TtlRange {
            lo: Duration::from_secs(lo),
            hi: Duration::from_secs(hi),
        };
        Auth::new("s3cret", ttl, Duration::from_secs(leeway))
    }

    #[test]
    fn tokens_carry_the_user_and_exp_signed_with_the_secret() {
        let auth = auth(2, 6, 1);
        let mut rng = Rng::new(7, TOKEN_STREAM);
        let before = since_epoch();
        let (jwt, token) = auth.issue("t-c3", &mut rng, true).unwrap();
        let after = since_epoch();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        let key = jsonwebtoken::DecodingKey::from_secret(b"s3cret");
        let claims = jsonwebtoken::decode::<serde_json::Value>(&jwt, &key, &validation)
            .unwrap()
            .claims;
        assert_eq!(claims["sub"], "t-c3");
        assert_eq!(claims["exp"].as_u64(), Some(token.exp));
        assert!(token.exp >= token_exp(before, Duration::from_secs(2)));
        assert!(token.exp <= token_exp(after, Duration::from_secs(6)));
        // Another secret does not verify it.
        let other = jsonwebtoken::DecodingKey::from_secret(b"other");
        assert!(jsonwebtoken::decode::<serde_json::Value>(&jwt, &other, &validation).is_err());
    }

    #[test]
    fn renewals_come_before_exp_and_closes_after_the_leeway() {
        let auth = auth(2, 6, 1);
        let mut rng = Rng::new(3, TOKEN_STREAM);
        for _ in 0..200 {
            let issued = Instant::now();
            let (_, t) = auth.issue("u", &mut rng, true).unwrap();
            // What was left of the lifetime when issued: 2..7 s.
            let left = t.closes_at - issued - Duration::from_secs(1);
            assert!(left >= Duration::from_secs(2) && left <= Duration::from_secs(7));
            let renew_in = t.renew_at.saturating_duration_since(issued);
            assert!(renew_in >= left.mul_f64(RENEW_FROM) - Duration::from_millis(5));
            assert!(renew_in <= left.mul_f64(RENEW_TO) + Duration::from_millis(5));
            assert!(t.renewal_sent.is_none());
        }
    }

    #[test]
    fn a_share_of_tokens_lapses_the_same_for_the_same_seed() {
        let auth = auth(2, 6, 1);
        let fates = |seed, may_lapse| {
            let mut rng = Rng::new(seed, TOKEN_STREAM);
            (0..2000)
                .map(|_| auth.issue("u", &mut rng, may_lapse).unwrap().1.lapse)
                .collect::<Vec<bool>>()
        };
        let a = fates(11, true);
        assert_eq!(a, fates(11, true));
        assert_ne!(a, fates(12, true));
        let share = a.iter().filter(|&&l| l).count() as f64 / a.len() as f64;
        assert!((share - LAPSE_SHARE).abs() < 0.05, "{share}");
        // The bystander's never lapse.
        assert!(fates(11, false).iter().all(|&l| !l));
    }

    fn token(now: Instant, lapse: bool) -> Token {
        Token {
            exp: 0,
            closes_at: now + Duration::from_secs(4),
            renew_at: now + Duration::from_secs(2),
            lapse,
            renewal_sent: None,
        }
    }

    #[test]
    fn a_token_turns_into_renew_or_lapse_when_due() {
        let now = Instant::now();
        let secs = |s: f64| now + Duration::from_secs_f64(s);
        let keep = token(now, false);
        assert_eq!(keep.step(secs(1.9)), None);
        assert_eq!(keep.step(secs(2.0)), Some(Action::Renew));
        let lapse = token(now, true);
        assert_eq!(lapse.step(secs(2.0)), None);
        assert_eq!(lapse.step(secs(3.7)), None);
        assert_eq!(lapse.step(secs(3.75)), Some(Action::Lapse));
    }

    #[test]
    fn closes_are_judged_by_code_and_time() {
        let now = Instant::now();
        let at = |s: f64| now + Duration::from_secs_f64(s);
        let expired = "close 4001 token expired";
        let lapse = token(now, true);
        let keep = token(now, false);
        // Auth off, or any other end: lost; 4008 is allowed either way.
        assert_eq!(judge_end(expired, None, at(5.0)), Verdict::Lost);
        assert_eq!(
            judge_end("close 4001 unauthorized", Some(&lapse), at(5.0)),
            Verdict::Lost
        );
        assert_eq!(
            judge_end("eof without close frame", Some(&lapse), at(5.0)),
            Verdict::Lost
        );
        assert_eq!(
            judge_end("close 4008 slow consumer", Some(&keep), at(1.0)),
            Verdict::SlowConsumer
        );
        // Before exp + leeway: early, whatever the client meant to do.
        assert_eq!(
            judge_end(expired, Some(&lapse), at(3.9)),
            Verdict::ExpiredEarly
        );
        assert_eq!(
            judge_end(expired, Some(&keep), at(3.0)),
            Verdict::ExpiredEarly
        );
        // After: a lapse, or a renewal the client did not send in time.
        assert_eq!(judge_end(expired, Some(&lapse), at(4.0)), Verdict::Lapsed);
        assert_eq!(
            judge_end(expired, Some(&keep), at(4.5)),
            Verdict::MissedRenewal
        );
        let late = Token {
            renewal_sent: Some(at(3.5)),
            ..keep
        };
        assert_eq!(
            judge_end(expired, Some(&late), at(4.5)),
            Verdict::MissedRenewal
        );
        // A renewal sent in time must be honoured.
        let sent = Token {
            renewal_sent: Some(at(2.0)),
            ..keep
        };
        assert_eq!(
            judge_end(expired, Some(&sent), at(4.5)),
            Verdict::RenewalIgnored
        );
    }

    #[test]
    fn the_expiry_notice_is_not_an_unexpected_error_with_auth_on() {
        let sh = shared(1);
        let notice = br#"{"type":"error","code":"unauthorized","message":"token expired: send hello with a fresh token before expiry"}"#;
        assert!(is_expiry_notice(notice));
        assert!(!is_expiry_notice(
            br#"{"type":"error","code":"unauthorized","message":"bad token signature"}"#
        ));
        let mut st = ClientState::new(0, "t-c0".into(), vec![0], vec![RoomTrack::default()]);
        st.on_event(&sh, notice);
        assert_eq!(kinds(&sh).get("unexpected_error"), Some(&1));
        st.token = Some(token(Instant::now(), true));
        st.on_event(&sh, notice);
        assert!(kinds(&sh).is_empty());
        assert_eq!(
            hello_cmd("a.b.c", "r1"),
            r#"{"type":"hello","token":"a.b.c","id":"r1"}"#
        );
        assert!(check_welcome(
            br#"{"type":"welcome","user":"t-c0","session":"ab","heartbeat":25,"id":"r1"}"#,
            "t-c0"
        )
        .is_ok());
        assert!(check_welcome(
            br#"{"type":"welcome","user":"t-c1","session":"ab","heartbeat":25}"#,
            "t-c0"
        )
        .is_err());
        assert!(
            check_welcome(br#"{"type":"error","code":"forbidden","id":"r1"}"#, "t-c0").is_err()
        );
    }

    #[test]
    fn events_reach_the_right_track() {
        let sh = shared(2);
        let tracks = (0..2)
            .map(|_| RoomTrack {
                joined: true,
                ..RoomTrack::default()
            })
            .collect();
        let mut st = ClientState::new(0, "t-c0".into(), vec![0, 1], tracks);
        st.on_event(
            &sh,
            br#"{"type":"message","room":"t-1","seq":1,"from":"t-c1","ts":1,"body":{"c":1,"n":0}}"#,
        );
        assert_eq!((st.tracks[0].last, st.tracks[1].last), (0, 1));
        st.on_event(
            &sh,
            br#"{"type":"direct","from":"t-c1","to":"t-c0","seq":1,"gid":1,"ts":1,"body":1}"#,
        );
        st.on_event(
            &sh,
            br#"{"type":"direct","from":"t-c1","to":"t-c0","seq":3,"gid":2,"ts":1,"body":1}"#,
        );
        st.on_event(
            &sh,
            br#"{"type":"direct","from":"t-c0","to":"t-c1","seq":9,"gid":3,"ts":1,"body":1}"#,
        );
        assert_eq!(st.inbox_last, 3);
        st.on_event(&sh, br#"{"type":"reset","room":"t-0","seq":7}"#);
        assert_eq!(st.tracks[0].last, 7);
        let found = kinds(&sh);
        assert_eq!(found.get("inbox_gap"), Some(&1));
        st.on_event(
            &sh,
            br#"{"type":"message","room":"elsewhere","seq":1,"from":"x","ts":1,"body":1}"#,
        );
        assert_eq!(kinds(&sh).get("foreign_message"), Some(&1));
    }
}
