//! The embedded engine: a redb database in `<data-dir>/kv.redb`, durable
//! on one host without any other service.
//!
//! Writes go to one writer thread, which applies every batch waiting at
//! the time in one transaction and commits it with an fsync before any of
//! them is acknowledged (group commit): a write a plugin saw succeed is on
//! disk, and a `kill -9` or a power cut loses only writes not yet
//! acknowledged. redb commits are copy-on-write with a checksummed root, so
//! an interrupted commit leaves the previous state intact. Reads run on the
//! calling thread in their own read transaction (redb is MVCC: readers never
//! wait for the writer).
//!
//! Tables (format version [`FORMAT_VERSION`], in table `meta`):
//! `entries` `(plugin, key) -> (value, expires_at_ms or 0)`,
//! `expiry` `(plugin, expires_at_ms, key) -> ()`, `usage` `plugin -> (keys,
//! bytes)`.

use super::KvError;
use super::metrics::CommitCounters;
use super::ops::{self, Entries, Entry, KvQuota, Op, Outcome, Page, SWEEP_BATCH, Usage, Write};
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use std::collections::HashSet;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use thiserror::Error;
use tokio::sync::oneshot;

/// The on-disk format this build reads and writes.
pub(crate) const FORMAT_VERSION: u64 = 1;
/// The file in the data directory.
pub(crate) const FILE_NAME: &str = "kv.redb";
/// The most batches one commit carries.
const MAX_GROUP: usize = 512;

type EntriesTable<'txn> = Table<'txn, (&'static str, &'static str), (&'static str, u64)>;

const ENTRIES: TableDefinition<(&str, &str), (&str, u64)> = TableDefinition::new("entries");
const EXPIRY: TableDefinition<(&str, u64, &str), ()> = TableDefinition::new("expiry");
const USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("usage");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Why the store could not be opened.
#[derive(Debug, Error)]
#[error("cannot open the key-value store {}: {reason}", path.display())]
pub struct KvOpenError {
    /// The database file.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

/// What a batch came to: its outcome and the plugin's usage after it.
type Applied = Result<(Outcome, Usage), KvError>;

/// A batch for the writer thread, and where its result goes.
struct WriteRequest {
    plugin: String,
    ops: Vec<Op>,
    quota: KvQuota,
    reply: oneshot::Sender<Applied>,
}

/// The embedded store.
pub(crate) struct EmbeddedKv {
    db: Arc<Database>,
    writer: mpsc::Sender<WriteRequest>,
    path: PathBuf,
}

impl std::fmt::Debug for EmbeddedKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EmbeddedKv({})", self.path.display())
    }
}

/// A storage failure as the plugin sees it.
fn storage(error: impl Into<redb::Error>) -> KvError {
    KvError::Unavailable(format!("embedded store: {}", error.into()))
}

impl EmbeddedKv {
    /// Open (or create) the store in `dir`, and start its writer thread,
    /// which counts its commits in `commits`.
    pub(crate) fn open(dir: &Path, commits: CommitCounters) -> Result<Self, KvOpenError> {
        let path = dir.join(FILE_NAME);
        let fail = |reason: String| KvOpenError {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|error| fail(error.to_string()))?;
        let db = Database::create(&path).map_err(|error| match error {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                fail("another process has it open (one host per data directory)".to_owned())
            }
            other => fail(other.to_string()),
        })?;
        prepare(&db).map_err(fail)?;
        let db = Arc::new(db);
        let (writer, requests) = mpsc::channel();
        let writer_db = Arc::clone(&db);
        std::thread::Builder::new()
            .name("kv-writer".to_owned())
            .spawn(move || run_writer(&writer_db, &requests, &commits))
            .map_err(|error| fail(error.to_string()))?;
        Ok(EmbeddedKv { db, writer, path })
    }

    /// The database file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The live value at `key`.
    pub(crate) fn get(&self, plugin: &str, key: &str, now: u64) -> Result<Option<String>, KvError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(ENTRIES).map_err(storage)?;
        let stored = table.get((plugin, key)).map_err(storage)?;
        Ok(stored
            .map(|guard| decode(guard.value()))
            .filter(|entry| entry.is_live(now))
            .map(|entry| entry.value))
    }

    /// Apply a batch all or none, durably: the answer comes after the
    /// commit that holds it.
    pub(crate) async fn apply(&self, plugin: &str, ops: Vec<Op>, quota: KvQuota) -> Applied {
        let (reply, answer) = oneshot::channel();
        let request = WriteRequest {
            plugin: plugin.to_owned(),
            ops,
            quota,
            reply,
        };
        let stopped = || KvError::Unavailable("embedded store: the writer stopped".to_owned());
        self.writer.send(request).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
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
    ) -> Result<Page, KvError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(ENTRIES).map_err(storage)?;
        let from = match start {
            Bound::Included(key) => Bound::Included((plugin, key)),
            Bound::Excluded(key) => Bound::Excluded((plugin, key)),
            Bound::Unbounded => Bound::Included((plugin, "")),
        };
        let range = table.range((from, Bound::Unbounded)).map_err(storage)?;
        let stored = range
            .map(|item| {
                let (key, value) = item.map_err(storage)?;
                let (owner, key) = key.value();
                Ok((owner == plugin).then(|| (key.to_owned(), decode(value.value()))))
            })
            .map_while(|item: Result<Option<(String, Entry)>, KvError>| item.transpose());
        ops::collect_page(stored, prefix, limit, now)
    }
}

