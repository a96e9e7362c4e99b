//! What a call into a plugin is (for fault reports), how it can fail, and
//! the error objects clients receive when it does.

use super::cpu::DeadlineExceeded;
use super::health::FaultKind;
use super::limits::MemoryCapExceeded;
use super::loaded::{LoadedPlugin, WaitLimitExceeded};
use super::types::ErrorObject as GuestError;
use crate::protocol::ErrorObject;
use wasmtime::Trap;

/// Which export a call enters, and for which event: named in fault logs
/// and errors. Formatted only when something fails.
#[derive(Clone, Copy)]
pub(super) enum Call<'a> {
    Invoke(&'a str),
    Transmit(&'a str),
    Connect,
    Disconnect,
    Handshake,
    Authenticate,
    Subscribe(&'a str),
    PublishIn(&'a str),
    InvokeIn(&'a str),
    TransmitIn(&'a str),
    Timer(&'a str),
}

impl Call<'_> {
    /// The event or channel the call is about, for error details.
    pub(super) fn subject(&self) -> &str {
        match self {
            Call::Invoke(subject)
            | Call::Transmit(subject)
            | Call::Subscribe(subject)
            | Call::PublishIn(subject)
            | Call::InvokeIn(subject)
            | Call::TransmitIn(subject)
            | Call::Timer(subject) => subject,
            Call::Connect => "#connect",
            Call::Disconnect => "#disconnect",
            Call::Handshake => "#handshake",
            Call::Authenticate => "#authenticate",
        }
    }
}

impl std::fmt::Display for Call<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Call::Invoke(event) => write!(f, "on-invoke '{event}'"),
            Call::Transmit(event) => write!(f, "on-transmit '{event}'"),
            Call::Connect => f.write_str("on-connect"),
            Call::Disconnect => f.write_str("on-disconnect"),
            Call::Handshake => f.write_str("on-handshake"),
            Call::Authenticate => f.write_str("on-authenticate"),
            Call::Subscribe(channel) => write!(f, "on-subscribe '{channel}'"),
            Call::PublishIn(channel) => write!(f, "on-publish-in '{channel}'"),
            Call::InvokeIn(event) => write!(f, "on-invoke-in '{event}'"),
            Call::TransmitIn(event) => write!(f, "on-transmit-in '{event}'"),
            Call::Timer(id) => write!(f, "on-timer '{id}'"),
        }
    }
}

/// Why a call into a plugin did not produce an answer.
#[derive(Debug)]
pub(super) enum CallFailure {
    /// The call trapped, timed out or ran out of memory.
    Fault(String),
    /// No instance could take the call (rebuild failed, backing off).
    Unavailable(String),
}

/// A call found its plugin replaced by a reload; it is retried on the newer set.
pub(super) struct Retired;

/// Say what kind of fault `error` is, for the log and the client.
pub(super) fn describe_fault(
    error: &wasmtime::Error,
    plugin: &LoadedPlugin,
) -> (FaultKind, String) {
    if let Some(cap) = error.downcast_ref::<MemoryCapExceeded>() {
        return (
            FaultKind::OutOfMemory,
            format!("ran out of memory (cap {} MiB)", cap.cap / (1024 * 1024)),
        );
    }
    if let Some(waited) = error.downcast_ref::<WaitLimitExceeded>() {
        return (
            FaultKind::Timeout,
            format!(
                "timed out (lasted longer than its wait limit of {} ms)",
                waited.limit.as_millis()
            ),
        );
    }
    let trap = match error.downcast_ref::<Trap>() {
        _ if error.downcast_ref::<DeadlineExceeded>().is_some() => {
            return (
                FaultKind::Timeout,
                format!(
                    "timed out (deadline {} ms)",
                    plugin.limits.deadline.as_millis()
                ),
            );
        }
        Some(Trap::StackOverflow) => "trapped (stack overflow)".to_owned(),
        Some(Trap::UnreachableCodeReached) => "trapped (panic or unreachable)".to_owned(),
        Some(trap) => format!("trapped ({trap})"),
        None => format!("failed ({error:#})"),
    };
    (FaultKind::Trap, trap)
}

/// The client's error for a call that failed.
pub(super) fn failure_error(failure: CallFailure, plugin: &str, event: &str) -> ErrorObject {
    let (name, message) = match failure {
        CallFailure::Fault(message) => ("PluginError", message),
        CallFailure::Unavailable(message) => ("PluginUnavailable", message),
    };
    ErrorObject::new(name, message)
        .with("plugin", plugin)
        .with("event", event)
}

/// The client's error for a call that answered something the host cannot
/// pass on.
pub(super) fn invalid_answer(plugin: &str, event: &str, why: &str) -> ErrorObject {
    ErrorObject::new(
        "PluginError",
        format!("Plugin '{plugin}' {why} to '{event}'"),
    )
    .with("plugin", plugin)
    .with("event", event)
}

/// The client-facing error object for an error a plugin returned, or why it
/// is not acceptable.
pub(super) fn plugin_error(error: GuestError) -> Result<ErrorObject, String> {
    let details = match error.details.as_deref() {
        None => serde_json::Map::new(),
        Some(json) => match serde_json::from_str::<serde_json::Value>(json) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => return Err("answered with error details that are not a JSON object".into()),
        },
    };
    Ok(ErrorObject {
        name: error.name,
        message: error.message,
        details,
    })
}
