//! Loading plugins: compile each `*.wasm` of the plugins directory, check it
//! in a trial instance, and route every event to the one plugin that
//! declares it.

use super::bindings::wasmcluster::plugin::types::{Hook, Manifest};
use super::bindings::{Plugin, PluginPre};
use super::engine::{PluginEngine, deadline_ticks};
use super::health::PluginHealth;
use super::host_api::{HostServices, HostState};
use crate::auth::AuthEngine;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use wasmtime::Store;
use wasmtime::component::{Component, ComponentExportIndex, TypedFunc};

/// The hooks this host runs. A plugin that declares another hook is refused:
/// ignoring a hook would silently break what the plugin means to do.
const SUPPORTED_HOOKS: [Hook; 8] = [
    Hook::Handshake,
    Hook::Connect,
    Hook::Disconnect,
    Hook::Subscribe,
    Hook::PublishIn,
    Hook::Authenticate,
    Hook::Invoke,
    Hook::Transmit,
];

/// The middleware hooks, each run as a chain over the plugins declaring it.
const MIDDLEWARE_HOOKS: [Hook; 6] = [
    Hook::Handshake,
    Hook::Subscribe,
    Hook::PublishIn,
    Hook::Authenticate,
    Hook::Invoke,
    Hook::Transmit,
];

/// Limits every call of a plugin runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    /// How long one call may run before it is interrupted.
    pub deadline: Duration,
    /// The most linear memory one instance may have.
    pub memory_bytes: usize,
}

/// What the operator set for one plugin (a `[plugin.NAME]` section of the
/// config file); what is not set falls back to [`PluginOptions::defaults`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginOverrides {
    /// This plugin's call deadline.
    pub deadline: Option<Duration>,
    /// This plugin's memory cap, in bytes.
    pub memory_bytes: Option<usize>,
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
    fn for_plugin(&self, name: &str) -> (PluginLimits, String) {
        let overrides = self.per_plugin.get(name);
        let limits = PluginLimits {
            deadline: overrides
                .and_then(|o| o.deadline)
                .unwrap_or(self.defaults.deadline),
            memory_bytes: overrides
                .and_then(|o| o.memory_bytes)
                .unwrap_or(self.defaults.memory_bytes),
        };
        let config = overrides
            .and_then(|o| o.config.clone())
            .unwrap_or_else(|| "{}".to_owned());
        (limits, config)
    }
}

