//! The plugin key-value store kept by the host.
//!
//! Each plugin has its own namespace (its name). Values outlive plugin
//! instances, so state kept here survives traps, rebuilds and hot swaps, and
//! every worker sees the same values.

use std::collections::HashMap;
use std::sync::Mutex;
use thiserror::Error;

/// Why a KV operation failed.
#[derive(Debug, Error, PartialEq)]
pub enum KvError {
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
}

/// In-memory KV store, one namespace per plugin.
#[derive(Debug, Default)]
pub struct KvStore {
    /// Plugin name to that plugin's keys and values.
    namespaces: Mutex<HashMap<String, HashMap<String, String>>>,
}

impl KvStore {
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
    pub fn get(&self, plugin: &str, key: &str) -> Option<String> {
        self.with_namespace(plugin, |ns| ns.get(key).cloned())
    }

    /// Store `value` at `key`.
    pub fn set(&self, plugin: &str, key: String, value: String) {
        self.with_namespace(plugin, |ns| ns.insert(key, value));
    }

    /// Delete `key`; whether it existed.
    pub fn delete(&self, plugin: &str, key: &str) -> bool {
        self.with_namespace(plugin, |ns| ns.remove(key).is_some())
    }

    /// Add `delta` to the integer at `key` (missing counts as 0).
    pub fn incr(&self, plugin: &str, key: &str, delta: i64) -> Result<i64, KvError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_separate() {
        let kv = KvStore::default();
        kv.set("a", "k".into(), "1".into());
        assert_eq!(kv.get("a", "k").as_deref(), Some("1"));
        assert_eq!(kv.get("b", "k"), None);
        assert!(kv.delete("a", "k"));
        assert!(!kv.delete("a", "k"));
    }

    #[test]
    fn incr_counts_and_refuses_non_integers() {
        let kv = KvStore::default();
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
