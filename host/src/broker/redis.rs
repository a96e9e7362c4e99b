//! The Redis engine: publications shared by every host through Redis
//! pub/sub. A host listens to a channel in Redis while it has at least one
//! local subscriber, so a publication crosses the network once per host
//! that needs it, not once per subscriber.
//!
//! A publication is delivered to local subscribers at once and published in
//! Redis with this host's id; every other host delivers it to its own
//! subscribers, and this host ignores its own copy, so each subscriber
//! receives it exactly once. While Redis is unreachable, local delivery
//! goes on; publications for other hosts are dropped (at most once, as
//! SocketCluster with SCC), counted, and the engine reconnects with a
//! back-off and subscribes again to every channel with local subscribers.

use super::{BrokerEngine, Confirmation, LocalChannels};
use crate::protocol;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

/// Publications waiting for the publisher task; more are dropped (and
/// counted) rather than held while Redis is slow or away.
const PUBLISH_QUEUE: usize = 65_536;
/// Publications sent to Redis in one pipeline.
const PUBLISH_BATCH: usize = 256;
/// How long connecting (at start and on every retry) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a publisher that lost Redis checks whether it is back.
const PUBLISHER_PROBE: Duration = Duration::from_secs(1);
/// First and longest wait between two reconnection attempts.
const MIN_RECONNECT_DELAY: Duration = Duration::from_millis(100);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// Why the Redis engine cannot start.
#[derive(Debug, Error)]
pub enum RedisError {
    /// The URL is not a Redis URL.
    #[error("invalid --broker URL '{url}': {source}")]
    Url {
        /// The URL as given.
        url: String,
        /// What the Redis client said.
        source: redis::RedisError,
    },
    /// Redis did not answer in time.
    #[error("cannot reach the broker at {url}: {reason}")]
    Unreachable {
        /// The URL as given.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// Subscription changes for the subscriber task.
enum Change {
    /// Subscribe, and tell the sender once Redis confirmed it.
    Opened(String, oneshot::Sender<()>),
    Closed(String),
}

/// Connection state and counters, shared with the tasks.
#[derive(Debug, Default)]
struct State {
    subscriber_up: AtomicBool,
    publisher_up: AtomicBool,
    published: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    reconnects: AtomicU64,
}

/// Names in Redis: channels and keys live under a prefix, so that several
/// deployments can share one Redis.
#[derive(Debug, Clone)]
struct Names {
    prefix: String,
}

impl Names {
    fn channel(&self, channel: &str) -> String {
        format!("{}ch:{channel}", self.prefix)
    }

    fn local_channel<'a>(&self, redis_channel: &'a str) -> Option<&'a str> {
        redis_channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("ch:")
    }
}

/// The engine: sends publications and subscription changes to its tasks.
pub(crate) struct RedisEngine {
    changes: mpsc::UnboundedSender<Change>,
    publications: mpsc::Sender<(String, Vec<u8>)>,
    state: Arc<State>,
    host_id: String,
    names: Names,
}

impl RedisEngine {
    /// Connect to Redis at `url` and start the engine's tasks on the current
    /// tokio runtime. Also returns a connection for the plugins' KV store.
    /// Redis unreachable now is an error: a host that starts without its
    /// broker would serve a split cluster without saying so.
    pub(crate) async fn connect(
        url: &str,
        prefix: &str,
        local: Arc<LocalChannels>,
    ) -> Result<(Self, ConnectionManager), RedisError> {
        let shown = redacted(url);
        let client = redis::Client::open(url).map_err(|source| RedisError::Url {
            url: shown.clone(),
            source,
        })?;
        let unreachable = |reason: String| RedisError::Unreachable {
            url: shown.clone(),
            reason,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(MAX_RECONNECT_DELAY);
        let mut manager = tokio::time::timeout(
            CONNECT_TIMEOUT,
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| unreachable("no answer within 3 s".into()))?
        .map_err(|error| unreachable(error.to_string()))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut manager)
            .await
            .map_err(|error| unreachable(error.to_string()))?;

        let state = Arc::new(State::default());
        state.publisher_up.store(true, Ordering::Release);
        let names = Names {
            prefix: prefix.to_owned(),
        };
        let host_id = format!("{:016x}", rand::random::<u64>());
        let (changes, change_rx) = mpsc::unbounded_channel();
        let (publications, publication_rx) = mpsc::channel(PUBLISH_QUEUE);
        tokio::spawn(
            Subscriber {
                client,
                names: names.clone(),
                host_id: host_id.clone(),
                local,
                state: state.clone(),
            }
            .run(change_rx),
        );
        tokio::spawn(publish(manager.clone(), publication_rx, state.clone()));
        tracing::info!(url = shown, host_id, "broker: connected to Redis");
        Ok((
            RedisEngine {
                changes,
                publications,
                state,
                host_id,
                names,
            },
            manager,
        ))
    }
}

