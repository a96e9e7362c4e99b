//! Plugins: the wasmtime engine, loading components from the plugins
//! directory, and the per-worker instances that serve events.
//!
//! One [`PluginEngine`] compiles every component. [`load_dir`] compiles the
//! `*.wasm` files of a directory, links each against the version of the
//! contract it was built for, checks it in a trial instance (`describe`,
//! `init`) and builds the routing of events to plugins, a [`PluginSet`].
//! Each worker then builds its own [`WorkerPlugins`]: a small pool of
//! instances (each its own `Store`) per plugin, called directly from that
//! worker's connections. A call that traps, overruns its deadline or
//! exceeds its memory fails alone; its instance is dropped and another
//! built from the `InstancePre` for the next event.
//!
//! The rest of the host speaks the types of [`types`]; only `wit/` knows
//! the generated bindings of each released version of the contract.

mod backoff;
mod cpu;
mod engine;
mod events;
mod fault;
mod guest_log;
mod health;
mod host_state;
mod limits;
mod load_error;
mod loaded;
mod loader;
mod middleware;
mod options;
mod pool;
mod routes;
mod symbols;
mod timers;
pub mod types;
mod wit;
mod worker;

pub use crate::kv::KvQuota;
pub use crate::outbound::{AllowedHosts, OutboundSettings};
pub use engine::{EngineError, PluginEngine};
pub use health::{FaultKind, PluginHealth};
pub use load_error::LoadError;
pub use loaded::LoadedPlugin;
pub use loader::{
    Checked, Refusal, ReloadSummary, check_file, is_plugin_file, load_dir, reload_dir,
};
pub use middleware::Rewritten;
pub use options::{PluginLimits, PluginOptions, PluginOverrides};
pub use routes::PluginSet;
pub use types::{HandshakeInfo, Socket};
pub use wit::WitVersion;
pub use worker::WorkerPlugins;
pub(crate) use worker::run_timers;
