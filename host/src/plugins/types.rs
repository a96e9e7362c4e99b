//! The host's own vocabulary for what crosses the plugin boundary: a
//! socket, a handshake, an error, a manifest, a middleware decision.
//!
//! These are the records of the WIT interface `types`, which every released
//! version of the plugin package (`wasmcluster:plugin@0.1.0`, `@0.2.0`)
//! shares unchanged; a later version only adds to them (0.2.0 adds
//! `client-call-error`). They are written here rather than generated, and each
//! version's bindings are told to use them (`with` in `wit/`), so that the
//! rest of the host speaks one set of types whatever version a plugin was
//! built against, and passing a socket to a plugin copies nothing. Field and
//! case names must match the WIT; the component model checks them by name
//! when a plugin is linked.

use wasmtime::component::{ComponentType, Lift, Lower};

/// JSON text (RFC 8259), exactly the bytes a client sent or will receive.
pub type Json = String;

/// A client connection as plugins see it (WIT `socket`).
#[derive(Debug, Clone, PartialEq, ComponentType, Lift, Lower)]
#[component(record)]
pub struct Socket {
    /// The SocketCluster socket id, sent to the client in the handshake reply.
    pub id: String,
    /// The claims of the socket's verified auth token, while it has one.
    #[component(name = "auth-token")]
    pub auth_token: Option<Json>,
    /// The peer's address as `ip:port`.
    #[component(name = "remote-address")]
    pub remote_address: String,
}

/// What the host knows of a connection at its `#handshake` (WIT
/// `handshake-info`).
#[derive(Debug, Clone, PartialEq, ComponentType, Lift, Lower)]
#[component(record)]
pub struct HandshakeInfo {
    /// The peer's address as `ip:port`.
    #[component(name = "remote-address")]
    pub remote_address: String,
    /// Path and query string of the WebSocket upgrade.
    pub url: String,
    /// The upgrade's `Origin` header.
    pub origin: Option<String>,
    /// The claims of the handshake's auth token, when the host verified it.
    #[component(name = "auth-token")]
    pub auth_token: Option<Json>,
}

/// An error as a plugin returns it (WIT `error-object`); its details are
/// checked before they reach a client.
#[derive(Debug, Clone, PartialEq, ComponentType, Lift, Lower)]
#[component(record)]
pub struct ErrorObject {
    /// `err.name` on the client.
    pub name: String,
    /// `err.message` on the client.
    pub message: String,
    /// Extra properties, as a JSON object.
    pub details: Option<Json>,
}

/// The hooks a plugin may implement besides its events (WIT `hook`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ComponentType, Lift, Lower)]
#[component(enum)]
#[repr(u8)]
pub enum Hook {
    /// `on-handshake`: allow or deny a connection.
    #[component(name = "handshake")]
    Handshake,
    /// `on-connect`: a socket completed its handshake.
    #[component(name = "connect")]
    Connect,
    /// `on-disconnect`: a socket is gone.
    #[component(name = "disconnect")]
    Disconnect,
    /// `on-subscribe`: allow or deny a subscription.
    #[component(name = "subscribe")]
    Subscribe,
    /// `on-publish-in`: allow, rewrite or deny a client publication.
    #[component(name = "publish-in")]
    PublishIn,
    /// `on-authenticate`: allow or deny a verified token.
    #[component(name = "authenticate")]
    Authenticate,
    /// `on-timer`: a timer the plugin set fired.
    #[component(name = "timer")]
    Timer,
    /// `on-invoke-in`: allow, rewrite or deny every client RPC.
    #[component(name = "invoke")]
    Invoke,
    /// `on-transmit-in`: allow, rewrite or deny every client transmit.
    #[component(name = "transmit")]
    Transmit,
}

impl Hook {
    /// The middleware hooks: each runs as a chain over the plugins that
    /// declare it.
    pub const MIDDLEWARE: [Hook; 6] = [
        Hook::Handshake,
        Hook::Subscribe,
        Hook::PublishIn,
        Hook::Authenticate,
        Hook::Invoke,
        Hook::Transmit,
    ];

    /// The hook's name as a plugin author writes it in WIT.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Handshake => "handshake",
            Hook::Connect => "connect",
            Hook::Disconnect => "disconnect",
            Hook::Subscribe => "subscribe",
            Hook::PublishIn => "publish-in",
            Hook::Authenticate => "authenticate",
            Hook::Timer => "timer",
            Hook::Invoke => "invoke",
            Hook::Transmit => "transmit",
        }
    }
}

