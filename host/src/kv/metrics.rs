//! KV operations in `/metrics`: counted and timed per plugin and operation,
//! and each plugin's usage (keys and bytes) as its last write saw it.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;

use super::ops::Usage;

/// A plugin-facing KV operation, as labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    /// `kv-get`.
    Get,
    /// `kv-set`.
    Set,
    /// `kv-delete`.
    Delete,
    /// `kv-incr`.
    Incr,
    /// `kv-compare-and-set`.
    CompareAndSet,
    /// `kv-expire`.
    Expire,
    /// `kv-batch`.
    Batch,
    /// `kv-list`.
    List,
}

impl Operation {
    fn label(self) -> &'static str {
        match self {
            Operation::Get => "get",
            Operation::Set => "set",
            Operation::Delete => "delete",
            Operation::Incr => "incr",
            Operation::CompareAndSet => "compare_and_set",
            Operation::Expire => "expire",
            Operation::Batch => "batch",
            Operation::List => "list",
        }
    }
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Done.
    Ok,
    /// A check did not hold; nothing changed.
    Conflict,
    /// Refused: a quota, an argument, a value that is not an integer.
    Refused,
    /// The store failed.
    Unavailable,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Conflict => "conflict",
            Status::Refused => "refused",
            Status::Unavailable => "unavailable",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    plugin: String,
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    plugin: String,
    operation: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
}

/// The commits of the embedded engine, counted by its writer thread.
#[derive(Debug, Clone, Default)]
pub(crate) struct CommitCounters {
    /// Commits made, each one fsync.
    pub(crate) commits: Counter,
    /// Write batches those commits carried.
    pub(crate) batches: Counter,
}

/// The KV families, shared by every worker.
#[derive(Debug, Clone)]
pub(crate) struct KvMetrics {
    operations: Family<OperationLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    keys: Family<PluginLabels, Gauge>,
    bytes: Family<PluginLabels, Gauge>,
    /// With the embedded engine: its commits.
    commits: Option<CommitCounters>,
}

impl Default for KvMetrics {
    fn default() -> Self {
        KvMetrics {
            operations: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new([
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                    0.1, 0.25, 1.0,
                ])
            }),
            keys: Family::default(),
            bytes: Family::default(),
            commits: None,
        }
    }
}

impl KvMetrics {
    /// The families, with the commits of an embedded engine.
    pub(crate) fn with_commits(commits: CommitCounters) -> Self {
        KvMetrics {
            commits: Some(commits),
            ..KvMetrics::default()
        }
    }

    /// Count and time one operation of `plugin`.
    pub(crate) fn observe(
        &self,
        plugin: &str,
        operation: Operation,
        status: Status,
        took: Duration,
    ) {
        self.operations
            .get_or_create(&OperationLabels {
                plugin: plugin.to_owned(),
                operation: operation.label(),
                outcome: status.label(),
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels {
                plugin: plugin.to_owned(),
                operation: operation.label(),
            })
            .observe(took.as_secs_f64());
    }

    /// Record what `plugin` keeps in the store.
    pub(crate) fn usage(&self, plugin: &str, usage: Usage) {
        let labels = PluginLabels {
            plugin: plugin.to_owned(),
        };
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.keys.get_or_create(&labels).set(clamp(usage.keys));
        self.bytes.get_or_create(&labels).set(clamp(usage.bytes));
    }

    /// Add the families to `registry` (prefixed there).
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "kv_operations",
            "Key-value operations of plugins, by plugin, operation and outcome",
            self.operations.clone(),
        );
        registry.register_with_unit(
            "kv_operation",
            "Time of key-value operations as plugins wait for them, by plugin and operation",
            Unit::Seconds,
            self.latency.clone(),
        );
        registry.register(
            "kv_keys",
            "Keys a plugin keeps in the key-value store (as of its last write here)",
            self.keys.clone(),
        );
        registry.register_with_unit(
            "kv_stored",
            "Bytes of keys and values a plugin keeps in the key-value store (as of its last write here)",
            Unit::Bytes,
            self.bytes.clone(),
        );
        if let Some(commits) = &self.commits {
            registry.register(
                "kv_commits",
                "Commits of the embedded key-value store, one fsync each",
                commits.commits.clone(),
            );
            registry.register(
                "kv_committed_batches",
                "Write batches the embedded store's commits carried (over kv_commits_total: writes per fsync)",
                commits.batches.clone(),
            );
        }
    }
}
