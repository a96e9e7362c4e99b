//! The error object of SocketCluster answers, as `sc-errors` writes it.

use std::fmt::Write as _;

/// The longest event or channel name a client may use. SocketCluster sets
/// none; without one a single name can be megabytes, held by the broker and
/// echoed in answers.
pub const MAX_NAME_BYTES: usize = 1024;

/// How much of a name an error message quotes.
const QUOTED_NAME_BYTES: usize = 128;

/// `name`, cut to `QUOTED_NAME_BYTES` (at a character boundary) with `…`
/// when it is longer.
pub fn quoted(name: &str) -> std::borrow::Cow<'_, str> {
    if name.len() <= QUOTED_NAME_BYTES {
        return name.into();
    }
    let mut end = QUOTED_NAME_BYTES;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end]).into()
}

/// A SocketCluster error object as sent in `{"rid":..,"error":{..}}`.
///
/// On the wire it is `{"message":..,"name":..,...details}`, the shape
/// `sc-errors`' `dehydrateError` produces and `hydrateError` reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorObject {
    /// `err.name` on the client.
    pub name: String,
    /// `err.message` on the client.
    pub message: String,
    /// Extra properties; `name` and `message` keys here are ignored.
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl ErrorObject {
    /// An error with a name and a message.
    pub fn new(name: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorObject {
            name: name.into(),
            message: message.into(),
            details: serde_json::Map::new(),
        }
    }

    /// Add an extra property.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// `InvalidActionError`, what SocketCluster answers malformed reserved events with.
    pub fn invalid_action(message: impl Into<String>) -> Self {
        ErrorObject::new("InvalidActionError", message)
    }

    /// The error for an action an unauthenticated socket may not take while
    /// the server requires authentication (`--require-auth`).
    pub fn auth_required(action: &str) -> Self {
        ErrorObject::new(
            "AuthRequiredError",
            format!("{action} needs an authenticated socket: this server requires authentication"),
        )
    }

    /// The answer to an RPC that no plugin declares. The name is quoted
    /// cut to 128 bytes: an error never echoes unbounded input.
    pub fn unknown_event(event: &str) -> Self {
        let event = quoted(event);
        ErrorObject::new(
            "UnknownEventError",
            format!("No plugin handles the event '{event}'"),
        )
        .with("event", event)
    }

    /// The answer to an event or channel name longer than [`MAX_NAME_BYTES`].
    pub fn name_too_long(what: &str) -> Self {
        ErrorObject::invalid_action(format!(
            "{what} names are limited to {MAX_NAME_BYTES} bytes"
        ))
    }

    /// Append the error as JSON: `{"message":..,"name":..,...details}`.
    pub(super) fn write_json(&self, out: &mut String) {
        out.push_str("{\"message\":");
        push_json_string(out, &self.message);
        out.push_str(",\"name\":");
        push_json_string(out, &self.name);
        for (key, value) in &self.details {
            if key == "name" || key == "message" {
                continue;
            }
            out.push(',');
            push_json_string(out, key);
            let _ = write!(out, ":{value}");
        }
        out.push('}');
    }
}

/// Append `text` as a JSON string literal.
pub(super) fn push_json_string(out: &mut String, text: &str) {
    // Serializing a &str into a String cannot fail.
    out.push_str(&serde_json::to_string(text).unwrap_or_default());
}
