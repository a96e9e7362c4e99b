//! Loading plugins: compile each `*.wasm` of the plugins directory, link it
//! against the version of the contract it was built for, check it in a
//! trial instance (`describe`, `init`), and route every event to the one
//! plugin that declares it. Reloads re-read the directory the same way.

use super::engine::PluginEngine;
use super::host_state::HostState;
use super::host_state::WorkerServices;
use super::load_error::LoadError;
use super::loaded::{Instance, LoadedPlugin, StateExports};
use super::options::{PluginLimits, PluginOptions};
use super::routes::PluginSet;
use super::types::Manifest;
use super::wit::{Exports, PluginPre, WitVersion};
use crate::auth::AuthEngine;
use crate::outbound::{OutboundPolicy, OutboundSettings};
use crate::services::HostServices;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use wasmtime::Store;

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
/// with its path and the reason, skipped, and returned as a [`Refusal`];
/// the others are served. Two plugins declaring the same event is an error:
/// which one should answer is not something to guess.
pub async fn load_dir(
    engine: &PluginEngine,
    dir: &Path,
    options: &PluginOptions,
    services: &Arc<HostServices>,
) -> Result<(PluginSet, Vec<Refusal>), LoadError> {
    let mut set = PluginSet::default();
    let mut refused = Vec::new();
    for path in plugin_files(dir)? {
        match load_file(engine, &path, options, services).await {
            Ok(plugin) => {
                log_loaded(&plugin, "plugin loaded");
                set.add(Arc::new(plugin))?;
            }
            Err(error) => {
                tracing::error!("plugin skipped: {error}");
                refused.push(Refusal::new(&path, &error, None));
            }
        }
    }
    Ok((set, refused))
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

/// What `wasmcluster check` found out about a plugin file.
#[derive(Debug)]
pub struct Checked {
    /// The plugin, loaded as the server would load it.
    pub plugin: LoadedPlugin,
    /// Whether a fresh instance's `snapshot` returns state, so that a hot
    /// swap hands it to the next build.
    pub hands_over_state: bool,
    /// How many plugins of the directory it was checked against, if any.
    pub checked_against: Option<usize>,
    /// How long loading took: reading, compiling (without the cache),
    /// linking, and the instance that answered the manifest. A cold hot
    /// swap pays about this per build.
    pub load_time: std::time::Duration,
}

/// Load one plugin file exactly as the server would (default limits, no
/// config), for `wasmcluster check`; with `dir`, also check that it fits
/// beside the plugins of that directory (name and events free).
pub async fn check_file(path: &Path, dir: Option<&Path>) -> Result<Checked, LoadError> {
    let engine = PluginEngine::new(None).map_err(|error| LoadError::Start {
        path: path.to_owned(),
        plugin: None,
        stage: "engine",
        reason: error.to_string(),
    })?;
    let defaults = PluginLimits::default();
    let options = PluginOptions::new(defaults);
    let services = Arc::new(HostServices::new(Arc::new(AuthEngine::with_random_key(0))));
    let started = std::time::Instant::now();
    let plugin = load_file(&engine, path, &options, &services).await?;
    let load_time = started.elapsed();
    let checked_against = match dir {
        Some(dir) => {
            let others = others_in(&engine, dir, path, &options, &services).await?;
            others.check_fits(&plugin)?;
            Some(others.plugins.len())
        }
        None => None,
    };
    let hands_over_state = match plugin.instantiate(services).await {
        Ok(mut instance) => matches!(instance.snapshot(defaults).await, Ok(Some(_))),
        Err(_) => false,
    };
    Ok(Checked {
        plugin,
        hands_over_state,
        checked_against,
        load_time,
    })
}

/// The plugins of `dir` but the one at `checked` (the file being checked
/// may sit in the directory already, as an older build).
async fn others_in(
    engine: &PluginEngine,
    dir: &Path,
    checked: &Path,
    options: &PluginOptions,
    services: &Arc<HostServices>,
) -> Result<PluginSet, LoadError> {
    let checked_name = checked.file_name();
    let mut set = PluginSet::default();
    for path in plugin_files(dir)? {
        if path.file_name() == checked_name {
            continue;
        }
        match load_file(engine, &path, options, services).await {
            Ok(plugin) => set.add(Arc::new(plugin))?,
            Err(error) => tracing::warn!("not checked against {}: {error}", path.display()),
        }
    }
    Ok(set)
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
    /// Files refused; the old version (if any) keeps serving.
    pub refused: Vec<Refusal>,
}

/// A plugin file that was not loaded, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The file.
    pub file: PathBuf,
    /// The plugin's name, when it got as far as saying it.
    pub plugin: Option<String>,
    /// Why it was refused, naming the file.
    pub reason: String,
    /// The build of the plugin that keeps serving instead (its version),
    /// when a reload refused a new build of a loaded plugin.
    pub kept: Option<String>,
}

