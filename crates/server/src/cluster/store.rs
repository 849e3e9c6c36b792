//! [`RedisStore`]: the [`Store`] of cluster mode. N nodes share one Redis
//! (7.0 or later: Functions), which holds the history, the counters and the
//! dedupe ids of all of them, and numbers every entry itself
//! ([`Store::commit_assigning`]), so seqs are gapless and shared whichever
//! node writes.
//!
//! # Layout
//!
//! Every key starts with `sb:` (names in [`keys`]). A room's keys carry the
//! hash tag `{r:ROOM}`, a user's `{u:USER}`:
//!
//! - room: `sb:{r:R}:meta` HASH `seq` (last seq ever), `ts`; `sb:{r:R}:log`
//!   ZSET score = seq, member = the record; `sb:{r:R}:readers` SET of the
//!   users with a read position in it; channel `sb:{r:R}:ch`.
//! - inbox: `sb:{u:U}:meta` HASH `seq`, `ts`; `sb:{u:U}:inbox` ZSET score =
//!   seq, member = the record; `sb:{u:U}:cur` HASH device → upto;
//!   `sb:{u:U}:reads` HASH key → upto; `sb:{u:U}:peers` ZSET peer → newest
//!   gid written between them; channel `sb:{u:U}:ch`.
//! - `sb:gid` the last gid; `sb:gids` HASH gid → `TO\x1fSEQ\x1fFROM` (where
//!   an inbox entry is); `sb:conv:A\x1fB` (A < B) ZSET of the messages
//!   between A and B, score = gid, member = `TO\x1fSEQ`.
//! - `sb:rooms`, `sb:inboxes`: the names with a counter; `sb:floors:room`,
//!   `sb:floors:inbox` HASH bucket → floor; `sb:dd` HASH
//!   `USER\x1fTARGET\x1fID` → `SEQ|TS` and `sb:dd:ts` ZSET of the same
//!   fields by ts (expiry, recovery).
//!
//! Entries are ZSET members rather than STREAM entries because an edit or
//! a recall changes a stored message in place, which a stream cannot do.
//!
//! # Records
//!
//! A record is JSON with a fixed field order, encoded by serde here:
//! `{"seq":S,"gid":G,"room":..,"to":..,"from":..,"ts":T,"kind":K,
//! "target":X,"edited":E,"recalled":R,"body":<the body verbatim>}` (`room`
//! in room records only, `to` in inbox records only, gid 0 in rooms). It
//! starts with the two numbers Redis assigns: a node sends the rest (the
//! "tail") and the function prepends `{"seq":S,"gid":G,`.
//!
//! # Writes
//!
//! A batch is one call of the `commit` function (`functions.lua`), applied
//! atomically. In assign mode ([`Store::commit_assigning`]) it checks each
//! entry's dedupe id, numbers the entry from the shared counter (and gid),
//! keeps the newest `retention_count` entries, and publishes
//! `s|NODE:CONN|<record>` on the room's channel, or on the recipient's and
//! the sender's user channels (`CONN`: the sending connection, empty if
//! none), so every node delivers the entry and the sending node acks it
//! instead. In given mode ([`Store::commit`]) it stores what it is given and
//! fails the whole batch, before writing anything, if a seq is taken.
//! Edits and recalls are resolved here (read, change, re-encode) and sent as
//! `replace` ops that apply only if the stored record is still the one read,
//! and (assign mode) only if the entry they follow was not a duplicate.
//!
//! Store methods block: they are called from the writer thread and
//! blocking tasks, never from async code.

use std::collections::hash_map::Entry as Slot;
use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use redis::{ErrorKind, FromRedisValue, RedisError, ServerErrorKind, Value};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::durability::{check_durability, Durability};
use super::{keys, LIBRARY};
use crate::store::{
    Assigned, Counter, DedupeRecord, DirectRecord, Kind, Original, Recovered, Result, RoomRecord,
    Store, StoreError, Write, MAX_DEVICE_CURSORS, MAX_UNREAD,
};

/// How to reach Redis and the limits every write applies.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// `redis://HOST:PORT[/DB]` (or `redis+unix://`; `rediss://` needs a
    /// TLS feature of the `redis` crate this build does not enable).
    pub url: String,
    /// This node's id, carried in every announcement so a node knows its
    /// own entries. Must not contain `|`.
    pub node: String,
    /// Bound on a connect and on each request's reads and writes: how long
    /// a call waits while Redis is down or stuck before it answers
    /// `unavailable`. A commit that timed out may still have been applied
    /// (a retry with the same ids is deduplicated).
    pub timeout: Duration,
    /// Entries kept per room and per inbox when the store numbers them
    /// (assign mode). At least 1.
    pub retention_count: u64,
    /// How long a command id counts as a repeat in assign mode (an older
    /// one not yet expired by [`Store::trim`] is ignored). At least 1 ms.
    pub dedupe_window: Duration,
    /// Several stores (nodes) share the data set: [`Store::trim`] runs on
    /// one of them per `trim_every` (a lease in Redis), not on each, since
    /// every run scans every room and inbox.
    pub trim_every: Option<Duration>,
}

impl RedisSettings {
    /// The defaults (timeout 2 s, 10 000 entries, dedupe window 5 min) for
    /// `url` and `node`.
    pub fn new(url: impl Into<String>, node: impl Into<String>) -> RedisSettings {
        RedisSettings {
            url: url.into(),
            node: node.into(),
            timeout: Duration::from_secs(2),
            retention_count: 10_000,
            dedupe_window: Duration::from_secs(300),
            trim_every: None,
        }
    }
}

