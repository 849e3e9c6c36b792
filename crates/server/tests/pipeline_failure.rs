//! The write pipeline against a store that fails or stalls on demand: a
//! failed batch answers `unavailable`, delivers nothing, burns no seq and
//! forgets its dedupe ids; a successful one acks in commit order.
//!
//! Batches are made deterministic without sleeps: the store holds the
//! writer inside a commit while the test queues the jobs that must form the
//! next batch, then lets it go.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::value::RawValue;
use switchboard_protocol::{ErrorCode, Id};
use switchboard_server::hub::{Conn, Delivery, Hub};
use switchboard_server::metrics::Metrics;
use switchboard_server::pipeline::{Destination, Job, Pipeline, Reply, Settings, Submission};
use switchboard_server::service::Rejection;
use switchboard_server::store::{
    self, MemoryStore, Recovered, Retention, RoomRecord, Store, StoreError, Write,
};
use tokio::sync::oneshot;

use common::{of_type, seqs, take_events};

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Answer = oneshot::Receiver<Result<Delivery, Rejection>>;

/// A bounded wait for the writer thread: a failure, never a hang.
const WAIT: Duration = Duration::from_secs(30);

// Job construction lives here only, so a reshaped `Job` means editing these.

fn body(n: u64) -> Box<RawValue> {
    RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap_or_else(|e| panic!("{e}"))
}

fn id(raw: &str) -> Option<Id> {
    Some(Id::from_json(&format!("\"{raw}\"")).unwrap_or_else(|| panic!("bad id {raw}")))
}

/// A message from alice to `to`, answered on the returned channel.
fn message(to: Destination, command_id: Option<&str>, n: u64) -> (Job, Answer) {
    let (tx, rx) = oneshot::channel();
    let job = Job::Message(Submission {
        to,
        from: Arc::from("alice"),
        sender: None,
        body: body(n),
        id: command_id.and_then(id),
        reply: Reply::Channel(tx),
        change: None,
    });
    (job, rx)
}

/// A publish to `room` by alice, answered on the returned channel.
fn publish(room: &str, command_id: Option<&str>, n: u64) -> (Job, Answer) {
    message(Destination::Room(Arc::from(room)), command_id, n)
}

/// A publish by `conn`'s user, acked (or refused) on `conn` itself.
fn publish_from(conn: &Arc<Conn>, room: &str, command_id: &str, n: u64) -> Job {
    Job::Message(Submission {
        to: Destination::Room(Arc::from(room)),
        from: Arc::from(conn.user()),
        sender: Some(conn.id),
        body: body(n),
        id: id(command_id),
        reply: Reply::Conn {
            conn: conn.clone(),
            id: id(command_id),
        },
        change: None,
    })
}

/// A direct message from alice to `to`, answered on the returned channel.
fn send(to: &str, command_id: Option<&str>, n: u64) -> (Job, Answer) {
    message(Destination::User(Arc::from(to)), command_id, n)
}

/// What the next commit should do.
#[derive(Default)]
struct Script {
    fail_next: AtomicBool,
    /// Set: the next commit reports on the first channel, then waits for the
    /// second before going on.
    hold_next: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
}

/// A `MemoryStore` whose commits can be made to fail or to wait.
struct FlakyStore {
    inner: MemoryStore,
    script: Script,
}

/// A commit held by [`FlakyStore::hold_next_commit`].
struct Held {
    entered: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
}

impl Held {
    /// Waits until the writer is inside the held commit.
    fn wait_entered(&self) -> TestResult {
        self.entered.recv_timeout(WAIT)?;
        Ok(())
    }

    fn release(self) -> TestResult {
        self.release.send(())?;
        Ok(())
    }
}

impl FlakyStore {
    fn new() -> FlakyStore {
        FlakyStore {
            inner: MemoryStore::new(),
            script: Script::default(),
        }
    }

    /// The next commit fails (without touching the store).
    fn fail_next_commit(&self) {
        self.script.fail_next.store(true, Ordering::SeqCst);
    }

    /// The next commit waits until released.
    fn hold_next_commit(&self) -> Held {
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        *self.script.hold_next.lock() = Some((entered_tx, release_rx));
        Held { entered, release }
    }
}

impl Store for FlakyStore {
    fn recover(&self, dedupe_since: u64) -> store::Result<Recovered> {
        self.inner.recover(dedupe_since)
    }

