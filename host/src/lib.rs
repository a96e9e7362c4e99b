//! wasmcluster: a real-time WebSocket server, wire-compatible with
//! SocketCluster, whose application logic runs as sandboxed WebAssembly
//! plugins.
//!
//! The host owns every long-lived thing (sockets, subscriptions, the plugin
//! key-value store); plugins, built against `wasmcluster-sdk`, own the
//! application logic and are called on each event. A plugin fault costs one
//! call, never a connection.
//!
//! The modules stand on floors; each imports only from floors below it
//! (`tests/layers.rs` checks this, and that no files import each other in
//! a circle). ARCHITECTURE.md at the repository root has the map.
//!
//! 1. [`protocol`]: SocketCluster frames, parsed and encoded; no I/O.
//!    `log_limit`: at most a line a second of what clients can cause at will.
//!    `redis_link`: the connection to the Redis primary, following it
//!    through a Sentinel failover.
//! 2. `mailbox`: what other tasks queue for a socket, and the registry
//!    that finds a socket by id. `metrics`: the workers' counters, and
//!    `GET /metrics` rendered from a snapshot.
//! 3. [`auth`]: JWT signing and verification, SocketCluster style.
//!    `kv`: the plugins' key-value store. `broker`: channels and
//!    publication delivery, on one host or through Redis. `outbound`:
//!    plugins' HTTP requests, their allow lists and limits.
//! 4. [`services`]: broker, sockets, KV and auth, shared by the server.
//! 5. [`plugins`]: the wasm engine, loading, per-worker instances, host
//!    functions; the only module that knows wasmtime.
//! 6. `session`: one connection's state machine.
//! 7. [`config`]: flags, the config file, and their checked form.
//! 8. [`server`]: listener, workers, HTTP, TLS, reloads.

#![forbid(unsafe_code)]
#![warn(unreachable_pub, missing_debug_implementations)]

pub mod auth;
mod broker;
pub mod config;
mod kv;
mod log_limit;
mod mailbox;
mod metrics;
mod outbound;
pub mod plugins;
pub mod protocol;
mod redis_link;
pub mod server;
pub mod services;
mod session;