/// Idle connections kept for reuse.
const POOL: usize = 8;
/// The error text of a call to a function Redis does not have.
const NO_FUNCTION: &str = "Function not found";
/// What `{"seq":0,"gid":0,` leaves of a record: see the module doc.
const TAIL_PREFIX: &str = "{\"seq\":0,\"gid\":0,";
/// Entries read per round trip when a read pages through a log.
const PAGE: usize = 256;

/// A record as stored (a ZSET member). Field order is part of the format.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    seq: u64,
    gid: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    room: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    from: String,
    ts: u64,
    kind: i64,
    target: u64,
    edited: u64,
    recalled: u64,
    body: Box<RawValue>,
}

fn raw(body: &str) -> Result<Box<RawValue>> {
    RawValue::from_string(body.to_owned())
        .map_err(|e| StoreError::Internal(format!("a body is not JSON: {e}")))
}

fn null() -> Box<RawValue> {
    RawValue::NULL.to_owned()
}

impl TryFrom<&RoomRecord> for Record {
    type Error = StoreError;
    fn try_from(r: &RoomRecord) -> Result<Record> {
        Ok(Record {
            seq: r.seq,
            gid: 0,
            room: Some(r.room.clone()),
            to: None,
            from: r.from.clone(),
            ts: r.ts,
            kind: r.kind.code(),
            target: r.target,
            edited: r.edited,
            recalled: r.recalled,
            body: raw(&r.body)?,
        })
    }
}

impl TryFrom<&DirectRecord> for Record {
    type Error = StoreError;
    fn try_from(d: &DirectRecord) -> Result<Record> {
        Ok(Record {
            seq: d.seq,
            gid: d.gid,
            room: None,
            to: Some(d.to.clone()),
            from: d.from.clone(),
            ts: d.ts,
            kind: d.kind.code(),
            target: d.target,
            edited: d.edited,
            recalled: d.recalled,
            body: raw(&d.body)?,
        })
    }
}

impl From<Record> for RoomRecord {
    fn from(r: Record) -> RoomRecord {
        RoomRecord {
            room: r.room.unwrap_or_default(),
            seq: r.seq,
            from: r.from,
            ts: r.ts,
            body: r.body.get().to_owned(),
            kind: Kind::from_code(r.kind),
            target: r.target,
            edited: r.edited,
            recalled: r.recalled,
            sender: None,
        }
    }
}

impl From<Record> for DirectRecord {
    fn from(r: Record) -> DirectRecord {
        DirectRecord {
            gid: r.gid,
            to: r.to.unwrap_or_default(),
            seq: r.seq,
            from: r.from,
            ts: r.ts,
            body: r.body.get().to_owned(),
            kind: Kind::from_code(r.kind),
            target: r.target,
            edited: r.edited,
            recalled: r.recalled,
            sender: None,
        }
    }
}

impl Record {
    fn encode(&self) -> Result<String> {
        serde_json::to_string(self)
            .map_err(|e| StoreError::Internal(format!("encoding a record: {e}")))
    }

    /// The record without its seq and gid, for the function to complete.
    fn tail(&self) -> Result<String> {
        let mut bare = self.clone();
        bare.seq = 0;
        bare.gid = 0;
        let text = bare.encode()?;
        text.strip_prefix(TAIL_PREFIX)
            .map(str::to_owned)
            .ok_or_else(|| StoreError::Internal(format!("record does not start {TAIL_PREFIX}")))
    }

    fn decode(text: &str) -> Result<Record> {
        serde_json::from_str(text)
            .map_err(|e| StoreError::Internal(format!("damaged record in redis: {e}: {text:.200}")))
    }

    fn is_message(&self) -> bool {
        self.kind == Kind::Message.code()
    }
}

/// A room entry as announced on a channel (`s|ORIGIN|RECORD`, see
/// `cluster::bus`).
pub(crate) fn announced_room(record: &[u8]) -> Option<RoomRecord> {
    serde_json::from_slice::<Record>(record)
        .ok()
        .map(Into::into)
}

/// An inbox entry as announced on a channel.
pub(crate) fn announced_direct(record: &[u8]) -> Option<DirectRecord> {
    serde_json::from_slice::<Record>(record)
        .ok()
        .map(Into::into)
}

/// Where `sb:gids` says an inbox entry is: (to, seq, from).
fn parse_location(text: &str) -> Result<(String, u64, String)> {
    let mut parts = text.splitn(3, keys::SEP);
    match (
        parts.next(),
        parts.next().and_then(|s| s.parse().ok()),
        parts.next(),
    ) {
        (Some(to), Some(seq), Some(from)) => Ok((to.to_owned(), seq, from.to_owned())),
        _ => Err(StoreError::Internal(format!(
            "damaged gid index entry in redis: {text:?}"
        ))),
    }
}

/// A conversation index member `TO\x1fSEQ`.
fn parse_member(text: &str) -> Result<(String, u64)> {
    text.split_once(keys::SEP)
        .and_then(|(to, seq)| Some((to.to_owned(), seq.parse().ok()?)))
        .ok_or_else(|| {
            StoreError::Internal(format!(
                "damaged conversation index member in redis: {text:?}"
            ))
        })
}

/// An exclusive score bound.
fn above(n: u64) -> String {
    format!("({n}")
}

fn json_string(s: &str) -> Result<String> {
    serde_json::to_string(s).map_err(|e| StoreError::Internal(format!("encoding a name: {e}")))
}

/// One connection; `broken` once an error left it in an unknown state.
struct Conn {
    inner: redis::Connection,
    broken: bool,
}

impl Conn {
    fn run<T: FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T> {
        cmd.query(&mut self.inner).map_err(|e| self.fail(&e))
    }

    fn run_pipe<T: FromRedisValue>(&mut self, pipe: &redis::Pipeline) -> Result<T> {
        pipe.query(&mut self.inner).map_err(|e| self.fail(&e))
    }

