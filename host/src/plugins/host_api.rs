//! The host functions plugins import (`interface host` in the WIT), and the
//! per-store state they work on.

use super::bindings::wasmcluster::plugin::host::Host;
use super::bindings::wasmcluster::plugin::types::{self, HostError, LogLevel};
use super::guest_log::{GuestLog, GuestStream, RecentStderr};
use super::kv::{KvError, KvStore};
use super::limits::InstanceLimits;
use crate::auth::AuthEngine;
use crate::broker::Broker;
use crate::protocol;
use crate::session::{Control, Outbound, SocketRegistry};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// What host functions act on: shared by every plugin instance on every
/// worker.
pub struct HostServices {
    /// Channel subscriptions and publication delivery.
    pub broker: Broker,
    /// Connected sockets by id, for `transmit`.
    pub sockets: SocketRegistry,
    /// The plugins' key-value store.
    pub kv: KvStore,
    /// Signs the tokens plugins give to sockets.
    pub auth: Arc<AuthEngine>,
}

impl HostServices {
    /// Services of one host (local broker, in-memory KV) signing tokens
    /// with `auth`.
    pub fn new(auth: Arc<AuthEngine>) -> Self {
        Self::with(auth, Broker::default(), KvStore::default())
    }

    /// Services with the given broker and KV store.
    pub fn with(auth: Arc<AuthEngine>, broker: Broker, kv: KvStore) -> Self {
        HostServices {
            broker,
            sockets: SocketRegistry::default(),
            kv,
            auth,
        }
    }
}

/// The data of one plugin instance's `Store`.
pub struct HostState {
    /// The plugin's name: its KV namespace and its tag in logs.
    plugin: Arc<str>,
    /// The host side of every import.
    services: Arc<HostServices>,
    /// WASI with no filesystem, network or environment; stdout and stderr go
    /// to the host log.
    wasi: WasiCtx,
    /// WASI resources (streams) owned by the guest.
    table: ResourceTable,
    /// Memory, table and instance caps for this instance.
    limits: InstanceLimits,
    /// What the guest wrote to stderr lately (panic messages).
    recent_stderr: RecentStderr,
}

impl HostState {
    /// State for a new instance of `plugin`, capped at `memory_bytes` of
    /// linear memory.
    pub fn new(plugin: Arc<str>, services: Arc<HostServices>, memory_bytes: usize) -> Self {
        let recent_stderr = RecentStderr::default();
        let wasi = WasiCtxBuilder::new()
            .stdout(GuestLog::new(plugin.clone(), GuestStream::Stdout))
            .stderr(GuestLog::new(
                plugin.clone(),
                GuestStream::Stderr(recent_stderr.clone()),
            ))
            .build();
        HostState {
            plugin,
            services,
            wasi,
            table: ResourceTable::new(),
            limits: InstanceLimits::new(memory_bytes),
            recent_stderr,
        }
    }

    /// The resource limiter wasmtime consults on every memory or table growth.
    pub fn limits(&mut self) -> &mut InstanceLimits {
        &mut self.limits
    }

    /// Queue something for a socket on any worker.
    fn deliver(&self, socket_id: String, queued: Outbound) -> Result<(), HostError> {
        self.services
            .sockets
            .deliver(&socket_id, queued)
            .map_err(|_| HostError::UnknownSocket(socket_id))
    }

    /// What the guest wrote to stderr lately, for a fault report.
    pub fn take_recent_stderr(&self) -> String {
        self.recent_stderr.take()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

fn check_json(what: &str, text: &str) -> Result<(), HostError> {
    protocol::validate_json(text)
        .map_err(|error| HostError::InvalidArgument(format!("{what} is not valid JSON: {error}")))
}

/// A KV failure as the plugin sees it.
fn kv_error(error: KvError) -> HostError {
    match error {
        KvError::Unavailable(_) => HostError::Unavailable(error.to_string()),
        KvError::NotAnInteger { .. } | KvError::Overflow { .. } => {
            HostError::InvalidArgument(error.to_string())
        }
    }
}

fn unsupported(function: &str) -> Result<(), HostError> {
    Err(HostError::Unsupported(format!(
        "{function} is not supported by this version of wasmcluster yet"
    )))
}

impl Host for HostState {
    fn publish(&mut self, channel: String, data: String) -> Result<(), HostError> {
        check_json("publish data", &data)?;
        self.services.broker.publish(&channel, Some(&data));
        crate::metrics::count_publication(crate::metrics::PublicationSource::Plugin);
        Ok(())
    }

    fn transmit(
        &mut self,
        socket_id: String,
        event: String,
        data: Option<String>,
    ) -> Result<(), HostError> {
        if let Some(data) = &data {
            check_json("transmit data", data)?;
        }
        let frame = protocol::event(&event, data.as_deref());
        self.deliver(socket_id, Outbound::Frame(frame.into()))
    }

    fn set_auth_token(&mut self, socket_id: String, claims: String) -> Result<(), HostError> {
        let signed = self
            .services
            .auth
            .sign(&claims)
            .map_err(|error| HostError::InvalidArgument(error.to_string()))?;
        let queued = Control::SetAuthToken {
            token: signed.token,
            claims: signed.claims,
            expires_at: signed.expires_at,
        }
        .into();
        self.deliver(socket_id, queued)
    }

    fn deauthenticate(&mut self, socket_id: String) -> Result<(), HostError> {
        self.deliver(socket_id, Control::Deauthenticate.into())
    }

    fn disconnect(
        &mut self,
        socket_id: String,
        code: u16,
        reason: String,
    ) -> Result<(), HostError> {
        // 1000-1003, 1007-1014 and 3000-4999 are codes an endpoint may send.
        if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
            return Err(HostError::InvalidArgument(format!(
                "{code} is not a close code a server may send"
            )));
        }
        if reason.len() > 123 {
            return Err(HostError::InvalidArgument(
                "the close reason must fit in 123 bytes".into(),
            ));
        }
        self.deliver(socket_id, Control::Disconnect { code, reason }.into())
    }

    fn kick_out(
        &mut self,
        socket_id: String,
        channel: String,
        message: Option<String>,
    ) -> Result<(), HostError> {
        if let Some(message) = &message {
            check_json("kick-out message", message)?;
        }
        self.deliver(socket_id, Control::KickOut { channel, message }.into())
    }

    fn subscriptions(&mut self, _socket_id: String) -> Result<Vec<String>, HostError> {
        unsupported("subscriptions").map(|()| Vec::new())
    }

    async fn kv_get(&mut self, key: String) -> Result<Option<String>, HostError> {
        self.services
            .kv
            .get(&self.plugin, &key)
            .await
            .map_err(kv_error)
    }

    async fn kv_set(&mut self, key: String, value: String) -> Result<(), HostError> {
        self.services
            .kv
            .set(&self.plugin, key, value)
            .await
            .map_err(kv_error)
    }

    async fn kv_delete(&mut self, key: String) -> Result<bool, HostError> {
        self.services
            .kv
            .delete(&self.plugin, &key)
            .await
            .map_err(kv_error)
    }

    async fn kv_incr(&mut self, key: String, delta: i64) -> Result<i64, HostError> {
        self.services
            .kv
            .incr(&self.plugin, &key, delta)
            .await
            .map_err(kv_error)
    }

    fn log(&mut self, level: LogLevel, message: String) {
        let plugin = &*self.plugin;
        match level {
            LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64)
    }

    fn set_timer(&mut self, _id: String, _delay_ms: u64, _repeat: bool) -> Result<(), HostError> {
        unsupported("set-timer")
    }
}
