//! Server configuration: command-line flags (each with a `WASMCLUSTER_*`
//! environment variable and a key in the config file) and their checked
//! form, [`ServerConfig`].

mod file;
mod origin;
mod secrets;

pub use crate::broker::{HistoryRule, HistoryRules};
pub use file::{ConfigFile, ConfigFileError, example as example_file};
pub use origin::OriginPolicy;

use crate::kv::KvQuota;
use crate::plugins::{PluginLimits, PluginOptions, PluginOverrides};
use crate::protocol::PingProtocol;
use crate::session::{PingMode, RateLimit, SessionSettings};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Heartbeat protocol choice on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PingProtocolArg {
    /// Detect per connection: serves v1 and v2 clients on one port.
    Auto,
    /// SocketCluster protocol v1 (`#1`/`#2`), for clients of SocketCluster 14 and older.
    #[value(name = "1")]
    V1,
    /// SocketCluster protocol v2 (empty frames), the current client's default.
    #[value(name = "2")]
    V2,
}

/// Flags of `wasmcluster serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// A TOML config file: every flag here has a key of the same name, and
    /// `[plugin.NAME]` sections set one plugin's limits and `init` config.
    /// Flags and environment variables override the file.
    #[arg(long, env = "WASMCLUSTER_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to listen on.
    #[arg(long, env = "WASMCLUSTER_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// TCP port to listen on (0 picks a free one).
    #[arg(long, short, env = "WASMCLUSTER_PORT", default_value_t = 8000)]
    pub port: u16,

    /// PEM certificate chain to serve `wss://` and `https://` with (needs
    /// --tls-key). Re-read on SIGUSR2. Without it the server speaks plain
    /// `ws://`, for setups that terminate TLS in front of it.
    #[arg(long, env = "WASMCLUSTER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1). Re-read on
    /// SIGUSR2.
    #[arg(long, env = "WASMCLUSTER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Scale out through Redis: `redis://[:password@]host:port/db` (or
    /// `rediss://` for TLS), `redis+sentinel://[:password@]host:26379,.../<master>`
    /// (the primary those sentinels name, followed through a failover), or
    /// `redis+cluster://[:password@]host:port,...` (a Redis Cluster).
    /// Publications reach subscribers on every host, and the plugins' KV
    /// store is shared. Without it, one host with an in-process broker.
    #[arg(long, env = "WASMCLUSTER_BROKER", value_name = "URL")]
    pub broker: Option<String>,

    /// Prefix of the keys and channels wasmcluster uses in Redis, so that
    /// several deployments can share one Redis.
    #[arg(
        long,
        env = "WASMCLUSTER_BROKER_PREFIX",
        default_value = "wasmcluster:"
    )]
    pub broker_prefix: String,

    /// The most bytes of publications channel history keeps in memory, all
    /// channels together; past it the oldest go first. Which channels keep
    /// history is set by `[channels."PATTERN"]` sections of the config file.
    #[arg(long, env = "WASMCLUSTER_HISTORY_MAX_BYTES", default_value_t = 64 << 20)]
    pub history_max_bytes: usize,

    /// Keep the plugins' key-value store durably in this directory (file
    /// `kv.redb`; one host per directory). Without it, and without
    /// --broker, the store is in memory and gone at exit. With --broker,
    /// the store is in Redis.
    #[arg(long, env = "WASMCLUSTER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// The most keys one plugin may keep in the key-value store
    /// (`[plugin.NAME] kv-max-keys` overrides it).
    #[arg(long, env = "WASMCLUSTER_KV_MAX_KEYS", default_value_t = 100_000)]
    pub kv_max_keys: u64,

    /// The most bytes of keys and values one plugin may keep in the
    /// key-value store (`[plugin.NAME] kv-max-bytes` overrides it).
    #[arg(long, env = "WASMCLUSTER_KV_MAX_BYTES", default_value_t = 64 << 20)]
    pub kv_max_bytes: u64,

    /// Directory whose `*.wasm` plugin components are loaded.
    #[arg(long, env = "WASMCLUSTER_PLUGINS", default_value = "plugins")]
    pub plugins: PathBuf,

    /// Worker threads; each owns a share of the connections and one instance
    /// of every plugin. Default: the number of CPU cores.
    #[arg(long, short, env = "WASMCLUSTER_WORKERS")]
    pub workers: Option<usize>,

    /// URL path of the WebSocket endpoint (SocketCluster's `path`).
    #[arg(long, env = "WASMCLUSTER_PATH", default_value = "/socketcluster/")]
    pub path: String,

    /// Whether clients may `#publish` (SocketCluster's `allowClientPublish`);
    /// with `false` they get "Client publish feature is disabled", and only
    /// plugins publish.
    #[arg(
        long,
        env = "WASMCLUSTER_ALLOW_CLIENT_PUBLISH",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub allow_client_publish: bool,

    /// Require authentication: an unauthenticated socket may only call the
    /// RPCs a plugin marks public (such as `login`); its other RPCs,
    /// subscriptions and publications get `AuthRequiredError`, and its
    /// transmits are dropped.
    #[arg(long, env = "WASMCLUSTER_REQUIRE_AUTH")]
    pub require_auth: bool,

    /// Origins allowed to open a WebSocket, comma-separated, as
    /// SocketCluster's `origins`: `host:port`, `host:*`, `*:port`, or `*:*`
    /// for any. Another origin gets HTTP 403. A request without an `Origin`
    /// header (not a browser) passes only with `*:*`.
    #[arg(
        long,
        env = "WASMCLUSTER_ORIGINS",
        default_value = "*:*",
        value_delimiter = ','
    )]
    pub origins: Vec<String>,

    /// Milliseconds between two server pings.
    #[arg(long, env = "WASMCLUSTER_PING_INTERVAL_MS", default_value_t = 8_000)]
    pub ping_interval_ms: u64,

    /// Milliseconds without a frame from a client before it is closed with
    /// 4001; also told to clients, which close with 4000 when no ping comes
    /// in that time.
    #[arg(long, env = "WASMCLUSTER_PING_TIMEOUT_MS", default_value_t = 30_000)]
    pub ping_timeout_ms: u64,

    /// Milliseconds a client has after the upgrade to send `#handshake`
    /// (else it is closed with 4005).
    #[arg(
        long,
        env = "WASMCLUSTER_HANDSHAKE_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub handshake_timeout_ms: u64,

    /// Heartbeat protocol: `auto` detects it per connection.
    #[arg(
        long,
        env = "WASMCLUSTER_PING_PROTOCOL",
        value_enum,
        default_value = "auto"
    )]
    pub ping_protocol: PingProtocolArg,

    /// Largest WebSocket message accepted, in bytes; a larger one closes the
    /// connection with 1009. SocketCluster's default is 100 MiB; 4 MiB keeps
    /// what one connection can make the server hold small (every connection
    /// may have one message in flight).
    #[arg(long, env = "WASMCLUSTER_MAX_PAYLOAD_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_payload_bytes: usize,

    /// Most open connections; an upgrade beyond it gets HTTP 503 (0: no limit
    /// but the process's file descriptors).
    #[arg(long, env = "WASMCLUSTER_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// Most connections that may wait for their `#handshake` at once (0: no
    /// limit); more upgrades get HTTP 503. Past half of it, new connections
    /// have at most 2 s to handshake.
    #[arg(
        long,
        env = "WASMCLUSTER_MAX_PENDING_HANDSHAKES",
        default_value_t = 1000
    )]
    pub max_pending_handshakes: usize,

    /// Most connections from one source address that may wait for their
    /// `#handshake` at once (0: no limit). Behind a proxy every client has
    /// the proxy's address: raise it or set 0 there.
    #[arg(
        long,
        env = "WASMCLUSTER_MAX_PENDING_HANDSHAKES_PER_IP",
        default_value_t = 100
    )]
    pub max_pending_handshakes_per_ip: usize,

    /// Most messages queued for one socket. A client that does not read
    /// what it is sent is disconnected (close code 4100) once its queue is
    /// full, so that it cannot grow the server's memory.
    #[arg(
        long,
        env = "WASMCLUSTER_MAX_QUEUED_MESSAGES",
        default_value_t = 10_000
    )]
    pub max_queued_messages: usize,

    /// Most bytes queued for one socket (frames it has not read yet): a
    /// client that does not read is disconnected (close code 4100) once its
    /// queue holds this much, whatever the size of the messages.
    #[arg(
        long,
        env = "WASMCLUSTER_MAX_QUEUED_BYTES",
        default_value_t = 8 * 1024 * 1024
    )]
    pub max_queued_bytes: usize,

    /// Most channels one socket may subscribe to (SocketCluster's
    /// `socketChannelLimit`; 0: no limit).
    #[arg(long, env = "WASMCLUSTER_SOCKET_CHANNEL_LIMIT", default_value_t = 1000)]
    pub socket_channel_limit: usize,

    /// Inbound messages per second allowed per socket (token bucket; 0: no
    /// limit). An RPC over the limit gets `RateLimitError`, other messages
    /// are dropped.
    #[arg(long, env = "WASMCLUSTER_RATE_LIMIT", default_value_t = 0)]
    pub rate_limit: u32,

    /// Messages a socket may send at once above --rate-limit after a quiet
    /// moment (default: the rate itself).
    #[arg(long, env = "WASMCLUSTER_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,

    /// Milliseconds one plugin call may run before it is interrupted.
    #[arg(long, env = "WASMCLUSTER_PLUGIN_DEADLINE_MS", default_value_t = 100)]
    pub plugin_deadline_ms: u64,

    /// Most bytes of data one call may carry to a plugin (an RPC's or a
    /// transmit's data, a publication a hook checks); larger data is
    /// refused before the plugin runs (`DataTooLargeError`).
    #[arg(
        long,
        env = "WASMCLUSTER_PLUGIN_MAX_DATA_BYTES",
        default_value_t = 1024 * 1024
    )]
    pub plugin_max_data_bytes: usize,

    /// Most timers (`set-timer`) one plugin may have pending on one worker;
    /// past it, `set-timer` fails with an error naming this limit.
    #[arg(long, env = "WASMCLUSTER_PLUGIN_MAX_TIMERS", default_value_t = 10_000)]
    pub plugin_max_timers: usize,

    /// Most instances of one plugin a worker may hold: how many calls to
    /// it can wait on the host (an HTTP response, a client's answer) at
    /// once on that worker. Grown on demand; each has its own memory.
    /// Plugins built against 0.1.0 keep one instance per worker unless
    /// their `[plugin.NAME] max-instances` says otherwise.
    #[arg(long, env = "WASMCLUSTER_PLUGIN_MAX_INSTANCES", default_value_t = 8, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub plugin_max_instances: usize,

    /// Milliseconds one plugin call may last, waiting on the host
    /// included, before it is ended as a fault (--plugin-deadline-ms counts
    /// only the plugin's own running time).
    #[arg(long, env = "WASMCLUSTER_PLUGIN_MAX_WAIT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub plugin_max_wait_ms: u64,

    /// Linear memory cap of one plugin instance, in MiB.
    #[arg(long, env = "WASMCLUSTER_PLUGIN_MEMORY_MIB", default_value_t = 64)]
    pub plugin_memory_mib: usize,

    /// Cache compiled plugins in this directory, so restarts skip compiling.
    #[arg(long, env = "WASMCLUSTER_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Key that signs and verifies auth tokens (HS256, SocketCluster's
    /// `authKey`). Share it with every host, and with a SocketCluster server
    /// whose tokens should be accepted. Without it a random key is made at
    /// each start, so tokens do not survive a restart.
    #[arg(long, env = "WASMCLUSTER_AUTH_KEY", hide_env_values = true)]
    pub auth_key: Option<String>,

    /// Seconds a token signed by the server is valid when its claims set no
    /// `exp` (SocketCluster's `authDefaultExpiry`).
    #[arg(
        long,
        env = "WASMCLUSTER_AUTH_DEFAULT_EXPIRY_SECS",
        default_value_t = 86_400
    )]
    pub auth_default_expiry_secs: u64,

    /// Reload the plugins directory by itself when files in it change (as
    /// SIGUSR2 does), once writes have settled for a moment.
    #[arg(long, env = "WASMCLUSTER_WATCH")]
    pub watch: bool,

    /// Write the server's process id to this file (for `wasmcluster reload`);
    /// removed on a clean exit.
    #[arg(long, env = "WASMCLUSTER_PID_FILE")]
    pub pid_file: Option<PathBuf>,

    /// Serve the status page at `/` (workers, plugins, connections, message
    /// rates, refreshed live from `/healthz`).
    #[arg(
        long,
        env = "WASMCLUSTER_STATUS_PAGE",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub status_page: bool,

    /// Serve the files of this directory over HTTP on the same port, for
    /// GET and HEAD requests to paths the server does not route otherwise
    /// (a directory's path serves its `index.html`). Hidden files and files
    /// outside the directory are never served.
    #[arg(long, env = "WASMCLUSTER_STATIC_DIR", value_name = "DIR")]
    pub static_dir: Option<PathBuf>,

    /// Refuse to start when a plugin file fails to load or a `[plugin.NAME]`
    /// section of the config file names no loaded plugin (without it, the
    /// server starts and reports them in /healthz, with /readyz at 503).
    #[arg(long, env = "WASMCLUSTER_STRICT")]
    pub strict: bool,

    /// Seconds to wait for connections to close on SIGTERM/SIGINT.
    #[arg(long, env = "WASMCLUSTER_SHUTDOWN_TIMEOUT_SECS", default_value_t = 10)]
    pub shutdown_timeout_secs: u64,
}

