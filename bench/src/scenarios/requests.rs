//! `rpc`, `transmit` and `kv`: every connection keeps a window of requests
//! in flight. An RPC is `echo` with a cid, answered with its `rid`; a
//! transmit is `ping` without cid, answered by the plugin (or handler) with
//! a `pong` transmit; a KV request is one operation of the `store` test
//! fixture (`kv.get`, `kv.set`, `kv.cas-incr`) on keys of its own
//! connection (`cas-incr`: on 16 keys shared by every connection, so that
//! compare-and-set loops conflict). Replies arrive in order on each
//! connection.

use super::{Common, GRACE, add_latency_and_cpu, close_all, histogram, open_many, payload};
use crate::proc_stats::CpuMeter;
use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use testkit::{Connection, Incoming, is_error_reply, reply_id};
use tokio::time::{Instant, MissedTickBehavior};

/// Which kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `invoke('echo', data)`.
    Rpc,
    /// `transmit('ping', data)`, answered by a `pong` transmit.
    Transmit,
    /// One KV operation through the `store` fixture plugin.
    Kv(KvOperation),
}

/// The KV operation of a `kv` run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KvOperation {
    /// `kv.get` of a key written before the measured window.
    Get,
    /// `kv.set` of a 64-byte value.
    Set,
    /// `kv.cas-incr` of one of 16 shared counters, once (get +
    /// compare-and-set, retried on conflict).
    CasIncr,
}

/// Keys each connection reads and writes in turn.
const KEYS_PER_CONNECTION: u64 = 100;

/// Parameters of the request scenarios.
#[derive(Debug, Clone, clap::Args)]
pub struct RequestArgs {
    /// Connections.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 10)]
    pub window: usize,
    /// Approximate size of the JSON data of each request.
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Requests per second over all connections, sent when due whether or
    /// not answers came, with at most `window` in flight per connection:
    /// one due beyond that is counted `late`, not sent (a server that falls
    /// behind shows there). Latency counts from the send, not from when the
    /// request was due: the load generator's timer is late by up to a
    /// millisecond, which would swamp the round trip. 0: each answer sends
    /// the next request, as fast as the server goes.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
}

/// What one connection counted.
struct Tally {
    ops: u64,
    errors: u64,
    /// Requests due at a fixed rate while the window was full.
    late: u64,
    latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            ops: 0,
            errors: 0,
            late: 0,
            latency: histogram(),
        }
    }

    /// Count an answer to a request sent at `since`.
    fn answered(&mut self, failed: bool, since: Instant, now: Instant) {
        self.ops += 1;
        self.errors += u64::from(failed);
        self.latency
            .saturating_record(now.duration_since(since).as_micros() as u64);
    }
}

/// How a connection paces its requests.
#[derive(Clone, Copy)]
enum Pace {
    /// Keep the window full: each answer sends the next.
    FullSpeed,
    /// One request every `period`, the first at `first`.
    Every { period: Duration, first: Instant },
}

/// Run the scenario and return its figures.
pub async fn run(common: &Common, kind: Kind, args: &RequestArgs) -> Result<Value> {
    let mut connections = open_many(common, args.connections).await?;
    let data: Arc<str> = payload(args.payload_bytes).into();
    if kind == Kind::Kv(KvOperation::Get) {
        preload(&mut connections, &data).await?;
    }
    let meter = CpuMeter::start(common.server_pid)?;
    let start = Instant::now();
    let end = start + common.duration;
    let count = connections.len();
    let tasks: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(id, connection)| {
            // At a rate, the connections take turns rather than all sending
            // at each tick.
            let pace = match args.rate {
                0 => Pace::FullSpeed,
                rate => {
                    let period = Duration::from_secs_f64(count as f64 / rate as f64);
                    let first = start + period.mul_f64(id as f64 / count as f64);
                    Pace::Every { period, first }
                }
            };
            let data = data.clone();
            tokio::spawn(drive(connection, id, kind, args.window, data, end, pace))
        })
        .collect();
    let mut ops = 0;
    let mut errors = 0;
    let mut late = 0;
    let mut latency = histogram();
    let mut open = Vec::new();
    for task in tasks {
        let (connection, tally) = task.await??;
        ops += tally.ops;
        errors += tally.errors;
        late += tally.late;
        latency.add(&tally.latency)?;
        open.push(connection);
    }
    let cpu = meter.stop()?;
    close_all(open).await;

    let seconds = common.duration.as_secs_f64();
    let mut figures = json!({
        "connections": args.connections,
        "window": args.window,
        "payload_bytes": args.payload_bytes,
        "rate": args.rate,
        "ops": ops,
        "errors": errors,
        "late": late,
        "ops_per_s": ops as f64 / seconds,
    });
    add_latency_and_cpu(&mut figures, &latency, &cpu, ops, "ops_per_server_cpu_s");
    Ok(figures)
}

