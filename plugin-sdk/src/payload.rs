//! JSON data as it crosses the plugin boundary.

use crate::Error;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The data of an event, an answer or a publication: JSON text, or nothing
/// (a client that invokes without data, an RPC answered without data).
///
/// A payload is kept as text until the plugin asks for a typed value, so data
/// that only passes through (an echo, a relay) is never parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payload(Option<String>);

impl Payload {
    /// No data. An RPC answered with it reaches the client as `undefined`.
    pub fn none() -> Self {
        Payload(None)
    }

    /// Serialize `value` to JSON. A value that cannot be serialized (a map
    /// with non-string keys) becomes `null`.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Self {
        Payload(Some(
            serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned()),
        ))
    }

    /// Wrap JSON text as it is. The host checks it before it reaches a client,
    /// so invalid JSON fails the call rather than the client.
    pub fn from_json_text(text: String) -> Self {
        Payload(Some(text))
    }

    /// Parse into `T`. No data parses as JSON `null`, so `Option<T>` and
    /// `()` accept it. A mismatch is an [`Error::invalid_data`].
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_str(self.as_json().unwrap_or("null")).map_err(Error::invalid_data)
    }

    /// The JSON text, or `None` when there is no data.
    pub fn as_json(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// Whether there is no data.
    pub fn is_none(&self) -> bool {
        self.0.is_none()
    }

    /// The JSON text, or `None` when there is no data.
    pub fn into_json_text(self) -> Option<String> {
        self.0
    }
}

impl From<Option<String>> for Payload {
    fn from(text: Option<String>) -> Self {
        Payload(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_data_parses_as_null() {
        assert_eq!(Payload::none().parse::<Option<u32>>(), Ok(None));
    }

    #[test]
    fn typed_round_trip() {
        let payload = Payload::json(&vec![1, 2]);
        assert_eq!(payload.as_json(), Some("[1,2]"));
        assert_eq!(payload.parse::<Vec<u8>>(), Ok(vec![1, 2]));
    }

    #[test]
    fn mismatch_is_invalid_data() {
        let error = Payload::json("text").parse::<u32>().unwrap_err();
        assert_eq!(error.name, "InvalidDataError");
    }
}
