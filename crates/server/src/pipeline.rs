//! The write pipeline: one thread that turns publishes and sends into
//! committed, sequenced records, then delivers them.
//!
//! Every write goes through here, so seqs are gapless and in commit order
//! without locks: the thread owns the counters. Requests are taken in
//! batches (everything waiting, up to `MAX_BATCH`), committed in one store
//! transaction (one fsync), and only then delivered and acknowledged, in
//! order. An `ack` therefore always means "on disk", and a seq a client has
//! seen can never be reused after a crash. If the commit fails, the counters
//! are rolled back and every request of the batch gets `unavailable`.
//!
//! Delivery is a task on the server's runtime, [`Deliverer`], which takes
//! committed batches in commit order: while it fans batch N out, the writer
//! commits batch N+1 (a commit's fsync no longer waits behind a fan-out, nor
//! a fan-out behind an fsync), and the fan-out runs on a runtime worker, as
//! relay mode's does, rather than on a third busy thread that the workers'
//! connection tasks must share the cores with. See BENCHMARKS.md, "Room
//! mode flat out: the writer thread", for what each step measured.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::value::RawValue;
use switchboard_protocol::{self as proto, ErrorCode, Id};
use tokio::runtime::RuntimeFlavor;
use tokio::sync::oneshot;

use crate::expiring::ExpiringMap;
use crate::hub::{unix_ms, Conn, Delivery, Hub};
use crate::service::Rejection;
use crate::store::{
    Assigned, DedupeRecord, DirectRecord, Kind, Original, Retention, RoomRecord, Store, StoreError,
    Write,
};

const MAX_BATCH: usize = 1024;
/// How often retention and the dedupe window are enforced.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Where a result goes.
pub enum Reply {
    /// Queue `ack` (or `error`) on the connection, echoing the command id.
    Conn { conn: Arc<Conn>, id: Option<Id> },
    /// Hand the result to a waiting task (HTTP API).
    Channel(oneshot::Sender<Result<Delivery, Rejection>>),
}

/// Where a message goes: a room (`publish`) or a user's inbox (`send`).
/// Each has its own seq counter; the rest of the path is shared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Room(Arc<str>),
    User(Arc<str>),
}

/// A validated `publish` or `send` (see [`crate::service::message`]).
pub struct Submission {
    pub to: Destination,
    pub from: Arc<str>,
    /// The sending connection, which gets the ack instead of the message.
    pub sender: Option<u64>,
    /// The client's own JSON bytes, stored and delivered verbatim.
    pub body: Box<RawValue>,
    /// Idempotency key, deduplicated per `from` within the dedupe window.
    pub id: Option<Id>,
    pub reply: Reply,
    /// Set for an `edit` (body: the new body) or a `recall` (body `null`)
    /// of the sender's message `target`.
    pub change: Option<ChangeOf>,
}

/// What an `edit` or `recall` changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeOf {
    /// The message: its room seq, or its gid.
    pub target: u64,
    /// Recall (else edit).
    pub recall: bool,
}

/// A `read`: `user` read `to` (a room, or the conversation with a peer)
/// up to `upto`.
pub struct ReadMark {
    pub user: Arc<str>,
    pub to: Destination,
    pub upto: u64,
    /// The reading connection (its user's other connections are told).
    pub conn: Option<u64>,
}

pub enum Job {
    Message(Submission),
    /// A read position moved (stored; a direct one is also a receipt in the
    /// peer's inbox).
    Read(ReadMark),
    /// A device confirmed its inbox up to `upto`.
    Cursor {
        user: String,
        device: String,
        upto: u64,
    },
    /// Run retention and forget idle counters now, then answer (tests and
    /// tools; the writer also does it every `TRIM_EVERY`).
    Sweep(oneshot::Sender<()>),
    /// Answered once every job queued before it is committed (or failed):
    /// a read of the store after it sees the caller's earlier writes.
    Barrier(oneshot::Sender<()>),
}

pub struct Settings {
    pub retention: Retention,
    pub dedupe_window: Duration,
    /// Room counters kept (`--max-rooms`): a publish to a new room beyond
    /// it is refused until idle rooms are forgotten.
    pub max_rooms: usize,
    /// Inbox counters kept (`--max-inboxes`), likewise for `send`.
    pub max_inboxes: usize,
    /// Dedupe entries kept (`--max-dedupe`): beyond it the oldest go
    /// early, shortening the window rather than growing without end.
    pub max_dedupe: usize,
    /// How long after sending a message may be edited (`--edit-window`).
    pub edit_window: Duration,
    /// ... and recalled (`--recall-window`).
    pub recall_window: Duration,
}

