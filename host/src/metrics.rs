//! Prometheus metrics, served at `GET /metrics`.
//!
//! What the hot path pays, and what it does not:
//! - Per-message counters live in the worker's own [`SessionStats`], a block
//!   aligned to 128 bytes so that no two workers ever write to one cache
//!   line (nor to adjacent lines, which some CPUs prefetch in pairs). Only
//!   their worker writes them, so the counts added for metrics are a plain
//!   load and store ([`add_own`]), not a locked add. No lock, no
//!   allocation, no string hashing.
//! - Each RPC's duration goes to a histogram of the worker's own
//!   ([`RpcStats`]), found by the same lookup that routes the RPC to its
//!   plugin: the worker's routing table maps an event to its plugin *and* its
//!   histogram (see `WorkerPlugins::invoke`). The clock is read twice per RPC
//!   with `quanta` (TSC, about 10 ns a read against 25 ns for
//!   `std::time::Instant` here). Only events some plugin declares have a
//!   histogram: an unknown event creates no label set, so the cardinality is
//!   bounded by the manifests (and capped at [`MAX_RPC_SERIES`] per worker).
//! - Plugin fault counters are [`PluginHealth`](crate::plugins::PluginHealth)'s,
//!   the ones `/healthz` shows; they are read at scrape time, not duplicated.
//!
//! A scrape sums the workers' counters and merges their histograms into
//! families, then encodes them with `prometheus-client`: OpenMetrics text
//! when the scraper asks for it (Prometheus does), the Prometheus text format
//! 0.0.4 otherwise (curl).
//!
//! # Adding a metric from another module
//!
//! [`Metrics`] (`Shared::metrics`) takes a function read at each scrape
//! ([`Metrics::gauge_fn`]). Names get the `wasmcluster_` prefix. The broker's
//! connection state is exported this way, in `Server::start`:
//!
//! ```ignore
//! let services = shared.services.clone();
//! shared.metrics.gauge_fn(
//!     "broker_connected",
//!     "1 while publications reach the other hosts, 0 while Redis is lost",
//!     move || i64::from(services.broker.is_connected()),
//! );
//! ```
//!
//! Such metrics are shared by every worker: keep them off the per-message
//! path (state changes, not messages), or count per worker in
//! [`SessionStats`] and add the family where a scrape gathers them (`gather`).

use crate::server::Shared;
use crate::session::SessionStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The prefix of every metric name.
const PREFIX: &str = "wasmcluster";

/// `Content-Type` of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the Prometheus text format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the RPC duration buckets, in seconds: 10 µs to 10 s.
pub const RPC_BUCKETS: [f64; 19] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// [`RPC_BUCKETS`] in nanoseconds, what a call's duration is compared with.
const RPC_BUCKET_NANOS: [u64; 19] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Most (plugin, event) histograms one worker keeps; events past it are
/// routed and answered as usual but not measured.
pub const MAX_RPC_SERIES: usize = 4096;

/// What an inbound packet is, for `wasmcluster_messages_in_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// An event with a cid, for a plugin.
    Invoke,
    /// An event without a cid, for a plugin.
    Transmit,
    /// `#subscribe`.
    Subscribe,
    /// `#unsubscribe`.
    Unsubscribe,
    /// `#publish`.
    Publish,
    /// `#handshake`.
    Handshake,
    /// `#authenticate`.
    Authenticate,
    /// Anything else: heartbeat answers, `#removeAuthToken`, answers to
    /// nothing, frames that are no SocketCluster packet.
    Other,
}

impl MessageKind {
    /// Every kind, in the order of their counters.
    pub const ALL: [MessageKind; 8] = [
        MessageKind::Invoke,
        MessageKind::Transmit,
        MessageKind::Subscribe,
        MessageKind::Unsubscribe,
        MessageKind::Publish,
        MessageKind::Handshake,
        MessageKind::Authenticate,
        MessageKind::Other,
    ];

