//! The deadline of a plugin call, counted in the time the guest actually
//! runs, and the yields that let a long call share its worker.
//!
//! A call runs only inside `poll` of its future (wasmtime runs the guest on
//! a fiber that suspends when it waits for the host), so the sum of the
//! durations of those polls is the guest's running time: time spent
//! waiting for Redis or a network answer does not count. The engine's epoch
//! ticks every [`EPOCH_TICK`](super::engine::EPOCH_TICK); at each tick past
//! a call's epoch deadline wasmtime asks [`on_epoch`] what to do: stop the
//! call when its budget is used, otherwise yield to the worker's other
//! tasks and go on.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use thiserror::Error;
use wasmtime::UpdateDeadline;

/// A call ran longer than its deadline; the error that ends it.
#[derive(Debug, Error)]
#[error("the call ran for {used:?} of guest time, past its deadline of {budget:?}")]
pub(super) struct DeadlineExceeded {
    /// Guest time used.
    pub used: Duration,
    /// The deadline.
    pub budget: Duration,
}

/// How long a call may run without yielding to the worker's other tasks.
const RUN_BEFORE_YIELD: Duration = Duration::from_millis(1);

/// Nanoseconds since a process-wide origin, for atomics.
fn now_nanos() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The guest time of the call an instance runs. Shared between the store
/// (read by [`on_epoch`]) and the future of the call ([`Metered`]).
#[derive(Debug, Default)]
pub(super) struct CpuMeter {
    /// The call's deadline, in nanoseconds of guest time.
    budget: AtomicU64,
    /// Guest time of the finished polls of the call.
    used: AtomicU64,
    /// When the poll in progress started (0: no poll in progress).
    running_since: AtomicU64,
}

impl CpuMeter {
    /// A new call with `budget` of guest time starts.
    pub(super) fn start_call(&self, budget: Duration) {
        let budget = u64::try_from(budget.as_nanos()).unwrap_or(u64::MAX);
        self.budget.store(budget, Ordering::Relaxed);
        self.used.store(0, Ordering::Relaxed);
        self.running_since.store(0, Ordering::Relaxed);
    }

    fn enter(&self) {
        self.running_since
            .store(now_nanos().max(1), Ordering::Relaxed);
    }

    fn leave(&self) {
        let since = self.running_since.swap(0, Ordering::Relaxed);
        if since != 0 {
            self.used
                .fetch_add(now_nanos().saturating_sub(since), Ordering::Relaxed);
        }
    }

    /// Guest time used so far, and time run in the poll in progress.
    fn usage(&self) -> (Duration, Duration) {
        let since = self.running_since.load(Ordering::Relaxed);
        let current = if since == 0 {
            0
        } else {
            now_nanos().saturating_sub(since)
        };
        let used = self.used.load(Ordering::Relaxed) + current;
        (Duration::from_nanos(used), Duration::from_nanos(current))
    }

    fn budget(&self) -> Duration {
        Duration::from_nanos(self.budget.load(Ordering::Relaxed))
    }
}

/// What to do when a running call passes its epoch deadline: end it once
/// its guest time reaches its budget; yield to the worker's other tasks when
/// it has run a while without a pause; otherwise go on for another tick.
pub(super) fn on_epoch(meter: &CpuMeter) -> wasmtime::Result<UpdateDeadline> {
    let (used, current) = meter.usage();
    let budget = meter.budget();
    if used >= budget {
        return Err(DeadlineExceeded { used, budget }.into());
    }
    if current >= RUN_BEFORE_YIELD {
        return Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        ));
    }
    Ok(UpdateDeadline::Continue(1))
}

/// A call's future, with the time of each poll charged to its meter.
pub(super) struct Metered<'a, F> {
    inner: Pin<&'a mut F>,
    meter: &'a CpuMeter,
}

impl<'a, F> Metered<'a, F> {
    /// Charge the polls of `inner` to `meter`.
    pub(super) fn new(inner: Pin<&'a mut F>, meter: &'a CpuMeter) -> Self {
        Metered { inner, meter }
    }
}

impl<F: Future> Future for Metered<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.meter.enter();
        let polled = self.inner.as_mut().poll(cx);
        self.meter.leave();
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_time_inside_polls_counts() {
        let meter = CpuMeter::default();
        meter.start_call(Duration::from_secs(60));
        meter.enter();
        std::thread::sleep(Duration::from_millis(5));
        meter.leave();
        // Time between polls (the guest waits for the host) is not charged.
        std::thread::sleep(Duration::from_millis(200));
        let (used, current) = meter.usage();
        assert!(
            used >= Duration::from_millis(5) && used < Duration::from_millis(200),
            "{used:?}"
        );
        assert_eq!(current, Duration::ZERO);
        assert!(matches!(on_epoch(&meter), Ok(UpdateDeadline::Continue(1))));
    }

    /// Sleeps only ever overshoot, so each check holds on a loaded machine:
    /// the budget that must not be reached is far away, the one that must
    /// be is slept past. (A 2 ms budget with a 1 ms sleep failed in CI.)
    #[test]
    fn a_used_budget_ends_the_call_and_a_long_poll_yields() {
        let meter = CpuMeter::default();
        meter.start_call(Duration::from_secs(60));
        meter.enter();
        std::thread::sleep(RUN_BEFORE_YIELD);
        assert!(matches!(
            on_epoch(&meter),
            Ok(UpdateDeadline::YieldCustom(1, _))
        ));
        meter.start_call(Duration::from_millis(2));
        meter.enter();
        std::thread::sleep(Duration::from_millis(3));
        let Err(error) = on_epoch(&meter) else {
            panic!("a used budget must end the call")
        };
        assert!(error.downcast_ref::<DeadlineExceeded>().is_some());
    }
}
