//! A Redis Cluster: the Redis client routes each command to the shard
//! that owns its key's hash slot, follows `MOVED` and `ASK` redirections,
//! and learns the new slot map when a shard's replica takes over.

use super::{CONNECT_TIMEOUT, RedisError, timed_out};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{ConnectionInfo, ProtocolVersion, PushInfo, RedisResult};
use tokio::sync::mpsc;

/// Retries of a command the cluster could not serve (a shard away, a slot
/// moving), between 50 ms and 500 ms apart: a command fails within a few
/// seconds while a shard fails over, rather than after the client's
/// default of minutes.
const RETRIES: u32 = 6;
const MIN_RETRY_WAIT_MS: u64 = 50;
const MAX_RETRY_WAIT_MS: u64 = 500;

/// The nodes to start from and the command connection.
pub(super) struct ClusterLink {
    nodes: Vec<ConnectionInfo>,
    connection: ClusterConnection,
}

impl ClusterLink {
    /// Learn the cluster from `nodes` and check that it answers.
    pub(super) async fn connect(
        nodes: &[ConnectionInfo],
        shown: &str,
    ) -> Result<ClusterLink, RedisError> {
        let unreachable = |reason: String| RedisError::Unreachable {
            url: shown.to_owned(),
            reason,
        };
        let client = builder(nodes)
            .build()
            .map_err(|error| unreachable(error.to_string()))?;
        let mut connection = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_connection())
            .await
            .unwrap_or_else(|_| Err(timed_out()))
            .map_err(|error| unreachable(error.to_string()))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut connection)
            .await
            .map_err(|error| unreachable(error.to_string()))?;
        Ok(ClusterLink {
            nodes: nodes.to_vec(),
            connection,
        })
    }

    /// The command connection (clones share it).
    pub(super) fn connection(&self) -> ClusterConnection {
        self.connection.clone()
    }

    /// The nodes the URL names, for `/healthz`.
    pub(super) fn nodes(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| node.addr().to_string())
            .collect()
    }

    /// A connection of its own for sharded subscriptions, whose messages
    /// (and the client's notices of lost node connections) arrive on the
    /// receiver. The client subscribes again by itself after a lost
    /// connection or a changed slot map.
    pub(super) async fn listener(
        &self,
    ) -> RedisResult<(ClusterConnection, mpsc::UnboundedReceiver<PushInfo>)> {
        let (sender, pushes) = mpsc::unbounded_channel();
        let client = builder(&self.nodes)
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(sender)
            .build()?;
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_connection())
            .await
            .unwrap_or_else(|_| Err(timed_out()))?;
        Ok((connection, pushes))
    }
}

fn builder(nodes: &[ConnectionInfo]) -> ClusterClientBuilder {
    ClusterClientBuilder::new(nodes.to_vec())
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(CONNECT_TIMEOUT)
        .retries(RETRIES)
        .min_retry_wait(MIN_RETRY_WAIT_MS)
        .max_retry_wait(MAX_RETRY_WAIT_MS)
}
