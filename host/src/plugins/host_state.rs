//! The data of each plugin instance's `Store`, and the host functions
//! plugins call, written once for every version of the contract (each
//! version's module in `wit/` forwards its imports here).

use super::guest_log::{GuestLog, GuestStream, RecentStderr};
use super::limits::InstanceLimits;
use super::options::PluginLimits;
use super::timers::{TimerError, WorkerTimers};
use super::types::{ClientCallError, ErrorObject, HostError, Json, LogLevel};
use crate::broker::{HistoryError, HistoryPage};
use crate::kv::{KvError, KvQuota, Op, OpResult, Operation, Outcome, Page};
use crate::mailbox::{ClientAnswer, Control, Outbound};
use crate::metrics::{self, PublicationSource};
use crate::outbound::{OutboundClient, OutboundError, OutboundPolicy, Reply};
use crate::protocol;
use crate::services::HostServices;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

/// What the host functions of one worker's plugin instances act on: the
/// services the whole server shares, and the worker's own timers (a timer
/// fires on the worker that set it).
#[derive(Debug, Clone)]
pub(crate) struct WorkerServices {
    /// The broker, sockets, KV and auth of the whole server.
    pub(crate) shared: Arc<HostServices>,
    /// This worker's timers.
    pub(crate) timers: Arc<WorkerTimers>,
}

impl WorkerServices {
    /// `shared`, with a timer table of its own: a worker's, or a trial
    /// instance's (whose timers never fire).
    pub(crate) fn new(shared: Arc<HostServices>) -> Self {
        WorkerServices {
            shared,
            timers: Arc::default(),
        }
    }
}

/// The data of one plugin instance's `Store`.
pub struct HostState {
    /// The plugin's name: its KV namespace and its tag in logs.
    plugin: Arc<str>,
    /// The host side of every import.
    services: Arc<HostServices>,
    /// The worker's timers, where `set-timer` puts this plugin's.
    timers: Arc<WorkerTimers>,
    /// The most timers this plugin may have pending on the worker.
    max_timers: usize,
    /// What this plugin may keep in the key-value store.
    kv_quota: KvQuota,
    /// WASI with no filesystem, network or environment; stdout and stderr go
    /// to the host log.
    wasi: WasiCtx,
    /// WASI resources (streams, HTTP requests) owned by the guest.
    table: ResourceTable,
    /// `wasi:http` state.
    http: WasiHttpCtx,
    /// Sends the plugin's outbound requests under its policy.
    outbound: OutboundHooks,
    /// Memory, table and instance caps for this instance.
    limits: InstanceLimits,
    /// What the guest wrote to stderr lately (panic messages).
    recent_stderr: RecentStderr,
}

