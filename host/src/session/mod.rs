//! One client connection after the WebSocket upgrade: the SocketCluster
//! state machine (handshake, heartbeat, RPCs, transmits, pub/sub) from the
//! first frame to the close code.
//!
//! A session runs as one task on its worker. It reads frames, answers them
//! (calling plugins directly on the worker's thread), writes what other
//! sessions and plugins queue for it, and sends pings. Inbound packets of
//! one socket are handled in order, as SocketCluster does.
//!
//! The files, in the way mini-redis keeps one file per command: `io` is
//! the loop that reads, dispatches and writes; `handshake` the handshake
//! and authentication; `rpc` RPCs and transmits; `pubsub` subscriptions
//! and publications; `control` what plugins ask of the socket;
//! `client_calls` the procedures plugins invoke on the client; `waiting`
//! the connection served while a plugin call waits on the host.

mod client_calls;
mod control;
mod handshake;
mod io;
mod pubsub;
mod rate;
mod rpc;
mod waiting;

pub(crate) use rate::RateLimit;

use crate::auth::AuthEngine;
use crate::mailbox::{Inbox, Outbox, OverflowSignal, SessionKey, Subscriptions, outbox};
use crate::metrics::WorkerStats;
use crate::plugins::{Socket, WorkerPlugins};
use crate::protocol::{PingProtocol, close_code};
use crate::services::HostServices;
use base64::Engine as _;
use client_calls::ClientCalls;
use rate::TokenBucket;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;

/// Which heartbeat a server uses with its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PingMode {
    /// Ping with `""` first; while the client has answered no ping, add `#1`
    /// from the second ping on; once it answers, use only its kind. Serves v1
    /// and v2 clients on one port, and a v2 client never sees `#1`.
    Auto,
    /// Always this protocol, as a SocketCluster server configured with
    /// `protocolVersion` does.
    Fixed(PingProtocol),
}

/// Protocol settings shared by every session.
#[derive(Debug, Clone)]
pub(crate) struct SessionSettings {
    /// Time between two server pings.
    pub ping_interval: Duration,
    /// Time without any frame from the client before it is closed with 4001;
    /// also sent to the client in the handshake reply.
    pub ping_timeout: Duration,
    /// Time allowed between the upgrade and `#handshake` (else 4005).
    pub handshake_timeout: Duration,
    /// Heartbeat protocol selection.
    pub ping_mode: PingMode,
    /// Whether clients may `#publish`.
    pub allow_client_publish: bool,
    /// Whether unauthenticated sockets are limited to public RPCs.
    pub require_auth: bool,
    /// Most messages queued for one socket before it is closed with 4100.
    pub max_queued_messages: usize,
    /// Most bytes queued for one socket before it is closed with 4100.
    pub max_queued_bytes: usize,
    /// Most channels one socket may subscribe to (SocketCluster's
    /// `socketChannelLimit`); 0 for no limit.
    pub socket_channel_limit: usize,
    /// Inbound messages allowed per socket, when limited.
    pub rate_limit: Option<RateLimit>,
}

/// What a session keeps of its HTTP upgrade request, for the `handshake`
/// middleware; dropped once the handshake is done.
pub(crate) struct UpgradeRequest {
    /// Path and query string of the request.
    pub url: String,
    /// Its `Origin` header.
    pub origin: Option<String>,
    /// How long the connection has to send `#handshake`.
    pub handshake_timeout: Duration,
    /// What the server holds for the connection until its handshake (its
    /// place among the pending handshakes): never read, dropped with this
    /// request.
    pub _held_until_handshake: Box<dyn std::any::Any>,
}

impl std::fmt::Debug for UpgradeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpgradeRequest")
            .field("url", &self.url)
            .field("origin", &self.origin)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// What a session needs from its worker.
pub(crate) struct SessionContext {
    /// The worker's plugin instances; replaced as a whole by a reload. Each
    /// event takes the current value, so a call in flight finishes on the
    /// instances it started on and the next event uses the new ones.
    pub plugins: RefCell<Rc<WorkerPlugins>>,
    /// Broker, socket registry and KV.
    pub services: Arc<HostServices>,
    /// Protocol settings.
    pub settings: SessionSettings,
    /// The worker's counters.
    pub stats: Arc<WorkerStats>,
    /// Flips to `true` when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Verifies the clients' auth tokens.
    pub auth: Arc<AuthEngine>,
}

impl SessionContext {
    /// The plugin instances events go to now.
    pub(crate) fn current_plugins(&self) -> Rc<WorkerPlugins> {
        self.plugins.borrow().clone()
    }
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Upgraded, waiting for `#handshake`.
    Connecting,
    /// Handshake done.
    Open,
}

/// The byte stream under a session: plain TCP or TLS.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin {
    /// Make closing the connection reset it, dropping what the kernel still
    /// holds to send: for a client that stopped reading.
    fn abort_on_close(&self);
}