/// Handle to the writer thread.
pub struct Pipeline {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    /// False while the last commit failed (shown by `/readyz`).
    healthy: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Pipeline {
    /// Recovers the counters from the store and starts the writer thread.
    pub fn start(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        settings: Settings,
    ) -> Result<Pipeline, StoreError> {
        Pipeline::start_with_bus(store, hub, settings, None)
    }

    /// [`Pipeline::start`] for cluster mode: `bus` carries what is not an
    /// entry of the store (a room read position) to the other nodes.
    pub fn start_with_bus(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        settings: Settings,
        bus: Option<Arc<crate::cluster::Bus>>,
    ) -> Result<Pipeline, StoreError> {
        let window_ms = settings.dedupe_window.as_millis() as u64;
        // Shared counters are not this node's to recover: it guesses, and
        // the store numbers.
        let recovered = if store.assigns_seqs() {
            crate::store::Recovered::default()
        } else {
            store.recover(unix_ms().saturating_sub(window_ms))?
        };
        let healthy = Arc::new(AtomicBool::new(true));
        hub.restore_floors(&recovered.room_floors, &recovered.inbox_floors);
        let assigning = store.assigns_seqs();
        let deliverer = Deliverer {
            hub: hub.clone(),
            bus,
            assigning,
        };
        // One committed batch waits while the next commits; beyond that the
        // writer waits, and the jobs queued meanwhile make the next batch
        // bigger (one fsync for more of them) rather than memory grow.
        let (handoff, handoffs) = tokio::sync::mpsc::channel(1);
        let (finished, delivered_all) = mpsc::channel::<()>();
        let delivering = deliverer.run(handoffs, finished);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if runtime.runtime_flavor() == RuntimeFlavor::MultiThread => {
                drop(runtime.spawn(delivering))
            }
            // No runtime (a test driving the pipeline alone), or one with a
            // single thread, which whoever started the pipeline may block:
            // a thread of its own runs the same task.
            _ => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .map_err(|e| {
                        StoreError::Unavailable(format!("cannot start the delivery task: {e}"))
                    })?;
                std::thread::Builder::new()
                    .name("switchboard-deliver".into())
                    .spawn(move || runtime.block_on(delivering))
                    .map_err(|e| {
                        StoreError::Unavailable(format!("cannot start the delivery thread: {e}"))
                    })?;
            }
        }
        let mut writer = Writer {
            healthy: healthy.clone(),
            assigning,
            handoff: Some(handoff),
            delivered_all,
            store,
            hub,
            settings,
            rooms: HashMap::new(),
            inboxes: HashMap::new(),
            last_gid: recovered.last_gid,
            dedupe: ExpiringMap::new(),
            idle_before: 0,
        };
        for c in recovered.rooms {
            let room: Arc<str> = Arc::from(c.name);
            writer.hub.set_room_seq(&room, c.seq);
            writer.rooms.insert(room, Count::new(c.seq, c.last_ts));
        }
        for c in recovered.inboxes {
            let user: Arc<str> = Arc::from(c.name);
            writer.hub.set_inbox_seq(&user, c.seq);
            writer.inboxes.insert(user, Count::new(c.seq, c.last_ts));
        }
        let mut dedupe = recovered.dedupe;
        dedupe.sort_by_key(|d| d.ts);
        for d in dedupe {
            writer.dedupe.insert((d.user, d.target, d.id), d.seq, d.ts);
        }
        writer.dedupe.shrink_to(writer.settings.max_dedupe);
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("switchboard-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok(Pipeline {
            tx: Mutex::new(Some(tx)),
            healthy,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues a job; `false` if the pipeline has stopped (shutdown).
    pub fn submit(&self, job: Job) -> bool {
        match &*self.tx.lock() {
            Some(tx) => tx.send(job).is_ok(),
            None => false,
        }
    }

    /// Asks the writer to run retention and forget idle counters now; the
    /// receiver resolves when it is done (`None`: the pipeline stopped).
    pub fn sweep(&self) -> Option<oneshot::Receiver<()>> {
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Sweep(tx)).then_some(rx)
    }

