//! The Redis engine: publications shared by every host through Redis
//! pub/sub. A host listens to a channel in Redis while it has at least one
//! local subscriber, so a publication crosses the network once per host
//! that needs it, not once per subscriber.
//!
//! A publication of a channel without history is delivered to local
//! subscribers at once and published in Redis with this host's id and a
//! number ([`sender`]); every other host delivers it to its own
//! subscribers, and this host ignores its own copy, so each subscriber
//! receives it exactly once, even when Redis got it twice. A publication of
//! a channel with history is numbered in Redis instead ([`history`]) and
//! delivered from there to every host, this one included, in offset order.
//!
//! While Redis is unreachable, local delivery of channels without history
//! goes on; publications for other hosts (and every publication of a
//! channel with history) wait up to `PUBLISH_PATIENCE` (a failover usually
//! ends within it) and are then dropped (at most once, as SocketCluster
//! with SCC) and counted, and the engine reconnects with a back-off and subscribes
//! again to every channel with local subscribers, then fetches from the
//! history what its channels with history missed meanwhile
//! ([`subscriber`]).

mod catch_up;
mod history;
mod sender;
mod subscriber;

pub(crate) use history::Read;

use super::history::{Catchup, HistoryRule, HistoryRules, Since, Unrecoverable};
use super::{Confirmation, LocalChannels};
use crate::protocol;
use crate::redis_link::{self, RedisLink};
use history::{Found, StreamKeys};
use redis::cluster_routing::Slot;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Publications waiting for the publisher task; more are dropped (and
/// counted) rather than held while Redis is slow or away.
const PUBLISH_QUEUE: usize = 65_536;
/// Publications sent to Redis in one pipeline.
const PUBLISH_BATCH: usize = 256;
/// How often a publisher that lost Redis checks whether it is back.
const PUBLISHER_PROBE: Duration = Duration::from_secs(1);
/// How long the publisher keeps sending a batch again while Redis is away
/// or failing over, before dropping it: publications made during a
/// failover wait for the new primary rather than being lost, and a batch
/// Redis ran before its answer was lost is not delivered twice ([`sender`]).
const PUBLISH_PATIENCE: Duration = Duration::from_secs(5);
/// First and longest wait between two reconnection attempts.
const MIN_RECONNECT_DELAY: Duration = Duration::from_millis(100);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Subscription changes for the subscriber task.
enum Change {
    /// Listen to the channel if it has local subscribers and is not
    /// listened to yet, and tell the sender once Redis confirmed that it is.
    Opened(String, oneshot::Sender<()>),
    /// Stop listening if the channel has no local subscriber left.
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
    /// Publications of channels with history that pub/sub did not bring
    /// (a lost connection) and that were fetched from the history.
    refetched: AtomicU64,
    /// Those that could not be fetched (no longer kept, or Redis away).
    lost: AtomicU64,
}

/// Names in Redis: channels and keys live under a prefix, so that several
/// deployments can share one Redis. On a cluster, channels are sharded
/// and carry the channel as a hash tag, like its history keys, so that the
/// publish script's keys and channel share a slot.
#[derive(Debug, Clone)]
struct Names {
    prefix: String,
    streams: StreamKeys,
    sharded: bool,
}

impl Names {
    fn new(prefix: &str, sharded: bool) -> Self {
        Names {
            prefix: prefix.to_owned(),
            streams: StreamKeys::new(prefix),
            sharded,
        }
    }

    fn channel(&self, channel: &str) -> String {
        if self.sharded {
            format!("{}ch:{{{channel}}}", self.prefix)
        } else {
            format!("{}ch:{channel}", self.prefix)
        }
    }

    fn local_channel<'a>(&self, redis_channel: &'a str) -> Option<&'a str> {
        let name = redis_channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("ch:")?;
        if self.sharded {
            name.strip_prefix('{')?.strip_suffix('}')
        } else {
            Some(name)
        }
    }

    /// The command that publishes on a channel so named.
    fn publish_command(&self) -> &'static str {
        if self.sharded { "SPUBLISH" } else { "PUBLISH" }
    }
}

/// What the publisher task sends to Redis.
enum Outgoing {
    /// A publication already delivered here, for the other hosts, on a
    /// Redis channel: `PUBLISH <channel> <host id>:<number>\n<data>`
    /// ([`sender`]).
    Plain { channel: String, data: String },
    /// A publication of a channel with history: numbered and kept in
    /// Redis, and delivered from there to every host.
    Numbered {
        channel: String,
        data: Option<String>,
        rule: HistoryRule,
    },
}