    fn commit(&self, batch: &[Write]) -> store::Result<()> {
        // Decided on entry: a failure armed while this commit is held
        // applies to the next one.
        let fail = self.script.fail_next.swap(false, Ordering::SeqCst);
        let hold = self.script.hold_next.lock().take();
        if let Some((entered, release)) = hold {
            let _ = entered.send(());
            let _ = release.recv_timeout(WAIT);
        }
        if fail {
            return Err(StoreError::Unavailable("injected commit failure".into()));
        }
        self.inner.commit(batch)
    }

    fn room_after(&self, room: &str, after: u64, limit: usize) -> store::Result<Vec<RoomRecord>> {
        self.inner.room_after(room, after, limit)
    }

    fn room_before(&self, room: &str, before: u64, limit: usize) -> store::Result<Vec<RoomRecord>> {
        self.inner.room_before(room, before, limit)
    }

    fn room_oldest(&self, room: &str) -> store::Result<Option<u64>> {
        self.inner.room_oldest(room)
    }

    fn inbox_after(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> store::Result<Vec<store::DirectRecord>> {
        self.inner.inbox_after(user, after, limit)
    }

    fn inbox_oldest(&self, user: &str) -> store::Result<Option<u64>> {
        self.inner.inbox_oldest(user)
    }

    fn conversation(
        &self,
        a: &str,
        b: &str,
        before: u64,
        limit: usize,
    ) -> store::Result<Vec<store::DirectRecord>> {
        self.inner.conversation(a, b, before, limit)
    }

    fn cursor(&self, user: &str, device: &str) -> store::Result<u64> {
        self.inner.cursor(user, device)
    }

    fn room_entry(&self, room: &str, seq: u64) -> store::Result<Option<RoomRecord>> {
        self.inner.room_entry(room, seq)
    }

    fn direct_entry(&self, gid: u64) -> store::Result<Option<store::DirectRecord>> {
        self.inner.direct_entry(gid)
    }

    fn read_position(&self, user: &str, key: &str) -> store::Result<u64> {
        self.inner.read_position(user, key)
    }

    fn read_positions(&self, user: &str) -> store::Result<Vec<(String, u64)>> {
        self.inner.read_positions(user)
    }

    fn peers(&self, user: &str, limit: usize) -> store::Result<Vec<(String, u64, u64)>> {
        self.inner.peers(user, limit)
    }

    fn room_last(&self, room: &str) -> store::Result<Option<(u64, u64)>> {
        self.inner.room_last(room)
    }

    fn last_from(&self, user: &str, peer: &str) -> store::Result<Option<u64>> {
        self.inner.last_from(user, peer)
    }

    fn unread_direct(&self, user: &str, peer: &str, after: u64) -> store::Result<u64> {
        self.inner.unread_direct(user, peer, after)
    }

    fn unread_room(&self, room: &str, user: &str, after: u64) -> store::Result<u64> {
        self.inner.unread_room(room, user, after)
    }

    fn trim(&self, older_than: u64, dedupe_before: u64) -> store::Result<()> {
        self.inner.trim(older_than, dedupe_before)
    }

    fn check(&self) -> store::Result<()> {
        self.inner.check()
    }
}

struct Setup {
    store: Arc<FlakyStore>,
    hub: Arc<Hub>,
    pipeline: Pipeline,
    /// A member of "lobby": what it receives is what was delivered.
    watcher: Arc<Conn>,
}

impl Setup {
    fn new() -> Result<Setup, Box<dyn std::error::Error>> {
        let store = Arc::new(FlakyStore::new());
        let hub = Arc::new(Hub::new(Arc::new(Metrics::new())));
        let pipeline = Pipeline::start(
            store.clone(),
            hub.clone(),
            Settings {
                retention: Retention {
                    count: 1_000_000,
                    age_ms: u64::MAX,
                },
                dedupe_window: Duration::from_secs(3600),
                edit_window: Duration::from_secs(900),
                recall_window: Duration::from_secs(120),
                max_rooms: usize::MAX,
                max_inboxes: usize::MAX,
                max_dedupe: usize::MAX,
            },
        )?;
        let watcher = identified(&hub, "watcher");
        hub.join(&watcher, "lobby", None, None);
        take_events(&watcher);
        Ok(Setup {
            store,
            hub,
            pipeline,
            watcher,
        })
    }

    fn submit(&self, job: Job) -> TestResult {
        if self.pipeline.submit(job) {
            Ok(())
        } else {
            Err("the pipeline has stopped".into())
        }
    }

