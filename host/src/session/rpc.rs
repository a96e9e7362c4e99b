//! RPCs and transmits for plugins: each goes through `--require-auth` and
//! its middleware to the plugin that declares its event.

use super::{Ending, Session, Transport};
use crate::protocol::{self, ErrorObject, MAX_NAME_BYTES};
use serde_json::value::RawValue;

impl<S: Transport> Session<S> {
    pub(super) async fn on_invoke(
        &mut self,
        event: &str,
        data: Option<&RawValue>,
        cid: &RawValue,
    ) -> Result<(), Ending> {
        let reply = match self.invoke(event, data.map(RawValue::get)).await {
            Ok(data) => protocol::ok_response(cid, data.as_deref()),
            Err(error) => protocol::error_response(cid, &error),
        };
        self.send(reply).await
    }

    /// The answer to RPC `event`, from its plugin or the error that stopped it.
    async fn invoke(
        &mut self,
        event: &str,
        data: Option<&str>,
    ) -> Result<Option<String>, ErrorObject> {
        if event.len() > MAX_NAME_BYTES {
            return Err(ErrorObject::name_too_long("Event"));
        }
        let (plugins, socket) = (self.ctx.current_plugins(), self.socket.clone());
        let authenticated = !self.must_authenticate();
        // Plugin calls are boxed so that their large futures are not part of
        // every idle session's state.
        let call = async move { plugins.rpc(&socket, event, data, authenticated).await };
        self.serving(Box::pin(call)).await
    }

    pub(super) async fn on_transmit(&mut self, event: &str, data: Option<&RawValue>) {
        if event.len() > MAX_NAME_BYTES {
            tracing::debug!(
                socket = self.socket.id,
                "dropped a transmit with a name too long"
            );
            return;
        }
        if self.must_authenticate() {
            let error = ErrorObject::auth_required(&format!("Transmit '{event}'"));
            tracing::debug!(
                socket = self.socket.id,
                event,
                "dropped a transmit: {}: {}",
                error.name,
                error.message
            );
            return;
        }
        let (plugins, socket) = (self.ctx.current_plugins(), self.socket.clone());
        let data = data.map(RawValue::get);
        let call = async move { plugins.transmit(&socket, event, data).await };
        self.serving(Box::pin(call)).await;
    }
}
