//! A worker's instances of every plugin, and the calls into them.
//!
//! Each worker owns a small pool of instances (each its own `Store`) per
//! plugin, so a call is a direct call on the worker's thread, and a call
//! waiting on the host leaves the plugin free for the worker's other
//! sockets (see `pool`). A call that faults fails alone: its instance is
//! dropped and another built for the next event (the fault policy is in
//! `backoff`).

use super::fault::{Call, CallFailure, Retired, describe_fault};
use super::host_state::{HostState, WorkerServices};
use super::loaded::{Instance, LoadedPlugin};
use super::pool::InstancePool;
use super::routes::PluginSet;
use super::symbols;
use super::types::{Hook, Socket};
use super::wit::Exports;
use crate::log_limit;
use crate::metrics::{RpcStats, WorkerStats};
use crate::services::HostServices;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use wasmtime::{Store, WasmBacktrace};

/// One worker's instances of every loaded plugin.
pub struct WorkerPlugins {
    /// The plugins and the routing of events to them.
    set: Arc<PluginSet>,
    /// Each plugin's instances on this worker (same index as
    /// `set.plugins`). Shared with the next `WorkerPlugins` after a reload
    /// that keeps the plugin, so its instances and their in-memory state
    /// carry over.
    pools: Vec<Rc<InstancePool>>,
    /// What host functions act on, this worker's timers included.
    services: WorkerServices,
    /// The worker's counters (middleware denials, RPC histograms).
    pub(super) stats: Arc<WorkerStats>,
    /// Each RPC event the set routes: its plugin and this worker's histogram
    /// of it, so that measuring an RPC costs no lookup beyond routing it.
    rpc_routes: HashMap<Box<str>, RpcRoute>,
    /// Set by a reload: the plugins that replaced these. Calls made on an
    /// outdated `WorkerPlugins` are passed on to it.
    successor: RefCell<Option<Rc<WorkerPlugins>>>,
}

/// Where an RPC event goes on a worker, and where it is measured.
pub(super) struct RpcRoute {
    /// The plugin's index in the set.
    pub(super) index: usize,
    /// This worker's measurements of the event.
    pub(super) stats: Arc<RpcStats>,
}

/// The RPC routing of `set`, with a histogram of `stats` for each event.
fn rpc_routes(set: &PluginSet, stats: &WorkerStats) -> HashMap<Box<str>, RpcRoute> {
    let mut routes = HashMap::new();
    for plugin in &set.plugins {
        for event in &plugin.manifest.rpc_events {
            let Some(index) = set.rpc_route(event) else {
                continue;
            };
            let stats = stats.rpc.series(&set.plugins[index].name, event);
            routes.insert(event.as_str().into(), RpcRoute { index, stats });
        }
    }
    routes
}

impl WorkerPlugins {
    /// The plugins and their routing.
    pub(super) fn set(&self) -> &PluginSet {
        &self.set
    }

    /// Instantiate and `init` every plugin for one worker. A plugin whose
    /// instance cannot be built here backs off and is retried. Counters go
    /// to a private set; a server's worker uses
    /// [`WorkerPlugins::start_counting`].
    pub async fn start(set: Arc<PluginSet>, services: Arc<HostServices>) -> Self {
        Self::start_counting(set, services, Arc::default()).await
    }

    /// [`WorkerPlugins::start`], counting on the worker's `stats`.
    pub(crate) async fn start_counting(
        set: Arc<PluginSet>,
        services: Arc<HostServices>,
        stats: Arc<WorkerStats>,
    ) -> Self {
        let services = WorkerServices::new(services);
        let mut pools = Vec::with_capacity(set.plugins.len());
        for plugin in &set.plugins {
            pools.push(InstancePool::new(plugin, &services).await);
        }
        WorkerPlugins {
            rpc_routes: rpc_routes(&set, &stats),
            set,
            pools,
            services,
            stats,
            successor: RefCell::default(),
        }
    }