    /// Resolves once every job queued so far is committed (or failed), so
    /// a store read after it sees them (`None`: the pipeline stopped).
    pub fn barrier(&self) -> Option<oneshot::Receiver<()>> {
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Barrier(tx)).then_some(rx)
    }

    /// Whether the last commit succeeded.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Commits what is queued, then stops the writer (graceful shutdown).
    pub fn stop(&self) {
        drop(self.tx.lock().take());
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

/// What one job became inside a batch.
enum Plan {
    /// Sequenced and written: `gid` for direct messages only.
    Stored {
        seq: u64,
        gid: Option<u64>,
        ts: u64,
        /// Cluster mode: the store's count of who gets it.
        reach: usize,
    },
    /// A read position stored; for a direct conversation also a receipt at
    /// `seq` (with `gid`) of the peer's inbox, if it could get one.
    Read {
        upto: u64,
        receipt: Option<(u64, u64)>,
    },
    /// A repeated id: acknowledge with the original seq. `tentative` when the
    /// original is in this same batch (so it fails if the batch fails).
    Duplicate { seq: u64, tentative: bool },
    /// Nothing to answer (a cursor).
    Silent,
    /// Refused before anything was written (a cap was reached).
    Refused(Rejection),
}

/// The writer's view of one room or inbox counter.
#[derive(Clone, Copy, Debug)]
struct Count {
    seq: u64,
    /// `ts` of the newest message written (0: none held): once it is older
    /// than the retention age, the store holds nothing of it any more.
    last_ts: u64,
}

impl Count {
    fn new(seq: u64, last_ts: u64) -> Count {
        Count { seq, last_ts }
    }
}

/// (user, target, raw id JSON). The target (`room:NAME`, `user:NAME`) is
/// part of the key: an id reused for another destination is another
/// message, not a duplicate (two devices numbering their ids from 1).
type DedupeKey = (String, String, String);

struct Writer {
    healthy: Arc<AtomicBool>,
    store: Arc<dyn Store>,
    /// The store numbers entries and dedupes ids itself, and every node
    /// delivers what it announces (cluster mode, see
    /// [`Store::assigns_seqs`]): this writer's counters are only guesses,
    /// and it delivers nothing.
    assigning: bool,
    /// Committed batches, in commit order, to the delivery task.
    handoff: Option<tokio::sync::mpsc::Sender<Handoff>>,
    /// Disconnected once the delivery task has ended: the writer waits for
    /// it when it stops, so `Pipeline::stop` returns only once everything
    /// committed is delivered and answered.
    delivered_all: mpsc::Receiver<()>,
    hub: Arc<Hub>,
    settings: Settings,
    rooms: HashMap<Arc<str>, Count>,
    inboxes: HashMap<Arc<str>, Count>,
    last_gid: u64,
    /// (user, target, raw id JSON) → (seq, ts) of the original.
    dedupe: ExpiringMap<DedupeKey, u64>,
    /// No counter went idle before this ts (the oldest `last_ts` seen by
    /// the last scan; newer writes only raise it): the sweep skips the
    /// scan of every counter until the retention cut-off passes it.
    idle_before: u64,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        let mut last_trim = Instant::now();
        loop {
            let first = match rx.recv_timeout(TRIM_EVERY) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.trim();
                    last_trim = Instant::now();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let mut sweeps = Vec::new();
            batch.retain_mut(|job| match job {
                Job::Sweep(done) => {
                    let (tx, _) = oneshot::channel();
                    sweeps.push(std::mem::replace(done, tx));
                    false
                }
                _ => true,
            });
            if !batch.is_empty() {
                self.process(batch);
            }
            if !sweeps.is_empty() || last_trim.elapsed() >= TRIM_EVERY {
                self.trim();
                last_trim = Instant::now();
            }
            for done in sweeps {
                let _ = done.send(());
            }
        }
        drop(self.handoff.take());
        let _ = self.delivered_all.recv();
    }

    /// Hands a committed (or failed) batch to the delivery task.
    fn hand_off(&self, handoff: Handoff) {
        // The writer is a thread of its own, never inside the runtime, so
        // it may block here (while the previous batch is being delivered).
        let sent = self.handoff.as_ref().map(|tx| tx.blocking_send(handoff));
        if !matches!(sent, Some(Ok(()))) {
            // Only if the delivery task panicked or its runtime is gone:
            // nothing committed from now on is delivered or answered, so
            // say so (`/readyz`).
            self.healthy.store(false, Ordering::Relaxed);
            tracing::error!("the delivery task is gone: a committed batch is not delivered");
        }
    }

    /// Waits until every batch handed off is delivered: retention reads
    /// the hub's committed seqs, which the delivery task sets.
    fn wait_delivered(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        self.hand_off(Handoff::Drained(tx));
        let _ = rx.recv();
    }

    fn trim(&mut self) {
        self.wait_delivered();
        let now = unix_ms();
        let dedupe_before = now.saturating_sub(self.settings.dedupe_window.as_millis() as u64);
        self.dedupe.expire(dedupe_before);
        let older_than = now.saturating_sub(self.settings.retention.age_ms);
        if let Err(err) = self.store.trim(older_than, dedupe_before) {
            tracing::error!(%err, "store trim failed");
            return;
        }
        self.forget_idle(older_than);
    }

    /// Forgets the counters of rooms and inboxes whose every message
    /// expired (`last_ts` before `older_than`) and that nobody is connected
    /// to, so counters do not grow with every name ever used (see
    /// `hub::floors`). Memory first, then the store: if that commit fails,
    /// the store keeps counters memory dropped, which is safe (a counter
    /// read back at start-up is at least the floor it was folded into).
    fn forget_idle(&mut self, older_than: u64) {
        // Shared counters are never forgotten: another node may be using
        // one (a counter is a few dozen bytes of Redis).
        if self.assigning || older_than <= self.idle_before {
            return;
        }
        let idle = |counters: &HashMap<Arc<str>, Count>| -> (Vec<(Arc<str>, u64)>, u64) {
            let mut oldest_kept = u64::MAX;
            let mut idle = Vec::new();
            for (name, count) in counters {
                if count.last_ts < older_than {
                    idle.push((name.clone(), count.seq));
                } else {
                    oldest_kept = oldest_kept.min(count.last_ts);
                }
            }
            (idle, oldest_kept)
        };
        let (rooms, oldest_room) = idle(&self.rooms);
        let (inboxes, oldest_inbox) = idle(&self.inboxes);
        // Until the cut-off passes the oldest kept `last_ts` nothing can go
        // idle (later writes are stamped now or later). A live one kept by
        // `retire` is looked at again at the next sweep.
        self.idle_before = if rooms.is_empty() && inboxes.is_empty() {
            oldest_room.min(oldest_inbox).min(unix_ms())
        } else {
            0
        };
        if rooms.is_empty() && inboxes.is_empty() {
            return;
        }
        let retired = self.hub.retire(rooms, inboxes);
        let now = unix_ms();
        let mut writes = Vec::new();
        for (room, _) in &retired.rooms.forgotten {
            self.rooms.remove(room);
            writes.push(Write::ForgetRoom {
                room: room.to_string(),
            });
        }
        for (user, _) in &retired.inboxes.forgotten {
            self.inboxes.remove(user);
            writes.push(Write::ForgetInbox {
                user: user.to_string(),
            });
        }
        for &(bucket, value) in &retired.rooms.floors {
            writes.push(Write::RoomFloor { bucket, value });
        }
        for &(bucket, value) in &retired.inboxes.floors {
            writes.push(Write::InboxFloor { bucket, value });
        }
        for (room, seq) in retired.rooms.pinned {
            self.rooms.insert(room, Count::new(seq, now));
        }
        for (user, seq) in retired.inboxes.pinned {
            self.inboxes.insert(user, Count::new(seq, now));
        }
        let (rooms, inboxes) = (
            retired.rooms.forgotten.len(),
            retired.inboxes.forgotten.len(),
        );
        match self.store.commit(&writes) {
            Ok(()) => tracing::debug!(rooms, inboxes, "forgot idle counters"),
            Err(err) => {
                tracing::error!(%err, rooms, inboxes, "store: forgetting idle counters failed")
            }
        }
    }

    fn process(&mut self, batch: Vec<Job>) {
        let now = unix_ms();
        let mut b = Batch {
            writes: Vec::with_capacity(batch.len() * 2),
            old_rooms: Vec::new(),
            old_inboxes: Vec::new(),
            new_keys: Vec::new(),
            positions: HashMap::new(),
            recalled: Vec::new(),
            provisional: HashMap::new(),
        };
        let old_gid = self.last_gid;
        let mut plans = Vec::with_capacity(batch.len());

        for job in &batch {
            let plan = match job {
                Job::Message(m) => self.plan_message(m, now, &mut b),
                Job::Read(r) => self.plan_read(r, now, &mut b),
                Job::Cursor { user, device, upto } => {
                    b.writes.push(Write::Cursor {
                        user: user.clone(),
                        device: device.clone(),
                        upto: *upto,
                    });
                    Plan::Silent
                }
                // Taken out of the batch before `process`.
                Job::Sweep(_) | Job::Barrier(_) => Plan::Silent,
            };
            plans.push(plan);
        }

        // Retention by count, in the same transaction: each room or inbox
        // this batch wrote to keeps its newest `count` messages.
        let keep = self.settings.retention.count;
        let touched = |old: &[(Arc<str>, Option<Count>)]| {
            let mut names: Vec<Arc<str>> = old.iter().map(|(name, _)| name.clone()).collect();
            names.sort();
            names.dedup();
            names
        };
        for room in touched(&b.old_rooms) {
            let last = self.rooms.get(&room).map_or(0, |c| c.seq);
            if last > keep {
                b.writes.push(Write::TrimRoom {
                    room: room.to_string(),
                    upto: last - keep,
                });
            }
        }
        for user in touched(&b.old_inboxes) {
            let last = self.inboxes.get(&user).map_or(0, |c| c.seq);
            if last > keep {
                b.writes.push(Write::TrimInbox {
                    user: user.to_string(),
                    upto: last - keep,
                });
            }
        }
        let committed = if b.writes.is_empty() {
            Ok(Vec::new())
        } else if self.assigning {
            self.store.commit_assigning(&b.writes)
        } else {
            self.store.commit(&b.writes).map(|()| Vec::new())
        };
        if let Ok(assigned) = &committed {
            if self.assigning {
                self.take_assigned(&mut plans, assigned);
            }
        }
        self.healthy.store(committed.is_ok(), Ordering::Relaxed);
        if let Err(err) = &committed {
            tracing::error!(%err, jobs = batch.len(), "store commit failed: answering unavailable");
            for (name, count) in b.old_rooms.into_iter().rev() {
                restore(&mut self.rooms, name, count);
            }
            for (name, count) in b.old_inboxes.into_iter().rev() {
                restore(&mut self.inboxes, name, count);
            }
            self.last_gid = old_gid;
            for key in &b.new_keys {
                self.dedupe.remove(key);
            }
        }

        self.hand_off(Handoff::Batch {
            jobs: batch,
            plans,
            committed: committed.is_ok(),
        });
    }

    /// Puts the numbers the store assigned into the plans (cluster mode):
    /// one [`Assigned`] per room or inbox entry of the batch, in the order
    /// the plans wrote them. The writer's own counters move up to what the
    /// store said, so the next guesses are close.
    fn take_assigned(&mut self, plans: &mut [Plan], assigned: &[Assigned]) {
        let mut next = assigned.iter();
        for plan in plans.iter_mut() {
            match plan {
                Plan::Stored { seq, gid, ts, .. } => match next.next() {
                    Some(Assigned::Stored {
                        seq: real,
                        gid: real_gid,
                        reach,
                    }) => {
                        *plan = Plan::Stored {
                            seq: *real,
                            gid: gid.map(|_| *real_gid),
                            ts: *ts,
                            reach: *reach as usize,
                        }
                    }
                    Some(Assigned::Duplicate { seq: original }) => {
                        *plan = Plan::Duplicate {
                            seq: *original,
                            tentative: false,
                        }
                    }
                    None => {
                        tracing::error!(seq = *seq, "store assigned fewer entries than written");
                    }
                },
                Plan::Read {
                    receipt: Some((seq, gid)),
                    ..
                } => {
                    if let Some(Assigned::Stored {
                        seq: real,
                        gid: real_gid,
                        ..
                    }) = next.next()
                    {
                        (*seq, *gid) = (*real, *real_gid);
                    }
                }
                _ => {}
            }
        }
    }

    /// Plans a `publish`, `send`, `edit` or `recall`: dedupe, the change's
    /// rules, the next seq, the records.
    fn plan_message(&mut self, m: &Submission, now: u64, b: &mut Batch) -> Plan {
        let key = m.id.as_ref().map(|id| {
            let target = match &m.to {
                Destination::Room(room) => format!("room:{room}"),
                Destination::User(user) => format!("user:{user}"),
            };
            (m.from.to_string(), target, id.as_json().to_string())
        });
        if let Some(seq) = key
            .as_ref()
            .filter(|_| !self.assigning)
            .and_then(|k| self.dedupe.get(k))
        {
            let tentative = key.as_ref().is_some_and(|k| b.new_keys.contains(k));
            return Plan::Duplicate {
                seq: *seq,
                tentative,
            };
        }
        let original = match m.change {
            Some(change) => match self.check_change(m, change, now, b) {
                Ok(original) => Some(original),
                Err(rejection) => return Plan::Refused(rejection),
            },
            None => None,
        };
        let seq = match self.next_seq(&m.to, now, b) {
            Ok(seq) => seq,
            Err(rejection) => return Plan::Refused(rejection),
        };
        let (kind, target) = match m.change {
            None => (Kind::Message, 0),
            Some(c) if c.recall => (Kind::Recall, c.target),
            Some(c) => (Kind::Edit, c.target),
        };
        let gid = match &m.to {
            Destination::Room(room) => {
                b.writes.push(Write::Room(RoomRecord {
                    room: room.to_string(),
                    seq,
                    from: m.from.to_string(),
                    ts: now,
                    body: m.body.get().to_string(),
                    kind,
                    target,
                    sender: m.sender.filter(|_| self.assigning),
                    ..RoomRecord::default()
                }));
                None
            }
            Destination::User(to) => {
                self.last_gid += 1;
                b.writes.push(Write::Direct(DirectRecord {
                    gid: self.last_gid,
                    to: to.to_string(),
                    seq,
                    from: m.from.to_string(),
                    ts: now,
                    body: m.body.get().to_string(),
                    kind,
                    target,
                    sender: m.sender.filter(|_| self.assigning),
                    ..DirectRecord::default()
                }));
                Some(self.last_gid)
            }
        };
        if let (Some(original), Some(change)) = (original, m.change) {
            if change.recall {
                b.recalled.push(original.clone());
            }
            b.writes.push(Write::Amend {
                original,
                body: (!change.recall).then(|| m.body.get().to_string()),
                ts: now,
            });
        }
        if let Some(key) = key {
            b.writes.push(Write::Dedupe(DedupeRecord {
                user: key.0.clone(),
                target: key.1.clone(),
                id: key.2.clone(),
                seq,
                ts: now,
            }));
            if !self.assigning {
                self.dedupe.insert(key.clone(), seq, now);
                b.new_keys.push(key);
            }
            if self.dedupe.len() > self.settings.max_dedupe {
                // Oldest first; one of this batch only if the cap is tiny
                // (its rollback then finds nothing).
                self.dedupe.shrink_to(self.settings.max_dedupe);
            }
        }
        Plan::Stored {
            seq,
            gid,
            ts: now,
            reach: 0,
        }
    }

    /// The rules of an `edit` or `recall`, judged here, in seq order, so a
    /// change racing another is ordered: the message is held, was sent by
    /// the caller (to `to`), is not recalled, and is within the window.
    fn check_change(
        &self,
        m: &Submission,
        change: ChangeOf,
        now: u64,
        b: &Batch,
    ) -> Result<Original, Rejection> {
        let what = if change.recall { "recall" } else { "edit" };
        if change.target > i64::MAX as u64 {
            // No seq or gid gets there (SQLite integers are signed).
            return Err(Rejection::new(
                ErrorCode::NotFound,
                format!("{what}: no message {} is held", change.target),
            ));
        }
        let (original, from, ts, recalled) = match &m.to {
            Destination::Room(room) => match self.store.room_entry(room, change.target) {
                Ok(Some(e)) if e.kind == Kind::Message => (
                    Original::Room {
                        room: room.to_string(),
                        seq: change.target,
                    },
                    e.from,
                    e.ts,
                    e.recalled,
                ),
                Ok(_) => {
                    return Err(Rejection::new(
                        ErrorCode::NotFound,
                        format!("{what}: room `{room}` holds no message {}", change.target),
                    ))
                }
                Err(err) => return Err(store_failed(err)),
            },
            Destination::User(to) => match self.store.direct_entry(change.target) {
                Ok(Some(e)) if e.kind == Kind::Message => {
                    if e.to != **to && e.from == *m.from {
                        return Err(Rejection::new(
                            ErrorCode::Forbidden,
                            format!("{what}: message {} was not sent to `{to}`", change.target),
                        ));
                    }
                    (
                        Original::Direct {
                            to: e.to,
                            gid: change.target,
                        },
                        e.from,
                        e.ts,
                        e.recalled,
                    )
                }
                Ok(_) => {
                    return Err(Rejection::new(
                        ErrorCode::NotFound,
                        format!("{what}: no direct message {} is held", change.target),
                    ))
                }
                Err(err) => return Err(store_failed(err)),
            },
        };
        if from != *m.from {
            return Err(Rejection::new(
                ErrorCode::Forbidden,
                format!("{what}: only the sender may change a message"),
            ));
        }
        if recalled != 0 || b.recalled.contains(&original) {
            return Err(Rejection::bad_request(format!(
                "{what}: the message was recalled"
            )));
        }
        let window = if change.recall {
            self.settings.recall_window
        } else {
            self.settings.edit_window
        };
        if now.saturating_sub(ts) > window.as_millis() as u64 {
            return Err(Rejection::new(
                ErrorCode::Forbidden,
                format!(
                    "{what}: the message is older than the {what} window ({} s)",
                    window.as_secs()
                ),
            ));
        }
        Ok(original)
    }

    /// The next seq of a room or inbox; a new name is checked against its
    /// cap and numbers on from its floor. What it changed is noted in the
    /// batch, to be undone if the commit fails.
    fn next_seq(&mut self, to: &Destination, now: u64, b: &mut Batch) -> Result<u64, Rejection> {
        if self.assigning {
            // A placeholder the store replaces: 1, 2, … per name within
            // the batch (unique, so an entry's dedupe record still names
            // it), above the name's floor. A counter Redis does not have
            // yet starts from it: a new room's first entry is 1.
            let (key, floor) = match to {
                Destination::Room(room) => ((true, room.clone()), self.hub.room_floor(room)),
                Destination::User(user) => ((false, user.clone()), self.hub.inbox_floor(user)),
            };
            let n = b.provisional.entry(key).or_insert(0);
            *n += 1;
            return Ok(floor + *n);
        }
        let (name, counters, old, max) = match to {
            Destination::Room(room) => (
                room,
                &mut self.rooms,
                &mut b.old_rooms,
                self.settings.max_rooms,
            ),
            Destination::User(user) => (
                user,
                &mut self.inboxes,
                &mut b.old_inboxes,
                self.settings.max_inboxes,
            ),
        };
        // One lookup for a known name (the per-message path).
        if let Some(count) = counters.get_mut(name) {
            old.push((name.clone(), Some(*count)));
            *count = Count::new(count.seq + 1, now);
            return Ok(count.seq);
        }
        if counters.len() >= max {
            return Err(full(to));
        }
        let floor = match to {
            Destination::Room(room) => self.hub.room_floor(room),
            Destination::User(user) => self.hub.inbox_floor(user),
        };
        old.push((name.clone(), None));
        counters.insert(name.clone(), Count::new(floor + 1, now));
        Ok(floor + 1)
    }

    /// Plans a `read`: only a position that moves forward is stored, and
    /// (direct) becomes a receipt in the peer's inbox. A direct position
    /// goes no further than the peer's newest message held for the reader:
    /// nothing is stored for a peer who sent nothing (positions for
    /// invented names would be state without bound, and receipts answering
    /// receipts would raise each other's inboxes for ever).
    fn plan_read(&mut self, r: &ReadMark, now: u64, b: &mut Batch) -> Plan {
        let (key, latest) = match &r.to {
            Destination::Room(room) => {
                let mut latest = self
                    .rooms
                    .get(room)
                    .map_or(0, |c| c.seq)
                    .max(self.hub.room_seq(room));
                if self.assigning && !self.hub.has_room(room) {
                    // Cluster mode, a room without a member here (a read
                    // needs the grant, not membership): the hub does not
                    // follow it, the store knows.
                    match self.store.room_last(room) {
                        Ok(last) => latest = latest.max(last.map_or(0, |(seq, _)| seq)),
                        Err(err) => {
                            tracing::error!(%err, "store: reading a room's newest message failed");
                            return Plan::Silent;
                        }
                    }
                }
                (format!("room:{room}"), latest)
            }
            Destination::User(peer) => match self.store.last_from(&r.user, peer) {
                Ok(last) => (format!("user:{peer}"), last.unwrap_or(0)),
                Err(err) => {
                    tracing::error!(%err, "store: reading a conversation's newest message failed");
                    return Plan::Silent;
                }
            },
        };
        let upto = r.upto.min(latest);
        let stored = match b.positions.get(&(r.user.clone(), key.clone())) {
            Some(upto) => *upto,
            None => match self.store.read_position(&r.user, &key) {
                Ok(upto) => upto,
                Err(err) => {
                    tracing::error!(%err, "store: reading a read position failed");
                    return Plan::Silent;
                }
            },
        };
        if upto <= stored {
            return Plan::Silent;
        }
        b.positions.insert((r.user.clone(), key.clone()), upto);
        b.writes.push(Write::ReadPosition {
            user: r.user.to_string(),
            key,
            upto,
        });
        let receipt = match &r.to {
            Destination::Room(_) => None,
            // A peer whose inbox cannot get a counter (`--max-inboxes`)
            // gets no receipt; the position is stored all the same.
            Destination::User(peer) => self.next_seq(&r.to, now, b).ok().map(|seq| {
                self.last_gid += 1;
                b.writes.push(Write::Direct(DirectRecord {
                    gid: self.last_gid,
                    to: peer.to_string(),
                    seq,
                    from: r.user.to_string(),
                    ts: now,
                    body: "null".into(),
                    kind: Kind::Read,
                    target: upto,
                    sender: r.conn.filter(|_| self.assigning),
                    ..DirectRecord::default()
                }));
                (seq, self.last_gid)
            }),
        };
        Plan::Read { upto, receipt }
    }
}