    /// A function call; if Redis lost the library (restarted or flushed
    /// without it), it is loaded again and the call made once more (a call
    /// of a missing function did nothing).
    fn fcall(&mut self, cmd: &redis::Cmd) -> Result<Value> {
        match cmd.query::<Value>(&mut self.inner) {
            Err(e) if e.to_string().contains(NO_FUNCTION) => {
                tracing::warn!(
                    "redis has no switchboard functions (restarted empty?): loading them again"
                );
                self.load_library()?;
                self.run(cmd)
            }
            other => other.map_err(|e| self.fail(&e)),
        }
    }

    fn load_library(&mut self) -> Result<()> {
        let mut load = redis::cmd("FUNCTION");
        load.arg("LOAD").arg("REPLACE").arg(LIBRARY);
        self.run::<Value>(&load).map(drop)
    }

    fn fail(&mut self, err: &RedisError) -> StoreError {
        // Only an error reply leaves the connection in step; after anything
        // else (a timeout mid-reply, a reset) the next call connects anew.
        if !matches!(err.kind(), ErrorKind::Server(_)) || err.is_unrecoverable_error() {
            self.broken = true;
        }
        map_error(err)
    }
}

/// The cluster store: see the module doc.
pub struct RedisStore {
    client: redis::Client,
    settings: RedisSettings,
    pool: Mutex<Vec<Conn>>,
    /// The data set's identity (`sb:cluster`) when this store opened: a
    /// commit that finds another (or none) refuses to number anything, as
    /// Redis lost the counters a seq must continue from.
    epoch: String,
}

impl RedisStore {
    /// Connects, loads the function library (replacing an older copy of the
    /// same version, so the code that runs is this build's) and checks that
    /// Redis answers.
    pub fn open(settings: RedisSettings) -> Result<RedisStore> {
        if settings.node.contains('|') {
            return Err(StoreError::Internal(
                "a node id must not contain '|'".into(),
            ));
        }
        if settings.retention_count == 0 {
            return Err(StoreError::Internal(
                "retention must keep at least 1 entry".into(),
            ));
        }
        if settings.dedupe_window.as_millis() == 0 {
            return Err(StoreError::Internal(
                "the dedupe window must be at least 1 ms".into(),
            ));
        }
        let client = redis::Client::open(settings.url.as_str()).map_err(|e| {
            StoreError::Unavailable(format!("redis URL {}: {e}", super::redacted(&settings.url)))
        })?;
        let mut store = RedisStore {
            client,
            settings,
            pool: Mutex::new(Vec::new()),
            epoch: String::new(),
        };
        store.epoch = store.with(|conn| {
            conn.load_library()?;
            // The first node to open an empty data set names it; the rest
            // learn its name.
            let mut set = redis::cmd("SET");
            set.arg(keys::EPOCH)
                .arg(format!("{}-{}", crate::hub::unix_ms(), std::process::id()))
                .arg("NX");
            conn.run::<Value>(&set)?;
            let mut get = redis::cmd("GET");
            get.arg(keys::EPOCH);
            conn.run::<String>(&get)
        })?;
        Ok(store)
    }

    /// Whether the Redis configuration backs "an ack means durable".
    pub fn durability(&self) -> Result<Durability> {
        self.read(|conn| check_durability(&mut conn.inner))
    }

    fn connect(&self) -> Result<Conn> {
        let timeout = self.settings.timeout;
        let inner = self
            .client
            .get_connection_with_timeout(timeout)
            .map_err(|e| map_error(&e))?;
        inner
            .set_read_timeout(Some(timeout))
            .and_then(|()| inner.set_write_timeout(Some(timeout)))
            .map_err(|e| map_error(&e))?;
        Ok(Conn {
            inner,
            broken: false,
        })
    }

    /// Runs `f` on a pooled connection (a new one if none is idle). For
    /// writes: a call that failed is not repeated (it may have been
    /// applied).
    fn with<T>(&self, mut f: impl FnMut(&mut Conn) -> Result<T>) -> Result<T> {
        self.attempt(&mut f).0
    }

    /// [`RedisStore::with`] for reads, which may be repeated: if a pooled
    /// connection broke (Redis restarted since it was last used), once
    /// more on a new connection, so a read after an outage does not fail
    /// for a connection to a Redis that is gone.
    fn read<T>(&self, mut f: impl FnMut(&mut Conn) -> Result<T>) -> Result<T> {
        match self.attempt(&mut f) {
            (Err(_), true) => self.attempt(&mut f).0,
            (result, _) => result,
        }
    }

