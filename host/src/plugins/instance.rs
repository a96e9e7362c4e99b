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

use super::Socket;
use super::bindings::wasmcluster::plugin::types::ErrorObject as WitError;
use super::engine::deadline_ticks;
use super::health::FaultKind;
use super::host_api::HostServices;
use super::limits::MemoryCapExceeded;
use super::loader::{Instance, LoadedPlugin, PluginSet};
use crate::metrics::{self, RpcStats};
use crate::protocol::{self, ErrorObject};
use crate::session::SessionStats;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;
use wasmtime::Trap;

/// Consecutive faulted calls (with no successful call between them) after
/// which a plugin instance backs off. A plugin that faults on some inputs
/// but serves others is rebuilt each time and never backs off.
pub const FAULTS_BEFORE_BACKOFF: u32 = 10;
/// The first back-off delay.
pub const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// The longest back-off delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Which export a call enters, and for which event: named in fault logs
/// and errors. Formatted only when something fails.
#[derive(Clone, Copy)]
pub(super) enum Call<'a> {
    Invoke(&'a str),
    Transmit(&'a str),
    Connect,
    Disconnect,
    Handshake,
    Authenticate,
    Subscribe(&'a str),
    PublishIn(&'a str),
    InvokeIn(&'a str),
    TransmitIn(&'a str),
}

impl Call<'_> {
    /// The event or channel the call is about, for error details.
    pub(super) fn subject(&self) -> &str {
        match self {
            Call::Invoke(subject)
            | Call::Transmit(subject)
            | Call::Subscribe(subject)
            | Call::PublishIn(subject)
            | Call::InvokeIn(subject)
            | Call::TransmitIn(subject) => subject,
            Call::Connect => "#connect",
            Call::Disconnect => "#disconnect",
            Call::Handshake => "#handshake",
            Call::Authenticate => "#authenticate",
        }
    }
}

impl std::fmt::Display for Call<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Call::Invoke(event) => write!(f, "on-invoke '{event}'"),
            Call::Transmit(event) => write!(f, "on-transmit '{event}'"),
            Call::Connect => f.write_str("on-connect"),
            Call::Disconnect => f.write_str("on-disconnect"),
            Call::Handshake => f.write_str("on-handshake"),
            Call::Authenticate => f.write_str("on-authenticate"),
            Call::Subscribe(channel) => write!(f, "on-subscribe '{channel}'"),
            Call::PublishIn(channel) => write!(f, "on-publish-in '{channel}'"),
            Call::InvokeIn(event) => write!(f, "on-invoke-in '{event}'"),
            Call::TransmitIn(event) => write!(f, "on-transmit-in '{event}'"),
        }
    }
}

/// Why a call into a plugin did not produce an answer.
#[derive(Debug)]
pub(super) enum CallFailure {
    /// The call trapped, timed out or ran out of memory.
    Fault(String),
    /// No instance could take the call (rebuild failed, backing off).
    Unavailable(String),
    /// A reload replaced the plugin while the call waited for it.
    Retired,
}

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
    pub(super) stats: Arc<SessionStats>,
    /// Each RPC event the set routes: its plugin and this worker's histogram
    /// of it, so that measuring an RPC costs no lookup beyond routing it.
    rpc_routes: HashMap<Box<str>, RpcRoute>,
    /// Set by a reload: the plugins that replaced these. Calls made on an
    /// outdated `WorkerPlugins` are passed on to it.
    successor: RefCell<Option<Rc<WorkerPlugins>>>,
}

/// Where an RPC event goes on a worker, and where it is measured.
struct RpcRoute {
    /// The plugin's index in the set.
    index: usize,
    /// This worker's measurements of the event.
    stats: Arc<RpcStats>,
}

/// The RPC routing of `set`, with a histogram of `stats` for each event.
fn rpc_routes(set: &PluginSet, stats: &SessionStats) -> HashMap<Box<str>, RpcRoute> {
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
}

