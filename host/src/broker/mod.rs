//! Channels and their subscribers: delivery of publications to every
//! subscribed socket, on every worker, and to other hosts.
//!
//! Delivery to this process's sockets is always local ([`LocalChannels`]):
//! a publication is encoded once and the same bytes are queued for every
//! subscriber. Channels the operator gave history number their
//! publications and keep the last ones, for subscribers that reconnect
//! ([`history`]). The [`Engine`] says where publications and history go:
//! nowhere beyond the process, history in memory (one host), or through
//! Redis, history in Redis Streams (every host).

mod history;
mod local;
mod redis;

pub(crate) use history::{Catchup, History, Position, Since};
pub use history::{HistoryRule, HistoryRules};
pub(crate) use local::LocalChannels;
pub(crate) use redis::RedisEngine;

use crate::mailbox::{Outbox, SessionKey};
use crate::protocol;
use redis::Read;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Resolves once an engine listens to a channel on other hosts (its sender
/// is dropped if that fails).
pub(crate) type Confirmation = oneshot::Receiver<()>;

/// The longest a subscription waits for Redis to confirm that this host
/// listens to its channel before it goes on anyway (while Redis is away,
/// local delivery still works).
const LISTEN_TIMEOUT: Duration = Duration::from_secs(2);

/// Where publications go beyond this host's subscribers, and where
/// history is kept.
pub(crate) enum Engine {
    /// One host: publications stay in the process, history in memory.
    Local(History),
    /// Every host sharing a Redis: pub/sub, and history in Redis Streams.
    Redis(RedisEngine),
}

/// A page of a channel's kept publications, as plugins read it.
#[derive(Debug)]
pub(crate) struct HistoryPage {
    /// Where the channel's stream stands.
    pub(crate) position: Position,
    /// `(offset, data)` of each publication, oldest first.
    pub(crate) publications: Vec<(u64, Option<String>)>,
}

/// Why a channel's history cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HistoryError {
    /// The channel keeps no history.
    NoHistory,
    /// Redis could not be read.
    Unavailable(String),
}

/// Local delivery, channel history, and the engine that reaches other
/// hosts.
pub(crate) struct Broker {
    local: Arc<LocalChannels>,
    rules: HistoryRules,
    engine: Engine,
}

impl Default for Broker {
    fn default() -> Self {
        Broker::new(
            Arc::default(),
            HistoryRules::default(),
            Engine::Local(History::default()),
        )
    }
}

impl Broker {
    /// A broker delivering to `local`, keeping history under `rules`, and
    /// reaching other hosts through `engine`.
    pub(crate) fn new(local: Arc<LocalChannels>, rules: HistoryRules, engine: Engine) -> Self {
        Broker {
            local,
            rules,
            engine,
        }
    }

    /// Subscribe a session to a channel. Subscribing twice is harmless, as
    /// in SocketCluster. The first subscriber of a channel on this host
    /// returns once the broker listens to it on other hosts too, so that a
    /// publication made elsewhere after that reaches it. For a channel
    /// with history, the catch-up holds what the subscriber asked for
    /// (`since`): the publications it missed, in order, before any newer
    /// one the session receives.
    pub(crate) async fn subscribe(
        &self,
        channel: &str,
        session: SessionKey,
        outbox: &Outbox,
        since: &Since,
    ) -> Catchup {
        let rule = self.rules.rule_for(channel);
        match (&self.engine, rule) {
            (Engine::Local(_), None) => {
                self.local.subscribe(channel, session, outbox);
                Catchup::without_history(since)
            }
            (Engine::Local(history), Some(rule)) => history.subscribe(channel, rule, since, || {
                self.local.subscribe(channel, session, outbox);
            }),
            (Engine::Redis(redis), rule) => {
                let first = self.local.subscribe(channel, session, outbox);
                // A subscription that reads the history waits until this
                // host listens (an earlier subscriber may still be waiting),
                // then reads: what is published after the read arrives live.
                let reads = rule.is_some_and(|rule| *since != Since::Nothing || rule.last_value);
                if first || reads {
                    let _ = tokio::time::timeout(LISTEN_TIMEOUT, redis.listen(channel)).await;
                }
                match rule {
                    Some(rule) => redis.catch_up(channel, rule, since).await,
                    None => Catchup::without_history(since),
                }
            }
        }
    }

    /// Remove a session from a channel.
    pub(crate) fn unsubscribe(&self, channel: &str, session: SessionKey) {
        if self.local.unsubscribe(channel, session)
            && let Engine::Redis(redis) = &self.engine
        {
            redis.channel_closed(channel);
        }
    }

