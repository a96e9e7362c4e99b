//! How the operator runs plugins: default limits, and each plugin's own
//! limits and `init` config from its `[plugin.NAME]` section.

use super::wit::WitVersion;
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
        }
    }
}

/// What the operator set for one plugin (a `[plugin.NAME]` section of the
/// config file); what is not set falls back to [`PluginOptions::defaults`].
#[derive(Debug, Clone, Default, PartialEq)]
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
    /// The JSON object its `init` receives.
    pub config: Option<String>,
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

    /// The limits and `init` config of plugin `name`, built against
    /// `version`. A plugin built against 0.1.0 gets one instance per worker
    /// unless its own section says otherwise: its in-memory state was per
    /// worker when it was written, and stays so.
    pub(super) fn for_plugin(&self, name: &str, version: WitVersion) -> (PluginLimits, String) {
        let overrides = self.per_plugin.get(name);
        let defaults = &self.defaults;
        let default_instances = if version == WitVersion::V0_1 {
            1
        } else {
            defaults.max_instances
        };
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
        };
        let config = overrides
            .and_then(|o| o.config.clone())
            .unwrap_or_else(|| "{}".to_owned());
        (limits, config)
    }
}