    /// Submits and waits for a successful answer.
    fn call(&self, (job, answer): (Job, Answer)) -> Result<Delivery, Box<dyn std::error::Error>> {
        self.submit(job)?;
        succeeded(answer)
    }

    /// Submits `first` and holds its commit; returns once the writer is
    /// stuck in it, so whatever is submitted next forms one batch.
    fn hold_after(&self, first: Job) -> Result<Held, Box<dyn std::error::Error>> {
        let held = self.store.hold_next_commit();
        self.submit(first)?;
        held.wait_entered()?;
        Ok(held)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.pipeline.stop();
    }
}

fn identified(hub: &Hub, user: &str) -> Arc<Conn> {
    let conn = hub.connect(None, 64 << 20);
    hub.identify(&conn, user, b"{\"type\":\"welcome\"}".to_vec(), 0)
        .unwrap_or_else(|e| panic!("identify: {e:?}"));
    hub.open_inbox(&conn);
    take_events(&conn);
    conn
}

/// The pipeline's answer on a channel, within [`WAIT`].
fn wait(answer: Answer) -> Result<Result<Delivery, Rejection>, Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    Ok(runtime.block_on(async { tokio::time::timeout(WAIT, answer).await })??)
}

/// The pipeline's answer, which must be a success.
fn succeeded(answer: Answer) -> Result<Delivery, Box<dyn std::error::Error>> {
    wait(answer)?.map_err(|e| format!("refused: {e:?}").into())
}

fn assert_unavailable(result: Result<Delivery, Rejection>) {
    match result {
        Err(e) => assert_eq!(e.code, ErrorCode::Unavailable),
        Ok(d) => panic!("expected unavailable, got {d:?}"),
    }
}

#[test]
fn a_failed_batch_answers_unavailable_and_delivers_nothing() -> TestResult {
    let s = Setup::new()?;
    let (first, first_answer) = publish("lobby", Some("p1"), 1);
    let held = s.hold_after(first)?;
    s.store.fail_next_commit();
    let (a, a_answer) = publish("lobby", Some("p2"), 2);
    let (b, b_answer) = publish("lobby", None, 3);
    let (c, c_answer) = send("bob", Some("d1"), 4);
    for job in [a, b, c] {
        s.submit(job)?;
    }
    held.release()?;

    assert_eq!(succeeded(first_answer)?.seq, 1);
    assert_unavailable(wait(a_answer)?);
    assert_unavailable(wait(b_answer)?);
    assert_unavailable(wait(c_answer)?);
    assert!(!s.pipeline.healthy());
    assert_eq!(seqs(&take_events(&s.watcher), "message"), [1]);
    assert_eq!(s.hub.room_seq("lobby"), 1);
    assert_eq!(s.hub.inbox_seq("bob"), 0);
    assert_eq!(s.store.room_after("lobby", 0, 10)?.len(), 1);
    assert!(s.store.inbox_after("bob", 0, 10)?.is_empty());
    Ok(())
}

#[test]
fn a_failed_batch_burns_no_seq_and_forgets_its_ids() -> TestResult {
    let s = Setup::new()?;
    assert_eq!(s.call(publish("lobby", Some("p1"), 1))?.seq, 1);
    assert_eq!(s.call(send("bob", Some("d1"), 1))?.seq, 1);

    s.store.fail_next_commit();
    assert_unavailable(wait({
        let (job, answer) = publish("lobby", Some("p2"), 2);
        s.submit(job)?;
        answer
    })?);
    s.store.fail_next_commit();
    assert_unavailable(wait({
        let (job, answer) = send("bob", Some("d2"), 2);
        s.submit(job)?;
        answer
    })?);

    // The same ids again: stored fresh, on the seqs the failure did not keep.
    let again = s.call(publish("lobby", Some("p2"), 2))?;
    assert!(!again.duplicate);
    assert_eq!(again.seq, 2);
    let again = s.call(send("bob", Some("d2"), 2))?;
    assert!(!again.duplicate);
    assert_eq!(again.seq, 2);
    assert_eq!(again.gid, Some(2), "the failed send's gid was reused");
    assert!(s.pipeline.healthy());
    assert_eq!(seqs(&take_events(&s.watcher), "message"), [1, 2]);
    let stored: Vec<u64> = s
        .store
        .room_after("lobby", 0, 10)?
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(stored, [1, 2]);
    Ok(())
}

