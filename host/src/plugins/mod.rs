//! Plugins: the wasmtime engine, loading components from the plugins
//! directory, and the per-worker instances that serve events.
//!
//! One [`PluginEngine`] compiles every component. [`load_dir`] compiles the
//! `*.wasm` files of a directory, checks each in a trial instance
//! (`describe`, `init`) and builds the routing of events to plugins, a
//! [`PluginSet`]. Each worker then builds its own [`WorkerPlugins`]: one
//! `Store` and instance per plugin, called directly from that worker's
//! connections. A call that traps, overruns its deadline or exceeds its
//! memory fails alone; the instance is rebuilt from its `InstancePre` for
//! the next event.

mod engine;
mod guest_log;
mod health;
mod host_api;
mod instance;
mod kv;
mod limits;
mod loader;
mod middleware;

pub use engine::{EngineError, PluginEngine};
pub use health::{FaultKind, PluginHealth};
pub use host_api::HostServices;
pub use instance::WorkerPlugins;
pub use kv::KvStore;
pub use loader::{
    LoadError, LoadedPlugin, PluginLimits, PluginOptions, PluginOverrides, PluginSet,
    ReloadSummary, check_file, is_plugin_file, load_dir, reload_dir,
};
pub use middleware::{Inbound, Rewritten};

/// Bindings generated from `wit/plugin.wit`.
#[allow(missing_docs, clippy::all)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        exports: { default: async },
        // The KV store may be Redis: its functions wait for the network
        // without blocking the worker's other connections.
        imports: {
            "wasmcluster:plugin/host.kv-get": async,
            "wasmcluster:plugin/host.kv-set": async,
            "wasmcluster:plugin/host.kv-delete": async,
            "wasmcluster:plugin/host.kv-incr": async,
        },
    });
}

/// A client connection as plugins see it (the WIT `socket` record).
pub use bindings::wasmcluster::plugin::types::Socket;

/// What middleware `on-handshake` hooks learn of a connection (the WIT
/// `handshake-info` record).
pub use bindings::wasmcluster::plugin::types::HandshakeInfo;