    /// One try; true with it if a pooled connection broke.
    fn attempt<T>(&self, f: &mut impl FnMut(&mut Conn) -> Result<T>) -> (Result<T>, bool) {
        let pooled = self.pool.lock().pop();
        let was_pooled = pooled.is_some();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => match self.connect() {
                Ok(conn) => conn,
                Err(err) => return (Err(err), false),
            },
        };
        let result = f(&mut conn);
        let broken = conn.broken;
        let mut pool = self.pool.lock();
        if broken {
            // The others most likely went the same way (Redis restarted or
            // the network dropped): connect anew rather than fail a call
            // for each of them.
            pool.clear();
        } else if pool.len() < POOL {
            pool.push(conn);
        }
        (result, was_pooled && broken)
    }

    fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        self.read(|conn| conn.run(cmd))
    }

    /// Records of `key` with score in [min, max], ascending, at most `limit`.
    fn range(&self, key: &str, min: &str, max: &str, limit: usize) -> Result<Vec<Record>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("ZRANGEBYSCORE");
        cmd.arg(key)
            .arg(min)
            .arg(max)
            .arg("LIMIT")
            .arg(0)
            .arg(limit);
        let members: Vec<String> = self.query(&cmd)?;
        members.iter().map(|m| Record::decode(m)).collect()
    }

    /// The first record (by descending score below `before`) that `keep`
    /// accepts, paging through `key`; or the newest `limit` of them.
    fn newest_where(
        &self,
        key: &str,
        before: &str,
        limit: usize,
        keep: impl Fn(&Record) -> bool,
    ) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        let mut offset = 0;
        while out.len() < limit {
            let mut cmd = redis::cmd("ZREVRANGEBYSCORE");
            cmd.arg(key)
                .arg(before)
                .arg("-inf")
                .arg("LIMIT")
                .arg(offset)
                .arg(PAGE);
            let members: Vec<String> = self.query(&cmd)?;
            for m in &members {
                let record = Record::decode(m)?;
                if keep(&record) {
                    out.push(record);
                    if out.len() == limit {
                        break;
                    }
                }
            }
            if members.len() < PAGE {
                break;
            }
            offset += PAGE;
        }
        Ok(out)
    }

    /// The first (lowest score) record of `key`.
    fn oldest(&self, key: &str) -> Result<Option<Record>> {
        let members: Vec<String> = self.query(redis::cmd("ZRANGE").arg(key).arg(0).arg(0))?;
        members.first().map(|m| Record::decode(m)).transpose()
    }

    /// The inbox entries at (to, seq) pairs, in order (missing ones left out).
    fn inbox_entries(&self, at: &[(String, u64)]) -> Result<Vec<Record>> {
        if at.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (to, seq) in at {
            pipe.cmd("ZRANGEBYSCORE")
                .arg(keys::inbox(to))
                .arg(seq)
                .arg(seq);
        }
        let found: Vec<Vec<String>> = self.read(|conn| conn.run_pipe(&pipe))?;
        found
            .iter()
            .flat_map(|members| members.first())
            .map(|m| Record::decode(m))
            .collect()
    }

    fn unread(&self, key: &str, after: u64, mode: &str, name: &str) -> Result<u64> {
        let mut cmd = redis::cmd("FCALL_RO");
        cmd.arg("unread")
            .arg(0)
            .arg(key)
            .arg(after)
            .arg(mode)
            .arg(json_string(name)?)
            .arg(MAX_UNREAD);
        let value = self.read(|conn| conn.fcall(&cmd))?;
        match value {
            Value::Int(n) => Ok(u64::try_from(n).unwrap_or(0)),
            other => Err(StoreError::Internal(format!(
                "unexpected reply from unread: {other:?}"
            ))),
        }
    }

    /// Commits a batch in `assign` or given mode: see the module doc.
    fn apply(&self, batch: &[Write], assign: bool) -> Result<Vec<Assigned>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let expected = batch
            .iter()
            .filter(|w| matches!(w, Write::Room(_) | Write::Direct(_)))
            .count();
        self.with(|conn| {
            let args = self.plan(conn, batch, assign)?;
            let mut cmd = redis::cmd("FCALL");
            cmd.arg("commit").arg(0).arg(args);
            let reply = conn.fcall(&cmd)?;
            let assigned = parse_assigned(reply)?;
            if assigned.len() != expected {
                return Err(StoreError::Internal(format!(
                    "commit answered {} results for {expected} entries",
                    assigned.len()
                )));
            }
            Ok(assigned)
        })
    }

    /// The arguments of one `commit` call for `batch`.
    fn plan(&self, conn: &mut Conn, batch: &[Write], assign: bool) -> Result<Vec<String>> {
        // Assign mode: each entry's dedupe record, by (target, provisional
        // seq), checked by the function with the entry.
        let mut dedupes: HashMap<(String, u64), &DedupeRecord> = HashMap::new();
        if assign {
            for write in batch {
                if let Write::Dedupe(d) = write {
                    dedupes.insert((d.target.clone(), d.seq), d);
                }
            }
        }
        let mut plan = Plan {
            pending: Vec::new(),
            ops: Vec::new(),
            stored: HashMap::new(),
        };
        let mut sequenced = 0;
        for write in batch {
            match write {
                Write::Room(r) => {
                    sequenced += 1;
                    let dedupe = dedupes.remove(&(format!("room:{}", r.room), r.seq));
                    plan.push_entry(Pending {
                        record: Record::try_from(r)?,
                        name: r.room.clone(),
                        room: true,
                        dedupe: dedupe.map(|d| (dedupe_field(d), d.ts)),
                        origin: self.origin(r.sender),
                    });
                }
                Write::Direct(d) => {
                    sequenced += 1;
                    let dedupe = dedupes.remove(&(format!("user:{}", d.to), d.seq));
                    plan.push_entry(Pending {
                        record: Record::try_from(d)?,
                        name: d.to.clone(),
                        room: false,
                        dedupe: dedupe.map(|d| (dedupe_field(d), d.ts)),
                        origin: self.origin(d.sender),
                    });
                }
                // Assign mode: checked and written with its entry.
                Write::Dedupe(_) if assign => {}
                Write::Dedupe(d) => plan.op(&[
                    "dedupe",
                    &dedupe_field(d),
                    &d.seq.to_string(),
                    &d.ts.to_string(),
                ]),
                Write::Cursor { user, device, upto } => {
                    plan.op(&["cursor", user, device, &upto.to_string()])
                }
                // The store keeps retention by count itself in assign mode.
                Write::TrimRoom { .. } | Write::TrimInbox { .. } if assign => {}
                Write::TrimRoom { room, upto } => plan.op(&["trim_room", room, &upto.to_string()]),
                Write::TrimInbox { user, upto } => {
                    plan.op(&["trim_inbox", user, &upto.to_string()])
                }
                Write::ForgetRoom { room } => plan.op(&["forget_room", room]),
                Write::ForgetInbox { user } => plan.op(&["forget_inbox", user]),
                Write::ReadPosition { user, key, upto } => {
                    plan.op(&["read", user, key, &upto.to_string()])
                }
                Write::RoomFloor { bucket, value } => {
                    plan.op(&["room_floor", &bucket.to_string(), &value.to_string()])
                }
                Write::InboxFloor { bucket, value } => {
                    plan.op(&["inbox_floor", &bucket.to_string(), &value.to_string()])
                }
                Write::Amend { original, body, ts } => {
                    // Assign mode: the amend belongs to the entry before it
                    // (the edit or recall entry), and goes with it if that
                    // is a duplicate.
                    let cond = if assign { sequenced } else { 0 };
                    let change = Change::new(body.as_deref(), *ts)?;
                    plan.amend(conn, original, &change, cond, !assign)?;
                }
            }
        }
        let mut args = vec![
            if assign { "assign" } else { "given" }.to_owned(),
            self.epoch.clone(),
            self.settings.retention_count.to_string(),
            MAX_DEVICE_CURSORS.to_string(),
            self.settings.dedupe_window.as_millis().to_string(),
        ];
        for op in plan.ops {
            match op {
                Op::Args(a) => args.extend(a),
                Op::Entry(i) => {
                    let p = &plan.pending[i];
                    let r = &p.record;
                    let (field, dd_ts) = p.dedupe.clone().unwrap_or_default();
                    if p.room {
                        args.extend([
                            "room".to_owned(),
                            p.name.clone(),
                            r.seq.to_string(),
                            r.ts.to_string(),
                            r.tail()?,
                            field,
                            dd_ts.to_string(),
                            p.origin.clone(),
                        ]);
                    } else {
                        args.extend([
                            "direct".to_owned(),
                            p.name.clone(),
                            r.from.clone(),
                            r.seq.to_string(),
                            r.gid.to_string(),
                            r.ts.to_string(),
                            if r.is_message() { "1" } else { "0" }.to_owned(),
                            r.tail()?,
                            field,
                            dd_ts.to_string(),
                            p.origin.clone(),
                        ]);
                    }
                }
            }
        }
        Ok(args)
    }

    /// `NODE:CONN` (`NODE:` without a connection).
    fn origin(&self, sender: Option<u64>) -> String {
        match sender {
            Some(conn) => format!("{}:{conn}", self.settings.node),
            None => format!("{}:", self.settings.node),
        }
    }
}

