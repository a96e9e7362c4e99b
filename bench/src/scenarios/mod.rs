//! The benchmark scenarios. Each opens its connections first, then measures
//! a bounded window of time, and returns one JSON object of figures.

pub mod connect;
pub mod failover;
pub mod fanout;
pub mod fetch;
pub mod hostile;
pub mod hot_swap;
pub mod idle;
pub mod recovery;
pub mod requests;
pub mod soak;
pub mod timers;

use anyhow::Result;
use futures_util::{StreamExt, stream};
use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use testkit::{Connection, Incoming, reply_id};

/// Where the server is.
#[derive(Debug, Clone)]
pub struct Target {
    /// Server address.
    pub addr: SocketAddr,
    /// WebSocket path, e.g. `/socketcluster/`.
    pub path: String,
}

/// Open a connection to `target` from `source` (any local address when
/// `None`) and handshake.
pub async fn open(target: &Target, source: Option<IpAddr>) -> Result<Connection> {
    let url = format!("ws://{}{}", target.addr, target.path);
    let mut connection = Connection::connect(&url, source).await?;
    connection.handshake().await?;
    Ok(connection)
}

/// Settings shared by every scenario.
#[derive(Debug, Clone)]
pub struct Common {
    /// The server.
    pub target: Target,
    /// How long the measured window lasts.
    pub duration: Duration,
    /// The server's pid, to measure its CPU and memory.
    pub server_pid: Option<u32>,
    /// Local addresses connections are made from, in turn (each gives about
    /// 28,000 ports).
    pub sources: Vec<IpAddr>,
}

/// Subscribe `connection` to `channel` and wait for the answer.
pub async fn subscribe(connection: &mut Connection, channel: &str) -> Result<()> {
    connection
        .send(format!(
            "{{\"event\":\"#subscribe\",\"data\":{{\"channel\":\"{channel}\"}},\"cid\":2}}"
        ))
        .await?;
    loop {
        match connection.next().await? {
            Incoming::Packet(text) if reply_id(&text) == Some(2) => return Ok(()),
            Incoming::Packet(_) => {}
            Incoming::Closed(_) => anyhow::bail!("closed while subscribing"),
        }
    }
}

/// How many connections are opened at once while setting up.
const OPEN_CONCURRENCY: usize = 64;

/// After the measured window, how long outstanding replies are waited for.
pub const GRACE: Duration = Duration::from_secs(3);

/// Open `count` handshaken connections, spread over the source addresses.
pub async fn open_many(common: &Common, count: usize) -> Result<Vec<Connection>> {
    let opens = (0..count).map(|index| {
        let source =
            (!common.sources.is_empty()).then(|| common.sources[index % common.sources.len()]);
        let target = common.target.clone();
        async move { open(&target, source).await }
    });
    stream::iter(opens)
        .buffer_unordered(OPEN_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// A latency histogram in microseconds, 1 µs to 60 s.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Percentiles of a histogram as JSON fields with `prefix`.
pub fn latency_fields(prefix: &str, histogram: &Histogram<u64>) -> Map<String, Value> {
    let mut fields = Map::new();
    for (name, quantile) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
        let micros = histogram.value_at_quantile(quantile);
        fields.insert(format!("{prefix}{name}_ms"), json!(micros as f64 / 1000.0));
    }
    fields
}

/// Add the latency percentiles and the server's CPU (with `count` per
/// server CPU-second, as `per_cpu_field`) to a scenario's figures.
pub fn add_latency_and_cpu(
    figures: &mut Value,
    latency: &Histogram<u64>,
    cpu: &crate::proc_stats::CpuUse,
    count: u64,
    per_cpu_field: &str,
) {
    let Some(object) = figures.as_object_mut() else {
        return;
    };
    object.insert("loadgen_cpu_s".into(), json!(cpu.loadgen));
    object.extend(latency_fields("", latency));
    if let Some(server) = cpu.server {
        object.insert("server_cpu_s".into(), json!(server));
        object.insert(
            per_cpu_field.into(),
            json!(count as f64 / server.max(0.001)),
        );
    }
}

/// A JSON payload of roughly `bytes` bytes: `{"n":..,"pad":"xxx"}`.
pub fn payload(bytes: usize) -> String {
    format!(
        "{{\"n\":1,\"pad\":\"{}\"}}",
        "x".repeat(bytes.saturating_sub(16))
    )
}

/// Close every connection, without waiting long for any.
pub async fn close_all(connections: Vec<Connection>) {
    stream::iter(
        connections
            .into_iter()
            .map(|connection| connection.close(1000)),
    )
    .buffer_unordered(OPEN_CONCURRENCY)
    .collect::<Vec<()>>()
    .await;
}
