//! The labels of the per-worker counters: what a packet is, which
//! middleware hook denied, where a publication came from.

use crate::protocol::Request;

/// What an inbound packet is, for `wasmcluster_messages_in_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MessageKind {
    /// An event with a cid, for a plugin.
    Invoke,
    /// An event without a cid, for a plugin.
    Transmit,
    /// `#subscribe`.
    Subscribe,
    /// `#unsubscribe`.
    Unsubscribe,
    /// `#publish`.
    Publish,
    /// `#handshake`.
    Handshake,
    /// `#authenticate`.
    Authenticate,
    /// Anything else: heartbeat answers, `#removeAuthToken`, answers to
    /// nothing, frames that are no SocketCluster packet.
    Other,
}

impl MessageKind {
    /// Every kind, in the order of their counters.
    pub(crate) const ALL: [MessageKind; 8] = [
        MessageKind::Invoke,
        MessageKind::Transmit,
        MessageKind::Subscribe,
        MessageKind::Unsubscribe,
        MessageKind::Publish,
        MessageKind::Handshake,
        MessageKind::Authenticate,
        MessageKind::Other,
    ];

    /// The `kind` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            MessageKind::Invoke => "invoke",
            MessageKind::Transmit => "transmit",
            MessageKind::Subscribe => "subscribe",
            MessageKind::Unsubscribe => "unsubscribe",
            MessageKind::Publish => "publish",
            MessageKind::Handshake => "handshake",
            MessageKind::Authenticate => "authenticate",
            MessageKind::Other => "other",
        }
    }

    /// The kind of a packet, by what it asks for.
    pub(crate) fn of(request: &Request<'_>) -> Self {
        match request {
            Request::Handshake { .. } => MessageKind::Handshake,
            Request::Authenticate { .. } => MessageKind::Authenticate,
            Request::Subscribe { .. } => MessageKind::Subscribe,
            Request::Unsubscribe { .. } => MessageKind::Unsubscribe,
            Request::Publish { .. } => MessageKind::Publish,
            Request::Invoke { .. } => MessageKind::Invoke,
            Request::Transmit { .. } => MessageKind::Transmit,
            Request::RemoveAuthToken | Request::Response { .. } | Request::Other => {
                MessageKind::Other
            }
        }
    }
}

/// A middleware hook, for `wasmcluster_middleware_denials_total{hook}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HookKind {
    /// `on-handshake`.
    Handshake,
    /// `on-authenticate`.
    Authenticate,
    /// `on-subscribe`.
    Subscribe,
    /// `on-publish-in`.
    PublishIn,
    /// `on-invoke-in`.
    Invoke,
    /// `on-transmit-in`.
    Transmit,
}

impl HookKind {
    /// Every hook, in the order of their counters.
    pub(crate) const ALL: [HookKind; 6] = [
        HookKind::Handshake,
        HookKind::Authenticate,
        HookKind::Subscribe,
        HookKind::PublishIn,
        HookKind::Invoke,
        HookKind::Transmit,
    ];

    /// The `hook` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            HookKind::Handshake => "handshake",
            HookKind::Authenticate => "authenticate",
            HookKind::Subscribe => "subscribe",
            HookKind::PublishIn => "publish_in",
            HookKind::Invoke => "invoke",
            HookKind::Transmit => "transmit",
        }
    }
}

/// Where a publication comes from, for `wasmcluster_publications_total{source}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PublicationSource {
    /// A client's `#publish`, after its middleware.
    Client,
    /// A plugin's `publish` host call.
    Plugin,
}

impl PublicationSource {
    /// Every source, in the order of their counters.
    pub(crate) const ALL: [PublicationSource; 2] =
        [PublicationSource::Client, PublicationSource::Plugin];

    /// The `source` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            PublicationSource::Client => "client",
            PublicationSource::Plugin => "plugin",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_kinds_follow_the_request() {
        let kind = |text: &str| match crate::protocol::parse_frame(text) {
            crate::protocol::Frame::Packets(mut packets) => {
                MessageKind::of(&packets.next().unwrap())
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(kind(r#"{"event":"echo","cid":1}"#), MessageKind::Invoke);
        assert_eq!(kind(r#"{"event":"echo"}"#), MessageKind::Transmit);
        assert_eq!(
            kind(r##"{"event":"#subscribe","cid":1}"##),
            MessageKind::Subscribe
        );
        assert_eq!(
            kind(r##"{"event":"#removeAuthToken"}"##),
            MessageKind::Other
        );
    }
}
