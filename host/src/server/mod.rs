//! The listener and the worker threads.
//!
//! One accept loop hands connections round-robin to `N` worker threads. Each
//! worker runs a single-threaded tokio runtime with its own instance of
//! every plugin, reads the HTTP request of its connections, upgrades them to
//! WebSocket sessions and serves them until they close.

mod connection;
mod http;
mod pending;
mod plugin_watch;
mod problems;
mod shared;
mod static_files;
mod tls;
mod worker;

use crate::auth::AuthEngine;
use crate::broker::{Broker, Engine, History, RedisEngine};
use crate::config::ServerConfig;
use crate::kv::{KvOpenError, KvStore};
use crate::log_limit;
use crate::metrics::Metrics;
use crate::plugins::{EngineError, LoadError, PluginEngine, ReloadSummary, load_dir, reload_dir};
use crate::redis_link::{RedisError, RedisLink};
use crate::services::HostServices;
use http::Response;
use pending::PendingHandshakes;
use problems::{PluginProblems, report_json, write_report};
use shared::Shared;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::signal::unix::SignalKind;
use tokio::sync::watch;
use worker::Worker;

/// For the fuzz targets in `fuzz/`: not part of the API.
#[doc(hidden)]
pub use http::answer_request_head;
pub use problems::report_path;
pub use tls::{Tls, TlsError};

