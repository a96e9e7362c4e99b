//! `wasmcluster:plugin@0.2.0` (`wit/v0.2.0`): its generated bindings, and
//! its host functions served by [`HostState`]: those of 0.1.0, plus
//! `cancel-timer` and `invoke-client`.

use super::HostState;
use types::{ClientCallError, HostError, Json, LogLevel};
use wasmtime::component::{HasSelf, Linker};

pub(super) use bindings::{Plugin, PluginPre};

/// Bindings generated from `wit/v0.2.0`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/v0.2.0",
        world: "plugin",
        exports: { default: async },
        // Functions that wait: for Redis, for a client's answer. Only the
        // calling instance waits; the worker serves its other sockets.
        imports: {
            "wasmcluster:plugin/host.kv-get": async,
            "wasmcluster:plugin/host.kv-set": async,
            "wasmcluster:plugin/host.kv-delete": async,
            "wasmcluster:plugin/host.kv-incr": async,
            "wasmcluster:plugin/host.invoke-client": async,
        },
        with: { "wasmcluster:plugin/types": super::types },
    });
}

types_interface!("wasmcluster:plugin/types@0.2.0");

/// Add this version's host functions to `linker`.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    Plugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |state| state)
}

impl bindings::wasmcluster::plugin::host::Host for HostState {
    host_functions_of_0_1!();

    fn cancel_timer(&mut self, id: String) -> bool {
        HostState::cancel_timer(self, id)
    }

    async fn invoke_client(
        &mut self,
        socket_id: String,
        event: String,
        data: Option<Json>,
        timeout_ms: u32,
    ) -> Result<Option<Json>, ClientCallError> {
        HostState::invoke_client(self, socket_id, event, data, timeout_ms).await
    }
}
