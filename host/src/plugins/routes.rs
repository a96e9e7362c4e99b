//! Every loaded plugin and which one handles each event: the routing table
//! the workers build their instances from.

use super::load_error::LoadError;
use super::loaded::LoadedPlugin;
use super::types::Hook;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

/// Every loaded plugin and which one handles each event.
pub struct PluginSet {
    /// The plugins, in load order (sorted by file name).
    pub plugins: Vec<Arc<LoadedPlugin>>,
    /// RPC event to the index of its plugin.
    rpc_routes: HashMap<String, usize>,
    /// Transmit event to the index of its plugin.
    transmit_routes: HashMap<String, usize>,
    /// For each middleware hook, the plugins declaring it in the order they
    /// run: higher priority first, then by name.
    chains: Vec<(Hook, Vec<usize>)>,
    /// RPC events unauthenticated sockets may call under `require_auth`.
    public_rpc_events: HashSet<String>,
}

impl Default for PluginSet {
    /// An empty set.
    fn default() -> Self {
        PluginSet {
            plugins: Vec::new(),
            rpc_routes: HashMap::new(),
            transmit_routes: HashMap::new(),
            chains: Vec::new(),
            public_rpc_events: HashSet::new(),
        }
    }
}

impl PluginSet {
    /// The plugin answering RPC `event`.
    pub(super) fn rpc_route(&self, event: &str) -> Option<usize> {
        self.rpc_routes.get(event).copied()
    }

    /// The plugin receiving transmit `event`.
    pub(super) fn transmit_route(&self, event: &str) -> Option<usize> {
        self.transmit_routes.get(event).copied()
    }

    /// The plugins running middleware `hook`, in order.
    pub(super) fn chain(&self, hook: Hook) -> &[usize] {
        self.chains
            .iter()
            .find(|(chain_hook, _)| *chain_hook == hook)
            .map_or(&[], |(_, chain)| chain)
    }

    /// Whether a plugin marks RPC `event` as open to unauthenticated sockets.
    pub(super) fn is_public_rpc(&self, event: &str) -> bool {
        self.public_rpc_events.contains(event)
    }

    /// The plugin loaded from `path`, if any.
    pub(super) fn by_path(&self, path: &Path) -> Option<&Arc<LoadedPlugin>> {
        self.plugins.iter().find(|plugin| plugin.path == path)
    }

    /// Add a plugin and route its events, unless its name or one of its
    /// events is taken: that is an error naming both files, and the set is
    /// left as it was.
    pub(super) fn add(&mut self, plugin: Arc<LoadedPlugin>) -> Result<(), LoadError> {
        self.check_fits(&plugin)?;
        let index = self.plugins.len();
        for event in &plugin.manifest.rpc_events {
            self.rpc_routes.insert(event.clone(), index);
        }
        for event in &plugin.manifest.transmit_events {
            self.transmit_routes.insert(event.clone(), index);
        }
        self.public_rpc_events
            .extend(plugin.manifest.public_rpc_events.iter().cloned());
        self.plugins.push(plugin);
        self.order_chains();
        Ok(())
    }

    /// Whether `plugin` could join the set: its name and events are free.
    pub(super) fn check_fits(&self, plugin: &LoadedPlugin) -> Result<(), LoadError> {
        if let Some(other) = self.plugins.iter().find(|other| other.name == plugin.name) {
            return Err(LoadError::DuplicateName {
                name: plugin.name.to_string(),
                first: other.path.clone(),
                second: plugin.path.clone(),
            });
        }
        for (kind, events, routes) in [
            ("RPC", &plugin.manifest.rpc_events, &self.rpc_routes),
            (
                "transmit",
                &plugin.manifest.transmit_events,
                &self.transmit_routes,
            ),
        ] {
            if let Some(event) = events.iter().find(|event| routes.contains_key(*event)) {
                return Err(LoadError::EventConflict {
                    kind,
                    event: event.clone(),
                    first: self.plugins[routes[event]].path.clone(),
                    second: plugin.path.clone(),
                });
            }
        }
        Ok(())
    }

    /// Order the middleware of every hook: higher priority first, then by
    /// name, so that the order does not depend on file names.
    fn order_chains(&mut self) {
        let plugins = &self.plugins;
        self.chains = Hook::MIDDLEWARE
            .iter()
            .map(|&hook| {
                let mut chain: Vec<usize> = (0..plugins.len())
                    .filter(|&index| plugins[index].has_hook(hook))
                    .collect();
                chain.sort_by(|&a, &b| {
                    let (a, b) = (&plugins[a], &plugins[b]);
                    b.manifest
                        .priority
                        .cmp(&a.manifest.priority)
                        .then_with(|| a.name.cmp(&b.name))
                });
                (hook, chain)
            })
            .collect();
    }
}

impl std::fmt::Debug for PluginSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.plugins.iter().map(|plugin| &*plugin.name).collect();
        f.debug_struct("PluginSet")
            .field("plugins", &names)
            .finish_non_exhaustive()
    }
}
