//! Channel history in Redis Streams, shared by every host.
//!
//! A channel with history has a stream `<prefix>hist:{<channel>}` (entries
//! `<offset>-0` holding the publication's time and data, trimmed to the
//! rule's size, expiring with its TTL after the last publication) and a
//! hash `<prefix>histmeta:{<channel>}` (its epoch and last offset; kept a
//! day, or the TTL if longer, after the last publication or read). Both
//! names carry the channel as a hash tag, so one channel's keys share a
//! Redis Cluster slot.
//!
//! A read is one transaction: `read.lua` (where the stream stands) and
//! the `XRANGE` of the entries asked for, filtered by age here.
//! A publication is numbered, kept and published by one script
//! (`publish.lua`; `epoch.lua` is what it shares with `read.lua`), so
//! every host receives a channel's publications in
//! offset order, its own included: with history, local subscribers are
//! served from Redis too. The epoch is the script's to choose; when the
//! hash is gone (flushed, evicted, or idle past its time) the next
//! publication or read starts a new epoch, and clients that stopped in the
//! old one are told that their history is gone. A host that finds the
//! history no longer holds what it delivered (a failover lost the last
//! publications) starts a new epoch itself (`restart.lua`).

use super::super::history::{HistoryRule, Position, Unrecoverable, new_epoch};
use crate::redis_link::RedisLink;
use redis::Script;
use std::sync::LazyLock;
use std::time::Duration;

/// The publish script's source (with the epoch function it shares).
const PUBLISH_SOURCE: &str = concat!(include_str!("epoch.lua"), "\n", include_str!("publish.lua"));

static PUBLISH: LazyLock<Script> = LazyLock::new(|| Script::new(PUBLISH_SOURCE));
/// The read script's source (run with EVAL inside a transaction, where a
/// missing cached script could not be loaded and retried).
const READ_SOURCE: &str = concat!(include_str!("epoch.lua"), "\n", include_str!("read.lua"));

/// The restart script (with the epoch function).
static RESTART: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("epoch.lua"),
        "\n",
        include_str!("restart.lua")
    ))
});

/// The least time a channel's epoch and last offset are kept after its
/// last publication or read (longer for a longer TTL).
const META_TTL: Duration = Duration::from_secs(24 * 3600);

/// What to read of a channel's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Read {
    /// Where the stream stands, nothing more.
    Now,
    /// Every publication after this position.
    Since(Position),
    /// The newest publication.
    Last,
    /// The `limit` newest publications below offset `before` (all when
    /// `None`), newest first.
    Page {
        /// Only offsets below this one.
        before: Option<u64>,
        /// At most this many.
        limit: usize,
    },
}

/// What a read found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Found {
    /// Where the stream stands.
    pub(crate) position: Position,
    /// `(offset, data)` of the publications read, in the order asked.
    pub(crate) publications: Vec<(u64, Option<String>)>,
    /// Why the publications asked for cannot be given ([`Read::Since`]).
    pub(crate) failure: Option<Unrecoverable>,
}

/// Key names of history in Redis.
#[derive(Debug, Clone)]
pub(crate) struct StreamKeys {
    prefix: String,
}

impl StreamKeys {
    pub(crate) fn new(prefix: &str) -> Self {
        StreamKeys {
            prefix: prefix.to_owned(),
        }
    }

    fn stream(&self, channel: &str) -> String {
        format!("{}hist:{{{channel}}}", self.prefix)
    }

    fn meta(&self, channel: &str) -> String {
        format!("{}histmeta:{{{channel}}}", self.prefix)
    }
}

/// How long the meta hash of a channel under `rule` is kept, in ms.
fn meta_ttl_ms(rule: HistoryRule) -> u128 {
    rule.ttl.max(META_TTL).as_millis()
}

/// A publication of a channel with history, for [`queue_publish`].
pub(crate) struct Publication<'a> {
    pub(crate) channel: &'a str,
    /// The Redis channel it is published on.
    pub(crate) redis_channel: &'a str,
    /// `PUBLISH`, or `SPUBLISH` on a cluster.
    pub(crate) publish_command: &'a str,
    pub(crate) data: Option<&'a str>,
    pub(crate) rule: HistoryRule,
    /// The sending host's id and the publication's number (see
    /// `sender.rs`): the script numbers a publication sent twice once.
    pub(crate) sender: (&'a str, u64),
}