/// What a plugin says about itself from `describe` (WIT `manifest`).
#[derive(Debug, Clone, PartialEq, ComponentType, Lift, Lower)]
#[component(record)]
pub struct Manifest {
    /// The plugin's name: its KV namespace and its tag in logs and metrics.
    pub name: String,
    /// The plugin's version, shown in logs and health output.
    pub version: String,
    /// The RPC events it answers.
    #[component(name = "rpc-events")]
    pub rpc_events: Vec<String>,
    /// The transmit events it receives.
    #[component(name = "transmit-events")]
    pub transmit_events: Vec<String>,
    /// RPC events unauthenticated sockets may call under `--require-auth`.
    #[component(name = "public-rpc-events")]
    pub public_rpc_events: Vec<String>,
    /// The hooks it implements.
    pub hooks: Vec<Hook>,
    /// Middleware order: higher runs first.
    pub priority: i32,
}

/// The outcome of a middleware hook (WIT `decision`).
#[derive(Debug, Clone, PartialEq, ComponentType, Lift, Lower)]
#[component(variant)]
pub enum Decision {
    /// Let the action proceed.
    #[component(name = "allow")]
    Allow,
    /// Refuse it with this error.
    #[component(name = "deny")]
    Deny(ErrorObject),
}

/// The outcome of a middleware hook that may rewrite the data (WIT
/// `inbound-decision`).
#[derive(Debug, Clone, PartialEq, ComponentType, Lift, Lower)]
#[component(variant)]
pub enum InboundDecision {
    /// Let the action proceed with its data.
    #[component(name = "allow")]
    Allow,
    /// Let it proceed with this JSON instead.
    #[component(name = "allow-with")]
    AllowWith(Json),
    /// Refuse it with this error.
    #[component(name = "deny")]
    Deny(ErrorObject),
}

/// Severity of a plugin's log line (WIT `log-level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ComponentType, Lift, Lower)]
#[component(enum)]
#[repr(u8)]
pub enum LogLevel {
    /// Very detailed diagnostics.
    #[component(name = "trace")]
    Trace,
    /// Diagnostics.
    #[component(name = "debug")]
    Debug,
    /// Normal operation.
    #[component(name = "info")]
    Info,
    /// Something unexpected the plugin recovered from.
    #[component(name = "warn")]
    Warn,
    /// Something failed.
    #[component(name = "error")]
    Error,
}

/// Why a host function did not do what a plugin asked (WIT `host-error`).
#[derive(Debug, Clone, PartialEq, ComponentType, Lift, Lower)]
#[component(variant)]
pub enum HostError {
    /// This host does not implement the function; the text says which.
    #[component(name = "unsupported")]
    Unsupported(String),
    /// No connected socket has this id.
    #[component(name = "unknown-socket")]
    UnknownSocket(String),
    /// An argument was rejected; the text says which and why.
    #[component(name = "invalid-argument")]
    InvalidArgument(String),
    /// A backing service (the KV store's Redis, say) failed.
    #[component(name = "unavailable")]
    Unavailable(String),
}

/// Why `invoke-client` produced no answer (WIT `client-call-error`, new in
/// 0.2.0).
#[derive(Debug, Clone, PartialEq, ComponentType, Lift, Lower)]
#[component(variant)]
pub enum ClientCallError {
    /// The client's procedure failed with this error.
    #[component(name = "client-error")]
    ClientError(ErrorObject),
    /// The client did not answer in time.
    #[component(name = "timeout")]
    Timeout,
    /// The socket closed before it answered.
    #[component(name = "disconnected")]
    Disconnected,
    /// No connected socket has this id.
    #[component(name = "unknown-socket")]
    UnknownSocket(String),
    /// An argument was rejected; the text says which and why.
    #[component(name = "invalid-argument")]
    InvalidArgument(String),
    /// The host did not send the call; the text says why.
    #[component(name = "unavailable")]
    Unavailable(String),
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostError::Unsupported(text) => write!(f, "unsupported: {text}"),
            HostError::UnknownSocket(id) => write!(f, "no connected socket has id {id}"),
            HostError::InvalidArgument(text) => write!(f, "invalid argument: {text}"),
            HostError::Unavailable(text) => write!(f, "unavailable: {text}"),
        }
    }
}
