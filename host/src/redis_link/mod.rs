//! The connection to Redis that the broker and the key-value store share,
//! following the primary wherever the topology puts it.
//!
//! With one server ([`Topology::Server`]), the Redis client's
//! `ConnectionManager` reconnects to its address by itself. Through
//! Sentinel, the primary moves on a failover: a command that fails in a
//! way a lost or demoted primary explains (the connection broke, the
//! server refuses writes as a replica) makes the link ask the sentinels
//! where the primary is now, and move there if it is elsewhere. The
//! command itself fails: whether to retry is the caller's choice, as a
//! write may or may not have been applied. A task also listens to the
//! sentinels' `+switch-master` announcements, so that the link moves as
//! soon as a failover ends rather than at the next failure.

mod address;
mod watch;

pub(crate) use address::{Topology, redacted};

use address::SentinelAddress;
use futures_util::FutureExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, ErrorKind, Pipeline, RedisFuture, RedisResult, ServerErrorKind, Value};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use thiserror::Error;

/// How long connecting (to a server or a sentinel) may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// At most one question to the sentinels per this long: every command
/// failing at once during a failover asks once.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

/// Why the link asks the sentinels where the primary is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// A command failed as a lost primary's would: ask, unless someone
    /// just did.
    AfterFailure,
    /// The sentinels announced a new primary: ask now.
    Announced,
}

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

/// A command connection to the Redis primary; clones share it.
#[derive(Clone)]
pub(crate) struct RedisLink {
    shared: Arc<Shared>,
}

struct Shared {
    /// The URL, passwords redacted.
    shown: String,
    topology: Topology,
    /// The primary in use.
    current: RwLock<Primary>,
    /// Asks the sentinels; held while asking, so one asks at a time.
    follower: tokio::sync::Mutex<Follower>,
    /// Times the primary moved since start, watched by tasks that wait to
    /// reconnect.
    moves: tokio::sync::watch::Sender<u64>,
}

/// A primary and the connection to it.
#[derive(Clone)]
struct Primary {
    client: redis::Client,
    connection: ConnectionManager,
}

struct Follower {
    /// Only with Sentinel.
    sentinels: Option<SentinelClient>,
    /// When the sentinels were last asked.
    asked: Option<Instant>,
}

impl RedisLink {
    /// Find the primary `url` names and connect to it. Unreachable now is
    /// an error: a host that starts without its broker would serve a split
    /// cluster without saying so.
    pub(crate) async fn connect(url: &str) -> Result<RedisLink, RedisError> {
        let shown = redacted(url);
        let topology = Topology::parse(url).map_err(|reason| RedisError::Url {
            url: shown.clone(),
            reason,
        })?;
        let unreachable = |reason: String| RedisError::Unreachable {
            url: shown.clone(),
            reason,
        };
        let (client, sentinels) = first_primary(&topology, &shown).await?;
        let mut primary = Primary::connect(client)
            .await
            .map_err(|error| unreachable(error.to_string()))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut primary.connection)
            .await
            .map_err(|error| unreachable(error.to_string()))?;
        let link = RedisLink {
            shared: Arc::new(Shared {
                shown,
                topology,
                current: RwLock::new(primary),
                follower: tokio::sync::Mutex::new(Follower {
                    sentinels,
                    asked: None,
                }),
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

    /// A new pub/sub connection to the primary. When it cannot be made,
    /// the link looks for the primary again, and tries there if it moved.
    pub(crate) async fn pubsub(&self) -> RedisResult<PubSub> {
        let moves = self.primary_moves();
        let connected = self.primary().pubsub().await;
        self.after(&connected).await;
        if connected.is_err() && self.primary_moves() != moves {
            return self.primary().pubsub().await;
        }
        connected
    }

    /// Where the link stands, for `/healthz`: the topology, the primary's
    /// address and how many times it moved.
    pub(crate) fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "topology": self.shared.topology.kind(),
            "primary": self.primary().client.get_connection_info().addr().to_string(),
            "primary_moves": self.primary_moves(),
        })
    }

    /// How many times the primary moved (a failover followed) since start.
    pub(crate) fn primary_moves(&self) -> u64 {
        *self.shared.moves.borrow()
    }

    /// Changes each time the primary moves: a task waiting to reconnect
    /// can go at once.
    pub(crate) fn moves(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.moves.subscribe()
    }

    fn primary(&self) -> Primary {
        self.shared
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Ask the sentinels where the primary is and move there if it moved;
    /// nothing with one server, whose connection reconnects by itself.
    async fn follow(&self, why: Ask) {
        // A failing command does not wait behind another that is asking
        // already; an announcement does, so that it is never missed.
        let mut follower = match why {
            Ask::AfterFailure => match self.shared.follower.try_lock() {
                Ok(follower) => follower,
                Err(_) => return,
            },
            Ask::Announced => self.shared.follower.lock().await,
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
        let before = self
            .primary()
            .client
            .get_connection_info()
            .addr()
            .to_string();
        let now = client.get_connection_info().addr().to_string();
        if before == now {
            return;
        }
        match Primary::connect(client).await {
            Ok(primary) => {
                *self
                    .shared
                    .current
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = primary;
                self.shared.moves.send_modify(|moves| *moves += 1);
                tracing::warn!(from = before, to = now, "broker: the Redis primary moved");
            }
            Err(error) => {
                tracing::debug!("broker: cannot connect to the new primary {now}: {error}");
            }
        }
    }

    /// Follow the primary if `result` failed in a way that says it may
    /// have moved.
    async fn after<T>(&self, result: &RedisResult<T>) {
        let moved = matches!(result, Err(error) if primary_may_have_moved(error));
        if moved {
            self.follow(Ask::AfterFailure).await;
        }
    }
}

impl ConnectionLike for RedisLink {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        async move {
            let result = self.primary().connection.req_packed_command(cmd).await;
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
            let mut connection = self.primary().connection;
            let result = connection
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.after(&result).await;
            result
        }
        .boxed()
    }

    fn get_db(&self) -> i64 {
        self.primary()
            .client
            .get_connection_info()
            .redis_settings()
            .db()
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

    async fn pubsub(&self) -> RedisResult<PubSub> {
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
fn primary_may_have_moved(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || matches!(
            error.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

fn timed_out() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
    ))
}
