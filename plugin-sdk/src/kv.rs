//! The plugin's key-value store, kept by the host.
//!
//! Each plugin has its own namespace. The store is shared by every worker
//! (and with a Redis broker, by every host) and survives plugin faults and hot
//! swaps, so it is where state goes that must outlive one instance. With a
//! data directory (`--data-dir`) or Redis it survives restarts too.
//!
//! Values are text; [`get_json`], [`set_json`] and [`update_json`] store
//! serde types as JSON. Every write is atomic on every engine:
//!
//! - [`compare_and_set`] and [`set_if_absent`] change a key only if it holds
//!   what the plugin last read; [`update`] and [`update_json`] loop on them,
//!   so concurrent updates from every worker and host are never lost;
//! - a [`Batch`] applies several operations all or none;
//! - [`set_with_ttl`] and [`expire`] make keys expire;
//! - [`list`] and [`list_page`] read keys by prefix, in key order.
//!
//! What a plugin keeps is capped by the operator (`kv-max-keys`,
//! `kv-max-bytes`): a write over the quota fails with
//! [`HostError::Unavailable`] naming it, and changes nothing.

use crate::bindings::wasmcluster::plugin::host as wit;
use crate::{Error, HostError, Payload};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// The text stored at `key`, if any.
pub fn get(key: &str) -> Result<Option<String>, HostError> {
    wit::kv_get(key)
}

/// Store text at `key` (it no longer expires, if it did).
pub fn set(key: &str, value: &str) -> Result<(), HostError> {
    wit::kv_set(key, value)
}

/// Store text at `key` that expires after `ttl` (at least 1 ms).
pub fn set_with_ttl(key: &str, value: &str, ttl: Duration) -> Result<(), HostError> {
    Batch::new()
        .set_with_ttl(key, value, ttl)
        .commit()
        .map(drop)
}

/// Delete `key`; returns whether it existed.
pub fn delete(key: &str) -> Result<bool, HostError> {
    wit::kv_delete(key)
}

/// Atomically add `delta` to the integer at `key` (missing counts as 0) and
/// return the new value. The key keeps its expiry.
pub fn incr(key: &str, delta: i64) -> Result<i64, HostError> {
    wit::kv_incr(key, delta)
}

/// Set `key` to `new` (delete it when `None`) only if it holds `expected`
/// (is absent when `None`); whether it did. On `false` nothing changed.
pub fn compare_and_set(
    key: &str,
    expected: Option<&str>,
    new: Option<&str>,
) -> Result<bool, HostError> {
    wit::kv_compare_and_set(key, expected, new)
}

/// Store `value` at `key` only if the key is absent; whether it did.
pub fn set_if_absent(key: &str, value: &str) -> Result<bool, HostError> {
    compare_and_set(key, None, Some(value))
}

/// Make `key` expire after `ttl` (`None`: never); whether the key exists.
pub fn expire(key: &str, ttl: Option<Duration>) -> Result<bool, HostError> {
    wit::kv_expire(key, ttl.map(millis))
}

/// Change the value at `key` with `change` (given the current value, it
/// returns the new one, `None` to delete), retrying on a concurrent change
/// until it applies; returns the value it stored. `change` may run several
/// times, so it should only compute.
pub fn update(
    key: &str,
    mut change: impl FnMut(Option<&str>) -> Option<String>,
) -> Result<Option<String>, HostError> {
    compare_and_set_loop(key, |current| Ok(change(current)))
}

/// Read `key`, compute its next value with `next`, and compare-and-set it,
/// until no concurrent change came between; the value stored.
fn compare_and_set_loop<E: From<HostError>>(
    key: &str,
    mut next: impl FnMut(Option<&str>) -> Result<Option<String>, E>,
) -> Result<Option<String>, E> {
    loop {
        let current = get(key)?;
        let value = next(current.as_deref())?;
        if compare_and_set(key, current.as_deref(), value.as_deref())? {
            return Ok(value);
        }
    }
}

/// The value at `key` decoded from JSON into `T`, if any.
pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, Error> {
    match get(key)? {
        Some(text) => Payload::from_json_text(text).parse().map(Some),
        None => Ok(None),
    }
}

/// Store `value` at `key` as JSON.
pub fn set_json(key: &str, value: &impl Serialize) -> Result<(), HostError> {
    set(key, &json_text(value))
}

/// [`update`] for a JSON value: `change` gets the decoded value (`None`
/// when absent) and returns the new one (`None` deletes the key).
pub fn update_json<T: Serialize + DeserializeOwned>(
    key: &str,
    mut change: impl FnMut(Option<T>) -> Result<Option<T>, Error>,
) -> Result<Option<T>, Error> {
    let mut stored = None;
    compare_and_set_loop(key, |current| {
        let decoded = match current {
            Some(text) => Some(Payload::from_json_text(text.to_owned()).parse()?),
            None => None,
        };
        stored = change(decoded)?;
        Ok::<_, Error>(stored.as_ref().map(json_text))
    })?;
    Ok(stored)
}

