//! The Redis sequencer: commits a batch of writes as Function calls in one
//! pipeline, so a batch costs one round trip (and, with `appendfsync
//! always`, the fsyncs Redis does for it before answering) however many
//! messages it carries: the single-node writer's group commit, moved into
//! Redis.
//!
//! Seqs come from Redis, not from the node: any node may write to any room,
//! and the function that appends is the one that counts.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, ServerErrorKind, Value};
use serde_json::value::RawValue;
use switchboard_protocol::{self as proto, Id};

use super::{keys, LIBRARY};
use crate::store::{Result, StoreError};

/// How to reach Redis and the limits every write applies.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `redis://HOST:PORT[/DB]`.
    pub url: String,
    /// How long a connect or a batch may take before it answers
    /// `unavailable`. The bound on how long a write waits while Redis is
    /// down; a batch that timed out may still have been written (resend
    /// with the same ids: the dedupe ids make that safe).
    pub timeout: Duration,
    /// Messages kept per room (exact `MAXLEN` of its stream). At least 1.
    pub retention: u64,
    /// How long a command id is remembered. At least 1 ms.
    pub dedupe_window: Duration,
}

/// A `publish` to a room, validated by the service layer.
#[derive(Clone, Debug)]
pub struct Publish {
    pub room: Arc<str>,
    pub from: Arc<str>,
    /// The client's own JSON, stored and delivered verbatim.
    pub body: Box<RawValue>,
    /// Idempotency key, deduplicated per (`from`, room) within the window.
    pub id: Option<Id>,
    /// Carried to the other nodes with the event, opaque here (the sending
    /// node and connection, for the node that must ack rather than
    /// deliver). Must not contain `|`.
    pub origin: String,
}

/// One write of a batch.
#[derive(Clone, Debug)]
pub enum Job {
    Publish(Publish),
}

/// What a job became.
#[derive(Debug)]
pub enum Outcome {
    /// Stored under `seq` and announced on the channel; `event` is the
    /// `message` event as stored and published, to deliver locally.
    New { seq: u64, ts: u64, event: Bytes },
    /// A repeated id: the original's seq; nothing was written.
    Duplicate { seq: u64 },
    /// Not written, or (`Unavailable` after a timeout or a dropped
    /// connection) not known to be: resend with the same id.
    Failed(StoreError),
}

/// A message on a room channel: `<seq>|<origin>|<event>`.
#[derive(Debug, PartialEq, Eq)]
pub struct ChannelMessage<'a> {
    pub seq: u64,
    pub origin: &'a [u8],
    pub event: &'a [u8],
}

impl<'a> ChannelMessage<'a> {
    pub fn parse(payload: &'a [u8]) -> Option<ChannelMessage<'a>> {
        let mut parts = payload.splitn(3, |&b| b == b'|');
        let seq = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let origin = parts.next()?;
        let event = parts.next()?;
        Some(ChannelMessage { seq, origin, event })
    }
}

/// A node's connection to Redis for writes. Cheap to clone (the connection
/// is shared and multiplexed); it reconnects by itself after Redis comes
/// back, so a node never has to recreate it.
#[derive(Clone)]
pub struct RedisSequencer {
    conn: ConnectionManager,
    settings: Arc<Settings>,
}

impl RedisSequencer {
    /// Connects and loads the function library (replacing an older copy of
    /// the same version, so the code that runs is the code of this build).
    pub async fn connect(settings: Settings) -> Result<RedisSequencer> {
        if settings.retention == 0 {
            return Err(StoreError::Internal(
                "retention must keep at least 1 message".into(),
            ));
        }
        if settings.dedupe_window.as_millis() == 0 {
            return Err(StoreError::Internal(
                "the dedupe window must be at least 1 ms".into(),
            ));
        }
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| StoreError::Unavailable(format!("redis URL {}: {e}", settings.url)))?;
        // Few, quick reconnect attempts per request: a write waiting for
        // Redis is bounded by `timeout` anyway, and the next request starts
        // a new attempt.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let timeout = settings.timeout;
        let conn = bounded(timeout, async {
            ConnectionManager::new_with_config(client, config)
                .await
                .map_err(|e| map_error(&e))
        })
        .await?;
        let sequencer = RedisSequencer {
            conn,
            settings: Arc::new(settings),
        };
        sequencer.load_library().await?;
        Ok(sequencer)
    }

