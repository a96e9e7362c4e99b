//! Listening to channels: `SUBSCRIBE` on a pub/sub connection to the
//! primary, or `SSUBSCRIBE` (sharded pub/sub, Redis 7) on a cluster, where
//! a channel is heard from the shard that owns its hash slot.

use futures_util::StreamExt;
use redis::aio::{PubSub, PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Msg, PushInfo, PushKind, RedisResult, Value};
use std::collections::HashSet;
use tokio::sync::mpsc;

/// What a listener heard.
#[derive(Debug)]
pub(crate) enum Heard {
    /// A message published on a channel (as the Redis client gives it, so
    /// that its channel and payload are read in place).
    Message(Msg),
    /// The cluster client lost a node's connection. It reconnects and
    /// learns the slot map again when a command fails; the subscriptions
    /// that node had must be made again where their slots are now.
    NodeLost,
    /// A shard stopped serving a channel: the confirmation of our own
    /// `SUNSUBSCRIBE`, or, for a channel still listened to, its slot
    /// moved to another shard (resharding), whose subscription must be
    /// made again there.
    Unsubscribed(String),
}

/// A connection that listens to channels.
pub(crate) enum Listener {
    /// A pub/sub connection to one primary; when it ends, make another.
    Primary {
        sink: PubSubSink,
        stream: PubSubStream,
    },
    /// A cluster connection whose subscriptions the Redis client keeps
    /// across lost connections and failovers.
    Cluster {
        connection: ClusterConnection,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
    },
}

impl Listener {
    pub(super) fn primary(pubsub: PubSub) -> Listener {
        let (sink, stream) = pubsub.split();
        Listener::Primary { sink, stream }
    }

    /// Listen to `channels`.
    pub(crate) async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Listener::Primary { sink, .. } => sink.subscribe(channels).await,
            // A sharded subscription names channels of one slot only.
            Listener::Cluster { connection, .. } => {
                for channel in channels {
                    connection.ssubscribe(channel).await?;
                }
                Ok(())
            }
        }
    }

    /// Stop listening to `channel`.
    pub(crate) async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Listener::Primary { sink, .. } => sink.unsubscribe(channel).await,
            Listener::Cluster { connection, .. } => connection.sunsubscribe(channel).await,
        }
    }

    /// The next thing heard; `None` when the connection is gone (a
    /// primary's: make another).
    pub(crate) async fn next(&mut self) -> Option<Heard> {
        match self {
            Listener::Primary { stream, .. } => stream.next().await.map(Heard::Message),
            Listener::Cluster { pushes, .. } => loop {
                if let Some(heard) = heard(pushes.recv().await?) {
                    return Some(heard);
                }
            },
        }
    }

    /// Whether the shards of `channels` answer: asked once per hash slot,
    /// a question the client routes to the slot's shard, so that a lost
    /// shard makes it learn the slot map again (and renew the
    /// subscriptions on the shard's new primary). Always fine on a primary.
    pub(crate) async fn reach<'a>(
        &mut self,
        channels: impl Iterator<Item = &'a String>,
    ) -> RedisResult<()> {
        let Listener::Cluster { connection, .. } = self else {
            return Ok(());
        };
        let mut slots = HashSet::new();
        for channel in channels {
            if slots.insert(Slot::for_key(channel)) {
                let _: i64 = redis::cmd("EXISTS")
                    .arg(channel)
                    .query_async(connection)
                    .await?;
            }
        }
        Ok(())
    }
}

/// What a push from the cluster client stands for, if anything.
fn heard(push: PushInfo) -> Option<Heard> {
    match push.kind {
        PushKind::SMessage => Msg::from_push_info(push).map(Heard::Message),
        PushKind::Disconnection => Some(Heard::NodeLost),
        PushKind::SUnsubscribe => match push.data.into_iter().next()? {
            Value::BulkString(channel) => String::from_utf8(channel).ok().map(Heard::Unsubscribed),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(kind: PushKind, data: &[&str]) -> PushInfo {
        PushInfo {
            kind,
            data: data
                .iter()
                .map(|item| Value::BulkString(item.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn pushes_become_what_was_heard() {
        let Some(Heard::Message(message)) =
            heard(push(PushKind::SMessage, &["app:ch:{a}", "x\n1"]))
        else {
            panic!("a sharded message is a message");
        };
        assert_eq!(message.get_channel_name(), "app:ch:{a}");
        assert_eq!(message.get_payload_bytes(), b"x\n1");
        assert!(matches!(
            heard(push(PushKind::Disconnection, &[])),
            Some(Heard::NodeLost)
        ));
        assert!(heard(push(PushKind::SMessage, &["only a channel"])).is_none());
        assert!(matches!(
            heard(push(PushKind::SUnsubscribe, &["app:ch:{a}"])),
            Some(Heard::Unsubscribed(channel)) if channel == "app:ch:{a}"
        ));
        assert!(heard(push(PushKind::SSubscribe, &["app:ch:{a}"])).is_none());
        assert!(heard(push(PushKind::Message, &["c", "p"])).is_none());
    }
}
