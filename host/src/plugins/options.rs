//! How the operator runs plugins: default limits, and each plugin's own
//! limits and `init` config from its `[plugin.NAME]` section.

use crate::kv::KvQuota;
use crate::outbound::OutboundSettings;
use std::collections::HashMap;
use std::time::Duration;

/// Limits every call of a plugin runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    /// How long one call may run before it is interrupted.
    pub deadline: Duration,
    /// The most linear memory one instance may have.
    pub memory_bytes: usize,
    /// The most bytes of data one call may carry to the plugin; larger
    /// data is refused before the call (`DataTooLargeError`).
    pub max_data_bytes: usize,
    /// The most timers the plugin may have pending on one worker.
    pub max_timers: usize,
    /// The most instances of the plugin one worker may hold: how many of
    /// its calls can wait on the host at once there.
    pub max_instances: usize,
    /// How long one call may last, waiting on the host included, before it
    /// is ended as a fault.
    pub max_wait: Duration,
    /// What the plugin may keep in the key-value store.
    pub kv_quota: KvQuota,
}

impl Default for PluginLimits {
    /// The defaults of the `serve` flags: what `wasmcluster check` and
    /// embedders get without a config.
    fn default() -> Self {
        PluginLimits {
            deadline: Duration::from_millis(100),
            memory_bytes: 64 << 20,
            max_data_bytes: 1 << 20,
            max_timers: 10_000,
            max_instances: 8,
            max_wait: Duration::from_secs(30),
            kv_quota: KvQuota::default(),
        }
    }
}

/// What the operator set for one plugin (a `[plugin.NAME]` section of the
/// config file); what is not set falls back to [`PluginOptions::defaults`].
/// Its `Debug` leaves the `init` config out: it may hold secrets.
#[derive(Clone, Default, PartialEq)]
pub struct PluginOverrides {
    /// This plugin's call deadline.
    pub deadline: Option<Duration>,
    /// This plugin's memory cap, in bytes.
    pub memory_bytes: Option<usize>,
    /// The most data one call to this plugin may carry, in bytes.
    pub max_data_bytes: Option<usize>,
    /// The most timers this plugin may have pending on one worker.
    pub max_timers: Option<usize>,
    /// The most instances of this plugin one worker may hold.
    pub max_instances: Option<usize>,
    /// How long one call to this plugin may last, waiting included.
    pub max_wait: Option<Duration>,
    /// The most keys this plugin may keep in the key-value store.
    pub kv_max_keys: Option<u64>,
    /// The most bytes of keys and values this plugin may keep there.
    pub kv_max_bytes: Option<u64>,
    /// Where it may send HTTP requests, and their limits.
    pub outbound: OutboundSettings,
    /// The JSON object its `init` receives.
    pub config: Option<String>,
}

impl std::fmt::Debug for PluginOverrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginOverrides")
            .field("deadline", &self.deadline)
            .field("memory_bytes", &self.memory_bytes)
            .field("max_data_bytes", &self.max_data_bytes)
            .field("max_timers", &self.max_timers)
            .field("max_instances", &self.max_instances)
            .field("max_wait", &self.max_wait)
            .field("kv_max_keys", &self.kv_max_keys)
            .field("kv_max_bytes", &self.kv_max_bytes)
            .field("outbound", &self.outbound)
            .field("config", &self.config.as_ref().map(|_| "(not shown)"))
            .finish()
    }
}

/// How plugins are run: the default limits and each plugin's overrides, by
/// the name in its manifest.
#[derive(Debug, Clone)]
pub struct PluginOptions {
    /// Limits of plugins without overrides (and of `describe`, which runs
    /// before the plugin's name is known).
    pub defaults: PluginLimits,
    /// Overrides by plugin name.
    pub per_plugin: HashMap<String, PluginOverrides>,
}

impl PluginOptions {
    /// Default limits, no overrides.
    pub fn new(defaults: PluginLimits) -> Self {
        PluginOptions {
            defaults,
            per_plugin: HashMap::new(),
        }
    }

    /// The limits, `init` config and outbound settings of plugin `name`;
    /// `default_instances` is its pool size unless its section sets one
    /// (the loader gives plugins built against 0.1.0 one instance per
    /// worker: their in-memory state was per worker when they were
    /// written, and stays so).
    pub(super) fn for_plugin(
        &self,
        name: &str,
        default_instances: usize,
    ) -> (PluginLimits, String, OutboundSettings) {
        let overrides = self.per_plugin.get(name);
        let defaults = &self.defaults;
        let limits = PluginLimits {
            deadline: overrides
                .and_then(|o| o.deadline)
                .unwrap_or(defaults.deadline),
            memory_bytes: overrides
                .and_then(|o| o.memory_bytes)
                .unwrap_or(defaults.memory_bytes),
            max_data_bytes: overrides
                .and_then(|o| o.max_data_bytes)
                .unwrap_or(defaults.max_data_bytes),
            max_timers: overrides
                .and_then(|o| o.max_timers)
                .unwrap_or(defaults.max_timers),
            max_instances: overrides
                .and_then(|o| o.max_instances)
                .unwrap_or(default_instances),
            max_wait: overrides
                .and_then(|o| o.max_wait)
                .unwrap_or(defaults.max_wait),
            kv_quota: KvQuota {
                max_keys: overrides
                    .and_then(|o| o.kv_max_keys)
                    .unwrap_or(defaults.kv_quota.max_keys),
                max_bytes: overrides
                    .and_then(|o| o.kv_max_bytes)
                    .unwrap_or(defaults.kv_quota.max_bytes),
            },
        };
        let config = overrides
            .and_then(|o| o.config.clone())
            .unwrap_or_else(|| "{}".to_owned());
        let outbound = overrides.map(|o| o.outbound.clone()).unwrap_or_default();
        (limits, config, outbound)
    }
}