/// Why the server could not start or run.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The wasm engine could not be set up.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The plugins could not be loaded together.
    #[error(transparent)]
    Plugins(#[from] LoadError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address from the config.
        addr: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The auth key cannot be used.
    #[error("the auth key cannot be used: it must not be empty")]
    AuthKey,
    /// The TLS certificate or key cannot be served.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The Redis broker cannot be used.
    #[error(transparent)]
    Broker(#[from] RedisError),
    /// The data directory's key-value store cannot be opened.
    #[error(transparent)]
    Kv(#[from] KvOpenError),
    /// `--strict`: a plugin failed to load, or a config section names no
    /// loaded plugin.
    #[error("--strict: not starting with plugin problems: {0}")]
    Strict(String),
    /// A worker thread could not be started.
    #[error("cannot start worker {index}: {source}")]
    Worker {
        /// The worker's index.
        index: usize,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// A started server: plugins loaded, workers running, port bound.
pub struct Server {
    /// Compiles plugins at start and on every reload.
    engine: PluginEngine,
    /// SIGUSR2, registered before the server reports that it is listening so
    /// that an early signal reloads rather than kills the process.
    reload_signal: Option<tokio::signal::unix::Signal>,
    listener: TcpListener,
    workers: Vec<Worker>,
    shutdown: watch::Sender<bool>,
    shared: Arc<Shared>,
}

impl Server {
    /// Load the plugins, start the workers (each instantiates every plugin)
    /// and bind the listener. Connections are accepted by [`Server::run`].
    pub async fn start(config: ServerConfig) -> Result<Server, ServerError> {
        let engine = PluginEngine::new(config.cache_dir.as_deref())?;
        let tls = match &config.tls {
            Some(files) => Some(Tls::load(&files.cert, &files.key)?),
            None => None,
        };
        let auth = Arc::new(auth_engine(&config)?);
        let services = Arc::new(host_services(&config, auth.clone()).await?);
        let (plugins, refused) = load_dir(
            &engine,
            &config.plugins_dir,
            &config.plugin_options,
            &services,
        )
        .await?;
        let problems =
            PluginProblems::new(&plugins, refused, config.plugin_options.per_plugin.keys());
        if config.strict && !problems.is_empty() {
            return Err(ServerError::Strict(problems.lines().join("; ")));
        }
        for line in problems.lines() {
            tracing::error!("{line}; the server is not ready until this is fixed");
        }
        let plugins = Arc::new(plugins);
        if plugins.plugins.is_empty() {
            tracing::warn!(dir = %config.plugins_dir.display(), "no plugins loaded: only pub/sub is served");
        }
        let listener =
            TcpListener::bind(&config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen.clone(),
                    source,
                })?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            plugins: RwLock::new(plugins),
            problems: RwLock::new(problems),
            reloads: AtomicU64::new(0),
            pending: Arc::new(PendingHandshakes::new(
                config.max_pending_handshakes.0,
                config.max_pending_handshakes.1,
            )),
            services,
            worker_stats: std::iter::repeat_with(Arc::default)
                .take(config.workers)
                .collect(),
            started: std::time::Instant::now(),
            config,
            auth,
            tls,
            websockets: AtomicUsize::new(0),
            metrics: Metrics::default(),
        });
        let pending = shared.pending.clone();
        shared.metrics.gauge_fn(
            "pending_handshakes",
            "Connections upgraded to WebSocket that have not sent #handshake yet",
            move || pending.count() as i64,
        );
        let services = shared.services.clone();
        shared.metrics.gauge_fn(
            "broker_connected",
            "1 while publications reach the other hosts (always with one host), 0 while Redis is lost",
            move || i64::from(services.broker.is_connected()),
        );
        let services = shared.services.clone();
        shared.metrics.counter_fn(
            "broker_primary_moves",
            "Times the Redis primary moved and the host followed it (a Sentinel failover)",
            move || services.broker.primary_moves(),
        );
        shared
            .metrics
            .add(|registry| shared.services.outbound.metrics.register(registry));
        shared
            .metrics
            .add(|registry| shared.services.kv.metrics().register(registry));
        let services = shared.services.clone();
        shared.metrics.gauge_fn(
            "history_stored_bytes",
            "Bytes of publications channel history keeps in memory (--history-max-bytes; 0 when history is in Redis)",
            move || services.broker.history_usage().0 as i64,
        );
        let services = shared.services.clone();
        shared.metrics.gauge_fn(
            "history_channels",
            "Channels with a history stream in memory on this host (0 when history is in Redis)",
            move || services.broker.history_usage().1 as i64,
        );
        if !shared.config.history_rules.is_empty() && shared.config.broker_url.is_none() {
            let services = shared.services.clone();
            tokio::spawn(async move {
                let mut every_second = tokio::time::interval(Duration::from_secs(1));
                loop {
                    every_second.tick().await;
                    services.broker.sweep_history();
                }
            });
        }
        let mut workers = Vec::with_capacity(shared.config.workers);
        for index in 0..shared.config.workers {
            let worker = Worker::spawn(index, shared.clone(), shutdown_rx.clone())
                .map_err(|source| ServerError::Worker { index, source })?;
            workers.push(worker);
        }
        for worker in &mut workers {
            worker.ready().await;
        }
        let reload_signal = tokio::signal::unix::signal(SignalKind::user_defined2())
            .inspect_err(|error| {
                tracing::error!("cannot listen for SIGUSR2, reloads are off: {error}")
            })
            .ok();
        Ok(Server {
            engine,
            reload_signal,
            listener,
            workers,
            shutdown,
            shared,
        })
    }

    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accept connections until `shutdown` resolves, then close every
    /// socket with 1001 and wait (up to the configured time) for the
    /// workers to finish.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tracing::info!(
            addr = %self.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
            workers = self.workers.len(),
            plugins = self.shared.plugins().plugins.len(),
            "serving"
        );
        tokio::pin!(shutdown);
        let mut reload_signal = self.reload_signal.take();
        let mut watch = self
            .shared
            .config
            .watch
            .then(|| {
                plugin_watch::PluginWatch::start(&self.shared.config.plugins_dir)
                    .inspect_err(|error| {
                        tracing::error!(
                            "cannot watch the plugins directory, --watch is off: {error}"
                        )
                    })
                    .ok()
            })
            .flatten();
        let mut next = 0usize;
        let mut backoff = MIN_ACCEPT_BACKOFF;
        let mut reserve = SpareDescriptor::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        backoff = MIN_ACCEPT_BACKOFF;
                        self.workers[next % self.workers.len()].hand_over(stream, peer);
                        next = next.wrapping_add(1);
                    }
                    Err(error) => {
                        if is_out_of_descriptors(&error) {
                            if let Some(left_out) = log_limit::admit("out of file descriptors") {
                                tracing::warn!(left_out, "out of file descriptors: refusing a connection (503)");
                            }
                            reserve.refuse_one(&self.listener, &self.shared).await;
                        } else {
                            tracing::warn!("accept failed: {error}; retrying in {backoff:?}");
                        }
                        // Either way, pause: retrying at once would spin.
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                    }
                },
                Some(()) = async { reload_signal.as_mut()?.recv().await } => {
                    self.reload_tls();
                    self.reload().await;
                }
                Some(()) = async {
                    watch.as_mut()?.settled_change().await;
                    Some(())
                } => self.reload().await,
                () = &mut shutdown => break,
            }
        }
        tracing::info!("shutting down: closing every socket with 1001");
        drop(self.listener);
        let _ = self.shutdown.send(true);
        for worker in self.workers {
            worker.join().await;
        }
        tracing::info!("stopped");
    }
}

