//! A plugin compiled and checked ([`LoadedPlugin`]), and a live instance of
//! it ([`Instance`]): what a worker builds, calls, and rebuilds after a fault.

use super::cpu::{self, CpuMeter, Metered};
use super::health::PluginHealth;
use super::host_state::{HostState, WorkerServices};
use super::options::PluginLimits;
use super::symbols::Symbols;
use super::types::Manifest;
use super::wit::{Exports, PluginPre, WitVersion};
use crate::outbound::OutboundPolicy;
use crate::protocol::{ErrorObject, quoted};
use crate::services::HostServices;
use futures_util::FutureExt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use wasmtime::Store;
use wasmtime::component::{Component, ComponentExportIndex, TypedFunc};

/// A compiled, checked plugin, ready to be instantiated on every worker.
pub struct LoadedPlugin {
    /// The name from the manifest; also the KV namespace.
    pub name: Arc<str>,
    /// The file it was loaded from.
    pub path: PathBuf,
    /// Hash of the file's bytes: a reload replaces the plugin only when its
    /// file changed.
    pub content_hash: u64,
    /// The version of the contract it was built against.
    pub wit_version: WitVersion,
    /// What `describe` returned.
    pub manifest: Manifest,
    /// The limits its calls run under.
    pub limits: PluginLimits,
    /// Fault counters and back-off state, shared by every worker.
    pub health: Arc<PluginHealth>,
    /// Linked and type-checked, so an instance is a cheap step away.
    pub(super) pre: PluginPre,
    /// The optional `state` exports, if the component has them.
    pub(super) state_exports: Option<StateExports>,
    /// The config passed to `init`.
    pub(super) config: String,
    /// Where it may send HTTP requests, and their limits.
    pub(super) outbound: Arc<OutboundPolicy>,
    /// The file's DWARF, read when a fault is first logged.
    pub(super) symbols: OnceLock<Option<Symbols>>,
}

/// A call lasted longer than the plugin's wait limit, waiting on the host
/// included; the error that ends it.
#[derive(Debug, thiserror::Error)]
#[error("the call lasted longer than its wait limit of {limit:?} (waiting on the host included)")]
pub(super) struct WaitLimitExceeded {
    /// The limit.
    pub limit: Duration,
}

/// A live instance of a plugin with its store.
pub struct Instance {
    /// The store holding the instance's memory and host state.
    store: Store<HostState>,
    /// The plugin's exports.
    exports: Exports,
    /// The optional `state` exports, when the plugin has them.
    state: Option<StateFuncs>,
    /// The guest time of the call in progress, against its deadline.
    meter: Arc<CpuMeter>,
}

/// The typed `snapshot` and `restore` exports of one instance.
struct StateFuncs {
    snapshot: TypedFunc<(), (Option<String>,)>,
    restore: TypedFunc<(String,), (Result<(), String>,)>,
}

/// Where a component's optional `state` exports are, found once at load.
#[derive(Debug, Clone)]
pub(super) struct StateExports {
    snapshot: ComponentExportIndex,
    restore: ComponentExportIndex,
}

impl StateExports {
    /// The `snapshot` and `restore` exports of a component of `version`.
    pub(super) fn find(component: &Component, version: WitVersion) -> Option<Self> {
        let interface = component.get_export_index(None, version.state_interface())?;
        Some(StateExports {
            snapshot: component.get_export_index(Some(&interface), "snapshot")?,
            restore: component.get_export_index(Some(&interface), "restore")?,
        })
    }
}