    /// The instances for a reloaded set: plugins that did not change keep
    /// their pool (instances, state, back-off); new and changed ones get
    /// fresh instances, and a changed plugin that exports `state` hands the
    /// snapshot of each old instance to an instance of its new build. Calls
    /// in flight finish on the old instances; calls still waiting for a
    /// replaced plugin go to the returned set. The worker must make the
    /// returned set current before it yields again.
    pub async fn switch_to(self: &Rc<Self>, set: Arc<PluginSet>) -> Rc<Self> {
        let mut pools = Vec::with_capacity(set.plugins.len());
        let mut drained = Vec::new();
        for plugin in &set.plugins {
            if let Some(index) = self
                .set
                .plugins
                .iter()
                .position(|old| Arc::ptr_eq(old, plugin))
            {
                pools.push(self.pools[index].clone());
                continue;
            }
            let pool = InstancePool::new(plugin, &self.services).await;
            if let Some(index) = self
                .set
                .plugins
                .iter()
                .position(|old| old.name == plugin.name)
            {
                let old_plugin = &self.set.plugins[index];
                let old = self.pools[index].drain(old_plugin.limits.deadline).await;
                hand_over_state(old.instances, old_plugin, &pool, plugin, &self.services).await;
                drained.push(&self.pools[index]);
            }
            pools.push(pool);
        }
        // Timers go to the new build of their plugin; those of plugins that
        // are gone, or no longer take timers, are dropped.
        self.services.timers.retain_plugins(|name| {
            set.plugins
                .iter()
                .any(|plugin| &*plugin.name == name && plugin.has_hook(Hook::Timer))
        });
        // Plugins that are gone are replaced by nothing.
        for (index, old) in self.set.plugins.iter().enumerate() {
            if !set.plugins.iter().any(|plugin| plugin.name == old.name) {
                drained.push(&self.pools[index]);
            }
        }
        let next = Rc::new(WorkerPlugins {
            rpc_routes: rpc_routes(&set, &self.stats),
            set,
            pools,
            services: self.services.clone(),
            stats: self.stats.clone(),
            successor: RefCell::default(),
        });
        // From here to the caller's swap there is no await: nothing can
        // observe a retired pool before the new set is current.
        for old in drained {
            old.retire();
        }
        *self.successor.borrow_mut() = Some(next.clone());
        next
    }

    /// The newest set of plugins, following reloads.
    pub(super) fn newest(self: &Rc<Self>) -> Rc<Self> {
        let mut current = self.clone();
        loop {
            let next = current.successor.borrow().clone();
            match next {
                Some(next) => current = next,
                None => return current,
            }
        }
    }

