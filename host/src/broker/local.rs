//! This host's subscribers of every channel: where publications are
//! queued, once encoded, for every subscribed session.

use crate::mailbox::{NumberedFrame, Outbound, Outbox, SessionKey};
use crate::protocol;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The subscribers of every channel that has at least one, on this host.
#[derive(Debug, Default)]
pub(crate) struct LocalChannels {
    /// Channel name to the outboxes of its subscribed sessions.
    channels: RwLock<HashMap<String, HashMap<SessionKey, Outbox>>>,
}

impl LocalChannels {
    /// Add a subscriber; `true` when it is the channel's first.
    pub(super) fn subscribe(&self, channel: &str, session: SessionKey, outbox: &Outbox) -> bool {
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
    pub(super) fn unsubscribe(&self, channel: &str, session: SessionKey) -> bool {
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

    /// Deliver a numbered publication (of a channel whose history is in
    /// Redis) to every subscriber of its channel here.
    pub(crate) fn deliver_numbered(&self, numbered: Arc<NumberedFrame>) -> usize {
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        let Some(subscribers) = channels.get(&numbered.channel) else {
            return 0;
        };
        subscribers
            .values()
            .filter(|outbox| outbox.send(Outbound::Numbered(numbered.clone())).is_ok())
            .count()
    }

    fn queue(subscribers: &HashMap<SessionKey, Outbox>, frame: &Utf8Bytes) -> usize {
        subscribers
            .values()
            .filter(|outbox| outbox.send(Outbound::Frame(frame.clone())).is_ok())
            .count()
    }

    /// How many channels have subscribers.
    pub(super) fn channel_count(&self) -> usize {
        self.channels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}