fn dedupe_field(d: &DedupeRecord) -> String {
    keys::dedupe_field(&d.user, &d.target, &d.id)
}

/// A room or inbox entry of the batch being planned.
struct Pending {
    record: Record,
    /// The room, or the recipient.
    name: String,
    room: bool,
    /// Assign mode: its dedupe field and ts.
    dedupe: Option<(String, u64)>,
    origin: String,
}

enum Op {
    Entry(usize),
    Args(Vec<String>),
}

/// What an edit or recall does to the message (and, a recall, its edits).
struct Change {
    body: Box<RawValue>,
    edited: u64,
    recalled: u64,
}

impl Change {
    fn new(body: Option<&str>, ts: u64) -> Result<Change> {
        Ok(match body {
            Some(body) => Change {
                body: raw(body)?,
                edited: ts,
                recalled: 0,
            },
            None => Change {
                body: null(),
                edited: 0,
                recalled: ts,
            },
        })
    }

    fn recall(&self) -> bool {
        self.recalled != 0
    }

    fn apply(&self, r: &mut Record) {
        r.body = self.body.clone();
        r.edited = r.edited.max(self.edited);
        r.recalled = self.recalled;
    }
}

struct Plan {
    pending: Vec<Pending>,
    ops: Vec<Op>,
    /// Stored records read for amends, by (key, score): as this batch will
    /// have left them, with their member text (None: not held).
    stored: HashMap<(String, u64), Option<(Record, String)>>,
}

impl Plan {
    fn push_entry(&mut self, p: Pending) {
        self.pending.push(p);
        self.ops.push(Op::Entry(self.pending.len() - 1));
    }

    fn op(&mut self, args: &[&str]) {
        self.ops
            .push(Op::Args(args.iter().map(|a| (*a).to_owned()).collect()));
    }

    /// Plans one amend. `in_batch`: entries earlier in this batch are
    /// amended too (given mode: their seqs are final).
    fn amend(
        &mut self,
        conn: &mut Conn,
        original: &Original,
        change: &Change,
        cond: usize,
        in_batch: bool,
    ) -> Result<()> {
        let (room, name, id) = match original {
            Original::Room { room, seq } => (true, room.as_str(), *seq),
            Original::Direct { to, gid } => (false, to.as_str(), *gid),
        };
        // A room message is named by its seq, an inbox one by its gid.
        let id_of = |r: &Record| if room { r.seq } else { r.gid };
        if in_batch {
            for p in self
                .pending
                .iter_mut()
                .filter(|p| p.room == room && p.name == name)
            {
                let r = &mut p.record;
                if id_of(r) == id {
                    change.apply(r);
                } else if change.recall() && r.kind == Kind::Edit.code() && r.target == id {
                    r.body = null();
                }
            }
        }
        let (key, seq) = if room {
            (keys::room_log(name), id)
        } else {
            let at: Option<String> = conn.run(redis::cmd("HGET").arg(keys::GIDS).arg(id))?;
            match at.map(|at| parse_location(&at)).transpose()? {
                Some((to, seq, _)) if to == name => (keys::inbox(name), seq),
                // Not held (or not in this inbox): left alone.
                _ => return Ok(()),
            }
        };
        self.change_stored(conn, &key, seq, cond, |r| change.apply(r))?;
        if change.recall() {
            // A recall erases every version: the edits come after it.
            let later: Vec<(f64, String)> = {
                let mut cmd = redis::cmd("ZRANGEBYSCORE");
                cmd.arg(&key).arg(above(seq)).arg("+inf").arg("WITHSCORES");
                let flat: Vec<String> = conn.run(&cmd)?;
                flat.chunks(2)
                    .filter_map(|pair| match pair {
                        [m, s] => s.parse().ok().map(|s| (s, m.clone())),
                        _ => None,
                    })
                    .collect()
            };
            for (score, member) in later {
                let score = score as u64;
                let slot = self.stored.entry((key.clone(), score));
                let current = match slot {
                    Slot::Occupied(o) => o.into_mut(),
                    Slot::Vacant(v) => v.insert(Some((Record::decode(&member)?, member))),
                };
                let edit = current.as_ref().is_some_and(|(r, _)| {
                    r.kind == Kind::Edit.code() && r.target == id && r.body.get() != "null"
                });
                if edit {
                    self.change_stored(conn, &key, score, cond, |r| r.body = null())?;
                }
            }
        }
        Ok(())
    }

