//! Metrics: the counters every worker keeps while it serves, and
//! `GET /metrics` rendered from them ([`render`]).
//!
//! What the hot path pays, and what it does not:
//! - Per-message counters live in the worker's own [`WorkerStats`], a block
//!   aligned to 128 bytes so that no two workers ever write to one cache
//!   line (nor to adjacent lines, which some CPUs prefetch in pairs). Only
//!   their worker writes them, so the counts added for metrics are a plain
//!   load and store ([`add_own`]), not a locked add. No lock, no
//!   allocation, no string hashing.
//! - Each RPC's duration goes to a histogram of the worker's own
//!   ([`RpcStats`]), found by the same lookup that routes the RPC to its
//!   plugin: the worker's routing table maps an event to its plugin *and* its
//!   histogram. The clock is read twice per RPC with `quanta` (TSC, about
//!   10 ns a read against 25 ns for `std::time::Instant` here). Only events
//!   some plugin declares have a histogram: an unknown event creates no label
//!   set, so the cardinality is bounded by the manifests (and capped at
//!   [`MAX_RPC_SERIES`] per worker).
//! - Plugin fault counters are the plugins' own (what `/healthz` shows);
//!   the server reads them into the [`Snapshot`] a scrape renders.
//!
//! A scrape sums the workers' counters and merges their histograms into
//! families, then encodes them with `prometheus-client`: OpenMetrics text
//! when the scraper asks for it (Prometheus does), the Prometheus text format
//! 0.0.4 otherwise (curl).
//!
//! # Adding a metric from another module
//!
//! [`Metrics`] takes a function read at each scrape ([`Metrics::gauge_fn`]).
//! Names get the `wasmcluster_` prefix. The broker's connection state is
//! exported this way, by the server:
//!
//! ```ignore
//! metrics.gauge_fn(
//!     "broker_connected",
//!     "1 while publications reach the other hosts, 0 while Redis is lost",
//!     move || i64::from(services.broker.is_connected()),
//! );
//! ```
//!
//! Such metrics are shared by every worker: keep them off the per-message
//! path (state changes, not messages), or count per worker in
//! [`WorkerStats`] and add the family where a scrape gathers them.

mod labels;
mod render;
mod rpc;

pub(crate) use labels::{HookKind, MessageKind, PublicationSource};
pub(crate) use render::{Format, PluginSample, Snapshot, render};
pub(crate) use rpc::{RpcStats, RpcTable, start};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::cell::OnceCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The prefix of every metric name.
const PREFIX: &str = "wasmcluster";

/// One worker's counters, shared by its sessions and plugin instances, for
/// `/healthz` and `/metrics`. Each worker has its own, aligned so that no
/// two workers write to one cache line (or a pair of adjacent lines, which
/// some CPUs fetch together); readers sum them.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct WorkerStats {
    /// Transmits dropped because no plugin declares their event.
    pub unknown_transmits: AtomicU64,
    /// WebSocket messages received from clients.
    pub messages_in: AtomicU64,
    /// WebSocket messages written to clients.
    pub messages_out: AtomicU64,
    /// Packets received, by [`MessageKind`] (its index).
    pub messages_in_by_kind: [AtomicU64; MessageKind::ALL.len()],
    /// WebSocket upgrades accepted.
    pub connections_accepted: AtomicU64,
    /// WebSocket upgrades refused by `--max-connections`.
    pub upgrades_refused: AtomicU64,
    /// Sockets closed because their outbound queue was full (4100).
    pub queue_overflows: AtomicU64,
    /// Packets over a socket's rate limit.
    pub rate_limited: AtomicU64,
    /// Actions denied by middleware, by [`HookKind`] (its index).
    pub middleware_denials: [AtomicU64; HookKind::ALL.len()],
    /// Publications, by [`PublicationSource`] (its index).
    pub publications: [AtomicU64; PublicationSource::ALL.len()],
    /// RPC durations and errors by plugin and event.
    pub rpc: RpcTable,
}

/// Add one to a counter of the calling worker's own (see [`add_own`]).
#[inline]
pub(crate) fn bump(counter: &AtomicU64) {
    add_own(counter, 1);
}