    /// The `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            MessageKind::Invoke => "invoke",
            MessageKind::Transmit => "transmit",
            MessageKind::Subscribe => "subscribe",
            MessageKind::Unsubscribe => "unsubscribe",
            MessageKind::Publish => "publish",
            MessageKind::Handshake => "handshake",
            MessageKind::Authenticate => "authenticate",
            MessageKind::Other => "other",
        }
    }

    /// The kind of an event packet, as the session dispatches it.
    pub fn of_event(event: &str, has_cid: bool) -> Self {
        match event {
            "#handshake" => MessageKind::Handshake,
            "#authenticate" => MessageKind::Authenticate,
            "#subscribe" => MessageKind::Subscribe,
            "#unsubscribe" => MessageKind::Unsubscribe,
            "#publish" => MessageKind::Publish,
            "#removeAuthToken" => MessageKind::Other,
            _ if has_cid => MessageKind::Invoke,
            _ => MessageKind::Transmit,
        }
    }
}

/// A middleware hook, for `wasmcluster_middleware_denials_total{hook}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// `on-handshake`.
    Handshake,
    /// `on-authenticate`.
    Authenticate,
    /// `on-subscribe`.
    Subscribe,
    /// `on-publish-in`.
    PublishIn,
    /// `on-invoke-in`.
    Invoke,
    /// `on-transmit-in`.
    Transmit,
}

impl HookKind {
    /// Every hook, in the order of their counters.
    pub const ALL: [HookKind; 6] = [
        HookKind::Handshake,
        HookKind::Authenticate,
        HookKind::Subscribe,
        HookKind::PublishIn,
        HookKind::Invoke,
        HookKind::Transmit,
    ];

    /// The `hook` label.
    pub fn label(self) -> &'static str {
        match self {
            HookKind::Handshake => "handshake",
            HookKind::Authenticate => "authenticate",
            HookKind::Subscribe => "subscribe",
            HookKind::PublishIn => "publish_in",
            HookKind::Invoke => "invoke",
            HookKind::Transmit => "transmit",
        }
    }
}

/// Where a publication comes from, for `wasmcluster_publications_total{source}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicationSource {
    /// A client's `#publish`, after its middleware.
    Client,
    /// A plugin's `publish` host call.
    Plugin,
}

impl PublicationSource {
    /// Every source, in the order of their counters.
    pub const ALL: [PublicationSource; 2] = [PublicationSource::Client, PublicationSource::Plugin];

    /// The `source` label.
    pub fn label(self) -> &'static str {
        match self {
            PublicationSource::Client => "client",
            PublicationSource::Plugin => "plugin",
        }
    }
}

/// Add one to a counter of the calling worker's own (see [`add_own`]).
#[inline]
pub fn bump(counter: &AtomicU64) {
    add_own(counter, 1);
}

/// Add `n` to a counter that only the calling thread writes, such as a
/// counter of its worker's [`SessionStats`] or [`RpcStats`]: a plain load
/// and store rather than a locked read-modify-write, which would cost a
/// full memory barrier on every message. Scrapes on other threads still read
/// whole values; a counter written by two threads would lose counts.
#[inline]
pub fn add_own(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

thread_local! {
    /// The counters of the worker running on this thread, if any.
    static WORKER_STATS: OnceCell<Arc<SessionStats>> = const { OnceCell::new() };
}

/// Make `stats` the counters that [`count_publication`] uses on this
/// thread; a worker thread calls it once, before serving.
pub fn enter_worker(stats: Arc<SessionStats>) {
    WORKER_STATS.with(|cell| {
        let _ = cell.set(stats);
    });
    // Calibrate the clock now rather than in the first RPC.
    let _ = quanta::Instant::now();
}

/// Count a publication on the counters of the worker this thread runs (no
/// effect off worker threads). For code that has no handle on its worker's
/// [`SessionStats`], such as host functions: `publish` calls
/// `count_publication(PublicationSource::Plugin)`.
pub fn count_publication(source: PublicationSource) {
    WORKER_STATS.with(|cell| {
        if let Some(stats) = cell.get() {
            bump(&stats.publications[source as usize]);
        }
    });
}

/// When an RPC started; see [`RpcStats::observe`].
#[derive(Debug, Clone, Copy)]
pub struct Started(quanta::Instant);

/// Now, to time an RPC with.
#[inline]
pub fn start() -> Started {
    Started(quanta::Instant::now())
}

/// One worker's measurements of one RPC event of one plugin. Written by its
/// worker only (see [`add_own`]), read by scrapes.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct RpcStats {
    /// Calls per bucket (not cumulative), the last one past every bound.
    buckets: [AtomicU64; RPC_BUCKETS.len() + 1],
    /// Total duration, in nanoseconds.
    sum_nanos: AtomicU64,
    /// Calls answered with an error.
    errors: AtomicU64,
}

