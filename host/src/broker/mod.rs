//! Channels and their subscribers: delivery of publications to every
//! subscribed socket, on every worker, and through an engine to other hosts.
//!
//! Delivery to this process's sockets is always local: a publication is
//! encoded once and the same bytes are queued for every subscriber.
//! Channels the operator gave history ([`History`]) number their
//! publications and keep the last ones, for subscribers that reconnect. The
//! [`BrokerEngine`] carries publications beyond the process: the local
//! engine does nothing more (one host), the Redis engine ([`RedisEngine`])
//! shares them with every host subscribed to the channel.

mod history;
mod redis;

pub(crate) use history::{Catchup, History, Position, Since};
pub use history::{HistoryRule, HistoryRules};
pub(crate) use redis::{RedisEngine, RedisError};

use crate::mailbox::{Outbound, Outbox, SessionKey};
use crate::protocol;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Resolves once an engine listens to a channel on other hosts (its sender
/// is dropped if that fails).
pub(crate) type Confirmation = oneshot::Receiver<()>;

/// Carries publications to and from other hosts.
pub(crate) trait BrokerEngine: Send + Sync {
    /// The first local subscriber of `channel` arrived: receive the
    /// channel's publications from other hosts from now on. The receiver,
    /// if any, resolves once that is in effect.
    fn channel_opened(&self, channel: &str) -> Option<Confirmation>;
    /// The last local subscriber of `channel` left.
    fn channel_closed(&self, channel: &str);
    /// `data` was published on `channel` here (and delivered locally
    /// already): pass it on to the other hosts.
    fn published(&self, channel: &str, data: Option<&str>);
    /// Whether publications currently reach the other hosts.
    fn is_connected(&self) -> bool;
    /// What the engine is, for `/healthz`: a name, its state and counters.
    fn status(&self) -> serde_json::Value;
}

/// The engine of a single host: publications stay in the process.
#[derive(Debug, Default)]
pub(crate) struct LocalEngine;

impl BrokerEngine for LocalEngine {
    fn channel_opened(&self, _channel: &str) -> Option<Confirmation> {
        None
    }
    fn channel_closed(&self, _channel: &str) {}
    fn published(&self, _channel: &str, _data: Option<&str>) {}
    fn is_connected(&self) -> bool {
        true
    }
    fn status(&self) -> serde_json::Value {
        serde_json::json!({ "engine": "local", "connected": true })
    }
}

/// The subscribers of every channel that has at least one, on this host.
#[derive(Debug, Default)]
pub(crate) struct LocalChannels {
    /// Channel name to the outboxes of its subscribed sessions.
    channels: RwLock<HashMap<String, HashMap<SessionKey, Outbox>>>,
}

/// A page of a channel's kept publications, as plugins read it.
#[derive(Debug)]
pub(crate) struct HistoryPage {
    /// Where the channel's stream stands.
    pub(crate) position: Position,
    /// `(offset, data)` of each publication, oldest first.
    pub(crate) publications: Vec<(u64, Option<String>)>,
}

/// Local delivery, channel history, and the engine that reaches other
/// hosts.
pub(crate) struct Broker {
    local: Arc<LocalChannels>,
    history: History,
    engine: Box<dyn BrokerEngine>,
}

impl Default for Broker {
    fn default() -> Self {
        Broker::new(Arc::default(), Box::new(LocalEngine), History::default())
    }
}

impl Broker {
    /// A broker delivering to `local`, keeping `history`, and reaching
    /// other hosts through `engine`.
    pub(crate) fn new(
        local: Arc<LocalChannels>,
        engine: Box<dyn BrokerEngine>,
        history: History,
    ) -> Self {
        Broker {
            local,
            history,
            engine,
        }
    }

    /// Subscribe a session to a channel. Subscribing twice is harmless, as
    /// in SocketCluster. When this host starts listening to the channel on
    /// other hosts, the returned confirmation resolves once it does. For a
    /// channel with history, the catch-up holds what the subscriber asked
    /// for (`since`): the publications it missed, in order, and no live
    /// publication comes between them and the ones the session receives.
    pub(crate) fn subscribe(
        &self,
        channel: &str,
        session: SessionKey,
        outbox: &Outbox,
        since: &Since,
    ) -> (Option<Confirmation>, Catchup) {
        let mut first = false;
        let catchup = self.history.subscribe(channel, since, || {
            first = self.local.subscribe(channel, session, outbox);
        });
        let confirmation = if first {
            self.engine.channel_opened(channel)
        } else {
            None
        };
        (confirmation, catchup)
    }

    /// Remove a session from a channel.
    pub(crate) fn unsubscribe(&self, channel: &str, session: SessionKey) {
        if self.local.unsubscribe(channel, session) {
            self.engine.channel_closed(channel);
        }
    }

    /// Publish `data` (valid JSON text, or nothing) on `channel`: deliver it
    /// to this host's subscribers and pass it to the engine. Returns how
    /// many local subscribers it was queued for.
    pub(crate) fn publish(&self, channel: &str, data: Option<&str>) -> usize {
        let delivered = match self.history.rule_for(channel) {
            Some(rule) => self.history.publish(
                channel,
                rule,
                |at| protocol::publication_at(channel, data, at.offset, &at.epoch),
                |frame| self.local.deliver_frame(channel, frame),
            ),
            None => self.local.deliver(channel, data),
        };
        self.engine.published(channel, data);
        delivered
    }

    /// Forget expired history (called every second).
    pub(crate) fn sweep_history(&self) {
        self.history.sweep(|channel| self.local.has(channel));
    }

    /// A page of `channel`'s kept publications (see
    /// [`History::page`]), each as `(offset, data)`; `None` when the
    /// channel keeps no history.
    pub(crate) fn history_page(
        &self,
        channel: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Option<HistoryPage> {
        let (position, frames) = self.history.page(channel, before, limit)?;
        let publications = frames
            .into_iter()
            .map(|(offset, frame)| (offset, protocol::publication_data(frame.as_str())))
            .collect();
        Some(HistoryPage {
            position,
            publications,
        })
    }

    /// Bytes of history kept, and channels with a history stream.
    pub(crate) fn history_usage(&self) -> (usize, usize) {
        self.history.usage()
    }

    /// How many channels have subscribers on this host.
    pub(crate) fn channel_count(&self) -> usize {
        self.local.channel_count()
    }

    /// Whether publications reach the other hosts (always, with one host).
    pub(crate) fn is_connected(&self) -> bool {
        self.engine.is_connected()
    }

    /// The engine's state and counters, for `/healthz`.
    pub(crate) fn status(&self) -> serde_json::Value {
        self.engine.status()
    }
}

impl LocalChannels {
    /// Add a subscriber; `true` when it is the channel's first.
    fn subscribe(&self, channel: &str, session: SessionKey, outbox: &Outbox) -> bool {
        let mut channels = self.channels.write().unwrap_or_else(|e| e.into_inner());
        match channels.get_mut(channel) {
            Some(subscribers) => {
                subscribers.insert(session, outbox.clone());
                false
            }
            None => {
                channels.insert(
                    channel.to_owned(),
                    HashMap::from([(session, outbox.clone())]),
                );
                true
            }
        }
    }

    /// Remove a subscriber; `true` when the channel has none left (and is
    /// forgotten).
    fn unsubscribe(&self, channel: &str, session: SessionKey) -> bool {
        let mut channels = self.channels.write().unwrap_or_else(|e| e.into_inner());
        let Some(subscribers) = channels.get_mut(channel) else {
            return false;
        };
        subscribers.remove(&session);
        if subscribers.is_empty() {
            channels.remove(channel);
            return true;
        }
        false
    }

    /// The channels with subscribers here (for resubscribing after a
    /// reconnect).
    pub(crate) fn names(&self) -> Vec<String> {
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        channels.keys().cloned().collect()
    }

    /// Whether `channel` has subscribers here.
    pub(crate) fn has(&self, channel: &str) -> bool {
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        channels.contains_key(channel)
    }

    /// Deliver `data` to every subscriber of `channel` here; how many it
    /// was queued for.
    pub(crate) fn deliver(&self, channel: &str, data: Option<&str>) -> usize {
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        let Some(subscribers) = channels.get(channel) else {
            return 0;
        };
        let frame = Utf8Bytes::from(protocol::publication(channel, data));
        Self::queue(subscribers, &frame)
    }

    /// Deliver an encoded `#publish` frame to every subscriber of
    /// `channel` here; how many it was queued for.
    pub(crate) fn deliver_frame(&self, channel: &str, frame: &Utf8Bytes) -> usize {
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        channels
            .get(channel)
            .map_or(0, |subscribers| Self::queue(subscribers, frame))
    }

    fn queue(subscribers: &HashMap<SessionKey, Outbox>, frame: &Utf8Bytes) -> usize {
        subscribers
            .values()
            .filter(|outbox| outbox.send(Outbound::Frame(frame.clone())).is_ok())
            .count()
    }

    /// How many channels have subscribers.
    fn channel_count(&self) -> usize {
        self.channels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("channels", &self.channel_count())
            .field("engine", &self.engine.status())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::outbox;

    fn frame_text(queued: Outbound) -> String {
        match queued {
            Outbound::Frame(frame) => frame.as_str().to_owned(),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn publishes_reach_subscribers_once() {
        let broker = Broker::default();
        let (tx, mut rx) = outbox(16, 1 << 20);
        broker.subscribe("news", 1, &tx, &Since::Nothing);
        broker.subscribe("news", 1, &tx, &Since::Nothing);
        assert_eq!(broker.publish("news", Some("1")), 1);
        assert_eq!(
            frame_text(rx.try_recv().unwrap()),
            r##"{"event":"#publish","data":{"channel":"news","data":1}}"##
        );
        assert!(rx.try_recv().is_none());
    }

    #[test]
    fn unsubscribe_forgets_empty_channels() {
        let broker = Broker::default();
        let (tx, _rx) = outbox(16, 1 << 20);
        broker.subscribe("a", 1, &tx, &Since::Nothing);
        broker.unsubscribe("a", 1);
        assert_eq!(broker.channel_count(), 0);
        assert_eq!(broker.publish("a", Some("1")), 0);
    }
}
