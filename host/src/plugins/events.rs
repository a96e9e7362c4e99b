//! The events plugins answer: a client's RPC and transmit, each through its
//! middleware chain first, then to the one plugin that declares the event.

use super::fault::{Call, Retired, failure_error, invalid_answer, plugin_error};
use super::host_state::HostState;
use super::middleware::Inbound;
use super::types::Socket;
use super::wit::Exports;
use super::worker::WorkerPlugins;
use crate::metrics;
use crate::protocol::{self, ErrorObject};
use std::rc::Rc;
use wasmtime::Store;

impl WorkerPlugins {
    /// Whether RPC `event` may be called by an unauthenticated socket
    /// under `--require-auth`.
    fn allows_unauthenticated(&self, event: &str) -> bool {
        self.set().is_public_rpc(event)
    }

    /// Answer RPC `event` for `socket`: refused with `AuthRequiredError`
    /// when `authenticated` is false and the event is not public, then the
    /// `invoke` middleware, then the plugin that declares the event
    /// (`UnknownEventError` when none does). The answer's data, or the
    /// error object the client receives.
    pub async fn rpc(
        self: &Rc<Self>,
        socket: &Socket,
        event: &str,
        data: Option<&str>,
        authenticated: bool,
    ) -> Result<Option<String>, ErrorObject> {
        let mut plugins = self.newest();
        loop {
            if !authenticated && !plugins.allows_unauthenticated(event) {
                return Err(ErrorObject::auth_required(&format!("RPC '{event}'")));
            }
            let rewritten = match plugins.inbound(Inbound::Invoke, socket, event, data).await {
                Ok(Ok(rewritten)) => rewritten,
                Ok(Err(denied)) => return Err(denied),
                Err(Retired) => {
                    plugins = plugins.newest();
                    continue;
                }
            };
            let data = rewritten.as_deref().or(data);
            // Unknown events are answered without being measured: they
            // create no label set.
            let Some(route) = plugins.rpc_route(event) else {
                return Err(ErrorObject::unknown_event(event));
            };
            let started = metrics::start();
            match plugins.invoke_at(route.index, socket, event, data).await {
                Err(Retired) => plugins = plugins.newest(),
                Ok(answer) => {
                    route.stats.observe(started, answer.is_err());
                    return answer;
                }
            }
        }
    }

    async fn invoke_at(
        &self,
        index: usize,
        socket: &Socket,
        event: &str,
        data: Option<&str>,
    ) -> Result<Result<Option<String>, ErrorObject>, Retired> {
        let plugin = &self.set().plugins[index];
        if let Err(too_large) = plugin.check_data(data, event) {
            return Ok(Err(too_large));
        }
        let data = data.map(str::to_owned);
        let invoke = async |exports: &Exports, store: &mut Store<HostState>| {
            exports.on_invoke(store, socket, event, data.as_ref()).await
        };
        let answer = match self
            .call(index, Call::Invoke(event), Some(&socket.id), invoke)
            .await?
        {
            Ok(answer) => answer,
            Err(failure) => return Ok(Err(failure_error(failure, &plugin.name, event))),
        };
        Ok(match answer {
            Ok(Some(json)) if protocol::validate_json(&json).is_err() => Err(invalid_answer(
                &plugin.name,
                event,
                "answered with data that is not valid JSON",
            )),
            Ok(data) => Ok(data),
            Err(error) => {
                Err(plugin_error(error)
                    .unwrap_or_else(|why| invalid_answer(&plugin.name, event, &why)))
            }
        })
    }

    /// Deliver transmit `event` from `socket`: the `transmit` middleware,
    /// then the plugin that declares the event. Dropped (with a debug line)
    /// when a hook denies it, and counted when no plugin declares it.
    /// Failures are logged where the call is made; a transmit has no one to
    /// answer.
    pub async fn transmit(self: &Rc<Self>, socket: &Socket, event: &str, data: Option<&str>) {
        let mut plugins = self.newest();
        loop {
            let rewritten = match plugins
                .inbound(Inbound::Transmit, socket, event, data)
                .await
            {
                Ok(Ok(rewritten)) => rewritten,
                Ok(Err(denied)) => {
                    tracing::debug!(
                        socket = socket.id,
                        event,
                        "dropped a transmit: {}: {}",
                        denied.name,
                        denied.message
                    );
                    return;
                }
                Err(Retired) => {
                    plugins = plugins.newest();
                    continue;
                }
            };
            let Some(index) = plugins.set().transmit_route(event) else {
                metrics::bump(&plugins.stats.unknown_transmits);
                tracing::debug!(
                    socket = socket.id,
                    event,
                    "dropped a transmit that no plugin declares"
                );
                return;
            };
            let data = rewritten.or_else(|| data.map(str::to_owned));
            if let Err(too_large) = plugins.set().plugins[index].check_data(data.as_deref(), event)
            {
                tracing::debug!(
                    socket = socket.id,
                    "dropped a transmit: {}",
                    too_large.message
                );
                return;
            }
            let transmit = async |exports: &Exports, store: &mut Store<HostState>| {
                exports
                    .on_transmit(store, socket, event, data.as_ref())
                    .await
            };
            let delivered = plugins
                .call(index, Call::Transmit(event), Some(&socket.id), transmit)
                .await;
            match delivered {
                Err(Retired) => plugins = plugins.newest(),
                Ok(_) => return,
            }
        }
    }
}
