//! Outbound HTTP, through `wasi:http/outgoing-handler` and the Bytecode
//! Alliance's [`wstd`] client (re-exported; use it directly for streaming
//! or async code).
//!
//! Every request is refused unless the operator lists its destination in
//! the plugin's `allowed-outbound-hosts` (scheme, host and port; `*`
//! wildcards as in Spin). A name granted only through a wildcard may not
//! resolve to a private or loopback address. Each request has the
//! operator's timeout and response size cap. While a request is in flight
//! only this call waits: the worker, and the plugin's other instances,
//! serve other events.
//!
//! ```no_run
//! use wasmcluster_sdk::http::{self, Request};
//!
//! # fn example() -> Result<(), http::FetchError> {
//! let request = Request::get("https://api.example.com/rates").body(()).unwrap();
//! let response = http::send(request)?;
//! let text = String::from_utf8_lossy(response.body());
//! # let _ = text;
//! # Ok(())
//! # }
//! ```

pub use wstd;
pub use wstd::http::{Body, Client, ErrorCode, HeaderMap, Method, Request, Response, StatusCode};

/// Why [`send`] got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The host refused the request: no `allowed-outbound-hosts` entry of
    /// the plugin grants its destination, or the name resolves to an
    /// internal address only a wildcard granted.
    NotAllowed(String),
    /// The request failed: DNS, connection, TLS, timeout, response too
    /// large, or the plugin has as many requests in flight as it may.
    Failed(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::NotAllowed(why) | FetchError::Failed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for FetchError {}

impl From<wstd::http::Error> for FetchError {
    fn from(error: wstd::http::Error) -> Self {
        let code = error
            .chain()
            .find_map(|cause| cause.downcast_ref::<ErrorCode>());
        match code {
            Some(ErrorCode::HttpRequestDenied) => FetchError::NotAllowed(
                "the destination is not in this plugin's allowed-outbound-hosts".into(),
            ),
            Some(ErrorCode::DestinationIpProhibited) => FetchError::NotAllowed(
                "the destination resolves to an internal address, which only an \
                 allowed-outbound-hosts entry naming it grants"
                    .into(),
            ),
            Some(code) => FetchError::Failed(describe(code)),
            None => FetchError::Failed(format!("{error:#}")),
        }
    }
}

/// A failure in words.
fn describe(code: &ErrorCode) -> String {
    match code {
        ErrorCode::HttpResponseTimeout | ErrorCode::ConnectionReadTimeout => {
            "the request timed out".into()
        }
        ErrorCode::ConnectionTimeout => "the connection timed out".into(),
        ErrorCode::ConnectionRefused => "the connection was refused".into(),
        ErrorCode::ConnectionLimitReached => {
            "the plugin has as many outbound requests in flight as it may".into()
        }
        ErrorCode::HttpResponseBodySize(Some(limit)) => {
            format!("the response is larger than the plugin's limit of {limit} bytes")
        }
        ErrorCode::DnsError(payload) => format!(
            "the name could not be resolved: {}",
            payload.rcode.as_deref().unwrap_or("no answer")
        ),
        other => format!("{other:?}"),
    }
}

/// Send `request` and wait for the response, its body read whole.
pub fn send<B: Into<Body>>(request: Request<B>) -> Result<Response<Vec<u8>>, FetchError> {
    wstd::runtime::block_on(async {
        let response = Client::new().send(request).await?;
        let (head, mut body) = response.into_parts();
        let bytes = body.contents().await?.to_vec();
        Ok(Response::from_parts(head, bytes))
    })
}
