//! `hot-swap`: RPC load on `version` while a new build of the plugin is
//! renamed into the plugins directory and the server is sent SIGUSR2. How
//! long until every connection is answered by the new build, and the RPC
//! latency during the swap against before it. Every failed call or closed
//! connection is counted.

use super::{Common, GRACE, close_all, histogram, latency_fields, open_many};
use crate::proc_stats::CpuMeter;
use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::{Connection, Incoming, is_error_reply, reply_id};
use tokio::time::Instant;

/// How long after the signal counts as "during the swap".
const SWAP_WINDOW: Duration = Duration::from_secs(1);

/// Parameters of the hot-swap scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct HotSwapArgs {
    /// Connections calling `version`.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Calls in flight per connection.
    #[arg(long, default_value_t = 10)]
    pub window: usize,
    /// The server's plugins directory.
    #[arg(long)]
    pub plugins_dir: PathBuf,
    /// The new build to install as `echo.wasm`.
    #[arg(long)]
    pub new_build: PathBuf,
    /// The version the new build reports from `version`.
    #[arg(long, default_value = "0.2.0")]
    pub new_version: String,
}

/// What one connection saw.
struct Tally {
    before: Histogram<u64>,
    during: Histogram<u64>,
    errors: u64,
    /// When this connection was first answered by the new build.
    switched: Option<Instant>,
}

/// Run the scenario and return its figures.
pub async fn run(common: &Common, args: &HotSwapArgs) -> Result<Value> {
    let pid = common.server_pid.context("hot-swap needs --server-pid")?;
    let connections = open_many(common, args.connections).await?;
    let meter = CpuMeter::start(common.server_pid)?;
    let start = Instant::now();
    let end = start + common.duration;
    let swap_at = start + common.duration / 2;
    let marker = format!("\"version\":\"{}\"", args.new_version);
    let (signal_tx, signal_rx) = tokio::sync::watch::channel(None::<Instant>);
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|connection| {
            tokio::spawn(drive(
                connection,
                args.window,
                marker.clone(),
                signal_rx.clone(),
                end,
            ))
        })
        .collect();

    tokio::time::sleep_until(swap_at).await;
    install(&args.new_build, &args.plugins_dir)?;
    let signalled = Instant::now();
    signal_tx.send_replace(Some(signalled));
    kill(Pid::from_raw(pid as i32), Signal::SIGUSR2).context("signalling the server")?;

    let mut before = histogram();
    let mut during = histogram();
    let mut errors = 0;
    let mut closed = 0;
    let mut slowest_switch: Option<Duration> = Some(Duration::ZERO);
    let mut open = Vec::new();
    for task in tasks {
        match task.await? {
            Ok((connection, tally)) => {
                before.add(&tally.before)?;
                during.add(&tally.during)?;
                errors += tally.errors;
                slowest_switch = match (slowest_switch, tally.switched) {
                    (Some(slowest), Some(at)) => {
                        Some(slowest.max(at.saturating_duration_since(signalled)))
                    }
                    _ => None,
                };
                open.push(connection);
            }
            Err(_) => closed += 1,
        }
    }
    let cpu = meter.stop()?;
    close_all(open).await;

    let mut figures = json!({
        "connections": args.connections,
        "window": args.window,
        "errors": errors,
        "closed": closed,
        "all_switched": slowest_switch.is_some(),
        "switch_ms": slowest_switch.map(|d| d.as_secs_f64() * 1000.0),
        "loadgen_cpu_s": cpu.loadgen,
    });
    let object = figures.as_object_mut().expect("an object");
    object.extend(latency_fields("before_", &before));
    object.extend(latency_fields("during_", &during));
    Ok(figures)
}

/// Write the new build under a hidden name and rename it over `echo.wasm`.
fn install(build: &Path, dir: &Path) -> Result<()> {
    let temporary = dir.join(".echo.wasm.partial");
    std::fs::copy(build, &temporary).with_context(|| format!("copying {}", build.display()))?;
    std::fs::rename(&temporary, dir.join("echo.wasm"))
        .context("renaming the new build into place")?;
    Ok(())
}

/// Keep `window` calls to `version` in flight until `end`.
async fn drive(
    mut connection: Connection,
    window: usize,
    marker: String,
    signal: tokio::sync::watch::Receiver<Option<Instant>>,
    end: Instant,
) -> Result<(Connection, Tally)> {
    let mut tally = Tally {
        before: histogram(),
        during: histogram(),
        errors: 0,
        switched: None,
    };
    let request = |cid: u64| format!("{{\"event\":\"version\",\"cid\":{cid}}}");
    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(window);
    let mut next_cid = 2;
    for _ in 0..window {
        connection.send(request(next_cid)).await?;
        in_flight.push_back((next_cid, Instant::now()));
        next_cid += 1;
    }
    while let Some(&(oldest, sent)) = in_flight.front() {
        let Ok(incoming) = tokio::time::timeout_at(end + GRACE, connection.next()).await else {
            tally.errors += in_flight.len() as u64;
            break;
        };
        let text = match incoming? {
            Incoming::Packet(text) => text,
            Incoming::Closed(_) => bail!("the server closed a connection during the swap"),
        };
        if reply_id(&text) != Some(oldest) {
            continue;
        }
        in_flight.pop_front();
        let now = Instant::now();
        tally.errors += u64::from(is_error_reply(&text));
        let latency = now.duration_since(sent).as_micros() as u64;
        match *signal.borrow() {
            Some(signalled) if now >= signalled && now < signalled + SWAP_WINDOW => {
                tally.during.saturating_record(latency)
            }
            Some(_) => {}
            None => tally.before.saturating_record(latency),
        }
        if tally.switched.is_none() && text.contains(&marker) {
            tally.switched = Some(now);
        }
        if now < end {
            connection.send(request(next_cid)).await?;
            in_flight.push_back((next_cid, now));
            next_cid += 1;
        }
    }
    Ok((connection, tally))
}
