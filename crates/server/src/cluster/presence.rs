//! Cluster-wide presence, the node's side (`presence.lua` is the other):
//! it reports the local joins and leaves (a user's first connection in a
//! room here, their last one), renews the node's lease, and reaps dead
//! nodes.
//!
//! Bounds: a node renews its lease (`--node-lease`, 5 s by default) every
//! fifth of it; every node runs the reaper as often. A node killed with
//! `kill -9` has its users' leaves announced at most lease + a fifth of it
//! (6 s by default) after its last renewal. A node that was out of touch longer than its lease
//! (or could not report while Redis was down) finds out at the next renewal
//! and resyncs its whole set: what it holds now replaces what Redis has,
//! and only the difference is announced.

use std::sync::Arc;
use std::time::Duration;

use super::link::Link;
use tokio::sync::mpsc;

use crate::hub::Hub;

/// How often a node renews and reaps, as a fraction of its lease: a lease
/// survives four lost renewals in a row.
const RENEWALS_PER_LEASE: u32 = 5;
/// Presences of dead nodes subtracted per reap call (bounded work per
/// call: Redis runs nothing else meanwhile).
const REAP_BUDGET: usize = 2000;
/// Reports sent in one FCALL.
const REPORT_BATCH: usize = 500;

/// The Redis Function library for presence.
pub const LIBRARY: &str = include_str!("presence.lua");

/// One local change.
enum Report {
    /// A user's first connection here joined a room (or their last left).
    Presence(Arc<str>, Arc<str>, bool),
    /// Member connections of a room here.
    RoomConns(Arc<str>, usize),
    /// Connections of a user here.
    UserConns(Arc<str>, usize),
}

impl Report {
    fn args(&self, call: &mut redis::Cmd) {
        match self {
            Report::Presence(room, user, joined) => {
                call.arg("p")
                    .arg(&**room)
                    .arg(&**user)
                    .arg(if *joined { "1" } else { "0" });
            }
            Report::RoomConns(room, n) => {
                call.arg("r").arg(&**room).arg(*n);
            }
            Report::UserConns(user, n) => {
                call.arg("u").arg(&**user).arg(*n);
            }
        }
    }
}

/// Reports local presence changes, in order, from one task.
pub struct Presence {
    tx: mpsc::UnboundedSender<Report>,
    /// The reporting task: stopped before the node retires, so that no
    /// renewal brings its presences back.
    task: tokio::task::AbortHandle,
}

impl Presence {
    /// Loads the library and starts the reporting and lease tasks on the
    /// current runtime.
    pub async fn start(
        conn: Link,
        node: Arc<str>,
        hub: Arc<Hub>,
        lease: Duration,
    ) -> redis::RedisResult<Presence> {
        load(&conn).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let reporter = Reporter {
            conn,
            node,
            hub,
            dirty: true,
            lease: lease.max(Duration::from_millis(RENEWALS_PER_LEASE as u64 * 10)),
        };
        let task = tokio::spawn(reporter.run(rx));
        Ok(Presence {
            tx,
            task: task.abort_handle(),
        })
    }
}

impl Presence {
    /// Stops reporting and renewing (shutdown, before [`retire`]).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl crate::hub::ClusterSink for Presence {
    fn presence(&self, room: &str, user: &str, joined: bool) {
        let _ = self
            .tx
            .send(Report::Presence(Arc::from(room), Arc::from(user), joined));
    }

    fn room_conns(&self, room: &str, conns: usize) {
        let _ = self.tx.send(Report::RoomConns(Arc::from(room), conns));
    }

    fn user_conns(&self, user: &str, conns: usize) {
        let _ = self.tx.send(Report::UserConns(Arc::from(user), conns));
    }
}

async fn load(conn: &Link) -> redis::RedisResult<()> {
    conn.query::<()>(
        redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(LIBRARY),
    )
    .await
}

/// Ends a node's presence at once (graceful shutdown): its lease ends and
/// it reaps itself.
pub async fn retire(conn: &Link, node: &str) -> redis::RedisResult<()> {
    conn.query::<()>(redis::cmd("FCALL").arg("retire").arg(0).arg(node))
        .await?;
    loop {
        let waiting: u64 = conn
            .query(redis::cmd("FCALL").arg("reap").arg(0).arg(REAP_BUDGET))
            .await?;
        if waiting == 0 {
            return Ok(());
        }
    }
}

struct Reporter {
    conn: Link,
    node: Arc<str>,
    hub: Arc<Hub>,
    /// A report failed or the node was reaped: the next renewal resyncs.
    dirty: bool,
    /// How long this node's presences outlive its last renewal.
    lease: Duration,
}

impl Reporter {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Report>) {
        let mut tick = tokio::time::interval(self.lease / RENEWALS_PER_LEASE);
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                got = rx.recv() => {
                    let Some(first) = got else { return };
                    batch.push(first);
                    while batch.len() < REPORT_BATCH {
                        match rx.try_recv() {
                            Ok(report) => batch.push(report),
                            Err(_) => break,
                        }
                    }
                    if !self.dirty {
                        if let Err(err) = self.send(&batch).await {
                            tracing::warn!(%err, "cluster: presence report failed; resyncing");
                            self.dirty = true;
                        }
                    }
                    // While dirty, the resync carries these changes.
                    batch.clear();
                }
                _ = tick.tick() => self.renew().await,
            }
        }
    }

    async fn send(&mut self, batch: &[Report]) -> redis::RedisResult<()> {
        let mut call = redis::cmd("FCALL");
        call.arg("here").arg(0).arg(&*self.node);
        for report in batch {
            report.args(&mut call);
        }
        self.conn.query::<()>(&call).await
    }

    async fn renew(&mut self) {
        let held: redis::RedisResult<u64> = self
            .conn
            .query(
                redis::cmd("FCALL")
                    .arg("lease")
                    .arg(0)
                    .arg(&*self.node)
                    .arg(self.lease.as_millis() as u64),
            )
            .await;
        match held {
            Ok(0) => self.dirty = true,
            Ok(_) => {}
            Err(err) => {
                if err.to_string().contains("Function not found") {
                    // Redis lost its functions (restarted empty).
                    let _ = load(&self.conn).await;
                }
                tracing::debug!(%err, "cluster: lease renewal failed");
                self.dirty = true;
                return;
            }
        }
        if self.dirty {
            match self.resync().await {
                Ok(()) => self.dirty = false,
                Err(err) => tracing::warn!(%err, "cluster: presence resync failed"),
            }
        }
        let reaped: redis::RedisResult<u64> = self
            .conn
            .query(redis::cmd("FCALL").arg("reap").arg(0).arg(REAP_BUDGET))
            .await;
        if let Err(err) = reaped {
            tracing::debug!(%err, "cluster: reaping failed");
        }
    }

    async fn resync(&mut self) -> redis::RedisResult<()> {
        let mut call = redis::cmd("FCALL");
        call.arg("resync").arg(0).arg(&*self.node);
        let here = self.hub.local_presence();
        for (room, user) in here.presences {
            Report::Presence(room, user, true).args(&mut call);
        }
        for (room, n) in here.room_conns {
            Report::RoomConns(room, n).args(&mut call);
        }
        for (user, n) in here.user_conns {
            Report::UserConns(user, n).args(&mut call);
        }
        self.conn.query::<()>(&call).await
    }
}
