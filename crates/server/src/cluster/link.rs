//! The node's shared asynchronous connection to Redis (announcements,
//! presence, watermarks), replaced when it goes silent.
//!
//! The `redis` crate's `ConnectionManager` reconnects after an I/O error,
//! but a response that never comes (a stalled network path, a NAT that
//! dropped the connection's state, a frozen proxy) is a timeout, which it
//! retries on the same connection for ever: every later command times out
//! too, and the node would stop renewing its lease and be reaped while
//! alive. A timeout here drops the connection; the next command makes a
//! new one.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, Pipeline, RedisResult};

/// Cheap to clone; every clone shares the connection.
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    timeout: Duration,
    /// `None` after a timeout: the next command connects anew.
    current: Mutex<Option<ConnectionManager>>,
}

impl Link {
    /// Connects (bounded by `timeout`, as is every command).
    pub async fn connect(client: redis::Client, timeout: Duration) -> RedisResult<Link> {
        let link = Link {
            inner: Arc::new(Inner {
                client,
                timeout,
                current: Mutex::new(None),
            }),
        };
        link.connection().await?;
        Ok(link)
    }

    async fn connection(&self) -> RedisResult<ConnectionManager> {
        if let Some(conn) = self.inner.current.lock().clone() {
            return Ok(conn);
        }
        // One attempt, bounded by the timeout: the caller answers
        // `unavailable` and a later command tries again (the crate's
        // default of six retries with backoff would hold a command ~20 s).
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(self.inner.timeout))
            .set_response_timeout(Some(self.inner.timeout));
        let conn = ConnectionManager::new_with_config(self.inner.client.clone(), config).await?;
        // Two commands may have connected at once: keep one.
        let mut current = self.inner.current.lock();
        Ok(current.get_or_insert(conn).clone())
    }

    /// Runs one command.
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        let mut conn = self.connection().await?;
        let result = cmd.query_async(&mut conn).await;
        self.after(&result);
        result
    }

    /// Runs a pipeline (one round trip).
    pub async fn query_pipe<T: FromRedisValue>(&self, pipe: &Pipeline) -> RedisResult<T> {
        let mut conn = self.connection().await?;
        let result = pipe.query_async(&mut conn).await;
        self.after(&result);
        result
    }

    fn after<T>(&self, result: &RedisResult<T>) {
        if let Err(err) = result {
            if err.is_timeout() {
                tracing::warn!("cluster: a redis call timed out: reconnecting");
                self.inner.current.lock().take();
            }
        }
    }
}
