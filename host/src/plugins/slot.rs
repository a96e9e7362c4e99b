//! One worker's state for one plugin: its instance, and the fault policy.
//!
//! The rule: a fault caused by a call costs that call and a rebuild of the
//! instance, nothing more. Two things make a plugin refuse calls for a
//! while, answering `PluginUnavailable` at once:
//!
//! - **The plugin cannot be rebuilt** (its `init` fails or traps): it backs
//!   off on this worker for everyone, for a delay that doubles from
//!   [`MIN_BACKOFF`] to [`MAX_BACKOFF`], and a task rebuilds it when the
//!   delay ends; the first good rebuild ends the back-off. No client can
//!   cause this: `init` sees only the operator's config.
//! - **One socket's calls fault [`FAULTS_BEFORE_BACKOFF`] times within
//!   [`FAULT_WINDOW`]**: that socket alone backs off from that plugin, for a
//!   delay that doubles the same way. Successful calls between do not wipe
//!   the count: a client alternating a call that runs into the deadline
//!   with a good one would otherwise hold the instance for a whole deadline
//!   per pair, forever.
//!   Every other socket is served as before, so a client calling a
//!   panicking RPC in a loop costs the plugin one rebuild per call it makes
//!   until it backs off, and makes it unavailable to nobody else.

use super::fault::CallFailure;
use super::host_state::WorkerServices;
use super::loaded::{Instance, LoadedPlugin};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Faulted calls of one socket within [`FAULT_WINDOW`] after which that
/// socket backs off from the plugin.
pub(super) const FAULTS_BEFORE_BACKOFF: u32 = 10;
/// How long a socket's faults count toward its back-off; a socket with no
/// fault for this long starts again from nothing (its doubling included).
pub(super) const FAULT_WINDOW: Duration = Duration::from_secs(10);
/// The first back-off delay.
pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// The longest back-off delay.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A delay that doubles with each back-off, until something succeeds.
#[derive(Debug, Default)]
struct Backoff {
    /// While it lasts: when calls are taken again.
    until: Option<Instant>,
    /// The last delay, kept until a success so that repeated back-offs double.
    last_delay: Option<Duration>,
    /// Why calls are refused meanwhile.
    reason: String,
}

impl Backoff {
    /// Whether calls are refused now.
    fn is_active(&self) -> bool {
        self.until.is_some_and(|until| Instant::now() < until)
    }

    /// Start backing off for the next delay; its length.
    fn start(&mut self, reason: String) -> Duration {
        let delay = self
            .last_delay
            .map_or(MIN_BACKOFF, |last| (last * 2).min(MAX_BACKOFF));
        self.last_delay = Some(delay);
        self.until = Some(Instant::now() + delay);
        self.reason = reason;
        delay
    }
}

/// Faults caused by one socket's calls to the plugin.
#[derive(Debug)]
struct SocketFaults {
    /// Faults since `counting_since`.
    recent: u32,
    /// When the current count began.
    counting_since: Instant,
    /// When the last fault happened.
    last_fault: Instant,
    backoff: Backoff,
}

impl SocketFaults {
    fn new(now: Instant) -> Self {
        SocketFaults {
            recent: 0,
            counting_since: now,
            last_fault: now,
            backoff: Backoff::default(),
        }
    }
}

/// One worker's state for one plugin.
#[derive(Default)]
pub(super) struct Slot {
    /// The live instance; `None` after a fault until a call rebuilds it.
    pub(super) instance: Option<Instance>,
    /// The plugin's back-off on this worker, when it cannot be rebuilt.
    backoff: Backoff,
    /// Sockets whose calls faulted within [`FAULT_WINDOW`], by socket id.
    by_socket: HashMap<String, SocketFaults>,
    /// Set when a reload replaced this plugin: calls that were waiting for
    /// the slot go to the successor instead.
    pub(super) retired: bool,
    /// Whether a task will rebuild the instance when its back-off ends.
    recovery_scheduled: bool,
}

impl Slot {
    /// Why a call from `socket` (none for calls no socket makes) must be
    /// refused now, if it must.
    pub(super) fn refusal(&self, socket: Option<&str>) -> Option<CallFailure> {
        if self.backoff.is_active() {
            return Some(CallFailure::Unavailable(self.backoff.reason.clone()));
        }
        let faults = self.by_socket.get(socket?)?;
        faults
            .backoff
            .is_active()
            .then(|| CallFailure::Unavailable(faults.backoff.reason.clone()))
    }

    /// A call from `socket` succeeded: the plugin's own back-off doubling
    /// starts again; a socket's fault record is forgotten once it has had
    /// no fault for [`FAULT_WINDOW`].
    pub(super) fn succeeded(&mut self, socket: Option<&str>) {
        self.backoff.last_delay = None;
        if let Some(socket) = socket
            && self
                .by_socket
                .get(socket)
                .is_some_and(|faults| faults.last_fault.elapsed() >= FAULT_WINDOW)
        {
            self.by_socket.remove(socket);
        }
    }