/// A stored plain room message (not an edit or recall): its room and
/// sending connection, what a run delivered together shares.
fn room_message<'a>(job: &'a Job, plan: &Plan) -> Option<(&'a Arc<str>, Option<u64>)> {
    match (job, plan) {
        (Job::Message(m), Plan::Stored { .. }) => match (&m.to, m.change) {
            (Destination::Room(room), None) => Some((room, m.sender)),
            _ => None,
        },
        _ => None,
    }
}

/// Whether a committed job may join a run to `room` whose first sending
/// connection is `sender`: a stored plain message to the same room, and
/// from that same connection once the run has one. A connection's acks are
/// answered after the whole run, so a message from anyone else after its
/// own would reach it before the ack of its own (an ack then older than
/// the messages it follows).
fn joins(room: &Arc<str>, sender: Option<u64>, job: &Job, plan: &Plan) -> bool {
    room_message(job, plan)
        .is_some_and(|(to, from)| to == room && (sender.is_none() || from == sender))
}

/// What the writer hands the delivery task.
enum Handoff {
    /// A batch in commit order, each job with its plan; `committed` false
    /// if the commit failed (every job is answered `unavailable`).
    Batch {
        jobs: Vec<Job>,
        plans: Vec<Plan>,
        committed: bool,
    },
    /// Answered once every batch before it is delivered.
    Drained(mpsc::SyncSender<()>),
}

