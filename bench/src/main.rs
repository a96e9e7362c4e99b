//! `loadgen`: a load generator speaking the SocketCluster protocol, and the
//! report that turns its results into BENCHMARKS.md.
//!
//! Each scenario run prints one JSON line of figures. `bench/run` runs every
//! scenario against wasmcluster and SocketCluster with the same sizes and
//! feeds the lines to `loadgen report`.

mod plot;
mod proc_stats;
mod report;
mod scenarios;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use scenarios::Common;
use scenarios::connect::ConnectArgs;
use scenarios::fanout::FanoutArgs;
use scenarios::hostile::HostileArgs;
use scenarios::hot_swap::HotSwapArgs;
use scenarios::idle::IdleArgs;
use scenarios::requests::{Kind, KvOperation, RequestArgs};
use scenarios::timers::TimerArgs;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Load generator for SocketCluster-protocol servers.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Connection {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8000")]
    addr: SocketAddr,
    /// WebSocket path.
    #[arg(long, default_value = "/socketcluster/")]
    path: String,
    /// Seconds of measurement (bounded: at most 600).
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// The server's pid, to measure its CPU time and memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Local source addresses, comma separated (each allows ~28,000
    /// connections), e.g. 127.0.0.1,127.0.0.2.
    #[arg(long, value_delimiter = ',')]
    sources: Vec<IpAddr>,
    /// Load generator threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Extra fields for the result line, as JSON (e.g. {"target":"wasmcluster","run":1}).
    #[arg(long, default_value = "{}")]
    tag: String,
}

#[derive(Subcommand)]
enum Command {
    /// Invoke `echo` with a window of calls in flight per connection.
    Rpc {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        args: RequestArgs,
    },
    /// Transmit `ping` (answered by `pong`) with a window per connection.
    Transmit {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        args: RequestArgs,
    },
    /// One KV operation per RPC through the `store` test fixture, with a
    /// window of calls in flight per connection (wasmcluster only).
    Kv {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        args: RequestArgs,
        /// The operation.
        #[arg(long, value_enum)]
        operation: KvOperation,
    },
    /// The host's overhead on an outbound HTTP request: RPC `fetch` against
    /// a direct request to the same upstream (wasmcluster only).
    Fetch {
        #[command(flatten)]
        connection: Connection,
    },
    /// A subscriber that comes back: time to get `--missed` publications
    /// from the channel history (wasmcluster only).
    Recovery {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        args: scenarios::recovery::RecoveryArgs,
    },
    /// Delivery across two hosts while the broker's primary is killed:
    /// the failover window (wasmcluster only).
    Failover {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        args: scenarios::failover::FailoverArgs,
    },
    /// One-shot timers pending at once (RPC `later`), and how late they fire.
    Timers {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        args: TimerArgs,
    },
    /// Subscribers on one channel, publishers at full speed or a fixed rate.
    Fanout {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        args: FanoutArgs,
    },
    /// RPC load while a new plugin build is hot-swapped in (SIGUSR2).
    HotSwap {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        args: HotSwapArgs,
    },
    /// Idle connections: server memory per connection.
    Idle {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        args: IdleArgs,
    },
    /// New connections (with handshake) per second.
    Connect {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        args: ConnectArgs,
    },
    /// A hostile client's attack beside an honest client: the server's peak
    /// memory and the honest client's latency.
    Hostile {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        args: HostileArgs,
    },
    /// Mixed churn across two hosts for `bench/soak`: sessions that
    /// connect, subscribe, call (1% faulting), publish and leave.
    Soak {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        args: scenarios::soak::SoakArgs,
    },
    /// Draw `bench/soak`'s samples (memory and descriptors over time) as SVG.
    Plot {
        /// The samples (CSV) written by bench/soak.
        #[arg(long)]
        input: PathBuf,
        /// Where the SVG goes.
        #[arg(long)]
        output: PathBuf,
        /// The chart's title.
        #[arg(long, default_value = "soak")]
        title: String,
    },
    /// Turn result lines (JSON Lines) into the BENCHMARKS.md tables.
    Report {
        /// The results file written by bench/run.
        #[arg(long)]
        input: PathBuf,
        /// Text placed above the tables (machine, versions, command).
        #[arg(long)]
        preamble: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (scenario, connection) = match &cli.command {
        Command::Report { input, preamble } => return report::run(input, preamble.as_deref()),
        Command::Plot {
            input,
            output,
            title,
        } => return plot::run(input, output, title),
        Command::Rpc { connection, .. } => ("rpc", connection),
        Command::Transmit { connection, .. } => ("transmit", connection),
        Command::Kv { connection, .. } => ("kv", connection),
        Command::Fanout { connection, .. } => ("fanout", connection),
        Command::Timers { connection, .. } => ("timers", connection),
        Command::Recovery { connection, .. } => ("recovery", connection),
        Command::Failover { connection, .. } => ("failover", connection),
        Command::Fetch { connection } => ("fetch", connection),
        Command::HotSwap { connection, .. } => ("hot-swap", connection),
        Command::Idle { connection, .. } => ("idle", connection),
        Command::Connect { connection, .. } => ("connect", connection),
        Command::Hostile { connection, .. } => ("hostile", connection),
        Command::Soak { connection, .. } => ("soak", connection),
    };
    anyhow::ensure!(
        connection.duration_secs > 0.0 && connection.duration_secs <= 600.0,
        "--duration-secs must be in (0, 600]"
    );
    let common = Common {
        target: scenarios::Target {
            addr: connection.addr,
            path: connection.path.clone(),
        },
        duration: Duration::from_secs_f64(connection.duration_secs),
        server_pid: connection.server_pid,
        sources: connection.sources.clone(),
    };
    let mut tag: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&connection.tag).context("--tag must be a JSON object")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(connection.threads.max(1))
        .enable_all()
        .build()?;
    let figures = runtime.block_on(async {
        match &cli.command {
            Command::Rpc { args, .. } => scenarios::requests::run(&common, Kind::Rpc, args).await,
            Command::Transmit { args, .. } => {
                scenarios::requests::run(&common, Kind::Transmit, args).await
            }
            Command::Kv {
                args, operation, ..
            } => scenarios::requests::run(&common, Kind::Kv(*operation), args).await,
            Command::Fanout { args, .. } => scenarios::fanout::run(&common, args).await,
            Command::Timers { args, .. } => scenarios::timers::run(&common, args).await,
            Command::Recovery { args, .. } => scenarios::recovery::run(&common, args).await,
            Command::Failover { args, .. } => scenarios::failover::run(&common, args).await,
            Command::Fetch { .. } => scenarios::fetch::run(&common).await,
            Command::HotSwap { args, .. } => scenarios::hot_swap::run(&common, args).await,
            Command::Idle { args, .. } => scenarios::idle::run(&common, args).await,
            Command::Connect { args, .. } => scenarios::connect::run(&common, args).await,
            Command::Hostile { args, .. } => scenarios::hostile::run(&common, args).await,
            Command::Soak { args, .. } => scenarios::soak::run(&common, args).await,
            Command::Report { .. } | Command::Plot { .. } => unreachable!("handled above"),
        }
    })?;
    tag.entry("scenario").or_insert(scenario.into());
    tag.insert("duration_s".into(), connection.duration_secs.into());
    if let serde_json::Value::Object(figures) = figures {
        tag.extend(figures);
    }
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", serde_json::Value::Object(tag))?;
    // Leave without waiting for connection tasks still shutting down.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}
