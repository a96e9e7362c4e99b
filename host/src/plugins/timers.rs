//! Timers plugins set with `set-timer`, fired into their `on-timer` export.
//!
//! One table per worker, keyed by plugin name and timer id, apart from the
//! plugin's instance: a timer outlives the instance that set it (a rebuild
//! after a fault, a hot swap) and fires, on the worker that set it, into
//! whichever build of the plugin serves there when it is due. It fires once
//! per due time: a one-shot timer leaves the table as it fires, and a
//! repeating one is due again a period after its last due time. A worker
//! that falls more than a whole period behind (a stalled machine) skips the
//! due times it missed instead of firing them in a burst. Timers live in
//! memory: a restart forgets them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The longest delay a timer may have.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);
/// The longest timer id, in bytes.
pub(crate) const MAX_ID_BYTES: usize = 1024;

/// Why a timer was not set.
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum TimerError {
    /// The id is empty or too long.
    #[error("a timer id must be 1 to {MAX_ID_BYTES} bytes long")]
    BadId,
    /// The delay is past [`MAX_DELAY`].
    #[error("a timer's delay must be at most {} ms (a year)", MAX_DELAY.as_millis())]
    TooLong,
    /// A repeating timer with no period would fire without end.
    #[error("a repeating timer needs a delay of at least 1 ms")]
    ZeroPeriod,
    /// The plugin has as many timers pending on this worker as it may.
    #[error(
        "plugin '{plugin}' has {limit} timers pending on this worker, its limit \
         (--plugin-max-timers, or max-timers in [plugin.{plugin}])"
    )]
    TooMany {
        /// The plugin.
        plugin: Arc<str>,
        /// Its limit.
        limit: usize,
    },
}

/// A timer as the table keeps it.
#[derive(Debug)]
struct Timer {
    due: Instant,
    period: Option<Duration>,
    /// Which setting of the id this is: a queue entry of an earlier
    /// setting (replaced) is ignored when it comes up.
    generation: u64,
}

/// A plugin's timer, by plugin name and id.
type Key = (Arc<str>, String);

/// Timers by key, and their due times in order.
#[derive(Debug, Default)]
struct Table {
    timers: HashMap<Key, Timer>,
    /// Pending timers per plugin, for the cap.
    per_plugin: HashMap<Arc<str>, usize>,
    /// Due times, earliest first; entries of replaced timers and dropped plugins
    /// stay until they come up (or the queue is compacted).
    queue: BinaryHeap<Reverse<(Instant, u64, Key)>>,
    next_generation: u64,
}

/// One worker's timers, shared by its plugin instances (which set them)
/// and its timer task (which fires them).
#[derive(Debug, Default)]
pub(crate) struct WorkerTimers {
    table: Mutex<Table>,
    /// Wakes the timer task when a timer becomes the earliest.
    wake: Notify,
}

