//! `loadgen report`: the median (with min and max) of every headline figure
//! for each server, side by side, with the ratio and the target.

use anyhow::{Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// One row of the table.
struct Metric {
    /// The `case` of the result lines (`rpc`, `fanout-rate`, ...).
    case: &'static str,
    /// The field of the result lines.
    field: &'static str,
    /// What the row says.
    title: &'static str,
    /// Whether more is better.
    higher_is_better: bool,
    /// How many times better than SocketCluster wasmcluster must be, if a
    /// target is set.
    target: Option<f64>,
}

const fn metric(
    case: &'static str,
    field: &'static str,
    title: &'static str,
    higher_is_better: bool,
    target: Option<f64>,
) -> Metric {
    Metric {
        case,
        field,
        title,
        higher_is_better,
        target,
    }
}

const METRICS: &[Metric] = &[
    metric("rpc", "ops_per_s", "rpc: ops/s", true, Some(10.0)),
    metric(
        "rpc",
        "ops_per_server_cpu_s",
        "rpc: ops per server CPU-second",
        true,
        Some(10.0),
    ),
    metric("rpc", "p50_ms", "rpc: latency p50 (ms)", false, None),
    metric("rpc", "p99_ms", "rpc: latency p99 (ms)", false, None),
    metric("rpc", "p999_ms", "rpc: latency p99.9 (ms)", false, None),
    metric(
        "rpc",
        "loadgen_cpu_s",
        "rpc: load generator CPU (s)",
        false,
        None,
    ),
    metric(
        "rpc-rate",
        "ops_per_server_cpu_s",
        "rpc at 80% of SocketCluster's peak: ops per server CPU-second",
        true,
        Some(5.0),
    ),
    metric(
        "rpc-rate",
        "p50_ms",
        "rpc at 80% of SocketCluster's peak: latency p50 (ms)",
        false,
        None,
    ),
    metric(
        "rpc-rate",
        "p99_ms",
        "rpc at 80% of SocketCluster's peak: latency p99 (ms)",
        false,
        None,
    ),
    metric(
        "rpc-rate",
        "late",
        "rpc at 80% of SocketCluster's peak: requests due while 10 were in flight",
        false,
        None,
    ),
    metric(
        "latency",
        "p50_ms",
        "rpc, 1 connection, 1 in flight: round trip p50 (ms)",
        false,
        Some(2.0),
    ),
    metric(
        "latency",
        "p99_ms",
        "rpc, 1 connection, 1 in flight: round trip p99 (ms)",
        false,
        None,
    ),
    metric("transmit", "ops_per_s", "transmit: events/s", true, None),
    metric(
        "transmit",
        "ops_per_server_cpu_s",
        "transmit: events per server CPU-second",
        true,
        None,
    ),
    metric(
        "fanout",
        "deliveries_per_s",
        "fanout (full speed): deliveries/s",
        true,
        Some(15.0),
    ),
    metric(
        "fanout",
        "deliveries_per_server_cpu_s",
        "fanout (full speed): deliveries per server CPU-second",
        true,
        None,
    ),
    metric(
        "fanout",
        "p99_ms",
        "fanout (full speed): end-to-end p99 (ms)",
        false,
        None,
    ),
    metric(
        "fanout",
        "lost",
        "fanout (full speed): publications not delivered",
        false,
        None,
    ),
    metric(
        "fanout-rate",
        "p50_ms",
        "fanout (fixed rate): end-to-end p50 (ms)",
        false,
        None,
    ),
    metric(
        "fanout-rate",
        "p99_ms",
        "fanout (fixed rate): end-to-end p99 (ms)",
        false,
        Some(5.0),
    ),
    metric(
        "idle",
        "bytes_per_connection",
        "idle: server memory per connection (bytes)",
        false,
        Some(5.0),
    ),
    metric(
        "hot-swap",
        "switch_ms",
        "hot-swap: SIGUSR2 to every connection on the new build, compiled meanwhile (ms)",
        false,
        None,
    ),
    metric(
        "hot-swap",
        "before_p99_ms",
        "hot-swap: RPC p99 before the swap (ms)",
        false,
        None,
    ),
    metric(
        "hot-swap",
        "during_p99_ms",
        "hot-swap: RPC p99 in the second after SIGUSR2 (ms)",
        false,
        None,
    ),
    metric("hot-swap", "errors", "hot-swap: failed calls", false, None),
    metric(
        "hot-swap",
        "closed",
        "hot-swap: connections closed",
        false,
        None,
    ),
    metric(
        "connect",
        "connects_per_s",
        "connect: handshakes/s",
        true,
        Some(10.0),
    ),
    metric(
        "connect",
        "p99_ms",
        "connect: handshake p99 (ms)",
        false,
        None,
    ),
    metric(
        "timers",
        "p50_ms",
        "timers: lateness p50, 10,000 pending (ms)",
        false,
        None,
    ),
    metric(
        "timers",
        "p99_ms",
        "timers: lateness p99, 10,000 pending (ms)",
        false,
        None,
    ),
    metric(
        "timers",
        "timers_per_server_cpu_s",
        "timers: set + fired + published per server CPU-second",
        true,
        None,
    ),
    metric(
        "fetch",
        "direct_p50_ms",
        "fetch: direct HTTP request p50 (ms)",
        false,
        None,
    ),
    metric(
        "fetch",
        "fetch_p50_ms",
        "fetch: RPC `fetch` of the same URL p50 (ms)",
        false,
        None,
    ),
    metric(
        "fetch",
        "overhead_p50_ms",
        "fetch: overhead the host adds, p50 (ms)",
        false,
        None,
    ),
    metric(
        "fetch",
        "overhead_p99_ms",
        "fetch: overhead the host adds, p99 (ms)",
        false,
        None,
    ),
];

/// Median, min and max of a set of runs.
struct Summary {
    median: f64,
    min: f64,
    max: f64,
    runs: usize,
}

fn summarize(mut values: Vec<f64>) -> Option<Summary> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    let median = if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    };
    Some(Summary {
        median,
        min: values[0],
        max: values[values.len() - 1],
        runs: values.len(),
    })
}

