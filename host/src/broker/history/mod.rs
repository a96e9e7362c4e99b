//! Channel history: the last publications of the channels the operator
//! opted in (`[channels."PATTERN"]`), each with its position, so that a
//! client that reconnects gets what it missed, in order, once.
//!
//! A channel's history is a stream: an *epoch* (random, new whenever the
//! stream starts again and what came before is gone) and *offsets* (1, 2,
//! ...; one per publication). A subscriber that says where it stopped
//! (`epoch`, `offset`) gets every later publication still kept, or is told
//! that it cannot (the epoch changed, or the history no longer reaches
//! back that far).
//!
//! This module holds the rules and that vocabulary; [`memory`] keeps the
//! streams of one host, and the Redis engine keeps them in Redis Streams
//! for every host (`super::redis`).

mod memory;

pub(crate) use memory::History;

use std::time::Duration;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// What the operator asked for the channels matching one pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRule {
    /// Publications kept per channel.
    pub size: usize,
    /// How long each is kept.
    pub ttl: Duration,
    /// Whether a new subscriber gets the latest publication at once.
    pub last_value: bool,
}

/// The rules by channel pattern (`*` matches any run of characters). The
/// longest matching pattern wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryRules {
    rules: Vec<(String, HistoryRule)>,
}

impl HistoryRules {
    /// Rules from `(pattern, rule)` pairs.
    pub fn new(mut rules: Vec<(String, HistoryRule)>) -> Self {
        rules.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        HistoryRules { rules }
    }

    /// Whether no channel has history.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rule of `channel`, if any.
    pub(crate) fn rule_for(&self, channel: &str) -> Option<HistoryRule> {
        self.rules
            .iter()
            .find(|(pattern, _)| glob_matches(pattern, channel))
            .map(|(_, rule)| *rule)
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of
/// characters (none included) and everything else itself.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Where a subscriber stopped, or where a stream is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    /// The stream's identity.
    pub(crate) epoch: String,
    /// The offset of the last publication seen (0: none yet).
    pub(crate) offset: u64,
}
/// A random epoch: 16 hex digits.
pub(super) fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Why a subscriber cannot get what it missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unrecoverable {
    /// The channel keeps no history.
    NoHistory,
    /// The stream started again: what came before is gone.
    EpochChanged,
    /// Publications after the subscriber's offset are no longer kept.
    TooOld,
    /// The history could not be read now (Redis is unreachable); the
    /// client may try again.
    Unavailable,
}

impl Unrecoverable {
    /// As the client reads it.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Unrecoverable::NoHistory => "no-history",
            Unrecoverable::EpochChanged => "epoch-changed",
            Unrecoverable::TooOld => "too-old",
            Unrecoverable::Unavailable => "unavailable",
        }
    }
}

/// What a subscription with history gets beside the live publications.
#[derive(Debug, Default)]
pub(crate) struct Catchup {
    /// `#publish` frames to send first, in order.
    pub(crate) frames: Vec<Utf8Bytes>,
    /// Where the channel's stream is now (for a channel with history).
    pub(crate) position: Option<Position>,
    /// Why the publications asked for could not be given.
    pub(crate) failure: Option<Unrecoverable>,
    /// Set when live publications up to `position` may already be queued
    /// for the subscriber (the history was read after it registered, as
    /// with Redis): those are in `frames` or older than what it asked
    /// for, and must be dropped.
    pub(crate) overlaps_live: bool,
}

impl Catchup {
    /// For a channel without history: nothing to catch up on, and a
    /// failure if the subscriber asked for what it missed.
    pub(crate) fn without_history(since: &Since) -> Self {
        let failure = matches!(since, Since::Position(_)).then_some(Unrecoverable::NoHistory);
        Catchup {
            failure,
            ..Catchup::default()
        }
    }
}

/// What a subscriber asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Since {
    /// Nothing about history (a plain subscription).
    Nothing,
    /// Its position from now on, nothing missed (a first subscription).
    Now,
    /// Every publication after this position.
    Position(Position),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rule for tests: 3 publications for a minute.
    pub(super) const RULE: HistoryRule = HistoryRule {
        size: 3,
        ttl: Duration::from_secs(60),
        last_value: false,
    };

    #[test]
    fn patterns_match_with_stars_and_the_longest_wins() {
        assert!(glob_matches("room:*", "room:1"));
        assert!(glob_matches("room:*", "room:"));
        assert!(!glob_matches("room:*", "rooms"));
        assert!(glob_matches("*:log:*", "a:log:b"));
        assert!(glob_matches("a*a", "aa"));
        assert!(!glob_matches("a*a", "a"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exactly"));
        let longer = HistoryRule { size: 9, ..RULE };
        let rules = HistoryRules::new(vec![("*".into(), RULE), ("room:vip*".into(), longer)]);
        assert_eq!(rules.rule_for("room:vip1"), Some(longer));
        assert_eq!(rules.rule_for("other"), Some(RULE));
    }
}