impl RpcStats {
    /// Count an RPC that started at `started` and is answered now, with an
    /// error when `failed`.
    #[inline]
    pub fn observe(&self, started: Started, failed: bool) {
        let nanos = u64::try_from(started.0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let bucket = RPC_BUCKET_NANOS.partition_point(|&bound| bound < nanos);
        add_own(&self.buckets[bucket], 1);
        add_own(&self.sum_nanos, nanos);
        if failed {
            add_own(&self.errors, 1);
        }
    }

    /// Add these measurements to `into`.
    fn add_to(&self, into: &mut RpcTotals) {
        for (total, bucket) in into.buckets.iter_mut().zip(&self.buckets) {
            *total += bucket.load(Ordering::Relaxed);
        }
        into.sum_nanos += self.sum_nanos.load(Ordering::Relaxed);
        into.errors += self.errors.load(Ordering::Relaxed);
    }
}

/// One worker's [`RpcStats`] by plugin and event. Locked when a worker
/// builds its routing (start, reload) and by scrapes, never per RPC.
#[derive(Debug, Default)]
pub struct RpcTable {
    series: Mutex<RpcSeries>,
}

#[derive(Debug, Default)]
struct RpcSeries {
    by_plugin: BTreeMap<Arc<str>, BTreeMap<Arc<str>, Arc<RpcStats>>>,
    count: usize,
    /// Whether reaching [`MAX_RPC_SERIES`] was logged.
    warned: bool,
}

impl RpcTable {
    /// The histogram of RPC `event` of `plugin` on this worker, created on
    /// first use. The same for every build of the plugin, so that a reload
    /// does not reset it.
    pub fn series(&self, plugin: &Arc<str>, event: &str) -> Arc<RpcStats> {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let series = &mut *series;
        if let Some(stats) = series.by_plugin.get(plugin).and_then(|e| e.get(event)) {
            return stats.clone();
        }
        let stats = Arc::new(RpcStats::default());
        if series.count >= MAX_RPC_SERIES {
            if !std::mem::replace(&mut series.warned, true) {
                tracing::warn!(
                    plugin = &**plugin,
                    event,
                    limit = MAX_RPC_SERIES,
                    "too many RPC events to measure: this one and later ones get no histogram"
                );
            }
            return stats;
        }
        series.count += 1;
        series
            .by_plugin
            .entry(plugin.clone())
            .or_default()
            .insert(event.into(), stats.clone());
        stats
    }

    /// Add this worker's measurements to `totals`.
    fn add_to(&self, totals: &mut BTreeMap<(Arc<str>, Arc<str>), RpcTotals>) {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        for (plugin, events) in &series.by_plugin {
            for (event, stats) in events {
                stats.add_to(totals.entry((plugin.clone(), event.clone())).or_default());
            }
        }
    }
}

/// RPC measurements summed over the workers.
#[derive(Debug, Default)]
struct RpcTotals {
    buckets: [u64; RPC_BUCKETS.len() + 1],
    sum_nanos: u64,
    errors: u64,
}

/// Server-wide metrics that are not per worker, and the metrics other
/// modules add (see the module documentation).
#[derive(Debug)]
pub struct Metrics {
    /// Reloads done, files refused by reloads, reloads that failed.
    reloads: [AtomicU64; 3],
    /// Metrics added with [`Metrics::register`] and [`Metrics::gauge_fn`].
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
    pub fn reload_done(&self, refused: usize) {
        self.reloads[0].fetch_add(1, Ordering::Relaxed);
        self.reloads[1].fetch_add(refused as u64, Ordering::Relaxed);
    }

    /// Count a reload that could not run (the directory could not be read).
    pub fn reload_failed(&self) {
        self.reloads[2].fetch_add(1, Ordering::Relaxed);
    }