/// The engine: sends publications and subscription changes to its tasks,
/// and reads channel history.
pub(crate) struct RedisEngine {
    changes: mpsc::UnboundedSender<Change>,
    publications: mpsc::Sender<Outgoing>,
    state: Arc<State>,
    names: Names,
    connection: RedisLink,
}

impl RedisEngine {
    /// Start the engine's tasks on the current tokio runtime, sharing
    /// publications through `connection`'s Redis and keeping history there
    /// under `rules`.
    pub(crate) fn start(
        connection: RedisLink,
        prefix: &str,
        local: Arc<LocalChannels>,
        rules: HistoryRules,
    ) -> Self {
        let state = Arc::new(State::default());
        state.publisher_up.store(true, Ordering::Release);
        let names = Names::new(prefix, connection.is_cluster());
        let host_id = format!("{:016x}", rand::random::<u64>());
        let (changes, change_rx) = mpsc::unbounded_channel();
        let (publications, publication_rx) = mpsc::channel(PUBLISH_QUEUE);
        tokio::spawn(
            subscriber::Subscriber {
                connection: connection.clone(),
                names: names.clone(),
                host_id: host_id.clone(),
                local,
                rules,
                state: state.clone(),
            }
            .run(change_rx),
        );
        tokio::spawn(publish(
            connection.clone(),
            Publisher {
                names: names.clone(),
                host_id: host_id.clone(),
                sent: 0,
            },
            publication_rx,
            state.clone(),
        ));
        tracing::info!(
            url = connection.shown_url(),
            host_id,
            link = %connection.status(),
            "broker: connected to Redis"
        );
        RedisEngine {
            changes,
            publications,
            state,
            names,
            connection,
        }
    }

    /// Listen to `channel` from other hosts, if it has local subscribers
    /// (it may be listened to already). The receiver resolves once Redis
    /// confirmed it: a publication made anywhere after that reaches this
    /// host.
    pub(crate) fn listen(&self, channel: &str) -> Confirmation {
        let (confirm, confirmation) = oneshot::channel();
        let _ = self
            .changes
            .send(Change::Opened(channel.to_owned(), confirm));
        confirmation
    }

    /// The last local subscriber of `channel` left.
    pub(crate) fn channel_closed(&self, channel: &str) {
        let _ = self.changes.send(Change::Closed(channel.to_owned()));
    }

    /// `data` was published on `channel` (which has no history) here, and
    /// delivered locally already: pass it on to the other hosts.
    pub(crate) fn published(&self, channel: &str, data: Option<&str>) {
        self.send(Outgoing::Plain {
            channel: self.names.channel(channel),
            data: data.unwrap_or_default().to_owned(),
        });
    }

    /// Publish `data` on `channel`, which has history under `rule`: Redis
    /// numbers and keeps it, and every host with subscribers delivers it,
    /// this one included.
    pub(crate) fn publish_numbered(&self, channel: &str, data: Option<&str>, rule: HistoryRule) {
        self.send(Outgoing::Numbered {
            channel: channel.to_owned(),
            data: data.map(str::to_owned),
            rule,
        });
    }