impl WorkerTimers {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Set (or replace) timer `id` of `plugin`, due after `delay` and then
    /// every `delay` if `repeat`; at most `limit` pending per plugin.
    pub(crate) fn set(
        &self,
        plugin: &Arc<str>,
        id: String,
        delay: Duration,
        repeat: bool,
        limit: usize,
    ) -> Result<(), TimerError> {
        if id.is_empty() || id.len() > MAX_ID_BYTES {
            return Err(TimerError::BadId);
        }
        if delay > MAX_DELAY {
            return Err(TimerError::TooLong);
        }
        if repeat && delay.is_zero() {
            return Err(TimerError::ZeroPeriod);
        }
        let due = Instant::now() + delay;
        let mut table = self.table();
        let key = (plugin.clone(), id);
        let replacing = table.timers.contains_key(&key);
        let pending = table.per_plugin.get(plugin).copied().unwrap_or(0);
        if !replacing && pending >= limit {
            return Err(TimerError::TooMany {
                plugin: plugin.clone(),
                limit,
            });
        }
        let earliest = table.queue.peek().map(|Reverse((due, ..))| *due);
        table.next_generation += 1;
        let generation = table.next_generation;
        table.queue.push(Reverse((due, generation, key.clone())));
        let timer = Timer {
            due,
            period: repeat.then_some(delay),
            generation,
        };
        if table.timers.insert(key, timer).is_none() {
            *table.per_plugin.entry(plugin.clone()).or_default() += 1;
        }
        table.compact();
        drop(table);
        if earliest.is_none_or(|earliest| due < earliest) {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Cancel timer `id` of `plugin`; whether it was pending. Its queue
    /// entry stays until it comes up (or the queue is compacted) and is
    /// then ignored.
    pub(crate) fn cancel(&self, plugin: &Arc<str>, id: String) -> bool {
        let mut table = self.table();
        let cancelled = table.remove(&(plugin.clone(), id)).is_some();
        table.compact();
        cancelled
    }

    /// Drop every timer of the plugins `keep` says no.
    pub(crate) fn retain_plugins(&self, mut keep: impl FnMut(&str) -> bool) {
        let mut table = self.table();
        table.timers.retain(|(plugin, _), _| keep(plugin));
        table.per_plugin.retain(|plugin, _| keep(plugin));
        table.compact();
    }

    /// Take the timers due at `now`, earliest first, rescheduling the
    /// repeating ones.
    pub(crate) fn take_due(&self, now: Instant) -> Vec<Key> {
        let mut table = self.table();
        let mut due = Vec::new();
        while table
            .queue
            .peek()
            .is_some_and(|Reverse((at, ..))| *at <= now)
        {
            let Some(Reverse((at, generation, key))) = table.queue.pop() else {
                break;
            };
            // An entry of a timer that is gone (fired, or its plugin
            // dropped), or of an earlier setting of a replaced one. A live setting has exactly one entry: firing
            // pops it before pushing the next, and compaction rebuilds the
            // queue with one entry per timer.
            let Some(timer) = table.timers.get_mut(&key) else {
                continue;
            };
            if timer.generation != generation {
                continue;
            }
            match timer.period {
                Some(period) => {
                    timer.due = next_due(at, period, now);
                    let next = (timer.due, generation, key.clone());
                    table.queue.push(Reverse(next));
                }
                None => {
                    table.remove(&key);
                }
            }
            due.push(key);
        }
        due
    }

    /// When the earliest timer is due.
    fn next_due(&self) -> Option<Instant> {
        self.table().queue.peek().map(|Reverse((due, ..))| *due)
    }

    /// Wait until a timer may be due, then return the due ones (possibly
    /// none, after a wake-up).
    pub(crate) async fn wait_for_due(&self) -> Vec<Key> {
        match self.next_due() {
            Some(due) => {
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {}
                    () = self.wake.notified() => {}
                }
            }
            None => self.wake.notified().await,
        }
        self.take_due(Instant::now())
    }
}

impl Table {
    fn remove(&mut self, key: &Key) -> Option<Timer> {
        let timer = self.timers.remove(key)?;
        if let Some(count) = self.per_plugin.get_mut(&key.0) {
            *count -= 1;
            if *count == 0 {
                self.per_plugin.remove(&key.0);
            }
        }
        Some(timer)
    }

