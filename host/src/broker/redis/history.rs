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
//! A publication is numbered, kept and published by one script
//! (`publish.lua`; `epoch.lua` is what it shares with `read.lua`), so
//! every host receives a channel's publications in
//! offset order, its own included: with history, local subscribers are
//! served from Redis too. The epoch is the script's to choose; when the
//! hash is gone (flushed, evicted, or idle past its time) the next
//! publication or read starts a new epoch, and clients that stopped in the
//! old one are told that their history is gone.

use super::super::history::{HistoryRule, Position, Unrecoverable, new_epoch};
use redis::Script;
use redis::aio::ConnectionManager;
use std::sync::LazyLock;
use std::time::Duration;

/// The publish script's source (with the epoch function it shares).
const PUBLISH_SOURCE: &str = concat!(include_str!("epoch.lua"), "\n", include_str!("publish.lua"));

static PUBLISH: LazyLock<Script> = LazyLock::new(|| Script::new(PUBLISH_SOURCE));
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("epoch.lua"),
        "\n",
        include_str!("read.lua")
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

/// Add to `pipe` the commands that number, keep and publish `data` on
/// `channel` (under `rule`), publishing on `redis_channel`. The script is
/// loaded first in the same pipeline, so a Redis that restarted (and lost
/// its script cache) still runs it; loading a known script costs a hash.
pub(crate) fn queue_publish(
    pipe: &mut redis::Pipeline,
    keys: &StreamKeys,
    redis_channel: &str,
    channel: &str,
    data: Option<&str>,
    rule: HistoryRule,
) {
    pipe.cmd("EVALSHA")
        .arg(PUBLISH.get_hash())
        .arg(2)
        .arg(keys.stream(channel))
        .arg(keys.meta(channel))
        .arg(redis_channel)
        .arg(data.unwrap_or_default())
        .arg(rule.size)
        .arg(rule.ttl.as_millis() as u64)
        .arg(meta_ttl_ms(rule) as u64)
        .arg(new_epoch())
        .ignore();
}

/// Add to `pipe` the command that loads the publish script.
pub(crate) fn queue_script_load(pipe: &mut redis::Pipeline) {
    pipe.cmd("SCRIPT").arg("LOAD").arg(PUBLISH_SOURCE).ignore();
}

/// Read `channel`'s history (under `rule`).
pub(crate) async fn read(
    connection: &ConnectionManager,
    keys: &StreamKeys,
    channel: &str,
    rule: HistoryRule,
    what: &Read,
) -> redis::RedisResult<Found> {
    let mut invocation = READ.key(keys.stream(channel));
    invocation.key(keys.meta(channel));
    let mode = match what {
        Read::Now => "now",
        Read::Since(_) => "since",
        Read::Last => "last",
        Read::Page { .. } => "page",
    };
    invocation
        .arg(mode)
        .arg(rule.ttl.as_millis() as u64)
        .arg(meta_ttl_ms(rule) as u64)
        .arg(new_epoch());
    match what {
        Read::Since(position) => {
            invocation.arg(&position.epoch).arg(position.offset);
        }
        Read::Page { before, limit } => {
            let before = before.map(|offset| offset.to_string()).unwrap_or_default();
            invocation.arg(before).arg(*limit);
        }
        Read::Now | Read::Last => {}
    }
    let reply: Vec<redis::Value> = invocation.invoke_async(&mut connection.clone()).await?;
    parse_found(reply)
}

/// The reply of `read.lua`.
fn parse_found(reply: Vec<redis::Value>) -> redis::RedisResult<Found> {
    let malformed = || {
        redis::RedisError::from((
            redis::ErrorKind::Parse,
            "unexpected reply from the history script",
        ))
    };
    let mut values = reply.into_iter();
    let (Some(epoch), Some(last), Some(status)) = (values.next(), values.next(), values.next())
    else {
        return Err(malformed());
    };
    let epoch: String = redis::from_redis_value(epoch)?;
    let offset: u64 = redis::from_redis_value(last)?;
    let failure = match redis::from_redis_value::<String>(status)?.as_str() {
        "ok" => None,
        "too-old" => Some(Unrecoverable::TooOld),
        "epoch-changed" => Some(Unrecoverable::EpochChanged),
        _ => return Err(malformed()),
    };
    let mut publications = Vec::new();
    while let Some(offset) = values.next() {
        let data: String = redis::from_redis_value(values.next().ok_or_else(malformed)?)?;
        let data = (!data.is_empty()).then_some(data);
        publications.push((redis::from_redis_value(offset)?, data));
    }
    Ok(Found {
        position: Position { epoch, offset },
        publications,
        failure,
    })
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
    fn a_channel_keys_share_one_cluster_slot() {
        let keys = StreamKeys::new("app:");
        assert_eq!(keys.stream("room:1"), "app:hist:{room:1}");
        assert_eq!(keys.meta("room:1"), "app:histmeta:{room:1}");
    }
}