    /// Publish `data` (valid JSON text, or nothing) on `channel`: deliver it
    /// to this host's subscribers and to the other hosts'. With history in
    /// Redis, this host's subscribers get it from Redis too, numbered.
    pub(crate) fn publish(&self, channel: &str, data: Option<&str>) {
        let rule = self.rules.rule_for(channel);
        match (&self.engine, rule) {
            (Engine::Local(_), None) => {
                self.local.deliver(channel, data);
            }
            (Engine::Local(history), Some(rule)) => {
                history.publish(
                    channel,
                    rule,
                    |at| protocol::publication_at(channel, data, at.offset, &at.epoch),
                    |frame| self.local.deliver_frame(channel, frame),
                );
            }
            (Engine::Redis(redis), None) => {
                self.local.deliver(channel, data);
                redis.published(channel, data);
            }
            (Engine::Redis(redis), Some(rule)) => redis.publish_numbered(channel, data, rule),
        }
    }

    /// Forget expired history kept in memory (called every second).
    pub(crate) fn sweep_history(&self) {
        if let Engine::Local(history) = &self.engine {
            history.sweep(|channel| self.local.has(channel));
        }
    }

    /// A page of `channel`'s kept publications: the `limit` newest below
    /// offset `before` (all when `None`), oldest first.
    pub(crate) async fn history_page(
        &self,
        channel: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, HistoryError> {
        let rule = self
            .rules
            .rule_for(channel)
            .ok_or(HistoryError::NoHistory)?;
        match &self.engine {
            Engine::Local(history) => {
                let (position, frames) = history.page(channel, rule, before, limit);
                let publications = frames
                    .into_iter()
                    .map(|(offset, frame)| (offset, protocol::publication_data(frame.as_str())))
                    .collect();
                Ok(HistoryPage {
                    position,
                    publications,
                })
            }
            Engine::Redis(redis) => {
                let read = Read::Page { before, limit };
                let found = redis.read_history(channel, rule, &read).await;
                let mut found =
                    found.map_err(|error| HistoryError::Unavailable(error.to_string()))?;
                found.publications.reverse();
                Ok(HistoryPage {
                    position: found.position,
                    publications: found.publications,
                })
            }
        }
    }

    /// Bytes of history kept in memory, and channels with a history stream
    /// there (none when history is in Redis).
    pub(crate) fn history_usage(&self) -> (usize, usize) {
        match &self.engine {
            Engine::Local(history) => history.usage(),
            Engine::Redis(_) => (0, 0),
        }
    }

    /// How many channels have subscribers on this host.
    pub(crate) fn channel_count(&self) -> usize {
        self.local.channel_count()
    }

    /// Whether publications reach the other hosts (always, with one host).
    pub(crate) fn is_connected(&self) -> bool {
        match &self.engine {
            Engine::Local(_) => true,
            Engine::Redis(redis) => redis.is_connected(),
        }
    }

    /// How many times the Redis primary moved (a Sentinel failover
    /// followed); 0 with one host.
    pub(crate) fn primary_moves(&self) -> u64 {
        match &self.engine {
            Engine::Local(_) => 0,
            Engine::Redis(redis) => redis.primary_moves(),
        }
    }

    /// The engine's state and counters, for `/healthz`.
    pub(crate) fn status(&self) -> serde_json::Value {
        match &self.engine {
            Engine::Local(_) => serde_json::json!({ "engine": "local", "connected": true }),
            Engine::Redis(redis) => redis.status(),
        }
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("channels", &self.channel_count())
            .field("engine", &self.status())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::{Outbound, outbox};

    fn frame_text(queued: Outbound) -> String {
        match queued {
            Outbound::Frame(frame) => frame.as_str().to_owned(),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn publishes_reach_subscribers_once() {
        let broker = Broker::default();
        let (tx, mut rx) = outbox(16, 1 << 20);
        broker.subscribe("news", 1, &tx, &Since::Nothing).await;
        broker.subscribe("news", 1, &tx, &Since::Nothing).await;
        broker.publish("news", Some("1"));
        assert_eq!(
            frame_text(rx.try_recv().unwrap()),
            r##"{"event":"#publish","data":{"channel":"news","data":1}}"##
        );
        assert!(rx.try_recv().is_none());
    }

    #[tokio::test]
    async fn unsubscribe_forgets_empty_channels() {
        let broker = Broker::default();
        let (tx, _rx) = outbox(16, 1 << 20);
        broker.subscribe("a", 1, &tx, &Since::Nothing).await;
        broker.unsubscribe("a", 1);
        assert_eq!(broker.channel_count(), 0);
        broker.publish("a", Some("1"));
    }
}
