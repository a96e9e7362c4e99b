//! What KV operations mean, written once for the engines that run them in
//! this process (memory, embedded); the Redis engine runs the same rules in
//! a Lua script (`redis.rs`), and the tests through the binary hold every
//! engine to them.
//!
//! Every write is a batch of [`Op`]s applied all or none: the engine reads
//! the keys the batch touches, [`plan`] computes their new entries and the
//! plugin's usage after them, and the engine writes the result only when
//! every check held and no error or quota stopped the batch. Single
//! operations (`set`, `incr`, compare-and-set) are batches of one or two.

use super::KvError;
use std::collections::BTreeMap;

/// A stored value and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The value, opaque to the host.
    pub(crate) value: String,
    /// Milliseconds since the Unix epoch after which the entry is gone.
    pub(crate) expires_at: Option<u64>,
}

impl Entry {
    /// Whether the entry still exists at `now`.
    pub(crate) fn is_live(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

/// How many expired entries one write removes at most, so that a write
/// after a mass expiry stays short (`sweep.lua` uses the same number).
pub(crate) const SWEEP_BATCH: usize = 100;

/// The bytes a key and its value count for in a quota.
pub(crate) fn entry_size(key: &str, value: &str) -> u64 {
    (key.len() + value.len()) as u64
}

/// One operation of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Stop the batch (nothing applied) unless `key` holds `expected`
    /// (`None`: unless it is absent).
    Check {
        /// The key to compare.
        key: String,
        /// The value it must hold.
        expected: Option<String>,
    },
    /// Store `value`, expiring after `ttl_ms` if given (and never if not,
    /// even if the key had an expiry).
    Set {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Milliseconds until it expires.
        ttl_ms: Option<u64>,
    },
    /// Delete `key` (absent is fine); result: whether it existed.
    Delete {
        /// The key.
        key: String,
    },
    /// Add `delta` to the decimal integer at `key` (absent counts as 0);
    /// result: the new value. The key keeps its expiry.
    Incr {
        /// The key.
        key: String,
        /// What to add.
        delta: i64,
    },
    /// Give `key` an expiry `ttl_ms` from now, or none; result: whether
    /// the key exists.
    Expire {
        /// The key.
        key: String,
        /// Milliseconds until it expires; `None` keeps it for good.
        ttl_ms: Option<u64>,
    },
}

impl Op {
    /// The key the operation acts on.
    pub(crate) fn key(&self) -> &str {
        match self {
            Op::Check { key, .. }
            | Op::Set { key, .. }
            | Op::Delete { key }
            | Op::Incr { key, .. }
            | Op::Expire { key, .. } => key,
        }
    }
}

/// What one applied operation produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpResult {
    /// A check or a set: nothing to report.
    Done,
    /// A delete or an expire: whether the key existed.
    Existed(bool),
    /// An incr: the new value.
    Value(i64),
}

/// How a batch ended, when no error stopped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Every operation was applied; their results in order.
    Applied(Vec<OpResult>),
    /// The check at this index (0-based) failed; nothing was applied.
    Conflict(usize),
}

/// What a plugin keeps in the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Keys stored (expired ones until they are swept).
    pub(crate) keys: u64,
    /// Bytes of keys and values stored.
    pub(crate) bytes: u64,
}

/// What a plugin may keep in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvQuota {
    /// The most keys.
    pub max_keys: u64,
    /// The most bytes of keys and values.
    pub max_bytes: u64,
}

impl Default for KvQuota {
    /// The defaults of `--kv-max-keys` and `--kv-max-bytes`.
    fn default() -> Self {
        KvQuota {
            max_keys: 100_000,
            max_bytes: 64 << 20,
        }
    }
}

impl KvQuota {
    /// Refuse `after` when it is over a limit and larger than `before` (a
    /// plugin over a lowered quota may still shrink).
    pub(crate) fn check(&self, before: Usage, after: Usage) -> Result<(), KvError> {
        if after.keys > self.max_keys && after.keys > before.keys {
            return Err(KvError::KeysQuota {
                limit: self.max_keys,
            });
        }
        if after.bytes > self.max_bytes && after.bytes > before.bytes {
            return Err(KvError::BytesQuota {
                limit: self.max_bytes,
            });
        }
        Ok(())
    }
}

/// Read access to one plugin's stored entries, expired ones included.
pub(crate) trait Entries {
    /// The entry stored at `key`, live or not.
    fn read(&mut self, key: &str) -> Result<Option<Entry>, KvError>;
}

/// One key's change: what was stored before the batch and what is after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Write {
    /// The key.
    pub(crate) key: String,
    /// Its entry before (expired or not).
    pub(crate) old: Option<Entry>,
    /// Its entry after; `None` deletes it.
    pub(crate) new: Option<Entry>,
}

/// What a batch does, computed before anything is written.
#[derive(Debug)]
pub(crate) struct Plan {
    /// How it ended.
    pub(crate) outcome: Outcome,
    /// The keys to change (none unless the outcome is `Applied`).
    pub(crate) writes: Vec<Write>,
    /// The plugin's usage once the writes are made.
    pub(crate) usage: Usage,
}

