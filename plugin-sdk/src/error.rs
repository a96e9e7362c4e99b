//! The error a plugin answers an RPC with.

use crate::bindings::wasmcluster::plugin::types::ErrorObject;
use crate::{ClientCallError, HostError};
use serde::Serialize;
use serde_json::{Map, Value};

/// An error as a SocketCluster client receives it: `err.name`, `err.message`
/// and any extra properties (`err.code`, ...).
///
/// Return it from [`Plugin::on_invoke`](crate::Plugin::on_invoke) to answer
/// an RPC with an error, or from a middleware hook to deny an action.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    /// The error class the client sees in `err.name`.
    pub name: String,
    /// The message the client sees in `err.message`.
    pub message: String,
    /// Extra properties of the error object on the client.
    pub details: Map<String, Value>,
}

impl Error {
    /// An error with this name and message and no extra properties.
    pub fn new(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error {
            name: name.into(),
            message: message.into(),
            details: Map::new(),
        }
    }

    /// Add an extra property, e.g. `.with_detail("code", 42)`. A value that
    /// cannot be serialized becomes `null`.
    pub fn with_detail(mut self, key: impl Into<String>, value: impl Serialize) -> Self {
        let value = serde_json::to_value(value).unwrap_or(Value::Null);
        self.details.insert(key.into(), value);
        self
    }

    /// The answer for an event this plugin does not handle: the same
    /// `UnknownEventError` the host gives for events no plugin declares.
    pub fn unknown_event(event: &str) -> Self {
        Error::new(
            "UnknownEventError",
            format!("No plugin handles the event '{event}'"),
        )
        .with_detail("event", event)
    }

    /// The answer for data that does not have the expected shape.
    pub fn invalid_data(why: impl std::fmt::Display) -> Self {
        Error::new("InvalidDataError", format!("Invalid data: {why}"))
    }

    pub(crate) fn into_wit(self) -> ErrorObject {
        let details = if self.details.is_empty() {
            None
        } else {
            Some(Value::Object(self.details).to_string())
        };
        ErrorObject {
            name: self.name,
            message: self.message,
            details,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

impl std::error::Error for Error {}

/// A failed host call answers the RPC with `HostError`, so that `?` works on
/// host functions inside `on_invoke`. The message says what failed in plain
/// words; the `reason` detail names the kind (`unknown-socket`, ...).
impl From<HostError> for Error {
    fn from(error: HostError) -> Self {
        let (reason, message) = match error {
            HostError::Unsupported(text) => ("unsupported", text),
            HostError::UnknownSocket(id) => {
                ("unknown-socket", format!("no connected socket has id {id}"))
            }
            HostError::InvalidArgument(text) => ("invalid-argument", text),
            HostError::Unavailable(text) => ("unavailable", text),
        };
        Error::new("HostError", message).with_detail("reason", reason)
    }
}

/// A failed [`invoke_client`](crate::host::invoke_client) answers the RPC
/// the way SocketCluster reports it: the client's own error as it sent it,
/// `TimeoutError` when it did not answer in time, `BadConnectionError` when
/// it disconnected first, `HostError` otherwise.
impl From<ClientCallError> for Error {
    fn from(error: ClientCallError) -> Self {
        match error {
            ClientCallError::ClientError(error) => {
                let mut out = Error::new(error.name, error.message);
                if let Some(Ok(Value::Object(details))) =
                    error.details.as_deref().map(serde_json::from_str::<Value>)
                {
                    out.details = details;
                }
                out
            }
            ClientCallError::Timeout => Error::new(
                "TimeoutError",
                "The client did not answer the procedure call in time",
            ),
            ClientCallError::Disconnected => Error::new(
                "BadConnectionError",
                "The socket disconnected before it answered the procedure call",
            ),
            ClientCallError::UnknownSocket(id) => HostError::UnknownSocket(id).into(),
            ClientCallError::InvalidArgument(text) => HostError::InvalidArgument(text).into(),
            ClientCallError::Unavailable(text) => HostError::Unavailable(text).into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_become_a_json_object() {
        let wit = Error::new("Custom", "boom")
            .with_detail("code", 42)
            .into_wit();
        assert_eq!(wit.name, "Custom");
        assert_eq!(wit.message, "boom");
        assert_eq!(wit.details.as_deref(), Some(r#"{"code":42}"#));
    }

    #[test]
    fn no_details_means_none() {
        assert_eq!(Error::new("A", "b").into_wit().details, None);
    }
}