impl Server {
    /// Re-read the TLS certificate and key (SIGUSR2): new connections get
    /// the new pair, open ones keep theirs; a bad pair is logged and the
    /// current one stays.
    fn reload_tls(&self) {
        let Some(tls) = &self.shared.tls else {
            return;
        };
        match tls.reload() {
            Ok(()) => tracing::info!("TLS certificate reloaded: new connections get it"),
            Err(error) => {
                tracing::error!("TLS certificate not reloaded, the current one stays: {error}")
            }
        }
    }

    /// Re-read the plugins directory and switch every worker to the result
    /// (see [`reload_dir`]). Connections are untouched; a broken build is
    /// refused and the old version keeps serving. The outcome is logged, and
    /// written next to the pid file for `wasmcluster reload`.
    pub async fn reload(&self) {
        let started = std::time::Instant::now();
        let seq = self.shared.reloads.fetch_add(1, Ordering::Relaxed) + 1;
        let outcome = self.reload_plugins().await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &outcome {
            Ok(summary) => tracing::info!(
                loaded = ?summary.loaded,
                updated = ?summary.updated,
                unloaded = ?summary.unloaded,
                refused = ?summary.refused.iter().map(|r| &r.reason).collect::<Vec<_>>(),
                elapsed_ms,
                "reload done"
            ),
            Err(error) => {
                tracing::error!("reload failed, the loaded plugins keep serving: {error}")
            }
        }
        if let Some(pid_file) = &self.shared.config.pid_file {
            let report = report_json(seq, outcome.as_ref().map_err(String::clone), elapsed_ms);
            let path = report_path(pid_file);
            if let Err(error) = write_report(&path, &report) {
                tracing::warn!("cannot write the reload report {}: {error}", path.display());
            }
        }
    }

    /// Reload the plugins directory: what changed, or why nothing could.
    async fn reload_plugins(&self) -> Result<ReloadSummary, String> {
        let config = &self.shared.config;
        let current = self.shared.plugins();
        let reloaded = reload_dir(
            &self.engine,
            &config.plugins_dir,
            &current,
            &config.plugin_options,
            &self.shared.services,
        )
        .await;
        let (set, summary) = match reloaded {
            Ok(reloaded) => reloaded,
            Err(error) => {
                self.shared.metrics.reload_failed();
                return Err(error.to_string());
            }
        };
        self.shared.metrics.reload_done(summary.refused.len());
        let problems = PluginProblems::new(
            &set,
            summary.refused.clone(),
            config.plugin_options.per_plugin.keys(),
        );
        for line in problems.lines() {
            tracing::error!("{line}");
        }
        *self
            .shared
            .problems
            .write()
            .unwrap_or_else(|e| e.into_inner()) = problems;
        if summary.changed() {
            let set = Arc::new(set);
            *self
                .shared
                .plugins
                .write()
                .unwrap_or_else(|e| e.into_inner()) = set.clone();
            for worker in &self.workers {
                worker.switch_to(set.clone()).await;
            }
        }
        Ok(summary)
    }
}

