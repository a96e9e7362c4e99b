//! Middleware: the hooks through which plugins allow, rewrite or deny what a
//! client does (handshake, authenticate, subscribe, publish, invoke,
//! transmit), whichever plugin handles the action itself.
//!
//! Each hook runs as a chain over the plugins that declare it, in the order
//! of the set's chains: higher priority first, then by name. The first deny
//! ends the chain and its error is what the client receives; a rewrite is
//! what the next plugin in the chain sees. Middleware fails closed: a hook
//! that traps, times out, runs out of memory or answers something invalid
//! denies the action.

use super::fault::{Call, CallFailure, Retired, failure_error, invalid_answer, plugin_error};
use super::host_state::HostState;
use super::types::{
    Decision, ErrorObject as GuestError, HandshakeInfo, Hook, InboundDecision, Socket,
};
use super::wit::Exports;
use super::worker::WorkerPlugins;
use crate::metrics::{self, HookKind};
use crate::protocol::{self, ErrorObject};
use std::rc::Rc;
use wasmtime::Store;

/// What one hook decided, in the host's terms.
pub(super) enum Verdict {
    Allow,
    Rewrite(String),
    Deny(GuestError),
}

impl From<Decision> for Verdict {
    fn from(decision: Decision) -> Self {
        match decision {
            Decision::Allow => Verdict::Allow,
            Decision::Deny(error) => Verdict::Deny(error),
        }
    }
}

impl From<InboundDecision> for Verdict {
    fn from(decision: InboundDecision) -> Self {
        match decision {
            InboundDecision::Allow => Verdict::Allow,
            InboundDecision::AllowWith(json) => Verdict::Rewrite(json),
            InboundDecision::Deny(error) => Verdict::Deny(error),
        }
    }
}

/// A client action whose data middleware may rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Inbound {
    /// `#publish` (hook `publish-in`).
    Publish,
    /// An RPC (hook `invoke`).
    Invoke,
    /// A transmit (hook `transmit`).
    Transmit,
}

/// The data an action proceeds with after its middleware: `None` when no
/// plugin rewrote it.
pub type Rewritten = Option<String>;

/// The metrics label of a middleware hook; `None` for the other hooks.
fn hook_kind(hook: Hook) -> Option<HookKind> {
    Some(match hook {
        Hook::Handshake => HookKind::Handshake,
        Hook::Authenticate => HookKind::Authenticate,
        Hook::Subscribe => HookKind::Subscribe,
        Hook::PublishIn => HookKind::PublishIn,
        Hook::Invoke => HookKind::Invoke,
        Hook::Transmit => HookKind::Transmit,
        Hook::Connect | Hook::Disconnect | Hook::Timer => return None,
    })
}

impl WorkerPlugins {
    /// Run the `handshake` hooks for a connection's `#handshake`.
    pub async fn check_handshake(self: &Rc<Self>, info: &HandshakeInfo) -> Result<(), ErrorObject> {
        self.on_newest(async |plugins| {
            let call =
                async |exports: &Exports, store: &mut Store<HostState>, _: Option<&String>| {
                    Ok(exports.on_handshake(store, info).await?.into())
                };
            plugins
                .run_chain(Hook::Handshake, Call::Handshake, None, None, call)
                .await
        })
        .await
        .map(drop)
    }

    /// Run the `authenticate` hooks for a verified token's `claims`.
    pub async fn check_authenticate(
        self: &Rc<Self>,
        socket: &Socket,
        claims: &str,
    ) -> Result<(), ErrorObject> {
        self.on_newest(async |plugins| {
            let call =
                async |exports: &Exports, store: &mut Store<HostState>, _: Option<&String>| {
                    Ok(exports.on_authenticate(store, socket, claims).await?.into())
                };
            plugins
                .run_chain(
                    Hook::Authenticate,
                    Call::Authenticate,
                    Some(socket),
                    None,
                    call,
                )
                .await
        })
        .await
        .map(drop)
    }

    /// Run the `subscribe` hooks for a subscription to `channel`.
    pub async fn check_subscribe(
        self: &Rc<Self>,
        socket: &Socket,
        channel: &str,
        data: Option<&str>,
    ) -> Result<(), ErrorObject> {
        self.on_newest(async |plugins| {
            let call =
                async |exports: &Exports, store: &mut Store<HostState>, data: Option<&String>| {
                    Ok(exports
                        .on_subscribe(store, socket, channel, data)
                        .await?
                        .into())
                };
            let what = Call::Subscribe(channel);
            plugins
                .run_chain(Hook::Subscribe, what, Some(socket), data, call)
                .await
        })
        .await
        .map(drop)
    }

