//! wasmcluster: a real-time WebSocket server, wire-compatible with
//! SocketCluster, whose application logic runs as sandboxed WebAssembly
//! plugins.
//!
//! The host owns every long-lived thing (sockets, subscriptions, the plugin
//! key-value store); plugins, built against `wasmcluster-sdk`, own the
//! application logic and are called on each event. A plugin fault costs one
//! call, never a connection.
//!
//! Modules, one concern each:
//! - [`config`]: flags and their checked form.
//! - [`server`]: listener, worker threads, HTTP upgrade and `/healthz`.
//! - [`protocol`]: SocketCluster frames, parsed and encoded; no I/O.
//! - [`session`]: one connection's state machine.
//! - [`auth`]: JWT signing and verification, SocketCluster style.
//! - [`broker`]: channels and publication delivery.
//! - [`metrics`]: `GET /metrics`, Prometheus counters, gauges and histograms.
//! - [`plugins`]: the wasm engine, loading, per-worker instances, host functions.

#![forbid(unsafe_code)]

pub mod auth;
pub mod broker;
pub mod config;
pub mod metrics;
pub mod plugins;
pub mod protocol;
pub mod server;
pub mod session;
