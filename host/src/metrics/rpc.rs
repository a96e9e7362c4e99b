//! RPC durations and errors: one histogram per (plugin, event) per worker,
//! written without locks and merged when scraped.

use super::add_own;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Upper bounds of the RPC duration buckets, in seconds: 10 µs to 10 s.
pub(super) const RPC_BUCKETS: [f64; 19] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// [`RPC_BUCKETS`] in nanoseconds, what a call's duration is compared with.
const RPC_BUCKET_NANOS: [u64; 19] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Most (plugin, event) histograms one worker keeps; events past it are
/// routed and answered as usual but not measured.
pub(super) const MAX_RPC_SERIES: usize = 4096;

/// When an RPC started; see [`RpcStats::observe`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Started(quanta::Instant);

/// Now, to time an RPC with.
#[inline]
pub(crate) fn start() -> Started {
    Started(quanta::Instant::now())
}

/// One worker's measurements of one RPC event of one plugin. Written by its
/// worker only (see [`add_own`]), read by scrapes.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct RpcStats {
    /// Calls per bucket (not cumulative), the last one past every bound.
    buckets: [AtomicU64; RPC_BUCKETS.len() + 1],
    /// Total duration, in nanoseconds.
    sum_nanos: AtomicU64,
    /// Calls answered with an error.
    errors: AtomicU64,
}

impl RpcStats {
    /// Count an RPC that started at `started` and is answered now, with an
    /// error when `failed`.
    #[inline]
    pub(crate) fn observe(&self, started: Started, failed: bool) {
        let nanos = u64::try_from(started.0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let bucket = RPC_BUCKET_NANOS.partition_point(|&bound| bound < nanos);
        add_own(&self.buckets[bucket], 1);
        add_own(&self.sum_nanos, nanos);
        if failed {
            add_own(&self.errors, 1);
        }
    }

    /// Add these measurements to `into`.
    fn add_to(&self, into: &mut RpcTotals) {
        for (total, bucket) in into.buckets.iter_mut().zip(&self.buckets) {
            *total += bucket.load(Ordering::Relaxed);
        }
        into.sum_nanos += self.sum_nanos.load(Ordering::Relaxed);
        into.errors += self.errors.load(Ordering::Relaxed);
    }
}

/// One worker's [`RpcStats`] by plugin and event. Locked when a worker
/// builds its routing (start, reload) and by scrapes, never per RPC.
#[derive(Debug, Default)]
pub(crate) struct RpcTable {
    series: Mutex<RpcSeries>,
}

#[derive(Debug, Default)]
struct RpcSeries {
    by_plugin: BTreeMap<Arc<str>, BTreeMap<Arc<str>, Arc<RpcStats>>>,
    count: usize,
    /// Whether reaching [`MAX_RPC_SERIES`] was logged.
    warned: bool,
}

impl RpcTable {
    /// The histogram of RPC `event` of `plugin` on this worker, created on
    /// first use. The same for every build of the plugin, so that a reload
    /// does not reset it.
    pub(crate) fn series(&self, plugin: &Arc<str>, event: &str) -> Arc<RpcStats> {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let series = &mut *series;
        if let Some(stats) = series.by_plugin.get(plugin).and_then(|e| e.get(event)) {
            return stats.clone();
        }
        let stats = Arc::new(RpcStats::default());
        if series.count >= MAX_RPC_SERIES {
            if !std::mem::replace(&mut series.warned, true) {
                tracing::warn!(
                    plugin = &**plugin,
                    event,
                    limit = MAX_RPC_SERIES,
                    "too many RPC events to measure: this one and later ones get no histogram"
                );
            }
            return stats;
        }
        series.count += 1;
        series
            .by_plugin
            .entry(plugin.clone())
            .or_default()
            .insert(event.into(), stats.clone());
        stats
    }

    /// Add this worker's measurements to `totals`.
    pub(super) fn add_to(&self, totals: &mut BTreeMap<(Arc<str>, Arc<str>), RpcTotals>) {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        for (plugin, events) in &series.by_plugin {
            for (event, stats) in events {
                stats.add_to(totals.entry((plugin.clone(), event.clone())).or_default());
            }
        }
    }
}

/// RPC measurements summed over the workers.
#[derive(Debug, Default)]
pub(super) struct RpcTotals {
    pub(super) buckets: [u64; RPC_BUCKETS.len() + 1],
    pub(super) sum_nanos: u64,
    pub(super) errors: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_bounds_agree() {
        for (seconds, nanos) in RPC_BUCKETS.iter().zip(RPC_BUCKET_NANOS) {
            assert_eq!((seconds * 1e9).round() as u64, nanos);
        }
        assert!(RPC_BUCKET_NANOS.is_sorted());
    }

    #[test]
    fn observations_land_in_their_bucket() {
        let stats = RpcStats::default();
        let now = quanta::Instant::now();
        // A duration equal to a bound belongs to that bound's bucket (`le`).
        let at = |nanos: u64| Started(now - Duration::from_nanos(nanos));
        stats.observe(at(20_000), false);
        stats.observe(at(20_000_000_000), true);
        let mut totals = RpcTotals::default();
        stats.add_to(&mut totals);
        assert_eq!(totals.errors, 1);
        assert_eq!(totals.buckets.iter().sum::<u64>(), 2);
        assert_eq!(totals.buckets[RPC_BUCKETS.len()], 1, "past 10 s: +Inf");
        let first = totals.buckets.iter().position(|&count| count > 0).unwrap();
        assert!(
            first <= 2,
            "about 20 µs is in the 25 µs bucket, got bucket {first}"
        );
    }

    #[test]
    fn series_are_shared_by_name_and_capped() {
        let table = RpcTable::default();
        let echo: Arc<str> = "echo".into();
        let a = table.series(&echo, "echo");
        let b = table.series(&echo, "echo");
        assert!(Arc::ptr_eq(&a, &b));
        for index in 0..MAX_RPC_SERIES + 10 {
            table.series(&echo, &format!("event{index}"));
        }
        let mut totals = BTreeMap::new();
        table.add_to(&mut totals);
        assert_eq!(totals.len(), MAX_RPC_SERIES);
    }
}