/// Add to `pipe` the commands that number, keep and publish `publication`.
/// The script is loaded first in the same pipeline, so a Redis that
/// restarted (and lost its script cache) still runs it; loading a known
/// script costs a hash.
pub(crate) fn queue_publish(
    pipe: &mut redis::Pipeline,
    keys: &StreamKeys,
    publication: &Publication,
) {
    let Publication {
        channel,
        redis_channel,
        publish_command,
        data,
        rule,
        sender: (host_id, number),
    } = publication;
    pipe.cmd("EVALSHA")
        .arg(PUBLISH.get_hash())
        .arg(2)
        .arg(keys.stream(channel))
        .arg(keys.meta(channel))
        .arg(redis_channel)
        .arg(data.unwrap_or_default())
        .arg(rule.size)
        .arg(rule.ttl.as_millis() as u64)
        .arg(meta_ttl_ms(*rule) as u64)
        .arg(new_epoch())
        .arg(publish_command)
        .arg(host_id)
        .arg(number)
        .ignore();
}

/// Add to `pipe` the command that loads the publish script.
pub(crate) fn queue_script_load(pipe: &mut redis::Pipeline) {
    pipe.cmd("SCRIPT").arg("LOAD").arg(PUBLISH_SOURCE).ignore();
}

/// Read `channel`'s history (under `rule`).
pub(crate) async fn read(
    connection: &RedisLink,
    keys: &StreamKeys,
    channel: &str,
    rule: HistoryRule,
    what: &Read,
) -> redis::RedisResult<Found> {
    let read = read_once(connection, keys, channel, rule, what).await;
    match read {
        // On a cluster, a transaction is not redirected when the slot
        // moved (a shard failed over): a plain command to the key is, and
        // teaches the client the new slot map; then read again.
        Err(error)
            if connection.is_cluster()
                && error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ExecAbort) =>
        {
            let _: redis::RedisResult<bool> = redis::cmd("EXISTS")
                .arg(keys.stream(channel))
                .query_async(&mut connection.clone())
                .await;
            read_once(connection, keys, channel, rule, what).await
        }
        read => read,
    }
}

/// Read `channel`'s history in one transaction.
async fn read_once(
    connection: &RedisLink,
    keys: &StreamKeys,
    channel: &str,
    rule: HistoryRule,
    what: &Read,
) -> redis::RedisResult<Found> {
    let stream = keys.stream(channel);
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("EVAL")
        .arg(READ_SOURCE)
        .arg(2)
        .arg(&stream)
        .arg(keys.meta(channel))
        .arg(meta_ttl_ms(rule) as u64)
        .arg(new_epoch());
    match what {
        Read::Now => {}
        Read::Since(position) => {
            let first = format!("{}-0", position.offset.saturating_add(1));
            pipe.cmd("XRANGE").arg(&stream).arg(first).arg("+");
        }
        Read::Last => {
            pipe.cmd("XREVRANGE")
                .arg(&stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
        }
        Read::Page { before, limit } => {
            let newest = before.map_or_else(|| "+".to_owned(), |offset| format!("({offset}-0"));
            pipe.cmd("XREVRANGE")
                .arg(&stream)
                .arg(newest)
                .arg("-")
                .arg("COUNT")
                .arg(*limit);
        }
    }
    let mut replies: Vec<redis::Value> = pipe.query_async(&mut connection.clone()).await?;
    let entries: Entries = match replies.len() {
        2 => redis::from_redis_value(replies.pop().expect("two replies"))?,
        _ => Vec::new(),
    };
    let stands = redis::from_redis_value(replies.pop().ok_or_else(malformed)?)?;
    found(stands, entries, rule, what)
}

/// Start a new epoch for `channel` (under `rule`) if it is still in
/// `epoch`, whose history lost publications that were delivered (see
/// `restart.lua`); the channel's epoch now.
pub(crate) async fn restart_epoch(
    connection: &RedisLink,
    keys: &StreamKeys,
    channel: &str,
    rule: HistoryRule,
    epoch: &str,
) -> redis::RedisResult<String> {
    RESTART
        .key(keys.stream(channel))
        .key(keys.meta(channel))
        .arg(epoch)
        .arg(new_epoch())
        .arg(meta_ttl_ms(rule) as u64)
        .invoke_async(&mut connection.clone())
        .await
}

/// Where a stream stands, as `read.lua` answers: epoch, last offset, and
/// Redis's time (ms).
type Stands = (String, u64, u64);

/// Entries as XRANGE gives them: `<offset>-0` and `[t, ms, d, data]`.
type Entries = Vec<(String, Vec<String>)>;

/// The publications of `reply` young enough for `rule`, and for
/// [`Read::Since`] whether they reach back to the position asked for.
fn found(
    (epoch, offset, now_ms): Stands,
    entries: Entries,
    rule: HistoryRule,
    what: &Read,
) -> redis::RedisResult<Found> {
    if let Read::Since(position) = what
        && (position.epoch != epoch || position.offset > offset)
    {
        return Ok(Found {
            position: Position { epoch, offset },
            publications: Vec::new(),
            failure: Some(Unrecoverable::EpochChanged),
        });
    }
    let mut failure = None;
    let oldest = now_ms.saturating_sub(rule.ttl.as_millis() as u64);
    let mut publications = Vec::with_capacity(entries.len());
    for (id, fields) in entries {
        let Some(at) = id.strip_suffix("-0").and_then(|at| at.parse().ok()) else {
            return Err(malformed());
        };
        let (mut kept_at, mut data) = (0, None);
        let mut fields = fields.into_iter();
        while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
            match name.as_str() {
                "t" => kept_at = value.parse().unwrap_or(0),
                "d" if !value.is_empty() => data = Some(value),
                _ => {}
            }
        }
        if kept_at >= oldest {
            publications.push((at, data));
        }
    }
    if let Read::Since(position) = what
        && failure.is_none()
        && position.offset < offset
        && publications.first().map(|(at, _)| *at) != Some(position.offset + 1)
    {
        failure = Some(Unrecoverable::TooOld);
        publications.clear();
    }
    Ok(Found {
        position: Position { epoch, offset },
        publications,
        failure,
    })
}