    /// Plans a `replace` of the stored record at (key, score), if held.
    fn change_stored(
        &mut self,
        conn: &mut Conn,
        key: &str,
        score: u64,
        cond: usize,
        f: impl FnOnce(&mut Record),
    ) -> Result<()> {
        let slot = match self.stored.entry((key.to_owned(), score)) {
            Slot::Occupied(o) => o.into_mut(),
            Slot::Vacant(v) => {
                let mut cmd = redis::cmd("ZRANGEBYSCORE");
                cmd.arg(key).arg(score).arg(score);
                let found: Vec<String> = conn.run(&cmd)?;
                let held = match found.into_iter().next() {
                    Some(member) => Some((Record::decode(&member)?, member)),
                    None => None,
                };
                v.insert(held)
            }
        };
        let Some((record, member)) = slot else {
            return Ok(());
        };
        let mut changed = record.clone();
        f(&mut changed);
        let text = changed.encode()?;
        if text != *member {
            self.ops.push(Op::Args(vec![
                "replace".to_owned(),
                key.to_owned(),
                score.to_string(),
                member.clone(),
                text.clone(),
                cond.to_string(),
            ]));
            *record = changed;
            *member = text;
        }
        Ok(())
    }
}

/// The `commit` reply: `{'new', seq, gid}` or `{'dup', seq}` per entry.
fn parse_assigned(reply: Value) -> Result<Vec<Assigned>> {
    let unexpected = |v: &Value| StoreError::Internal(format!("unexpected commit reply: {v:?}"));
    let Value::Array(items) = reply else {
        return Err(unexpected(&reply));
    };
    items
        .iter()
        .map(|item| {
            let Value::Array(parts) = item else {
                return Err(unexpected(item));
            };
            let int = |i: usize| match parts.get(i) {
                Some(Value::Int(n)) => u64::try_from(*n).ok(),
                _ => None,
            };
            let tag = match parts.first() {
                Some(Value::BulkString(tag)) => tag.as_slice(),
                Some(Value::SimpleString(tag)) => tag.as_bytes(),
                _ => b"",
            };
            match (tag, int(1), int(2)) {
                (b"new", Some(seq), Some(gid)) => Ok(Assigned::Stored {
                    seq,
                    gid,
                    reach: int(3).unwrap_or(0),
                }),
                (b"dup", Some(seq), _) => Ok(Assigned::Duplicate { seq }),
                _ => Err(unexpected(item)),
            }
        })
        .collect()
}

impl Store for RedisStore {
    fn recover(&self, dedupe_since: u64) -> Result<Recovered> {
        let counters = |set: &str, meta: fn(&str) -> String, log: fn(&str) -> String| {
            let names: Vec<String> = self.query(redis::cmd("SMEMBERS").arg(set))?;
            let mut out = Vec::with_capacity(names.len());
            for chunk in names.chunks(500) {
                let mut seqs = redis::pipe();
                let mut newest = redis::pipe();
                for name in chunk {
                    seqs.cmd("HGET").arg(meta(name)).arg("seq");
                    newest.cmd("ZRANGE").arg(log(name)).arg(-1).arg(-1);
                }
                let (seqs, newest): (Vec<Option<u64>>, Vec<Vec<String>>) =
                    self.read(|conn| Ok((conn.run_pipe(&seqs)?, conn.run_pipe(&newest)?)))?;
                for ((name, seq), newest) in chunk.iter().zip(seqs).zip(newest) {
                    // A name without a counter was forgotten meanwhile.
                    let Some(seq) = seq else { continue };
                    let last_ts = match newest.first() {
                        Some(m) => Record::decode(m)?.ts,
                        None => 0,
                    };
                    out.push(Counter {
                        name: name.clone(),
                        seq,
                        last_ts,
                    });
                }
            }
            Ok::<_, StoreError>(out)
        };
        let rooms = counters(keys::ROOMS, keys::room_meta, keys::room_log)?;
        let inboxes = counters(keys::INBOXES, keys::user_meta, keys::inbox)?;
        let floors = |key: &str| -> Result<Vec<(u32, u64)>> {
            let map: HashMap<u32, u64> = self.query(redis::cmd("HGETALL").arg(key))?;
            Ok(map.into_iter().collect())
        };
        let room_floors = floors(keys::ROOM_FLOORS)?;
        let inbox_floors = floors(keys::INBOX_FLOORS)?;
        let last_gid: Option<u64> = self.query(redis::cmd("GET").arg(keys::GID))?;
        let fields: Vec<String> = self.query(
            redis::cmd("ZRANGEBYSCORE")
                .arg(keys::DEDUPE_TS)
                .arg(dedupe_since)
                .arg("+inf"),
        )?;
        let mut dedupe = Vec::with_capacity(fields.len());
        for chunk in fields.chunks(500) {
            let values: Vec<Option<String>> =
                self.query(redis::cmd("HMGET").arg(keys::DEDUPE).arg(chunk))?;
            for (field, value) in chunk.iter().zip(values) {
                // Expired meanwhile.
                let Some(value) = value else { continue };
                let mut parts = field.splitn(3, keys::SEP);
                let numbers = value
                    .split_once('|')
                    .and_then(|(s, t)| Some((s.parse().ok()?, t.parse().ok()?)));
                match (parts.next(), parts.next(), parts.next(), numbers) {
                    (Some(user), Some(target), Some(id), Some((seq, ts))) => {
                        dedupe.push(DedupeRecord {
                            user: user.to_owned(),
                            id: id.to_owned(),
                            target: target.to_owned(),
                            seq,
                            ts,
                        })
                    }
                    _ => {
                        return Err(StoreError::Internal(format!(
                            "damaged dedupe entry in redis: {field:?} = {value:?}"
                        )))
                    }
                }
            }
        }
        Ok(Recovered {
            rooms,
            inboxes,
            room_floors,
            inbox_floors,
            last_gid: last_gid.unwrap_or(0),
            dedupe,
        })
    }