fn json_text(value: &impl Serialize) -> String {
    Payload::json(value).into_json_text().unwrap_or_default()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Operations applied together, all or none, in order (up to 128).
///
/// ```no_run
/// # use wasmcluster_sdk::kv::{Batch, Committed};
/// # fn vote(poll: &str, user: &str, choice: &str) -> Result<bool, wasmcluster_sdk::HostError> {
/// // One vote per user, counted in the same step: never one without the other.
/// let committed = Batch::new()
///     .check_absent(&format!("voted:{poll}:{user}"))
///     .set(&format!("voted:{poll}:{user}"), choice)
///     .incr(&format!("count:{poll}:{choice}"), 1)
///     .commit()?;
/// Ok(matches!(committed, Committed::Applied(_)))
/// # }
/// ```
#[derive(Debug, Default, Clone)]
pub struct Batch {
    ops: Vec<wit::KvOp>,
}

/// How a [`Batch`] ended, when no error stopped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// Every operation was applied: the new value of each `incr`, in order.
    Applied(Vec<i64>),
    /// The check at this index (counting every operation from 0) did not
    /// hold; nothing was applied.
    Conflict(usize),
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// Apply nothing unless `key` holds `expected`.
    pub fn check(mut self, key: &str, expected: &str) -> Self {
        self.ops.push(wit::KvOp::Check(wit::KvCheck {
            key: key.to_owned(),
            expected: Some(expected.to_owned()),
        }));
        self
    }

    /// Apply nothing unless `key` is absent.
    pub fn check_absent(mut self, key: &str) -> Self {
        self.ops.push(wit::KvOp::Check(wit::KvCheck {
            key: key.to_owned(),
            expected: None,
        }));
        self
    }

    /// Apply nothing unless `key` still holds `read` (what the plugin read
    /// before; `None`: absent): the check of a read-modify-write.
    pub fn check_unchanged(self, key: &str, read: Option<&str>) -> Self {
        match read {
            Some(value) => self.check(key, value),
            None => self.check_absent(key),
        }
    }

    /// Store `value` at `key` (with no expiry).
    pub fn set(self, key: &str, value: &str) -> Self {
        self.put(key, value, None)
    }

    /// Store `value` at `key`, expiring after `ttl`.
    pub fn set_with_ttl(self, key: &str, value: &str, ttl: Duration) -> Self {
        self.put(key, value, Some(millis(ttl)))
    }

    /// Store `value` at `key` as JSON.
    pub fn set_json(self, key: &str, value: &impl Serialize) -> Self {
        self.put(key, &json_text(value), None)
    }

    fn put(mut self, key: &str, value: &str, ttl_ms: Option<u64>) -> Self {
        self.ops.push(wit::KvOp::Put(wit::KvPut {
            key: key.to_owned(),
            value: value.to_owned(),
            ttl_ms,
        }));
        self
    }

    /// Delete `key`.
    pub fn delete(mut self, key: &str) -> Self {
        self.ops.push(wit::KvOp::Delete(key.to_owned()));
        self
    }

    /// Add `delta` to the integer at `key`.
    pub fn incr(mut self, key: &str, delta: i64) -> Self {
        self.ops.push(wit::KvOp::Add(wit::KvAdd {
            key: key.to_owned(),
            delta,
        }));
        self
    }

    /// Apply the batch.
    pub fn commit(self) -> Result<Committed, HostError> {
        Ok(match wit::kv_batch(&self.ops)? {
            wit::KvBatchOutcome::Applied(values) => Committed::Applied(values),
            wit::KvBatchOutcome::Conflict(index) => Committed::Conflict(index as usize),
        })
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Keys and values, in byte order of the keys.
    pub entries: Vec<(String, String)>,
    /// Pass it to [`list_page`] for the next page; `None` on the last.
    pub cursor: Option<String>,
}

/// One page of the keys starting with `prefix` (at most `limit`, 1 to
/// 1000, and about 1 MiB), after `cursor` (the previous page's).
pub fn list_page(prefix: &str, cursor: Option<&str>, limit: u32) -> Result<Page, HostError> {
    let page = wit::kv_list(prefix, cursor, limit)?;
    Ok(Page {
        entries: page.entries,
        cursor: page.cursor,
    })
}

/// Every entry whose key starts with `prefix`, in key order, read a page
/// of 100 at a time. A key present the whole time is listed exactly once;
/// keys changed meanwhile are seen if they sort after the current page.
pub fn list(prefix: &str) -> impl Iterator<Item = Result<(String, String), HostError>> + '_ {
    let mut page: std::vec::IntoIter<(String, String)> = Vec::new().into_iter();
    let mut cursor: Option<String> = None;
    let mut done = false;
    std::iter::from_fn(move || {
        loop {
            if let Some(entry) = page.next() {
                return Some(Ok(entry));
            }
            if done {
                return None;
            }
            match list_page(prefix, cursor.as_deref(), 100) {
                Ok(next) => {
                    done = next.cursor.is_none();
                    cursor = next.cursor;
                    page = next.entries.into_iter();
                }
                Err(error) => {
                    done = true;
                    return Some(Err(error));
                }
            }
        }
    })
}