/// Why a session ends: the close code and reason plugins are told, whether
/// the server still has to send a close frame, and whether the connection
/// is reset rather than closed.
#[derive(Debug)]
struct Ending {
    code: u16,
    reason: String,
    send_close: bool,
    abort: bool,
}

impl Ending {
    /// The server closes with `code`.
    fn close(code: u16, reason: &str) -> Self {
        Ending {
            code,
            reason: reason.to_owned(),
            send_close: true,
            abort: false,
        }
    }

    /// The client closed, or the connection was lost.
    fn closed_by_peer(code: u16, reason: String) -> Self {
        Ending {
            code,
            reason,
            send_close: false,
            abort: false,
        }
    }

    fn lost() -> Self {
        Ending::closed_by_peer(close_code::ABNORMAL, "connection lost".to_owned())
    }

    /// The client does not read: its queue is full.
    fn queue_full() -> Self {
        Ending {
            abort: true,
            ..Ending::close(
                close_code::QUEUE_FULL,
                "Outbound queue full: the client does not read what it is sent",
            )
        }
    }

    /// The client took nothing of what it was sent for the ping timeout:
    /// closed as a ping timeout (4001), without waiting to send it a close
    /// frame it would not read.
    fn write_stalled() -> Self {
        Ending {
            code: close_code::PONG_TIMEOUT,
            reason: "The client did not read what it was sent within the ping timeout".to_owned(),
            send_close: false,
            abort: true,
        }
    }
}

/// A new socket id in the style of SocketCluster's base64id: 20 URL-safe
/// characters.
fn new_socket_id() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 15]>())
}

fn next_session_key() -> SessionKey {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// One connection's state.
struct Session<S> {
    ws: WebSocketStream<S>,
    ctx: Rc<SessionContext>,
    key: SessionKey,
    /// The socket as plugins see it; shared with the plugin call in
    /// flight, which must not borrow the session (see `waiting`).
    socket: Rc<Socket>,
    state: State,
    /// The heartbeat the client answered, once known.
    ping_protocol: Option<PingProtocol>,
    /// Pings sent so far.
    pings_sent: u64,
    /// When the client must have sent something by.
    pong_deadline: Instant,
    /// Channels this socket is subscribed to.
    subscriptions: Subscriptions,
    /// Live publications already written by a catch-up from Redis.
    caught_up: pubsub::CaughtUp,
    /// When the socket's auth token expires (seconds since the epoch).
    token_expiry: Option<u64>,
    /// A sender to this session's own queue, handed to the broker.
    outbox: Outbox,
    /// Frames queued for this socket by the broker and by plugins.
    inbox: Inbox,
    /// Fires when a sender found the queue full.
    overflow: OverflowSignal,
    /// The inbound rate limit, when one is set.
    rate: Option<TokenBucket>,
    /// The upgrade request, until the handshake middleware has seen it.
    upgrade: Option<Box<UpgradeRequest>>,
    /// Procedures invoked on the client, waiting for its answer.
    client_calls: ClientCalls,
    /// Frames that arrived while a plugin call waited.
    deferred: waiting::Deferred,
    /// Why the connection ended while a plugin call waited.
    ended: Option<Box<Ending>>,
}

/// Run a session on an upgraded connection until it closes.
pub(crate) async fn run<S: Transport>(
    ws: WebSocketStream<S>,
    peer: SocketAddr,
    upgrade: UpgradeRequest,
    ctx: Rc<SessionContext>,
) {
    let (outbox, inbox) = outbox(
        ctx.settings.max_queued_messages,
        ctx.settings.max_queued_bytes,
    );
    let overflow = inbox.overflow();
    let rate = ctx
        .settings
        .rate_limit
        .map(|limit| TokenBucket::new(limit, Instant::now()));
    let ping_protocol = match ctx.settings.ping_mode {
        PingMode::Auto => None,
        PingMode::Fixed(protocol) => Some(protocol),
    };
    let mut session = Session {
        ws,
        pong_deadline: Instant::now() + ctx.settings.ping_timeout,
        ctx,
        key: next_session_key(),
        socket: Rc::new(Socket {
            id: new_socket_id(),
            auth_token: None,
            remote_address: peer.to_string(),
        }),
        state: State::Connecting,
        ping_protocol,
        pings_sent: 0,
        subscriptions: Subscriptions::default(),
        caught_up: pubsub::CaughtUp::default(),
        token_expiry: None,
        outbox,
        inbox,
        overflow,
        rate,
        upgrade: Some(Box::new(upgrade)),
        client_calls: ClientCalls::default(),
        deferred: None,
        ended: None,
    };
    let ending = session.serve().await;
    // Boxed: closing (queued frames, the close handshake, the plugins'
    // disconnect hooks) needs more room than serving, and a future keeps
    // room for its largest step for its whole life: unboxed, every idle
    // connection held about 1.8 KB for the moment it closes.
    Box::pin(session.finish(ending)).await;
}
