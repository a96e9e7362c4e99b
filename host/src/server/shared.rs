//! What every worker of the server shares, and what the server tells about
//! itself from it: `/healthz`, `/readyz` and the `/metrics` snapshot.

use super::pending::PendingHandshakes;
use super::problems::PluginProblems;
use super::tls::Tls;
use crate::auth::AuthEngine;
use crate::config::ServerConfig;
use crate::metrics::{Metrics, Snapshot, WorkerStats};
use crate::plugins::PluginSet;
use crate::services::HostServices;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// What every worker shares.
pub(super) struct Shared {
    /// The server configuration.
    pub config: ServerConfig,
    /// Loaded plugins and event routing; replaced by a reload.
    pub(super) plugins: RwLock<Arc<PluginSet>>,
    /// Files that failed to load and config sections no plugin uses.
    pub(super) problems: RwLock<PluginProblems>,
    /// Reloads so far, numbering the reload reports.
    pub(super) reloads: AtomicU64,
    /// Connections waiting for their handshake.
    pub(super) pending: Arc<PendingHandshakes>,
    /// Broker, socket registry, KV.
    pub services: Arc<HostServices>,
    /// Each worker's counters (one per worker, so that workers never write
    /// to the same cache line); summed when read.
    pub worker_stats: Vec<Arc<WorkerStats>>,
    /// When the server started.
    pub started: std::time::Instant,
    /// Signs and verifies auth tokens.
    pub auth: Arc<AuthEngine>,
    /// The TLS acceptor, when the server terminates TLS.
    pub tls: Option<Tls>,
    /// WebSocket connections open now, for `--max-connections`.
    pub websockets: AtomicUsize,
    /// Server-wide metrics, and those other modules add (`/metrics`).
    pub metrics: Metrics,
}

impl Shared {
    /// The plugins being served.
    pub(super) fn plugins(&self) -> Arc<PluginSet> {
        self.plugins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The `/readyz` answer: ready (200) unless a plugin is backing off or
    /// the broker has lost Redis (503, saying which), so that a load
    /// balancer can steer new clients elsewhere meanwhile.
    pub(super) fn readiness(&self) -> (bool, String) {
        let set = self.plugins();
        let degraded: Vec<&str> = set
            .plugins
            .iter()
            .filter(|plugin| plugin.health.is_degraded())
            .map(|plugin| &*plugin.name)
            .collect();
        let broker_connected = self.services.broker.is_connected();
        let problems = self.problems();
        let ready = degraded.is_empty() && broker_connected && !problems.blocks_readiness();
        let body = serde_json::json!({
            "ready": ready,
            "degraded": degraded,
            "brokerConnected": broker_connected,
            "problems": problems.to_json(),
        });
        (ready, body.to_string())
    }

    /// The plugin problems now.
    fn problems(&self) -> PluginProblems {
        self.problems
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A counter summed over every worker.
    pub(super) fn total(&self, counter: impl Fn(&WorkerStats) -> &AtomicU64) -> u64 {
        self.worker_stats
            .iter()
            .map(|stats| counter(stats).load(Ordering::Relaxed))
            .sum()
    }

    /// The `/healthz` body: `status` is `degraded` while a plugin backs off.
    pub(super) fn health_json(&self) -> String {
        let set = self.plugins();
        let plugins: Vec<_> = set
            .plugins
            .iter()
            .map(|plugin| {
                let mut entry = plugin.health.to_json();
                entry["name"] = (&*plugin.name).into();
                entry["version"] = plugin.manifest.version.clone().into();
                entry["file"] = plugin
                    .path
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
                    .into();
                entry
            })
            .collect();
        let problems = self.problems();
        let degraded = set.plugins.iter().any(|p| p.health.is_degraded()) || !problems.is_empty();
        serde_json::json!({
            "status": if degraded { "degraded" } else { "ok" },
            "problems": problems.to_json(),
            "workers": self.config.workers,
            "connections": self.services.sockets.len(),
            "pendingHandshakes": self.pending.count(),
            "channels": self.services.broker.channel_count(),
            "broker": self.services.broker.status(),
            "kv": self.services.kv.status(),
            "unknownTransmits": self.total(|stats| &stats.unknown_transmits),
            "messagesIn": self.total(|stats| &stats.messages_in),
            "messagesOut": self.total(|stats| &stats.messages_out),
            "uptimeSecs": self.started.elapsed().as_secs(),
            "plugins": plugins,
        })
        .to_string()
    }
}

impl Shared {
    /// What a `/metrics` scrape renders.
    pub(super) fn metrics_snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            connections_open: self.websockets.load(Ordering::Relaxed),
            workers: &self.worker_stats,
            plugins: self
                .plugins()
                .plugins
                .iter()
                .map(|plugin| plugin.health.sample(&plugin.name))
                .collect(),
            channels: self.services.broker.channel_count(),
            metrics: &self.metrics,
        }
    }
}
