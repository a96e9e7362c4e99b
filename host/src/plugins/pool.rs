//! One worker's instances of one plugin: a small pool, grown on demand.
//!
//! A call leases an idle instance, or builds one when every instance is in
//! a call and the pool holds fewer than the plugin's `max-instances`;
//! otherwise it waits for one to come back. A call that waits on the host
//! (an HTTP response, a client's answer, Redis) keeps its instance, so
//! other events for the plugin go on in other instances and the worker
//! serves its other sockets meanwhile.
//!
//! Each instance has its own linear memory: what a plugin keeps in memory
//! is per instance. Plugins built against 0.1.0 get one instance per worker
//! (as before there was a pool), so their in-memory state is per worker.
//!
//! A call that faults drops its instance; the next call that finds none
//! idle builds a new one. When a build fails, the plugin backs off (see
//! `backoff`) and a task builds again when the delay ends.

use super::backoff::FaultPolicy;
use super::fault::{CallFailure, Retired};
use super::host_state::WorkerServices;
use super::loaded::{Instance, LoadedPlugin};
use std::cell::{RefCell, RefMut};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// One worker's instances of one plugin, and its fault policy there.
pub(super) struct InstancePool {
    /// One permit per instance the pool may hold; a call holds one while
    /// it runs. Closed when a reload retires the pool.
    permits: Semaphore,
    /// The most instances the pool may hold.
    max: usize,
    /// Everything else; borrowed briefly, never across an `await`.
    state: RefCell<PoolState>,
}

#[derive(Default)]
struct PoolState {
    /// Instances ready for a call, the most recently used last.
    idle: Vec<Instance>,
    /// Back-offs of the plugin and of its sockets on this worker.
    policy: FaultPolicy,
    /// Set when a reload replaced this plugin: calls that were waiting go
    /// to the successor instead, and instances coming back are dropped.
    retired: bool,
    /// Whether a task will build an instance when the back-off ends.
    recovery_scheduled: bool,
}

/// An instance taken from its pool for one call. Given back with
/// [`Lease::give_back`]; dropped otherwise (a fault, or a call cancelled
/// halfway), so that no instance in an unknown state serves again.
pub(super) struct Lease<'a> {
    pool: &'a InstancePool,
    instance: Instance,
    _permit: SemaphorePermit<'a>,
}

impl Lease<'_> {
    /// The leased instance.
    pub(super) fn instance(&mut self) -> &mut Instance {
        &mut self.instance
    }

    /// The call succeeded: the instance serves the next one.
    pub(super) fn give_back(self) {
        let mut state = self.pool.state.borrow_mut();
        if !state.retired {
            state.idle.push(self.instance);
        }
    }
}

/// The instances of the old build of a plugin, taken for a hot swap.
pub(super) struct Drained<'a> {
    /// Its instances that were idle, or came back within the grace time.
    pub(super) instances: Vec<Instance>,
    /// Held until the pool is retired, so that no call takes an instance
    /// meanwhile.
    _permits: Option<SemaphorePermit<'a>>,
}

impl InstancePool {
    /// A pool for `plugin` with one instance built, or backing off when it
    /// cannot be built.
    pub(super) async fn new(plugin: &Arc<LoadedPlugin>, services: &WorkerServices) -> Rc<Self> {
        let max = plugin.limits.max_instances.max(1);
        let pool = Rc::new(InstancePool {
            permits: Semaphore::new(max),
            max,
            state: RefCell::default(),
        });
        match pool.build(plugin, services).await {
            Ok(instance) => pool.state.borrow_mut().idle.push(instance),
            Err(reason) => {
                tracing::error!(plugin = &*plugin.name, "{reason}");
                pool.schedule_recovery(plugin, services);
            }
        }
        pool
    }

    /// The most instances this pool may hold.
    pub(super) fn max_instances(&self) -> usize {
        self.max
    }