    /// The connection, for reads that are not part of a batch.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    async fn load_library(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let mut load = redis::cmd("FUNCTION");
        load.arg("LOAD").arg("REPLACE").arg(LIBRARY);
        bounded(self.settings.timeout, async {
            load.query_async::<Value>(&mut conn)
                .await
                .map(drop)
                .map_err(|e| map_error(&e))
        })
        .await
    }

    /// Commits `jobs` as one pipeline (one round trip) and returns one
    /// outcome per job, in order. Jobs are independent: one failing (a
    /// damaged key) does not fail the others. If Redis restarted without
    /// the library (an empty data set), it is loaded again and the jobs it
    /// refused are sent once more: a refused call wrote nothing.
    pub async fn commit(&self, jobs: &[Job]) -> Vec<Outcome> {
        let mut outcomes: Vec<Outcome> = self.run(jobs).await;
        let missing: Vec<usize> = outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| matches!(o, Outcome::Failed(StoreError::Internal(m)) if m.contains(NO_FUNCTION)))
            .map(|(i, _)| i)
            .collect();
        if missing.is_empty() {
            return outcomes;
        }
        tracing::warn!("redis has no switchboard functions (restarted empty?): loading them again");
        if let Err(err) = self.load_library().await {
            for &i in &missing {
                outcomes[i] = Outcome::Failed(clone_error(&err));
            }
            return outcomes;
        }
        let retry: Vec<Job> = missing.iter().map(|&i| jobs[i].clone()).collect();
        for (i, outcome) in missing.into_iter().zip(self.run(&retry).await) {
            outcomes[i] = outcome;
        }
        outcomes
    }

    async fn run(&self, jobs: &[Job]) -> Vec<Outcome> {
        if jobs.is_empty() {
            return Vec::new();
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut prepared = Vec::with_capacity(jobs.len());
        for job in jobs {
            match self.call(job) {
                Ok(cmd) => {
                    pipe.add_command(cmd);
                    prepared.push(Ok(()));
                }
                Err(err) => prepared.push(Err(err)),
            }
        }
        let sent = prepared.iter().filter(|p| p.is_ok()).count();
        let mut replies = if sent == 0 {
            Ok(Vec::new())
        } else {
            let mut conn = self.conn.clone();
            bounded(self.settings.timeout, async {
                pipe.query_async::<Vec<Value>>(&mut conn)
                    .await
                    .map_err(|e| map_error(&e))
            })
            .await
        };
        if let Ok(values) = &replies {
            if values.len() != sent {
                replies = Err(StoreError::Internal(format!(
                    "redis answered {} replies to {sent} calls",
                    values.len()
                )));
            }
        }
        let mut values = match replies {
            Ok(values) => values.into_iter(),
            Err(err) => {
                return prepared
                    .into_iter()
                    .map(|p| Outcome::Failed(p.err().unwrap_or_else(|| clone_error(&err))))
                    .collect()
            }
        };
        jobs.iter()
            .zip(prepared)
            .map(|(job, prepared)| match prepared {
                Err(err) => Outcome::Failed(err),
                Ok(()) => match values.next() {
                    Some(value) => outcome(job, value),
                    None => Outcome::Failed(StoreError::Internal("redis reply missing".into())),
                },
            })
            .collect()
    }

    /// The FCALL for one job.
    fn call(&self, job: &Job) -> Result<redis::Cmd> {
        let Job::Publish(p) = job;
        if p.origin.contains('|') {
            return Err(StoreError::Internal(
                "a publish origin must not contain '|'".into(),
            ));
        }
        let json = |s: &str| {
            serde_json::to_string(s)
                .map_err(|e| StoreError::Internal(format!("encoding a name: {e}")))
        };
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("publish");
        match &p.id {
            Some(id) => cmd
                .arg(3)
                .arg(keys::room_meta(&p.room))
                .arg(keys::room_log(&p.room))
                .arg(keys::room_dedupe(&p.room, &p.from, id.as_json())),
            None => cmd
                .arg(2)
                .arg(keys::room_meta(&p.room))
                .arg(keys::room_log(&p.room)),
        };
        cmd.arg(keys::room_channel(&p.room))
            .arg(json(&p.room)?)
            .arg(json(&p.from)?)
            .arg(p.body.get())
            .arg(self.settings.retention)
            .arg(self.settings.dedupe_window.as_millis() as u64)
            .arg(&p.origin);
        Ok(cmd)
    }
}

