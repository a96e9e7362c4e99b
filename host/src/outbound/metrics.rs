//! Outbound requests in `/metrics`: counted by plugin, allow-list entry and
//! outcome, timed by plugin and entry. The `host` label is the entry that
//! allowed the request as the operator wrote it, so that its values are
//! bounded by the config even when a client chooses the URL; denied
//! requests are counted by plugin alone, and their host is logged.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The upstream answered (any status).
    Answered,
    /// No allow-list entry grants it, or it resolved to an internal
    /// address only a wildcard granted.
    Denied,
    /// The plugin had as many requests in flight as it may.
    Limited,
    /// It did not complete within the plugin's outbound timeout.
    TimedOut,
    /// It failed: DNS, connection, TLS, protocol.
    Failed,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Denied => "denied",
            Outcome::Limited => "limited",
            Outcome::TimedOut => "timed_out",
            Outcome::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    plugin: String,
    host: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    plugin: String,
    host: String,
}

/// The outbound families, shared by every worker.
#[derive(Debug, Clone)]
pub(crate) struct OutboundMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
}

impl Default for OutboundMetrics {
    fn default() -> Self {
        OutboundMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new([
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
            }),
        }
    }
}

impl OutboundMetrics {
    /// Count a request of `plugin` granted by `entry` (`""` when denied).
    pub(crate) fn count(&self, plugin: &str, entry: &str, outcome: Outcome) {
        self.requests
            .get_or_create(&RequestLabels {
                plugin: plugin.to_owned(),
                host: entry.to_owned(),
                outcome: outcome.label(),
            })
            .inc();
    }

    /// Time a request of `plugin` granted by `entry`, to its response head.
    pub(crate) fn time(&self, plugin: &str, entry: &str, took: Duration) {
        self.latency
            .get_or_create(&LatencyLabels {
                plugin: plugin.to_owned(),
                host: entry.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Add the families to `registry` (prefixed there).
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "outbound_requests",
            "Outbound HTTP requests of plugins, by plugin, allow-list entry (host) and outcome",
            self.requests.clone(),
        );
        registry.register_with_unit(
            "outbound_request",
            "Time from an outbound request to its response head, by plugin and allow-list entry (host)",
            prometheus_client::registry::Unit::Seconds,
            self.latency.clone(),
        );
    }
}