/// Create the tables of a new file; refuse a file of another format.
fn prepare(db: &Database) -> Result<(), String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
        let found = meta
            .get("format")
            .map_err(|e| e.to_string())?
            .map(|guard| guard.value());
        match found {
            None => {
                meta.insert("format", FORMAT_VERSION)
                    .map_err(|e| e.to_string())?;
            }
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(format!(
                    "it is in format version {other}; this build reads version {FORMAT_VERSION}"
                ));
            }
        }
        txn.open_table(ENTRIES).map_err(|e| e.to_string())?;
        txn.open_table(EXPIRY).map_err(|e| e.to_string())?;
        txn.open_table(USAGE).map_err(|e| e.to_string())?;
    }
    txn.commit().map_err(|e| e.to_string())
}

/// A stored `(value, expires_at or 0)` as an entry.
fn decode((value, expires_at): (&str, u64)) -> Entry {
    Entry {
        value: value.to_owned(),
        expires_at: (expires_at != 0).then_some(expires_at),
    }
}

/// The writer thread: commit what waits, answer, repeat; ends when the
/// store is dropped.
fn run_writer(db: &Database, requests: &mpsc::Receiver<WriteRequest>, counters: &CommitCounters) {
    while let Ok(first) = requests.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match requests.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        let now = super::now_ms();
        match commit_group(db, &group, now) {
            Ok(results) => {
                counters.commits.inc();
                counters.batches.inc_by(group.len() as u64);
                for (request, result) in group.into_iter().zip(results) {
                    let _ = request.reply.send(result);
                }
            }
            Err(error) => {
                tracing::error!(%error, "key-value store commit failed");
                for request in group {
                    let _ = request.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Apply every batch of `group` in one transaction and commit it. A batch
/// that fails (a quota, a failed check) changes nothing and fails alone; a
/// storage error fails them all.
fn commit_group(db: &Database, group: &[WriteRequest], now: u64) -> Result<Vec<Applied>, KvError> {
    let txn = db.begin_write().map_err(storage)?;
    let results = {
        let mut tables = Tables::open(&txn)?;
        let mut swept = HashSet::new();
        let mut results = Vec::with_capacity(group.len());
        for request in group {
            if swept.insert(request.plugin.as_str()) {
                tables.sweep(&request.plugin, now)?;
            }
            results.push(tables.apply(request, now)?);
        }
        results
    };
    txn.commit().map_err(storage)?;
    Ok(results)
}

/// The tables of one write transaction.
struct Tables<'txn> {
    entries: EntriesTable<'txn>,
    expiry: Table<'txn, (&'static str, u64, &'static str), ()>,
    usage: Table<'txn, &'static str, (u64, u64)>,
}

/// One plugin's entries in a write transaction.
struct PluginEntries<'a, 'txn> {
    table: &'a EntriesTable<'txn>,
    plugin: &'a str,
}

impl Entries for PluginEntries<'_, '_> {
    fn read(&mut self, key: &str) -> Result<Option<Entry>, KvError> {
        let stored = self.table.get((self.plugin, key)).map_err(storage)?;
        Ok(stored.map(|guard| decode(guard.value())))
    }
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, KvError> {
        Ok(Tables {
            entries: txn.open_table(ENTRIES).map_err(storage)?,
            expiry: txn.open_table(EXPIRY).map_err(storage)?,
            usage: txn.open_table(USAGE).map_err(storage)?,
        })
    }

    fn usage_of(&self, plugin: &str) -> Result<Usage, KvError> {
        let stored = self.usage.get(plugin).map_err(storage)?;
        Ok(stored.map_or_else(Usage::default, |guard| {
            let (keys, bytes) = guard.value();
            Usage { keys, bytes }
        }))
    }

    /// Remove up to [`SWEEP_BATCH`] of `plugin`'s entries expired at `now`.
    fn sweep(&mut self, plugin: &str, now: u64) -> Result<(), KvError> {
        let due = self
            .expiry
            .range((plugin, 0, "")..(plugin, now.saturating_add(1), ""))
            .map_err(storage)?
            .take(SWEEP_BATCH)
            .map(|item| {
                let (key, _) = item.map_err(storage)?;
                let (_, at, key) = key.value();
                Ok((at, key.to_owned()))
            })
            .collect::<Result<Vec<_>, KvError>>()?;
        if due.is_empty() {
            return Ok(());
        }
        let mut usage = self.usage_of(plugin)?;
        for (at, key) in due {
            self.expiry
                .remove((plugin, at, key.as_str()))
                .map_err(storage)?;
            let removed = self
                .entries
                .remove((plugin, key.as_str()))
                .map_err(storage)?;
            if let Some(guard) = removed {
                let (value, _) = guard.value();
                usage.keys -= 1;
                usage.bytes -= ops::entry_size(&key, value);
            }
        }
        self.usage
            .insert(plugin, (usage.keys, usage.bytes))
            .map_err(storage)?;
        Ok(())
    }

    /// Plan one batch and, when it applies, write it.
    fn apply(&mut self, request: &WriteRequest, now: u64) -> Result<Applied, KvError> {
        let plugin = request.plugin.as_str();
        let usage = self.usage_of(plugin)?;
        let mut view = PluginEntries {
            table: &self.entries,
            plugin,
        };
        let plan = match ops::plan(&request.ops, &mut view, usage, request.quota, now) {
            Ok(plan) => plan,
            Err(error @ KvError::Unavailable(_)) => return Err(error),
            Err(refused) => return Ok(Err(refused)),
        };
        for write in &plan.writes {
            self.write(plugin, write)?;
        }
        if plan.usage != usage {
            self.usage
                .insert(plugin, (plan.usage.keys, plan.usage.bytes))
                .map_err(storage)?;
        }
        Ok(Ok((plan.outcome, plan.usage)))
    }

    fn write(&mut self, plugin: &str, write: &Write) -> Result<(), KvError> {
        let key = write.key.as_str();
        if let Some(at) = write.old.as_ref().and_then(|old| old.expires_at) {
            self.expiry.remove((plugin, at, key)).map_err(storage)?;
        }
        match &write.new {
            Some(entry) => {
                let stored = (entry.value.as_str(), entry.expires_at.unwrap_or(0));
                self.entries
                    .insert((plugin, key), stored)
                    .map_err(storage)?;
                if let Some(at) = entry.expires_at {
                    self.expiry.insert((plugin, at, key), ()).map_err(storage)?;
                }
            }
            None => {
                self.entries.remove((plugin, key)).map_err(storage)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str) -> Op {
        Op::Set {
            key: key.into(),
            value: value.into(),
            ttl_ms: None,
        }
    }

    #[tokio::test]
    async fn writes_survive_reopening_and_namespaces_stay_apart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let kv = EmbeddedKv::open(dir.path(), CommitCounters::default()).unwrap();
            let quota = KvQuota::default();
            kv.apply("a", vec![set("k1", "1"), set("k2", "2")], quota)
                .await
                .unwrap();
            kv.apply("b", vec![set("k1", "other")], quota)
                .await
                .unwrap();
            let error = EmbeddedKv::open(dir.path(), CommitCounters::default()).unwrap_err();
            assert!(error.reason.contains("another process"), "{error}");
        }
        // The writer thread lets go of the file once the store is dropped.
        let mut reopened = EmbeddedKv::open(dir.path(), CommitCounters::default());
        for _ in 0..500 {
            if reopened.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            reopened = EmbeddedKv::open(dir.path(), CommitCounters::default());
        }
        let kv = reopened.unwrap();
        assert_eq!(kv.get("a", "k1", 0).unwrap().as_deref(), Some("1"));
        let page = kv.list("a", "k", Bound::Unbounded, 10, 0).unwrap();
        assert_eq!(page.entries.len(), 2, "plugin b's key is not listed");
        let page = kv.list("a", "", Bound::Excluded("k1"), 10, 0).unwrap();
        assert_eq!(page.entries, [("k2".to_owned(), "2".to_owned())]);
    }
}
