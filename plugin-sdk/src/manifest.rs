//! What a plugin tells the host about itself.

use crate::Hook;
use crate::bindings::wasmcluster::plugin::types as wit;

/// A plugin's name, version, events and hooks, returned by
/// [`Plugin::describe`](crate::Plugin::describe).
///
/// ```
/// use wasmcluster_sdk::{Hook, Manifest};
/// let manifest = Manifest::new("chat", "1.0.0")
///     .rpc(["join", "say"])
///     .hooks([Hook::Disconnect]);
/// assert_eq!(manifest.rpc_events, ["join", "say"]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Name used in logs and as the plugin's KV namespace.
    pub name: String,
    /// Version shown in logs and health output.
    pub version: String,
    /// RPC events this plugin answers.
    pub rpc_events: Vec<String>,
    /// Transmit events this plugin receives.
    pub transmit_events: Vec<String>,
    /// RPC events open to unauthenticated sockets when auth is required.
    pub public_rpc_events: Vec<String>,
    /// Hooks this plugin implements besides its events.
    pub hooks: Vec<Hook>,
    /// Middleware order: higher runs first.
    pub priority: i32,
}

impl Manifest {
    /// A manifest with a name and a version and nothing declared yet. Use
    /// `env!("CARGO_PKG_VERSION")` for the version.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Manifest {
            name: name.into(),
            version: version.into(),
            rpc_events: Vec::new(),
            transmit_events: Vec::new(),
            public_rpc_events: Vec::new(),
            hooks: Vec::new(),
            priority: 0,
        }
    }

    /// Declare RPC events (client `invoke`).
    pub fn rpc<S: Into<String>>(mut self, events: impl IntoIterator<Item = S>) -> Self {
        self.rpc_events.extend(events.into_iter().map(Into::into));
        self
    }

    /// Declare transmit events (client `transmit`).
    pub fn transmit<S: Into<String>>(mut self, events: impl IntoIterator<Item = S>) -> Self {
        self.transmit_events
            .extend(events.into_iter().map(Into::into));
        self
    }

    /// Declare RPC events that unauthenticated sockets may call when the
    /// operator requires authentication. They must also be declared with
    /// [`Manifest::rpc`].
    pub fn public<S: Into<String>>(mut self, events: impl IntoIterator<Item = S>) -> Self {
        self.public_rpc_events
            .extend(events.into_iter().map(Into::into));
        self
    }

    /// Declare the hooks this plugin implements.
    pub fn hooks(mut self, hooks: impl IntoIterator<Item = Hook>) -> Self {
        self.hooks.extend(hooks);
        self
    }

    /// Set the middleware priority (default 0; higher runs first).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    pub(crate) fn into_wit(self) -> wit::Manifest {
        wit::Manifest {
            name: self.name,
            version: self.version,
            rpc_events: self.rpc_events,
            transmit_events: self.transmit_events,
            public_rpc_events: self.public_rpc_events,
            hooks: self.hooks,
            priority: self.priority,
        }
    }
}
