//! Functions the host provides: publish, transmit, logging, time, timers,
//! socket control, and procedures invoked on clients.

use crate::bindings::wasmcluster::plugin::host as wit;
pub use crate::bindings::wasmcluster::plugin::host::{HistoryPage, KeptPublication};
use crate::{ClientCallError, HostError, LogLevel, Payload};
use serde::Serialize;
use std::time::Duration;

/// Publish `data` on `channel` to every subscriber, on every worker and host.
pub fn publish(channel: &str, data: &impl Serialize) -> Result<(), HostError> {
    publish_payload(channel, Payload::json(data))
}

/// Publish a [`Payload`] as it is (no data publishes `null`).
pub fn publish_payload(channel: &str, data: Payload) -> Result<(), HostError> {
    let json = data.into_json_text().unwrap_or_else(|| "null".to_owned());
    wit::publish(channel, &json)
}

/// Send event `event` to one socket; the client's `receiver(event)` gets it.
pub fn transmit(socket_id: &str, event: &str, data: &Payload) -> Result<(), HostError> {
    wit::transmit(socket_id, event, data.as_json())
}

/// Give a socket a signed auth token carrying `claims` (a JSON object).
pub fn set_auth_token(socket_id: &str, claims: &impl Serialize) -> Result<(), HostError> {
    let claims = Payload::json(claims).into_json_text().unwrap_or_default();
    wit::set_auth_token(socket_id, &claims)
}

/// Remove a socket's auth token.
pub fn deauthenticate(socket_id: &str) -> Result<(), HostError> {
    wit::deauthenticate(socket_id)
}

/// Close a socket with a WebSocket close code and a reason.
pub fn disconnect(socket_id: &str, code: u16, reason: &str) -> Result<(), HostError> {
    wit::disconnect(socket_id, code, reason)
}

/// Unsubscribe a socket from a channel and tell the client (`#kickOut`).
pub fn kick_out(socket_id: &str, channel: &str, message: &Payload) -> Result<(), HostError> {
    wit::kick_out(socket_id, channel, message.as_json())
}

/// The channels a socket is subscribed to.
pub fn subscriptions(socket_id: &str) -> Result<Vec<String>, HostError> {
    wit::subscriptions(socket_id)
}

/// Call [`Plugin::on_timer`](crate::Plugin::on_timer) with `id` after
/// `delay_ms`, and every `delay_ms` after that when `repeat` is set.
pub fn set_timer(id: &str, delay_ms: u64, repeat: bool) -> Result<(), HostError> {
    wit::set_timer(id, delay_ms, repeat)
}

/// Cancel timer `id`; whether one was pending.
pub fn cancel_timer(id: &str) -> bool {
    wit::cancel_timer(id)
}

/// Invoke procedure `event` on a client with `data` and wait for its answer
/// (socketcluster-client: `socket.procedure(event)`, answered with
/// `request.end(data)` or `request.error(err)`), at most `timeout`.
///
/// Only this call waits: the worker, and the plugin's other instances,
/// serve other events meanwhile. `?` turns a failure into the error the
/// client answered, `TimeoutError`, or `BadConnectionError`.
///
/// ```no_run
/// # use wasmcluster_sdk::{host, Error, Payload, Socket};
/// # use std::time::Duration;
/// # fn on_invoke(socket: &Socket) -> Result<Payload, Error> {
/// let answer = host::invoke_client(
///     &socket.id,
///     "confirm",
///     &Payload::json(&"Delete the room?"),
///     Duration::from_secs(10),
/// )?;
/// let confirmed: bool = answer.parse()?;
/// # Ok(Payload::json(&confirmed))
/// # }
/// ```
pub fn invoke_client(
    socket_id: &str,
    event: &str,
    data: &Payload,
    timeout: Duration,
) -> Result<Payload, ClientCallError> {
    let timeout_ms = u32::try_from(timeout.as_millis())
        .unwrap_or(u32::MAX)
        .max(1);
    wit::invoke_client(socket_id, event, data.as_json(), timeout_ms).map(Payload::from)
}

/// A page of a channel's kept publications (`channel-history`): the newest
/// ones below offset `before` (all when `None`), at most `limit` (1 to
/// 1000), oldest first. Only channels the operator gave history
/// (`[channels."PATTERN"]`) keep publications; for others this fails with
/// [`HostError::InvalidArgument`]. With the history in Redis (`--broker`),
/// it fails with [`HostError::Unavailable`] while Redis is unreachable.
pub fn channel_history(
    channel: &str,
    before: Option<u64>,
    limit: u32,
) -> Result<HistoryPage, HostError> {
    wit::channel_history(channel, before, limit)
}

/// Milliseconds since the Unix epoch, from the host clock.
pub fn now_ms() -> u64 {
    wit::now_ms()
}

/// Write a line to the host log at `level`, tagged with the plugin's name.
pub fn log(level: LogLevel, message: &str) {
    wit::log(level, message)
}

/// Write an info line to the host log.
pub fn info(message: &str) {
    log(LogLevel::Info, message)
}

/// Write a warning to the host log.
pub fn warn(message: &str) {
    log(LogLevel::Warn, message)
}

/// Write an error line to the host log.
pub fn error(message: &str) {
    log(LogLevel::Error, message)
}
