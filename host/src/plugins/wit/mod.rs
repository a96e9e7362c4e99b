//! The released versions of the plugin contract, side by side: one module of
//! generated bindings per version (`v0_1`, `v0_2`; what they share is in
//! `shared`), and the enums through which the
//! rest of the host calls a plugin whatever version it targets. This folder
//! is the only code that knows a bindgen exists.
//!
//! The `types` interface is the same in every version and is mapped onto the
//! host's own [`types`](super::types); what differs between versions
//! (imports, `describe`) is translated here.

#[macro_use]
mod shared;
mod v0_1;
mod v0_2;

use super::host_state::HostState;
use super::types::{Decision, ErrorObject, HandshakeInfo, InboundDecision, Json, Manifest, Socket};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};

/// A released version of the plugin package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WitVersion {
    /// `wasmcluster:plugin@0.1.0`.
    V0_1,
    /// `wasmcluster:plugin@0.2.0`: timers cancelled, procedures invoked on
    /// clients, outbound HTTP.
    V0_2,
}

impl WitVersion {
    /// Every version this host loads, oldest first.
    const ALL: [WitVersion; 2] = [WitVersion::V0_1, WitVersion::V0_2];

    /// The package version, as in `wasmcluster:plugin@0.1.0`.
    pub fn number(self) -> &'static str {
        match self {
            WitVersion::V0_1 => "0.1.0",
            WitVersion::V0_2 => "0.2.0",
        }
    }

    /// The version a component was built against, read from the names of
    /// the `wasmcluster:plugin` interfaces it imports. `None` when it
    /// imports none of a version this host knows.
    pub fn of(component: &Component, engine: &Engine) -> Option<WitVersion> {
        let imports: Vec<String> = component
            .component_type()
            .imports(engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        Self::ALL.into_iter().rev().find(|version| {
            let suffix = format!("@{}", version.number());
            imports
                .iter()
                .any(|name| name.starts_with("wasmcluster:plugin/") && name.ends_with(&suffix))
        })
    }

    /// The versions this host loads, for messages: `0.1.0`.
    pub fn known() -> String {
        Self::ALL.map(WitVersion::number).join(", ")
    }

    /// The interface of the optional `snapshot`/`restore` exports.
    pub fn state_interface(self) -> &'static str {
        match self {
            WitVersion::V0_1 => "wasmcluster:plugin/state@0.1.0",
            WitVersion::V0_2 => "wasmcluster:plugin/state@0.2.0",
        }
    }
}

impl std::fmt::Display for WitVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "wasmcluster:plugin@{}", self.number())
    }
}

/// Add every version's host functions to the linker.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    v0_1::add_to_linker(linker)?;
    v0_2::add_to_linker(linker)?;
    // Outbound HTTP, for any version: denied unless the operator grants it.
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
}

/// A component linked against this host and checked against its version's
/// world: instantiating it is a cheap step.
#[derive(Clone)]
pub(super) enum PluginPre {
    /// Built against 0.1.0.
    V0_1(v0_1::PluginPre<HostState>),
    /// Built against 0.2.0.
    V0_2(v0_2::PluginPre<HostState>),
}

impl PluginPre {
    /// Link `component` as a plugin of `version`.
    pub(super) fn new(
        version: WitVersion,
        linker: &Linker<HostState>,
        component: &Component,
    ) -> wasmtime::Result<Self> {
        let pre = linker.instantiate_pre(component)?;
        Ok(match version {
            WitVersion::V0_1 => PluginPre::V0_1(v0_1::PluginPre::new(pre)?),
            WitVersion::V0_2 => PluginPre::V0_2(v0_2::PluginPre::new(pre)?),
        })
    }