/// The delivery half of the pipeline: fans committed messages out and
/// answers their senders, one batch at a time in commit order (so seqs
/// reach every connection in order, and acks in the order sent).
struct Deliverer {
    hub: Arc<Hub>,
    /// Cluster mode: where events for a user's devices on other nodes go.
    bus: Option<Arc<crate::cluster::Bus>>,
    /// Cluster mode (see [`Writer::assigning`]): every node delivers what
    /// the store announces, so a commit here is only answered.
    assigning: bool,
}

impl Deliverer {
    /// Delivers batches until the writer stops; `finished` is dropped at
    /// the end (or if this panics), which is what the writer waits for.
    async fn run(
        self,
        mut handoffs: tokio::sync::mpsc::Receiver<Handoff>,
        finished: mpsc::Sender<()>,
    ) {
        let _finished = finished;
        while let Some(handoff) = handoffs.recv().await {
            match handoff {
                Handoff::Batch {
                    jobs,
                    plans,
                    committed,
                } => {
                    let mut jobs = jobs.into_iter().zip(plans).peekable();
                    while let Some((job, plan)) = jobs.next() {
                        match self.run_start(&job, &plan, committed) {
                            // A run of messages to one room: delivered
                            // together, each member's share in one push.
                            Some((room, mut sender))
                                if jobs.peek().is_some_and(|(j, p)| joins(&room, sender, j, p)) =>
                            {
                                let mut run = vec![(job, plan)];
                                while let Some(next) =
                                    jobs.next_if(|(j, p)| joins(&room, sender, j, p))
                                {
                                    sender = sender
                                        .or(room_message(&next.0, &next.1).and_then(|(_, s)| s));
                                    run.push(next);
                                }
                                self.deliver_run(&room, run);
                            }
                            _ => self.finish(job, plan, committed),
                        }
                        // A batch can be a thousand fan-outs: give the
                        // worker back between them once the task's budget
                        // is spent, so connections on it are not starved.
                        tokio::task::consume_budget().await;
                    }
                }
                Handoff::Drained(done) => {
                    let _ = done.send(());
                }
            }
        }
    }

