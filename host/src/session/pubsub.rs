//! Subscriptions and publications: `#subscribe`, `#unsubscribe` and
//! `#publish`, with SocketCluster's answers to malformed ones, the channel
//! limit, and the `subscribe` and `publish-in` middleware.

use super::{Ending, Session, Transport};
use crate::broker::{Catchup, Position, Since};
use crate::mailbox::NumberedFrame;
use crate::metrics::{self, PublicationSource};
use crate::protocol::{self, ChannelRequest, ErrorObject, MAX_NAME_BYTES};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The key of a subscription's data where a client says where it stopped
/// (`{"epoch": .., "offset": ..}`, or `null` on a first subscription).
const RECOVER_KEY: &str = "#recover";

/// The event that tells a client subscribing with [`RECOVER_KEY`] where
/// the channel's history stands, and whether it got what it missed.
const HISTORY_EVENT: &str = "wasmcluster:history";

impl<S: Transport> Session<S> {
    pub(super) async fn on_subscribe(
        &mut self,
        data: Option<&RawValue>,
        cid: Option<&RawValue>,
    ) -> Result<(), Ending> {
        // SocketCluster performs a subscription only when it is an RPC.
        let Some(cid) = cid else {
            return Ok(());
        };
        let Some(request) = ChannelRequest::parse(data) else {
            let error = ErrorObject::invalid_action("Subscribe channel name was malformatted");
            return self.send(protocol::error_response(cid, &error)).await;
        };
        if request.channel.len() > MAX_NAME_BYTES {
            let error = ErrorObject::name_too_long("Channel");
            return self.send(protocol::error_response(cid, &error)).await;
        }
        if self.must_authenticate() {
            let error =
                ErrorObject::auth_required(&format!("Subscribing to '{}'", request.channel));
            return self.send(protocol::error_response(cid, &error)).await;
        }
        let limit = self.ctx.settings.socket_channel_limit;
        if limit > 0 && self.subscriptions.len() >= limit {
            // SocketCluster's check and wording, as its clients see them.
            let error = ErrorObject::new(
                "BrokerError",
                format!(
                    "Failed to subscribe socket to the {} channel - InvalidActionError: Socket {} \
                     tried to exceed the channel subscription limit of {limit}",
                    request.channel, self.socket.id
                ),
            );
            return self.send(protocol::error_response(cid, &error)).await;
        }
        let (plugins, socket) = (self.ctx.current_plugins(), self.socket.clone());
        let (channel, data) = (&request.channel, request.data.map(RawValue::get));
        let checked = async move { plugins.check_subscribe(&socket, channel, data).await };
        if let Err(error) = self.serving(Box::pin(checked)).await {
            return self.send(protocol::error_response(cid, &error)).await;
        }
        if !self.subscriptions.insert(&request.channel) {
            return self.send(protocol::ok_response(cid, None)).await;
        }
        let since = since_of(request.data);
        let broker = &self.ctx.services.broker;
        let subscribed = broker.subscribe(&request.channel, self.key, &self.outbox, &since);
        let catchup = subscribed.await;
        if catchup.overlaps_live
            && let Some(position) = &catchup.position
        {
            self.caught_up.set(&request.channel, position.clone());
        }
        // Written before anything queued meanwhile, which is newer: the
        // answer, what the client missed, then where the history stands.
        self.feed(Utf8Bytes::from(protocol::ok_response(cid, None)))
            .await?;
        let report = (since != Since::Nothing).then(|| history_report(&request.channel, &catchup));
        for frame in catchup.frames {
            self.feed(frame).await?;
        }
        if let Some(report) = report {
            self.feed(Utf8Bytes::from(report)).await?;
        }
        Ok(())
    }

    pub(super) async fn on_unsubscribe(
        &mut self,
        data: Option<&RawValue>,
        cid: Option<&RawValue>,
    ) -> Result<(), Ending> {
        let error = match protocol::unsubscribe_channel(data) {
            None => Some(ErrorObject::invalid_action(
                "Unsubscribe channel name was malformatted",
            )),
            Some(channel) if !self.leave(&channel) => Some(ErrorObject::new(
                "BrokerError",
                format!(
                    "Failed to unsubscribe socket from the {} channel - InvalidActionError: \
                     Socket {} tried to unsubscribe from a channel which it is not subscribed to",
                    protocol::quoted(&channel),
                    self.socket.id
                ),
            )),
            Some(_) => None,
        };
        self.answer(cid, error).await
    }

