//! Write [wasmcluster](https://github.com/wasmcluster/wasmcluster) plugins in Rust.
//!
//! A plugin is a WebAssembly component that wasmcluster loads from its plugins
//! directory and calls when a SocketCluster client does something: invokes an
//! RPC, transmits an event, connects or disconnects. The host keeps every
//! connection, subscription and auth token; the plugin keeps the application
//! logic. A plugin that panics, loops or runs out of memory costs one failed
//! call: the host rebuilds it and no client is dropped.
//!
//! With this crate a plugin is one type that implements [`Plugin`], plus one
//! [`export!`] line:
//!
//! ```no_run
//! use wasmcluster_sdk::{export, Error, Manifest, Payload, Plugin, Socket};
//!
//! struct Greeter {
//!     greeting: String,
//! }
//!
//! impl Plugin for Greeter {
//!     fn describe() -> Manifest {
//!         Manifest::new("greeter", env!("CARGO_PKG_VERSION")).rpc(["greet"])
//!     }
//!
//!     fn init(config: Payload) -> Result<Self, String> {
//!         #[derive(serde::Deserialize, Default)]
//!         struct Config {
//!             greeting: Option<String>,
//!         }
//!         let config: Config = config.parse().map_err(|e| e.message)?;
//!         let greeting = config.greeting.unwrap_or_else(|| "Hello".into());
//!         Ok(Greeter { greeting })
//!     }
//!
//!     fn on_invoke(&mut self, _socket: &Socket, event: &str, data: Payload) -> Result<Payload, Error> {
//!         match event {
//!             "greet" => {
//!                 let name: String = data.parse()?;
//!                 Ok(Payload::json(&format!("{}, {name}!", self.greeting)))
//!             }
//!             other => Err(Error::unknown_event(other)),
//!         }
//!     }
//! }
//!
//! export!(Greeter);
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release` (the crate
//! must be a `cdylib`) and copy `target/wasm32-wasip2/release/<name>.wasm`
//! into the server's plugins directory.
//!
//! State kept in `self` lives in one instance. Each server worker keeps a
//! small pool of instances of the plugin (grown when a call waits on the
//! host, e.g. for [`host::invoke_client`] or an [`http`] response, so that
//! other events are served meanwhile), and an instance is rebuilt from
//! [`Plugin::init`] after a fault. So `self` is a cache, not the truth:
//! state that must be shared by instances and workers or survive faults
//! belongs in the host key-value store ([`kv`]) or goes through pub/sub
//! ([`host::publish`]).
//!
//! This crate targets `wasmcluster:plugin@0.2.0`; hosts load plugins built
//! against 0.1.0 as well.

mod error;
mod manifest;
mod payload;

pub mod host;
pub mod http;
pub mod kv;

pub use error::Error;
pub use manifest::Manifest;
pub use payload::Payload;

/// The bindings generated from the plugin contract (`wit/v0.2.0`).
///
/// Plugin authors rarely need them: the rest of this crate wraps them. They
/// are public so that the [`export!`] macro can name them from the plugin's
/// crate.
#[doc(hidden)]
#[allow(missing_docs, unsafe_code, unused_qualifications, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit/v0.2.0",
        world: "stateful-plugin",
        pub_export_macro: true,
        export_macro_name: "export_plugin_world",
        default_bindings_module: "wasmcluster_sdk::bindings",
    });
}

pub use bindings::wasmcluster::plugin::types::{
    ClientCallError, HandshakeInfo, Hook, HostError, LogLevel, Socket,
};

impl Socket {
    /// The claims of this socket's verified auth token, decoded into `T`, or
    /// `None` while the socket is not authenticated.
    pub fn auth_claims<T: serde::de::DeserializeOwned>(&self) -> Option<Result<T, Error>> {
        self.auth_token
            .as_deref()
            .map(|json| Payload::from_json_text(json.to_owned()).parse())
    }
}

/// What a middleware hook that may rewrite does with the data of a client
/// action: [`Plugin::on_publish_in`], [`Plugin::on_invoke_in`] and
/// [`Plugin::on_transmit_in`]. To deny, return an [`Error`] instead.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// Let the action proceed with the data as it is.
    AsSent,
    /// Let it proceed with this data instead: the next middleware, and then
    /// the plugin that handles the action, see it.
    Rewritten(Payload),
}

/// A wasmcluster plugin.
///
/// Every hook has a default, so a plugin implements only what it handles and
/// lists it in its [`Manifest`]: events with [`Manifest::rpc`] and
/// [`Manifest::transmit`], other hooks with [`Manifest::hooks`]. The host
/// calls only what the manifest lists.
///
/// Each method runs with a deadline and a memory cap. A panic fails only the
/// call in flight (an RPC answers `PluginError`) and the instance is rebuilt
/// with [`Plugin::init`].
pub trait Plugin: Sized + 'static {
    /// Name, version, events and hooks of the plugin. Called once at load.
    fn describe() -> Manifest;

    /// Build the plugin's state from the operator's config for it (`{}` when
    /// there is none). An error refuses the plugin and is logged by the host.
    fn init(config: Payload) -> Result<Self, String>;

    /// A socket completed its handshake. Needs [`Hook::Connect`].
    fn on_connect(&mut self, socket: &Socket) {
        let _ = socket;
    }

    /// A socket is gone. `code` 1000/1001 is a clean close, 1006 a lost
    /// connection, 4001 a ping timeout. Needs [`Hook::Disconnect`].
    fn on_disconnect(&mut self, socket: &Socket, code: u16, reason: &str) {
        let _ = (socket, code, reason);
    }

    /// Answer an RPC listed in [`Manifest::rpc`].
    fn on_invoke(&mut self, socket: &Socket, event: &str, data: Payload) -> Result<Payload, Error> {
        let _ = (socket, data);
        Err(Error::unknown_event(event))
    }

    /// Receive a transmit listed in [`Manifest::transmit`].
    fn on_transmit(&mut self, socket: &Socket, event: &str, data: Payload) {
        let _ = (socket, event, data);
    }

    /// Allow or deny a new connection. Needs [`Hook::Handshake`].
    fn on_handshake(&mut self, info: &HandshakeInfo) -> Result<(), Error> {
        let _ = info;
        Ok(())
    }

    /// Allow or deny a subscription. Needs [`Hook::Subscribe`].
    fn on_subscribe(&mut self, socket: &Socket, channel: &str, data: Payload) -> Result<(), Error> {
        let _ = (socket, channel, data);
        Ok(())
    }

    /// Allow, rewrite or deny a client publication. Needs [`Hook::PublishIn`].
    fn on_publish_in(
        &mut self,
        socket: &Socket,
        channel: &str,
        data: Payload,
    ) -> Result<Inbound, Error> {
        let _ = (socket, channel, data);
        Ok(Inbound::AsSent)
    }

    /// Allow or deny a verified auth token (its claims in `claims`). Needs
    /// [`Hook::Authenticate`]. An error with an `isBadToken: true` detail
    /// also makes the client drop its token.
    fn on_authenticate(&mut self, socket: &Socket, claims: Payload) -> Result<(), Error> {
        let _ = (socket, claims);
        Ok(())
    }

    /// Allow, rewrite or deny any client RPC, before the plugin that answers
    /// `event` sees it (this plugin's own or another's). Needs
    /// [`Hook::Invoke`].
    fn on_invoke_in(
        &mut self,
        socket: &Socket,
        event: &str,
        data: Payload,
    ) -> Result<Inbound, Error> {
        let _ = (socket, event, data);
        Ok(Inbound::AsSent)
    }

    /// Allow, rewrite or deny any client transmit, before the plugin that
    /// receives `event` sees it. A denied transmit is dropped. Needs
    /// [`Hook::Transmit`].
    fn on_transmit_in(
        &mut self,
        socket: &Socket,
        event: &str,
        data: Payload,
    ) -> Result<Inbound, Error> {
        let _ = (socket, event, data);
        Ok(Inbound::AsSent)
    }

    /// A timer set with [`host::set_timer`] fired. Needs [`Hook::Timer`].
    fn on_timer(&mut self, id: &str) {
        let _ = id;
    }

    /// The in-memory state to hand to the next build on a hot swap (called
    /// on this instance after its last call), or `None` to hand nothing.
    /// Use [`Payload::json`] with a serde type.
    fn snapshot(&self) -> Option<Payload> {
        None
    }

    /// Take the state the previous build handed over, after [`Plugin::init`].
    /// An error is logged by the host; the new build serves anyway.
    fn restore(&mut self, snapshot: Payload) -> Result<(), String> {
        let _ = snapshot;
        Ok(())
    }
}

/// Glue between the generated bindings and a [`Plugin`]; used by [`export!`].
#[doc(hidden)]
pub mod __private {
    use super::bindings::wasmcluster::plugin::types as wit;
    use super::{Error, Inbound, Payload, Plugin};
    use std::cell::RefCell;
    use std::thread::LocalKey;

    pub use super::bindings::Guest;
    pub use super::bindings::exports::wasmcluster::plugin::state::Guest as StateGuest;

    /// Where the plugin's state lives between calls.
    pub type Slot<P> = LocalKey<RefCell<Option<P>>>;

    /// Run `f` on the plugin's state.
    ///
    /// Panics (and so traps) when called before `init` succeeded, which the
    /// host never does.
    pub fn with<P: Plugin, R>(slot: &'static Slot<P>, f: impl FnOnce(&mut P) -> R) -> R {
        slot.with_borrow_mut(|state| {
            f(state
                .as_mut()
                .expect("wasmcluster: plugin called before init succeeded"))
        })
    }

    pub fn describe<P: Plugin>() -> wit::Manifest {
        P::describe().into_wit()
    }

    pub fn init<P: Plugin>(slot: &'static Slot<P>, config: String) -> Result<(), String> {
        let plugin = P::init(Payload::from_json_text(config))?;
        slot.with_borrow_mut(|state| *state = Some(plugin));
        Ok(())
    }

    pub fn decision(result: Result<(), Error>) -> wit::Decision {
        match result {
            Ok(()) => wit::Decision::Allow,
            Err(error) => wit::Decision::Deny(error.into_wit()),
        }
    }

    /// Run one of the rewriting middleware hooks (`on_publish_in`,
    /// `on_invoke_in`, `on_transmit_in`, which share a signature) and turn
    /// its answer into the WIT decision.
    pub fn inbound<P: Plugin>(
        slot: &'static Slot<P>,
        hook: fn(&mut P, &wit::Socket, &str, Payload) -> Result<Inbound, Error>,
        socket: wit::Socket,
        subject: String,
        data: Option<String>,
    ) -> wit::InboundDecision {
        let result = with(slot, |plugin| {
            hook(plugin, &socket, &subject, Payload::from(data))
        });
        match result {
            Ok(Inbound::AsSent) => wit::InboundDecision::Allow,
            Ok(Inbound::Rewritten(data)) => wit::InboundDecision::AllowWith(
                data.into_json_text().unwrap_or_else(|| "null".into()),
            ),
            Err(error) => wit::InboundDecision::Deny(error.into_wit()),
        }
    }

    pub fn snapshot<P: Plugin>(slot: &'static Slot<P>) -> Option<String> {
        with(slot, |plugin| plugin.snapshot()).and_then(Payload::into_json_text)
    }

    pub fn restore<P: Plugin>(slot: &'static Slot<P>, snapshot: String) -> Result<(), String> {
        with(slot, |plugin| {
            plugin.restore(Payload::from_json_text(snapshot))
        })
    }

    pub fn invoke_result(
        result: Result<Payload, Error>,
    ) -> Result<Option<String>, wit::ErrorObject> {
        result.map(Payload::into_json_text).map_err(Error::into_wit)
    }
}

/// Export a [`Plugin`] implementation as the plugin component.
///
/// Use it once, at the root of the plugin crate: `export!(MyPlugin);`.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        const _: () = {
            use $crate::__private as __wc;
            use $crate::bindings::wasmcluster::plugin::types as __wit;

            ::std::thread_local! {
                static STATE: ::std::cell::RefCell<::std::option::Option<$plugin>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            struct Exports;

            impl __wc::Guest for Exports {
                fn describe() -> __wit::Manifest {
                    __wc::describe::<$plugin>()
                }
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    __wc::init::<$plugin>(&STATE, config)
                }
                fn on_handshake(info: __wit::HandshakeInfo) -> __wit::Decision {
                    __wc::decision(__wc::with(&STATE, |p| {
                        $crate::Plugin::on_handshake(p, &info)
                    }))
                }
                fn on_connect(socket: __wit::Socket) {
                    __wc::with(&STATE, |p| $crate::Plugin::on_connect(p, &socket))
                }
                fn on_disconnect(socket: __wit::Socket, code: u16, reason: ::std::string::String) {
                    __wc::with(&STATE, |p| {
                        $crate::Plugin::on_disconnect(p, &socket, code, &reason)
                    })
                }
                fn on_invoke(
                    socket: __wit::Socket,
                    event: ::std::string::String,
                    data: ::std::option::Option<::std::string::String>,
                ) -> ::std::result::Result<
                    ::std::option::Option<::std::string::String>,
                    __wit::ErrorObject,
                > {
                    __wc::invoke_result(__wc::with(&STATE, |p| {
                        $crate::Plugin::on_invoke(p, &socket, &event, $crate::Payload::from(data))
                    }))
                }
                fn on_transmit(
                    socket: __wit::Socket,
                    event: ::std::string::String,
                    data: ::std::option::Option<::std::string::String>,
                ) {
                    __wc::with(&STATE, |p| {
                        $crate::Plugin::on_transmit(p, &socket, &event, $crate::Payload::from(data))
                    })
                }
                fn on_subscribe(
                    socket: __wit::Socket,
                    channel: ::std::string::String,
                    data: ::std::option::Option<::std::string::String>,
                ) -> __wit::Decision {
                    __wc::decision(__wc::with(&STATE, |p| {
                        $crate::Plugin::on_subscribe(
                            p,
                            &socket,
                            &channel,
                            $crate::Payload::from(data),
                        )
                    }))
                }
                fn on_publish_in(
                    socket: __wit::Socket,
                    channel: ::std::string::String,
                    data: ::std::option::Option<::std::string::String>,
                ) -> __wit::InboundDecision {
                    __wc::inbound(
                        &STATE,
                        <$plugin as $crate::Plugin>::on_publish_in,
                        socket,
                        channel,
                        data,
                    )
                }
                fn on_authenticate(
                    socket: __wit::Socket,
                    token: ::std::string::String,
                ) -> __wit::Decision {
                    __wc::decision(__wc::with(&STATE, |p| {
                        $crate::Plugin::on_authenticate(
                            p,
                            &socket,
                            $crate::Payload::from_json_text(token),
                        )
                    }))
                }
                fn on_invoke_in(
                    socket: __wit::Socket,
                    event: ::std::string::String,
                    data: ::std::option::Option<::std::string::String>,
                ) -> __wit::InboundDecision {
                    __wc::inbound(
                        &STATE,
                        <$plugin as $crate::Plugin>::on_invoke_in,
                        socket,
                        event,
                        data,
                    )
                }
                fn on_transmit_in(
                    socket: __wit::Socket,
                    event: ::std::string::String,
                    data: ::std::option::Option<::std::string::String>,
                ) -> __wit::InboundDecision {
                    __wc::inbound(
                        &STATE,
                        <$plugin as $crate::Plugin>::on_transmit_in,
                        socket,
                        event,
                        data,
                    )
                }
                fn on_timer(id: ::std::string::String) {
                    __wc::with(&STATE, |p| $crate::Plugin::on_timer(p, &id))
                }
            }

            impl __wc::StateGuest for Exports {
                fn snapshot() -> ::std::option::Option<::std::string::String> {
                    __wc::snapshot::<$plugin>(&STATE)
                }
                fn restore(
                    snapshot: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    __wc::restore::<$plugin>(&STATE, snapshot)
                }
            }

    $crate::bindings::export_plugin_world!(Exports with_types_in $crate::bindings);
        };
    };
}