    /// Call `f` on an instance of plugin `index`, for `socket` (none for
    /// calls no socket makes), building one first if none is idle.
    /// `Err(Retired)` when a reload replaced the plugin while the call
    /// waited for it.
    pub(super) async fn call<R>(
        &self,
        index: usize,
        what: Call<'_>,
        socket: Option<&str>,
        f: impl AsyncFnOnce(&Exports, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<Result<R, CallFailure>, Retired> {
        let plugin = &self.set.plugins[index];
        let pool = &self.pools[index];
        let mut lease = match pool.lease(plugin, &self.services, socket).await? {
            Ok(lease) => lease,
            Err(refused) => return Ok(Err(refused)),
        };
        let error = match lease.instance().run(plugin.limits, f).await {
            Ok(value) => {
                lease.give_back();
                pool.policy().succeeded(socket);
                return Ok(Ok(value));
            }
            Err(error) => error,
        };
        let guest_stderr = lease.instance().take_recent_stderr();
        drop(lease);
        let (kind, fault) = describe_fault(&error, plugin);
        let description = format!("Plugin '{}' {fault} in {what}", plugin.name);
        plugin.health.fault(kind, &description);
        // Counted always; logged in full at most once a second per plugin,
        // since a client can cause faults at will.
        if let Some(left_out) = log_limit::admit(&format!("plugin fault: {}", plugin.name)) {
            let backtrace = error
                .downcast_ref::<WasmBacktrace>()
                .map(|backtrace| symbols::describe(backtrace, plugin.symbols()))
                .unwrap_or_default();
            tracing::error!(
                plugin = &*plugin.name,
                path = %plugin.path.display(),
                call = %what,
                guest_stderr,
                left_out,
                "plugin fault: {fault}; the instance will be rebuilt. {}\nwasm backtrace:{backtrace}",
                error.root_cause()
            );
        }
        pool.policy()
            .faulted(socket, plugin, &format!("{fault} in {what}"));
        Ok(Err(CallFailure::Fault(description)))
    }

    /// Where RPC `event` goes on this worker, and where it is measured.
    pub(super) fn rpc_route(&self, event: &str) -> Option<&RpcRoute> {
        self.rpc_routes.get(event)
    }

    /// Tell every plugin with the `connect` hook about a new socket.
    pub async fn connected(self: &Rc<Self>, socket: &Socket) {
        let plugins = self.newest();
        for (index, plugin) in plugins.set.plugins.iter().enumerate() {
            if plugin.has_hook(Hook::Connect) {
                let connect = async |exports: &Exports, store: &mut Store<HostState>| {
                    exports.on_connect(store, socket).await
                };
                let _ = plugins
                    .call(index, Call::Connect, Some(&socket.id), connect)
                    .await;
            }
        }
    }

    /// Tell every plugin with the `disconnect` hook that a socket is gone,
    /// and forget the faults its calls caused.
    pub async fn disconnected(self: &Rc<Self>, socket: &Socket, code: u16, reason: &str) {
        let plugins = self.newest();
        for (index, plugin) in plugins.set.plugins.iter().enumerate() {
            if plugin.has_hook(Hook::Disconnect) {
                let disconnect = async |exports: &Exports, store: &mut Store<HostState>| {
                    exports.on_disconnect(store, socket, code, reason).await
                };
                let _ = plugins
                    .call(index, Call::Disconnect, None, disconnect)
                    .await;
            }
            plugins.pools[index].policy().forget(&socket.id);
        }
    }

    /// Call `on-timer(id)` of the plugin named `plugin`, if this set still
    /// has it with the timer hook (a reload drops the timers of plugins
    /// that lost it). A fault is handled as any call's: the instance is
    /// rebuilt, and the timer, if it repeats, keeps its schedule.
    async fn fire_timer(self: &Rc<Self>, plugin: &str, id: &str) {
        let Some(index) = self
            .set
            .plugins
            .iter()
            .position(|loaded| &*loaded.name == plugin && loaded.has_hook(Hook::Timer))
        else {
            return;
        };
        let fire = async |exports: &Exports, store: &mut Store<HostState>| {
            exports.on_timer(store, id).await
        };
        if let Err(Retired) = self.call(index, Call::Timer(id), None, fire).await {
            // Replaced while it waited: the successor has the plugin's
            // newer build, which takes the timer.
            Box::pin(self.newest().fire_timer(plugin, id)).await;
        }
    }
}

/// Fire this worker's timers as they come due, each into the newest build
/// of its plugin (`current` gives the worker's current plugin set). Runs on
/// the worker's `LocalSet` for the life of the worker; each firing is a
/// task of its own, so that a slow `on-timer` delays only its own plugin.
pub(crate) async fn run_timers(current: impl Fn() -> Rc<WorkerPlugins>) {
    let timers = current().services.timers.clone();
    loop {
        let due = timers.wait_for_due().await;
        if due.is_empty() {
            continue;
        }
        let plugins = current();
        for (plugin, id) in due {
            let plugins = plugins.clone();
            tokio::task::spawn_local(async move { plugins.fire_timer(&plugin, &id).await });
        }
    }
}

/// Hand the state of each instance of the build being replaced (`old`) to
/// an instance of the new build's `pool`, when the plugin exports `state`.
/// Failures are logged: the new build serves anyway, that instance
/// starting empty.
async fn hand_over_state(
    old: Vec<Instance>,
    old_plugin: &LoadedPlugin,
    pool: &Rc<InstancePool>,
    plugin: &Arc<LoadedPlugin>,
    services: &WorkerServices,
) {
    let name = &*plugin.name;
    let mut received = Vec::new();
    for mut old_instance in old.into_iter().take(pool.max_instances()) {
        let snapshot = match old_instance.snapshot(old_plugin.limits).await {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => continue,
            Err(error) => {
                tracing::warn!(
                    plugin = name,
                    "state snapshot failed, an instance of the new build starts empty: {error:#}"
                );
                continue;
            }
        };
        let new_instance = match pool.take_idle() {
            Some(instance) => Ok(instance),
            None => plugin.instantiate_on(services.clone()).await,
        };
        let mut new_instance = match new_instance {
            Ok(instance) => instance,
            Err(error) => {
                tracing::warn!(
                    plugin = name,
                    "the new build has no instance to take state; it starts empty: {error}"
                );
                continue;
            }
        };
        match new_instance.restore(snapshot.clone(), plugin.limits).await {
            Ok(true) => {
                tracing::info!(
                    plugin = name,
                    bytes = snapshot.len(),
                    "state handed over to the new build"
                );
                received.push(new_instance);
            }
            Ok(false) => {
                tracing::info!(
                    plugin = name,
                    "the new build does not take state; it starts empty"
                );
                received.push(new_instance);
            }
            // A trap leaves the instance unusable: it is dropped, and a
            // call builds another.
            Err(error) => tracing::error!(
                plugin = name,
                "restoring state failed, an instance of the new build starts empty: {error:#}"
            ),
        }
    }
    for instance in received {
        pool.add_idle(instance);
    }
}

impl std::fmt::Debug for WorkerPlugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPlugins")
            .field("set", &self.set)
            .finish_non_exhaustive()
    }
}