/// Broker, KV store and socket registry: Redis-backed ones shared by every
/// host when `--broker` is set; else the local broker, and the KV store in
/// `--data-dir` (or in memory without one).
async fn host_services(
    config: &ServerConfig,
    auth: Arc<AuthEngine>,
) -> Result<HostServices, ServerError> {
    let rules = config.history_rules.clone();
    let Some(url) = &config.broker_url else {
        let kv = match &config.data_dir {
            Some(dir) => KvStore::embedded(dir)?,
            None => KvStore::default(),
        };
        tracing::info!(kv = %kv.status(), "key-value store");
        let history = History::new(config.history_max_bytes);
        let broker = Broker::new(Arc::default(), rules, Engine::Local(history));
        return Ok(HostServices::with(auth, broker, kv));
    };
    if config.data_dir.is_some() {
        tracing::info!(
            "--data-dir is not used for the key-value store: with --broker it is in Redis"
        );
    }
    let local = Arc::default();
    let connection = RedisLink::connect(url).await?;
    let engine = RedisEngine::start(
        connection.clone(),
        &config.broker_prefix,
        Arc::clone(&local),
        rules.clone(),
    );
    let broker = Broker::new(local, rules, Engine::Redis(engine));
    let kv = KvStore::redis(connection, config.broker_prefix.clone());
    Ok(HostServices::with(auth, broker, kv))
}

/// The auth engine with the configured key, or a random one (and a
/// warning, as SocketCluster gives none) when none is configured.
fn auth_engine(config: &ServerConfig) -> Result<AuthEngine, ServerError> {
    match &config.auth_key {
        Some(key) => AuthEngine::new(key.as_bytes(), config.auth_default_expiry_secs)
            .map_err(|_| ServerError::AuthKey),
        None => {
            tracing::warn!(
                "no --auth-key: signing tokens with a random key; they will not survive a restart \
                 nor be accepted by other hosts"
            );
            Ok(AuthEngine::with_random_key(config.auth_default_expiry_secs))
        }
    }
}

/// First pause after a failed `accept`.
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause after repeated failed `accept`s.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Whether an accept error means the process or system is out of file
/// descriptors (EMFILE, ENFILE).
fn is_out_of_descriptors(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(23 | 24))
}

/// One file descriptor held in reserve. When the process runs out, the
/// accept loop gives it up for a moment to take the pending connection and
/// close it with a 503, so that clients get an answer instead of hanging in
/// the backlog, and new connections are accepted again as soon as
/// descriptors free up.
struct SpareDescriptor(Option<std::fs::File>);

impl SpareDescriptor {
    fn new() -> Self {
        SpareDescriptor(std::fs::File::open("/dev/null").ok())
    }

    /// Take the waiting connection with the reserved descriptor: a health,
    /// readiness or metrics request is answered (so that probes and scrapes
    /// still see the server while descriptors run out), anything else gets a
    /// 503. Bounded in time: the accept loop waits for it.
    async fn refuse_one(&mut self, listener: &TcpListener, shared: &Shared) {
        self.0 = None;
        let accepted = tokio::time::timeout(Duration::from_millis(10), listener.accept()).await;
        if let Ok(Ok((mut stream, _))) = accepted {
            let answer = async {
                let response = match http::read_request(&mut stream, RESERVE_READ_TIMEOUT).await {
                    Ok((request, _)) => connection::probe(&request, shared),
                    Err(_) => None,
                }
                .unwrap_or_else(|| {
                    Response::text(
                        503,
                        "Service Unavailable",
                        "The server is out of file descriptors; try again later\n",
                    )
                    .with_header("Retry-After", "1")
                });
                let _ = response.send(&mut stream).await;
            };
            let _ = tokio::time::timeout(RESERVE_READ_TIMEOUT * 2, answer).await;
        }
        *self = SpareDescriptor::new();
    }
}

/// How long a request on the reserved descriptor may take to arrive.
const RESERVE_READ_TIMEOUT: Duration = Duration::from_millis(100);

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.local_addr().ok())
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}
