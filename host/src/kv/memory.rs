//! The in-memory engine: one sorted map per plugin behind one lock. For
//! tests and for deployments that want nothing on disk; gone at exit.

use super::KvError;
use super::ops::{self, Entries, Entry, KvQuota, Op, Outcome, Page, SWEEP_BATCH, Usage, Write};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Mutex;

/// One plugin's entries.
#[derive(Debug, Default)]
struct Namespace {
    entries: BTreeMap<String, Entry>,
    /// `(expires_at, key)` of every entry with an expiry.
    expiry: BTreeSet<(u64, String)>,
    usage: Usage,
}

impl Entries for Namespace {
    fn read(&mut self, key: &str) -> Result<Option<Entry>, KvError> {
        Ok(self.entries.get(key).cloned())
    }
}

impl Namespace {
    /// Remove up to [`SWEEP_BATCH`] entries expired at `now`.
    fn sweep(&mut self, now: u64) {
        for _ in 0..SWEEP_BATCH {
            match self.expiry.first() {
                Some((at, _)) if *at <= now => {}
                _ => return,
            }
            let (_, key) = self.expiry.pop_first().expect("checked above");
            if let Some(entry) = self.entries.remove(&key) {
                self.usage.keys -= 1;
                self.usage.bytes -= ops::entry_size(&key, &entry.value);
            }
        }
    }

    /// Make one planned change.
    fn write(&mut self, write: Write) {
        if let Some(at) = write.old.and_then(|old| old.expires_at) {
            self.expiry.remove(&(at, write.key.clone()));
        }
        match write.new {
            Some(entry) => {
                if let Some(at) = entry.expires_at {
                    self.expiry.insert((at, write.key.clone()));
                }
                self.entries.insert(write.key, entry);
            }
            None => {
                self.entries.remove(&write.key);
            }
        }
    }
}

/// In-memory KV store, one namespace per plugin.
#[derive(Debug, Default)]
pub(crate) struct MemoryKv {
    namespaces: Mutex<HashMap<String, Namespace>>,
}

impl MemoryKv {
    fn with_namespace<R>(&self, plugin: &str, f: impl FnOnce(&mut Namespace) -> R) -> R {
        let mut namespaces = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        match namespaces.get_mut(plugin) {
            Some(namespace) => f(namespace),
            None => f(namespaces.entry(plugin.to_owned()).or_default()),
        }
    }

    /// The live value at `key`.
    pub(crate) fn get(&self, plugin: &str, key: &str, now: u64) -> Option<String> {
        self.with_namespace(plugin, |ns| {
            ns.entries
                .get(key)
                .filter(|entry| entry.is_live(now))
                .map(|entry| entry.value.clone())
        })
    }

    /// Apply a batch all or none.
    pub(crate) fn apply(
        &self,
        plugin: &str,
        ops: &[Op],
        quota: KvQuota,
        now: u64,
    ) -> Result<(Outcome, Usage), KvError> {
        self.with_namespace(plugin, |ns| {
            ns.sweep(now);
            let plan = ops::plan(ops, ns, ns.usage, quota, now)?;
            for write in plan.writes {
                ns.write(write);
            }
            ns.usage = plan.usage;
            Ok((plan.outcome, plan.usage))
        })
    }

    /// A page of the live entries whose keys start with `prefix`, from the
    /// key `start` on.
    pub(crate) fn list(
        &self,
        plugin: &str,
        prefix: &str,
        start: Bound<&str>,
        limit: usize,
        now: u64,
    ) -> Page {
        self.with_namespace(plugin, |ns| {
            let stored = ns
                .entries
                .range::<str, _>((start, Bound::Unbounded))
                .map(|(key, entry)| Ok((key.clone(), entry.clone())));
            ops::collect_page(stored, prefix, limit, now).unwrap_or_default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeping_frees_expired_entries_and_their_usage() {
        let kv = MemoryKv::default();
        let ops = [Op::Set {
            key: "k".into(),
            value: "v".into(),
            ttl_ms: Some(5),
        }];
        let (_, usage) = kv.apply("p", &ops, KvQuota::default(), 100).unwrap();
        assert_eq!(usage, Usage { keys: 1, bytes: 2 });
        assert_eq!(kv.get("p", "k", 104).as_deref(), Some("v"));
        assert_eq!(kv.get("p", "k", 105), None);
        let (_, usage) = kv.apply("p", &[], KvQuota::default(), 105).unwrap();
        assert_eq!(usage, Usage::default());
        assert_eq!(kv.get("other", "k", 0), None, "namespaces are separate");
    }
}
