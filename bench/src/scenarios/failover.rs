//! `failover`: how long delivery across hosts stops when the broker's
//! primary dies. A subscriber on the target host and a publisher on
//! `--publish-to` (another host on the same broker); the publisher sends
//! numbered publications at `--rate` per second, and after
//! `--kill-after-secs` the scenario kills `--kill-pid` (the Redis primary)
//! with SIGKILL. The figures: the longest time without a delivery (the
//! failover window), the time from the kill to the first delivery after
//! it, publications lost, and publications delivered twice or out of
//! order (there must be none). wasmcluster only.

use super::{Common, open, subscribe};
use anyhow::{Context, Result, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use testkit::{Connection, Incoming, reply_id};
use tokio::time::{Instant, MissedTickBehavior};

/// The channel of the numbered stream.
const CHANNEL: &str = "failover";
/// How long the subscriber keeps reading after the last publication.
const DRAIN: Duration = Duration::from_secs(1);

/// Parameters of the failover scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct FailoverArgs {
    /// The host the publisher connects to (the subscriber is on `--addr`).
    #[arg(long)]
    pub publish_to: SocketAddr,
    /// The process to kill: the broker's primary.
    #[arg(long)]
    pub kill_pid: i32,
    /// Seconds of publishing before the kill.
    #[arg(long, default_value_t = 2.0)]
    pub kill_after_secs: f64,
    /// Publications per second.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
}

/// Run the scenario and return its figures.
pub async fn run(common: &Common, args: &FailoverArgs) -> Result<Value> {
    ensure!(args.rate > 0, "--rate must be positive");
    let mut subscriber = open(&common.target, None).await?;
    subscribe(&mut subscriber, CHANNEL).await?;
    let mut elsewhere = common.target.clone();
    elsewhere.addr = args.publish_to;
    let publisher = open(&elsewhere, None).await?;

    let start = Instant::now();
    let end = start + common.duration;
    let kill_at = start + Duration::from_secs_f64(args.kill_after_secs);
    let sending = tokio::spawn(publish(publisher, args.rate, end));
    let receiving = tokio::spawn(receive(subscriber, end + DRAIN));
    tokio::time::sleep_until(kill_at).await;
    kill(Pid::from_raw(args.kill_pid), Signal::SIGKILL).context("killing the primary")?;
    let killed = Instant::now();
    let published = sending.await??;
    let arrivals = receiving.await??;
    Ok(figures(&arrivals, published, killed))
}

/// Publish `1, 2, ...` at `rate` per second until `end`, unacknowledged
/// (a publish that cannot reach the other host must not slow the next);
/// how many were sent.
async fn publish(mut publisher: Connection, rate: u32, end: Instant) -> Result<u64> {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut number = 0;
    while Instant::now() < end {
        tick.tick().await;
        number += 1;
        let frame =
            format!(r##"{{"event":"#publish","data":{{"channel":"{CHANNEL}","data":{number}}}}}"##);
        publisher.send(frame).await?;
        publisher.flush().await?;
    }
    publisher.close(1000).await;
    Ok(number)
}

/// The numbers received until `end`, with when each arrived.
async fn receive(mut subscriber: Connection, end: Instant) -> Result<Vec<(u64, Instant)>> {
    let mut arrivals = Vec::new();
    while let Ok(incoming) = tokio::time::timeout_at(end, subscriber.next()).await {
        let Incoming::Packet(text) = incoming? else {
            break;
        };
        if reply_id(&text).is_some() {
            continue;
        }
        let packet: Value = serde_json::from_str(&text)?;
        let number = packet["data"]["data"]
            .as_u64()
            .context("a publication without a number")?;
        arrivals.push((number, Instant::now()));
    }
    subscriber.close(1000).await;
    Ok(arrivals)
}

/// The figures of a run: the longest silence, the recovery after the kill,
/// and what was lost, duplicated or reordered.
fn figures(arrivals: &[(u64, Instant)], published: u64, killed: Instant) -> Value {
    let silence = arrivals.windows(2).max_by_key(|pair| pair[1].1 - pair[0].1);
    let window = silence.map_or(Duration::ZERO, |pair| pair[1].1 - pair[0].1);
    let recovered = silence.map(|pair| pair[1].1.saturating_duration_since(killed));
    let mut out_of_order = 0;
    let mut seen = std::collections::BTreeSet::new();
    let mut last = 0;
    for (number, _) in arrivals {
        if *number < last {
            out_of_order += 1;
        }
        last = last.max(*number);
        seen.insert(*number);
    }
    let duplicates = arrivals.len() - seen.len();
    json!({
        "published": published,
        "delivered": arrivals.len(),
        "lost": published.saturating_sub(seen.len() as u64),
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "window_ms": window.as_secs_f64() * 1000.0,
        "recovered_ms": recovered.map(|time| time.as_secs_f64() * 1000.0),
    })
}
