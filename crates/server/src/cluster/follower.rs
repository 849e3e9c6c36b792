//! The node's listening side of cluster mode: it follows the channels of
//! the rooms with a member here and the users with a connection here, and
//! delivers what they announce to the local connections, in seq order,
//! with no gap and no duplicate.
//!
//! Every entry, including those this node wrote, reaches the hub from here
//! (the writer only answers acks): two nodes publishing to one room are
//! ordered by the seqs Redis gave them, and this is the one place that
//! orders them for the local members.
//!
//! - **Follow.** The first local member of a room (or connection of a
//!   user) subscribes to its channel, then reads its last seq (the
//!   watermark) before the hub admits the member: everything after the
//!   watermark arrives live, everything up to it is in the store.
//! - **Gaps.** An entry whose seq is beyond `last + 1` means the channel
//!   lost something (a dropped connection, an output-buffer kick): the gap
//!   is read from the store and delivered first. An entry at or below
//!   `last` was delivered already and is dropped.
//! - **Silence.** A `PING` every [`PROBE_EVERY`] on the pub/sub connection
//!   must answer within [`PROBE_TIMEOUT`], or the connection is dropped and
//!   made again (a silent connection after a failover is the known failure
//!   of pub/sub). After any reconnect, and every [`SYNC_EVERY`], the last
//!   seq of every followed name is read back and any gap filled: a lost
//!   *last* message is found within that bound.
//! - **Unfollow.** A name without local members for [`LINGER`] is
//!   unsubscribed (lingering covers a member between follow and join).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::link::Link;
use dashmap::DashMap;
use futures_util::{FutureExt, StreamExt};
use switchboard_protocol::ErrorCode;
use tokio::sync::mpsc;

use super::store::{announced_direct, announced_room};
use super::{keys, Origin};
use crate::hub::Hub;
use crate::service::{replay, Rejection};
use crate::store::{RoomRecord, Store};

/// How often the pub/sub connection is probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a probe may take before the connection counts as dead.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often every followed name's last seq is compared with what was
/// delivered (finds a lost last message).
const SYNC_EVERY: Duration = Duration::from_secs(5);
/// How long a name without local members stays followed.
const LINGER: Duration = Duration::from_secs(5);
/// Entries read per store call while filling a gap.
const FILL_PAGE: usize = 512;
/// Channels per SUBSCRIBE when resubscribing after a reconnect.
const SUBSCRIBE_CHUNK: usize = 1000;

/// A room or a user, as followed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    Room(Arc<str>),
    User(Arc<str>),
}

impl Topic {
    fn channel(&self) -> String {
        match self {
            Topic::Room(room) => keys::room_channel(room),
            Topic::User(user) => keys::user_channel(user),
        }
    }

    fn meta(&self) -> String {
        match self {
            Topic::Room(room) => keys::room_meta(room),
            Topic::User(user) => keys::user_meta(user),
        }
    }

    /// The topic a channel name belongs to.
    fn of_channel(channel: &str) -> Option<Topic> {
        let rest = channel.strip_prefix("sb:{")?.strip_suffix("}:ch")?;
        if let Some(room) = rest.strip_prefix("r:") {
            Some(Topic::Room(Arc::from(room)))
        } else {
            rest.strip_prefix("u:")
                .map(|user| Topic::User(Arc::from(user)))
        }
    }
}

/// What a followed name has delivered.
struct Followed {
    /// The last seq delivered here (or the watermark).
    last: u64,
}

enum Command {
    Follow(Topic, Reply),
}

/// Where a follow's outcome goes.
enum Reply {
    /// A thread parked in [`Follower::wait`]: a std channel, so the waiting
    /// thread times out on its own clock even if every runtime thread is
    /// busy.
    Blocking(std::sync::mpsc::SyncSender<Result<(), String>>),
    /// A task (a login's inbox replay).
    Async(tokio::sync::oneshot::Sender<Result<(), String>>),
}