/// The keys a batch touched: each one's stored entry and its entry so far.
#[derive(Default)]
struct Overlay {
    keys: BTreeMap<String, (Option<Entry>, Option<Entry>)>,
}

impl Overlay {
    /// The live entry at `key` as the batch sees it so far.
    fn current(
        &mut self,
        store: &mut impl Entries,
        key: &str,
        now: u64,
    ) -> Result<&mut Option<Entry>, KvError> {
        if !self.keys.contains_key(key) {
            let stored = store.read(key)?;
            let live = stored.clone().filter(|entry| entry.is_live(now));
            self.keys.insert(key.to_owned(), (stored, live));
        }
        Ok(&mut self.keys.get_mut(key).expect("inserted above").1)
    }
}

/// Plan `ops` on the entries in `store`, for a plugin using `usage` under
/// `quota`, at `now` (ms since the epoch).
pub(crate) fn plan(
    ops: &[Op],
    store: &mut impl Entries,
    usage: Usage,
    quota: KvQuota,
    now: u64,
) -> Result<Plan, KvError> {
    let mut overlay = Overlay::default();
    let mut results = Vec::with_capacity(ops.len());
    for (index, op) in ops.iter().enumerate() {
        let current = overlay.current(store, op.key(), now)?;
        match apply(op, current, now)? {
            Some(result) => results.push(result),
            None => {
                return Ok(Plan {
                    outcome: Outcome::Conflict(index),
                    writes: Vec::new(),
                    usage,
                });
            }
        }
    }
    let mut after = usage;
    let mut writes = Vec::new();
    for (key, (old, new)) in overlay.keys {
        if old == new {
            continue;
        }
        let size = |entry: &Option<Entry>| entry.as_ref().map_or(0, |e| entry_size(&key, &e.value));
        after.keys = after.keys + u64::from(new.is_some()) - u64::from(old.is_some());
        after.bytes = after.bytes + size(&new) - size(&old);
        writes.push(Write { key, old, new });
    }
    quota.check(usage, after)?;
    Ok(Plan {
        outcome: Outcome::Applied(results),
        writes,
        usage: after,
    })
}

/// Apply one operation to the live entry at its key; `None` when a check
/// failed.
fn apply(op: &Op, current: &mut Option<Entry>, now: u64) -> Result<Option<OpResult>, KvError> {
    let expiry = |ttl_ms: Option<u64>| ttl_ms.map(|ttl| now.saturating_add(ttl));
    Ok(Some(match op {
        Op::Check { expected, .. } => {
            if current.as_ref().map(|e| &e.value) != expected.as_ref() {
                return Ok(None);
            }
            OpResult::Done
        }
        Op::Set { value, ttl_ms, .. } => {
            *current = Some(Entry {
                value: value.clone(),
                expires_at: expiry(*ttl_ms),
            });
            OpResult::Done
        }
        Op::Delete { .. } => OpResult::Existed(current.take().is_some()),
        Op::Incr { key, delta } => {
            let (number, expires_at) = match current {
                Some(entry) => (parse_integer(key, &entry.value)?, entry.expires_at),
                None => (0, None),
            };
            let next = number
                .checked_add(*delta)
                .ok_or_else(|| KvError::Overflow { key: key.clone() })?;
            *current = Some(Entry {
                value: next.to_string(),
                expires_at,
            });
            OpResult::Value(next)
        }
        Op::Expire { ttl_ms, .. } => match current {
            Some(entry) => {
                entry.expires_at = expiry(*ttl_ms);
                OpResult::Existed(true)
            }
            None => OpResult::Existed(false),
        },
    }))
}

/// The integer a value holds, as Redis' `INCRBY` reads it: an optional
/// `-` and decimal digits, nothing else.
fn parse_integer(key: &str, value: &str) -> Result<i64, KvError> {
    let digits = value.strip_prefix('-').unwrap_or(value);
    let well_formed = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (value == "0" || !digits.starts_with('0'));
    well_formed
        .then(|| value.parse::<i64>().ok())
        .flatten()
        .ok_or_else(|| KvError::NotAnInteger {
            key: key.to_owned(),
        })
}

/// One page of a prefix listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Page {
    /// Keys and values, in byte order of the keys.
    pub(crate) entries: Vec<(String, String)>,
    /// Where the next page starts (pass it as `after`), or `None` when the
    /// listing is complete.
    pub(crate) cursor: Option<String>,
}

/// The most bytes of keys and values one page carries (at least one entry
/// is always given).
pub(crate) const PAGE_MAX_BYTES: u64 = 1 << 20;

