//! The `wasmcluster` command line.

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use wasmcluster::config::{ConfigFile, ServeArgs, ServerConfig};
use wasmcluster::server::Server;

mod new;
mod strip;

/// jemalloc, with its background thread purging freed pages a few seconds
/// after they fall idle: with glibc's malloc a server that once held many
/// connections, or swapped plugins under load, kept that memory after the
/// clients left (measured in the soak, see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A SocketCluster-compatible real-time server whose application logic runs
/// as sandboxed WebAssembly plugins.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log format on stderr: `text` for people, `json` (one object per line)
    /// for log collectors.
    #[arg(
        long,
        global = true,
        env = "WASMCLUSTER_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

/// How log lines are written.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve SocketCluster clients with the plugins of a directory.
    Serve(Box<ServeArgs>),
    /// Compile a plugin, link it against this host and print its manifest;
    /// exits non-zero with the reason when the server would refuse it.
    Check {
        /// The plugin component (`.wasm`).
        file: PathBuf,
        /// Also check it against the plugins of this directory, as a
        /// reload of that directory would: a name or an event another plugin
        /// has is refused.
        #[arg(long, value_name = "DIR")]
        plugins: Option<PathBuf>,
    },
    /// Tell a running server to reload its plugins directory (SIGUSR2), and
    /// print what the reload did; exits non-zero when a file was refused.
    Reload {
        /// The pid file the server was started with (`serve --pid-file`).
        #[arg(long, env = "WASMCLUSTER_PID_FILE")]
        pid_file: PathBuf,
        /// How long to wait for the reload to finish, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Create a plugin crate (Cargo.toml, src/lib.rs, README.md) that builds
    /// to a wasm component at once.
    New(new::NewArgs),
    /// Make a plugin build small to ship: keep its code, its function names
    /// and the line tables its fault reports read; drop the rest of its
    /// debug info.
    Strip {
        /// The plugin component (`.wasm`), as cargo built it.
        file: PathBuf,
        /// Where to write the stripped plugin; the file itself by default.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Help with the config file of `serve --config`.
    Config {
        /// Print a commented config file with every option and its default.
        #[arg(long, required = true)]
        example: bool,
    },
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "error: {}", one_line(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, without a backtrace (this is read
/// by operators), skipping causes that an outer message already quotes.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve(args) => {
            let config = match args.config.clone() {
                Some(path) => config_with_file(&path)?,
                None => args.into_config()?,
            };
            serve(config)
        }
        Command::Check { file, plugins } => check(&file, plugins.as_deref()),
        Command::Reload {
            pid_file,
            timeout_secs,
        } => reload(&pid_file, Duration::from_secs(timeout_secs)),
        Command::New(args) => new_plugin(&args),
        Command::Strip { file, output } => strip_plugin(&file, output.as_deref()),
        Command::Config { .. } => {
            let example = wasmcluster::config::example_file(serve_command());
            std::io::stdout().write_all(example.as_bytes())?;
            Ok(())
        }
    }
}

/// The `serve` subcommand's definition.
fn serve_command() -> &'static clap::Command {
    static CLI: std::sync::OnceLock<clap::Command> = std::sync::OnceLock::new();
    CLI.get_or_init(Cli::command)
        .find_subcommand("serve")
        .expect("the serve subcommand exists")
}

/// Parse the command line again with the config file's values as the flags'
/// defaults (flag > environment > file > default), and add the file's
/// plugin sections. Errors name the file, the line and the key.
fn config_with_file(path: &Path) -> anyhow::Result<ServerConfig> {
    let file = ConfigFile::load(path)?;
    let serve = file.apply(serve_command().clone())?;
    let cli = Cli::command().mut_subcommand("serve", |_| serve);
    let matches = cli.get_matches();
    let Some(("serve", serve_matches)) = matches.subcommand() else {
        unreachable!("config_with_file is only called for `serve`");
    };
    let args = ServeArgs::from_arg_matches(serve_matches)?;
    let mut config =
        args.into_config()
            .map_err(|error| match from_file(serve_matches, error.flag, &file) {
                Some(location) => {
                    anyhow::anyhow!("{location}: key '{}': {}", error.flag, error.reason)
                }
                None => error.into(),
            })?;
    config.set_plugin_overrides(file.plugin_overrides()?);
    config.set_history_rules(file.history_rules()?);
    Ok(config)
}

/// Where the file sets `flag`, when its value came from the file (not from
/// the command line or the environment).
fn from_file(matches: &ArgMatches, flag: &str, file: &ConfigFile) -> Option<String> {
    let id = flag.replace('-', "_");
    let source = matches.value_source(&id)?;
    (source == ValueSource::DefaultValue)
        .then(|| file.location_of(flag))
        .flatten()
}

/// What is logged without `RUST_LOG`: `info`, but only errors of the
/// Redis client, which logs every attempt to repair a cluster connection
/// (the broker says what it means for delivery itself).
const DEFAULT_LOG_FILTER: &str = "info,redis=error";