    pub(super) async fn on_publish(
        &mut self,
        data: Option<&RawValue>,
        cid: Option<&RawValue>,
    ) -> Result<(), Ending> {
        let outcome = self.publish(data).await;
        self.answer(cid, outcome.err()).await
    }

    /// Check a client publication against the policies and the `publish-in`
    /// middleware, and publish what they let through.
    async fn publish(&mut self, data: Option<&RawValue>) -> Result<(), ErrorObject> {
        if !self.ctx.settings.allow_client_publish {
            return Err(ErrorObject::invalid_action(
                "Client publish feature is disabled",
            ));
        }
        let request = ChannelRequest::parse(data)
            .ok_or_else(|| ErrorObject::invalid_action("Publish channel name was malformatted"))?;
        if request.channel.len() > MAX_NAME_BYTES {
            return Err(ErrorObject::name_too_long("Channel"));
        }
        if self.must_authenticate() {
            return Err(ErrorObject::auth_required(&format!(
                "Publishing to '{}'",
                request.channel
            )));
        }
        let data = request.data.map(RawValue::get);
        let (plugins, socket) = (self.ctx.current_plugins(), self.socket.clone());
        let channel = &request.channel;
        let checked = async move { plugins.check_publish(&socket, channel, data).await };
        let rewritten = self.serving(Box::pin(checked)).await?;
        self.ctx
            .services
            .broker
            .publish(&request.channel, rewritten.as_deref().or(data));
        metrics::bump(&self.ctx.stats.publications[PublicationSource::Client as usize]);
        Ok(())
    }

    /// Unsubscribe from `channel`; `false` if the socket was not
    /// subscribed to it.
    pub(super) fn leave(&mut self, channel: &str) -> bool {
        if !self.subscriptions.remove(channel) {
            return false;
        }
        self.ctx.services.broker.unsubscribe(channel, self.key);
        self.caught_up.forget(channel);
        true
    }

    /// Answer a reserved event when it was an RPC: `{"rid"}` or the error.
    async fn answer(
        &mut self,
        cid: Option<&RawValue>,
        error: Option<ErrorObject>,
    ) -> Result<(), Ending> {
        let Some(cid) = cid else {
            if let Some(error) = error {
                tracing::debug!(socket = self.socket.id, "{}: {}", error.name, error.message);
            }
            return Ok(());
        };
        let frame = match error {
            None => protocol::ok_response(cid, None),
            Some(error) => protocol::error_response(cid, &error),
        };
        self.send(frame).await
    }

    /// Check every subscription again as a new `#subscribe` would be (the
    /// auth requirement and the `subscribe` middleware), after the socket's
    /// token changed or went: a subscription must not outlive the right to
    /// it. Those no longer allowed are dropped; the frames that tell the
    /// client (`#kickOut` with the reason) are returned for the caller to
    /// write in order with what it writes.
    pub(super) async fn revoke_lost_subscriptions(&mut self) -> Vec<String> {
        let channels = self.subscriptions.list();
        if channels.is_empty() {
            return Vec::new();
        }
        let plugins = self.ctx.current_plugins();
        let mut kicks = Vec::new();
        for channel in channels {
            let refusal = if self.must_authenticate() {
                Some(ErrorObject::auth_required(&format!(
                    "Subscribing to '{channel}'"
                )))
            } else {
                let (plugins, socket) = (plugins.clone(), self.socket.clone());
                let channel = &channel;
                let checked = async move { plugins.check_subscribe(&socket, channel, None).await };
                self.serving(Box::pin(checked)).await.err()
            };
            let Some(error) = refusal else {
                continue;
            };
            self.leave(&channel);
            tracing::debug!(
                socket = self.socket.id,
                channel,
                "subscription revoked after an auth change: {}: {}",
                error.name,
                error.message
            );
            let message = serde_json::Value::String(error.message).to_string();
            let data = protocol::kick_out(&channel, Some(&message));
            kicks.push(protocol::event("#kickOut", Some(&data)));
        }
        kicks
    }

