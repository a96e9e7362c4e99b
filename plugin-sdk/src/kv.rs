//! The plugin's key-value store, kept by the host.
//!
//! Each plugin has its own namespace. The store is shared by every worker
//! (and with a Redis broker, by every host) and survives plugin faults and hot
//! swaps, so it is where state goes that must outlive one instance.

use crate::bindings::wasmcluster::plugin::host as wit;
use crate::{Error, HostError, Payload};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The text stored at `key`, if any.
pub fn get(key: &str) -> Result<Option<String>, HostError> {
    wit::kv_get(key)
}

/// Store text at `key`.
pub fn set(key: &str, value: &str) -> Result<(), HostError> {
    wit::kv_set(key, value)
}

/// Delete `key`; returns whether it existed.
pub fn delete(key: &str) -> Result<bool, HostError> {
    wit::kv_delete(key)
}

/// Atomically add `delta` to the integer at `key` (missing counts as 0) and
/// return the new value.
pub fn incr(key: &str, delta: i64) -> Result<i64, HostError> {
    wit::kv_incr(key, delta)
}

/// The value at `key` decoded from JSON into `T`, if any.
pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, Error> {
    match get(key)? {
        Some(text) => Payload::from_json_text(text).parse().map(Some),
        None => Ok(None),
    }
}

/// Store `value` at `key` as JSON.
pub fn set_json(key: &str, value: &impl Serialize) -> Result<(), HostError> {
    let text = Payload::json(value).into_json_text().unwrap_or_default();
    set(key, &text)
}
