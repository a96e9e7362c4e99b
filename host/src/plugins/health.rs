//! Fault counters and health of one plugin, shared by its instances on every
//! worker: what `/healthz` reports and `/metrics` exports.

use crate::metrics::PluginSample;
use serde_json::{Value, json};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The kinds of fault a call can end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// A trap: panic, `unreachable`, out-of-bounds access, stack overflow,
    /// a host call used wrongly.
    Trap,
    /// The call ran past its deadline.
    Timeout,
    /// The instance hit its memory cap.
    OutOfMemory,
}

/// Counters and state of one plugin.
#[derive(Debug, Default)]
pub struct PluginHealth {
    traps: AtomicU64,
    timeouts: AtomicU64,
    out_of_memory: AtomicU64,
    rebuilds: AtomicU64,
    backoffs: AtomicU64,
    /// Sockets that backed off from the plugin after faulting again and again.
    socket_backoffs: AtomicU64,
    /// Workers whose instance of the plugin is backing off right now.
    backing_off: AtomicUsize,
    /// The most recent fault or failed rebuild, for operators.
    last_error: Mutex<Option<String>>,
}

impl PluginHealth {
    /// Count a fault and remember its description.
    pub fn fault(&self, kind: FaultKind, description: &str) {
        let counter = match kind {
            FaultKind::Trap => &self.traps,
            FaultKind::Timeout => &self.timeouts,
            FaultKind::OutOfMemory => &self.out_of_memory,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.set_last_error(description);
    }

    /// Count a rebuilt instance.
    pub fn rebuilt(&self) {
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a socket that starts backing off from the plugin (its calls
    /// faulted again and again; others are served).
    pub(super) fn socket_backoff_started(&self) {
        self.socket_backoffs.fetch_add(1, Ordering::Relaxed);
    }

    /// Remember a failed rebuild.
    pub fn rebuild_failed(&self, description: &str) {
        self.set_last_error(description);
    }

    /// A worker's instance starts backing off (`newly` when it was not
    /// backing off already).
    pub fn backoff_started(&self, newly: bool) {
        self.backoffs.fetch_add(1, Ordering::Relaxed);
        if newly {
            self.backing_off.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A worker's instance stopped backing off.
    pub fn backoff_ended(&self) {
        self.backing_off.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether some worker's instance is backing off.
    pub fn is_degraded(&self) -> bool {
        self.backing_off.load(Ordering::Relaxed) > 0
    }

    fn set_last_error(&self, description: &str) {
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        *last = Some(description.to_owned());
    }

    /// The counters and state, for `/metrics`.
    pub fn sample(&self, name: &std::sync::Arc<str>) -> PluginSample {
        PluginSample {
            name: name.clone(),
            traps: self.traps.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            out_of_memory: self.out_of_memory.load(Ordering::Relaxed),
            rebuilds: self.rebuilds.load(Ordering::Relaxed),
            backoffs: self.backoffs.load(Ordering::Relaxed),
            socket_backoffs: self.socket_backoffs.load(Ordering::Relaxed),
            degraded: self.is_degraded(),
        }
    }

    /// The counters and state as JSON fields.
    pub fn to_json(&self) -> Value {
        let last_error = self
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        json!({
            "status": if self.is_degraded() { "degraded" } else { "ok" },
            "traps": self.traps.load(Ordering::Relaxed),
            "timeouts": self.timeouts.load(Ordering::Relaxed),
            "outOfMemory": self.out_of_memory.load(Ordering::Relaxed),
            "rebuilds": self.rebuilds.load(Ordering::Relaxed),
            "backoffs": self.backoffs.load(Ordering::Relaxed),
            "socketBackoffs": self.socket_backoffs.load(Ordering::Relaxed),
            "lastError": last_error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_faults_and_degrades_while_backing_off() {
        let health = PluginHealth::default();
        health.fault(FaultKind::Timeout, "timed out");
        health.backoff_started(true);
        assert!(health.is_degraded());
        let json = health.to_json();
        assert_eq!(json["timeouts"], 1);
        assert_eq!(json["status"], "degraded");
        assert_eq!(json["lastError"], "timed out");
        health.backoff_ended();
        assert!(!health.is_degraded());
    }
}
