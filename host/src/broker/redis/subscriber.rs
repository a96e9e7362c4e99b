//! The task that listens to Redis for the channels with local subscribers
//! and delivers what other hosts (and, for channels with history, every
//! host) publish there.
//!
//! For a channel with history it remembers the last offset delivered here.
//! A publication that skips offsets (messages lost with a broken pub/sub
//! connection) is preceded by the skipped ones, read from the history; one
//! already delivered (read that way before pub/sub brought it) is dropped.
//! After a reconnect, every such channel is brought up to date the same
//! way before anything newer is delivered, checking first that the history
//! still holds what was delivered ([`catch_up`]); when a failover lost it,
//! the channel starts a new epoch.
//!
//! On a cluster the connection never ends, but a shard's may be lost. The
//! task then asks the shards of its channels until they answer (which makes
//! the Redis client learn where a lost shard's slots are now), subscribes
//! to every channel again (on the shard that has it now), and brings every
//! channel with history up to date as after a reconnect. A channel whose
//! slot moved to another shard (resharding: the old shard unsubscribes it)
//! is followed the same way.

use super::catch_up::{self, CatchUp, Delivered};
use super::history::{self, Read};
use super::sender::{Seen, Sender};
use super::{
    Change, MAX_RECONNECT_DELAY, MIN_RECONNECT_DELAY, Names, State, checked_data,
    valid_publications,
};
use crate::broker::LocalChannels;
use crate::broker::history::{HistoryRule, HistoryRules, Position};
use crate::mailbox::NumberedFrame;
use crate::protocol;
use crate::redis_link::RedisLink;
use crate::redis_link::{Heard, Listener};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The subscriber task's parts.
pub(super) struct Subscriber {
    /// For pub/sub connections and reading history.
    pub(super) connection: RedisLink,
    pub(super) names: Names,
    pub(super) host_id: String,
    pub(super) local: Arc<LocalChannels>,
    pub(super) rules: HistoryRules,
    pub(super) state: Arc<State>,
}

/// How often the shards of a cluster are asked after one was lost.
const SHARD_PROBE: Duration = Duration::from_millis(250);

/// Why a subscriber connection ended.
enum Ended {
    /// The connection to Redis was lost: reconnect.
    Lost(String),
    /// The broker is gone: stop.
    Stopped,
}

/// What the task keeps between messages and across reconnections.
#[derive(Default)]
struct Listening {
    /// Channels subscribed to on the current connection.
    channels: HashSet<String>,
    /// The last publication delivered here, per channel with history.
    delivered: HashMap<String, Delivered>,
    /// The last plain publication delivered per channel and sending host.
    seen: Seen,
}

impl Subscriber {
    /// Connect, subscribe to every channel with local subscribers, serve
    /// until the connection is lost, and start again after a back-off.
    pub(super) async fn run(self, mut changes: mpsc::UnboundedReceiver<Change>) {
        let mut delay = MIN_RECONNECT_DELAY;
        let mut connected_before = false;
        let mut listening = Listening::default();
        let mut primary_moves = self.connection.moves();
        loop {
            let ended = match self.connect(&mut listening).await {
                Ok(listener) => {
                    self.state.subscriber_up.store(true, Ordering::Release);
                    if connected_before {
                        self.state.reconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            channels = listening.channels.len(),
                            "broker: reconnected to Redis and subscribed again"
                        );
                        self.catch_up_all(&mut listening.delivered).await;
                    }
                    connected_before = true;
                    delay = MIN_RECONNECT_DELAY;
                    self.serve(listener, &mut changes, &mut listening).await
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
            // Reconnect after the back-off, or as soon as the primary moved.
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = primary_moves.changed() => {}
            }
            delay = (delay * 2).min(MAX_RECONNECT_DELAY);
        }
    }

    /// A connection listening to every channel with local subscribers
    /// now.
    async fn connect(&self, listening: &mut Listening) -> Result<Listener, String> {
        let mut listener = self
            .connection
            .listen()
            .await
            .map_err(|error| error.to_string())?;
        let channels = self.local.names();
        if !channels.is_empty() {
            let redis_channels: Vec<String> = channels
                .iter()
                .map(|name| self.names.channel(name))
                .collect();
            listener
                .subscribe(&redis_channels)
                .await
                .map_err(|error| error.to_string())?;
        }
        listening
            .delivered
            .retain(|channel, _| channels.contains(channel));
        listening
            .seen
            .retain(|channel| channels.iter().any(|name| name == channel));
        listening.channels = channels.into_iter().collect();
        Ok(listener)
    }

