//! `GET /metrics`: a [`Snapshot`] of the server, summed over the workers,
//! encoded in the Prometheus or OpenMetrics text format.

use super::rpc::{RPC_BUCKETS, RpcTotals};
use super::{HookKind, MessageKind, PublicationSource};
use super::{Metrics, PREFIX, WorkerStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// `Content-Type` of the OpenMetrics text format.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the Prometheus text format 0.0.4.
const PROMETHEUS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What a scrape reads: the server hands it over, so that this module does
/// not need to know how the server is put together.
#[derive(Debug)]
pub(crate) struct Snapshot<'a> {
    /// WebSocket connections open now.
    pub connections_open: usize,
    /// Every worker's counters.
    pub workers: &'a [Arc<WorkerStats>],
    /// Each loaded plugin's fault counters and state.
    pub plugins: Vec<PluginSample>,
    /// Channels with subscribers on this host.
    pub channels: usize,
    /// Server-wide metrics (reloads) and those other modules added.
    pub metrics: &'a Metrics,
}

/// One plugin's counters, as a scrape exports them.
#[derive(Debug, Clone, Default)]
pub struct PluginSample {
    /// The plugin's name.
    pub name: Arc<str>,
    /// Calls that trapped.
    pub traps: u64,
    /// Calls that ran past their deadline.
    pub timeouts: u64,
    /// Calls that hit the memory cap.
    pub out_of_memory: u64,
    /// Instances built.
    pub rebuilds: u64,
    /// Back-offs started.
    pub backoffs: u64,
    /// Sockets that backed off from the plugin.
    pub socket_backoffs: u64,
    /// Whether some worker's instance backs off now.
    pub degraded: bool,
}

impl Snapshot<'_> {
    /// A counter summed over every worker.
    fn total(&self, counter: &dyn Fn(&WorkerStats) -> &AtomicU64) -> u64 {
        self.workers
            .iter()
            .map(|stats| counter(stats).load(Ordering::Relaxed))
            .sum()
    }
}

/// Which text format a scrape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// OpenMetrics 1.0 text (ends with `# EOF`).
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    Prometheus,
}

impl Format {
    /// The format a request's `Accept` header asks for: OpenMetrics when it
    /// names it (Prometheus does), Prometheus text otherwise.
    pub(crate) fn negotiate(accept: Option<&str>) -> Self {
        if accept.is_some_and(|accept| accept.contains("application/openmetrics-text")) {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The `Content-Type` of the answer.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Prometheus => PROMETHEUS_CONTENT_TYPE,
        }
    }
}

/// The `/metrics` body.
pub(crate) fn render(snapshot: &Snapshot<'_>, format: Format) -> String {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(gather(snapshot)));
    let extra = snapshot
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

/// Read every counter and gauge of the snapshot.
fn gather(snapshot: &Snapshot<'_>) -> Gathered {
    let total = |counter: &dyn Fn(&WorkerStats) -> &AtomicU64| snapshot.total(counter);
    let label = |key: &'static str, value: &str| vec![(key, Arc::<str>::from(value))];
    let mut families = Vec::new();

    families.push(Family::gauge(
        "connections_open",
        "WebSocket connections open",
        snapshot.connections_open as i64,
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
    for stats in snapshot.workers {
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
    let mut socket_backoffs = Family::new(
        "plugin_socket_backoffs",
        "Sockets that backed off from a plugin after their calls to it faulted again and again, by plugin",
        MetricType::Counter,
    );
    let mut degraded = Family::new(
        "plugin_degraded",
        "Whether a plugin backs off on some worker (1) or not (0)",
        MetricType::Gauge,
    );
    for plugin in &snapshot.plugins {
        let name = &plugin.name;
        for (kind, count) in [
            ("trap", plugin.traps),
            ("timeout", plugin.timeouts),
            ("out_of_memory", plugin.out_of_memory),
        ] {
            faults = faults.with(
                vec![("plugin", name.clone()), ("kind", kind.into())],
                Value::Counter(count),
            );
        }
        let labels = vec![("plugin", name.clone())];
        rebuilds = rebuilds.with(labels.clone(), Value::Counter(plugin.rebuilds));
        backoffs = backoffs.with(labels.clone(), Value::Counter(plugin.backoffs));
        socket_backoffs =
            socket_backoffs.with(labels.clone(), Value::Counter(plugin.socket_backoffs));
        degraded = degraded.with(labels, Value::Gauge(i64::from(plugin.degraded)));
    }
    families.extend([faults, rebuilds, backoffs, socket_backoffs, degraded]);

    let reloads = &snapshot.metrics.reloads;
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
        snapshot.channels as i64,
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

    #[test]
    fn negotiates_the_format() {
        let prometheus =
            "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::negotiate(None), Format::Prometheus);
    }
}