impl BrokerEngine for RedisEngine {
    fn channel_opened(&self, channel: &str) -> Option<Confirmation> {
        let (confirm, confirmation) = oneshot::channel();
        let _ = self
            .changes
            .send(Change::Opened(channel.to_owned(), confirm));
        Some(confirmation)
    }

    fn channel_closed(&self, channel: &str) {
        let _ = self.changes.send(Change::Closed(channel.to_owned()));
    }

    fn published(&self, channel: &str, data: Option<&str>) {
        let data = data.unwrap_or_default();
        let mut payload = Vec::with_capacity(self.host_id.len() + 1 + data.len());
        payload.extend_from_slice(self.host_id.as_bytes());
        payload.push(b'\n');
        payload.extend_from_slice(data.as_bytes());
        if self
            .publications
            .try_send((self.names.channel(channel), payload))
            .is_err()
        {
            self.state.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn is_connected(&self) -> bool {
        self.state.subscriber_up.load(Ordering::Acquire)
            && self.state.publisher_up.load(Ordering::Acquire)
    }

    fn status(&self) -> serde_json::Value {
        let state = &self.state;
        serde_json::json!({
            "engine": "redis",
            "connected": self.is_connected(),
            "published": state.published.load(Ordering::Relaxed),
            "received": state.received.load(Ordering::Relaxed),
            "dropped": state.dropped.load(Ordering::Relaxed),
            "reconnects": state.reconnects.load(Ordering::Relaxed),
        })
    }
}

/// Send queued publications to Redis, in pipelines. A failed pipeline is
/// dropped (counted): Redis pub/sub is at most once anyway, and holding
/// publications during an outage would grow memory without bound.
async fn publish(
    mut connection: ConnectionManager,
    mut queue: mpsc::Receiver<(String, Vec<u8>)>,
    state: Arc<State>,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    let mut probe = tokio::time::interval(PUBLISHER_PROBE);
    loop {
        let received = tokio::select! {
            received = queue.recv_many(&mut batch, PUBLISH_BATCH) => received,
            // While down, find out when Redis is back even if nothing is
            // published, so that readiness recovers by itself.
            _ = probe.tick(), if !state.publisher_up.load(Ordering::Acquire) => {
                let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut connection).await;
                if pong.is_ok() && !state.publisher_up.swap(true, Ordering::AcqRel) {
                    tracing::info!("broker: publishing to Redis again");
                }
                continue;
            }
        };
        if received == 0 {
            return;
        }
        let count = batch.len() as u64;
        let mut pipe = redis::pipe();
        for (channel, payload) in batch.drain(..) {
            pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
        }
        let mut sent = pipe.query_async::<()>(&mut connection).await;
        if sent
            .as_ref()
            .is_err_and(|error| error.is_connection_dropped() || error.is_io_error())
        {
            // The connection broke since the last use (Redis restarted, say):
            // the manager reconnects on that error, so try once more rather
            // than drop publications made after Redis came back.
            tokio::time::sleep(MIN_RECONNECT_DELAY).await;
            sent = pipe.query_async::<()>(&mut connection).await;
        }
        match sent {
            Ok(()) => {
                state.published.fetch_add(count, Ordering::Relaxed);
                if !state.publisher_up.swap(true, Ordering::AcqRel) {
                    tracing::info!("broker: publishing to Redis again");
                }
            }
            Err(error) => {
                state.dropped.fetch_add(count, Ordering::Relaxed);
                if state.publisher_up.swap(false, Ordering::AcqRel) {
                    tracing::warn!(
                        "broker: cannot publish to Redis ({error}); publications reach this \
                         host's subscribers only until it is back"
                    );
                }
            }
        }
    }
}

/// The task that listens to Redis for the channels with local subscribers.
struct Subscriber {
    client: redis::Client,
    names: Names,
    host_id: String,
    local: Arc<LocalChannels>,
    state: Arc<State>,
}

/// Why a subscriber connection ended.
enum Ended {
    /// The connection to Redis was lost: reconnect.
    Lost(String),
    /// The broker is gone: stop.
    Stopped,
}

impl Subscriber {
    /// Connect, subscribe to every channel with local subscribers, serve
    /// until the connection is lost, and start again after a back-off.
    async fn run(self, mut changes: mpsc::UnboundedReceiver<Change>) {
        let mut delay = MIN_RECONNECT_DELAY;
        let mut connected_before = false;
        loop {
            let ended = match self.connect().await {
                Ok((sink, stream)) => {
                    self.state.subscriber_up.store(true, Ordering::Release);
                    if connected_before {
                        self.state.reconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            channels = self.local.names().len(),
                            "broker: reconnected to Redis and subscribed again"
                        );
                    }
                    connected_before = true;
                    delay = MIN_RECONNECT_DELAY;
                    self.serve(sink, stream, &mut changes).await
                }
                Err(reason) => Ended::Lost(reason),
            };
            self.state.subscriber_up.store(false, Ordering::Release);
            match ended {
                Ended::Stopped => return,
                Ended::Lost(reason) => tracing::warn!(
                    retry_in_ms = delay.as_millis() as u64,
                    "broker: Redis connection lost ({reason}); local delivery goes on"
                ),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RECONNECT_DELAY);
        }
    }