    fn commit(&self, batch: &[Write]) -> Result<()> {
        self.apply(batch, false).map(drop)
    }

    fn assigns_seqs(&self) -> bool {
        true
    }

    fn commit_assigning(&self, batch: &[Write]) -> Result<Vec<Assigned>> {
        self.apply(batch, true)
    }

    fn room_after(&self, room: &str, after: u64, limit: usize) -> Result<Vec<RoomRecord>> {
        let records = self.range(&keys::room_log(room), &above(after), "+inf", limit)?;
        Ok(records.into_iter().map(RoomRecord::from).collect())
    }

    fn room_before(&self, room: &str, before: u64, limit: usize) -> Result<Vec<RoomRecord>> {
        let mut records = self.newest_where(
            &keys::room_log(room),
            &above(before),
            limit,
            Record::is_message,
        )?;
        records.reverse();
        Ok(records.into_iter().map(RoomRecord::from).collect())
    }

    fn room_entry(&self, room: &str, seq: u64) -> Result<Option<RoomRecord>> {
        let seq = seq.to_string();
        let records = self.range(&keys::room_log(room), &seq, &seq, 1)?;
        Ok(records.into_iter().next().map(RoomRecord::from))
    }

    fn direct_entry(&self, gid: u64) -> Result<Option<DirectRecord>> {
        let at: Option<String> = self.query(redis::cmd("HGET").arg(keys::GIDS).arg(gid))?;
        let Some((to, seq, _)) = at.map(|at| parse_location(&at)).transpose()? else {
            return Ok(None);
        };
        let records = self.inbox_entries(&[(to, seq)])?;
        Ok(records
            .into_iter()
            .find(|r| r.gid == gid)
            .map(DirectRecord::from))
    }

    fn room_oldest(&self, room: &str) -> Result<Option<u64>> {
        Ok(self.oldest(&keys::room_log(room))?.map(|r| r.seq))
    }

    fn inbox_after(&self, user: &str, after: u64, limit: usize) -> Result<Vec<DirectRecord>> {
        let records = self.range(&keys::inbox(user), &above(after), "+inf", limit)?;
        Ok(records.into_iter().map(DirectRecord::from).collect())
    }

    fn inbox_oldest(&self, user: &str) -> Result<Option<u64>> {
        Ok(self.oldest(&keys::inbox(user))?.map(|r| r.seq))
    }

    fn conversation(
        &self,
        a: &str,
        b: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<DirectRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("ZREVRANGEBYSCORE");
        cmd.arg(keys::conversation(a, b))
            .arg(above(before))
            .arg("-inf")
            .arg("LIMIT")
            .arg(0)
            .arg(limit);
        let members: Vec<String> = self.query(&cmd)?;
        let at = members
            .iter()
            .map(|m| parse_member(m))
            .collect::<Result<Vec<_>>>()?;
        let mut records = self.inbox_entries(&at)?;
        records.reverse();
        Ok(records.into_iter().map(DirectRecord::from).collect())
    }

    fn cursor(&self, user: &str, device: &str) -> Result<u64> {
        let upto: Option<u64> =
            self.query(redis::cmd("HGET").arg(keys::cursors(user)).arg(device))?;
        Ok(upto.unwrap_or(0))
    }

    fn read_position(&self, user: &str, key: &str) -> Result<u64> {
        let upto: Option<u64> = self.query(redis::cmd("HGET").arg(keys::reads(user)).arg(key))?;
        Ok(upto.unwrap_or(0))
    }

    fn read_positions(&self, user: &str) -> Result<Vec<(String, u64)>> {
        let all: HashMap<String, u64> = self.query(redis::cmd("HGETALL").arg(keys::reads(user)))?;
        Ok(all.into_iter().collect())
    }