/// Request `cid` of connection `id`.
fn request(kind: Kind, id: usize, data: &str, cid: u64) -> String {
    let key = format!("k{id}:{}", cid % KEYS_PER_CONNECTION);
    match kind {
        Kind::Rpc => format!("{{\"event\":\"echo\",\"data\":{data},\"cid\":{cid}}}"),
        Kind::Transmit => format!("{{\"event\":\"ping\",\"data\":{data}}}"),
        Kind::Kv(KvOperation::Get) => {
            format!("{{\"event\":\"kv.get\",\"data\":{{\"key\":\"{key}\"}},\"cid\":{cid}}}")
        }
        Kind::Kv(KvOperation::Set) => set_request(&key, data, cid),
        Kind::Kv(KvOperation::CasIncr) => format!(
            "{{\"event\":\"kv.cas-incr\",\"data\":{{\"key\":\"hot{}\",\"times\":1}},\"cid\":{cid}}}",
            id % 16
        ),
    }
}

/// `kv.set` of `data` (as text) at `key`.
fn set_request(key: &str, data: &str, cid: u64) -> String {
    let value = serde_json::to_string(data).expect("a string serializes");
    format!(
        "{{\"event\":\"kv.set\",\"data\":{{\"key\":\"{key}\",\"value\":{value}}},\"cid\":{cid}}}"
    )
}

/// Write every key the connections will read, before the measured window.
async fn preload(connections: &mut [Connection], data: &str) -> Result<()> {
    for (id, connection) in connections.iter_mut().enumerate() {
        for index in 0..KEYS_PER_CONNECTION {
            let cid = index + 1;
            connection
                .send(set_request(&format!("k{id}:{index}"), data, cid))
                .await?;
        }
        let mut answered = 0;
        while answered < KEYS_PER_CONNECTION {
            match connection.next().await? {
                Incoming::Packet(text) if reply_id(&text).is_some() => {
                    if is_error_reply(&text) {
                        bail!("writing the keys to read failed: {text}");
                    }
                    answered += 1;
                }
                Incoming::Packet(_) => {}
                Incoming::Closed(_) => bail!("the server closed a connection"),
            }
        }
    }
    Ok(())
}

/// Whether `text` answers the oldest request in flight, and whether it is an error.
fn answer(kind: Kind, text: &str, oldest: u64) -> Option<bool> {
    match kind {
        Kind::Rpc | Kind::Kv(_) => (reply_id(text)? == oldest).then(|| is_error_reply(text)),
        Kind::Transmit => text.starts_with("{\"event\":\"pong\"").then_some(false),
    }
}

/// Send requests until `end` as `pace` says, keeping at most `window` in
/// flight, then collect the stragglers.
async fn drive(
    mut connection: Connection,
    id: usize,
    kind: Kind,
    window: usize,
    data: Arc<str>,
    end: Instant,
    pace: Pace,
) -> Result<(Connection, Tally)> {
    let mut tally = Tally::new();
    // Each request's cid and when it was sent.
    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(window);
    let mut next_cid = KEYS_PER_CONNECTION + 2;
    let mut send = async |connection: &mut Connection, in_flight: &mut VecDeque<_>, since| {
        connection.send(request(kind, id, &data, next_cid)).await?;
        in_flight.push_back((next_cid, since));
        next_cid += 1;
        anyhow::Ok(())
    };
    match pace {
        Pace::FullSpeed => {
            for _ in 0..window {
                send(&mut connection, &mut in_flight, Instant::now()).await?;
            }
        }
        Pace::Every { period, first } => {
            let mut ticks = tokio::time::interval_at(first, period);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
            loop {
                tokio::select! {
                    due = ticks.tick() => {
                        if due >= end {
                            break;
                        }
                        if in_flight.len() >= window {
                            tally.late += 1;
                        } else {
                            send(&mut connection, &mut in_flight, Instant::now()).await?;
                        }
                    }
                    incoming = connection.next() => {
                        let text = match incoming? {
                            Incoming::Packet(text) => text,
                            Incoming::Closed(_) => bail!("the server closed a connection"),
                        };
                        if let Some(&(oldest, sent)) = in_flight.front()
                            && let Some(failed) = answer(kind, &text, oldest)
                        {
                            in_flight.pop_front();
                            tally.answered(failed, sent, Instant::now());
                        }
                    }
                }
            }
        }
    }
    while let Some(&(oldest, since)) = in_flight.front() {
        let incoming = match tokio::time::timeout_at(end + GRACE, connection.next()).await {
            Ok(incoming) => incoming?,
            Err(_) => {
                tally.errors += in_flight.len() as u64;
                break;
            }
        };
        let text = match incoming {
            Incoming::Packet(text) => text,
            Incoming::Closed(_) => bail!("the server closed a connection"),
        };
        let Some(failed) = answer(kind, &text, oldest) else {
            continue;
        };
        in_flight.pop_front();
        let now = Instant::now();
        match pace {
            // Requests at a rate were all sent before `end`: each counts.
            Pace::Every { .. } => tally.answered(failed, since, now),
            Pace::FullSpeed if now <= end => {
                tally.answered(failed, since, now);
                send(&mut connection, &mut in_flight, now).await?;
            }
            Pace::FullSpeed => {}
        }
    }
    Ok((connection, tally))
}