/// Why a plugin was not loaded, or why the set of plugins cannot start.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The plugins directory could not be listed.
    #[error("cannot read the plugins directory {dir}: {source}")]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A plugin file could not be read.
    #[error("{path}: cannot read the file: {source}")]
    Read {
        /// The plugin file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not a valid WebAssembly component.
    #[error("{path}: not a valid WebAssembly component: {source:#}")]
    Compile {
        /// The plugin file.
        path: PathBuf,
        /// What wasmtime said.
        source: wasmtime::Error,
    },
    /// The component imports something this host does not provide, or does
    /// not export the `wasmcluster:plugin` world.
    #[error("{path}: does not fit this host's plugin world (wasmcluster:plugin@0.1.0): {source:#}")]
    Link {
        /// The plugin file.
        path: PathBuf,
        /// What wasmtime said.
        source: wasmtime::Error,
    },
    /// Instantiating, `describe` or `init` trapped or failed.
    #[error("{path}: {stage} failed: {reason}")]
    Start {
        /// The plugin file.
        path: PathBuf,
        /// `instantiate`, `describe` or `init`.
        stage: &'static str,
        /// The trap or the plugin's error.
        reason: String,
    },
    /// The manifest returned by `describe` is not acceptable.
    #[error("{path}: invalid manifest: {reason}")]
    Manifest {
        /// The plugin file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Two plugins declare the same event.
    #[error("{kind} event '{event}' is declared by both {first} and {second}")]
    EventConflict {
        /// `RPC` or `transmit`.
        kind: &'static str,
        /// The event.
        event: String,
        /// The first file declaring it.
        first: PathBuf,
        /// The second file declaring it.
        second: PathBuf,
    },
    /// Two plugins have the same name (and so the same KV namespace).
    #[error("plugin name '{name}' is used by both {first} and {second}")]
    DuplicateName {
        /// The name.
        name: String,
        /// The first file.
        first: PathBuf,
        /// The second file.
        second: PathBuf,
    },
}

/// A compiled, checked plugin, ready to be instantiated on every worker.
pub struct LoadedPlugin {
    /// The name from the manifest; also the KV namespace.
    pub name: Arc<str>,
    /// The file it was loaded from.
    pub path: PathBuf,
    /// Hash of the file's bytes: a reload replaces the plugin only when its
    /// file changed.
    pub content_hash: u64,
    /// What `describe` returned.
    pub manifest: Manifest,
    /// Whether the manifest lists the `connect` hook.
    pub on_connect: bool,
    /// Whether the manifest lists the `disconnect` hook.
    pub on_disconnect: bool,
    /// The limits its calls run under.
    pub limits: PluginLimits,
    /// Fault counters and back-off state, shared by every worker.
    pub health: Arc<PluginHealth>,
    /// Linked and type-checked, so an instance is a cheap step away.
    pre: PluginPre<HostState>,
    /// The optional `state` exports, if the component has them.
    state_exports: Option<StateExports>,
    /// The config passed to `init`.
    config: String,
}

/// A live instance of a plugin with its store.
pub struct Instance {
    /// The store holding the instance's memory and host state.
    pub store: Store<HostState>,
    /// Typed access to the exports.
    pub exports: Plugin,
    /// The optional `state` exports, when the plugin has them.
    state: Option<StateFuncs>,
}

/// The typed `snapshot` and `restore` exports of one instance.
struct StateFuncs {
    snapshot: TypedFunc<(), (Option<String>,)>,
    restore: TypedFunc<(String,), (Result<(), String>,)>,
}

/// Where a component's optional `state` exports are, found once at load.
#[derive(Debug, Clone)]
struct StateExports {
    snapshot: ComponentExportIndex,
    restore: ComponentExportIndex,
}

impl StateExports {
    /// The interface that carries state across hot swaps.
    const INTERFACE: &str = "wasmcluster:plugin/state@0.1.0";

    fn find(component: &Component) -> Option<Self> {
        let interface = component.get_export_index(None, Self::INTERFACE)?;
        Some(StateExports {
            snapshot: component.get_export_index(Some(&interface), "snapshot")?,
            restore: component.get_export_index(Some(&interface), "restore")?,
        })
    }
}

impl Instance {
    /// What the plugin hands to its next build, if it exports `state`.
    pub async fn snapshot(&mut self, deadline: Duration) -> wasmtime::Result<Option<String>> {
        let Some(state) = &self.state else {
            return Ok(None);
        };
        self.store.set_epoch_deadline(deadline_ticks(deadline));
        let (snapshot,) = state.snapshot.call_async(&mut self.store, ()).await?;
        Ok(snapshot)
    }

    /// Give a fresh instance what the previous build handed over. `Ok(false)`
    /// when this build does not take state.
    pub async fn restore(
        &mut self,
        snapshot: String,
        deadline: Duration,
    ) -> wasmtime::Result<bool> {
        let Some(state) = &self.state else {
            return Ok(false);
        };
        self.store.set_epoch_deadline(deadline_ticks(deadline));
        let (restored,) = state
            .restore
            .call_async(&mut self.store, (snapshot,))
            .await?;
        restored
            .map_err(|reason| wasmtime::format_err!("the plugin refused the state: {reason}"))?;
        Ok(true)
    }
}

/// Create a store and instantiate `pre` in it.
async fn instantiate(
    pre: &PluginPre<HostState>,
    state_exports: Option<&StateExports>,
    name: Arc<str>,
    services: Arc<HostServices>,
    limits: PluginLimits,
) -> wasmtime::Result<Instance> {
    let mut store = Store::new(
        pre.engine(),
        HostState::new(name, services, limits.memory_bytes),
    );
    store.limiter(|state| state.limits());
    store.set_epoch_deadline(deadline_ticks(limits.deadline));
    let instance = pre.instance_pre().instantiate_async(&mut store).await?;
    let exports = Plugin::new(&mut store, &instance)?;
    let state = match state_exports {
        Some(found) => Some(StateFuncs {
            snapshot: instance.get_typed_func(&mut store, found.snapshot)?,
            restore: instance.get_typed_func(&mut store, found.restore)?,
        }),
        None => None,
    };
    Ok(Instance {
        store,
        exports,
        state,
    })
}

impl LoadedPlugin {
    /// Whether the plugin exports `state` and so keeps its in-memory state
    /// across hot swaps.
    pub fn keeps_state(&self) -> bool {
        self.state_exports.is_some()
    }

    /// A fresh, initialized instance: used by each worker at start and after
    /// every fault.
    pub async fn instantiate(&self, services: Arc<HostServices>) -> Result<Instance, LoadError> {
        let mut instance = instantiate(
            &self.pre,
            self.state_exports.as_ref(),
            self.name.clone(),
            services,
            self.limits,
        )
        .await
        .map_err(|error| self.start_error("instantiate", format!("{error:#}")))?;
        run_init(&mut instance, &self.config, self.limits)
            .await
            .map_err(|reason| self.start_error("init", reason))?;
        Ok(instance)
    }

    fn start_error(&self, stage: &'static str, reason: String) -> LoadError {
        LoadError::Start {
            path: self.path.clone(),
            stage,
            reason,
        }
    }
}

async fn run_init(
    instance: &mut Instance,
    config: &String,
    limits: PluginLimits,
) -> Result<(), String> {
    instance
        .store
        .set_epoch_deadline(deadline_ticks(limits.deadline));
    match instance
        .exports
        .call_init(&mut instance.store, config)
        .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(format!("the plugin refused to start: {reason}")),
        Err(trap) => Err(format!("{trap:#}")),
    }
}

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