/// A flag value that cannot work.
#[derive(Debug, Error, PartialEq)]
#[error("invalid --{flag}: {reason}")]
pub struct ConfigError {
    /// The flag, without dashes.
    pub flag: &'static str,
    /// Why the value is refused.
    pub reason: String,
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        reason: reason.into(),
    }
}

/// The PEM files of `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// Everything the server needs, checked.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `host:port` to listen on.
    pub(crate) listen: String,
    /// Directory of plugin components.
    pub(crate) plugins_dir: PathBuf,
    /// Number of worker threads.
    pub(crate) workers: usize,
    /// WebSocket endpoint path.
    pub(crate) path: String,
    /// Which browser origins may open a WebSocket.
    pub(crate) origins: OriginPolicy,
    /// Whether `/` serves the status page.
    pub(crate) status_page: bool,
    /// The directory whose files are served (canonical), if any.
    pub(crate) static_dir: Option<PathBuf>,
    /// Certificate and key files, when the server terminates TLS.
    pub(crate) tls: Option<TlsFiles>,
    /// The Redis URL, when hosts share a broker.
    pub(crate) broker_url: Option<String>,
    /// Prefix of wasmcluster's keys and channels in Redis.
    pub(crate) broker_prefix: String,
    /// Where the key-value store is kept durably, without a broker.
    pub(crate) data_dir: Option<PathBuf>,
    /// Which channels keep history, and how much.
    pub(crate) history_rules: HistoryRules,
    /// The most bytes of history kept.
    pub(crate) history_max_bytes: usize,
    /// Protocol settings of every session.
    pub(crate) session: SessionSettings,
    /// Largest accepted message.
    pub(crate) max_payload_bytes: usize,
    /// Most open connections (0: no limit).
    pub(crate) max_connections: usize,
    /// Most connections waiting for their handshake, in all and per source
    /// address (0: no limit).
    pub(crate) max_pending_handshakes: (usize, usize),
    /// Deadline, memory cap and `init` config of each plugin.
    pub(crate) plugin_options: PluginOptions,
    /// Compiled-module cache directory.
    pub(crate) cache_dir: Option<PathBuf>,
    /// How long shutdown waits for connections to close.
    pub(crate) shutdown_timeout: Duration,
    /// Where the process id is written.
    pub(crate) pid_file: Option<PathBuf>,
    /// Whether file changes in the plugins directory trigger a reload.
    pub(crate) watch: bool,
    /// Whether plugin problems stop the start.
    pub(crate) strict: bool,
    /// The auth key, if the operator set one.
    pub(crate) auth_key: Option<String>,
    /// Default lifetime of signed tokens, in seconds.
    pub(crate) auth_default_expiry_secs: u64,
}