    /// [`Session::revoke_lost_subscriptions`], writing its frames.
    pub(super) async fn recheck_subscriptions(&mut self) -> Result<(), Ending> {
        for kick in self.revoke_lost_subscriptions().await {
            self.send(kick).await?;
        }
        Ok(())
    }
}

/// The channels whose history a session just caught up on from Redis,
/// and where: live copies of those publications may still be queued for
/// it, and must not be written twice. Usually empty.
#[derive(Debug, Default)]
pub(super) struct CaughtUp(Vec<(String, Position)>);

impl CaughtUp {
    fn set(&mut self, channel: &str, position: Position) {
        self.forget(channel);
        self.0.push((channel.to_owned(), position));
    }

    fn forget(&mut self, channel: &str) {
        self.0.retain(|(name, _)| name != channel);
    }

    /// Whether `numbered` was written already. The first newer one of a
    /// channel ends its mark: pub/sub brings a channel's publications in
    /// order, so nothing older follows it.
    pub(super) fn covers(&mut self, numbered: &NumberedFrame) -> bool {
        let Some(index) = self
            .0
            .iter()
            .position(|(name, _)| *name == numbered.channel)
        else {
            return false;
        };
        let position = &self.0[index].1;
        if position.epoch == numbered.epoch && numbered.offset <= position.offset {
            return true;
        }
        self.0.swap_remove(index);
        false
    }
}

/// What a subscription's data asks of the channel's history: nothing,
/// unless it is an object with [`RECOVER_KEY`].
fn since_of(data: Option<&RawValue>) -> Since {
    let Some(data) = data.filter(|data| data.get().contains(RECOVER_KEY)) else {
        return Since::Nothing;
    };
    #[derive(serde::Deserialize)]
    struct Recover {
        epoch: String,
        offset: u64,
    }
    let Ok(object) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(data.get())
    else {
        return Since::Nothing;
    };
    match object.get(RECOVER_KEY) {
        None => Since::Nothing,
        Some(value) => match Recover::deserialize(value) {
            Ok(Recover { epoch, offset }) => Since::Position(Position { epoch, offset }),
            Err(_) => Since::Now,
        },
    }
}

/// The [`HISTORY_EVENT`] for a subscription that asked about history.
fn history_report(channel: &str, catchup: &Catchup) -> String {
    let mut report = serde_json::json!({
        "channel": channel,
        "recovered": catchup.failure.is_none(),
        "missed": catchup.frames.len(),
    });
    if let Some(position) = &catchup.position {
        report["epoch"] = position.epoch.clone().into();
        report["offset"] = position.offset.into();
    }
    if let Some(failure) = catchup.failure {
        report["reason"] = failure.reason().into();
    }
    protocol::event(HISTORY_EVENT, Some(&report.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(channel: &str, epoch: &str, offset: u64) -> NumberedFrame {
        NumberedFrame {
            channel: channel.into(),
            epoch: epoch.into(),
            offset,
            frame: Utf8Bytes::from_static("{}"),
        }
    }

    #[test]
    fn a_catch_up_covers_live_copies_up_to_its_position_only() {
        let mut caught_up = CaughtUp::default();
        let at = |offset| Position {
            epoch: "e".into(),
            offset,
        };
        caught_up.set("a", at(5));
        caught_up.set("b", at(2));
        assert!(caught_up.covers(&numbered("a", "e", 4)));
        assert!(caught_up.covers(&numbered("a", "e", 5)));
        assert!(!caught_up.covers(&numbered("c", "e", 1)));
        // Another epoch is news, and the first newer one ends the mark.
        assert!(!caught_up.covers(&numbered("b", "f", 1)));
        assert!(!caught_up.covers(&numbered("b", "e", 2)));
        assert!(!caught_up.covers(&numbered("a", "e", 6)));
        assert!(!caught_up.covers(&numbered("a", "e", 5)));
        caught_up.set("a", at(9));
        caught_up.forget("a");
        assert!(!caught_up.covers(&numbered("a", "e", 1)));
    }
}