    /// Where a run delivered together could start: a committed plain room
    /// message this node delivers; its room and sending connection.
    fn run_start(
        &self,
        job: &Job,
        plan: &Plan,
        committed: bool,
    ) -> Option<(Arc<str>, Option<u64>)> {
        room_message(job, plan)
            .filter(|_| committed && !self.assigning)
            .map(|(room, sender)| (room.clone(), sender))
    }

    /// Delivers committed messages to one room, in seq order, together (see
    /// [`Hub::deliver_room_run`]), then acks each. `run`: jobs that are all
    /// [`room_message`]s to `room`.
    fn deliver_run(&self, room: &Arc<str>, run: Vec<(Job, Plan)>) {
        let mut messages = Vec::with_capacity(run.len());
        let mut entries = Vec::with_capacity(run.len());
        for (job, plan) in run {
            let (Job::Message(m), Plan::Stored { seq, gid, ts, .. }) = (job, plan) else {
                continue;
            };
            let event = proto::Message::new(room, seq, &m.from, ts, &m.body);
            entries.push((seq, proto::encode(&event), m.sender));
            messages.push((m, seq, gid));
        }
        if let Some(&(_, last, _)) = messages.last() {
            self.hub.set_room_seq(room, last);
        }
        let delivered = self.hub.deliver_room_run(room, entries);
        for ((m, seq, gid), delivered) in messages.into_iter().zip(delivered) {
            let result = Ok(Delivery {
                seq,
                gid,
                delivered,
                stored: true,
                duplicate: false,
            });
            self.answer_message(m, result);
        }
    }