impl Reply {
    fn send(self, result: Result<(), String>) {
        match self {
            Reply::Blocking(tx) => {
                let _ = tx.send(result);
            }
            Reply::Async(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

/// Follows handled together: one SUBSCRIBE and one pipeline of reads for
/// all of them (a reconnect storm of logins is one round trip or two, not
/// one per user).
const FOLLOW_BATCH: usize = 500;

/// Threads waiting for a follow or a read at once. Each parks a runtime
/// worker (which tokio replaces from its blocking pool, 512 threads): past
/// this, a command answers `unavailable` at once and the client retries,
/// rather than a storm exhausting the pool. (128 refused 20 of 1,000
/// subscribers joining one room on 3 fresh nodes at once: every join that
/// arrives while the room's first follow runs waits for it.)
const MAX_WAITING: usize = 448;

/// The handle the command layer uses: follow a room or user before the hub
/// admits a member for it.
pub struct Follower {
    tx: mpsc::UnboundedSender<Command>,
    /// For reads the command layer makes directly (presence of a room not
    /// followed here, the room list).
    conn: Link,
    /// Names followed (and when last asked for): a follow of one of them
    /// costs a map lookup.
    followed: DashMap<Topic, Instant>,
    /// The pub/sub connection is up and resynced.
    up: AtomicBool,
    /// Told when `up` becomes true.
    came_up: tokio::sync::Notify,
    node: Arc<str>,
    timeout: Duration,
    handle: tokio::runtime::Handle,
    /// Threads in [`Follower::wait`] now.
    waiting: std::sync::atomic::AtomicUsize,
}

impl Follower {
    /// Starts following (on the current runtime). `redis_url` for the
    /// pub/sub connection; `store` and `conn` read gaps and watermarks.
    pub fn start(
        redis_url: &str,
        node: Arc<str>,
        hub: Arc<Hub>,
        store: Arc<dyn Store>,
        conn: Link,
        timeout: Duration,
    ) -> Result<Arc<Follower>, String> {
        let client = redis::Client::open(redis_url).map_err(|e| format!("redis URL: {e}"))?;
        let handle = tokio::runtime::Handle::current();
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            // A join waits with `block_in_place`, which only a
            // multi-threaded runtime allows.
            return Err("cluster mode needs tokio's multi-threaded runtime".into());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let follower = Arc::new(Follower {
            tx,
            conn: conn.clone(),
            followed: DashMap::new(),
            up: AtomicBool::new(false),
            came_up: tokio::sync::Notify::new(),
            node,
            timeout,
            handle,
            waiting: std::sync::atomic::AtomicUsize::new(0),
        });
        let listener = Listener {
            follower: follower.clone(),
            client,
            hub,
            store,
            conn,
            topics: HashMap::new(),
            behind: HashMap::new(),
        };
        follower.handle.spawn(listener.run(rx));
        Ok(follower)
    }

    /// Whether the node hears the other nodes (for `/readyz`).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Waits (at most `limit`) until the node hears the other nodes: a
    /// node serves only once it can admit members.
    pub async fn wait_up(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.came_up.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.is_up() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Follows `room` if it is not followed yet; on return, the hub's seq
    /// of the room is its watermark. Blocks the calling thread for at most
    /// the Redis timeout (a join waits for it: the joined seq must be the
    /// cluster's).
    pub fn follow_room(&self, room: &str) -> Result<(), Rejection> {
        self.follow(Topic::Room(Arc::from(room)))
    }

    /// The users online in `room` across the cluster, read from Redis (for
    /// a room without a member here, which this node does not follow).
    pub fn room_users(&self, room: &str) -> Result<Vec<Arc<str>>, Rejection> {
        let conn = self.conn.clone();
        let key = keys::room_users(room);
        let mut users: Vec<String> =
            self.block(async move { conn.query(redis::cmd("HKEYS").arg(key)).await })?;
        users.sort();
        Ok(users.into_iter().map(Arc::from).collect())
    }

    /// Every room with a counter in the cluster: (room, last seq, users
    /// online), sorted by name.
    pub fn rooms(&self) -> Result<Vec<(Arc<str>, u64, usize)>, Rejection> {
        let conn = self.conn.clone();
        self.block(async move {
            let mut names: Vec<String> =
                conn.query(redis::cmd("SMEMBERS").arg(keys::ROOMS)).await?;
            names.sort();
            let mut pipe = redis::pipe();
            for room in &names {
                pipe.cmd("HGET").arg(keys::room_meta(room)).arg("seq");
                pipe.cmd("HLEN").arg(keys::room_users(room));
            }
            let counts: Vec<Option<u64>> = conn.query_pipe(&pipe).await?;
            Ok(names
                .into_iter()
                .zip(counts.chunks(2))
                .map(|(room, c)| {
                    let seq = c.first().copied().flatten().unwrap_or(0);
                    let online = c.get(1).copied().flatten().unwrap_or(0) as usize;
                    (Arc::from(room), seq, online)
                })
                .collect())
        })
    }

    /// Runs a Redis read from the command layer's (synchronous) thread,
    /// bounded by the timeout.
    fn block<T: Send + 'static>(
        &self,
        read: impl std::future::Future<Output = redis::RedisResult<T>> + Send + 'static,
    ) -> Result<T, Rejection> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let _slot = self.slot()?;
        self.handle.spawn(async move {
            let _ = reply.send(read.await.map_err(|e| e.to_string()));
        });
        self.wait(answer)
    }

    fn follow(&self, topic: Topic) -> Result<(), Rejection> {
        if let Some(mut seen) = self.followed.get_mut(&topic) {
            *seen = Instant::now();
            return Ok(());
        }
        if !self.is_up() {
            return Err(unavailable());
        }
        let _slot = self.slot()?;
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        if self
            .tx
            .send(Command::Follow(topic, Reply::Blocking(reply)))
            .is_err()
        {
            return Err(unavailable());
        }
        self.wait(answer)
    }

    /// Follows `user` from a task, without parking a thread: a login's
    /// inbox replay waits for it (logins come in storms; joins of a room
    /// not followed here are rarer and wait with [`Follower::follow_room`]).
    pub async fn follow_user_async(&self, user: &str) -> Result<(), Rejection> {
        let topic = Topic::User(Arc::from(user));
        if let Some(mut seen) = self.followed.get_mut(&topic) {
            *seen = Instant::now();
            return Ok(());
        }
        if !self.is_up() {
            return Err(unavailable());
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self
            .tx
            .send(Command::Follow(topic, Reply::Async(reply)))
            .is_err()
        {
            return Err(unavailable());
        }
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(err))) => {
                tracing::warn!(%err, "cluster: following a user failed");
                Err(unavailable())
            }
            _ => Err(unavailable()),
        }
    }

    /// A place among the [`MAX_WAITING`] waiting threads.
    fn slot(&self) -> Result<WaitSlot<'_>, Rejection> {
        let before = self.waiting.fetch_add(1, Ordering::AcqRel);
        let slot = WaitSlot(&self.waiting);
        if before >= MAX_WAITING {
            tracing::debug!("cluster: too many commands waiting for redis");
            return Err(unavailable());
        }
        Ok(slot)
    }

