//! The plugins' key-value store, kept by the host.
//!
//! Each plugin has its own namespace (its name). Values outlive plugin
//! instances, so state kept here survives traps, rebuilds and hot swaps, and
//! every worker sees the same values. Three engines keep it:
//!
//! - `memory` ([`memory`]): in this process, gone at exit;
//! - `embedded` ([`embedded`]): a redb file in `--data-dir`, durable on one
//!   host (each write acknowledged after its fsync);
//! - `redis` ([`redis`]): with `--broker redis://`, shared by every host.
//!
//! Every write is a batch applied all or none, with the same meaning on
//! each engine ([`ops`]): compare-and-set, expiry, quotas per plugin.
//! This module checks the arguments, picks the engine, and counts and
//! times each operation ([`metrics`]).

mod embedded;
mod memory;
mod metrics;
mod ops;
mod redis;

pub(crate) use embedded::KvOpenError;
use metrics::CommitCounters;
pub(crate) use metrics::{KvMetrics, Operation};
pub use ops::KvQuota;
pub(crate) use ops::{Op, OpResult, Outcome, Page};

use embedded::EmbeddedKv;
use memory::MemoryKv;
use metrics::Status;
use redis::RedisKv;
use std::ops::Bound;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// The longest key, in bytes.
pub(crate) const MAX_KEY_BYTES: usize = 1024;
/// The most operations in one batch.
pub(crate) const MAX_BATCH_OPS: usize = 128;
/// The most entries in one page of a listing.
pub(crate) const MAX_PAGE_ENTRIES: u32 = 1000;
/// The longest expiry, in milliseconds (ten years).
pub(crate) const MAX_TTL_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// Milliseconds since the Unix epoch: the clock expiries are measured on.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// Why a KV operation failed.
#[derive(Debug, Clone, Error, PartialEq)]
pub(crate) enum KvError {
    /// `incr` on a value that is not a decimal i64.
    #[error("the value at key '{key}' is not an integer")]
    NotAnInteger {
        /// The key holding the non-integer value.
        key: String,
    },
    /// `incr` would overflow an i64.
    #[error("incrementing key '{key}' overflows a 64-bit integer")]
    Overflow {
        /// The key whose value would overflow.
        key: String,
    },
    /// The plugin would keep more keys than its quota.
    #[error("key-value quota: the plugin may keep at most {limit} keys (kv-max-keys)")]
    KeysQuota {
        /// Its `kv-max-keys`.
        limit: u64,
    },
    /// The plugin would keep more bytes than its quota.
    #[error(
        "key-value quota: the plugin may keep at most {limit} bytes of keys and values (kv-max-bytes)"
    )]
    BytesQuota {
        /// Its `kv-max-bytes`.
        limit: u64,
    },
    /// An argument out of bounds; the text says which.
    #[error("{0}")]
    Invalid(String),
    /// The backing store (Redis, the data file) failed.
    #[error("the key-value store is unavailable: {0}")]
    Unavailable(String),
}

/// Which engine keeps the values.
enum Engine {
    Memory(MemoryKv),
    Embedded(EmbeddedKv),
    Redis(RedisKv),
}

/// The store: an engine, and the metrics of the operations on it.
pub(crate) struct KvStore {
    engine: Engine,
    metrics: KvMetrics,
}

impl Default for KvStore {
    fn default() -> Self {
        KvStore::with(Engine::Memory(MemoryKv::default()))
    }
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KvStore({})", self.status())
    }
}

impl KvStore {
    fn with(engine: Engine) -> Self {
        KvStore {
            engine,
            metrics: KvMetrics::default(),
        }
    }

    /// The embedded engine on the file in `data_dir`.
    pub(crate) fn embedded(data_dir: &Path) -> Result<Self, KvOpenError> {
        let commits = CommitCounters::default();
        let kv = EmbeddedKv::open(data_dir, commits.clone())?;
        Ok(KvStore {
            engine: Engine::Embedded(kv),
            metrics: KvMetrics::with_commits(commits),
        })
    }

    /// The Redis engine under `prefix`.
    pub(crate) fn redis(connection: crate::redis_link::RedisLink, prefix: String) -> Self {
        KvStore::with(Engine::Redis(RedisKv::new(connection, prefix)))
    }

    /// The metrics, to register them.
    pub(crate) fn metrics(&self) -> &KvMetrics {
        &self.metrics
    }

    /// What the engine is, for `/healthz` and the start-up log.
    pub(crate) fn status(&self) -> serde_json::Value {
        match &self.engine {
            Engine::Memory(_) => serde_json::json!({ "engine": "memory" }),
            Engine::Embedded(kv) => serde_json::json!({
                "engine": "embedded",
                "path": kv.path().display().to_string(),
                "format": embedded::FORMAT_VERSION,
            }),
            Engine::Redis(kv) => serde_json::json!({ "engine": "redis", "prefix": kv.prefix() }),
        }
    }

