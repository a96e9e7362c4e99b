//! Example plugin `fetch`: outbound HTTP on a client's behalf, within what
//! the operator allows.
//!
//! - RPC `fetch` `{url, method?, body?}` sends the request and answers
//!   `{status, body}` (the body as text). A URL the plugin's
//!   `allowed-outbound-hosts` does not grant answers `OutboundNotAllowed`;
//!   an upstream that fails, times out or answers too much answers
//!   `OutboundError` with the reason.
//!
//! The operator grants destinations in the config file, and may give
//! headers to send with every request, secrets taken from the environment
//! or a file rather than written in the file:
//!
//! ```toml
//! [plugin.fetch]
//! allowed-outbound-hosts = ["https://api.example.com"]
//! config = { headers = { authorization = "Bearer ${env:API_TOKEN}" } }
//! ```
//!
//! While a request is in flight only its call waits: the worker keeps
//! serving, and other `fetch` calls run in other instances of the plugin.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use wasmcluster_sdk::http::{self, FetchError, Method, Request};
use wasmcluster_sdk::{Error, Manifest, Payload, Plugin, Socket, export};

struct Fetch {
    /// Headers sent with every request (from the config).
    headers: BTreeMap<String, String>,
}

/// The plugin's config.
#[derive(Deserialize, Default)]
struct Config {
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// The data of RPC `fetch`.
#[derive(Deserialize)]
struct FetchRequest {
    url: String,
    method: Option<String>,
    body: Option<String>,
}

/// What RPC `fetch` answers.
#[derive(Serialize)]
struct Fetched {
    status: u16,
    body: String,
}

impl Plugin for Fetch {
    fn describe() -> Manifest {
        Manifest::new("fetch", env!("CARGO_PKG_VERSION")).rpc(["fetch"])
    }

    fn init(config: Payload) -> Result<Self, String> {
        let config: Config = config.parse().map_err(|error| error.message)?;
        Ok(Fetch {
            headers: config.headers,
        })
    }

    fn on_invoke(
        &mut self,
        _socket: &Socket,
        event: &str,
        data: Payload,
    ) -> Result<Payload, Error> {
        match event {
            "fetch" => fetch(data.parse()?, &self.headers).map(|fetched| Payload::json(&fetched)),
            other => Err(Error::unknown_event(other)),
        }
    }
}

/// Send the request a client described, with the configured headers.
fn fetch(request: FetchRequest, headers: &BTreeMap<String, String>) -> Result<Fetched, Error> {
    let method = request.method.as_deref().unwrap_or("GET");
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| Error::invalid_data(format!("'{method}' is not an HTTP method")))?;
    let mut builder = Request::builder().method(method).uri(&request.url);
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    let built = builder
        .body(request.body.unwrap_or_default())
        .map_err(|error| Error::invalid_data(format!("'{}': {error}", request.url)))?;
    let response = http::send(built).map_err(|error| match error {
        FetchError::NotAllowed(why) => {
            Error::new("OutboundNotAllowed", why).with_detail("url", &request.url)
        }
        FetchError::Failed(why) => {
            Error::new("OutboundError", why).with_detail("url", &request.url)
        }
    })?;
    Ok(Fetched {
        status: response.status().as_u16(),
        body: String::from_utf8_lossy(response.body()).into_owned(),
    })
}

export!(Fetch);
