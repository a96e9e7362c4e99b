//! A worker's instances of every plugin, and the calls into them.
//!
//! Each worker owns one instance (one `Store`) per plugin, so a call is a
//! direct call on the worker's thread. The async mutex around each instance
//! is never contended across threads; it only keeps two connections of the
//! same worker from entering one instance at once.
//!
//! A call that traps, overruns its deadline or exceeds its memory cap fails
//! alone: the instance is dropped and rebuilt (from its `InstancePre`, with
//! `init`) when the next event for that plugin arrives. A plugin that cannot
//! be rebuilt, or whose calls fault [`FAULTS_BEFORE_BACKOFF`] times in a row,
//! backs off: its events are answered at once with `PluginUnavailable`, for
//! a delay that doubles up to [`MAX_BACKOFF`], until a rebuild succeeds.

use super::engine::deadline_ticks;
use super::fault::{Call, CallFailure, Retired, describe_fault};
use super::loaded::{Instance, LoadedPlugin};
use super::routes::PluginSet;
use super::types::{Hook, Socket};
use crate::metrics::{RpcStats, WorkerStats};
use crate::services::HostServices;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Consecutive faulted calls (with no successful call between them) after
/// which a plugin instance backs off. A plugin that faults on some inputs
/// but serves others is rebuilt each time and never backs off.
pub(super) const FAULTS_BEFORE_BACKOFF: u32 = 10;
/// The first back-off delay.
pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// The longest back-off delay.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One worker's state for one plugin.
#[derive(Default)]
struct Slot {
    /// The live instance; `None` after a fault until a call rebuilds it.
    instance: Option<Instance>,
    /// Faulted calls since the last successful one.
    consecutive_faults: u32,
    /// While the plugin backs off on this worker: when events are taken again.
    backoff_until: Option<Instant>,
    /// The delay of the last back-off, kept until a call succeeds so that
    /// repeated back-offs keep doubling.
    last_delay: Option<Duration>,
    /// Why the plugin is unavailable, for the answers during a back-off.
    reason: String,
    /// Set when a reload replaced this plugin: calls that were waiting for
    /// the slot go to the successor instead.
    retired: bool,
    /// Whether a task will rebuild the instance when its back-off ends.
    recovery_scheduled: bool,
}

/// One worker's instances of every loaded plugin.
pub struct WorkerPlugins {
    /// The plugins and the routing of events to them.
    set: Arc<PluginSet>,
    /// Each plugin's state on this worker (same index as `set.plugins`).
    /// Shared with the next `WorkerPlugins` after a reload that keeps the
    /// plugin, so its instance and in-memory state carry over.
    slots: Vec<Rc<Mutex<Slot>>>,
    /// What host functions act on.
    services: Arc<HostServices>,
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

    /// Instantiate and `init` every plugin for one worker, counting on the
    /// worker's `stats`. A plugin whose instance cannot be built here backs
    /// off and is retried.
    pub async fn start(
        set: Arc<PluginSet>,
        services: Arc<HostServices>,
        stats: Arc<WorkerStats>,
    ) -> Self {
        let mut slots = Vec::with_capacity(set.plugins.len());
        for plugin in &set.plugins {
            slots.push(new_slot(plugin, &services).await);
        }
        WorkerPlugins {
            rpc_routes: rpc_routes(&set, &stats),
            set,
            slots,
            services,
            stats,
            successor: RefCell::default(),
        }
    }