#[test]
fn a_duplicate_of_an_id_in_the_failed_batch_fails_too() -> TestResult {
    let s = Setup::new()?;
    assert_eq!(s.call(publish("lobby", Some("old"), 1))?.seq, 1);
    let (first, first_answer) = publish("games", None, 0);
    let held = s.hold_after(first)?;
    s.store.fail_next_commit();
    let (original, original_answer) = publish("lobby", Some("new"), 2);
    let (repeat, repeat_answer) = publish("lobby", Some("new"), 2);
    // A repeat of an id committed earlier still stands.
    let (old_repeat, old_repeat_answer) = publish("lobby", Some("old"), 1);
    for job in [original, repeat, old_repeat] {
        s.submit(job)?;
    }
    held.release()?;

    succeeded(first_answer)?;
    assert_unavailable(wait(original_answer)?);
    assert_unavailable(wait(repeat_answer)?);
    let old = succeeded(old_repeat_answer)?;
    assert!(old.duplicate);
    assert_eq!(old.seq, 1);

    let fresh = s.call(publish("lobby", Some("new"), 2))?;
    assert!(!fresh.duplicate);
    assert_eq!(fresh.seq, 2);
    Ok(())
}

/// Delivery runs on its own thread, batches behind the commits: stopping
/// the pipeline still waits for every committed message to be delivered
/// and answered, in order, across batches.
#[test]
fn stopping_delivers_and_answers_everything_committed() -> TestResult {
    let s = Setup::new()?;
    let alice = identified(&s.hub, "alice");
    let (first, first_answer) = publish("lobby", None, 0);
    // Held, so the rest queue up behind it and form further batches.
    let held = s.hold_after(first)?;
    let mut answers = vec![first_answer];
    for n in 1..=300 {
        if n % 3 == 0 {
            s.submit(publish_from(&alice, "lobby", &format!("c{n}"), n))?;
        } else {
            let (job, answer) = publish("lobby", None, n);
            s.submit(job)?;
            answers.push(answer);
        }
    }
    held.release()?;
    s.pipeline.stop();

    // Answered before `stop` returned: nothing is waited for here.
    let seqs_answered: Vec<u64> = answers
        .into_iter()
        .map(|mut answer| match answer.try_recv() {
            Ok(Ok(d)) => Ok(d.seq),
            other => Err(format!("not answered by stop: {other:?}")),
        })
        .collect::<Result<_, _>>()?;
    let acked = seqs(&take_events(&alice), "ack");
    let mut all: Vec<u64> = seqs_answered.iter().chain(&acked).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=301).collect::<Vec<_>>());
    assert!(acked.windows(2).all(|w| w[0] < w[1]), "acks out of order");
    assert_eq!(
        seqs(&take_events(&s.watcher), "message"),
        (1..=301).collect::<Vec<_>>()
    );
    Ok(())
}

/// Consecutive messages of a batch to one room are delivered together (one
/// push per member): each member still gets them in seq order, members that
/// joined later only the newer ones, a sender never its own, and the acks
/// count who got each. A message from another connection ends the run, so
/// no connection sees a message committed after its own before its ack.
#[test]
fn a_run_to_one_room_reaches_each_member_in_order_and_acks_in_order() -> TestResult {
    let s = Setup::new()?;
    let alice = identified(&s.hub, "alice");
    s.hub.join(&alice, "lobby", None, None);
    let bob = identified(&s.hub, "bob");
    s.hub.join(&bob, "lobby", None, None);
    take_events(&alice);
    take_events(&bob);
    let (first, first_answer) = publish("games", None, 0);
    let held = s.hold_after(first)?;
    for n in 1..=4 {
        s.submit(publish_from(&alice, "lobby", &format!("a{n}"), n))?;
    }
    s.submit(publish_from(&bob, "lobby", "b5", 5))?;
    s.submit(publish_from(&alice, "lobby", "a6", 6))?;
    let (api, api_answer) = publish("lobby", None, 7);
    s.submit(api)?;
    held.release()?;
    assert_eq!(succeeded(first_answer)?.seq, 1);
    let api = succeeded(api_answer)?;
    assert_eq!((api.seq, api.delivered), (7, 3));

    // Alice: her acks, each before any message committed after it.
    let kinds = |events: &[serde_json::Value]| -> Vec<String> {
        events
            .iter()
            .map(|e| match e["type"].as_str() {
                Some("ack") => format!("ack {}", e["seq"]),
                other => format!("{} {}", other.unwrap_or("?"), e["seq"]),
            })
            .collect()
    };
    assert_eq!(
        kinds(&take_events(&alice)),
        [
            "ack 1",
            "ack 2",
            "ack 3",
            "ack 4",
            "message 5",
            "ack 6",
            "message 7"
        ]
    );
    assert_eq!(
        kinds(&take_events(&bob)),
        [
            "message 1",
            "message 2",
            "message 3",
            "message 4",
            "ack 5",
            "message 6",
            "message 7"
        ]
    );
    assert_eq!(
        seqs(&take_events(&s.watcher), "message"),
        (1..=7).collect::<Vec<_>>()
    );
    Ok(())
}