impl WorkerPlugins {
    /// Instantiate and `init` every plugin for one worker. A plugin whose
    /// instance cannot be built here backs off and is retried. Counters go
    /// to a private [`SessionStats`]; a worker uses
    /// [`WorkerPlugins::start_counting`].
    pub async fn start(set: Arc<PluginSet>, services: Arc<HostServices>) -> Self {
        Self::start_counting(set, services, Arc::default()).await
    }

    /// [`WorkerPlugins::start`], counting on the worker's `stats`.
    pub async fn start_counting(
        set: Arc<PluginSet>,
        services: Arc<HostServices>,
        stats: Arc<SessionStats>,
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
    /// the instance first if an earlier fault dropped it.
    pub(super) async fn call<R>(
        &self,
        index: usize,
        what: Call<'_>,
        f: impl AsyncFnOnce(&mut Instance) -> wasmtime::Result<R>,
    ) -> Result<R, CallFailure> {
        let plugin = &self.set.plugins[index];
        let mut slot = self.slots[index].lock().await;
        if slot.retired {
            return Err(CallFailure::Retired);
        }
        if slot
            .backoff_until
            .is_some_and(|until| Instant::now() < until)
        {
            return Err(CallFailure::Unavailable(slot.reason.clone()));
        }
        if slot.instance.is_none()
            && let Err(reason) = Box::pin(rebuild(&mut slot, plugin, &self.services)).await
        {
            schedule_recovery(&mut slot, &self.slots[index], plugin, &self.services);
            return Err(CallFailure::Unavailable(reason));
        }
        let Some(instance) = slot.instance.as_mut() else {
            return Err(CallFailure::Unavailable(slot.reason.clone()));
        };
        instance
            .store
            .set_epoch_deadline(deadline_ticks(plugin.limits.deadline));
        match f(instance).await {
            Ok(value) => {
                slot.consecutive_faults = 0;
                slot.last_delay = None;
                Ok(value)
            }
            Err(error) => {
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
                Err(CallFailure::Fault(description))
            }
        }
    }

    /// Answer RPC `event`: the data, or the error object the client
    /// receives (`UnknownEventError` when no plugin declares it).
    pub async fn invoke(
        self: &Rc<Self>,
        socket: &Socket,
        event: &str,
        data: Option<&str>,
    ) -> Result<Option<String>, ErrorObject> {
        let mut plugins = self.newest();
        loop {
            // Unknown events are answered without being measured: they
            // create no label set.
            let Some(route) = plugins.rpc_routes.get(event) else {
                return Err(ErrorObject::unknown_event(event));
            };
            let started = metrics::start();
            match plugins.invoke_at(route.index, socket, event, data).await {
                Err(Retired) => plugins = plugins.newest(),
                Ok(answer) => {
                    route.stats.observe(started, answer.is_err());
                    return answer;
                }
            }
        }
    }

    async fn invoke_at(
        &self,
        index: usize,
        socket: &Socket,
        event: &str,
        data: Option<&str>,
    ) -> Result<Result<Option<String>, ErrorObject>, Retired> {
        let plugin = &self.set.plugins[index];
        let data = data.map(str::to_owned);
        let answer = match self
            .call(index, Call::Invoke(event), async |i: &mut Instance| {
                i.exports
                    .call_on_invoke(&mut i.store, socket, event, data.as_ref())
                    .await
            })
            .await
        {
            Ok(answer) => answer,
            Err(CallFailure::Retired) => return Err(Retired),
            Err(failure) => return Ok(Err(failure_error(failure, &plugin.name, event))),
        };
        Ok(match answer {
            Ok(Some(json)) if protocol::validate_json(&json).is_err() => Err(invalid_answer(
                &plugin.name,
                event,
                "answered with data that is not valid JSON",
            )),
            Ok(data) => Ok(data),
            Err(error) => {
                Err(plugin_error(error)
                    .unwrap_or_else(|why| invalid_answer(&plugin.name, event, &why)))
            }
        })
    }

    /// Deliver transmit `event` to the plugin that declares it; `false` when
    /// none does. Failures are logged where the call is made; a transmit
    /// has no one to answer.
    pub async fn transmit(
        self: &Rc<Self>,
        socket: &Socket,
        event: &str,
        data: Option<&str>,
    ) -> bool {
        let data = data.map(str::to_owned);
        let mut plugins = self.newest();
        loop {
            let Some(index) = plugins.set.transmit_route(event) else {
                return false;
            };
            let delivered = plugins
                .call(index, Call::Transmit(event), async |i: &mut Instance| {
                    i.exports
                        .call_on_transmit(&mut i.store, socket, event, data.as_ref())
                        .await
                })
                .await;
            match delivered {
                Err(CallFailure::Retired) => plugins = plugins.newest(),
                _ => return true,
            }
        }
    }

    /// Tell every plugin with the `connect` hook about a new socket.
    pub async fn connected(self: &Rc<Self>, socket: &Socket) {
        let plugins = self.newest();
        for (index, plugin) in plugins.set.plugins.iter().enumerate() {
            if plugin.on_connect {
                let _ = plugins
                    .call(index, Call::Connect, async |i: &mut Instance| {
                        i.exports.call_on_connect(&mut i.store, socket).await
                    })
                    .await;
            }
        }
    }

    /// Tell every plugin with the `disconnect` hook that a socket is gone.
    pub async fn disconnected(self: &Rc<Self>, socket: &Socket, code: u16, reason: &str) {
        let plugins = self.newest();
        for (index, plugin) in plugins.set.plugins.iter().enumerate() {
            if plugin.on_disconnect {
                let _ = plugins
                    .call(index, Call::Disconnect, async |i: &mut Instance| {
                        i.exports
                            .call_on_disconnect(&mut i.store, socket, code, reason)
                            .await
                    })
                    .await;
            }
        }
    }
}

/// A call found its plugin replaced by a reload; it is retried on the newer set.
struct Retired;

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

/// Say what kind of fault `error` is, for the log and the client.
fn describe_fault(error: &wasmtime::Error, plugin: &LoadedPlugin) -> (FaultKind, String) {
    if let Some(cap) = error.downcast_ref::<MemoryCapExceeded>() {
        return (
            FaultKind::OutOfMemory,
            format!("ran out of memory (cap {} MiB)", cap.cap / (1024 * 1024)),
        );
    }
    let trap = match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => {
            return (
                FaultKind::Timeout,
                format!(
                    "timed out (deadline {} ms)",
                    plugin.limits.deadline.as_millis()
                ),
            );
        }
        Some(Trap::StackOverflow) => "trapped (stack overflow)".to_owned(),
        Some(Trap::UnreachableCodeReached) => "trapped (panic or unreachable)".to_owned(),
        Some(trap) => format!("trapped ({trap})"),
        None => format!("failed ({error:#})"),
    };
    (FaultKind::Trap, trap)
}

