//! Open sockets by id, so that a plugin on any worker can reach any socket.

use super::{Outbound, Outbox, Subscriptions};
use std::collections::HashMap;
use std::sync::RwLock;
use thiserror::Error;

/// No open socket has the id.
#[derive(Debug, Error, PartialEq)]
#[error("no open socket has id {0}")]
pub(crate) struct UnknownSocket(pub String);

/// The outboxes and channels of every socket that completed its handshake.
#[derive(Debug, Default)]
pub(crate) struct SocketRegistry {
    /// Socket id to the socket's outbound queue and its channels.
    sockets: RwLock<HashMap<String, (Outbox, Subscriptions)>>,
}

impl SocketRegistry {
    /// Make a socket reachable by id.
    pub(crate) fn register(&self, id: &str, outbox: Outbox, subscriptions: Subscriptions) {
        let mut sockets = self.sockets.write().unwrap_or_else(|e| e.into_inner());
        sockets.insert(id.to_owned(), (outbox, subscriptions));
    }

    /// Forget a socket that closed.
    pub(crate) fn remove(&self, id: &str) {
        let mut sockets = self.sockets.write().unwrap_or_else(|e| e.into_inner());
        sockets.remove(id);
    }

    /// Queue anything for one socket (a frame, an auth change).
    pub(crate) fn deliver(&self, id: &str, queued: Outbound) -> Result<(), UnknownSocket> {
        let sockets = self.sockets.read().unwrap_or_else(|e| e.into_inner());
        sockets
            .get(id)
            .and_then(|(outbox, _)| outbox.send(queued).ok())
            .ok_or_else(|| UnknownSocket(id.to_owned()))
    }

    /// The channels one socket is subscribed to, sorted.
    pub(crate) fn subscriptions(&self, id: &str) -> Result<Vec<String>, UnknownSocket> {
        let sockets = self.sockets.read().unwrap_or_else(|e| e.into_inner());
        sockets
            .get(id)
            .map(|(_, subscriptions)| subscriptions.list())
            .ok_or_else(|| UnknownSocket(id.to_owned()))
    }

    /// How many sockets are open.
    pub(crate) fn len(&self) -> usize {
        self.sockets.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}