/// The error text of a call to a function Redis does not have.
const NO_FUNCTION: &str = "Function not found";

/// Reads one function reply.
fn outcome(job: &Job, value: Value) -> Outcome {
    let Job::Publish(p) = job;
    let items = match value {
        Value::ServerError(err) => return Outcome::Failed(map_error(&err.into())),
        Value::Array(items) => items,
        other => return unexpected(&other),
    };
    let int = |v: Option<&Value>| match v {
        Some(Value::Int(n)) => u64::try_from(*n).ok(),
        _ => None,
    };
    let tag = match items.first() {
        Some(Value::BulkString(tag)) => tag.as_slice(),
        Some(Value::SimpleString(tag)) => tag.as_bytes(),
        _ => b"",
    };
    match (tag, int(items.get(1)), int(items.get(2))) {
        (b"dup", Some(seq), _) => Outcome::Duplicate { seq },
        (b"new", Some(seq), Some(ts)) => {
            let event = proto::encode(&proto::Message::new(&p.room, seq, &p.from, ts, &p.body));
            Outcome::New {
                seq,
                ts,
                event: Bytes::from(event),
            }
        }
        _ => unexpected(&Value::Array(items)),
    }
}

fn unexpected(value: &Value) -> Outcome {
    Outcome::Failed(StoreError::Internal(format!(
        "unexpected reply from the publish function: {value:?}"
    )))
}

/// Runs `f`, or answers `unavailable` once `timeout` has passed.
async fn bounded<T>(
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, f).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unavailable(format!(
            "redis did not answer within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// The same error again (one per job of a failed batch).
fn clone_error(err: &StoreError) -> StoreError {
    let text = err.to_string();
    match err {
        StoreError::Unavailable(_) => StoreError::Unavailable(text),
        StoreError::Full(_) => StoreError::Full(text),
        StoreError::Corrupt(_) => StoreError::Corrupt(text),
        StoreError::Internal(_) => StoreError::Internal(text),
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
            | ServerErrorKind::ReadOnly,
        )
        | ErrorKind::AuthenticationFailed => return StoreError::Unavailable(text),
        ErrorKind::Server(ServerErrorKind::NoPerm) => return StoreError::Unavailable(text),
        _ => {}
    }
    match err.code() {
        // Out of memory with `noeviction`: writes work again once memory
        // is freed (or the limit raised).
        Some("OOM") => StoreError::Full(text),
        // A script running too long, an AOF that cannot be written.
        Some("BUSY" | "MISCONF") => StoreError::Unavailable(text),
        // A key of the wrong type, or a room's log ahead of its counter
        // (the function refuses to reuse a seq): an operator has to look.
        Some("WRONGTYPE") => StoreError::Corrupt(text),
        _ if text.contains("equal or smaller than the target stream top item") => {
            StoreError::Corrupt(text)
        }
        _ => StoreError::Internal(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_messages_parse() {
        let m = ChannelMessage::parse(b"12|n1:7|{\"a\":\"|\"}");
        assert_eq!(
            m,
            Some(ChannelMessage {
                seq: 12,
                origin: b"n1:7",
                event: b"{\"a\":\"|\"}",
            })
        );
        assert_eq!(ChannelMessage::parse(b"x|o|{}"), None);
        assert_eq!(ChannelMessage::parse(b"1|o"), None);
    }
}