    /// The instances for a reloaded set: plugins that did not change keep
    /// their slot (instance, state, back-off); new and changed ones get a
    /// fresh instance, and a changed plugin that exports `state` hands its
    /// snapshot to its new build. Calls in flight finish on the old
    /// instances; calls still waiting for a replaced plugin go to the
    /// returned set. The worker must make the returned set current before it
    /// yields again.
    pub async fn switch_to(self: &Rc<Self>, set: Arc<PluginSet>) -> Rc<Self> {
        let mut slots = Vec::with_capacity(set.plugins.len());
        let mut replaced = Vec::new();
        for plugin in &set.plugins {
            if let Some(index) = self
                .set
                .plugins
                .iter()
                .position(|old| Arc::ptr_eq(old, plugin))
            {
                slots.push(self.slots[index].clone());
                continue;
            }
            let slot = new_slot(plugin, &self.services).await;
            if let Some(index) = self
                .set
                .plugins
                .iter()
                .position(|old| old.name == plugin.name)
            {
                let mut old = self.slots[index].lock().await;
                hand_over_state(
                    &mut old,
                    &self.set.plugins[index],
                    &mut *slot.lock().await,
                    plugin,
                )
                .await;
                replaced.push(old);
            }
            slots.push(slot);
        }
        // Plugins that are gone are replaced by nothing.
        for (index, old) in self.set.plugins.iter().enumerate() {
            if !set.plugins.iter().any(|plugin| plugin.name == old.name) {
                replaced.push(self.slots[index].lock().await);
            }
        }
        let next = Rc::new(WorkerPlugins {
            rpc_routes: rpc_routes(&set, &self.stats),
            set,
            slots,
            services: self.services.clone(),
            stats: self.stats.clone(),
            successor: RefCell::default(),
        });
        // From here to the caller's swap there is no await: nothing can
        // observe a retired slot before the new set is current.
        for mut old in replaced {
            old.retired = true;
            old.instance = None;
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

    /// Call `f` on plugin `index`'s instance with a fresh deadline, building
    /// the instance first if an earlier fault dropped it. `Err(Retired)` when
    /// a reload replaced the plugin while the call waited for it.
    pub(super) async fn call<R>(
        &self,
        index: usize,
        what: Call<'_>,
        f: impl AsyncFnOnce(&mut Instance) -> wasmtime::Result<R>,
    ) -> Result<Result<R, CallFailure>, Retired> {
        let plugin = &self.set.plugins[index];
        let mut slot = self.slots[index].lock().await;
        if slot.retired {
            return Err(Retired);
        }
        if slot
            .backoff_until
            .is_some_and(|until| Instant::now() < until)
        {
            return Ok(Err(CallFailure::Unavailable(slot.reason.clone())));
        }
        if slot.instance.is_none()
            && let Err(reason) = Box::pin(rebuild(&mut slot, plugin, &self.services)).await
        {
            schedule_recovery(&mut slot, &self.slots[index], plugin, &self.services);
            return Ok(Err(CallFailure::Unavailable(reason)));
        }
        let Some(instance) = slot.instance.as_mut() else {
            return Ok(Err(CallFailure::Unavailable(slot.reason.clone())));
        };
        instance
            .store
            .set_epoch_deadline(deadline_ticks(plugin.limits.deadline));
        let error = match f(instance).await {
            Ok(value) => {
                slot.consecutive_faults = 0;
                slot.last_delay = None;
                return Ok(Ok(value));
            }
            Err(error) => error,
        };
        let guest_stderr = instance.store.data().take_recent_stderr();
        slot.instance = None;
        slot.consecutive_faults += 1;
        let (kind, fault) = describe_fault(&error, plugin);
        let description = format!("Plugin '{}' {fault} in {what}", plugin.name);
        plugin.health.fault(kind, &description);
        tracing::error!(
            plugin = &*plugin.name,
            path = %plugin.path.display(),
            call = %what,
            guest_stderr,
            "plugin fault: {fault}; the instance will be rebuilt. {error:#}"
        );
        if slot.consecutive_faults >= FAULTS_BEFORE_BACKOFF {
            let reason = format!(
                "Plugin '{}' is unavailable after {} faults in a row (last: {fault} in {what})",
                plugin.name, slot.consecutive_faults
            );
            start_backoff(&mut slot, plugin, reason);
            schedule_recovery(&mut slot, &self.slots[index], plugin, &self.services);
        }
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
                let _ = plugins
                    .call(index, Call::Connect, async |i: &mut Instance| {
                        i.exports.on_connect(&mut i.store, socket).await
                    })
                    .await;
            }
        }
    }

    /// Tell every plugin with the `disconnect` hook that a socket is gone.
    pub async fn disconnected(self: &Rc<Self>, socket: &Socket, code: u16, reason: &str) {
        let plugins = self.newest();
        for (index, plugin) in plugins.set.plugins.iter().enumerate() {
            if plugin.has_hook(Hook::Disconnect) {
                let _ = plugins
                    .call(index, Call::Disconnect, async |i: &mut Instance| {
                        i.exports
                            .on_disconnect(&mut i.store, socket, code, reason)
                            .await
                    })
                    .await;
            }
        }
    }
}