impl ServerConfig {
    /// Give plugins the limits and `init` config of their `[plugin.NAME]`
    /// sections, by plugin name.
    pub fn set_plugin_overrides(&mut self, per_plugin: HashMap<String, PluginOverrides>) {
        self.plugin_options.per_plugin = per_plugin;
    }

    /// Keep history for the channels of the `[channels."PATTERN"]`
    /// sections.
    pub fn set_history_rules(&mut self, rules: HistoryRules) {
        self.history_rules = rules;
    }

    /// Where the server writes its process id, if anywhere.
    pub fn pid_file(&self) -> Option<&Path> {
        self.pid_file.as_deref()
    }
}

impl ServeArgs {
    /// Check the flags and build the configuration.
    pub fn into_config(self) -> Result<ServerConfig, ConfigError> {
        let workers = match self.workers {
            Some(0) => return Err(invalid("workers", "must be at least 1")),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        if !self.path.starts_with('/') {
            return Err(invalid(
                "path",
                format!("'{}' must start with '/'", self.path),
            ));
        }
        if self.ping_interval_ms == 0 {
            return Err(invalid("ping-interval-ms", "must be more than 0"));
        }
        if self.ping_interval_ms >= self.ping_timeout_ms {
            return Err(invalid(
                "ping-interval-ms",
                format!(
                    "{} must be less than --ping-timeout-ms ({}): clients close the connection \
                     when no ping arrives within the ping timeout",
                    self.ping_interval_ms, self.ping_timeout_ms
                ),
            ));
        }
        if self.auth_key.as_deref() == Some("") {
            return Err(invalid("auth-key", "must not be empty"));
        }
        if self.max_payload_bytes < 1024 {
            return Err(invalid("max-payload-bytes", "must be at least 1024"));
        }
        if self.max_queued_messages == 0 {
            return Err(invalid("max-queued-messages", "must be at least 1"));
        }
        if self.max_queued_bytes < 1024 {
            return Err(invalid("max-queued-bytes", "must be at least 1024"));
        }
        if self.rate_limit_burst == Some(0) {
            return Err(invalid("rate-limit-burst", "must be at least 1"));
        }
        if self.rate_limit_burst.is_some() && self.rate_limit == 0 {
            return Err(invalid(
                "rate-limit-burst",
                "needs --rate-limit (messages per second) to be set",
            ));
        }
        if self.plugin_deadline_ms == 0 {
            return Err(invalid("plugin-deadline-ms", "must be more than 0"));
        }
        if self.plugin_memory_mib == 0 || self.plugin_memory_mib > 4096 {
            return Err(invalid("plugin-memory-mib", "must be between 1 and 4096"));
        }
        if self.ping_protocol == PingProtocolArg::Auto
            && 2 * self.ping_interval_ms >= self.ping_timeout_ms
        {
            return Err(invalid(
                "ping-interval-ms",
                format!(
                    "{} must be less than half of --ping-timeout-ms ({}) with --ping-protocol auto: \
                     a v1 client gets its first ping at the second interval",
                    self.ping_interval_ms, self.ping_timeout_ms
                ),
            ));
        }
        let static_dir = self
            .static_dir
            .as_deref()
            .map(checked_static_dir)
            .transpose()
            .map_err(|reason| invalid("static-dir", reason))?;
        let ping_mode = match self.ping_protocol {
            PingProtocolArg::Auto => PingMode::Auto,
            PingProtocolArg::V1 => PingMode::Fixed(PingProtocol::V1),
            PingProtocolArg::V2 => PingMode::Fixed(PingProtocol::V2),
        };
        Ok(ServerConfig {
            listen: format!("{}:{}", self.host, self.port),
            plugins_dir: self.plugins,
            workers,
            path: self.path,
            session: SessionSettings {
                ping_interval: Duration::from_millis(self.ping_interval_ms),
                ping_timeout: Duration::from_millis(self.ping_timeout_ms),
                handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
                ping_mode,
                allow_client_publish: self.allow_client_publish,
                require_auth: self.require_auth,
                max_queued_messages: self.max_queued_messages,
                max_queued_bytes: self.max_queued_bytes,
                socket_channel_limit: self.socket_channel_limit,
                rate_limit: (self.rate_limit > 0).then(|| RateLimit {
                    per_second: self.rate_limit,
                    burst: self.rate_limit_burst.unwrap_or(self.rate_limit),
                }),
            },
            status_page: self.status_page,
            static_dir,
            broker_url: self.broker,
            broker_prefix: self.broker_prefix,
            data_dir: self.data_dir,
            history_rules: HistoryRules::default(),
            history_max_bytes: self.history_max_bytes,
            tls: self
                .tls_cert
                .zip(self.tls_key)
                .map(|(cert, key)| TlsFiles { cert, key }),
            origins: OriginPolicy::parse(&self.origins)
                .map_err(|reason| invalid("origins", reason))?,
            max_payload_bytes: self.max_payload_bytes,
            max_connections: self.max_connections,
            max_pending_handshakes: (
                self.max_pending_handshakes,
                self.max_pending_handshakes_per_ip,
            ),
            plugin_options: PluginOptions::new(PluginLimits {
                deadline: Duration::from_millis(self.plugin_deadline_ms),
                memory_bytes: self.plugin_memory_mib * 1024 * 1024,
                max_data_bytes: self.plugin_max_data_bytes,
                max_timers: self.plugin_max_timers,
                max_instances: self.plugin_max_instances,
                max_wait: Duration::from_millis(self.plugin_max_wait_ms),
                kv_quota: KvQuota {
                    max_keys: self.kv_max_keys,
                    max_bytes: self.kv_max_bytes,
                },
            }),
            cache_dir: self.cache_dir,
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_secs),
            pid_file: self.pid_file,
            watch: self.watch,
            strict: self.strict,
            auth_key: self.auth_key,
            auth_default_expiry_secs: self.auth_default_expiry_secs,
        })
    }
}