    /// A call from `socket` faulted (described as `fault`); back that
    /// socket off after too many within [`FAULT_WINDOW`].
    pub(super) fn faulted(&mut self, socket: Option<&str>, plugin: &LoadedPlugin, fault: &str) {
        let Some(socket) = socket else {
            return;
        };
        let now = Instant::now();
        let faults = self
            .by_socket
            .entry(socket.to_owned())
            .or_insert_with(|| SocketFaults::new(now));
        if now.duration_since(faults.last_fault) >= FAULT_WINDOW {
            *faults = SocketFaults::new(now);
        } else if now.duration_since(faults.counting_since) >= FAULT_WINDOW {
            faults.recent = 0;
            faults.counting_since = now;
        }
        faults.last_fault = now;
        faults.recent += 1;
        if faults.recent >= FAULTS_BEFORE_BACKOFF {
            let reason = format!(
                "Plugin '{}' is unavailable to this socket for a while: {} of its calls \
                 faulted within {} s (last: {fault}); other sockets are served",
                plugin.name,
                faults.recent,
                FAULT_WINDOW.as_secs()
            );
            let delay = faults.backoff.start(reason);
            faults.recent = 0;
            faults.counting_since = now;
            plugin.health.socket_backoff_started();
            tracing::warn!(
                plugin = &*plugin.name,
                socket,
                delay_ms = delay.as_millis() as u64,
                "socket backing off from the plugin: {FAULTS_BEFORE_BACKOFF} of its calls \
                 faulted within {} s",
                FAULT_WINDOW.as_secs()
            );
        }
    }

    /// A socket is gone: forget its faults.
    pub(super) fn forget(&mut self, socket: &str) {
        self.by_socket.remove(socket);
    }

    /// Drop the instance so that it is rebuilt, and mark the slot retired.
    pub(super) fn retire(&mut self) {
        self.retired = true;
        self.instance = None;
    }
}

/// A slot with a fresh instance, or backing off when none can be built.
pub(super) async fn new_slot(
    plugin: &Arc<LoadedPlugin>,
    services: &WorkerServices,
) -> Rc<Mutex<Slot>> {
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

/// The instance of `slot`, built first if a fault dropped it; on failure
/// the plugin backs off and a task will try again when the delay ends.
pub(super) async fn ensure_instance<'a>(
    slot: &'a mut Slot,
    shared: &Rc<Mutex<Slot>>,
    plugin: &Arc<LoadedPlugin>,
    services: &WorkerServices,
) -> Result<&'a mut Instance, CallFailure> {
    if slot.instance.is_none()
        && let Err(reason) = Box::pin(rebuild(slot, plugin, services)).await
    {
        schedule_recovery(slot, shared, plugin, services);
        return Err(CallFailure::Unavailable(reason));
    }
    let reason = &slot.backoff.reason;
    slot.instance
        .as_mut()
        .ok_or_else(|| CallFailure::Unavailable(reason.clone()))
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
    services: &WorkerServices,
) {
    if slot.recovery_scheduled || slot.backoff.until.is_none() {
        return;
    }
    slot.recovery_scheduled = true;
    let (shared, plugin, services) = (shared.clone(), plugin.clone(), services.clone());
    tokio::task::spawn_local(async move {
        loop {
            let until = shared.lock().await.backoff.until;
            if let Some(until) = until {
                tokio::time::sleep_until(until).await;
            }
            let mut slot = shared.lock().await;
            let waiting = slot
                .backoff
                .until
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
    services: &WorkerServices,
) -> Result<(), String> {
    match plugin.instantiate_on(services.clone()).await {
        Ok(instance) => {
            slot.instance = Some(instance);
            if slot.backoff.until.take().is_some() {
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
            let newly = slot.backoff.until.is_none();
            let delay = slot.backoff.start(reason.clone());
            plugin.health.backoff_started(newly);
            tracing::warn!(
                plugin = &*plugin.name,
                delay_ms = delay.as_millis() as u64,
                "plugin backing off: {reason}"
            );
            Err(reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_offs_double_up_to_the_longest_and_expire() {
        let mut backoff = Backoff::default();
        assert!(!backoff.is_active());
        assert_eq!(backoff.start("x".into()), MIN_BACKOFF);
        assert!(backoff.is_active());
        assert_eq!(backoff.start("x".into()), MIN_BACKOFF * 2);
        for _ in 0..20 {
            backoff.start("x".into());
        }
        assert_eq!(backoff.last_delay, Some(MAX_BACKOFF));
    }
}