    /// Rebuild the queue from the live timers once stale entries (of
    /// replaced timers, dropped plugins) outnumber them, so that a plugin
    /// setting one id again and again does not grow it without bound.
    fn compact(&mut self) {
        if self.queue.len() <= 2 * self.timers.len() + 64 {
            return;
        }
        self.queue = self
            .timers
            .iter()
            .map(|(key, timer)| Reverse((timer.due, timer.generation, key.clone())))
            .collect();
    }
}

/// The due time after `last` for a timer repeating every `period`: the
/// first one after `now`, when the worker fell a whole period behind.
fn next_due(last: Instant, period: Duration, now: Instant) -> Instant {
    let next = last + period;
    if next > now {
        return next;
    }
    let behind = now.duration_since(last).as_nanos();
    let periods = behind / period.as_nanos() + 1;
    last + period.saturating_mul(u32::try_from(periods).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    //! The table is driven with explicit instants: `start` is read just
    //! before a timer is set, so a timer of delay `d` is due a few
    //! microseconds after `start + d`; the checks keep half a second away.

    use super::*;

    fn plugin(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    fn secs(seconds: f64) -> Duration {
        Duration::from_secs_f64(seconds)
    }

    #[test]
    fn a_one_shot_timer_fires_once_when_due() {
        let timers = WorkerTimers::default();
        let echo = plugin("echo");
        let start = Instant::now();
        timers.set(&echo, "a".into(), secs(5.0), false, 10).unwrap();
        assert!(timers.take_due(start + secs(4.5)).is_empty());
        assert_eq!(
            timers.take_due(start + secs(5.5)),
            vec![(echo.clone(), "a".into())]
        );
        assert!(timers.take_due(start + secs(60.0)).is_empty());
        assert!(timers.table().per_plugin.is_empty());
    }

    #[test]
    fn a_cancelled_timer_never_fires_and_frees_its_place() {
        let timers = WorkerTimers::default();
        let echo = plugin("echo");
        let start = Instant::now();
        timers.set(&echo, "a".into(), secs(1.0), true, 1).unwrap();
        assert!(timers.cancel(&echo, "a".into()));
        assert!(!timers.cancel(&echo, "a".into()), "cancelled twice");
        assert!(timers.take_due(start + secs(10.0)).is_empty());
        // Its place under the cap is free again.
        timers.set(&echo, "b".into(), secs(1.0), false, 1).unwrap();
    }

    #[test]
    fn setting_an_id_again_replaces_the_timer() {
        let timers = WorkerTimers::default();
        let echo = plugin("echo");
        let start = Instant::now();
        timers.set(&echo, "a".into(), secs(1.0), false, 10).unwrap();
        timers.set(&echo, "a".into(), secs(3.0), false, 10).unwrap();
        assert_eq!(timers.table().per_plugin["echo"], 1);
        assert!(timers.take_due(start + secs(2.5)).is_empty());
        assert_eq!(timers.take_due(start + secs(3.5)).len(), 1);
    }

    #[test]
    fn a_repeating_timer_fires_once_per_period_and_skips_what_a_stall_missed() {
        let timers = WorkerTimers::default();
        let echo = plugin("echo");
        let start = Instant::now();
        timers
            .set(&echo, "tick".into(), secs(10.0), true, 10)
            .unwrap();
        for period in 1..=3 {
            let at = start + secs(f64::from(period) * 10.0 + 0.5);
            assert_eq!(timers.take_due(at).len(), 1, "period {period}");
        }
        // A stall until 85.5 s: one firing (the one due at 40 s), then due
        // again on the period's grid, at 90 s.
        assert_eq!(timers.take_due(start + secs(85.5)).len(), 1);
        assert!(timers.take_due(start + secs(89.5)).is_empty());
        assert_eq!(timers.take_due(start + secs(90.5)).len(), 1);
    }

    #[test]
    fn the_cap_counts_per_plugin_and_replacing_is_not_adding() {
        let timers = WorkerTimers::default();
        let (echo, chat) = (plugin("echo"), plugin("chat"));
        let second = secs(1.0);
        timers.set(&echo, "a".into(), second, false, 2).unwrap();
        timers.set(&echo, "b".into(), second, false, 2).unwrap();
        timers.set(&echo, "b".into(), second, false, 2).unwrap();
        assert_eq!(
            timers.set(&echo, "c".into(), second, false, 2),
            Err(TimerError::TooMany {
                plugin: echo.clone(),
                limit: 2
            })
        );
        timers.set(&chat, "c".into(), second, false, 2).unwrap();
    }

    #[test]
    fn bad_arguments_are_refused() {
        let timers = WorkerTimers::default();
        let echo = plugin("echo");
        let set = |id: &str, delay, repeat| timers.set(&echo, id.into(), delay, repeat, 10);
        assert_eq!(set("", Duration::ZERO, false), Err(TimerError::BadId));
        assert_eq!(
            set(&"x".repeat(MAX_ID_BYTES + 1), Duration::ZERO, false),
            Err(TimerError::BadId)
        );
        assert_eq!(set("a", Duration::ZERO, true), Err(TimerError::ZeroPeriod));
        assert_eq!(
            set("a", MAX_DELAY + Duration::from_millis(1), false),
            Err(TimerError::TooLong)
        );
    }

    #[test]
    fn resetting_one_id_does_not_grow_the_queue_without_bound() {
        let timers = WorkerTimers::default();
        let echo = plugin("echo");
        for _ in 0..10_000 {
            timers
                .set(&echo, "a".into(), secs(60.0), false, 10)
                .unwrap();
        }
        assert!(timers.table().queue.len() <= 2 + 64);
    }

    #[test]
    fn dropping_a_plugin_drops_its_timers() {
        let timers = WorkerTimers::default();
        let (echo, chat) = (plugin("echo"), plugin("chat"));
        let start = Instant::now();
        timers.set(&echo, "a".into(), secs(1.0), false, 10).unwrap();
        timers.set(&chat, "b".into(), secs(1.0), false, 10).unwrap();
        timers.retain_plugins(|name| name != "echo");
        assert_eq!(timers.take_due(start + secs(1.5)), vec![(chat, "b".into())]);
    }
}
