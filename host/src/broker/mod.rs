//! Channels and their subscribers: delivery of publications to every
//! subscribed socket, on every worker.
//!
//! This is the local (in-process) engine. A publication is encoded once and
//! the same bytes are queued for every subscriber.

use crate::protocol;
use crate::session::{Outbound, Outbox, SessionKey};
use std::collections::HashMap;
use std::sync::RwLock;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The subscribers of every channel that has at least one.
#[derive(Debug, Default)]
pub struct Broker {
    /// Channel name to the outboxes of its subscribed sessions.
    channels: RwLock<HashMap<String, HashMap<SessionKey, Outbox>>>,
}

impl Broker {
    /// Subscribe a session to a channel. Subscribing twice is harmless, as
    /// in SocketCluster.
    pub fn subscribe(&self, channel: &str, session: SessionKey, outbox: &Outbox) {
        let mut channels = self.channels.write().unwrap_or_else(|e| e.into_inner());
        channels
            .entry(channel.to_owned())
            .or_default()
            .insert(session, outbox.clone());
    }

    /// Remove a session from a channel; forgets the channel when it was the
    /// last subscriber.
    pub fn unsubscribe(&self, channel: &str, session: SessionKey) {
        let mut channels = self.channels.write().unwrap_or_else(|e| e.into_inner());
        if let Some(subscribers) = channels.get_mut(channel) {
            subscribers.remove(&session);
            if subscribers.is_empty() {
                channels.remove(channel);
            }
        }
    }

    /// Deliver `data` (valid JSON text, or nothing) to every subscriber of
    /// `channel` and return how many it was queued for.
    pub fn publish(&self, channel: &str, data: Option<&str>) -> usize {
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        let Some(subscribers) = channels.get(channel) else {
            return 0;
        };
        let frame = Utf8Bytes::from(protocol::publication(channel, data));
        subscribers
            .values()
            .filter(|outbox| outbox.send(Outbound::Frame(frame.clone())).is_ok())
            .count()
    }

    /// How many channels have subscribers.
    pub fn channel_count(&self) -> usize {
        self.channels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::outbox;

    fn frame_text(queued: Outbound) -> String {
        match queued {
            Outbound::Frame(frame) => frame.as_str().to_owned(),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn publishes_reach_subscribers_once() {
        let broker = Broker::default();
        let (tx, mut rx) = outbox(16);
        broker.subscribe("news", 1, &tx);
        broker.subscribe("news", 1, &tx);
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
        let (tx, _rx) = outbox(16);
        broker.subscribe("a", 1, &tx);
        broker.unsubscribe("a", 1);
        assert_eq!(broker.channel_count(), 0);
        assert_eq!(broker.publish("a", Some("1")), 0);
    }
}