    /// Instantiate in `store`: the plugin's exports, and the instance (for
    /// the optional exports).
    pub(super) async fn instantiate(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<(Exports, wasmtime::component::Instance)> {
        match self {
            PluginPre::V0_1(pre) => {
                let instance = pre.instance_pre().instantiate_async(&mut *store).await?;
                let exports = v0_1::Plugin::new(&mut *store, &instance)?;
                Ok((Exports::V0_1(exports), instance))
            }
            PluginPre::V0_2(pre) => {
                let instance = pre.instance_pre().instantiate_async(&mut *store).await?;
                let exports = v0_2::Plugin::new(&mut *store, &instance)?;
                Ok((Exports::V0_2(exports), instance))
            }
        }
    }

    /// The engine the component was compiled with.
    pub(super) fn engine(&self) -> &Engine {
        match self {
            PluginPre::V0_1(pre) => pre.engine(),
            PluginPre::V0_2(pre) => pre.engine(),
        }
    }
}

/// The exports of one plugin instance, whatever its version.
pub(super) enum Exports {
    /// Built against 0.1.0.
    V0_1(v0_1::Plugin),
    /// Built against 0.2.0.
    V0_2(v0_2::Plugin),
}

/// Call the export `$call` on whichever version's bindings `$exports` holds.
macro_rules! dispatch {
    ($exports:expr, $store:expr, $call:ident ( $($arg:expr),* )) => {
        match $exports {
            Exports::V0_1(plugin) => plugin.$call($store $(, $arg)*).await,
            Exports::V0_2(plugin) => plugin.$call($store $(, $arg)*).await,
        }
    };
}

impl Exports {
    /// `describe`.
    pub(super) async fn describe(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Manifest> {
        dispatch!(self, store, call_describe())
    }

    /// `init`.
    pub(super) async fn init(
        &self,
        store: &mut Store<HostState>,
        config: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        dispatch!(self, store, call_init(&config.to_owned()))
    }

    /// `on-handshake`.
    pub(super) async fn on_handshake(
        &self,
        store: &mut Store<HostState>,
        info: &HandshakeInfo,
    ) -> wasmtime::Result<Decision> {
        dispatch!(self, store, call_on_handshake(info))
    }

    /// `on-connect`.
    pub(super) async fn on_connect(
        &self,
        store: &mut Store<HostState>,
        socket: &Socket,
    ) -> wasmtime::Result<()> {
        dispatch!(self, store, call_on_connect(socket))
    }

    /// `on-disconnect`.
    pub(super) async fn on_disconnect(
        &self,
        store: &mut Store<HostState>,
        socket: &Socket,
        code: u16,
        reason: &str,
    ) -> wasmtime::Result<()> {
        dispatch!(self, store, call_on_disconnect(socket, code, reason))
    }

    /// `on-invoke`.
    pub(super) async fn on_invoke(
        &self,
        store: &mut Store<HostState>,
        socket: &Socket,
        event: &str,
        data: Option<&Json>,
    ) -> wasmtime::Result<Result<Option<Json>, ErrorObject>> {
        dispatch!(self, store, call_on_invoke(socket, event, data))
    }

    /// `on-transmit`.
    pub(super) async fn on_transmit(
        &self,
        store: &mut Store<HostState>,
        socket: &Socket,
        event: &str,
        data: Option<&Json>,
    ) -> wasmtime::Result<()> {
        dispatch!(self, store, call_on_transmit(socket, event, data))
    }

    /// `on-subscribe`.
    pub(super) async fn on_subscribe(
        &self,
        store: &mut Store<HostState>,
        socket: &Socket,
        channel: &str,
        data: Option<&Json>,
    ) -> wasmtime::Result<Decision> {
        dispatch!(self, store, call_on_subscribe(socket, channel, data))
    }

    /// `on-authenticate`.
    pub(super) async fn on_authenticate(
        &self,
        store: &mut Store<HostState>,
        socket: &Socket,
        claims: &str,
    ) -> wasmtime::Result<Decision> {
        dispatch!(
            self,
            store,
            call_on_authenticate(socket, &claims.to_owned())
        )
    }

    /// `on-publish-in`.
    pub(super) async fn on_publish_in(
        &self,
        store: &mut Store<HostState>,
        socket: &Socket,
        channel: &str,
        data: Option<&Json>,
    ) -> wasmtime::Result<InboundDecision> {
        dispatch!(self, store, call_on_publish_in(socket, channel, data))
    }

    /// `on-invoke-in`.
    pub(super) async fn on_invoke_in(
        &self,
        store: &mut Store<HostState>,
        socket: &Socket,
        event: &str,
        data: Option<&Json>,
    ) -> wasmtime::Result<InboundDecision> {
        dispatch!(self, store, call_on_invoke_in(socket, event, data))
    }

    /// `on-transmit-in`.
    pub(super) async fn on_transmit_in(
        &self,
        store: &mut Store<HostState>,
        socket: &Socket,
        event: &str,
        data: Option<&Json>,
    ) -> wasmtime::Result<InboundDecision> {
        dispatch!(self, store, call_on_transmit_in(socket, event, data))
    }

    /// `on-timer`.
    pub(super) async fn on_timer(
        &self,
        store: &mut Store<HostState>,
        id: &str,
    ) -> wasmtime::Result<()> {
        dispatch!(self, store, call_on_timer(id))
    }
}

impl std::fmt::Debug for Exports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exports::V0_1(_) => f.write_str("Exports::V0_1"),
            Exports::V0_2(_) => f.write_str("Exports::V0_2"),
        }
    }
}
