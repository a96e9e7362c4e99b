//! `fanout`: many subscribers on one channel (or spread over `--channels`),
//! publishers at full speed (a window of acked publishes each) or at a
//! fixed total rate, taking the channels in turn. Every payload carries its
//! send time, so subscribers measure end-to-end latency.

use super::{Common, GRACE, add_latency_and_cpu, close_all, histogram, open_many, subscribe};
use crate::proc_stats::CpuMeter;
use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use testkit::{Connection, Incoming, integer_field, reply_id};
use tokio::time::{Instant, MissedTickBehavior};

/// The channel every subscriber listens on, or the stem of the channels'
/// names (`bench-0`, `bench-1`, ...) with `--channels` above 1.
const CHANNEL: &str = "bench";

/// The name of channel `index` of `channels`.
fn channel_name(index: usize, channels: usize) -> String {
    if channels == 1 {
        CHANNEL.to_owned()
    } else {
        format!("{CHANNEL}-{index}")
    }
}

/// Parameters of the fan-out scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Subscribed connections.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Publishing connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Publications per second over all publishers; 0 publishes at full speed.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Acked publishes in flight per publisher at full speed.
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    /// Approximate size of each publication's data.
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Channels the subscribers are spread over (subscriber `i` on channel
    /// `i % channels`); on a Redis Cluster they spread over the shards.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Connect the publishers to this other host (same path) instead of
    /// `--addr`: publications then cross hosts through the broker.
    #[arg(long)]
    pub publish_to: Option<std::net::SocketAddr>,
}

/// How long a cross-host run waits after subscribing, so that the
/// subscribers' host is listening to the channel in the broker.
const BROKER_SETTLE: Duration = Duration::from_millis(500);

/// State shared by publishers and subscribers.
struct Shared {
    /// Send times are microseconds since this instant.
    base: Instant,
    /// Publications sent so far, per channel.
    published: Vec<AtomicU64>,
    /// Set when every publisher has stopped.
    publishing_done: AtomicBool,
    pad: String,
}

/// Run the scenario and return its figures.
pub async fn run(common: &Common, args: &FanoutArgs) -> Result<Value> {
    if args.channels == 0 {
        bail!("--channels must be at least 1");
    }
    let mut subscribers = open_many(common, args.subscribers).await?;
    for (index, subscriber) in subscribers.iter_mut().enumerate() {
        subscribe(
            subscriber,
            &channel_name(index % args.channels, args.channels),
        )
        .await?;
    }
    let publishers = match args.publish_to {
        Some(addr) => {
            tokio::time::sleep(BROKER_SETTLE).await;
            let mut elsewhere = common.clone();
            elsewhere.target.addr = addr;
            open_many(&elsewhere, args.publishers).await?
        }
        None => open_many(common, args.publishers).await?,
    };
    let shared = Arc::new(Shared {
        base: Instant::now(),
        published: (0..args.channels).map(|_| AtomicU64::new(0)).collect(),
        publishing_done: AtomicBool::new(false),
        pad: "x".repeat(args.payload_bytes.saturating_sub(24)),
    });
    let meter = CpuMeter::start(common.server_pid)?;
    let end = Instant::now() + common.duration;
    let readers: Vec<_> = subscribers
        .into_iter()
        .enumerate()
        .map(|(index, subscriber)| {
            let channel = index % args.channels;
            tokio::spawn(receive(subscriber, shared.clone(), channel, end))
        })
        .collect();
    let per_publisher_rate = (args.rate > 0).then(|| args.rate as f64 / args.publishers as f64);
    let writers: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(index, publisher)| {
            tokio::spawn(publish(
                publisher,
                shared.clone(),
                Pace {
                    rate: per_publisher_rate,
                    window: args.window,
                    first_channel: index % args.channels,
                },
                end,
            ))
        })
        .collect();
    let mut open = Vec::new();
    for writer in writers {
        open.push(writer.await??);
    }
    shared.publishing_done.store(true, Ordering::Release);
    let mut delivered = 0;
    let mut latency = histogram();
    for reader in readers {
        let (subscriber, count, histogram) = reader.await??;
        delivered += count;
        latency.add(&histogram)?;
        open.push(subscriber);
    }
    let cpu = meter.stop()?;
    close_all(open).await;

    let published_on = |channel: usize| shared.published[channel].load(Ordering::Acquire);
    let published: u64 = (0..args.channels).map(published_on).sum();
    let expected: u64 = (0..args.subscribers)
        .map(|index| published_on(index % args.channels))
        .sum();
    let seconds = common.duration.as_secs_f64();
    let mut figures = json!({
        "subscribers": args.subscribers,
        "publishers": args.publishers,
        "rate": args.rate,
        "payload_bytes": args.payload_bytes,
        "channels": args.channels,
        "cross_host": args.publish_to.is_some(),
        "published": published,
        "delivered": delivered,
        "lost": expected.saturating_sub(delivered),
        "deliveries_per_s": delivered as f64 / seconds,
    });
    add_latency_and_cpu(
        &mut figures,
        &latency,
        &cpu,
        delivered,
        "deliveries_per_server_cpu_s",
    );
    Ok(figures)
}

