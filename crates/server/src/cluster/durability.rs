//! Whether the Redis a node writes to backs "an ack means durable".
//!
//! The promise holds only if every write Redis acknowledged is on its disk
//! and stays in memory until then: `appendonly yes` (the AOF is written),
//! `appendfsync always` (fsynced before Redis answers, and before it sends
//! the pub/sub messages of the write, so no node sees what a crash could
//! take back), and `maxmemory-policy noeviction` (an evicted counter would
//! restart a room's seqs; with `noeviction` a full Redis refuses writes).
//! Read with CONFIG GET at start-up, to warn or refuse.

use redis::Value;

use super::store::map_error;
use crate::store::{Result, StoreError};

/// The settings read, and what is wrong with them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Durability {
    pub appendonly: String,
    pub appendfsync: String,
    pub maxmemory_policy: String,
    /// Why the promise does not hold, one line each; empty if it does.
    pub problems: Vec<String>,
}

impl Durability {
    /// Judges the three settings.
    pub fn judge(appendonly: &str, appendfsync: &str, maxmemory_policy: &str) -> Durability {
        let mut problems = Vec::new();
        if !appendonly.eq_ignore_ascii_case("yes") {
            problems.push(format!(
                "appendonly is {appendonly:?}, not \"yes\": acknowledged messages live in memory only (a snapshot, if any, keeps what was there when it was taken)"
            ));
        }
        if !appendfsync.eq_ignore_ascii_case("always") {
            problems.push(format!(
                "appendfsync is {appendfsync:?}, not \"always\": a crash of Redis loses up to the last second of acknowledged messages, and their seqs can be given again"
            ));
        }
        if !maxmemory_policy.eq_ignore_ascii_case("noeviction") {
            problems.push(format!(
                "maxmemory-policy is {maxmemory_policy:?}, not \"noeviction\": a full Redis evicts history and counters (seqs would start again) instead of refusing writes"
            ));
        }
        Durability {
            appendonly: appendonly.to_owned(),
            appendfsync: appendfsync.to_owned(),
            maxmemory_policy: maxmemory_policy.to_owned(),
            problems,
        }
    }

    /// Whether an ack means the message survives Redis being killed.
    pub fn holds(&self) -> bool {
        self.problems.is_empty()
    }

    /// One line for the log (or the refusal).
    pub fn message(&self) -> String {
        if self.holds() {
            "redis: appendonly yes, appendfsync always, maxmemory-policy noeviction: an ack means the message is on Redis' disk".into()
        } else {
            format!(
                "redis cannot keep the promise that an ack means durable: {}",
                self.problems.join("; ")
            )
        }
    }
}

/// Reads the settings with CONFIG GET (an error if CONFIG is not allowed,
/// as on some hosted Redis: then the operator has to vouch for them), on
/// a synchronous connection, as [`super::RedisStore::durability`] does.
pub fn check_durability(conn: &mut impl redis::ConnectionLike) -> Result<Durability> {
    let mut get = redis::cmd("CONFIG");
    get.arg("GET")
        .arg("appendonly")
        .arg("appendfsync")
        .arg("maxmemory-policy");
    let value: Value = get.query(conn).map_err(|e| map_error(&e))?;
    judge_reply(value)
}

fn judge_reply(value: Value) -> Result<Durability> {
    // RESP2 answers a flat array of name, value; RESP3 a map.
    let pairs: Vec<(Value, Value)> = match value {
        Value::Map(pairs) => pairs,
        Value::Array(items) => {
            let mut items = items.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                pairs.push((k, v));
            }
            pairs
        }
        other => {
            return Err(StoreError::Internal(format!(
                "unexpected CONFIG GET reply: {other:?}"
            )))
        }
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        other => format!("{other:?}"),
    };
    let setting = |name: &str| -> Result<String> {
        pairs
            .iter()
            .find(|(k, _)| text(k).eq_ignore_ascii_case(name))
            .map(|(_, v)| text(v))
            .ok_or_else(|| StoreError::Internal(format!("CONFIG GET did not return {name}")))
    };
    Ok(Durability::judge(
        &setting("appendonly")?,
        &setting("appendfsync")?,
        &setting("maxmemory-policy")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_each_setting() {
        assert!(Durability::judge("yes", "always", "noeviction").holds());
        let relaxed = Durability::judge("yes", "everysec", "noeviction");
        assert!(!relaxed.holds());
        assert_eq!(relaxed.problems.len(), 1);
        assert!(relaxed.message().contains("appendfsync is \"everysec\""));
        let bad = Durability::judge("no", "everysec", "allkeys-lru");
        assert_eq!(bad.problems.len(), 3);
    }
}
