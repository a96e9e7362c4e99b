//! The `wasmcluster` command line.

use anyhow::Context;
use clap::{Parser, Subcommand};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use wasmcluster::config::ServeArgs;
use wasmcluster::server::Server;

/// A SocketCluster-compatible real-time server whose application logic runs
/// as sandboxed WebAssembly plugins.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve SocketCluster clients with the plugins of a directory.
    Serve(ServeArgs),
    /// Tell a running server to reload its plugins directory (SIGUSR2).
    Reload {
        /// The pid file the server was started with (`serve --pid-file`).
        #[arg(long, env = "WASMCLUSTER_PID_FILE")]
        pid_file: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: log files and collectors get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args),
        Command::Reload { pid_file } => reload(&pid_file),
    }
}

/// Send SIGUSR2 to the server whose pid is in `pid_file`.
fn reload(pid_file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(pid_file)
        .with_context(|| format!("cannot read the pid file {}", pid_file.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a process id", pid_file.display()))?;
    kill(Pid::from_raw(pid), Signal::SIGUSR2)
        .with_context(|| format!("cannot signal process {pid} (from {})", pid_file.display()))?;
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    let pid_file = config.pid_file.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Registered before the server says it listens: from then on a
        // SIGTERM drains instead of killing the process.
        let shutdown = shutdown_signal().context("cannot listen for SIGTERM and SIGINT")?;
        let server = Server::start(config).await?;
        let addr = server
            .local_addr()
            .context("cannot read the listen address")?;
        if let Some(pid_file) = &pid_file {
            std::fs::write(pid_file, format!("{}\n", std::process::id()))
                .with_context(|| format!("cannot write the pid file {}", pid_file.display()))?;
        }
        // One line on stdout that scripts and tests wait for.
        let mut stdout = std::io::stdout();
        writeln!(stdout, "wasmcluster listening on {addr}")?;
        stdout.flush()?;
        server.run(shutdown).await;
        if let Some(pid_file) = &pid_file {
            let _ = std::fs::remove_file(pid_file);
        }
        Ok(())
    })
}

/// A future that resolves on SIGTERM or SIGINT; the handlers are installed
/// when this returns.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
