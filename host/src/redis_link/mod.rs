//! The connection to Redis that the broker and the key-value store share,
//! wherever the topology puts the data.
//!
//! One server or Sentinel ([`primary`]): all commands go to one primary,
//! which the link follows through a failover: a command that fails in a
//! way a lost or demoted primary explains makes it ask the sentinels where
//! the primary is now. The command itself fails: whether to retry is the
//! caller's choice, as a write may or may not have been applied. A task
//! also listens to the sentinels' `+switch-master` announcements
//! ([`watch`]), so that the link moves as soon as a failover ends rather
//! than at the next failure.
//!
//! Redis Cluster ([`cluster`]): the Redis client routes each command to
//! the shard of its key's hash slot and follows a shard's failover by
//! itself; callers keep every key of one command (one script, one
//! transaction) in one slot with a hash tag.
//!
//! Either way, [`Listener`] listens to channels: pub/sub on the primary, or
//! sharded pub/sub on the cluster.

mod address;
mod cluster;
mod listener;
mod primary;
mod watch;

pub(crate) use address::{Topology, redacted};
pub(crate) use listener::{Heard, Listener};

use cluster::ClusterLink;
use futures_util::FutureExt;
use primary::{Ask, PrimaryLink};
use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// How long connecting (to a server, a sentinel or a cluster node) may
/// take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the link to Redis cannot be made at start.
#[derive(Debug, Error)]
pub enum RedisError {
    /// The URL names no Redis.
    #[error("invalid --broker URL '{url}': {reason}")]
    Url {
        /// The URL as given, passwords redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Redis (or its sentinels) did not answer in time.
    #[error("cannot reach the broker at {url}: {reason}")]
    Unreachable {
        /// The URL as given, passwords redacted.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// A command connection to Redis; clones share it.
#[derive(Clone)]
pub(crate) struct RedisLink {
    shared: Arc<Shared>,
}

struct Shared {
    /// The URL, passwords redacted.
    shown: String,
    topology: Topology,
    backend: Backend,
    /// Times the primary moved since start, watched by tasks that wait to
    /// reconnect.
    moves: tokio::sync::watch::Sender<u64>,
}

/// Where commands go.
enum Backend {
    /// One primary (a server, or the one the sentinels name); boxed, as
    /// it is by far the larger.
    Primary(Box<PrimaryLink>),
    /// The shard of each command's slot.
    Cluster(ClusterLink),
}

impl RedisLink {
    /// Find the Redis `url` names and connect to it. Unreachable now is an
    /// error: a host that starts without its broker would serve a split
    /// cluster without saying so.
    pub(crate) async fn connect(url: &str) -> Result<RedisLink, RedisError> {
        let shown = redacted(url);
        let topology = Topology::parse(url).map_err(|reason| RedisError::Url {
            url: shown.clone(),
            reason,
        })?;
        let backend = match &topology {
            Topology::Cluster(nodes) => {
                Backend::Cluster(ClusterLink::connect(nodes, &shown).await?)
            }
            _ => Backend::Primary(Box::new(PrimaryLink::connect(&topology, &shown).await?)),
        };
        let link = RedisLink {
            shared: Arc::new(Shared {
                shown,
                topology,
                backend,
                moves: tokio::sync::watch::Sender::new(0),
            }),
        };
        if let Topology::Sentinel(address) = &link.shared.topology {
            tokio::spawn(watch::announcements(link.clone(), address.clone()));
        }
        Ok(link)
    }

    /// The URL connected to, passwords redacted.
    pub(crate) fn shown_url(&self) -> &str {
        &self.shared.shown
    }

    /// Whether Redis is a cluster, where the keys of one command must
    /// share a hash slot and channels are sharded.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.shared.backend, Backend::Cluster(_))
    }

    /// A new connection listening to channels. On a primary, when it
    /// cannot be made, the link looks for the primary again, and tries
    /// there if it moved.
    pub(crate) async fn listen(&self) -> RedisResult<Listener> {
        let link = match &self.shared.backend {
            Backend::Primary(link) => link,
            Backend::Cluster(cluster) => {
                let (connection, pushes) = cluster.listener().await?;
                return Ok(Listener::Cluster { connection, pushes });
            }
        };
        let moves = self.primary_moves();
        let mut connected = link.primary().pubsub().await;
        self.after(&connected).await;
        if connected.is_err() && self.primary_moves() != moves {
            connected = link.primary().pubsub().await;
        }
        connected.map(Listener::primary)
    }

    /// Where the link stands, for `/healthz`: the topology, and the
    /// primary's address and how many times it moved, or the cluster
    /// nodes named.
    pub(crate) fn status(&self) -> serde_json::Value {
        let topology = self.shared.topology.kind();
        match &self.shared.backend {
            Backend::Primary(link) => serde_json::json!({
                "topology": topology,
                "primary": link.primary().address(),
                "primary_moves": self.primary_moves(),
            }),
            Backend::Cluster(cluster) => serde_json::json!({
                "topology": topology,
                "nodes": cluster.nodes(),
            }),
        }
    }

    /// How many times the primary moved (a Sentinel failover followed)
    /// since start.
    pub(crate) fn primary_moves(&self) -> u64 {
        *self.shared.moves.borrow()
    }

    /// Changes each time the primary moves: a task waiting to reconnect
    /// can go at once.
    pub(crate) fn moves(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.moves.subscribe()
    }

    /// Ask the sentinels where the primary is and move there if it moved.
    async fn follow(&self, why: Ask) {
        if let Backend::Primary(link) = &self.shared.backend {
            link.follow(why, &self.shared.moves).await;
        }
    }

    /// Follow the primary if `result` failed in a way that says it may
    /// have moved.
    async fn after<T>(&self, result: &RedisResult<T>) {
        if matches!(result, Err(error) if primary::may_have_moved(error)) {
            self.follow(Ask::AfterFailure).await;
        }
    }
}

impl ConnectionLike for RedisLink {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        async move {
            let result = match &self.shared.backend {
                Backend::Primary(link) => link.primary().connection.req_packed_command(cmd).await,
                Backend::Cluster(cluster) => cluster.connection().req_packed_command(cmd).await,
            };
            self.after(&result).await;
            result
        }
        .boxed()
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        async move {
            let result = match &self.shared.backend {
                Backend::Primary(link) => {
                    let mut connection = link.primary().connection;
                    connection
                        .req_packed_commands(pipeline, offset, count)
                        .await
                }
                Backend::Cluster(cluster) => {
                    let mut connection = cluster.connection();
                    connection
                        .req_packed_commands(pipeline, offset, count)
                        .await
                }
            };
            self.after(&result).await;
            result
        }
        .boxed()
    }

    fn get_db(&self) -> i64 {
        match &self.shared.backend {
            Backend::Primary(link) => link
                .primary()
                .client
                .get_connection_info()
                .redis_settings()
                .db(),
            Backend::Cluster(_) => 0,
        }
    }
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("url", &self.shared.shown)
            .field("status", &self.status())
            .finish()
    }
}

/// Whether `error` says Redis was away or moving (a lost connection, a
/// failover under way, a slot without its primary yet) rather than that
/// it refused the command: the same command may succeed a moment later.
pub(crate) fn is_transient(error: &redis::RedisError) -> bool {
    primary::may_have_moved(error)
        || error.is_cluster_error()
        || error.kind() == redis::ErrorKind::ClusterConnectionNotFound
}

fn timed_out() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
    ))
}
