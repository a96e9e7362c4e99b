//! The plugins' key-value store, kept by the host.
//!
//! Each plugin has its own namespace (its name). Values outlive plugin
//! instances, so state kept here survives traps, rebuilds and hot swaps, and
//! every worker sees the same values. With the Redis broker the store is in
//! Redis, so that every host sees the same values too.

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::sync::Mutex;
use thiserror::Error;

/// The store: in this process, or in Redis.
pub(crate) enum KvStore {
    /// One host: a map in memory.
    Memory(MemoryKv),
    /// Shared by every host: keys `<prefix>kv:<plugin>:<key>` in Redis.
    Redis {
        /// The connection (it reconnects by itself).
        connection: ConnectionManager,
        /// The deployment's key prefix.
        prefix: String,
    },
}

impl Default for KvStore {
    fn default() -> Self {
        KvStore::Memory(MemoryKv::default())
    }
}

impl KvStore {
    /// The value at `key` in `plugin`'s namespace.
    pub(crate) async fn get(&self, plugin: &str, key: &str) -> Result<Option<String>, KvError> {
        match self {
            KvStore::Memory(kv) => Ok(kv.get(plugin, key)),
            KvStore::Redis { connection, prefix } => connection
                .clone()
                .get(redis_key(prefix, plugin, key))
                .await
                .map_err(|error| redis_error(error, key)),
        }
    }

    /// Store `value` at `key`.
    pub(crate) async fn set(
        &self,
        plugin: &str,
        key: String,
        value: String,
    ) -> Result<(), KvError> {
        match self {
            KvStore::Memory(kv) => {
                kv.set(plugin, key, value);
                Ok(())
            }
            KvStore::Redis { connection, prefix } => connection
                .clone()
                .set(redis_key(prefix, plugin, &key), value)
                .await
                .map_err(|error| redis_error(error, &key)),
        }
    }

    /// Delete `key`; whether it existed.
    pub(crate) async fn delete(&self, plugin: &str, key: &str) -> Result<bool, KvError> {
        match self {
            KvStore::Memory(kv) => Ok(kv.delete(plugin, key)),
            KvStore::Redis { connection, prefix } => connection
                .clone()
                .del::<_, u64>(redis_key(prefix, plugin, key))
                .await
                .map(|deleted| deleted > 0)
                .map_err(|error| redis_error(error, key)),
        }
    }

    /// Add `delta` to the integer at `key` (missing counts as 0).
    pub(crate) async fn incr(&self, plugin: &str, key: &str, delta: i64) -> Result<i64, KvError> {
        match self {
            KvStore::Memory(kv) => kv.incr(plugin, key, delta),
            KvStore::Redis { connection, prefix } => connection
                .clone()
                .incr(redis_key(prefix, plugin, key), delta)
                .await
                .map_err(|error| redis_error(error, key)),
        }
    }
}

/// The Redis key of a plugin's key.
fn redis_key(prefix: &str, plugin: &str, key: &str) -> String {
    format!("{prefix}kv:{plugin}:{key}")
}

/// A Redis failure as a KV error: Redis' own refusals of `INCRBY` keep
/// their meaning, anything else means the store is unavailable.
fn redis_error(error: redis::RedisError, key: &str) -> KvError {
    let text = error.to_string();
    if text.contains("not an integer") {
        KvError::NotAnInteger {
            key: key.to_owned(),
        }
    } else if text.contains("overflow") {
        KvError::Overflow {
            key: key.to_owned(),
        }
    } else {
        KvError::Unavailable(text)
    }
}

/// Why a KV operation failed.
#[derive(Debug, Error, PartialEq)]
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
    /// The backing store (Redis) did not answer.
    #[error("the key-value store is unavailable: {0}")]
    Unavailable(String),
}

/// In-memory KV store, one namespace per plugin.
#[derive(Debug, Default)]
pub(crate) struct MemoryKv {
    /// Plugin name to that plugin's keys and values.
    namespaces: Mutex<HashMap<String, HashMap<String, String>>>,
}

impl MemoryKv {
    fn with_namespace<R>(
        &self,
        plugin: &str,
        f: impl FnOnce(&mut HashMap<String, String>) -> R,
    ) -> R {
        let mut namespaces = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        match namespaces.get_mut(plugin) {
            Some(namespace) => f(namespace),
            None => f(namespaces.entry(plugin.to_owned()).or_default()),
        }
    }

    /// The value at `key` in `plugin`'s namespace.
    pub(crate) fn get(&self, plugin: &str, key: &str) -> Option<String> {
        self.with_namespace(plugin, |ns| ns.get(key).cloned())
    }

    /// Store `value` at `key`.
    pub(crate) fn set(&self, plugin: &str, key: String, value: String) {
        self.with_namespace(plugin, |ns| ns.insert(key, value));
    }

    /// Delete `key`; whether it existed.
    pub(crate) fn delete(&self, plugin: &str, key: &str) -> bool {
        self.with_namespace(plugin, |ns| ns.remove(key).is_some())
    }

    /// Add `delta` to the integer at `key` (missing counts as 0).
    pub(crate) fn incr(&self, plugin: &str, key: &str, delta: i64) -> Result<i64, KvError> {
        self.with_namespace(plugin, |ns| {
            let current = match ns.get(key) {
                Some(text) => text.parse::<i64>().map_err(|_| KvError::NotAnInteger {
                    key: key.to_owned(),
                })?,
                None => 0,
            };
            let next = current
                .checked_add(delta)
                .ok_or_else(|| KvError::Overflow {
                    key: key.to_owned(),
                })?;
            ns.insert(key.to_owned(), next.to_string());
            Ok(next)
        })
    }
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvStore::Memory(_) => f.write_str("KvStore::Memory"),
            KvStore::Redis { prefix, .. } => write!(f, "KvStore::Redis({prefix:?})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_separate() {
        let kv = MemoryKv::default();
        kv.set("a", "k".into(), "1".into());
        assert_eq!(kv.get("a", "k").as_deref(), Some("1"));
        assert_eq!(kv.get("b", "k"), None);
        assert!(kv.delete("a", "k"));
        assert!(!kv.delete("a", "k"));
    }

    #[test]
    fn incr_counts_and_refuses_non_integers() {
        let kv = MemoryKv::default();
        assert_eq!(kv.incr("p", "n", 2), Ok(2));
        assert_eq!(kv.incr("p", "n", -5), Ok(-3));
        kv.set("p", "s".into(), "abc".into());
        assert_eq!(
            kv.incr("p", "s", 1),
            Err(KvError::NotAnInteger { key: "s".into() })
        );
        kv.set("p", "big".into(), i64::MAX.to_string());
        assert!(matches!(
            kv.incr("p", "big", 1),
            Err(KvError::Overflow { .. })
        ));
    }
}