fn format_number(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

fn cell(summary: Option<&Summary>) -> String {
    match summary {
        None => "—".into(),
        Some(s) if s.runs == 1 => format_number(s.median),
        Some(s) => format!(
            "{} ({}–{})",
            format_number(s.median),
            format_number(s.min),
            format_number(s.max)
        ),
    }
}

/// Read the result lines and print the markdown report.
pub fn run(input: &Path, preamble: Option<&Path>) -> Result<()> {
    let text =
        std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    // (case, target, field) -> values of every run
    let mut values: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
    {
        let result: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}", input.display(), number + 1))?;
        let case = result["case"]
            .as_str()
            .or(result["scenario"].as_str())
            .unwrap_or("?")
            .to_owned();
        let target = result["target"].as_str().unwrap_or("?").to_owned();
        if let Value::Object(fields) = &result {
            for (field, value) in fields {
                if let Some(number) = value.as_f64() {
                    values
                        .entry((case.clone(), target.clone(), field.clone()))
                        .or_default()
                        .push(number);
                }
            }
        }
    }
    let get = |case: &str, target: &str, field: &str| {
        values
            .get(&(case.to_owned(), target.to_owned(), field.to_owned()))
            .and_then(|v| summarize(v.clone()))
    };

    let mut out = String::new();
    if let Some(preamble) = preamble {
        out.push_str(&std::fs::read_to_string(preamble)?);
        out.push('\n');
    }
    out.push_str(
        "| figure | SocketCluster | wasmcluster | wasmcluster vs SocketCluster | target | met |\n",
    );
    out.push_str("|---|---|---|---|---|---|\n");
    for metric in METRICS {
        let sc = get(metric.case, "socketcluster", metric.field);
        let wc = get(metric.case, "wasmcluster", metric.field);
        if sc.is_none() && wc.is_none() {
            continue;
        }
        let ratio = match (&sc, &wc) {
            (Some(sc), Some(wc)) if metric.higher_is_better && sc.median > 0.0 => {
                Some(wc.median / sc.median)
            }
            (Some(sc), Some(wc)) if !metric.higher_is_better && wc.median > 0.0 => {
                Some(sc.median / wc.median)
            }
            _ => None,
        };
        let ratio_text = ratio.map_or("—".into(), |r| {
            format!(
                "{}x {}",
                format_number(r),
                if metric.higher_is_better {
                    "more"
                } else {
                    "less"
                }
            )
        });
        let (target_text, met) = match (metric.target, ratio) {
            (Some(target), Some(ratio)) => (
                format!("≥ {target}x"),
                if ratio >= target { "yes" } else { "**no**" },
            ),
            (Some(target), None) => (format!("≥ {target}x"), "—"),
            (None, _) => (String::new(), ""),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            metric.title,
            cell(sc.as_ref()),
            cell(wc.as_ref()),
            ratio_text,
            target_text,
            met
        );
    }
    out.push_str("\nEach cell: median of the runs (min–max).\n");
    scale_out_table(&mut out, &get);
    shards_table(&mut out, &get);
    failover_table(&mut out, &get);
    kv_table(&mut out, &get);
    history_table(&mut out, &get);
    artifacts_table(&mut out, &get);
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

/// Rows of the scale-out table: a figure of a fan-out case on one host
/// against the same figure with publishers on a second host and the
/// subscribers' host reached through Redis (the case with `-cross-host`).
const SCALE_OUT: &[(&str, &str, &str, bool)] = &[
    (
        "fanout",
        "deliveries_per_s",
        "fanout (full speed): deliveries/s",
        true,
    ),
    (
        "fanout",
        "p99_ms",
        "fanout (full speed): end-to-end p99 (ms)",
        false,
    ),
    (
        "fanout",
        "lost",
        "fanout (full speed): publications not delivered",
        false,
    ),
    (
        "fanout-rate",
        "p50_ms",
        "fanout (fixed rate): end-to-end p50 (ms)",
        false,
    ),
    (
        "fanout-rate",
        "p99_ms",
        "fanout (fixed rate): end-to-end p99 (ms)",
        false,
    ),
];

/// The scale-out table, when the results have a cross-host run.
fn scale_out_table(out: &mut String, get: &impl Fn(&str, &str, &str) -> Option<Summary>) {
    if get("fanout-cross-host", "wasmcluster", "deliveries_per_s").is_none() {
        return;
    }
    out.push_str(
        "\n## Scale-out: one host against two hosts and Redis\n\n\
         Publishers on one wasmcluster host, subscribers on another, both with \
         `--broker redis://...` (a local `redis-server`), against the same fan-out on a \
         single host. All three processes share the machine's cores with the load \
         generator. At full speed a publish is acknowledged once it is delivered on its \
         own host and queued for Redis, so the publisher runs ahead of the other host and \
         the end-to-end latency there measures that backlog; the fixed-rate rows show \
         what the hop through Redis adds.\n\n\
         | figure | 1 host | 2 hosts + Redis | 2 hosts vs 1 |\n|---|---|---|---|\n",
    );
    for (case, field, title, higher_is_better) in SCALE_OUT {
        let one = get(case, "wasmcluster", field);
        let two = get(&format!("{case}-cross-host"), "wasmcluster", field);
        comparison_row(out, title, one, two, *higher_is_better);
    }
}

/// A row of a two-column comparison: both figures, and how many times
/// better the second is (by `higher_is_better`).
fn comparison_row(
    out: &mut String,
    title: &str,
    first: Option<Summary>,
    second: Option<Summary>,
    higher_is_better: bool,
) {
    let ratio = match (&first, &second) {
        (Some(first), Some(second)) if first.median > 0.0 && second.median > 0.0 => {
            Some(if higher_is_better {
                second.median / first.median
            } else {
                first.median / second.median
            })
        }
        _ => None,
    };
    let _ = writeln!(
        out,
        "| {title} | {} | {} | {} |",
        cell(first.as_ref()),
        cell(second.as_ref()),
        ratio.map_or("—".into(), |r| format!("{}x", format_number(r)))
    );
}

/// Rows of the shards table: field, title, and whether higher is better.
const SHARDS_ROWS: &[(&str, &str, bool)] = &[
    ("deliveries_per_s", "deliveries/s", true),
    ("p99_ms", "end-to-end p99 (ms)", false),
    ("lost", "publications not delivered", false),
];

/// Cross-host fan-out over many channels through one Redis against a
/// three-shard Redis Cluster, when the results have both.
fn shards_table(out: &mut String, get: &impl Fn(&str, &str, &str) -> Option<Summary>) {
    let one = "fanout-channels-cross-host";
    let three = "fanout-channels-cross-host-cluster";
    if get(three, "wasmcluster", "deliveries_per_s").is_none() {
        return;
    }
    out.push_str(
        "\n## Across hosts: one Redis against a three-shard Redis Cluster\n\n\
         The cross-host fan-out (full speed, 1,000 subscribers on one host, the publisher \
         on another) with the subscribers spread over 30 channels, which the publisher \
         takes in turn: through one `redis-server`, and through a Redis Cluster of three \
         primaries with a replica each (`--broker redis+cluster://...`), where the \
         channels spread over the shards (sharded pub/sub). Every process, the six Redis \
         nodes included, shares the machine's cores.\n\n\
         | figure | 1 Redis | 3 shards | 3 shards vs 1 |\n|---|---|---|---|\n",
    );
    for (field, title, higher_is_better) in SHARDS_ROWS {
        let single = get(one, "wasmcluster", field);
        let sharded = get(three, "wasmcluster", field);
        comparison_row(out, title, single, sharded, *higher_is_better);
    }
}

/// Rows of the failover table: field and title.
const FAILOVER_ROWS: &[(&str, &str)] = &[
    (
        "window_ms",
        "longest time without a cross-host delivery (ms)",
    ),
    (
        "recovered_ms",
        "from the kill to the first delivery after that gap (ms)",
    ),
    ("published", "publications made (200/s for 10 s)"),
    ("lost", "publications lost"),
    ("duplicates", "publications delivered twice"),
    ("out_of_order", "publications delivered out of order"),
];

/// The failover table, when the results have a failover run: one column
/// per topology.
fn failover_table(out: &mut String, get: &impl Fn(&str, &str, &str) -> Option<Summary>) {
    if get("failover-sentinel", "wasmcluster", "window_ms").is_none() {
        return;
    }
    out.push_str(
        "\n## Failover: the broker's primary killed under a numbered stream\n\n\
         Two wasmcluster hosts; a client of one host publishes numbered publications at \
         200/s on one channel, a subscriber on the other host receives them, and after 2 s \
         the primary behind that channel is killed with SIGKILL. **Sentinel**: a Redis \
         primary with one replica and three sentinels (`down-after-milliseconds 1000`), \
         through `--broker redis+sentinel://...`. **Cluster**: three primaries with a \
         replica each (`cluster-node-timeout 1000`), through `--broker \
         redis+cluster://...`; the primary killed is the one of the channel's shard. In \
         both about 1 s of the window is Redis deciding the primary is down. The \
         publisher's host sends a batch that failed again every 100 ms for up to 5 s, so \
         publications made in the window reach the new primary; they are lost (at most \
         once) if the dead primary took them without passing them to its replica, or if \
         they get there before the subscribers' host listens there again.\n\n\
         | figure | Sentinel | Cluster |\n|---|---|---|\n",
    );
    for (field, title) in FAILOVER_ROWS {
        let _ = writeln!(
            out,
            "| {title} | {} | {} |",
            cell(get("failover-sentinel", "wasmcluster", field).as_ref()),
            cell(get("failover-cluster", "wasmcluster", field).as_ref())
        );
    }
}

/// The engines of the KV table, as named in its cases (`kv-set-embedded`).
const KV_ENGINES: [&str; 3] = ["memory", "embedded", "redis"];

/// Rows of the KV table: operation, case suffix, field, title.
const KV_ROWS: &[(&str, &str, &str, &str)] = &[
    (
        "get",
        "",
        "ops_per_s",
        "get: ops/s, 50 connections × 4 in flight",
    ),
    ("get", "", "p99_ms", "get: p99 under that load (ms)"),
    ("get", "-single", "p50_ms", "get: p50 one at a time (ms)"),
    ("get", "-single", "p99_ms", "get: p99 one at a time (ms)"),
    (
        "set",
        "",
        "ops_per_s",
        "set: ops/s, 50 connections × 4 in flight",
    ),
    ("set", "", "p99_ms", "set: p99 under that load (ms)"),
    (
        "set",
        "",
        "ops_per_server_cpu_s",
        "set: ops per server CPU-second",
    ),
    ("set", "-single", "p50_ms", "set: p50 one at a time (ms)"),
    ("set", "-single", "p99_ms", "set: p99 one at a time (ms)"),
    (
        "cas-incr",
        "",
        "ops_per_s",
        "compare-and-set increment: ops/s, 50 × 4 on 16 counters",
    ),
    (
        "cas-incr",
        "",
        "p99_ms",
        "compare-and-set increment: p99 under that load (ms)",
    ),
    (
        "cas-incr",
        "-single",
        "p50_ms",
        "compare-and-set increment: p50 one at a time (ms)",
    ),
];

/// The KV table, when the results have KV runs: each operation is one RPC
/// to the `store` fixture doing it, so the figures include the WebSocket
/// round trip and the plugin call.
fn kv_table(out: &mut String, get: &impl Fn(&str, &str, &str) -> Option<Summary>) {
    if get("kv-set-memory", "wasmcluster", "ops_per_s").is_none() {
        return;
    }
    out.push_str(
        "\n## Key-value store: one operation per RPC, per engine\n\n\
         Each request is one RPC to the `store` test fixture doing one KV operation, so \
         every figure includes the WebSocket round trip and the plugin call (compare with \
         `rpc` above). memory: the in-process engine; embedded: `--data-dir` (redb, every \
         write acknowledged after the fsync of the commit that holds it, concurrent writes \
         sharing one commit); redis: `--broker` with a local `redis-server` without \
         persistence (`--save \"\" --appendonly no`). \"one at a time\": 1 connection, 1 \
         request in flight.\n\n\
         | figure | memory | embedded | redis |\n|---|---|---|---|\n",
    );
    for (operation, suffix, field, title) in KV_ROWS {
        let cells: Vec<String> = KV_ENGINES
            .iter()
            .map(|engine| {
                let case = format!("kv-{operation}-{engine}{suffix}");
                cell(get(&case, "wasmcluster", field).as_ref())
            })
            .collect();
        let _ = writeln!(out, "| {title} | {} |", cells.join(" | "));
    }
}

/// The channel history table, when the results have a recovery run:
/// recovery time, and fan-out with history against without.
fn history_table(out: &mut String, get: &impl Fn(&str, &str, &str) -> Option<Summary>) {
    if get("recovery", "wasmcluster", "p50_ms").is_none() {
        return;
    }
    out.push_str(
        "\n## Channel history\n\n\
         recovery: a subscriber that missed 10,000 publications (each about 100 bytes) \
         subscribes again with its position; the time from its `#subscribe` to the \
         `wasmcluster:history` report that follows the last of them (target: p99 under \
         50 ms, on one host); with `--broker`, the same with the history in Redis \
         Streams (a fresh `redis-server` on loopback). fanout: the full-speed fan-out above, against the same with history kept \
         for its channel (`history-size = 1000`).\n\n\
         | figure | wasmcluster |\n|---|---|\n",
    );
    for (case, field, title) in [
        (
            "recovery",
            "p50_ms",
            "recovery of 10,000 missed publications: p50 (ms)",
        ),
        (
            "recovery",
            "p99_ms",
            "recovery of 10,000 missed publications: p99 (ms)",
        ),
        (
            "recovery-redis",
            "p50_ms",
            "the same, history in Redis: p50 (ms)",
        ),
        (
            "recovery-redis",
            "p99_ms",
            "the same, history in Redis: p99 (ms)",
        ),
        (
            "fanout",
            "deliveries_per_s",
            "fanout without history: deliveries/s",
        ),
        (
            "fanout-history",
            "deliveries_per_s",
            "fanout with history: deliveries/s",
        ),
        (
            "fanout",
            "p99_ms",
            "fanout without history: end-to-end p99 (ms)",
        ),
        (
            "fanout-history",
            "p99_ms",
            "fanout with history: end-to-end p99 (ms)",
        ),
    ] {
        let _ = writeln!(
            out,
            "| {title} | {} |",
            cell(get(case, "wasmcluster", field).as_ref())
        );
    }
}

/// The example plugins as `make plugins` builds them (size, and the time
/// `wasmcluster check` takes to load one without the compiled-module
/// cache, which a cold hot swap pays), and the server binary as `make dist`
/// ships it; each against its target.
fn artifacts_table(out: &mut String, get: &impl Fn(&str, &str, &str) -> Option<Summary>) {
    if get("artifact-server", "wasmcluster", "bytes").is_none() {
        return;
    }
    out.push_str(
        "\n## Artifacts\n\n\
         Plugins as `make plugins` builds them (the size profile, then `wasmcluster strip`); \
         loaded: `wasmcluster check` without the compiled-module cache (read, compile, \
         link, the instance that answers the manifest), which a cold hot swap pays once. \
         `auth` needs its config to start, which `check` does not take. The server as \
         `make dist` ships it (function names kept; line tables in `wasmcluster.debug`).\n\n\
         | artifact | bytes | loaded (ms) | target | met |\n|---|---|---|---|---|\n",
    );
    for plugin in ["echo", "chat", "presence", "auth", "fetch"] {
        let case = format!("artifact-{plugin}");
        let size = get(&case, "wasmcluster", "wasm_bytes");
        let load = get(&case, "wasmcluster", "load_ms");
        let (target, met) = if plugin == "echo" {
            let met = size.as_ref().is_some_and(|s| s.median <= 400.0 * 1000.0)
                && load.as_ref().is_some_and(|s| s.median <= 50.0);
            (
                "≤ 400,000 bytes, ≤ 50 ms",
                if met { "yes" } else { "**no**" },
            )
        } else {
            ("", "")
        };
        let _ = writeln!(
            out,
            "| `{plugin}.wasm` | {} | {} | {target} | {met} |",
            cell(size.as_ref()),
            cell(load.as_ref()),
        );
    }
    let server = get("artifact-server", "wasmcluster", "bytes");
    let met = server
        .as_ref()
        .is_some_and(|s| s.median <= 40.0 * 1024.0 * 1024.0);
    let _ = writeln!(
        out,
        "| server binary | {} | | ≤ 41,943,040 bytes (40 MiB) | {} |",
        cell(server.as_ref()),
        if met { "yes" } else { "**no**" }
    );
    let _ = writeln!(
        out,
        "| its line tables (`wasmcluster.debug`, not shipped in the image) | {} | | | |",
        cell(get("artifact-server", "wasmcluster", "debug_bytes").as_ref())
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let s = summarize(vec![3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.runs), (2.0, 1.0, 3.0, 3));
        assert_eq!(summarize(vec![1.0, 4.0]).unwrap().median, 2.5);
        assert!(summarize(vec![]).is_none());
    }
}