    /// The value at `key` in `plugin`'s namespace.
    pub(crate) async fn get(&self, plugin: &str, key: &str) -> Result<Option<String>, KvError> {
        let started = Instant::now();
        let result = match check_key(key) {
            Err(error) => Err(error),
            Ok(()) => match &self.engine {
                Engine::Memory(kv) => Ok(kv.get(plugin, key, now_ms())),
                Engine::Embedded(kv) => kv.get(plugin, key, now_ms()),
                Engine::Redis(kv) => kv.get(plugin, key).await,
            },
        };
        self.observe(plugin, Operation::Get, status_of(&result), started);
        result
    }

    /// Apply `ops` to `plugin`'s namespace all or none, under `quota`;
    /// `operation` is what the plugin called, for the metrics.
    pub(crate) async fn apply(
        &self,
        plugin: &str,
        quota: KvQuota,
        operation: Operation,
        ops: Vec<Op>,
    ) -> Result<Outcome, KvError> {
        let started = Instant::now();
        let result = match check_ops(&ops) {
            Err(error) => Err(error),
            Ok(()) => match &self.engine {
                Engine::Memory(kv) => kv.apply(plugin, &ops, quota, now_ms()),
                Engine::Embedded(kv) => kv.apply(plugin, ops, quota).await,
                Engine::Redis(kv) => kv.apply(plugin, &ops, quota).await,
            },
        };
        let status = match &result {
            Ok((Outcome::Applied(_), _)) => Status::Ok,
            Ok((Outcome::Conflict(_), _)) => Status::Conflict,
            Err(error) => status_of_error(error),
        };
        if let Ok((_, usage)) = &result {
            self.metrics.usage(plugin, *usage);
        }
        self.observe(plugin, operation, status, started);
        result.map(|(outcome, _)| outcome)
    }

    /// A page of `plugin`'s entries whose keys start with `prefix`, after
    /// the key `after` (the previous page's cursor).
    pub(crate) async fn list(
        &self,
        plugin: &str,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page, KvError> {
        let started = Instant::now();
        let result = match check_list(prefix, after, limit) {
            Err(error) => Err(error),
            Ok(()) => {
                // A cursor before the prefix starts at the prefix.
                let start = match after {
                    Some(after) if after >= prefix => Bound::Excluded(after),
                    _ => Bound::Included(prefix),
                };
                let limit = limit as usize;
                match &self.engine {
                    Engine::Memory(kv) => Ok(kv.list(plugin, prefix, start, limit, now_ms())),
                    Engine::Embedded(kv) => kv.list(plugin, prefix, start, limit, now_ms()),
                    Engine::Redis(kv) => kv.list(plugin, prefix, start, limit).await,
                }
            }
        };
        self.observe(plugin, Operation::List, status_of(&result), started);
        result
    }

    fn observe(&self, plugin: &str, operation: Operation, status: Status, started: Instant) {
        self.metrics
            .observe(plugin, operation, status, started.elapsed());
    }

    /// Store `value` at `key` (with no expiry).
    pub(crate) async fn set(
        &self,
        plugin: &str,
        quota: KvQuota,
        key: String,
        value: String,
    ) -> Result<(), KvError> {
        let op = Op::Set {
            key,
            value,
            ttl_ms: None,
        };
        self.apply(plugin, quota, Operation::Set, vec![op])
            .await
            .map(drop)
    }

    /// Delete `key`; whether it existed.
    pub(crate) async fn delete(
        &self,
        plugin: &str,
        quota: KvQuota,
        key: String,
    ) -> Result<bool, KvError> {
        let outcome = self
            .apply(plugin, quota, Operation::Delete, vec![Op::Delete { key }])
            .await?;
        Ok(matches!(
            first_result(outcome),
            Some(OpResult::Existed(true))
        ))
    }

    /// Add `delta` to the integer at `key` (missing counts as 0).
    pub(crate) async fn incr(
        &self,
        plugin: &str,
        quota: KvQuota,
        key: String,
        delta: i64,
    ) -> Result<i64, KvError> {
        let outcome = self
            .apply(
                plugin,
                quota,
                Operation::Incr,
                vec![Op::Incr { key, delta }],
            )
            .await?;
        match first_result(outcome) {
            Some(OpResult::Value(value)) => Ok(value),
            other => Err(KvError::Unavailable(format!("incr answered {other:?}"))),
        }
    }

    /// Set `key` to `new` (delete it when `None`) if it holds `expected`
    /// (is absent when `None`); whether it did.
    pub(crate) async fn compare_and_set(
        &self,
        plugin: &str,
        quota: KvQuota,
        key: String,
        expected: Option<String>,
        new: Option<String>,
    ) -> Result<bool, KvError> {
        let change = match new {
            Some(value) => Op::Set {
                key: key.clone(),
                value,
                ttl_ms: None,
            },
            None => Op::Delete { key: key.clone() },
        };
        let ops = vec![Op::Check { key, expected }, change];
        let outcome = self
            .apply(plugin, quota, Operation::CompareAndSet, ops)
            .await?;
        Ok(matches!(outcome, Outcome::Applied(_)))
    }

    /// Give `key` an expiry `ttl_ms` from now (none: keep it for good);
    /// whether the key exists.
    pub(crate) async fn expire(
        &self,
        plugin: &str,
        quota: KvQuota,
        key: String,
        ttl_ms: Option<u64>,
    ) -> Result<bool, KvError> {
        let outcome = self
            .apply(
                plugin,
                quota,
                Operation::Expire,
                vec![Op::Expire { key, ttl_ms }],
            )
            .await?;
        Ok(matches!(
            first_result(outcome),
            Some(OpResult::Existed(true))
        ))
    }
}

fn first_result(outcome: Outcome) -> Option<OpResult> {
    match outcome {
        Outcome::Applied(results) => results.into_iter().next(),
        Outcome::Conflict(_) => None,
    }
}

fn status_of<T>(result: &Result<T, KvError>) -> Status {
    match result {
        Ok(_) => Status::Ok,
        Err(error) => status_of_error(error),
    }
}

fn status_of_error(error: &KvError) -> Status {
    match error {
        KvError::Unavailable(_) => Status::Unavailable,
        _ => Status::Refused,
    }
}

fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::Invalid("a key may not be empty".to_owned()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KvError::Invalid(format!(
            "a key may have at most {MAX_KEY_BYTES} bytes; this one has {}",
            key.len()
        )));
    }
    Ok(())
}