    /// Waits for the listener's (or a read task's) answer, at most the
    /// Redis timeout. The thread parks on a std channel with its own
    /// clock, so the wait ends even if every runtime thread is busy (a
    /// runtime timer would need one of them); on a runtime worker,
    /// `block_in_place` first hands its other tasks to another thread.
    fn wait<T>(
        &self,
        answer: std::sync::mpsc::Receiver<Result<T, String>>,
    ) -> Result<T, Rejection> {
        let recv = || answer.recv_timeout(self.timeout);
        let outcome = match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(recv),
            Err(_) => recv(),
        };
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => {
                tracing::warn!(%err, "cluster: a redis call for a command failed");
                Err(unavailable())
            }
            Err(_) => Err(unavailable()),
        }
    }
}

/// Gives back a place among the waiting threads.
struct WaitSlot<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn unavailable() -> Rejection {
    Rejection::new(
        ErrorCode::Unavailable,
        "the cluster store is unavailable; retry later",
    )
}

/// The task that owns the pub/sub connection.
struct Listener {
    follower: Arc<Follower>,
    client: redis::Client,
    hub: Arc<Hub>,
    store: Arc<dyn Store>,
    /// For watermarks (one multiplexed connection, shared with the bus).
    conn: Link,
    topics: HashMap<Topic, Followed>,
    /// Names whose last seq was above what was delivered at the last
    /// periodic catch-up, with that seq.
    behind: HashMap<Topic, u64>,
}