    /// A pub/sub connection subscribed to every channel with local
    /// subscribers now.
    async fn connect(&self) -> Result<(PubSubSink, PubSubStream), String> {
        let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| "no answer within 3 s".to_owned())?
            .map_err(|error| error.to_string())?;
        let (mut sink, stream) = pubsub.split();
        let channels: Vec<String> = self
            .local
            .names()
            .iter()
            .map(|name| self.names.channel(name))
            .collect();
        if !channels.is_empty() {
            sink.subscribe(channels)
                .await
                .map_err(|error| error.to_string())?;
        }
        Ok((sink, stream))
    }

    /// Deliver messages and apply subscription changes until the connection
    /// is lost or the broker goes away. A change is checked against the
    /// local subscribers when it is applied, so changes queued while
    /// disconnected cannot leave a stale subscription behind.
    async fn serve(
        &self,
        mut sink: PubSubSink,
        mut stream: PubSubStream,
        changes: &mut mpsc::UnboundedReceiver<Change>,
    ) -> Ended {
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => self.deliver(message.get_channel_name(), message.get_payload_bytes()),
                    None => return Ended::Lost("the connection closed".into()),
                },
                change = changes.recv() => {
                    let result = match change {
                        None => return Ended::Stopped,
                        Some(Change::Opened(channel, confirm)) => {
                            // Subscribed again after a reconnect, if it was
                            // opened while Redis was away: confirm it either way.
                            let subscribed = if self.local.has(&channel) {
                                sink.subscribe(self.names.channel(&channel)).await
                            } else {
                                Ok(())
                            };
                            if subscribed.is_ok() {
                                let _ = confirm.send(());
                            }
                            subscribed
                        }
                        Some(Change::Closed(channel)) if !self.local.has(&channel) => {
                            sink.unsubscribe(self.names.channel(&channel)).await
                        }
                        Some(_) => Ok(()),
                    };
                    if let Err(error) = result {
                        return Ended::Lost(error.to_string());
                    }
                }
            }
        }
    }

    /// Deliver a publication from another host to the local subscribers.
    fn deliver(&self, redis_channel: &str, payload: &[u8]) {
        let Some(channel) = self.names.local_channel(redis_channel) else {
            return;
        };
        let Some((origin, data)) = split_payload(payload) else {
            tracing::warn!(
                channel,
                "broker: ignored a Redis message that is not a wasmcluster publication"
            );
            return;
        };
        if origin == self.host_id.as_bytes() {
            return;
        }
        let data = match std::str::from_utf8(data) {
            Ok("") => None,
            Ok(text) if protocol::validate_json(text).is_ok() => Some(text),
            _ => {
                tracing::warn!(
                    channel,
                    "broker: ignored a Redis publication whose data is not JSON"
                );
                return;
            }
        };
        self.state.received.fetch_add(1, Ordering::Relaxed);
        self.local.deliver(channel, data);
    }
}

/// A Redis URL fit for logs: its password replaced by `***`.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => "(unparsable URL)".to_owned(),
    }
}

/// `<host id>\n<data>` into its parts.
fn split_payload(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let newline = payload.iter().position(|&byte| byte == b'\n')?;
    Some((&payload[..newline], &payload[newline + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_are_prefixed_and_read_back() {
        let names = Names {
            prefix: "app:".into(),
        };
        assert_eq!(names.channel("room:1"), "app:ch:room:1");
        assert_eq!(names.local_channel("app:ch:room:1"), Some("room:1"));
        assert_eq!(names.local_channel("other:ch:room:1"), None);
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redacted("redis://:secret@redis:6379/0"),
            "redis://:***@redis:6379/0"
        );
        assert_eq!(redacted("redis://redis:6379"), "redis://redis:6379");
    }

    #[test]
    fn payloads_carry_their_origin() {
        assert_eq!(
            split_payload(b"abc\n{\"a\":1}"),
            Some((&b"abc"[..], &b"{\"a\":1}"[..]))
        );
        assert_eq!(split_payload(b"abc\n"), Some((&b"abc"[..], &b""[..])));
        assert_eq!(split_payload(b"no newline"), None);
    }
}