    /// Delivers one committed job and answers it (or answers `unavailable`).
    fn finish(&self, job: Job, plan: Plan, committed: bool) {
        let m = match job {
            Job::Message(m) => m,
            Job::Cursor { user, device, upto } => {
                if committed {
                    self.hub.cursor_committed(&user, &device, upto);
                }
                return;
            }
            Job::Read(r) => {
                if committed {
                    self.deliver_read(&r, plan);
                }
                return;
            }
            Job::Sweep(_) => return,
            Job::Barrier(done) => {
                let _ = done.send(());
                return;
            }
        };
        let result = match plan {
            Plan::Refused(rejection) => Err(rejection),
            Plan::Duplicate { tentative, .. } if tentative && !committed => Err(unavailable()),
            Plan::Duplicate { seq, .. } => Ok(Delivery::duplicate(seq)),
            Plan::Stored { .. } if !committed => Err(unavailable()),
            Plan::Stored {
                seq, gid, reach, ..
            } if self.assigning => Ok(Delivery {
                seq,
                gid,
                // Every node delivers for itself; the store counted.
                delivered: reach,
                stored: true,
                duplicate: false,
            }),
            Plan::Stored { seq, gid, ts, .. } => Ok(self.deliver(&m, seq, gid, ts)),
            Plan::Silent | Plan::Read { .. } => return,
        };
        self.answer_message(m, result);
    }

    /// Answers a `publish` or `send`: its ack, or the error.
    fn answer_message(&self, m: Submission, result: Result<Delivery, Rejection>) {
        self.answer(m.reply, result, |id, d| {
            let mut ack = match &m.to {
                Destination::Room(room) => proto::Ack::publish(id, room, d.seq, d.delivered),
                Destination::User(to) => {
                    let mut ack = proto::Ack::send(id, to, d.seq, d.delivered, d.stored);
                    ack.gid = d.gid;
                    ack
                }
            };
            ack.duplicate = d.duplicate;
            proto::encode(&ack)
        });
    }

