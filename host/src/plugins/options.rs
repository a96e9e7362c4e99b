//! How the operator runs plugins: default limits, and each plugin's own
//! limits and `init` config from its `[plugin.NAME]` section.

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

    /// The limits and `init` config of plugin `name`.
    pub(super) fn for_plugin(&self, name: &str) -> (PluginLimits, String) {
        let overrides = self.per_plugin.get(name);
        let limits = PluginLimits {
            deadline: overrides
                .and_then(|o| o.deadline)
                .unwrap_or(self.defaults.deadline),
            memory_bytes: overrides
                .and_then(|o| o.memory_bytes)
                .unwrap_or(self.defaults.memory_bytes),
            max_data_bytes: overrides
                .and_then(|o| o.max_data_bytes)
                .unwrap_or(self.defaults.max_data_bytes),
            max_timers: overrides
                .and_then(|o| o.max_timers)
                .unwrap_or(self.defaults.max_timers),
        };
        let config = overrides
            .and_then(|o| o.config.clone())
            .unwrap_or_else(|| "{}".to_owned());
        (limits, config)
    }
}