impl Instance {
    /// Create a store and instantiate `pre` in it; instantiating counts
    /// against `limits.deadline` like any call.
    pub(super) async fn new(
        pre: &PluginPre,
        state_exports: Option<&StateExports>,
        outbound: Arc<OutboundPolicy>,
        services: WorkerServices,
        limits: PluginLimits,
    ) -> wasmtime::Result<Instance> {
        let state = HostState::new(outbound, services, limits);
        let mut store = Store::new(pre.engine(), state);
        store.limiter(|state| state.limits());
        let meter = Arc::new(CpuMeter::default());
        let on_epoch = meter.clone();
        store.epoch_deadline_callback(move |_| cpu::on_epoch(&on_epoch));
        meter.start_call(limits.deadline);
        store.set_epoch_deadline(1);
        let (exports, instance) = {
            let instantiating = std::pin::pin!(pre.instantiate(&mut store));
            Metered::new(instantiating, &meter).await?
        };
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
            meter,
        })
    }

    /// Run `call` on this instance under `limits`: a call whose guest time
    /// passes the deadline fails with [`cpu::DeadlineExceeded`], one that
    /// lasts longer than the wait limit (waiting on the host included)
    /// fails with [`WaitLimitExceeded`], and a long call yields to the
    /// worker's other tasks as it runs.
    pub(super) async fn run<R>(
        &mut self,
        limits: PluginLimits,
        call: impl AsyncFnOnce(&Exports, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> wasmtime::Result<R> {
        self.meter.start_call(limits.deadline);
        self.store.set_epoch_deadline(1);
        let running = std::pin::pin!(call(&self.exports, &mut self.store));
        let mut metered = Metered::new(running, &self.meter);
        // Nearly every call completes in its first poll: no timer for it.
        if let Some(done) = (&mut metered).now_or_never() {
            return done;
        }
        // Dropping the call's future on expiry unwinds the guest's stack;
        // the caller drops the instance, as after any fault.
        tokio::time::timeout(limits.max_wait, metered)
            .await
            .unwrap_or_else(|_| {
                Err(WaitLimitExceeded {
                    limit: limits.max_wait,
                }
                .into())
            })
    }

    /// What the guest wrote to stderr lately, for a fault report.
    pub(super) fn take_recent_stderr(&self) -> String {
        self.store.data().take_recent_stderr()
    }

    /// Run `init` with the operator's config, under `limits`.
    pub(super) async fn init(&mut self, config: &str, limits: PluginLimits) -> Result<(), String> {
        let init = async |exports: &Exports, store: &mut Store<HostState>| {
            exports.init(store, config).await
        };
        match self.run(limits, init).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(format!("the plugin refused to start: {reason}")),
            Err(trap) => Err(format!("{trap:#}")),
        }
    }

    /// What the plugin hands to its next build, if it exports `state`.
    pub async fn snapshot(&mut self, limits: PluginLimits) -> wasmtime::Result<Option<String>> {
        let Some(snapshot) = self.state.as_ref().map(|state| state.snapshot) else {
            return Ok(None);
        };
        let call =
            async |_: &Exports, store: &mut Store<HostState>| snapshot.call_async(store, ()).await;
        let (snapshot,) = self.run(limits, call).await?;
        Ok(snapshot)
    }

    /// Give a fresh instance what the previous build handed over. `Ok(false)`
    /// when this build does not take state.
    pub async fn restore(
        &mut self,
        snapshot: String,
        limits: PluginLimits,
    ) -> wasmtime::Result<bool> {
        let Some(restore) = self.state.as_ref().map(|state| state.restore) else {
            return Ok(false);
        };
        let call = async |_: &Exports, store: &mut Store<HostState>| {
            restore.call_async(store, (snapshot,)).await
        };
        let (restored,) = self.run(limits, call).await?;
        restored
            .map_err(|reason| wasmtime::format_err!("the plugin refused the state: {reason}"))?;
        Ok(true)
    }
}

impl LoadedPlugin {
    /// Whether the plugin exports `state` and so keeps its in-memory state
    /// across hot swaps.
    pub fn keeps_state(&self) -> bool {
        self.state_exports.is_some()
    }

    /// Refuse data larger than the plugin takes per call, before the call:
    /// a client must not make a plugin allocate what it sends without bound.
    pub(super) fn check_data(&self, data: Option<&str>, subject: &str) -> Result<(), ErrorObject> {
        let size = data.map_or(0, str::len);
        let limit = self.limits.max_data_bytes;
        if size <= limit {
            return Ok(());
        }
        Err(ErrorObject::new(
            "DataTooLargeError",
            format!(
                "Plugin '{}' takes at most {limit} bytes of data per call; this one carried {size}",
                self.name
            ),
        )
        .with("plugin", &*self.name)
        .with("event", quoted(subject))
        .with("limit", limit))
    }

    /// The file's DWARF, for the files and lines of fault reports.
    pub(super) fn symbols(&self) -> Option<&Symbols> {
        self.symbols
            .get_or_init(|| Symbols::load(&self.path))
            .as_ref()
    }

    /// Whether the manifest lists `hook`.
    pub fn has_hook(&self, hook: super::types::Hook) -> bool {
        self.manifest.hooks.contains(&hook)
    }

    /// A fresh, initialized instance with timers of its own, which never
    /// fire (a trial instance, or a measurement). The error says which
    /// stage failed.
    pub async fn instantiate(&self, services: Arc<HostServices>) -> Result<Instance, String> {
        self.instantiate_on(WorkerServices::new(services)).await
    }

    /// A fresh, initialized instance for a worker, at start and after every
    /// fault: its timers are the worker's. The error says which stage failed.
    pub(crate) async fn instantiate_on(
        &self,
        services: WorkerServices,
    ) -> Result<Instance, String> {
        let mut instance = Instance::new(
            &self.pre,
            self.state_exports.as_ref(),
            self.outbound.clone(),
            services,
            self.limits,
        )
        .await
        .map_err(|error| format!("{}: instantiate failed: {error:#}", self.path.display()))?;
        instance
            .init(&self.config, self.limits)
            .await
            .map_err(|reason| format!("{}: init failed: {reason}", self.path.display()))?;
        Ok(instance)
    }
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("wit_version", &self.wit_version)
            .field("manifest", &self.manifest)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("plugin", self.store.data())
            .finish_non_exhaustive()
    }
}