/// Add `n` to a counter that only the calling thread writes, such as a
/// counter of its worker's [`WorkerStats`] or [`RpcStats`]: a plain load
/// and store rather than a locked read-modify-write, which would cost a
/// full memory barrier on every message. Scrapes on other threads still read
/// whole values; a counter written by two threads would lose counts.
#[inline]
pub(crate) fn add_own(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

thread_local! {
    /// The counters of the worker running on this thread, if any.
    static WORKER_STATS: OnceCell<Arc<WorkerStats>> = const { OnceCell::new() };
}

/// Make `stats` the counters that [`count_publication`] uses on this
/// thread; a worker thread calls it once, before serving.
pub(crate) fn enter_worker(stats: Arc<WorkerStats>) {
    WORKER_STATS.with(|cell| {
        let _ = cell.set(stats);
    });
    // Calibrate the clock now rather than in the first RPC.
    let _ = quanta::Instant::now();
}

/// Count a publication on the counters of the worker this thread runs (no
/// effect off worker threads). For code that has no handle on its worker's
/// [`WorkerStats`], such as host functions: `publish` calls
/// `count_publication(PublicationSource::Plugin)`.
pub(crate) fn count_publication(source: PublicationSource) {
    WORKER_STATS.with(|cell| {
        if let Some(stats) = cell.get() {
            bump(&stats.publications[source as usize]);
        }
    });
}

/// Server-wide metrics that are not per worker, and the metrics other
/// modules add (see the module documentation).
#[derive(Debug)]
pub(crate) struct Metrics {
    /// Reloads done, files refused by reloads, reloads that failed.
    reloads: [AtomicU64; 3],
    /// Metrics added with [`Metrics::gauge_fn`].
    extra: Mutex<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reloads: Default::default(),
            extra: Mutex::new(Registry::with_prefix(PREFIX)),
        }
    }
}

impl Metrics {
    /// Count a reload that ran, and the files it refused.
    pub(crate) fn reload_done(&self, refused: usize) {
        self.reloads[0].fetch_add(1, Ordering::Relaxed);
        self.reloads[1].fetch_add(refused as u64, Ordering::Relaxed);
    }

    /// Count a reload that could not run (the directory could not be read).
    pub(crate) fn reload_failed(&self) {
        self.reloads[2].fetch_add(1, Ordering::Relaxed);
    }

    /// Add metrics kept elsewhere to the scrape: `add` registers them
    /// (names get the `wasmcluster_` prefix).
    pub(crate) fn add(&self, add: impl FnOnce(&mut Registry)) {
        add(&mut self.extra.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Export a gauge `wasmcluster_<name>` whose value `read` gives at each
    /// scrape.
    pub(crate) fn gauge_fn(
        &self,
        name: &str,
        help: &str,
        read: impl Fn() -> i64 + Send + Sync + 'static,
    ) {
        self.register_fn(name, help, ReadFn::Gauge(Box::new(read)));
    }

    /// Export a counter `wasmcluster_<name>_total` kept elsewhere, whose
    /// value `read` gives at each scrape.
    pub(crate) fn counter_fn(
        &self,
        name: &str,
        help: &str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        self.register_fn(name, help, ReadFn::Counter(Box::new(read)));
    }

    fn register_fn(&self, name: &str, help: &str, read: ReadFn) {
        let metric = MetricFn {
            name: name.to_owned(),
            help: help.to_owned(),
            read,
        };
        self.extra
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .register_collector(Box::new(metric));
    }
}

/// A metric read from a function at each scrape.
struct MetricFn {
    name: String,
    help: String,
    read: ReadFn,
}

enum ReadFn {
    Gauge(Box<dyn Fn() -> i64 + Send + Sync>),
    Counter(Box<dyn Fn() -> u64 + Send + Sync>),
}

impl fmt::Debug for MetricFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricFn")
            .field("name", &self.name)
            .finish()
    }
}

impl Collector for MetricFn {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let kind = match self.read {
            ReadFn::Gauge(_) => MetricType::Gauge,
            ReadFn::Counter(_) => MetricType::Counter,
        };
        let mut metric = encoder.encode_descriptor(&self.name, &self.help, None, kind)?;
        match &self.read {
            ReadFn::Gauge(read) => metric.encode_gauge(&read()),
            ReadFn::Counter(read) => metric.encode_counter::<NoLabelSet, _, u64>(&read(), None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_added_from_outside_are_exported() {
        let metrics = Metrics::default();
        metrics.gauge_fn("answer", "Read at each scrape", || 42);
        metrics.counter_fn("questions", "Counted elsewhere", || 7);
        let mut text = String::new();
        let extra = metrics.extra.lock().unwrap();
        prometheus_client::encoding::text::encode(&mut text, &extra).unwrap();
        assert!(
            text.contains("# TYPE wasmcluster_answer gauge\nwasmcluster_answer 42\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE wasmcluster_questions counter\nwasmcluster_questions_total 7\n"),
            "{text}"
        );
    }
}