impl Refusal {
    fn new(file: &Path, error: &LoadError, kept: Option<&LoadedPlugin>) -> Self {
        Refusal {
            file: file.to_owned(),
            plugin: error
                .plugin()
                .map(str::to_owned)
                .or_else(|| kept.map(|old| old.name.to_string())),
            reason: error.to_string(),
            kept: kept.map(|old| old.manifest.version.clone()),
        }
    }
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
    let mut next = PluginSet::default();
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
                let kept = old.filter(|old| match next.add((*old).clone()) {
                    Ok(()) => true,
                    Err(error) => {
                        tracing::error!("could not keep the old version either: {error}");
                        false
                    }
                });
                summary
                    .refused
                    .push(Refusal::new(path, &error, kept.map(|old| &**old)));
            }
        }
    }
    Ok((next, summary))
}

/// Compile, link and check one plugin file in a trial instance.
pub(super) async fn load_file(
    engine: &PluginEngine,
    path: &Path,
    options: &PluginOptions,
    services: &Arc<HostServices>,
) -> Result<LoadedPlugin, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    if !bytes.starts_with(b"\0asm") {
        return Err(LoadError::NotWasm {
            path: path.to_owned(),
        });
    }
    let hash = content_hash(&bytes);
    let component = engine
        .compile(bytes)
        .await
        .map_err(|source| LoadError::Compile {
            path: path.to_owned(),
            source,
        })?;
    let version =
        WitVersion::of(&component, engine.engine()).ok_or_else(|| LoadError::UnknownVersion {
            path: path.to_owned(),
            known: WitVersion::known(),
        })?;
    let pre =
        PluginPre::new(version, engine.linker(), &component).map_err(|source| LoadError::Link {
            path: path.to_owned(),
            version,
            source,
        })?;
    let state_exports = StateExports::find(&component, version);
    let start_error = |stage, reason| LoadError::Start {
        path: path.to_owned(),
        plugin: None,
        stage,
        reason,
    };
    let trial_instance = async |outbound: Arc<OutboundPolicy>, limits: PluginLimits| {
        let services = WorkerServices::new(services.clone());
        Instance::new(&pre, state_exports.as_ref(), outbound, services, limits)
            .await
            .map_err(|error| start_error("instantiate", format!("{error:#}")))
    };
    let file_name: Arc<str> = path
        .file_stem()
        .map_or("plugin".into(), |s| s.to_string_lossy().into());
    let denied = OutboundPolicy::new(file_name, &OutboundSettings::default());
    let mut trial = trial_instance(Arc::new(denied), options.defaults).await?;
    let describe =
        async |exports: &Exports, store: &mut Store<HostState>| exports.describe(store).await;
    let manifest = trial
        .run(options.defaults, describe)
        .await
        .map_err(|error| start_error("describe", format!("{error:#}")))?;
    check_manifest(&manifest).map_err(|reason| LoadError::Manifest {
        path: path.to_owned(),
        reason,
    })?;
    let name: Arc<str> = manifest.name.as_str().into();
    let default_instances = match version {
        WitVersion::V0_1 => 1,
        WitVersion::V0_2 => options.defaults.max_instances,
    };
    let (limits, config, outbound) = options.for_plugin(&name, default_instances);
    let outbound = Arc::new(OutboundPolicy::new(name.clone(), &outbound));
    if limits != options.defaults || !outbound.allowed.is_empty() {
        // `init` runs under the plugin's own limits and outbound grants,
        // as every later call.
        trial = trial_instance(outbound.clone(), limits).await?;
    }
    trial
        .init(&config, limits)
        .await
        .map_err(|reason| LoadError::Start {
            path: path.to_owned(),
            plugin: Some(manifest.name.clone()),
            stage: "init",
            reason,
        })?;

    Ok(LoadedPlugin {
        name,
        path: path.to_owned(),
        content_hash: hash,
        wit_version: version,
        manifest,
        limits,
        health: Arc::default(),
        pre,
        state_exports,
        config,
        outbound,
        symbols: OnceLock::new(),
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
    Ok(())
}
