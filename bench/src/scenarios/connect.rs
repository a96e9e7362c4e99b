//! `connect`: new connections per second, each a TCP connect, WebSocket
//! upgrade, SocketCluster handshake and close.

use super::open;
use super::{Common, add_latency_and_cpu, histogram};
use crate::proc_stats::CpuMeter;
use anyhow::Result;
use serde_json::{Value, json};
use tokio::time::Instant;

/// Parameters of the connect scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Connections being opened at the same time.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
}

/// Run the scenario and return its figures.
pub async fn run(common: &Common, args: &ConnectArgs) -> Result<Value> {
    let meter = CpuMeter::start(common.server_pid)?;
    let end = Instant::now() + common.duration;
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|index| {
            let target = common.target.clone();
            let source =
                (!common.sources.is_empty()).then(|| common.sources[index % common.sources.len()]);
            tokio::spawn(async move {
                let mut latency = histogram();
                let mut count = 0u64;
                let mut errors = 0u64;
                while Instant::now() < end {
                    let started = Instant::now();
                    match open(&target, source).await {
                        Ok(connection) => {
                            latency.saturating_record(started.elapsed().as_micros() as u64);
                            count += 1;
                            connection.close(1000).await;
                        }
                        Err(_) => errors += 1,
                    }
                }
                (count, errors, latency)
            })
        })
        .collect();
    let mut count = 0;
    let mut errors = 0;
    let mut latency = histogram();
    for task in tasks {
        let (n, e, h) = task.await?;
        count += n;
        errors += e;
        latency.add(&h)?;
    }
    let cpu = meter.stop()?;
    let mut figures = json!({
        "concurrency": args.concurrency,
        "connections": count,
        "errors": errors,
        "connects_per_s": count as f64 / common.duration.as_secs_f64(),
    });
    add_latency_and_cpu(
        &mut figures,
        &latency,
        &cpu,
        count,
        "connects_per_server_cpu_s",
    );
    Ok(figures)
}