/// Collect a page from `stored`: entries in key order starting after the
/// cursor, stopping at the first key outside `prefix`; expired entries are
/// skipped.
pub(crate) fn collect_page(
    stored: impl Iterator<Item = Result<(String, Entry), KvError>>,
    prefix: &str,
    limit: usize,
    now: u64,
) -> Result<Page, KvError> {
    let mut page = Page::default();
    let mut bytes = 0;
    for item in stored {
        let (key, entry) = item?;
        if !key.starts_with(prefix) {
            break;
        }
        if !entry.is_live(now) {
            continue;
        }
        if page.entries.len() >= limit || bytes >= PAGE_MAX_BYTES {
            page.cursor = page.entries.last().map(|(key, _)| key.clone());
            break;
        }
        bytes += entry_size(&key, &entry.value);
        page.entries.push((key, entry.value));
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    impl Entries for HashMap<String, Entry> {
        fn read(&mut self, key: &str) -> Result<Option<Entry>, KvError> {
            Ok(self.get(key).cloned())
        }
    }

    fn live(value: &str) -> Entry {
        Entry {
            value: value.into(),
            expires_at: None,
        }
    }

    fn set(key: &str, value: &str) -> Op {
        Op::Set {
            key: key.into(),
            value: value.into(),
            ttl_ms: None,
        }
    }

    const QUOTA: KvQuota = KvQuota {
        max_keys: 3,
        max_bytes: 100,
    };

    #[test]
    fn a_failed_check_plans_no_write() {
        let mut store = HashMap::from([("a".to_owned(), live("1"))]);
        let ops = [
            set("b", "x"),
            Op::Check {
                key: "a".into(),
                expected: Some("2".into()),
            },
        ];
        let plan = plan(&ops, &mut store, Usage::default(), QUOTA, 0).unwrap();
        assert_eq!(plan.outcome, Outcome::Conflict(1));
        assert!(plan.writes.is_empty());
    }

    #[test]
    fn operations_see_the_ones_before_them() {
        let mut store = HashMap::new();
        let ops = [
            set("n", "5"),
            Op::Incr {
                key: "n".into(),
                delta: 2,
            },
            Op::Check {
                key: "n".into(),
                expected: Some("7".into()),
            },
            Op::Delete { key: "n".into() },
        ];
        let plan = plan(&ops, &mut store, Usage::default(), QUOTA, 0).unwrap();
        assert_eq!(
            plan.outcome,
            Outcome::Applied(vec![
                OpResult::Done,
                OpResult::Value(7),
                OpResult::Done,
                OpResult::Existed(true)
            ])
        );
        assert!(plan.writes.is_empty(), "absent before and after");
    }

    #[test]
    fn expired_entries_are_absent_and_counted_until_overwritten() {
        let expired = Entry {
            value: "old".into(),
            expires_at: Some(10),
        };
        let mut store = HashMap::from([("k".to_owned(), expired)]);
        let usage = Usage { keys: 1, bytes: 4 };
        let ops = [Op::Check {
            key: "k".into(),
            expected: None,
        }];
        let plan = plan(&ops, &mut store, usage, QUOTA, 10).unwrap();
        assert_eq!(plan.outcome, Outcome::Applied(vec![OpResult::Done]));
        assert_eq!(plan.usage, Usage::default(), "the expired entry is removed");
    }

    #[test]
    fn quotas_refuse_growth_only() {
        let mut store = HashMap::new();
        let ops = [set("a", "1"), set("b", "1"), set("c", "1"), set("d", "1")];
        let error = plan(&ops, &mut store, Usage::default(), QUOTA, 0).unwrap_err();
        assert_eq!(error, KvError::KeysQuota { limit: 3 });
        let big = [set("a", &"x".repeat(100))];
        let error = plan(&big, &mut store, Usage::default(), QUOTA, 0).unwrap_err();
        assert_eq!(error, KvError::BytesQuota { limit: 100 });
        let over = Usage { keys: 9, bytes: 9 };
        let mut full = HashMap::from([("a".to_owned(), live("1"))]);
        let shrink = [Op::Delete { key: "a".into() }];
        assert!(plan(&shrink, &mut full, over, QUOTA, 0).is_ok());
    }

    #[test]
    fn incr_reads_integers_as_redis_does() {
        for bad in ["", "+1", "01", "-0", "1.0", " 1", "abc", "-"] {
            assert!(parse_integer("k", bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_integer("k", "-12"), Ok(-12));
        assert_eq!(parse_integer("k", "0"), Ok(0));
        let mut store = HashMap::from([("n".to_owned(), live(&i64::MAX.to_string()))]);
        let ops = [Op::Incr {
            key: "n".into(),
            delta: 1,
        }];
        let error = plan(&ops, &mut store, Usage::default(), QUOTA, 0).unwrap_err();
        assert!(matches!(error, KvError::Overflow { .. }));
    }

    #[test]
    fn pages_stop_at_the_limit_and_skip_expired_entries() {
        let stored = [
            ("a1", None),
            ("a2", Some(5)),
            ("a3", None),
            ("a4", None),
            ("b", None),
        ]
        .map(|(key, expires_at)| {
            Ok((
                key.to_owned(),
                Entry {
                    value: "v".into(),
                    expires_at,
                },
            ))
        });
        let page = collect_page(stored.clone().into_iter(), "a", 2, 10).unwrap();
        let keys: Vec<_> = page.entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a1", "a3"]);
        assert_eq!(page.cursor.as_deref(), Some("a3"));
        let page = collect_page(stored.into_iter(), "a", 3, 10).unwrap();
        assert_eq!(page.entries.len(), 3);
        assert_eq!(page.cursor, None);
    }
}