pub(super) fn failure_error(failure: CallFailure, plugin: &str, event: &str) -> ErrorObject {
    let (name, message) = match failure {
        CallFailure::Fault(message) => ("PluginError", message),
        CallFailure::Unavailable(message) => ("PluginUnavailable", message),
        CallFailure::Retired => (
            "PluginUnavailable",
            format!("Plugin '{plugin}' was replaced while the call waited"),
        ),
    };
    ErrorObject::new(name, message)
        .with("plugin", plugin)
        .with("event", event)
}

pub(super) fn invalid_answer(plugin: &str, event: &str, why: &str) -> ErrorObject {
    ErrorObject::new(
        "PluginError",
        format!("Plugin '{plugin}' {why} to '{event}'"),
    )
    .with("plugin", plugin)
    .with("event", event)
}

/// The client-facing error object for an error a plugin returned, or why it
/// is not acceptable.
pub(super) fn plugin_error(error: WitError) -> Result<ErrorObject, String> {
    let details = match error.details.as_deref() {
        None => serde_json::Map::new(),
        Some(json) => match serde_json::from_str::<serde_json::Value>(json) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => return Err("answered with error details that are not a JSON object".into()),
        },
    };
    Ok(ErrorObject {
        name: error.name,
        message: error.message,
        details,
    })
}