    /// Export a gauge `wasmcluster_<name>` whose value `read` gives at each
    /// scrape.
    pub fn gauge_fn(&self, name: &str, help: &str, read: impl Fn() -> i64 + Send + Sync + 'static) {
        let gauge = GaugeFn {
            name: name.to_owned(),
            help: help.to_owned(),
            read: Box::new(read),
        };
        self.extra
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .register_collector(Box::new(gauge));
    }
}

/// A gauge read from a function at each scrape.
struct GaugeFn {
    name: String,
    help: String,
    read: Box<dyn Fn() -> i64 + Send + Sync>,
}

impl fmt::Debug for GaugeFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GaugeFn").field("name", &self.name).finish()
    }
}

impl Collector for GaugeFn {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut metric =
            encoder.encode_descriptor(&self.name, &self.help, None, MetricType::Gauge)?;
        metric.encode_gauge(&(self.read)())
    }
}

/// Which text format a scrape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text (ends with `# EOF`).
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    Prometheus,
}

impl Format {
    /// The format a request's `Accept` header asks for: OpenMetrics when it
    /// names it (Prometheus does), Prometheus text otherwise.
    pub fn negotiate(accept: Option<&str>) -> Self {
        if accept.is_some_and(|accept| accept.contains("application/openmetrics-text")) {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The `Content-Type` of the answer.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Prometheus => PROMETHEUS_CONTENT_TYPE,
        }
    }
}

/// The `/metrics` body.
pub fn render(shared: &Shared, format: Format) -> String {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(gather(shared)));
    let extra = shared
        .metrics
        .extra
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut text = String::with_capacity(16 * 1024);
    // Writing to a String fails only if an encoder refuses a value, which
    // ours never give; a scrape then gets what was written.
    let encoded = match format {
        Format::OpenMetrics => {
            use prometheus_client::encoding::text;
            text::encode_registry(&mut text, &registry)
                .and_then(|()| text::encode_registry(&mut text, &extra))
                .and_then(|()| text::encode_eof(&mut text))
        }
        Format::Prometheus => {
            use prometheus_client::encoding::prometheus_text;
            prometheus_text::encode(&mut text, &registry)
                .and_then(|()| prometheus_text::encode(&mut text, &extra))
        }
    };
    if encoded.is_err() {
        tracing::error!("encoding the metrics failed; the scrape is incomplete");
    }
    text
}

/// A value of one sample.
#[derive(Debug)]
enum Value {
    Counter(u64),
    Gauge(i64),
    Histogram(RpcTotals),
}

/// The labels of one sample: names and values.
type Labels = Vec<(&'static str, Arc<str>)>;

/// One metric family: its samples by label set.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    kind: MetricType,
    samples: Vec<(Labels, Value)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str, kind: MetricType) -> Self {
        Family {
            name,
            help,
            unit: None,
            kind,
            samples: Vec::new(),
        }
    }

    fn counter(name: &'static str, help: &'static str, value: u64) -> Self {
        Family::new(name, help, MetricType::Counter).with(Vec::new(), Value::Counter(value))
    }

    fn gauge(name: &'static str, help: &'static str, value: i64) -> Self {
        Family::new(name, help, MetricType::Gauge).with(Vec::new(), Value::Gauge(value))
    }

    fn with(mut self, labels: Labels, value: Value) -> Self {
        self.samples.push((labels, value));
        self
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let mut metric =
            encoder.encode_descriptor(self.name, self.help, self.unit.as_ref(), self.kind)?;
        for (labels, value) in &self.samples {
            if labels.is_empty() {
                encode_value(&mut metric, value)?;
            } else {
                encode_value(&mut metric.encode_family(labels)?, value)?;
            }
        }
        Ok(())
    }
}

fn encode_value(metric: &mut MetricEncoder, value: &Value) -> fmt::Result {
    match value {
        Value::Counter(count) => metric.encode_counter::<NoLabelSet, u64, u64>(count, None),
        Value::Gauge(value) => metric.encode_gauge(value),
        Value::Histogram(totals) => {
            let buckets: Vec<(f64, u64)> = RPC_BUCKETS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(totals.buckets)
                .collect();
            let count = totals.buckets.iter().sum();
            let sum = totals.sum_nanos as f64 / 1e9;
            metric.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
        }
    }
}

/// Everything a scrape exports but the metrics added from outside.
#[derive(Debug)]
struct Gathered(Vec<Family>);

impl Collector for Gathered {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.0
            .iter()
            .try_for_each(|family| family.encode(&mut encoder))
    }
}

