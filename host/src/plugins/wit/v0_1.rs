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

/// The `types` interface of this version, mapped onto the host's own types
/// (see [`crate::plugins::types`]). The items below the re-export are what
/// the generated bindings expect of an imported interface; `types` has no
/// functions, so linking it only declares the (empty) instance.
#[allow(missing_docs, unreachable_pub)]
pub mod types {
    pub use crate::plugins::types::*;
    use wasmtime::component::{HasData, Linker};

    pub trait Host {}
    impl<T: Host + ?Sized> Host for &mut T {}
    pub trait HostWithStore<T>: HasData {}
    impl<H: ?Sized + HasData, T> HostWithStore<T> for H {}

    pub fn add_to_linker<T, D>(
        linker: &mut Linker<T>,
        _host_getter: fn(&mut T) -> D::Data<'_>,
    ) -> wasmtime::Result<()>
    where
        D: HostWithStore<T>,
        for<'a> D::Data<'a>: Host,
        T: 'static,
    {
        linker.instance("wasmcluster:plugin/types@0.1.0")?;
        Ok(())
    }
}

impl types::Host for HostState {}

/// Add this version's host functions to `linker`.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    Plugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |state| state)
}

impl bindings::wasmcluster::plugin::host::Host for HostState {
    fn publish(&mut self, channel: String, data: String) -> Result<(), HostError> {
        HostState::publish(self, &channel, &data)
    }

    fn transmit(
        &mut self,
        socket_id: String,
        event: String,
        data: Option<String>,
    ) -> Result<(), HostError> {
        HostState::transmit(self, socket_id, &event, data.as_deref())
    }

    fn set_auth_token(&mut self, socket_id: String, claims: String) -> Result<(), HostError> {
        HostState::set_auth_token(self, socket_id, &claims)
    }

    fn deauthenticate(&mut self, socket_id: String) -> Result<(), HostError> {
        HostState::deauthenticate(self, socket_id)
    }

    fn disconnect(
        &mut self,
        socket_id: String,
        code: u16,
        reason: String,
    ) -> Result<(), HostError> {
        HostState::disconnect(self, socket_id, code, reason)
    }

    fn kick_out(
        &mut self,
        socket_id: String,
        channel: String,
        message: Option<String>,
    ) -> Result<(), HostError> {
        HostState::kick_out(self, socket_id, channel, message)
    }

    fn subscriptions(&mut self, socket_id: String) -> Result<Vec<String>, HostError> {
        HostState::subscriptions(self, &socket_id)
    }

    async fn kv_get(&mut self, key: String) -> Result<Option<String>, HostError> {
        HostState::kv_get(self, &key).await
    }

    async fn kv_set(&mut self, key: String, value: String) -> Result<(), HostError> {
        HostState::kv_set(self, key, value).await
    }

    async fn kv_delete(&mut self, key: String) -> Result<bool, HostError> {
        HostState::kv_delete(self, &key).await
    }

    async fn kv_incr(&mut self, key: String, delta: i64) -> Result<i64, HostError> {
        HostState::kv_incr(self, &key, delta).await
    }

    fn log(&mut self, level: LogLevel, message: String) {
        HostState::log(self, level, &message)
    }

    fn now_ms(&mut self) -> u64 {
        HostState::now_ms()
    }

    fn set_timer(&mut self, id: String, delay_ms: u64, repeat: bool) -> Result<(), HostError> {
        HostState::set_timer(self, id, delay_ms, repeat)
    }
}
