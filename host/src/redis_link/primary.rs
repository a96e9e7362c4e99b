//! One primary at a time: a standalone server, or the primary a set of
//! sentinels names, followed through a failover.
//!
//! With one server the Redis client's `ConnectionManager` reconnects to
//! its address by itself. Through Sentinel, a command that fails in a way
//! a lost or demoted primary explains (the connection broke, the server
//! refuses writes as a replica) makes the link ask the sentinels where the
//! primary is now, and move there if it is elsewhere.

use super::address::{SentinelAddress, Topology};
use super::{CONNECT_TIMEOUT, RedisError, timed_out};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{ErrorKind, RedisResult, ServerErrorKind};
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// At most one question to the sentinels per this long: every command
/// failing at once during a failover asks once.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

/// Why the link asks the sentinels where the primary is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ask {
    /// A command failed as a lost primary's would: ask, unless someone
    /// just did.
    AfterFailure,
    /// The sentinels announced a new primary: ask now.
    Announced,
}

/// The primary in use and, with Sentinel, how to find the next one.
pub(super) struct PrimaryLink {
    current: RwLock<Primary>,
    /// Asks the sentinels; held while asking, so one asks at a time.
    follower: tokio::sync::Mutex<Follower>,
}

/// A primary and the connection to it.
#[derive(Clone)]
pub(super) struct Primary {
    pub(super) client: redis::Client,
    pub(super) connection: ConnectionManager,
}

struct Follower {
    /// Only with Sentinel.
    sentinels: Option<SentinelClient>,
    /// When the sentinels were last asked.
    asked: Option<Instant>,
}

impl PrimaryLink {
    /// Connect to the primary `topology` (a server or sentinels) names now,
    /// checking that it answers.
    pub(super) async fn connect(topology: &Topology, shown: &str) -> Result<Self, RedisError> {
        let unreachable = |reason: String| RedisError::Unreachable {
            url: shown.to_owned(),
            reason,
        };
        let (client, sentinels) = first_primary(topology, shown).await?;
        let mut primary = Primary::connect(client)
            .await
            .map_err(|error| unreachable(error.to_string()))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut primary.connection)
            .await
            .map_err(|error| unreachable(error.to_string()))?;
        Ok(PrimaryLink {
            current: RwLock::new(primary),
            follower: tokio::sync::Mutex::new(Follower {
                sentinels,
                asked: None,
            }),
        })
    }

    /// The primary in use.
    pub(super) fn primary(&self) -> Primary {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Ask the sentinels where the primary is and move there if it moved
    /// (counted in `moves`); nothing with one server, whose connection
    /// reconnects by itself.
    pub(super) async fn follow(&self, why: Ask, moves: &tokio::sync::watch::Sender<u64>) {
        // A failing command does not wait behind another that is asking
        // already; an announcement does, so that it is never missed.
        let mut follower = match why {
            Ask::AfterFailure => match self.follower.try_lock() {
                Ok(follower) => follower,
                Err(_) => return,
            },
            Ask::Announced => self.follower.lock().await,
        };
        let Follower {
            sentinels: Some(sentinels),
            asked,
        } = &mut *follower
        else {
            return;
        };
        if why == Ask::AfterFailure && asked.is_some_and(|asked| asked.elapsed() < FOLLOW_INTERVAL)
        {
            return;
        }
        *asked = Some(Instant::now());
        let client = match ask(sentinels).await {
            Ok(client) => client,
            Err(error) => {
                tracing::debug!("broker: the sentinels name no primary yet: {error}");
                return;
            }
        };
        let before = self.primary().address();
        let now = client.get_connection_info().addr().to_string();
        if before == now {
            return;
        }
        match Primary::connect(client).await {
            Ok(primary) => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = primary;
                moves.send_modify(|moves| *moves += 1);
                tracing::warn!(from = before, to = now, "broker: the Redis primary moved");
            }
            Err(error) => {
                tracing::debug!("broker: cannot connect to the new primary {now}: {error}");
            }
        }
    }
}

impl Primary {
    async fn connect(client: redis::Client) -> RedisResult<Primary> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let connection = tokio::time::timeout(
            CONNECT_TIMEOUT,
            client.get_connection_manager_with_config(config),
        )
        .await
        .unwrap_or_else(|_| Err(timed_out()))?;
        Ok(Primary { client, connection })
    }

    /// The primary's `host:port`.
    pub(super) fn address(&self) -> String {
        self.client.get_connection_info().addr().to_string()
    }

    /// A new pub/sub connection to this primary.
    pub(super) async fn pubsub(&self) -> RedisResult<PubSub> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_pubsub())
            .await
            .unwrap_or_else(|_| Err(timed_out()))
    }
}

/// A client for the primary `topology` names at start, and the sentinels'
/// client when there are sentinels to ask again later.
async fn first_primary(
    topology: &Topology,
    shown: &str,
) -> Result<(redis::Client, Option<SentinelClient>), RedisError> {
    let unreachable = |reason: String| RedisError::Unreachable {
        url: shown.to_owned(),
        reason,
    };
    match topology {
        Topology::Server(info) => {
            let client = redis::Client::open(info.clone())
                .map_err(|error| unreachable(error.to_string()))?;
            Ok((client, None))
        }
        Topology::Sentinel(address) => {
            let mut sentinels = sentinel_client(address).map_err(|error| RedisError::Url {
                url: shown.to_owned(),
                reason: error.to_string(),
            })?;
            let client = ask(&mut sentinels)
                .await
                .map_err(|error| unreachable(format!("the sentinels name no primary: {error}")))?;
            Ok((client, Some(sentinels)))
        }
        Topology::Cluster(_) => Err(RedisError::Url {
            url: shown.to_owned(),
            reason: "a cluster has no single primary".to_owned(),
        }),
    }
}

/// The client that asks `address`'s sentinels for its primary.
fn sentinel_client(address: &SentinelAddress) -> RedisResult<SentinelClient> {
    let node =
        SentinelNodeConnectionInfo::default().set_redis_connection_info(address.node.clone());
    SentinelClient::build(
        address.sentinels.clone(),
        address.master.clone(),
        Some(node),
        SentinelServerType::Master,
    )
}

/// A client for the primary the sentinels name (which the Redis client
/// checks says it is a primary).
async fn ask(sentinels: &mut SentinelClient) -> RedisResult<redis::Client> {
    tokio::time::timeout(CONNECT_TIMEOUT, sentinels.async_get_client())
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

/// Whether `error` is what a command gets from a primary that is gone or
/// was demoted to a replica.
pub(super) fn may_have_moved(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || matches!(
            error.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}
