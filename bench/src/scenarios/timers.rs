//! `timers`: many one-shot timers pending at once, set through RPC `later`
//! `{delay_ms, channel, data}` (wasmcluster: the `echo` plugin's timer and
//! its KV record; SocketCluster: `setTimeout` in the twin), each publishing
//! its due time on one channel when it fires. Figures: how late the
//! publications arrive after their due time, and timers per server
//! CPU-second (setting, firing and publishing included).

use super::{Common, GRACE, add_latency_and_cpu, histogram, open};
use crate::proc_stats::CpuMeter;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use testkit::{Connection, Incoming, reply_id};
use tokio::time::Instant;

/// Parameters of the timers scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct TimerArgs {
    /// Timers set, their due times spread over the measured window.
    #[arg(long, default_value_t = 10_000)]
    pub timers: usize,
}

/// The channel the timers publish on (`echo` publishes on `broadcast:*`
/// only).
const CHANNEL: &str = "broadcast:timers";
/// Calls of `later` in flight while the timers are set.
const WINDOW: usize = 100;
/// The earliest due time, after the start: every timer is set before any
/// is due, so that all are pending at once.
const FIRST_DUE: Duration = Duration::from_secs(3);

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64() * 1000.0)
}

/// Run the scenario and return its figures.
pub async fn run(common: &Common, args: &TimerArgs) -> Result<Value> {
    let mut subscriber = open(&common.target, None).await?;
    subscriber
        .send(json!({"event": "#subscribe", "data": {"channel": CHANNEL}, "cid": 1}).to_string())
        .await?;
    next_packet(&mut subscriber).await?;
    let mut setter = open(&common.target, None).await?;
    let meter = CpuMeter::start(common.server_pid)?;
    let start = unix_ms();
    let spread_ms = common.duration.as_secs_f64() * 1000.0;
    let first_ms = FIRST_DUE.as_secs_f64() * 1000.0;
    let mut sent = 0;
    while sent < args.timers {
        let batch = (args.timers - sent).min(WINDOW);
        for index in sent..sent + batch {
            let due = start + first_ms + spread_ms * index as f64 / args.timers as f64;
            let delay_ms = (due - unix_ms()).max(0.0) as u64;
            let data = json!({"delay_ms": delay_ms, "channel": CHANNEL, "data": due});
            let call = json!({"event": "later", "data": data, "cid": index + 2});
            setter.send(call.to_string()).await?;
        }
        for _ in 0..batch {
            let reply = next_packet(&mut setter).await?;
            if reply_id(&reply).is_none() || reply.contains("\"error\"") {
                bail!("`later` failed: {reply}");
            }
        }
        sent += batch;
    }
    let set_in_ms = unix_ms() - start;
    if set_in_ms > first_ms {
        bail!(
            "setting {} timers took {set_in_ms:.0} ms, past the first due time",
            args.timers
        );
    }
    let mut lateness = histogram();
    let mut fired = 0u64;
    let deadline = Instant::now() + FIRST_DUE + common.duration + GRACE;
    while fired < args.timers as u64 {
        let packet = match tokio::time::timeout_at(deadline, next_packet(&mut subscriber)).await {
            Ok(packet) => packet?,
            Err(_) => break,
        };
        let value: Value = serde_json::from_str(&packet)?;
        let Some(due) = value["data"]["data"].as_f64() else {
            continue;
        };
        let late_us = ((unix_ms() - due) * 1000.0).max(1.0) as u64;
        lateness.record(late_us.min(60_000_000))?;
        fired += 1;
    }
    let cpu = meter.stop()?;
    let mut figures = json!({
        "timers": args.timers,
        "fired": fired,
        "set_in_ms": set_in_ms,
    });
    add_latency_and_cpu(
        &mut figures,
        &lateness,
        &cpu,
        fired,
        "timers_per_server_cpu_s",
    );
    Ok(figures)
}

/// The next packet, or why there is none.
async fn next_packet(connection: &mut Connection) -> Result<String> {
    match connection.next().await.context("reading a packet")? {
        Incoming::Packet(text) => Ok(text.to_string()),
        Incoming::Closed(closed) => bail!("the connection closed: {closed:?}"),
    }
}