/// The static files directory, canonical (the server checks that every
/// file it serves lies inside it), once it is known to be a readable
/// directory: a mistyped path stops the start rather than answer 404s.
fn checked_static_dir(dir: &Path) -> Result<PathBuf, String> {
    let cannot = |why: String| format!("cannot serve files from '{}': {why}", dir.display());
    let canonical = dir
        .canonicalize()
        .map_err(|error| cannot(error.to_string()))?;
    if !canonical.is_dir() {
        return Err(cannot("not a directory".to_owned()));
    }
    std::fs::read_dir(&canonical).map_err(|error| cannot(error.to_string()))?;
    Ok(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn config(flags: &[&str]) -> Result<ServerConfig, ConfigError> {
        let argv = std::iter::once("serve").chain(flags.iter().copied());
        Cli::try_parse_from(argv).unwrap().args.into_config()
    }

    #[test]
    fn defaults_match_socketcluster() {
        let config = config(&[]).unwrap();
        assert_eq!(config.path, "/socketcluster/");
        assert_eq!(config.session.ping_interval, Duration::from_secs(8));
        assert_eq!(config.session.ping_timeout, Duration::from_secs(30));
        assert_eq!(config.session.handshake_timeout, Duration::from_secs(10));
        assert!(config.session.allow_client_publish);
        assert!(config.workers >= 1);
    }

    #[test]
    fn bad_values_name_their_flag() {
        assert_eq!(config(&["-w", "0"]).unwrap_err().flag, "workers");
        assert_eq!(config(&["--path", "x"]).unwrap_err().flag, "path");
        let error =
            config(&["--ping-interval-ms", "5000", "--ping-timeout-ms", "5000"]).unwrap_err();
        assert_eq!(error.flag, "ping-interval-ms");
        assert!(
            error
                .to_string()
                .starts_with("invalid --ping-interval-ms: 5000 must be less")
        );
    }

    #[test]
    fn the_static_dir_must_be_a_readable_directory() {
        let dir = tempfile::tempdir().unwrap();
        let web = dir.path().join("web");
        std::fs::create_dir(&web).unwrap();
        let served = config(&["--static-dir", web.to_str().unwrap()]).unwrap();
        assert_eq!(served.static_dir, Some(web.canonicalize().unwrap()));

        let missing = dir.path().join("missing");
        let error = config(&["--static-dir", missing.to_str().unwrap()]).unwrap_err();
        assert_eq!(error.flag, "static-dir");
        assert!(
            error.reason.starts_with(&format!(
                "cannot serve files from '{}': ",
                missing.display()
            )),
            "{error}"
        );
        let file = dir.path().join("file.txt");
        std::fs::write(&file, "").unwrap();
        let error = config(&["--static-dir", file.to_str().unwrap()]).unwrap_err();
        assert!(error.reason.ends_with("not a directory"), "{error}");
    }

    #[test]
    fn ping_protocol_values() {
        let v1 = config(&["--ping-protocol", "1"]).unwrap();
        assert_eq!(v1.session.ping_mode, PingMode::Fixed(PingProtocol::V1));
    }
}