impl PluginSet {
    /// The plugin answering RPC `event`.
    pub fn rpc_route(&self, event: &str) -> Option<usize> {
        self.rpc_routes.get(event).copied()
    }

    /// The plugin receiving transmit `event`.
    pub fn transmit_route(&self, event: &str) -> Option<usize> {
        self.transmit_routes.get(event).copied()
    }

    /// The plugins running middleware `hook`, in order.
    pub fn chain(&self, hook: Hook) -> &[usize] {
        self.chains
            .iter()
            .find(|(chain_hook, _)| *chain_hook == hook)
            .map_or(&[], |(_, chain)| chain)
    }

    /// Whether a plugin marks RPC `event` as open to unauthenticated sockets.
    pub fn is_public_rpc(&self, event: &str) -> bool {
        self.public_rpc_events.contains(event)
    }

    /// An empty set.
    fn empty() -> Self {
        PluginSet {
            plugins: Vec::new(),
            rpc_routes: HashMap::new(),
            transmit_routes: HashMap::new(),
            chains: Vec::new(),
            public_rpc_events: HashSet::new(),
        }
    }

    /// Order the middleware of every hook: higher priority first, then by
    /// name, so that the order does not depend on file names.
    fn order_chains(&mut self) {
        let plugins = &self.plugins;
        self.chains = MIDDLEWARE_HOOKS
            .iter()
            .map(|&hook| {
                let mut chain: Vec<usize> = (0..plugins.len())
                    .filter(|&index| plugins[index].manifest.hooks.contains(&hook))
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

    /// Add a plugin and route its events, unless its name or one of its
    /// events is taken: that is an error naming both files, and the set is
    /// left as it was.
    fn add(&mut self, plugin: Arc<LoadedPlugin>) -> Result<(), LoadError> {
        if let Some(other) = self.plugins.iter().find(|other| other.name == plugin.name) {
            return Err(LoadError::DuplicateName {
                name: plugin.name.to_string(),
                first: other.path.clone(),
                second: plugin.path.clone(),
            });
        }
        let index = self.plugins.len();
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

    /// The plugin loaded from `path`, if any.
    fn by_path(&self, path: &Path) -> Option<&Arc<LoadedPlugin>> {
        self.plugins.iter().find(|plugin| plugin.path == path)
    }
}

/// Hash of a plugin file's bytes, to tell changed files from unchanged ones.
fn content_hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// Whether a path names a plugin: `*.wasm`, not hidden (editors and copy
/// tools write hidden temporary files before renaming them into place).
pub fn is_plugin_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with('.'));
    !hidden && path.extension().is_some_and(|ext| ext == "wasm")
}

/// The `*.wasm` files of `dir` that are not hidden, sorted by name.
fn plugin_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Directory {
        dir: dir.to_owned(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| is_plugin_file(path) && path.is_file())
        .collect();
    paths.sort();
    Ok(paths)
}

/// Load every `*.wasm` in `dir`, in file-name order.
///
/// A file that fails to compile, link, describe itself or `init` is logged
/// with its path and the reason and skipped; the others are served. Two
/// plugins declaring the same event is an error: which one should answer is
/// not something to guess.
pub async fn load_dir(
    engine: &PluginEngine,
    dir: &Path,
    options: &PluginOptions,
    services: &Arc<HostServices>,
) -> Result<PluginSet, LoadError> {
    let mut set = PluginSet::empty();
    for path in plugin_files(dir)? {
        match load_file(engine, &path, options, services).await {
            Ok(plugin) => {
                log_loaded(&plugin, "plugin loaded");
                set.add(Arc::new(plugin))?;
            }
            Err(error) => tracing::error!("plugin skipped: {error}"),
        }
    }
    Ok(set)
}

fn log_loaded(plugin: &LoadedPlugin, message: &str) {
    tracing::info!(
        plugin = &*plugin.name,
        version = plugin.manifest.version,
        path = %plugin.path.display(),
        rpc = ?plugin.manifest.rpc_events,
        transmit = ?plugin.manifest.transmit_events,
        "{message}"
    );
}

/// Load one plugin file exactly as the server would (default limits, no
/// config), for `wasmcluster check`.
pub async fn check_file(path: &Path) -> Result<LoadedPlugin, LoadError> {
    let engine = PluginEngine::new(None).map_err(|error| LoadError::Start {
        path: path.to_owned(),
        stage: "engine",
        reason: error.to_string(),
    })?;
    let options = PluginOptions::new(PluginLimits {
        deadline: Duration::from_millis(100),
        memory_bytes: 64 << 20,
    });
    let services = Arc::new(HostServices::new(Arc::new(AuthEngine::with_random_key(0))));
    load_file(&engine, path, &options, &services).await
}

/// What a reload did.
#[derive(Debug, Default)]
pub struct ReloadSummary {
    /// Names of plugins loaded from new files.
    pub loaded: Vec<String>,
    /// Names of plugins replaced by a changed file.
    pub updated: Vec<String>,
    /// Names of plugins whose file was removed.
    pub unloaded: Vec<String>,
    /// Files refused, with the reason; the old version (if any) keeps serving.
    pub refused: Vec<String>,
}

impl ReloadSummary {
    /// Whether the set of plugins changed.
    pub fn changed(&self) -> bool {
        !(self.loaded.is_empty() && self.updated.is_empty() && self.unloaded.is_empty())
    }
}

/// Re-read `dir` against the plugins in `current`: unchanged files keep
/// their loaded plugin (and so their instances); new and changed files are
/// compiled and checked in a trial instance; a file that fails, or that
/// would conflict with another plugin, is refused and its old version (if
/// any) kept; removed files are unloaded.
pub async fn reload_dir(
    engine: &PluginEngine,
    dir: &Path,
    current: &PluginSet,
    options: &PluginOptions,
    services: &Arc<HostServices>,
) -> Result<(PluginSet, ReloadSummary), LoadError> {
    let files = plugin_files(dir)?;
    let mut summary = ReloadSummary::default();
    let mut next = PluginSet::empty();
    let mut candidates = Vec::new();
    for path in &files {
        let old = current.by_path(path);
        let unchanged = match (old, std::fs::read(path)) {
            (Some(old), Ok(bytes)) => old.content_hash == content_hash(&bytes),
            _ => false,
        };
        match old {
            Some(old) if unchanged => next.add(old.clone())?,
            _ => candidates.push((path, old)),
        }
    }
    for plugin in &current.plugins {
        if !files.contains(&plugin.path) {
            summary.unloaded.push(plugin.name.to_string());
        }
    }
    for (path, old) in candidates {
        let loaded = match load_file(engine, path, options, services).await {
            Ok(plugin) => next.add(Arc::new(plugin)).map(|()| next.plugins.last()),
            Err(error) => Err(error),
        };
        match loaded {
            Ok(Some(plugin)) => {
                let message = if old.is_some() {
                    "plugin updated"
                } else {
                    "plugin loaded"
                };
                log_loaded(plugin, message);
                let list = if old.is_some() {
                    &mut summary.updated
                } else {
                    &mut summary.loaded
                };
                list.push(plugin.name.to_string());
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!("plugin refused: {error}");
                summary.refused.push(error.to_string());
                if let Some(old) = old
                    && let Err(error) = next.add(old.clone())
                {
                    tracing::error!("could not keep the old version either: {error}");
                }
            }
        }
    }
    Ok((next, summary))
}

/// Compile, link and check one plugin file in a trial instance.
pub async fn load_file(
    engine: &PluginEngine,
    path: &Path,
    options: &PluginOptions,
    services: &Arc<HostServices>,
) -> Result<LoadedPlugin, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let hash = content_hash(&bytes);
    let component = engine
        .compile(bytes)
        .await
        .map_err(|source| LoadError::Compile {
            path: path.to_owned(),
            source,
        })?;
    let link_error = |source| LoadError::Link {
        path: path.to_owned(),
        source,
    };
    let pre = engine
        .linker()
        .instantiate_pre(&component)
        .map_err(link_error)?;
    let pre = PluginPre::new(pre).map_err(link_error)?;
    let state_exports = StateExports::find(&component);

    let start_error = |stage, reason| LoadError::Start {
        path: path.to_owned(),
        stage,
        reason,
    };
    let file_name: Arc<str> = path
        .file_stem()
        .map_or("plugin".into(), |s| s.to_string_lossy().into());
    let trial_instance = async |name: Arc<str>, limits: PluginLimits| {
        let mut trial = instantiate(&pre, state_exports.as_ref(), name, services.clone(), limits)
            .await
            .map_err(|error| start_error("instantiate", format!("{error:#}")))?;
        trial
            .store
            .set_epoch_deadline(deadline_ticks(limits.deadline));
        Ok::<_, LoadError>(trial)
    };
    let mut trial = trial_instance(file_name, options.defaults).await?;
    let manifest = trial
        .exports
        .call_describe(&mut trial.store)
        .await
        .map_err(|error| start_error("describe", format!("{error:#}")))?;
    check_manifest(&manifest).map_err(|reason| LoadError::Manifest {
        path: path.to_owned(),
        reason,
    })?;
    let (limits, config) = options.for_plugin(&manifest.name);
    if limits != options.defaults {
        // `init` runs under the plugin's own limits, as every later call.
        trial = trial_instance(manifest.name.as_str().into(), limits).await?;
    }
    run_init(&mut trial, &config, limits)
        .await
        .map_err(|reason| start_error("init", reason))?;

    Ok(LoadedPlugin {
        name: manifest.name.as_str().into(),
        path: path.to_owned(),
        content_hash: hash,
        on_connect: manifest.hooks.contains(&Hook::Connect),
        on_disconnect: manifest.hooks.contains(&Hook::Disconnect),
        manifest,
        limits,
        health: Arc::default(),
        pre,
        state_exports,
        config,
    })
}

/// Check what a plugin says about itself.
fn check_manifest(manifest: &Manifest) -> Result<(), String> {
    let name = &manifest.name;
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "name '{name}' must be 1 to 64 letters, digits, '-' or '_'"
        ));
    }
    if manifest.version.trim().is_empty() {
        return Err("version is empty".into());
    }
    for (kind, events) in [
        ("RPC", &manifest.rpc_events),
        ("transmit", &manifest.transmit_events),
    ] {
        let mut seen = HashSet::new();
        for event in events {
            if event.is_empty() || event.starts_with('#') {
                return Err(format!(
                    "{kind} event '{event}' is empty or starts with '#', which SocketCluster reserves"
                ));
            }
            if !seen.insert(event) {
                return Err(format!("{kind} event '{event}' is listed twice"));
            }
        }
    }
    if let Some(event) = manifest
        .public_rpc_events
        .iter()
        .find(|event| !manifest.rpc_events.contains(event))
    {
        return Err(format!(
            "public event '{event}' is not one of its RPC events"
        ));
    }
    if let Some(hook) = manifest
        .hooks
        .iter()
        .find(|hook| !SUPPORTED_HOOKS.contains(hook))
    {
        return Err(format!(
            "hook {hook:?} is not supported by this version of wasmcluster yet; \
             the plugin would not work as written"
        ));
    }
    Ok(())
}