/// Hand the state of `old` (an instance of the build being replaced) to
/// `new`, when the plugin exports `state`. Failures are logged: the new build
/// serves anyway, starting empty.
async fn hand_over_state(
    old: &mut Slot,
    old_plugin: &LoadedPlugin,
    new: &mut Slot,
    plugin: &LoadedPlugin,
) {
    let name = &*plugin.name;
    let Some(old_instance) = old.instance.as_mut() else {
        return;
    };
    let snapshot = match old_instance.snapshot(old_plugin.limits.deadline).await {
        Ok(Some(snapshot)) => snapshot,
        Ok(None) => return,
        Err(error) => {
            tracing::warn!(
                plugin = name,
                "state snapshot failed, the new build starts empty: {error:#}"
            );
            return;
        }
    };
    let Some(new_instance) = new.instance.as_mut() else {
        tracing::warn!(
            plugin = name,
            "the new build has no instance yet; its state starts empty"
        );
        return;
    };
    match new_instance
        .restore(snapshot.clone(), plugin.limits.deadline)
        .await
    {
        Ok(true) => tracing::info!(
            plugin = name,
            bytes = snapshot.len(),
            "state handed over to the new build"
        ),
        Ok(false) => tracing::info!(
            plugin = name,
            "the new build does not take state; it starts empty"
        ),
        Err(error) => {
            tracing::error!(
                plugin = name,
                "restoring state failed, the new build starts empty: {error:#}"
            );
            // A trap leaves the instance unusable; the next call rebuilds it.
            new.instance = None;
        }
    }
}

/// A slot with a fresh instance, or backing off when none can be built.
async fn new_slot(plugin: &Arc<LoadedPlugin>, services: &Arc<HostServices>) -> Rc<Mutex<Slot>> {
    let mut slot = Slot::default();
    let result = rebuild(&mut slot, plugin, services).await;
    let shared = Rc::new(Mutex::new(slot));
    if let Err(reason) = result {
        tracing::error!(plugin = &*plugin.name, "{reason}");
        let mut slot = shared.try_lock().expect("a new slot is not locked");
        schedule_recovery(&mut slot, &shared, plugin, services);
    }
    shared
}

/// Rebuild a backing-off instance as soon as its delay is over, without
/// waiting for an event: a worker that gets no traffic for this plugin must
/// not stay degraded (and the server unready) forever. One task per slot;
/// it runs on the worker's `LocalSet` until a rebuild succeeds or a reload
/// retires the slot.
fn schedule_recovery(
    slot: &mut Slot,
    shared: &Rc<Mutex<Slot>>,
    plugin: &Arc<LoadedPlugin>,
    services: &Arc<HostServices>,
) {
    if slot.recovery_scheduled || slot.backoff_until.is_none() {
        return;
    }
    slot.recovery_scheduled = true;
    let (shared, plugin, services) = (shared.clone(), plugin.clone(), services.clone());
    tokio::task::spawn_local(async move {
        loop {
            let until = shared.lock().await.backoff_until;
            if let Some(until) = until {
                tokio::time::sleep_until(until).await;
            }
            let mut slot = shared.lock().await;
            let waiting = slot
                .backoff_until
                .filter(|_| !slot.retired && slot.instance.is_none());
            match waiting {
                None => {
                    slot.recovery_scheduled = false;
                    return;
                }
                Some(until) if Instant::now() < until => continue,
                Some(_) => {
                    if rebuild(&mut slot, &plugin, &services).await.is_ok() {
                        slot.recovery_scheduled = false;
                        return;
                    }
                }
            }
        }
    });
}

/// Build a fresh instance into `slot`; on failure, back off and return why.
async fn rebuild(
    slot: &mut Slot,
    plugin: &LoadedPlugin,
    services: &Arc<HostServices>,
) -> Result<(), String> {
    match plugin.instantiate(services.clone()).await {
        Ok(instance) => {
            slot.instance = Some(instance);
            if slot.backoff_until.take().is_some() {
                plugin.health.backoff_ended();
                tracing::info!(
                    plugin = &*plugin.name,
                    "plugin recovered: instance rebuilt after a back-off"
                );
            }
            plugin.health.rebuilt();
            Ok(())
        }
        Err(error) => {
            let reason = format!("Plugin '{}' is unavailable: {error}", plugin.name);
            plugin.health.rebuild_failed(&reason);
            start_backoff(slot, plugin, reason.clone());
            Err(reason)
        }
    }
}

/// Refuse the plugin's events on this worker for a delay that doubles with
/// every back-off since the last successful call.
fn start_backoff(slot: &mut Slot, plugin: &LoadedPlugin, reason: String) {
    let delay = slot
        .last_delay
        .map_or(MIN_BACKOFF, |last| (last * 2).min(MAX_BACKOFF));
    slot.last_delay = Some(delay);
    let newly = slot.backoff_until.is_none();
    slot.backoff_until = Some(Instant::now() + delay);
    plugin.health.backoff_started(newly);
    tracing::warn!(
        plugin = &*plugin.name,
        delay_ms = delay.as_millis() as u64,
        "plugin backing off: {reason}"
    );
    slot.reason = reason;
}

impl std::fmt::Debug for WorkerPlugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPlugins")
            .field("set", &self.set)
            .finish_non_exhaustive()
    }
}