    /// Run the `publish-in` hooks for a client publication on `channel`:
    /// the data it proceeds with, or the error of the hook that denied it.
    pub async fn check_publish(
        self: &Rc<Self>,
        socket: &Socket,
        channel: &str,
        data: Option<&str>,
    ) -> Result<Rewritten, ErrorObject> {
        self.on_newest(async |plugins| {
            plugins
                .inbound(Inbound::Publish, socket, channel, data)
                .await
        })
        .await
    }

    /// Run `decide` on the newest plugins, again on the newer ones when a
    /// reload interrupts it: hooks decide, they do not act, so running one
    /// twice is harmless.
    async fn on_newest<R>(
        self: &Rc<Self>,
        decide: impl AsyncFn(&Rc<Self>) -> Result<R, Retired>,
    ) -> R {
        let mut plugins = self.newest();
        loop {
            match decide(&plugins).await {
                Ok(decided) => return decided,
                Err(Retired) => plugins = plugins.newest(),
            }
        }
    }

    /// Run the middleware of a client publication, RPC or transmit on
    /// `subject` (its channel or event) on these plugins.
    pub(super) async fn inbound(
        &self,
        action: Inbound,
        socket: &Socket,
        subject: &str,
        data: Option<&str>,
    ) -> Result<Result<Rewritten, ErrorObject>, Retired> {
        let (hook, what) = match action {
            Inbound::Publish => (Hook::PublishIn, Call::PublishIn(subject)),
            Inbound::Invoke => (Hook::Invoke, Call::InvokeIn(subject)),
            Inbound::Transmit => (Hook::Transmit, Call::TransmitIn(subject)),
        };
        let call = async |exports: &Exports,
                          store: &mut Store<HostState>,
                          data: Option<&String>| {
            let decision = match action {
                Inbound::Publish => exports.on_publish_in(store, socket, subject, data).await?,
                Inbound::Invoke => exports.on_invoke_in(store, socket, subject, data).await?,
                Inbound::Transmit => exports.on_transmit_in(store, socket, subject, data).await?,
            };
            Ok(decision.into())
        };
        self.run_chain(hook, what, Some(socket), data, call).await
    }

    /// Call `hook` on every plugin of its chain, in order, with the data as
    /// the previous plugins left it, and count a deny.
    async fn run_chain(
        &self,
        hook: Hook,
        what: Call<'_>,
        socket: Option<&Socket>,
        data: Option<&str>,
        hook_call: impl AsyncFn(
            &Exports,
            &mut Store<HostState>,
            Option<&String>,
        ) -> wasmtime::Result<Verdict>,
    ) -> Result<Result<Rewritten, ErrorObject>, Retired> {
        if self.set().chain(hook).is_empty() {
            return Ok(Ok(None));
        }
        let decided = self
            .chain_decision(hook, what, socket, data, hook_call)
            .await?;
        if decided.is_err()
            && let Some(kind) = hook_kind(hook)
        {
            metrics::bump(&self.stats.middleware_denials[kind as usize]);
        }
        Ok(decided)
    }

    /// [`WorkerPlugins::run_chain`] on a chain with plugins.
    async fn chain_decision(
        &self,
        hook: Hook,
        what: Call<'_>,
        socket: Option<&Socket>,
        data: Option<&str>,
        hook_call: impl AsyncFn(
            &Exports,
            &mut Store<HostState>,
            Option<&String>,
        ) -> wasmtime::Result<Verdict>,
    ) -> Result<Result<Rewritten, ErrorObject>, Retired> {
        let data = data.map(str::to_owned);
        let mut rewritten: Rewritten = None;
        for &index in self.set().chain(hook) {
            let plugin = &self.set().plugins[index];
            let input = rewritten.as_ref().or(data.as_ref());
            if let Err(too_large) = plugin.check_data(input.map(String::as_str), what.subject()) {
                return Ok(Err(too_large));
            }
            let source = socket.map(|socket| socket.id.as_str());
            let verdict = self
                .call(index, what, source, async |exports, store| {
                    hook_call(exports, store, input).await
                })
                .await?;
            match verdict {
                Ok(Verdict::Allow) => {}
                Ok(Verdict::Rewrite(json)) => {
                    if protocol::validate_json(&json).is_err() {
                        return Ok(Err(invalid_answer(
                            &plugin.name,
                            what.subject(),
                            &format!("rewrote the data with invalid JSON in {what}"),
                        )));
                    }
                    rewritten = Some(json);
                }
                Ok(Verdict::Deny(error)) => {
                    return Ok(Err(plugin_error(error).unwrap_or_else(|why| {
                        invalid_answer(&plugin.name, what.subject(), &format!("{why} in {what}"))
                    })));
                }
                Err(failure @ (CallFailure::Fault(_) | CallFailure::Unavailable(_))) => {
                    return Ok(Err(failure_error(failure, &plugin.name, what.subject())));
                }
            }
        }
        Ok(Ok(rewritten))
    }
}