    fn peers(&self, user: &str, limit: usize) -> Result<Vec<(String, u64, u64)>> {
        let names: Vec<String> = self.query(
            redis::cmd("ZREVRANGE")
                .arg(keys::peers(user))
                .arg(0)
                .arg(-1),
        )?;
        if names.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        // The newest message held between them: the list's scores are the
        // newest ever written, which retention may have dropped since.
        let mut pipe = redis::pipe();
        for peer in &names {
            pipe.cmd("ZREVRANGE")
                .arg(keys::conversation(user, peer))
                .arg(0)
                .arg(0)
                .arg("WITHSCORES");
        }
        let newest: Vec<Vec<String>> = self.read(|conn| conn.run_pipe(&pipe))?;
        let mut held = Vec::new();
        for (peer, pair) in names.into_iter().zip(newest) {
            if let [member, score] = pair.as_slice() {
                let gid = score.parse::<f64>().map_err(|_| {
                    StoreError::Internal(format!("damaged conversation score: {score:?}"))
                })? as u64;
                held.push((peer, gid, parse_member(member)?));
            }
        }
        held.sort_by_key(|h| std::cmp::Reverse(h.1));
        held.truncate(limit);
        let at: Vec<(String, u64)> = held.iter().map(|h| h.2.clone()).collect();
        let ts: HashMap<u64, u64> = self
            .inbox_entries(&at)?
            .into_iter()
            .map(|r| (r.gid, r.ts))
            .collect();
        Ok(held
            .into_iter()
            .filter_map(|(peer, gid, _)| ts.get(&gid).map(|ts| (peer, gid, *ts)))
            .collect())
    }

    fn room_last(&self, room: &str) -> Result<Option<(u64, u64)>> {
        let found = self.newest_where(&keys::room_log(room), "+inf", 1, Record::is_message)?;
        Ok(found.first().map(|r| (r.seq, r.ts)))
    }

    fn last_from(&self, user: &str, peer: &str) -> Result<Option<u64>> {
        // The conversation holds both directions: the newest addressed to
        // `user` is the newest from `peer` (the index holds messages only).
        let key = keys::conversation(user, peer);
        let mut offset = 0;
        loop {
            let mut cmd = redis::cmd("ZREVRANGE");
            cmd.arg(&key).arg(offset).arg(offset + PAGE - 1);
            let members: Vec<String> = self.query(&cmd)?;
            for m in &members {
                let (to, seq) = parse_member(m)?;
                if to == user {
                    return Ok(Some(seq));
                }
            }
            if members.len() < PAGE {
                return Ok(None);
            }
            offset += PAGE;
        }
    }

    fn unread_direct(&self, user: &str, peer: &str, after: u64) -> Result<u64> {
        self.unread(&keys::inbox(user), after, "from", peer)
    }

    fn unread_room(&self, room: &str, user: &str, after: u64) -> Result<u64> {
        self.unread(&keys::room_log(room), after, "notfrom", user)
    }

    fn trim(&self, older_than: u64, dedupe_before: u64) -> Result<()> {
        if let Some(every) = self.settings.trim_every {
            // The lease expires a little before the next round, so some
            // node takes the next one.
            let lease = every.saturating_sub(every / 10).as_millis().max(1) as u64;
            let mut take = redis::cmd("SET");
            take.arg(keys::TRIM_LEASE)
                .arg(&self.settings.node)
                .arg("NX")
                .arg("PX")
                .arg(lease);
            if matches!(self.query::<Value>(&take)?, Value::Nil) {
                return Ok(());
            }
        }
        for (what, set) in [("room", keys::ROOMS), ("inbox", keys::INBOXES)] {
            let names: Vec<String> = self.query(redis::cmd("SMEMBERS").arg(set))?;
            // A bounded step per call: other nodes' commits wait for it.
            for chunk in names.chunks(100) {
                let mut cmd = redis::cmd("FCALL");
                cmd.arg("trim").arg(0).arg(what).arg(older_than).arg(chunk);
                self.with(|conn| conn.fcall(&cmd))?;
            }
        }
        loop {
            let mut cmd = redis::cmd("FCALL");
            cmd.arg("trim").arg(0).arg("dedupe").arg(dedupe_before);
            match self.with(|conn| conn.fcall(&cmd))? {
                Value::Int(n) if n >= 1000 => continue,
                Value::Int(_) => return Ok(()),
                other => {
                    return Err(StoreError::Internal(format!(
                        "unexpected reply from trim: {other:?}"
                    )))
                }
            }
        }
    }

    fn check(&self) -> Result<()> {
        self.query::<Value>(&redis::cmd("PING")).map(drop)
    }
}

/// Redis errors by what can be done about them (see [`StoreError`]).
pub(crate) fn map_error(err: &RedisError) -> StoreError {
    let text = format!("redis: {err}");
    if err.is_io_error() || err.is_timeout() || err.is_connection_dropped() {
        return StoreError::Unavailable(text);
    }
    match err.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::NoPerm,
        )
        | ErrorKind::AuthenticationFailed => return StoreError::Unavailable(text),
        _ => {}
    }
    match err.code() {
        // Out of memory with `noeviction`: writes work again once memory
        // is freed (or the limit raised).
        Some("OOM") => StoreError::Full(text),
        // A script running too long, an AOF that cannot be written.
        Some("BUSY" | "MISCONF") => StoreError::Unavailable(text),
        // A key of the wrong type: an operator has to look.
        Some("WRONGTYPE") => StoreError::Corrupt(text),
        // The data set is not the one this node numbered from.
        Some("SBLOST") => StoreError::Corrupt(format!(
            "{text}: refusing to number messages (a seq could be given twice); \
             restart the nodes to start a new numbering (docs/OPERATIONS.md)"
        )),
        _ => StoreError::Internal(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_start_with_their_numbers_and_keep_the_body_verbatim() -> Result<()> {
        let r = RoomRecord {
            room: "a\"b".into(),
            seq: 7,
            from: "ann".into(),
            ts: 5,
            body: "{ \"x\" : 1 }".into(),
            ..RoomRecord::default()
        };
        let record = Record::try_from(&r)?;
        let text = record.encode()?;
        assert!(text.starts_with("{\"seq\":7,\"gid\":0,\"room\":"), "{text}");
        assert_eq!(format!("{{\"seq\":7,\"gid\":0,{}", record.tail()?), text);
        let back = RoomRecord::from(Record::decode(&text)?);
        assert_eq!(back, r);
        Ok(())
    }
}
