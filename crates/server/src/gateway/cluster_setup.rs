//! Start-up of a cluster node (`--redis`): the shared store, the durability
//! check, and the node's listening and reporting sides.

use std::sync::Arc;

use crate::cluster::{Bus, Follower, Link, Presence, RedisSettings, RedisStore};
use crate::config::{Config, RedisDurability};
use crate::hub::{Hub, PresencePolicy};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, Settings};
use crate::service::Cluster;
use crate::store::Store;

pub(super) struct Node {
    pub hub: Arc<Hub>,
    pub store: Arc<dyn Store>,
    pub pipeline: Pipeline,
    pub cluster: Cluster,
}

impl Node {
    pub async fn open(
        config: &Config,
        url: &str,
        presence: PresencePolicy,
        settings: Settings,
    ) -> anyhow::Result<Node> {
        let shown = crate::cluster::redacted(url);
        let node: Arc<str> = Arc::from(match &config.node_id {
            Some(id) => id.clone(),
            None => default_node_id(),
        });
        let mut redis_settings = RedisSettings::new(url, &*node);
        redis_settings.timeout = config.redis_timeout;
        redis_settings.retention_count = config.retention_count;
        redis_settings.dedupe_window = config.dedupe_window;
        // Every node's writer sweeps every 10 s; one sweep per round is
        // enough.
        redis_settings.trim_every = Some(crate::pipeline::TRIM_EVERY);
        let store = tokio::task::spawn_blocking(move || RedisStore::open(redis_settings))
            .await?
            .map_err(|e| anyhow::anyhow!("cannot open the cluster store at {shown}: {e}"))?;
        check_durability(&store, config.redis_durability).await?;
        let store: Arc<dyn Store> = Arc::new(store);

        let client =
            redis::Client::open(url).map_err(|e| anyhow::anyhow!("redis URL {shown}: {e}"))?;
        let conn = Link::connect(client, config.redis_timeout)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to redis at {shown}: {e}"))?;

        let hub = Arc::new(Hub::for_cluster(Arc::new(Metrics::new()), presence));
        let reporter = Presence::start(conn.clone(), node.clone(), hub.clone(), config.node_lease)
            .await
            .map_err(|e| anyhow::anyhow!("cannot load the presence functions: {e}"))?;
        let reporter = Arc::new(reporter);
        hub.set_cluster_sink(reporter.clone());
        let follower = Follower::start(
            url,
            node.clone(),
            hub.clone(),
            store.clone(),
            conn.clone(),
            config.redis_timeout,
        )
        .map_err(anyhow::Error::msg)?;
        if !follower.wait_up(config.redis_timeout).await {
            anyhow::bail!("cannot subscribe to redis at {shown} for the other nodes' messages");
        }
        let bus = Arc::new(Bus::new(conn.clone(), node.clone()));
        let pipeline =
            Pipeline::start_with_bus(store.clone(), hub.clone(), settings, Some(bus.clone()))
                .map_err(|e| anyhow::anyhow!("cannot start the writer: {e}"))?;
        tracing::info!(node = %node, redis = %shown, "cluster mode");
        Ok(Node {
            hub,
            store,
            pipeline,
            cluster: Cluster {
                presence: reporter,
                follower,
                bus,
                conn,
            },
        })
    }
}

/// Host name, process id and start time: a restarted node is a new node
/// (its old presences are reaped, never taken over).
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().replace([':', '|'], "-"))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    format!("{host}-{}-{}", std::process::id(), crate::hub::unix_ms())
}

/// Says (or refuses, with `strict`) when Redis cannot back "an ack means
/// durable".
async fn check_durability(store: &RedisStore, mode: RedisDurability) -> anyhow::Result<()> {
    if mode == RedisDurability::Trust {
        tracing::info!("redis durability not checked (--redis-durability trust)");
        return Ok(());
    }
    let verdict = store.durability();
    match (verdict, mode) {
        (Ok(d), _) if d.holds() => {
            tracing::info!("{}", d.message());
            Ok(())
        }
        (Ok(d), RedisDurability::Strict) => anyhow::bail!(
            "{}\nfix the Redis configuration (docs/OPERATIONS.md), or start with \
             --redis-durability relaxed to accept the risk",
            d.message()
        ),
        (Ok(d), _) => {
            tracing::warn!("{}", d.message());
            Ok(())
        }
        (Err(err), RedisDurability::Strict) => anyhow::bail!(
            "cannot read the Redis configuration ({err}); if CONFIG is not allowed, \
             start with --redis-durability trust"
        ),
        (Err(err), _) => {
            tracing::warn!(%err, "cannot read the Redis configuration");
            Ok(())
        }
    }
}