impl HostState {
    /// State for a new instance of the plugin `outbound` is the policy of,
    /// on the worker of `services`, under `limits` (memory, timers).
    pub(crate) fn new(
        outbound: Arc<OutboundPolicy>,
        services: WorkerServices,
        limits: PluginLimits,
    ) -> Self {
        let plugin = outbound.plugin.clone();
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
            outbound: OutboundHooks {
                client: services.shared.outbound.clone(),
                policy: outbound,
            },
            http: WasiHttpCtx::new(),
            services: services.shared,
            timers: services.timers,
            max_timers: limits.max_timers,
            kv_quota: limits.kv_quota,
            wasi,
            table: ResourceTable::new(),
            limits: InstanceLimits::new(limits.memory_bytes),
            recent_stderr,
        }
    }

    /// The resource limiter wasmtime consults on every memory or table growth.
    pub fn limits(&mut self) -> &mut InstanceLimits {
        &mut self.limits
    }

    /// What the guest wrote to stderr lately, for a fault report.
    pub fn take_recent_stderr(&self) -> String {
        self.recent_stderr.take()
    }

    /// Queue something for a socket on any worker.
    fn deliver(&self, socket_id: String, queued: Outbound) -> Result<(), HostError> {
        self.services
            .sockets
            .deliver(&socket_id, queued)
            .map_err(|_| HostError::UnknownSocket(socket_id))
    }

    /// `publish`: deliver `data` to every subscriber of `channel`.
    pub fn publish(&mut self, channel: &str, data: &str) -> Result<(), HostError> {
        check_json("publish data", data)?;
        self.services.broker.publish(channel, Some(data));
        metrics::count_publication(PublicationSource::Plugin);
        Ok(())
    }

    /// `transmit`: send an event to one socket.
    pub fn transmit(
        &mut self,
        socket_id: String,
        event: &str,
        data: Option<&str>,
    ) -> Result<(), HostError> {
        if let Some(data) = data {
            check_json("transmit data", data)?;
        }
        let frame = protocol::event(event, data);
        self.deliver(socket_id, Outbound::Frame(frame.into()))
    }

    /// `set-auth-token`: sign `claims` and give the token to a socket.
    pub fn set_auth_token(&mut self, socket_id: String, claims: &str) -> Result<(), HostError> {
        let signed = self
            .services
            .auth
            .sign(claims)
            .map_err(|error| HostError::InvalidArgument(error.to_string()))?;
        let queued = Control::SetAuthToken {
            token: signed.token,
            claims: signed.claims,
            expires_at: signed.expires_at,
        }
        .into();
        self.deliver(socket_id, queued)
    }

    /// `deauthenticate`: take a socket's token back.
    pub fn deauthenticate(&mut self, socket_id: String) -> Result<(), HostError> {
        self.deliver(socket_id, Control::Deauthenticate.into())
    }

    /// `disconnect`: close a socket with a code and reason.
    pub fn disconnect(
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

    /// `kick-out`: unsubscribe a socket from a channel and tell it.
    pub fn kick_out(
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

    /// `subscriptions`: the channels a socket is subscribed to, sorted.
    pub fn subscriptions(&mut self, socket_id: &str) -> Result<Vec<String>, HostError> {
        self.services
            .sockets
            .subscriptions(socket_id)
            .map_err(|_| HostError::UnknownSocket(socket_id.to_owned()))
    }

    /// `kv-get`.
    pub async fn kv_get(&mut self, key: &str) -> Result<Option<String>, HostError> {
        let kv = &self.services.kv;
        kv.get(&self.plugin, key).await.map_err(kv_error)
    }

    /// `kv-set`.
    pub async fn kv_set(&mut self, key: String, value: String) -> Result<(), HostError> {
        let kv = &self.services.kv;
        let set = kv.set(&self.plugin, self.kv_quota, key, value);
        set.await.map_err(kv_error)
    }

    /// `kv-delete`.
    pub async fn kv_delete(&mut self, key: String) -> Result<bool, HostError> {
        let kv = &self.services.kv;
        let delete = kv.delete(&self.plugin, self.kv_quota, key);
        delete.await.map_err(kv_error)
    }

    /// `kv-incr`.
    pub async fn kv_incr(&mut self, key: String, delta: i64) -> Result<i64, HostError> {
        let kv = &self.services.kv;
        let incr = kv.incr(&self.plugin, self.kv_quota, key, delta);
        incr.await.map_err(kv_error)
    }

    /// `kv-compare-and-set` (0.2.0).
    pub async fn kv_compare_and_set(
        &mut self,
        key: String,
        expected: Option<String>,
        value: Option<String>,
    ) -> Result<bool, HostError> {
        let kv = &self.services.kv;
        let cas = kv.compare_and_set(&self.plugin, self.kv_quota, key, expected, value);
        cas.await.map_err(kv_error)
    }

    /// `kv-expire` (0.2.0).
    pub async fn kv_expire(&mut self, key: String, ttl_ms: Option<u64>) -> Result<bool, HostError> {
        let kv = &self.services.kv;
        let expire = kv.expire(&self.plugin, self.kv_quota, key, ttl_ms);
        expire.await.map_err(kv_error)
    }

    /// `kv-batch` (0.2.0): the results are the new values of the batch's
    /// `add`s, in order; `Err(index)` names the check that did not hold.
    pub(crate) async fn kv_batch(
        &mut self,
        ops: Vec<Op>,
    ) -> Result<Result<Vec<i64>, u32>, HostError> {
        let kv = &self.services.kv;
        let apply = kv.apply(&self.plugin, self.kv_quota, Operation::Batch, ops);
        Ok(match apply.await.map_err(kv_error)? {
            Outcome::Applied(results) => Ok(results
                .into_iter()
                .filter_map(|result| match result {
                    OpResult::Value(value) => Some(value),
                    OpResult::Done | OpResult::Existed(_) => None,
                })
                .collect()),
            Outcome::Conflict(index) => Err(index as u32),
        })
    }

    /// `kv-list` (0.2.0).
    pub(crate) async fn kv_list(
        &mut self,
        prefix: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page, HostError> {
        let kv = &self.services.kv;
        let list = kv.list(&self.plugin, prefix, cursor, limit);
        list.await.map_err(kv_error)
    }

    /// `channel-history` (0.2.0): a page of a channel's kept
    /// publications.
    pub(crate) async fn channel_history(
        &mut self,
        channel: &str,
        before: Option<u64>,
        limit: u32,
    ) -> Result<HistoryPage, HostError> {
        if limit == 0 || limit > MAX_HISTORY_PAGE {
            return Err(HostError::InvalidArgument(format!(
                "a history page holds 1 to {MAX_HISTORY_PAGE} publications; asked for {limit}"
            )));
        }
        let broker = &self.services.broker;
        let page = broker.history_page(channel, before, limit as usize).await;
        page.map_err(|error| match error {
            HistoryError::NoHistory => HostError::InvalidArgument(format!(
                "channel '{channel}' keeps no history (see [channels.\"PATTERN\"] in the config)"
            )),
            HistoryError::Unavailable(reason) => HostError::Unavailable(format!(
                "the history of channel '{channel}' cannot be read now: {reason}"
            )),
        })
    }

    /// `log`: a line in the host log, tagged with the plugin's name.
    pub fn log(&mut self, level: LogLevel, message: &str) {
        let plugin = &*self.plugin;
        match level {
            LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }

    /// `now-ms`: milliseconds since the Unix epoch, on the clock KV expiries
    /// are measured on.
    pub fn now_ms() -> u64 {
        crate::kv::now_ms()
    }

    /// `set-timer`: call this plugin's `on-timer(id)` on this worker after
    /// `delay_ms`, and every `delay_ms` after that when `repeat`.
    pub fn set_timer(&mut self, id: String, delay_ms: u64, repeat: bool) -> Result<(), HostError> {
        let delay = Duration::from_millis(delay_ms);
        self.timers
            .set(&self.plugin, id, delay, repeat, self.max_timers)
            .map_err(|error| match error {
                TimerError::TooMany { .. } => HostError::Unavailable(error.to_string()),
                _ => HostError::InvalidArgument(error.to_string()),
            })
    }

    /// `cancel-timer`: whether timer `id` of this plugin was pending on
    /// this worker.
    pub fn cancel_timer(&mut self, id: String) -> bool {
        self.timers.cancel(&self.plugin, id)
    }

    /// `invoke-client`: invoke procedure `event` on a socket (of any
    /// worker) and wait up to `timeout_ms` for its answer. Only this
    /// instance waits: the worker and the plugin's other instances go on.
    pub async fn invoke_client(
        &mut self,
        socket_id: String,
        event: String,
        data: Option<String>,
        timeout_ms: u32,
    ) -> Result<Option<Json>, ClientCallError> {
        if event.is_empty() || event.starts_with('#') {
            return Err(ClientCallError::InvalidArgument(
                "a client procedure's name must not be empty nor start with '#' \
                 (the protocol's own events)"
                    .into(),
            ));
        }
        if timeout_ms == 0 {
            return Err(ClientCallError::InvalidArgument(
                "timeout-ms must be at least 1".into(),
            ));
        }
        if let Some(data) = &data {
            check_json("invoke-client data", data)
                .map_err(|error| ClientCallError::InvalidArgument(error.to_string()))?;
        }
        let (answer, answered) = oneshot::channel();
        let call = Control::InvokeClient {
            event,
            data,
            answer,
        };
        if self
            .services
            .sockets
            .deliver(&socket_id, call.into())
            .is_err()
        {
            return Err(ClientCallError::UnknownSocket(socket_id));
        }
        let timeout = Duration::from_millis(timeout_ms.into());
        match tokio::time::timeout(timeout, answered).await {
            Err(_) => Err(ClientCallError::Timeout),
            Ok(Err(_)) => Err(ClientCallError::Disconnected),
            Ok(Ok(ClientAnswer::Data(data))) => Ok(data),
            Ok(Ok(ClientAnswer::Error(error))) => {
                Err(ClientCallError::ClientError(client_error(&error)))
            }
            Ok(Ok(ClientAnswer::Refused(why))) => Err(ClientCallError::Unavailable(why)),
        }
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

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// `wasi:http/outgoing-handler` for one plugin instance: every request goes
/// through the plugin's outbound policy.
struct OutboundHooks {
    client: Arc<OutboundClient>,
    policy: Arc<OutboundPolicy>,
}

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _response_errors: Box<dyn Future<Output = Result<(), OutboundError>> + Send>,
    ) -> Box<dyn Future<Output = Result<Reply, OutboundError>> + Send> {
        Box::new(self.client.clone().send(self.policy.clone(), request))
    }
}

fn check_json(what: &str, text: &str) -> Result<(), HostError> {
    protocol::validate_json(text)
        .map_err(|error| HostError::InvalidArgument(format!("{what} is not valid JSON: {error}")))
}

/// A client's error (SocketCluster's dehydrated error: `{"name",
/// "message", ...}`) as a plugin sees it; anything else a client sends as
/// an error becomes the message of an `Error`.
fn client_error(json: &str) -> ErrorObject {
    let mut fields = match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(fields)) => fields,
        Ok(serde_json::Value::String(message)) => {
            serde_json::Map::from_iter([("message".to_owned(), serde_json::Value::String(message))])
        }
        _ => serde_json::Map::from_iter([(
            "message".to_owned(),
            serde_json::Value::String(json.to_owned()),
        )]),
    };
    let mut text = |key: &str| match fields.remove(key) {
        Some(serde_json::Value::String(text)) => Some(text),
        Some(other) => Some(other.to_string()),
        None => None,
    };
    let name = text("name").unwrap_or_else(|| "Error".to_owned());
    let message = text("message").unwrap_or_default();
    ErrorObject {
        name,
        message,
        details: (!fields.is_empty()).then(|| serde_json::Value::Object(fields).to_string()),
    }
}

/// The most publications one `channel-history` page holds.
const MAX_HISTORY_PAGE: u32 = 1000;

/// A KV failure as the plugin sees it.
fn kv_error(error: KvError) -> HostError {
    match error {
        KvError::Unavailable(_) | KvError::KeysQuota { .. } | KvError::BytesQuota { .. } => {
            HostError::Unavailable(error.to_string())
        }
        KvError::NotAnInteger { .. } | KvError::Overflow { .. } | KvError::Invalid(_) => {
            HostError::InvalidArgument(error.to_string())
        }
    }
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}