/// How one publisher publishes.
struct Pace {
    /// Publications per second, or full speed.
    rate: Option<f64>,
    /// Acked publishes in flight at full speed.
    window: usize,
    /// The channel it starts with (then the next, in turn).
    first_channel: usize,
}

/// Publish until `end`: with a rate, on a timer; without, keeping `window`
/// acked publishes in flight.
async fn publish(
    mut connection: Connection,
    shared: Arc<Shared>,
    Pace {
        rate,
        window,
        first_channel,
    }: Pace,
    end: Instant,
) -> Result<Connection> {
    let mut cid = 2u64;
    let channels = shared.published.len();
    let mut next_channel = first_channel;
    // The next publication's frame, counted on its channel.
    let mut frame = |cid: u64| {
        let channel = next_channel;
        next_channel = (next_channel + 1) % channels;
        shared.published[channel].fetch_add(1, Ordering::Relaxed);
        let t = shared.base.elapsed().as_micros();
        format!(
            "{{\"event\":\"#publish\",\"data\":{{\"channel\":\"{}\",\"data\":{{\"t\":{t},\"pad\":\"{}\"}}}},\"cid\":{cid}}}",
            channel_name(channel, channels),
            shared.pad
        )
    };
    let mut in_flight = 0usize;
    let full_speed = rate.is_none();
    if let Some(rate) = rate {
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    if Instant::now() >= end { break; }
                    connection.send(frame(cid)).await?;
                    cid += 1;
                    in_flight += 1;
                }
                incoming = connection.next() => {
                    if let Incoming::Packet(text) = incoming? && reply_id(&text).is_some() {
                        in_flight = in_flight.saturating_sub(1);
                    }
                }
            }
        }
    } else {
        for _ in 0..window {
            connection.send(frame(cid)).await?;
            cid += 1;
            in_flight += 1;
        }
    }
    // Collect the acks (at full speed, each one sends the next publication
    // until `end`), so that every publication has been fanned out.
    while in_flight > 0 {
        let Ok(incoming) = tokio::time::timeout_at(end + GRACE, connection.next()).await else {
            break;
        };
        if let Incoming::Packet(text) = incoming?
            && reply_id(&text).is_some()
        {
            in_flight -= 1;
            if full_speed && Instant::now() < end {
                connection.send(frame(cid)).await?;
                cid += 1;
                in_flight += 1;
            }
        }
    }
    Ok(connection)
}

/// Count publications and their latency until everything published has
/// arrived or the grace period is over.
async fn receive(
    mut connection: Connection,
    shared: Arc<Shared>,
    channel: usize,
    end: Instant,
) -> Result<(Connection, u64, Histogram<u64>)> {
    let mut latency = histogram();
    let mut received = 0u64;
    let deadline = end + GRACE;
    loop {
        let done = shared.publishing_done.load(Ordering::Acquire);
        if done && received >= shared.published[channel].load(Ordering::Acquire) {
            break;
        }
        let wait = if done {
            Duration::from_millis(200)
        } else {
            Duration::from_millis(500)
        };
        let until = (Instant::now() + wait).min(deadline);
        match tokio::time::timeout_at(until, connection.next()).await {
            Ok(incoming) => match incoming? {
                Incoming::Packet(text) => {
                    if let Some(sent) = integer_field(&text, "t") {
                        received += 1;
                        let now = shared.base.elapsed().as_micros() as u64;
                        latency.saturating_record(now.saturating_sub(sent).max(1));
                    }
                }
                Incoming::Closed(_) => bail!("the server closed a subscriber"),
            },
            Err(_) if Instant::now() >= deadline => break,
            Err(_) => {}
        }
    }
    Ok((connection, received, latency))
}