/// Log to stderr, filtered by `RUST_LOG` (default [`DEFAULT_LOG_FILTER`]).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().init(),
        // Colours only on a terminal: log files get plain text.
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// `wasmcluster check FILE [--plugins DIR]`: load the plugin as the
/// server would (and, with DIR, beside the plugins there) and print what it
/// declares.
fn check(file: &Path, plugins_dir: Option<&Path>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let checked = runtime.block_on(wasmcluster::plugins::check_file(file, plugins_dir))?;
    let plugin = &checked.plugin;
    let manifest = &plugin.manifest;
    let list = |items: &[String]| {
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join(", ")
        }
    };
    let hooks: Vec<String> = manifest
        .hooks
        .iter()
        .map(|hook| hook.name().to_owned())
        .collect();
    let mut out = std::io::stdout();
    writeln!(out, "{}: ok, the server would load it", file.display())?;
    writeln!(out, "  plugin     {} {}", manifest.name, manifest.version)?;
    writeln!(out, "  built for  {}", plugin.wit_version)?;
    writeln!(out, "  rpc        {}", list(&manifest.rpc_events))?;
    writeln!(out, "  transmit   {}", list(&manifest.transmit_events))?;
    writeln!(out, "  public     {}", list(&manifest.public_rpc_events))?;
    writeln!(out, "  hooks      {}", list(&hooks))?;
    writeln!(out, "  priority   {}", manifest.priority)?;
    let state = match (plugin.keeps_state(), checked.hands_over_state) {
        (_, true) => "yes (its snapshot returns state)",
        (true, false) => {
            "no (it exports snapshot/restore, but a fresh instance's snapshot returns \
             nothing: the SDK's default)"
        }
        (false, false) => "no (it does not export snapshot/restore)",
    };
    writeln!(out, "  hot-swap state hand-off  {state}")?;
    let size = std::fs::metadata(file).map_or(0, |metadata| metadata.len());
    writeln!(
        out,
        "  size       {size} bytes, loaded in {} ms (compiled without the cache)",
        checked.load_time.as_millis()
    )?;
    if let (Some(dir), Some(count)) = (plugins_dir, checked.checked_against) {
        writeln!(
            out,
            "  checked against the {count} other plugin(s) of {}: no conflict",
            dir.display()
        )?;
    }
    Ok(())
}

/// `wasmcluster strip FILE`: strip a plugin and say what it saved.
fn strip_plugin(file: &Path, output: Option<&Path>) -> anyhow::Result<()> {
    let output = output.unwrap_or(file);
    let stripped = strip::strip_file(file, output)?;
    writeln!(
        std::io::stdout(),
        "{}: {} bytes (was {})",
        output.display(),
        stripped.after,
        stripped.before
    )?;
    Ok(())
}

/// `wasmcluster new NAME`: create a plugin crate and say how to build it.
fn new_plugin(args: &new::NewArgs) -> anyhow::Result<()> {
    let created = new::create(args)?;
    let dir = created.dir.display();
    let wasm = &created.wasm;
    let mut out = std::io::stdout();
    writeln!(out, "Created the plugin crate {dir}")?;
    writeln!(out, "  SDK: wasmcluster-sdk = {}", created.sdk)?;
    writeln!(out)?;
    writeln!(out, "Build and check it:")?;
    writeln!(out, "  cd {dir}")?;
    writeln!(out, "  rustup target add wasm32-wasip2   # once")?;
    writeln!(out, "  cargo build --release --target wasm32-wasip2")?;
    writeln!(out, "  wasmcluster strip {wasm}")?;
    writeln!(out, "  wasmcluster check {wasm}")?;
    writeln!(out, "Then copy {wasm} into the server's plugins directory.")?;
    Ok(())
}

/// Send SIGUSR2 to the server whose pid is in `pid_file`, wait for the
/// report of that reload (written next to the pid file) and print it; an
/// error when a file was refused or the reload failed.
fn reload(pid_file: &Path, timeout: Duration) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(pid_file)
        .with_context(|| format!("cannot read the pid file {}", pid_file.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a process id", pid_file.display()))?;
    let report_file = wasmcluster::server::report_path(pid_file);
    let before = read_report(&report_file).map_or(0, |report| report_seq(&report));
    kill(Pid::from_raw(pid), Signal::SIGUSR2)
        .with_context(|| format!("cannot signal process {pid} (from {})", pid_file.display()))?;
    let deadline = std::time::Instant::now() + timeout;
    let report = loop {
        if let Some(report) = read_report(&report_file).filter(|r| report_seq(r) > before) {
            break report;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "process {pid} got the signal but wrote no reload report to {} within {} s",
            report_file.display(),
            timeout.as_secs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    print_report(&report)
}

fn read_report(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn report_seq(report: &serde_json::Value) -> u64 {
    report["seq"].as_u64().unwrap_or(0)
}

/// Print a reload report; an error when it refused a file or failed.
fn print_report(report: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(error) = report["error"].as_str() {
        anyhow::bail!("the reload failed, the loaded plugins keep serving: {error}");
    }
    let names = |key: &str| -> Vec<String> {
        report[key]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| item.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join(", ")
        }
    };
    let mut out = std::io::stdout();
    let elapsed = report["elapsedMs"].as_u64().unwrap_or(0);
    writeln!(out, "reload done in {elapsed} ms")?;
    writeln!(out, "  loaded    {}", list(names("loaded")))?;
    writeln!(out, "  updated   {}", list(names("updated")))?;
    writeln!(out, "  unloaded  {}", list(names("unloaded")))?;
    let refused = names("refused");
    for refusal in &refused {
        writeln!(out, "  refused   {refusal}")?;
    }
    anyhow::ensure!(
        refused.is_empty(),
        "the reload refused {} file(s)",
        refused.len()
    );
    Ok(())
}

fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let pid_file = config.pid_file().map(Path::to_owned);
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