    /// Deliver messages and apply subscription changes until the connection
    /// is lost or the broker goes away. A change is checked against the
    /// local subscribers when it is applied, so changes queued while
    /// disconnected cannot leave a stale subscription behind.
    async fn serve(
        &self,
        mut listener: Listener,
        changes: &mut mpsc::UnboundedReceiver<Change>,
        listening: &mut Listening,
    ) -> Ended {
        let mut shard_lost = false;
        let mut probe = tokio::time::interval(SHARD_PROBE);
        // Ticks missed while no shard was lost are not made up in a burst.
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                heard = listener.next() => match heard {
                    Some(Heard::Message(message)) => {
                        let (channel, payload) = (message.get_channel_name(), message.get_payload_bytes());
                        self.deliver(channel, payload, listening).await;
                    }
                    Some(Heard::NodeLost) => {
                        if !shard_lost {
                            tracing::warn!("broker: lost a Redis Cluster shard; local delivery goes on");
                        }
                        shard_lost = true;
                        self.state.subscriber_up.store(false, Ordering::Release);
                    }
                    Some(Heard::Unsubscribed(redis_channel)) => {
                        if self.moved_away(&redis_channel, listening) {
                            shard_lost = true;
                            self.state.subscriber_up.store(false, Ordering::Release);
                        }
                    }
                    None => return Ended::Lost("the connection closed".into()),
                },
                _ = probe.tick(), if shard_lost => {
                    shard_lost = self.shards_still_lost(&mut listener, listening).await;
                }
                change = changes.recv() => {
                    let Some(change) = change else {
                        return Ended::Stopped;
                    };
                    if let Err(error) = self.apply(change, &mut listener, listening).await {
                        return Ended::Lost(error.to_string());
                    }
                }
            }
        }
    }

    /// Whether a shard's `SUNSUBSCRIBE` of `redis_channel` took away a
    /// channel still listened to (its slot moved to another shard), rather
    /// than confirming one this task gave up.
    fn moved_away(&self, redis_channel: &str, listening: &Listening) -> bool {
        let Some(channel) = self.names.local_channel(redis_channel) else {
            return false;
        };
        if !listening.channels.contains(channel) {
            return false;
        }
        tracing::info!(
            channel,
            "broker: Redis Cluster moved the channel's slot to another shard; subscribing there"
        );
        true
    }

    /// Ask the shards of every channel listened to; when they all answer,
    /// the cluster is whole again: subscribe to every channel again (where
    /// its slot is now; a subscription still in place is kept) and bring
    /// the channels with history up to date. Whether a shard is still lost.
    async fn shards_still_lost(&self, listener: &mut Listener, listening: &mut Listening) -> bool {
        let redis_channels: Vec<String> = listening
            .channels
            .iter()
            .map(|channel| self.names.channel(channel))
            .collect();
        // A probe does not wait out the client's retries: the sooner one
        // reaches a shard's new primary, the fewer publications made there
        // before this host listens again are missed.
        let reached =
            tokio::time::timeout(SHARD_PROBE, listener.reach(redis_channels.iter())).await;
        let whole = match reached {
            Ok(Ok(())) => listener
                .subscribe(&redis_channels)
                .await
                .map_err(|e| e.to_string()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {SHARD_PROBE:?}")),
        };
        if let Err(error) = whole {
            tracing::debug!("broker: a Redis Cluster shard is still away: {error}");
            return true;
        }
        self.state.subscriber_up.store(true, Ordering::Release);
        self.state.reconnects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            channels = listening.channels.len(),
            "broker: listening again where the Redis Cluster has every channel"
        );
        self.catch_up_all(&mut listening.delivered).await;
        false
    }

    /// Subscribe to or unsubscribe from a channel as its local subscribers
    /// now require.
    async fn apply(
        &self,
        change: Change,
        listener: &mut Listener,
        listening: &mut Listening,
    ) -> redis::RedisResult<()> {
        match change {
            Change::Opened(channel, confirm) => {
                if self.local.has(&channel) && !listening.channels.contains(&channel) {
                    listener.subscribe(&[self.names.channel(&channel)]).await?;
                    listening.channels.insert(channel);
                }
                let _ = confirm.send(());
            }
            Change::Closed(channel) => {
                if !self.local.has(&channel) && listening.channels.remove(&channel) {
                    listening.delivered.remove(&channel);
                    listening.seen.forget(&channel);
                    listener.unsubscribe(&self.names.channel(&channel)).await?;
                }
            }
        }
        Ok(())
    }

    /// Deliver a message from Redis to the local subscribers.
    async fn deliver(&self, redis_channel: &str, payload: &[u8], listening: &mut Listening) {
        let Some(channel) = self.names.local_channel(redis_channel) else {
            return;
        };
        if let Some((offset, epoch, data)) = history::parse_numbered(payload) {
            let Some(data) = checked_data(channel, data) else {
                return;
            };
            let at = Position {
                epoch: epoch.to_owned(),
                offset,
            };
            return self
                .deliver_numbered(channel, at, data, &mut listening.delivered)
                .await;
        }
        let Some((origin, data)) = split_payload(payload) else {
            tracing::warn!(
                channel,
                "broker: ignored a Redis message that is not a wasmcluster publication"
            );
            return;
        };
        let sender = Sender::parse(origin);
        if sender.host == self.host_id.as_bytes() || !listening.seen.first_time(channel, &sender) {
            return;
        }
        if let Some(data) = checked_data(channel, data) {
            self.state.received.fetch_add(1, Ordering::Relaxed);
            self.local.deliver(channel, data);
        }
    }

    /// Deliver a publication of a channel with history at `at`, after the
    /// ones between the last delivered and it, unless it was delivered.
    async fn deliver_numbered(
        &self,
        channel: &str,
        at: Position,
        data: Option<&str>,
        delivered: &mut HashMap<String, Delivered>,
    ) {
        if delivered
            .get(channel)
            .is_some_and(|last| last.at.epoch == at.epoch && at.offset > last.at.offset + 1)
        {
            self.catch_up(channel, delivered, false).await;
        }
        if delivered
            .get(channel)
            .is_some_and(|last| last.at.epoch == at.epoch && at.offset <= last.at.offset)
        {
            return;
        }
        self.state.received.fetch_add(1, Ordering::Relaxed);
        self.local.deliver_numbered(numbered(channel, &at, data));
        delivered.insert(channel.to_owned(), Delivered::new(at, data));
    }

    /// After a reconnect (perhaps to a new primary): deliver what every
    /// channel with history here missed while pub/sub was away, checking
    /// that its history still holds what was delivered.
    async fn catch_up_all(&self, delivered: &mut HashMap<String, Delivered>) {
        let channels: Vec<String> = delivered.keys().cloned().collect();
        for channel in channels {
            self.catch_up(&channel, delivered, true).await;
        }
    }

    /// Deliver the publications of `channel` after the last delivered from
    /// its history, and remember the newest; with `check`, only if the
    /// history still holds the last delivered.
    async fn catch_up(
        &self,
        channel: &str,
        delivered: &mut HashMap<String, Delivered>,
        check: bool,
    ) {
        let (Some(rule), Some(last)) = (self.rules.rule_for(channel), delivered.get(channel))
        else {
            return;
        };
        let last = last.clone();
        let read = Read::Since(last.read_from(check));
        let found =
            history::read(&self.connection, &self.names.streams, channel, rule, &read).await;
        let judged = found.map(|found| catch_up::judge(&last, found, check));
        match judged {
            Ok(CatchUp::Deliver(epoch, publications)) => {
                for (offset, data) in valid_publications(channel, &publications) {
                    let at = Position {
                        epoch: epoch.clone(),
                        offset,
                    };
                    self.state.refetched.fetch_add(1, Ordering::Relaxed);
                    self.local.deliver_numbered(numbered(channel, &at, data));
                    delivered.insert(channel.to_owned(), Delivered::new(at, data));
                }
            }
            Ok(CatchUp::Rewritten) => {
                self.restart_epoch(channel, rule, &last.at).await;
                delivered.remove(channel);
            }
            Ok(CatchUp::Missing(failure)) => self.missed(channel, &last.at, failure.reason()),
            Err(error) => self.missed(channel, &last.at, &error.to_string()),
        }
    }

    /// The history of `channel` no longer holds the publication delivered
    /// at `last`: start a new epoch, so that no position in the old one is
    /// trusted (clients that recover from one are told `epoch-changed`).
    async fn restart_epoch(&self, channel: &str, rule: HistoryRule, last: &Position) {
        self.state.lost.fetch_add(1, Ordering::Relaxed);
        let restarted = history::restart_epoch(
            &self.connection,
            &self.names.streams,
            channel,
            rule,
            &last.epoch,
        )
        .await;
        match restarted {
            Ok(epoch) => tracing::warn!(
                channel,
                delivered = last.offset,
                epoch,
                "broker: the channel's history lost publications delivered here (a Redis \
                 failover); it starts a new epoch"
            ),
            Err(error) => tracing::warn!(
                channel,
                delivered = last.offset,
                "broker: the channel's history lost publications delivered here (a Redis \
                 failover), and a new epoch could not be started: {error}"
            ),
        }
    }

    /// Publications of `channel` after `last` that pub/sub did not bring
    /// cannot be read from its history.
    fn missed(&self, channel: &str, last: &Position, reason: &str) {
        self.state.lost.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            channel,
            after = last.offset,
            "broker: publications pub/sub did not bring cannot be read from the history \
             ({reason}); subscribers here miss them"
        );
    }
}

/// The frame of a numbered publication, shared by its local subscribers.
fn numbered(channel: &str, at: &Position, data: Option<&str>) -> Arc<NumberedFrame> {
    let frame = protocol::publication_at(channel, data, at.offset, &at.epoch);
    Arc::new(NumberedFrame {
        channel: channel.to_owned(),
        epoch: at.epoch.clone(),
        offset: at.offset,
        frame: Utf8Bytes::from(frame),
    })
}

/// `<sender>\n<data>` into its parts.
fn split_payload(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let newline = payload.iter().position(|&byte| byte == b'\n')?;
    Some((&payload[..newline], &payload[newline + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

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
