//! The services the whole server shares: the broker, the socket registry,
//! the plugins' key-value store, the auth engine and outbound HTTP. Sessions use them
//! directly; plugins reach them through their host functions.

use crate::auth::AuthEngine;
use crate::broker::Broker;
use crate::kv::KvStore;
use crate::mailbox::SocketRegistry;
use crate::outbound::OutboundClient;
use std::sync::Arc;

/// What every session and every plugin instance on every worker acts on.
#[derive(Debug)]
pub struct HostServices {
    /// Channel subscriptions and publication delivery.
    pub(crate) broker: Broker,
    /// Connected sockets by id, for host functions that act on a socket.
    pub(crate) sockets: SocketRegistry,
    /// The plugins' key-value store.
    pub(crate) kv: KvStore,
    /// Signs the tokens plugins give to sockets.
    pub(crate) auth: Arc<AuthEngine>,
    /// Plugins' outbound HTTP requests: TLS roots and metrics.
    pub(crate) outbound: Arc<OutboundClient>,
}

impl HostServices {
    /// Services of one host (local broker, in-memory KV) signing tokens
    /// with `auth`.
    pub fn new(auth: Arc<AuthEngine>) -> Self {
        Self::with(auth, Broker::default(), KvStore::default())
    }

    /// Services with the given broker and KV store.
    pub(crate) fn with(auth: Arc<AuthEngine>, broker: Broker, kv: KvStore) -> Self {
        HostServices {
            broker,
            sockets: SocketRegistry::default(),
            kv,
            auth,
            outbound: Arc::default(),
        }
    }
}
