//! `wasmcluster:plugin@0.1.0` (`wit/v0.1.0`): its generated bindings, and
//! its host functions served by [`HostState`]. Frozen: plugins built
//! against it keep loading unchanged.

use super::HostState;
use types::{HostError, LogLevel};
use wasmtime::component::{HasSelf, Linker};

pub(super) use bindings::{Plugin, PluginPre};

/// Bindings generated from `wit/v0.1.0`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1.0",
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
        with: { "wasmcluster:plugin/types": super::types },
    });
}

types_interface!("wasmcluster:plugin/types@0.1.0");

/// Add this version's host functions to `linker`.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    Plugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |state| state)
}

impl bindings::wasmcluster::plugin::host::Host for HostState {
    host_functions_of_0_1!();
}