    /// The fault policy, for a moment.
    pub(super) fn policy(&self) -> RefMut<'_, FaultPolicy> {
        RefMut::map(self.state.borrow_mut(), |state| &mut state.policy)
    }

    /// An instance for a call from `socket` (none for calls no socket
    /// makes): an idle one, or a new one when all are busy and the pool has
    /// room; waits while the pool is full. `Err(Retired)` when a reload
    /// replaced the plugin meanwhile; `Ok(Err(..))` when the plugin refuses
    /// the call (back-off) or no instance can be built.
    pub(super) async fn lease(
        self: &Rc<Self>,
        plugin: &Arc<LoadedPlugin>,
        services: &WorkerServices,
        socket: Option<&str>,
    ) -> Result<Result<Lease<'_>, CallFailure>, Retired> {
        let permit = self.permits.acquire().await.map_err(|_| Retired)?;
        let idle = {
            let mut state = self.state.borrow_mut();
            if state.retired {
                return Err(Retired);
            }
            if let Some(refused) = state.policy.refusal(socket) {
                return Ok(Err(refused));
            }
            state.idle.pop()
        };
        let instance = match idle {
            Some(instance) => instance,
            None => match Box::pin(self.build(plugin, services)).await {
                Ok(instance) => instance,
                Err(reason) => {
                    self.schedule_recovery(plugin, services);
                    return Ok(Err(CallFailure::Unavailable(reason)));
                }
            },
        };
        Ok(Ok(Lease {
            pool: self,
            instance,
            _permit: permit,
        }))
    }

    /// Take the instances of this (old) build for a hot swap: those idle
    /// now, and those whose calls end within `grace`. Instances still in a
    /// call after that finish it and are then dropped.
    pub(super) async fn drain(&self, grace: Duration) -> Drained<'_> {
        let all = tokio::time::timeout(grace, self.permits.acquire_many(self.max as u32))
            .await
            .ok()
            .and_then(Result::ok);
        Drained {
            instances: std::mem::take(&mut self.state.borrow_mut().idle),
            _permits: all,
        }
    }

    /// Put a freshly built or restored instance in the pool, if it has room.
    pub(super) fn add_idle(&self, instance: Instance) {
        let mut state = self.state.borrow_mut();
        if state.idle.len() < self.max {
            state.idle.push(instance);
        }
    }

    /// Take one idle instance out of a pool nobody calls yet (a new build
    /// receiving state in a hot swap).
    pub(super) fn take_idle(&self) -> Option<Instance> {
        self.state.borrow_mut().idle.pop()
    }

    /// A reload replaced this plugin: drop the idle instances, and send
    /// calls still waiting for one to the successor.
    pub(super) fn retire(&self) {
        let mut state = self.state.borrow_mut();
        state.retired = true;
        state.idle.clear();
        self.permits.close();
    }

    /// Build a fresh instance; on failure, back off and return why.
    async fn build(
        &self,
        plugin: &LoadedPlugin,
        services: &WorkerServices,
    ) -> Result<Instance, String> {
        let built = plugin.instantiate_on(services.clone()).await;
        let mut state = self.state.borrow_mut();
        let backoff = &mut state.policy.backoff;
        match built {
            Ok(instance) => {
                if backoff.until.take().is_some() {
                    plugin.health.backoff_ended();
                    tracing::info!(
                        plugin = &*plugin.name,
                        "plugin recovered: instance rebuilt after a back-off"
                    );
                }
                plugin.health.rebuilt();
                Ok(instance)
            }
            Err(error) => {
                let reason = format!("Plugin '{}' is unavailable: {error}", plugin.name);
                plugin.health.rebuild_failed(&reason);
                let newly = backoff.until.is_none();
                let delay = backoff.start(reason.clone());
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

    /// Build an instance as soon as the back-off is over, without waiting
    /// for an event: a worker that gets no traffic for this plugin must not
    /// stay degraded (and the server unready) forever. One task per pool;
    /// it runs on the worker's `LocalSet` until a build succeeds or a
    /// reload retires the pool.
    fn schedule_recovery(self: &Rc<Self>, plugin: &Arc<LoadedPlugin>, services: &WorkerServices) {
        {
            let mut state = self.state.borrow_mut();
            if state.recovery_scheduled || state.policy.backoff.until.is_none() {
                return;
            }
            state.recovery_scheduled = true;
        }
        let (pool, plugin, services) = (self.clone(), plugin.clone(), services.clone());
        tokio::task::spawn_local(async move {
            while pool.recovering().await {
                let Ok(_permit) = pool.permits.acquire().await else {
                    break;
                };
                if pool.has_idle() {
                    // An instance is there to serve (a call built one, or
                    // it was built before the failed build): no need for
                    // another until a call wants it.
                    pool.end_backoff(&plugin);
                    break;
                }
                if let Ok(instance) = pool.build(&plugin, &services).await {
                    pool.add_idle(instance);
                    break;
                }
            }
            pool.state.borrow_mut().recovery_scheduled = false;
        });
    }

    fn has_idle(&self) -> bool {
        !self.state.borrow().idle.is_empty()
    }

    /// End the plugin's back-off on this worker.
    fn end_backoff(&self, plugin: &LoadedPlugin) {
        if self
            .state
            .borrow_mut()
            .policy
            .backoff
            .until
            .take()
            .is_some()
        {
            plugin.health.backoff_ended();
        }
    }

    /// Wait for the end of the back-off; whether a build is still needed.
    async fn recovering(&self) -> bool {
        loop {
            let until = {
                let state = self.state.borrow();
                match state.policy.backoff.until {
                    Some(until) if !state.retired => until,
                    _ => return false,
                }
            };
            if Instant::now() >= until {
                return true;
            }
            tokio::time::sleep_until(until).await;
        }
    }
}