fn malformed() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected reply from the history script",
    ))
}

/// A numbered publication as Redis pub/sub carries it:
/// `#<offset>:<epoch>\n<data>`. The epoch must be plain (letters and
/// digits), as it is written into frames as it is.
pub(crate) fn parse_numbered(payload: &[u8]) -> Option<(u64, &str, &[u8])> {
    let rest = payload.strip_prefix(b"#")?;
    let newline = rest.iter().position(|&byte| byte == b'\n')?;
    let (head, data) = (&rest[..newline], &rest[newline + 1..]);
    let head = std::str::from_utf8(head).ok()?;
    let (offset, epoch) = head.split_once(':')?;
    let offset = offset.parse().ok()?;
    let plain = !epoch.is_empty() && epoch.bytes().all(|byte| byte.is_ascii_alphanumeric());
    plain.then_some((offset, epoch, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_payloads_are_read_back_and_odd_epochs_refused() {
        assert_eq!(
            parse_numbered(b"#12:00ab\n{\"a\":1}"),
            Some((12, "00ab", &b"{\"a\":1}"[..]))
        );
        assert_eq!(parse_numbered(b"#1:e\n"), Some((1, "e", &b""[..])));
        assert_eq!(parse_numbered(b"abc\n1"), None);
        assert_eq!(parse_numbered(b"#x:e\n1"), None);
        assert_eq!(parse_numbered(b"#1:e\"}\n1"), None);
        assert_eq!(parse_numbered(b"#1:\n1"), None);
    }

    #[test]
    fn reads_drop_expired_entries_and_say_when_they_no_longer_reach_back() {
        let rule = HistoryRule {
            size: 10,
            ttl: Duration::from_secs(1),
            last_value: false,
        };
        let entry = |offset: u64, at: u64, data: &str| {
            let fields = ["t", &at.to_string(), "d", data].map(str::to_owned);
            (format!("{offset}-0"), fields.to_vec())
        };
        // Redis's clock at 10,000 ms: entries from before 9,000 are too old.
        let stands = || ("e".to_owned(), 4, 10_000);
        let since = |offset| {
            Read::Since(Position {
                epoch: "e".into(),
                offset,
            })
        };
        let young = vec![entry(3, 9_500, "3"), entry(4, 9_600, "")];
        let found3 = found(stands(), young.clone(), rule, &since(2)).unwrap();
        assert_eq!(found3.failure, None);
        assert_eq!(found3.publications, [(3, Some("3".into())), (4, None)]);
        // Offset 2 is gone: asked from 1, it cannot be given.
        let found1 = found(stands(), young, rule, &since(1)).unwrap();
        assert_eq!(
            (found1.failure, found1.publications.len()),
            (Some(Unrecoverable::TooOld), 0)
        );
        let aged = vec![entry(3, 8_000, "3"), entry(4, 9_600, "4")];
        let found2 = found(stands(), aged.clone(), rule, &since(2)).unwrap();
        assert_eq!(found2.failure, Some(Unrecoverable::TooOld));
        let page = found(stands(), aged, rule, &Read::Last).unwrap();
        assert_eq!(page.publications, [(4, Some("4".into()))]);
        assert_eq!(
            found(stands(), vec![], rule, &since(4)).unwrap().failure,
            None
        );
        let other = Read::Since(Position {
            epoch: "old".into(),
            offset: 2,
        });
        let changed = found(stands(), vec![], rule, &other).unwrap();
        assert_eq!(changed.failure, Some(Unrecoverable::EpochChanged));
        let ahead = found(stands(), vec![], rule, &since(5)).unwrap();
        assert_eq!(ahead.failure, Some(Unrecoverable::EpochChanged));
    }

    #[test]
    fn a_channel_keys_share_one_cluster_slot() {
        let keys = StreamKeys::new("app:");
        assert_eq!(keys.stream("room:1"), "app:hist:{room:1}");
        assert_eq!(keys.meta("room:1"), "app:histmeta:{room:1}");
    }
}