    /// Fans a committed message out to the room's members or the user's
    /// connections (and the sender's other devices).
    fn deliver(&self, m: &Submission, seq: u64, gid: Option<u64>, ts: u64) -> Delivery {
        let delivered = match (&m.to, m.change) {
            (Destination::Room(room), None) => {
                self.hub.set_room_seq(room, seq);
                let event = proto::Message::new(room, seq, &m.from, ts, &m.body);
                self.hub.deliver_room(&event, m.sender)
            }
            (Destination::User(to), None) => {
                self.hub.set_inbox_seq(to, seq);
                let event = proto::Direct::new(&m.from, to, seq, gid.unwrap_or(0), ts, &m.body);
                self.hub.deliver_direct(&event, m.sender)
            }
            (to, Some(change)) => {
                let (room, user) = match to {
                    Destination::Room(room) => (Some(&**room), None),
                    Destination::User(user) => (None, Some(&**user)),
                };
                let event = proto::Change {
                    room,
                    from: &m.from,
                    to: user,
                    seq,
                    gid,
                    target: change.target,
                    ts,
                    body: (!change.recall).then_some(&*m.body),
                };
                let payload = if change.recall {
                    proto::encode(proto::Event::Recall(&event))
                } else {
                    proto::encode(proto::Event::Edit(&event))
                };
                match to {
                    Destination::Room(room) => {
                        self.hub.set_room_seq(room, seq);
                        self.hub.deliver_room_entry(room, seq, payload, m.sender)
                    }
                    Destination::User(user) => {
                        self.hub.set_inbox_seq(user, seq);
                        self.hub
                            .deliver_inbox_entry(user, &m.from, seq, payload, m.sender)
                    }
                }
            }
        };
        Delivery {
            seq,
            gid,
            delivered,
            stored: true,
            duplicate: false,
        }
    }

    /// Tells a committed read position: a receipt to the peer (an inbox
    /// entry), and to the reader's other connections.
    fn deliver_read(&self, r: &ReadMark, plan: Plan) {
        let Plan::Read { upto, receipt } = plan else {
            return;
        };
        match (&r.to, receipt) {
            (Destination::Room(room), _) => {
                let event = proto::encode(&proto::ReadReceipt::room(&r.user, room, upto));
                match &self.bus {
                    // The reader's devices may be on any node (this one
                    // included: it hears its own announcement).
                    Some(bus) => bus.to_user(&r.user, event, r.conn),
                    None => {
                        self.hub.to_user(&r.user, event, r.conn);
                    }
                }
            }
            // Cluster mode: the receipt is an inbox entry, which every node
            // delivers from the store's announcement.
            (Destination::User(_), Some(_)) if self.assigning => {}
            (Destination::User(peer), Some((seq, _gid))) => {
                self.hub.set_inbox_seq(peer, seq);
                let event = proto::ReadReceipt::direct(&r.user, peer, upto, seq);
                self.hub
                    .deliver_inbox_entry(peer, &r.user, seq, proto::encode(&event), r.conn);
            }
            (Destination::User(peer), None) => {
                // No receipt entry: the reader's devices still learn it.
                let event = proto::encode(&proto::ReadReceipt {
                    by: &r.user,
                    from: Some(peer),
                    room: None,
                    upto,
                    seq: None,
                });
                match &self.bus {
                    Some(bus) => bus.to_user(&r.user, event, r.conn),
                    None => {
                        self.hub.to_user(&r.user, event, r.conn);
                    }
                }
            }
        }
    }

    /// Hands the result to whoever waits: an `ack` (or `error`) queued on
    /// the connection, or the HTTP API's channel.
    fn answer(
        &self,
        reply: Reply,
        result: Result<Delivery, Rejection>,
        ack: impl FnOnce(Option<&Id>, &Delivery) -> Vec<u8>,
    ) {
        match (reply, &result) {
            (Reply::Channel(tx), _) => {
                let _ = tx.send(result);
            }
            (Reply::Conn { conn, id }, Ok(d)) => self.hub.reply(&conn, ack(id.as_ref(), d)),
            (Reply::Conn { conn, id }, Err(e)) => {
                self.hub.metrics.error(e.code);
                self.hub.reply(
                    &conn,
                    proto::encode(&proto::Error::new(id.as_ref(), e.code, &e.message)),
                );
            }
        }
    }
}

/// What a batch changed so far: its writes, and what to undo if the
/// commit fails.
struct Batch {
    writes: Vec<Write>,
    old_rooms: Vec<(Arc<str>, Option<Count>)>,
    old_inboxes: Vec<(Arc<str>, Option<Count>)>,
    new_keys: Vec<DedupeKey>,
    /// Read positions written by this batch, (user, key) → upto.
    positions: HashMap<(Arc<str>, String), u64>,
    /// Messages recalled by this batch.
    recalled: Vec<Original>,
    /// The last placeholder seq given per room (true) or inbox (cluster
    /// mode).
    provisional: HashMap<(bool, Arc<str>), u64>,
}

fn store_failed(err: StoreError) -> Rejection {
    tracing::error!(%err, "store read failed");
    unavailable()
}

/// Puts a counter back as it was before a failed batch.
fn restore(counters: &mut HashMap<Arc<str>, Count>, name: Arc<str>, count: Option<Count>) {
    match count {
        Some(count) => counters.insert(name, count),
        None => counters.remove(&name),
    };
}

fn full(to: &Destination) -> Rejection {
    let what = match to {
        Destination::Room(_) => "rooms (--max-rooms)",
        Destination::User(_) => "inboxes (--max-inboxes)",
    };
    Rejection::new(
        ErrorCode::Unavailable,
        format!(
            "the server holds its maximum number of {what}; nothing was stored, \
             retry once idle ones are forgotten"
        ),
    )
}

fn unavailable() -> Rejection {
    Rejection::new(
        ErrorCode::Unavailable,
        "the message store is unavailable; nothing was stored, retry later",
    )
}