fn check_ttl(ttl_ms: Option<u64>) -> Result<(), KvError> {
    match ttl_ms {
        Some(ttl) if ttl == 0 || ttl > MAX_TTL_MS => Err(KvError::Invalid(format!(
            "an expiry must be between 1 and {MAX_TTL_MS} ms; got {ttl}"
        ))),
        _ => Ok(()),
    }
}

fn check_ops(ops: &[Op]) -> Result<(), KvError> {
    if ops.len() > MAX_BATCH_OPS {
        return Err(KvError::Invalid(format!(
            "a batch may have at most {MAX_BATCH_OPS} operations; this one has {}",
            ops.len()
        )));
    }
    for op in ops {
        check_key(op.key())?;
        if let Op::Set { ttl_ms, .. } | Op::Expire { ttl_ms, .. } = op {
            check_ttl(*ttl_ms)?;
        }
    }
    Ok(())
}

fn check_list(prefix: &str, after: Option<&str>, limit: u32) -> Result<(), KvError> {
    if prefix.len() > MAX_KEY_BYTES || after.is_some_and(|a| a.len() > MAX_KEY_BYTES) {
        return Err(KvError::Invalid(format!(
            "a prefix or cursor may have at most {MAX_KEY_BYTES} bytes"
        )));
    }
    if limit == 0 || limit > MAX_PAGE_ENTRIES {
        return Err(KvError::Invalid(format!(
            "a page holds between 1 and {MAX_PAGE_ENTRIES} entries; asked for {limit}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn single_operations_are_batches_with_their_results() {
        let kv = KvStore::default();
        let q = KvQuota::default();
        assert_eq!(kv.incr("p", q, "n".into(), 2).await, Ok(2));
        assert!(
            !kv.compare_and_set("p", q, "n".into(), None, Some("x".into()))
                .await
                .unwrap()
        );
        assert!(
            kv.compare_and_set("p", q, "n".into(), Some("2".into()), Some("3".into()))
                .await
                .unwrap()
        );
        assert_eq!(kv.get("p", "n").await.unwrap().as_deref(), Some("3"));
        assert!(kv.delete("p", q, "n".into()).await.unwrap());
        assert!(!kv.delete("p", q, "n".into()).await.unwrap());
        assert!(!kv.expire("p", q, "n".into(), Some(5)).await.unwrap());
    }

    #[tokio::test]
    async fn arguments_out_of_bounds_are_refused() {
        let kv = KvStore::default();
        let q = KvQuota::default();
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(matches!(kv.get("p", &long).await, Err(KvError::Invalid(_))));
        assert!(matches!(kv.get("p", "").await, Err(KvError::Invalid(_))));
        let ops = vec![Op::Delete { key: "k".into() }; MAX_BATCH_OPS + 1];
        let refused = kv.apply("p", q, Operation::Batch, ops).await;
        assert!(matches!(refused, Err(KvError::Invalid(_))));
        let zero = kv.expire("p", q, "k".into(), Some(0)).await;
        assert!(matches!(zero, Err(KvError::Invalid(_))));
        assert!(matches!(
            kv.list("p", "", None, 0).await,
            Err(KvError::Invalid(_))
        ));
    }
}