/// A member that joins while a run is being committed gets only what was
/// committed after its join point; replay covers the rest.
#[test]
fn a_run_skips_what_a_member_joined_after() -> TestResult {
    let s = Setup::new()?;
    assert_eq!(s.call(publish("lobby", None, 1))?.seq, 1);
    assert_eq!(s.call(publish("lobby", None, 2))?.seq, 2);
    let late = identified(&s.hub, "late");
    // Joined at seq 2: seqs 1 and 2 are the replay's, not live delivery's.
    s.hub.join(&late, "lobby", None, None);
    take_events(&late);
    let (first, first_answer) = publish("games", None, 0);
    let held = s.hold_after(first)?;
    let mut answers = Vec::new();
    for n in 3..=6 {
        let (job, answer) = publish("lobby", None, n);
        s.submit(job)?;
        answers.push(answer);
    }
    held.release()?;
    succeeded(first_answer)?;
    for (answer, seq) in answers.into_iter().zip(3..) {
        let d = succeeded(answer)?;
        assert_eq!((d.seq, d.delivered), (seq, 2), "watcher and late");
    }
    assert_eq!(seqs(&take_events(&late), "message"), [3, 4, 5, 6]);
    Ok(())
}

#[test]
fn a_successful_batch_acks_in_commit_order_with_gapless_seqs() -> TestResult {
    let s = Setup::new()?;
    let alice = identified(&s.hub, "alice");
    let (first, first_answer) = publish("lobby", None, 0);
    let held = s.hold_after(first)?;
    // One batch, two rooms interleaved.
    for n in 1..=10 {
        let room = if n % 2 == 0 { "games" } else { "lobby" };
        s.submit(publish_from(&alice, room, &format!("c{n}"), n))?;
    }
    let (last, last_answer) = publish("lobby", None, 11);
    s.submit(last)?;
    held.release()?;
    assert_eq!(succeeded(first_answer)?.seq, 1);
    assert_eq!(succeeded(last_answer)?.seq, 7);

    let events = take_events(&alice);
    let acks = of_type(&events, "ack");
    let ids: Vec<&str> = acks.iter().filter_map(|a| a["id"].as_str()).collect();
    let want: Vec<String> = (1..=10).map(|n| format!("c{n}")).collect();
    assert_eq!(ids, want);
    let lobby: Vec<u64> = acks
        .iter()
        .filter(|a| a["room"] == "lobby")
        .filter_map(|a| a["seq"].as_u64())
        .collect();
    let games: Vec<u64> = acks
        .iter()
        .filter(|a| a["room"] == "games")
        .filter_map(|a| a["seq"].as_u64())
        .collect();
    assert_eq!(lobby, [2, 3, 4, 5, 6]);
    assert_eq!(games, [1, 2, 3, 4, 5]);
    assert_eq!(
        seqs(&take_events(&s.watcher), "message"),
        (1..=7).collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn a_duplicate_of_a_committed_id_gets_the_original_seq() -> TestResult {
    let s = Setup::new()?;
    assert_eq!(s.call(publish("lobby", Some("k"), 1))?.seq, 1);
    assert_eq!(s.call(publish("lobby", Some("other"), 2))?.seq, 2);
    let repeat = s.call(publish("lobby", Some("k"), 1))?;
    assert!(repeat.duplicate);
    assert_eq!(repeat.seq, 1);
    assert_eq!(repeat.delivered, 0);

    // Ids are per sender, whatever the target: a new one for the send.
    assert_eq!(s.call(send("bob", Some("k2"), 1))?.seq, 1);
    let repeat = s.call(send("bob", Some("k2"), 1))?;
    assert!(repeat.duplicate);
    assert_eq!(repeat.seq, 1);

    assert_eq!(seqs(&take_events(&s.watcher), "message"), [1, 2]);
    assert_eq!(s.hub.room_seq("lobby"), 2);
    assert_eq!(s.store.room_after("lobby", 0, 10)?.len(), 2);
    assert_eq!(s.store.inbox_after("bob", 0, 10)?.len(), 1);
    Ok(())
}