/// Read every counter and gauge of the server.
fn gather(shared: &Shared) -> Gathered {
    let total = |counter: &dyn Fn(&SessionStats) -> &AtomicU64| shared.total(counter);
    let label = |key: &'static str, value: &str| vec![(key, Arc::<str>::from(value))];
    let mut families = Vec::new();

    families.push(Family::gauge(
        "connections_open",
        "WebSocket connections open",
        shared.websockets.load(Ordering::Relaxed) as i64,
    ));
    families.push(Family::counter(
        "connections_accepted",
        "WebSocket upgrades accepted",
        total(&|s| &s.connections_accepted),
    ));
    families.push(Family::counter(
        "upgrades_refused",
        "WebSocket upgrades refused with 503 by the connection limit (--max-connections)",
        total(&|s| &s.upgrades_refused),
    ));

    let mut messages_in = Family::new(
        "messages_in",
        "Packets received from clients, by kind; each packet of a batch counts, heartbeats count as other",
        MetricType::Counter,
    );
    for kind in MessageKind::ALL {
        messages_in = messages_in.with(
            label("kind", kind.label()),
            Value::Counter(total(&|s| &s.messages_in_by_kind[kind as usize])),
        );
    }
    families.push(messages_in);
    families.push(Family::counter(
        "messages_out",
        "WebSocket messages written to clients",
        total(&|s| &s.messages_out),
    ));
    families.push(Family::counter(
        "unknown_transmits",
        "Transmits dropped because no plugin declares their event",
        total(&|s| &s.unknown_transmits),
    ));

    let mut rpc = BTreeMap::new();
    for stats in &shared.worker_stats {
        stats.rpc.add_to(&mut rpc);
    }
    let mut durations = Family::new(
        "rpc_duration",
        "Time from routing an RPC to its plugin to its answer, by plugin and event",
        MetricType::Histogram,
    );
    durations.unit = Some(Unit::Seconds);
    let mut errors = Family::new(
        "rpc_errors",
        "RPCs answered with an error (the plugin's, a fault or unavailability), by plugin and event",
        MetricType::Counter,
    );
    for ((plugin, event), totals) in rpc {
        let labels = vec![("plugin", plugin), ("event", event)];
        errors = errors.with(labels.clone(), Value::Counter(totals.errors));
        durations = durations.with(labels, Value::Histogram(totals));
    }
    families.push(durations);
    families.push(errors);

    let set = shared.plugins();
    let mut faults = Family::new(
        "plugin_faults",
        "Plugin calls that trapped, timed out or ran out of memory, by plugin and kind",
        MetricType::Counter,
    );
    let mut rebuilds = Family::new(
        "plugin_rebuilds",
        "Plugin instances built (at start, after a fault, after a back-off), by plugin",
        MetricType::Counter,
    );
    let mut backoffs = Family::new(
        "plugin_backoffs",
        "Times a plugin instance started backing off, by plugin",
        MetricType::Counter,
    );
    let mut degraded = Family::new(
        "plugin_degraded",
        "Whether a plugin backs off on some worker (1) or not (0)",
        MetricType::Gauge,
    );
    for plugin in &set.plugins {
        let health = plugin.health.to_json();
        let count = |key: &str| health[key].as_u64().unwrap_or(0);
        let name = &plugin.name;
        for (kind, key) in [
            ("trap", "traps"),
            ("timeout", "timeouts"),
            ("out_of_memory", "outOfMemory"),
        ] {
            faults = faults.with(
                vec![("plugin", name.clone()), ("kind", kind.into())],
                Value::Counter(count(key)),
            );
        }
        let labels = vec![("plugin", name.clone())];
        rebuilds = rebuilds.with(labels.clone(), Value::Counter(count("rebuilds")));
        backoffs = backoffs.with(labels.clone(), Value::Counter(count("backoffs")));
        degraded = degraded.with(labels, Value::Gauge(i64::from(plugin.health.is_degraded())));
    }
    families.extend([faults, rebuilds, backoffs, degraded]);

    let reloads = &shared.metrics.reloads;
    let mut reload_results = Family::new(
        "plugin_reloads",
        "Plugin reloads: ok counts reloads done, refused counts files a reload refused, failed counts reloads that could not read the directory",
        MetricType::Counter,
    );
    for (index, result) in ["ok", "refused", "failed"].into_iter().enumerate() {
        reload_results = reload_results.with(
            label("result", result),
            Value::Counter(reloads[index].load(Ordering::Relaxed)),
        );
    }
    families.push(reload_results);

    families.push(Family::counter(
        "queue_overflows",
        "Sockets closed with 4100 because their outbound queue was full (--max-queued-messages)",
        total(&|s| &s.queue_overflows),
    ));
    families.push(Family::counter(
        "rate_limited",
        "Packets over a socket's rate limit (--rate-limit): answered with RateLimitError or dropped",
        total(&|s| &s.rate_limited),
    ));
    let mut denials = Family::new(
        "middleware_denials",
        "Actions a middleware hook denied (or failed closed on), by hook",
        MetricType::Counter,
    );
    for hook in HookKind::ALL {
        denials = denials.with(
            label("hook", hook.label()),
            Value::Counter(total(&|s| &s.middleware_denials[hook as usize])),
        );
    }
    families.push(denials);

    families.push(Family::gauge(
        "channels",
        "Channels with at least one subscriber",
        shared.services.broker.channel_count() as i64,
    ));
    let mut publications = Family::new(
        "publications",
        "Publications made on this server, by source",
        MetricType::Counter,
    );
    for source in PublicationSource::ALL {
        publications = publications.with(
            label("source", source.label()),
            Value::Counter(total(&|s| &s.publications[source as usize])),
        );
    }
    families.push(publications);
    Gathered(families)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_bounds_agree() {
        for (seconds, nanos) in RPC_BUCKETS.iter().zip(RPC_BUCKET_NANOS) {
            assert_eq!((seconds * 1e9).round() as u64, nanos);
        }
        assert!(RPC_BUCKET_NANOS.is_sorted());
    }

    #[test]
    fn observations_land_in_their_bucket() {
        let stats = RpcStats::default();
        let now = quanta::Instant::now();
        // A duration equal to a bound belongs to that bound's bucket (`le`).
        let at = |nanos: u64| Started(now - Duration::from_nanos(nanos));
        stats.observe(at(20_000), false);
        stats.observe(at(20_000_000_000), true);
        let mut totals = RpcTotals::default();
        stats.add_to(&mut totals);
        assert_eq!(totals.errors, 1);
        assert_eq!(totals.buckets.iter().sum::<u64>(), 2);
        assert_eq!(totals.buckets[RPC_BUCKETS.len()], 1, "past 10 s: +Inf");
        let first = totals.buckets.iter().position(|&count| count > 0).unwrap();
        assert!(
            first <= 2,
            "about 20 µs is in the 25 µs bucket, got bucket {first}"
        );
    }

    #[test]
    fn series_are_shared_by_name_and_capped() {
        let table = RpcTable::default();
        let echo: Arc<str> = "echo".into();
        let a = table.series(&echo, "echo");
        let b = table.series(&echo, "echo");
        assert!(Arc::ptr_eq(&a, &b));
        for index in 0..MAX_RPC_SERIES + 10 {
            table.series(&echo, &format!("event{index}"));
        }
        let mut totals = BTreeMap::new();
        table.add_to(&mut totals);
        assert_eq!(totals.len(), MAX_RPC_SERIES);
    }

    #[test]
    fn message_kinds_follow_dispatch() {
        assert_eq!(MessageKind::of_event("echo", true), MessageKind::Invoke);
        assert_eq!(MessageKind::of_event("echo", false), MessageKind::Transmit);
        assert_eq!(
            MessageKind::of_event("#subscribe", true),
            MessageKind::Subscribe
        );
        assert_eq!(
            MessageKind::of_event("#removeAuthToken", false),
            MessageKind::Other
        );
    }

    #[test]
    fn metrics_added_from_outside_are_exported() {
        let metrics = Metrics::default();
        metrics.gauge_fn("answer", "Read at each scrape", || 42);
        let mut text = String::new();
        let extra = metrics.extra.lock().unwrap();
        prometheus_client::encoding::text::encode(&mut text, &extra).unwrap();
        assert!(
            text.contains("# TYPE wasmcluster_answer gauge\nwasmcluster_answer 42\n"),
            "{text}"
        );
    }

    #[test]
    fn negotiates_the_format() {
        let prometheus =
            "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::negotiate(None), Format::Prometheus);
    }
}