/// What a catch-up fills.
#[derive(Clone, Copy)]
enum Catch {
    /// After a (re)connect: everything up to each name's last seq (what
    /// was published while not subscribed is lost to the stream).
    Up,
    /// Periodically: only what was already missing the round before.
    Lost,
}

impl Listener {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let connected =
                tokio::time::timeout(self.follower.timeout, self.client.get_async_pubsub()).await;
            let pubsub = match connected {
                Ok(Ok(pubsub)) => pubsub,
                Ok(Err(err)) => {
                    tracing::warn!(%err, "cluster: pub/sub connect failed");
                    self.refuse_while(&mut rx, jittered(backoff)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
                Err(_) => {
                    tracing::warn!("cluster: pub/sub connect timed out");
                    self.refuse_while(&mut rx, jittered(backoff)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            let (mut sink, mut stream) = pubsub.split();
            if let Err(err) = self.resubscribe(&mut sink).await {
                tracing::warn!(%err, "cluster: resubscribing failed");
                self.refuse_while(&mut rx, jittered(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            // Subscribed first, then caught up: anything published since is
            // either in the stream or read back here.
            if let Err(err) = self.sync_all(Catch::Up).await {
                tracing::warn!(%err, "cluster: catching up after connect failed");
                self.refuse_while(&mut rx, jittered(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            backoff = Duration::from_millis(100);
            self.follower.up.store(true, Ordering::Relaxed);
            self.follower.came_up.notify_waiters();
            tracing::info!(topics = self.topics.len(), "cluster: listening");
            let mut probe = tokio::time::interval(PROBE_EVERY);
            let mut last_sync = Instant::now();
            loop {
                tokio::select! {
                    message = stream.next() => match message {
                        Some(message) => self.on_message(message).await,
                        None => {
                            tracing::warn!("cluster: pub/sub connection lost");
                            break;
                        }
                    },
                    command = rx.recv() => match command {
                        Some(Command::Follow(topic, reply)) => {
                            // What was received already goes first: an
                            // announcement for a room unfollowed a moment
                            // ago must not land on a new follow's state.
                            while let Some(Some(message)) = stream.next().now_or_never() {
                                self.on_message(message).await;
                            }
                            let mut batch = vec![(topic, reply)];
                            while batch.len() < FOLLOW_BATCH {
                                match rx.try_recv() {
                                    Ok(Command::Follow(topic, reply)) => batch.push((topic, reply)),
                                    Err(_) => break,
                                }
                            }
                            if !self.follow_all(&mut sink, batch).await {
                                tracing::warn!("cluster: a subscribe got no answer: reconnecting");
                                break;
                            }
                        }
                        None => return,
                    },
                    _ = probe.tick() => {
                        let ping = tokio::time::timeout(PROBE_TIMEOUT, sink.ping::<redis::Value>()).await;
                        if !matches!(ping, Ok(Ok(_))) {
                            tracing::warn!("cluster: pub/sub connection silent: reconnecting");
                            break;
                        }
                        if last_sync.elapsed() >= SYNC_EVERY {
                            last_sync = Instant::now();
                            if !self.unfollow_idle(&mut sink).await {
                                tracing::warn!("cluster: an unsubscribe got no answer: reconnecting");
                                break;
                            }
                            if let Err(err) = self.sync_all(Catch::Lost).await {
                                tracing::warn!(%err, "cluster: periodic catch-up failed");
                            }
                        }
                    }
                }
            }
            self.follower.up.store(false, Ordering::Relaxed);
        }
    }

    /// Answers follows with an error for `wait` (Redis is unreachable).
    async fn refuse_while(&mut self, rx: &mut mpsc::UnboundedReceiver<Command>, wait: Duration) {
        self.follower.up.store(false, Ordering::Relaxed);
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                command = rx.recv() => match command {
                    Some(Command::Follow(_, reply)) => {
                        reply.send(Err("redis is unreachable".into()));
                    }
                    None => return,
                },
            }
        }
    }

    async fn resubscribe(&mut self, sink: &mut redis::aio::PubSubSink) -> redis::RedisResult<()> {
        let channels: Vec<String> = self.topics.keys().map(Topic::channel).collect();
        for chunk in channels.chunks(SUBSCRIBE_CHUNK) {
            // The crate waits for the confirmation without a limit.
            match tokio::time::timeout(self.follower.timeout, sink.subscribe(chunk)).await {
                Ok(done) => done?,
                Err(_) => {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "subscribe timed out",
                    )))
                }
            }
        }
        Ok(())
    }

    /// Follows a batch of names: one SUBSCRIBE for the new ones, then one
    /// pipeline reading their watermarks (and rooms' users), then every
    /// waiter is answered. Returns false if the subscribe got no answer
    /// within the timeout (the connection is to be made again).
    async fn follow_all(
        &mut self,
        sink: &mut redis::aio::PubSubSink,
        batch: Vec<(Topic, Reply)>,
    ) -> bool {
        let mut new: Vec<Topic> = Vec::new();
        for (topic, _) in &batch {
            if !self.topics.contains_key(topic) && !new.contains(topic) {
                new.push(topic.clone());
            }
        }
        let outcome = if new.is_empty() {
            Ok(())
        } else {
            let channels: Vec<String> = new.iter().map(Topic::channel).collect();
            match tokio::time::timeout(self.follower.timeout, sink.subscribe(&channels)).await {
                Err(_) => {
                    for (_, reply) in batch {
                        reply.send(Err("subscribe timed out".into()));
                    }
                    return false;
                }
                Ok(Err(err)) => Err(err.to_string()),
                Ok(Ok(())) => match self.start(&new).await {
                    Ok(()) => Ok(()),
                    Err(err) => {
                        // Not followed after all: their announcements
                        // would only be dropped.
                        let limit = self.follower.timeout;
                        let _ = tokio::time::timeout(limit, sink.unsubscribe(&channels)).await;
                        Err(err)
                    }
                },
            }
        };
        for (topic, reply) in batch {
            if outcome.is_ok() {
                self.follower.followed.insert(topic, Instant::now());
            }
            reply.send(outcome.clone());
        }
        true
    }

    /// Reads the watermarks of names just subscribed to (and the users of
    /// rooms) in one pipeline, and starts following them.
    async fn start(&mut self, new: &[Topic]) -> Result<(), String> {
        let mut pipe = redis::pipe();
        for topic in new {
            pipe.cmd("HGET").arg(topic.meta()).arg("seq");
        }
        for topic in new {
            if let Topic::Room(room) = topic {
                pipe.cmd("HKEYS").arg(keys::room_users(room));
            }
        }
        let values: Vec<redis::Value> = self
            .conn
            .query_pipe(&pipe)
            .await
            .map_err(|e| e.to_string())?;
        let (seqs, lists) = values.split_at(new.len().min(values.len()));
        let mut lists = lists.iter();
        for (topic, seq) in new.iter().zip(seqs) {
            let last: u64 = redis::from_redis_value_ref(seq).ok().flatten().unwrap_or(0);
            if let Topic::Room(room) = topic {
                let users: Vec<String> = lists
                    .next()
                    .and_then(|v| redis::from_redis_value_ref(v).ok())
                    .unwrap_or_default();
                self.hub.cluster_presence_seed(room, users);
            }
            self.set_seq(topic, last);
            self.topics.insert(topic.clone(), Followed { last });
        }
        Ok(())
    }

    /// Tells the hub a name's committed seq (never lowers it).
    fn set_seq(&self, topic: &Topic, seq: u64) {
        match topic {
            Topic::Room(room) if self.hub.room_seq(room) < seq => self.hub.set_room_seq(room, seq),
            Topic::User(user) if self.hub.inbox_seq(user) < seq => {
                self.hub.set_inbox_seq(user, seq)
            }
            _ => {}
        }
    }

    /// Unsubscribes names with no local member for [`LINGER`].
    /// Returns false if an unsubscribe got no answer (the connection is
    /// to be made again).
    async fn unfollow_idle(&mut self, sink: &mut redis::aio::PubSubSink) -> bool {
        let idle: Vec<Topic> = self
            .topics
            .keys()
            .filter(|topic| {
                let live = match topic {
                    Topic::Room(room) => self.hub.has_room(room),
                    Topic::User(user) => self.hub.has_user(user),
                };
                !live
                    && self
                        .follower
                        .followed
                        .get(*topic)
                        .is_none_or(|seen| seen.elapsed() >= LINGER)
            })
            .cloned()
            .collect();
        for topic in idle {
            // Out of the fast path first: a follow from now on asks again
            // (and waits for this task). One that passed the fast path
            // since the check above left a fresh time: keep the topic.
            if let Some((topic, seen)) = self.follower.followed.remove(&topic) {
                if seen.elapsed() < LINGER {
                    self.follower.followed.insert(topic, seen);
                    continue;
                }
            }
            let limit = self.follower.timeout;
            if !matches!(
                tokio::time::timeout(limit, sink.unsubscribe(topic.channel())).await,
                Ok(Ok(()))
            ) {
                // The connection is failing; the reconnect resubscribes
                // what is still followed.
                self.follower.followed.insert(topic, Instant::now());
                return false;
            }
            if let Topic::Room(room) = &topic {
                self.hub.cluster_presence_forget(room);
            }
            self.topics.remove(&topic);
            self.behind.remove(&topic);
        }
        true
    }

    /// Reads every followed name's last seq (one pipeline) and delivers
    /// what was missed (see [`Catch`]). A name whose catch-up fails is
    /// tried again next time; only a failed read of the seqs fails the
    /// whole.
    async fn sync_all(&mut self, catch: Catch) -> Result<(), String> {
        if self.topics.is_empty() {
            return Ok(());
        }
        let topics: Vec<Topic> = self.topics.keys().cloned().collect();
        let mut pipe = redis::pipe();
        for topic in &topics {
            pipe.cmd("HGET").arg(topic.meta()).arg("seq");
        }
        let seqs: Vec<Option<u64>> = self
            .conn
            .query_pipe(&pipe)
            .await
            .map_err(|e| e.to_string())?;
        for (topic, seq) in topics.into_iter().zip(seqs) {
            let seq = seq.unwrap_or(0);
            let last = self.topics.get(&topic).map_or(0, |f| f.last);
            let upto = match catch {
                Catch::Up => seq,
                // Announced but still queued behind this task is not
                // lost: only what the previous round saw and is still
                // missing is (filling it now would also hand senders
                // their own messages, which the announcement names).
                Catch::Lost => self.behind.get(&topic).copied().unwrap_or(0),
            };
            if upto > last {
                if let Err(err) = self.fill(&topic, last, upto).await {
                    tracing::warn!(%err, "cluster: catching up a name failed; trying again later");
                }
            }
            let last = self.topics.get(&topic).map_or(0, |f| f.last);
            if seq > last {
                self.behind.insert(topic, seq);
            } else {
                self.behind.remove(&topic);
            }
        }
        // Presence announcements missed while deaf: read the lists again
        // and announce the differences.
        let rooms: Vec<Arc<str>> = self
            .topics
            .keys()
            .filter_map(|t| match t {
                Topic::Room(room) => Some(room.clone()),
                Topic::User(_) => None,
            })
            .collect();
        if matches!(catch, Catch::Up) && !rooms.is_empty() {
            let mut pipe = redis::pipe();
            for room in &rooms {
                pipe.cmd("HKEYS").arg(keys::room_users(room));
            }
            let lists: Vec<Vec<String>> = self
                .conn
                .query_pipe(&pipe)
                .await
                .map_err(|e| e.to_string())?;
            for (room, users) in rooms.iter().zip(lists) {
                self.hub.cluster_presence_sync(room, users);
            }
        }
        Ok(())
    }

    async fn on_message(&mut self, message: redis::Msg) {
        let Some(topic) = Topic::of_channel(message.get_channel_name()) else {
            return;
        };
        let payload = message.get_payload_bytes();
        let Some((kind, rest)) = split_once(payload) else {
            return;
        };
        match kind {
            b"s" => self.on_entry(&topic, rest).await,
            b"e" | b"g" => {
                let Some((origin, event)) = split_once(rest) else {
                    return;
                };
                let except = Origin::parse(origin).conn_on(&self.follower.node);
                match (&topic, kind) {
                    (Topic::User(user), b"e") => {
                        self.hub.to_user(user, event.to_vec(), except);
                    }
                    (Topic::User(user), _) => {
                        self.hub.signal_user(user, event.to_vec());
                    }
                    (Topic::Room(room), _) => {
                        self.hub
                            .signal_room(room, event.to_vec(), except.unwrap_or(0));
                    }
                }
            }
            b"p" => {
                let Topic::Room(room) = &topic else { return };
                if !self.topics.contains_key(&topic) {
                    // Unfollowed meanwhile: the next follow reads the list.
                    return;
                }
                let Some((change, user)) = split_once(rest) else {
                    return;
                };
                let Ok(user) = std::str::from_utf8(user) else {
                    return;
                };
                self.hub.cluster_presence(room, user, change == b"j");
            }
            b"k" => {
                if let Topic::User(user) = &topic {
                    self.hub.kick(user);
                }
            }
            _ => tracing::debug!("cluster: unknown announcement"),
        }
    }

    /// A stored entry announced on `topic`'s channel.
    async fn on_entry(&mut self, topic: &Topic, rest: &[u8]) {
        let Some((origin, record)) = split_once(rest) else {
            return;
        };
        let sender = Origin::parse(origin).conn_on(&self.follower.node);
        let damaged = || tracing::warn!("cluster: an announced entry does not parse");
        match topic {
            Topic::Room(_) => {
                let Some(entry) = announced_room(record) else {
                    return damaged();
                };
                self.sequenced(topic, entry.seq, Entry::Room(entry, sender))
                    .await;
            }
            Topic::User(user) => {
                let Some(entry) = announced_direct(record) else {
                    return damaged();
                };
                if *entry.to == **user {
                    self.sequenced(topic, entry.seq, Entry::Inbox(entry, sender))
                        .await;
                } else if *entry.from == **user {
                    // The sender's (or reader's) other devices get a copy:
                    // not an entry of their inbox, so not sequenced.
                    if let Some(event) = replay::direct_event(entry) {
                        self.hub.to_user(user, event, sender);
                    }
                }
            }
        }
    }

    /// Delivers an entry in seq order: after filling any gap before it.
    async fn sequenced(&mut self, topic: &Topic, seq: u64, entry: Entry) {
        let Some(last) = self.topics.get(topic).map(|f| f.last) else {
            // Announced after an unsubscribe: nobody here wants it.
            return;
        };
        if seq <= last {
            return;
        }
        if seq > last + 1 {
            if let Err(err) = self.fill(topic, last, seq - 1).await {
                // Delivering this one would leave a hole: the periodic
                // catch-up delivers it with the gap.
                tracing::warn!(%err, "cluster: filling a gap failed");
                return;
            }
        }
        self.deliver(topic, entry);
    }

    /// Reads `(after, upto]` from the store and delivers it.
    async fn fill(&mut self, topic: &Topic, after: u64, upto: u64) -> Result<(), String> {
        let mut after = after;
        while after < upto {
            let store = self.store.clone();
            let page = topic.clone();
            let limit = FILL_PAGE.min((upto - after) as usize);
            let entries = tokio::task::spawn_blocking(move || match &page {
                Topic::Room(room) => store
                    .room_after(room, after, limit)
                    .map(|r| r.into_iter().map(|e| Entry::Room(e, None)).collect()),
                Topic::User(user) => store
                    .inbox_after(user, after, limit)
                    .map(|r| r.into_iter().map(|e| Entry::Inbox(e, None)).collect()),
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e: crate::store::StoreError| e.to_string())?;
            let entries: Vec<Entry> = entries;
            if entries.is_empty() {
                // Trimmed by retention: nothing to deliver up to `upto`;
                // a member that needs it resumes and gets a reset.
                self.skip_to(topic, upto);
                return Ok(());
            }
            let before = after;
            for entry in entries {
                let seq = entry.seq();
                if seq > upto {
                    break;
                }
                self.deliver(topic, entry);
                after = seq;
            }
            if after == before {
                // Everything up to `upto` was trimmed since the seq was
                // read (the page starts above it): nothing left to fill.
                self.skip_to(topic, upto);
                return Ok(());
            }
            if let Some(f) = self.topics.get(topic) {
                after = after.max(f.last);
            }
        }
        Ok(())
    }

    fn skip_to(&mut self, topic: &Topic, seq: u64) {
        if let Some(f) = self.topics.get_mut(topic) {
            f.last = f.last.max(seq);
        }
        self.set_seq(topic, seq);
    }

    /// Hands one entry to the hub and moves the topic's position.
    fn deliver(&mut self, topic: &Topic, entry: Entry) {
        let seq = entry.seq();
        match self.topics.get_mut(topic) {
            Some(f) if seq > f.last => f.last = seq,
            _ => return,
        }
        match entry {
            Entry::Room(record, sender) => {
                let room: Arc<str> = Arc::from(record.room.as_str());
                self.hub.set_room_seq(&room, seq);
                if let Some(event) = replay::message_event(record) {
                    self.hub.deliver_room_entry(&room, seq, event, sender);
                }
            }
            Entry::Inbox(record, sender) => {
                let to: Arc<str> = Arc::from(record.to.as_str());
                self.hub.set_inbox_seq(&to, seq);
                if let Some(event) = replay::direct_event(record) {
                    self.hub.deliver_inbox_only(&to, seq, event, sender);
                }
            }
        }
    }
}

/// An entry to deliver, with the connection that got the ack instead (on
/// this node).
enum Entry {
    Room(RoomRecord, Option<u64>),
    Inbox(crate::store::DirectRecord, Option<u64>),
}

impl Entry {
    fn seq(&self) -> u64 {
        match self {
            Entry::Room(r, _) => r.seq,
            Entry::Inbox(d, _) => d.seq,
        }
    }
}

/// `head|tail` at the first `|`.
fn split_once(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == b'|')?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

/// `base` ± 25 %, so nodes that lost Redis together do not retry together.
fn jittered(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let spread = base / 2;
    base - base / 4 + spread.mul_f64(f64::from(nanos % 1000) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_map_back_to_topics() {
        for topic in [
            Topic::Room(Arc::from("lobby")),
            Topic::User(Arc::from("ann")),
            Topic::Room(Arc::from("a}:ch{r:b")),
        ] {
            assert_eq!(Topic::of_channel(&topic.channel()), Some(topic));
        }
        assert_eq!(Topic::of_channel("sb:{x:y}:ch"), None);
        assert_eq!(Topic::of_channel("other"), None);
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        let base = Duration::from_millis(400);
        let j = jittered(base);
        assert!(j >= Duration::from_millis(300) && j <= Duration::from_millis(500));
    }
}