    fn send(&self, outgoing: Outgoing) {
        if self.publications.try_send(outgoing).is_err() {
            self.state.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What a subscriber of `channel` (which has history under `rule`)
    /// asked for (`since`), read after it registered: live publications up
    /// to the position read may be queued for it as well
    /// (`overlaps_live`).
    pub(crate) async fn catch_up(
        &self,
        channel: &str,
        rule: HistoryRule,
        since: &Since,
    ) -> Catchup {
        let read = match since {
            Since::Position(position) => Read::Since(position.clone()),
            Since::Nothing | Since::Now if rule.last_value => Read::Last,
            Since::Now => Read::Now,
            Since::Nothing => return Catchup::default(),
        };
        let found = match self.read_history(channel, rule, &read).await {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(
                    channel,
                    "broker: cannot read the channel's history from Redis: {error}"
                );
                return Catchup {
                    failure: Some(Unrecoverable::Unavailable),
                    ..Catchup::default()
                };
            }
        };
        let epoch = &found.position.epoch;
        let frames = valid_publications(channel, &found.publications)
            .map(|(offset, data)| {
                Utf8Bytes::from(protocol::publication_at(channel, data, offset, epoch))
            })
            .collect();
        Catchup {
            frames,
            position: Some(found.position),
            failure: found.failure,
            overlaps_live: true,
        }
    }

    /// Read `channel`'s history (under `rule`) from Redis.
    pub(crate) async fn read_history(
        &self,
        channel: &str,
        rule: HistoryRule,
        what: &Read,
    ) -> redis::RedisResult<Found> {
        history::read(&self.connection, &self.names.streams, channel, rule, what).await
    }

    /// Whether publications currently reach the other hosts.
    pub(crate) fn is_connected(&self) -> bool {
        self.state.subscriber_up.load(Ordering::Acquire)
            && self.state.publisher_up.load(Ordering::Acquire)
    }

    /// How many times the Redis primary moved since start.
    pub(crate) fn primary_moves(&self) -> u64 {
        self.connection.primary_moves()
    }

    /// What the engine is, for `/healthz`: its state and counters.
    pub(crate) fn status(&self) -> serde_json::Value {
        let state = &self.state;
        serde_json::json!({
            "engine": "redis",
            "connected": self.is_connected(),
            "published": state.published.load(Ordering::Relaxed),
            "received": state.received.load(Ordering::Relaxed),
            "dropped": state.dropped.load(Ordering::Relaxed),
            "reconnects": state.reconnects.load(Ordering::Relaxed),
            "history_refetched": state.refetched.load(Ordering::Relaxed),
            "history_lost": state.lost.load(Ordering::Relaxed),
            "redis": self.connection.status(),
        })
    }
}

/// Send queued publications to Redis, in pipelines (one per hash slot on
/// a cluster, sent at once). A pipeline that still fails after
/// [`PUBLISH_PATIENCE`] is dropped (counted): Redis pub/sub is at most
/// once anyway, and holding publications through a long outage would grow
/// memory without bound (while a batch waits, later publications wait in
/// the bounded queue, and past it are dropped).
async fn publish(
    mut connection: RedisLink,
    mut publisher: Publisher,
    mut queue: mpsc::Receiver<Outgoing>,
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
        let pipelines = publisher.pipelines(batch.drain(..));
        let sent = futures_util::future::join_all(
            pipelines
                .iter()
                .map(|batch| send(&batch.pipe, connection.clone())),
        )
        .await;
        let mut lost = None;
        for (Batch { count, .. }, sent) in pipelines.iter().zip(sent) {
            match sent {
                Ok(()) => {
                    state.published.fetch_add(*count, Ordering::Relaxed);
                }
                Err(error) if redis_link::is_transient(&error) => {
                    state.dropped.fetch_add(*count, Ordering::Relaxed);
                    lost = Some(error);
                }
                Err(error) => {
                    // Redis answered, and refused a command (a key of another
                    // type in the way, say): the connection is fine.
                    state.dropped.fetch_add(*count, Ordering::Relaxed);
                    tracing::warn!("broker: Redis refused {count} publications: {error}");
                }
            }
        }
        match lost {
            None if !state.publisher_up.swap(true, Ordering::AcqRel) => {
                tracing::info!("broker: publishing to Redis again");
            }
            Some(error) if state.publisher_up.swap(false, Ordering::AcqRel) => {
                tracing::warn!(
                    "broker: cannot publish to Redis ({error}); publications reach this \
                     host's subscribers only until it is back (none of channels with history)"
                );
            }
            _ => {}
        }
    }
}

/// Send one pipeline, again every [`MIN_RECONNECT_DELAY`] while Redis is
/// away or failing over, for at most [`PUBLISH_PATIENCE`]. (A connection
/// that broke since its last use, Redis restarted say, fails the first
/// try: the manager reconnects on that error.)
async fn send(pipe: &redis::Pipeline, mut connection: RedisLink) -> redis::RedisResult<()> {
    let deadline = tokio::time::Instant::now() + PUBLISH_PATIENCE;
    loop {
        match pipe.query_async::<()>(&mut connection).await {
            Err(error)
                if redis_link::is_transient(&error)
                    && tokio::time::Instant::now() + MIN_RECONNECT_DELAY < deadline =>
            {
                tokio::time::sleep(MIN_RECONNECT_DELAY).await;
            }
            sent => return sent,
        }
    }
}

/// Publications for one pipeline.
#[derive(Default)]
struct Batch {
    pipe: redis::Pipeline,
    /// How many publications it carries.
    count: u64,
    /// Whether it loads the publish script (before the first numbered
    /// publication).
    script_loaded: bool,
}

/// What the publisher task knows: names, and who it is to receivers.
struct Publisher {
    names: Names,
    host_id: String,
    /// Publications sent so far: the last one's number ([`sender`]).
    sent: u64,
}

impl Publisher {
    /// The pipelines for a batch of publications, each in their order: one
    /// pipeline, or on a cluster one per hash slot (a pipeline goes to one
    /// shard). Every publication gets the next number.
    fn pipelines(&mut self, outgoing: impl Iterator<Item = Outgoing>) -> Vec<Batch> {
        let names = &self.names;
        let mut by_slot: HashMap<Option<Slot>, Batch> = HashMap::new();
        for outgoing in outgoing {
            let slot = names.sharded.then(|| match &outgoing {
                Outgoing::Plain { channel, .. } => Slot::for_key(channel),
                Outgoing::Numbered { channel, .. } => Slot::for_key(names.channel(channel)),
            });
            self.sent += 1;
            let sender = (self.host_id.as_str(), self.sent);
            by_slot
                .entry(slot)
                .or_default()
                .queue(names, sender, outgoing);
        }
        by_slot.into_values().collect()
    }
}

impl Batch {
    /// Add `outgoing`, sent by `(host id, number)`.
    fn queue(&mut self, names: &Names, (host_id, number): (&str, u64), outgoing: Outgoing) {
        self.count += 1;
        match outgoing {
            Outgoing::Plain { channel, data } => {
                self.pipe
                    .cmd(names.publish_command())
                    .arg(channel)
                    .arg(format!("{host_id}:{number}\n{data}"))
                    .ignore();
            }
            Outgoing::Numbered {
                channel,
                data,
                rule,
            } => {
                if !self.script_loaded {
                    history::queue_script_load(&mut self.pipe);
                    self.script_loaded = true;
                }
                history::queue_publish(
                    &mut self.pipe,
                    &names.streams,
                    &history::Publication {
                        channel: &channel,
                        redis_channel: &names.channel(&channel),
                        publish_command: names.publish_command(),
                        data: data.as_deref(),
                        rule,
                        sender: (host_id, number),
                    },
                );
            }
        }
    }
}

/// A publication's data from Redis: `Some(None)` for none, `Some(text)`
/// for JSON text, and `None` (logged) for anything else, which is not
/// delivered: Redis is shared, and a frame must stay valid.
fn checked_data<'a>(channel: &str, data: &'a [u8]) -> Option<Option<&'a str>> {
    match std::str::from_utf8(data) {
        Ok("") => Some(None),
        Ok(text) if protocol::validate_json(text).is_ok() => Some(Some(text)),
        _ => {
            tracing::warn!(
                channel,
                "broker: ignored a Redis publication whose data is not JSON"
            );
            None
        }
    }
}

/// The kept publications of `channel` read from Redis whose data may go
/// into a frame (see [`checked_data`]), as `(offset, data)`.
fn valid_publications<'a>(
    channel: &'a str,
    publications: &'a [(u64, Option<String>)],
) -> impl Iterator<Item = (u64, Option<&'a str>)> + 'a {
    publications.iter().filter_map(move |(offset, data)| {
        let data = match data {
            Some(data) => checked_data(channel, data.as_bytes())?,
            None => None,
        };
        Some((*offset, data))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_are_prefixed_and_read_back() {
        let names = Names::new("app:", false);
        assert_eq!(names.channel("room:1"), "app:ch:room:1");
        assert_eq!(names.local_channel("app:ch:room:1"), Some("room:1"));
        assert_eq!(names.local_channel("other:ch:room:1"), None);
        let sharded = Names::new("app:", true);
        assert_eq!(sharded.channel("room:{1}"), "app:ch:{room:{1}}");
        assert_eq!(sharded.local_channel("app:ch:{room:{1}}"), Some("room:{1}"));
        assert_eq!(sharded.local_channel("app:ch:room:1"), None);
    }

    #[test]
    fn only_json_data_is_delivered() {
        assert_eq!(checked_data("c", b""), Some(None));
        assert_eq!(checked_data("c", b"{\"a\":1}"), Some(Some("{\"a\":1}")));
        assert_eq!(checked_data("c", b"{oops"), None);
    }
}
