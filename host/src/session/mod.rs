//! One client connection after the WebSocket upgrade: the SocketCluster
//! state machine (handshake, heartbeat, RPCs, transmits, pub/sub) from the
//! first frame to the close code.
//!
//! A session runs as one task on its worker. It reads frames, answers them
//! (calling plugins directly on the worker's thread), writes what other
//! sessions and plugins queue for it, and sends pings. Inbound packets of
//! one socket are handled in order, as SocketCluster does.

mod outbox;
mod rate;
mod registry;

pub use outbox::{Gone, Inbox, Outbox, OverflowSignal, outbox};
pub use rate::RateLimit;
pub use registry::{SocketRegistry, UnknownSocket};

use rate::TokenBucket;

use crate::auth::{AuthEngine, AuthError, VerifiedToken};
use crate::metrics::{self, HookKind, MessageKind, PublicationSource, RpcTable};
use crate::plugins::{HandshakeInfo, HostServices, Inbound, Socket, WorkerPlugins};
use crate::protocol::{self, ChannelRequest, ErrorObject, Frame, Packet, PingProtocol, close_code};
use base64::Engine as _;
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::value::RawValue;
use std::cell::RefCell;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

/// The most frames handled before their answers are flushed, so that a
/// client streaming without pause still gets its answers regularly.
const MAX_FRAMES_PER_FLUSH: usize = 64;

/// The longest a first subscription waits for the broker to confirm it
/// (see [`crate::broker::Broker::subscribe`]) before it is answered anyway.
const BROKER_CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

/// How long closing a connection may take (queued frames, the close frame,
/// the client's close reply) before it is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Identifies a session inside the process (the broker's subscriber key).
pub type SessionKey = u64;

/// What other tasks ask of a session: frames to write, and changes plugins
/// make to the socket (kept in order with the frames that tell the client).
#[derive(Debug)]
pub enum Outbound {
    /// A frame to write as it is (publications are shared, not copied).
    Frame(Utf8Bytes),
    /// A change to the socket; boxed, being rare, so that the queue's
    /// blocks stay small for idle connections.
    Control(Box<Control>),
}

/// A change a plugin makes to a socket.
#[derive(Debug)]
pub enum Control {
    /// The socket is now authenticated with `claims`; the client gets
    /// `#setAuthToken` with the signed `token`.
    SetAuthToken {
        /// The signed token.
        token: String,
        /// Its claims, as plugins will see them.
        claims: String,
        /// Its `exp`.
        expires_at: Option<u64>,
    },
    /// The socket's token is dropped and the client told to forget it.
    Deauthenticate,
    /// The socket is unsubscribed from `channel` and told so (`#kickOut`).
    KickOut {
        /// The channel.
        channel: String,
        /// What the client's `kickOut` event carries (JSON), if anything.
        message: Option<String>,
    },
    /// The server closes the connection with this code and reason.
    Disconnect {
        /// WebSocket close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
}

impl From<Control> for Outbound {
    fn from(control: Control) -> Self {
        Outbound::Control(Box::new(control))
    }
}

/// Which heartbeat a server uses with its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingMode {
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
pub struct SessionSettings {
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
    /// Most channels one socket may subscribe to (SocketCluster's
    /// `socketChannelLimit`); 0 for no limit.
    pub socket_channel_limit: usize,
    /// Inbound messages allowed per socket, when limited.
    pub rate_limit: Option<RateLimit>,
}

/// What a session keeps of its HTTP upgrade request, for the `handshake`
/// middleware; dropped once the handshake is done.
#[derive(Debug)]
pub struct UpgradeRequest {
    /// Path and query string of the request.
    pub url: String,
    /// Its `Origin` header.
    pub origin: Option<String>,
}

/// Why a token did not authenticate a socket: SocketCluster's `authError`.
struct AuthRefusal {
    error: ErrorObject,
    /// Whether the client is told to drop the token.
    is_bad_token: bool,
}

impl From<AuthError> for AuthRefusal {
    fn from(error: AuthError) -> Self {
        AuthRefusal {
            error: error.to_error_object(),
            is_bad_token: error.is_bad_token,
        }
    }
}

impl AuthRefusal {
    /// An `authenticate` middleware denied the token; like a SocketCluster
    /// middleware error, it is a bad token only when it says so.
    fn denied(error: ErrorObject) -> Self {
        let is_bad_token = error.details.get("isBadToken") == Some(&serde_json::Value::Bool(true));
        AuthRefusal {
            error,
            is_bad_token,
        }
    }
}

/// One worker's counters, shared by its sessions and plugin instances, for
/// health output and metrics ([`crate::metrics`]). Each worker has its own,
/// aligned so that no two workers write to one cache line (or a pair of
/// adjacent lines, which some CPUs fetch together); readers sum them.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct SessionStats {
    /// Transmits dropped because no plugin declares their event.
    pub unknown_transmits: AtomicU64,
    /// WebSocket messages received from clients.
    pub messages_in: AtomicU64,
    /// WebSocket messages written to clients.
    pub messages_out: AtomicU64,
    /// Packets received, by [`MessageKind`] (its index).
    pub messages_in_by_kind: [AtomicU64; MessageKind::ALL.len()],
    /// WebSocket upgrades accepted.
    pub connections_accepted: AtomicU64,
    /// WebSocket upgrades refused by `--max-connections`.
    pub upgrades_refused: AtomicU64,
    /// Sockets closed because their outbound queue was full (4100).
    pub queue_overflows: AtomicU64,
    /// Packets over a socket's rate limit.
    pub rate_limited: AtomicU64,
    /// Actions denied by middleware, by [`HookKind`] (its index).
    pub middleware_denials: [AtomicU64; HookKind::ALL.len()],
    /// Publications, by [`PublicationSource`] (its index).
    pub publications: [AtomicU64; PublicationSource::ALL.len()],
    /// RPC durations and errors by plugin and event.
    pub rpc: RpcTable,
}

/// What a session needs from its worker.
pub struct SessionContext {
    /// The worker's plugin instances; replaced as a whole by a reload. Each
    /// event takes the current value, so a call in flight finishes on the
    /// instances it started on and the next event uses the new ones.
    pub plugins: RefCell<Rc<WorkerPlugins>>,
    /// Broker, socket registry and KV.
    pub services: Arc<HostServices>,
    /// Protocol settings.
    pub settings: SessionSettings,
    /// Shared counters.
    pub stats: Arc<SessionStats>,
    /// Flips to `true` when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Verifies the clients' auth tokens.
    pub auth: Arc<AuthEngine>,
}

impl SessionContext {
    /// The plugin instances events go to now.
    pub fn current_plugins(&self) -> Rc<WorkerPlugins> {
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

/// Why a session ends: the close code and reason plugins are told, and
/// whether the server still has to send a close frame.
#[derive(Debug)]
struct Ending {
    code: u16,
    reason: String,
    send_close: bool,
}

impl Ending {
    /// The server closes with `code`.
    fn close(code: u16, reason: &str) -> Self {
        Ending {
            code,
            reason: reason.to_owned(),
            send_close: true,
        }
    }

    /// The client closed, or the connection was lost.
    fn closed_by_peer(code: u16, reason: String) -> Self {
        Ending {
            code,
            reason,
            send_close: false,
        }
    }

    fn lost() -> Self {
        Ending::closed_by_peer(close_code::ABNORMAL, "connection lost".to_owned())
    }

    /// The client does not read: its queue is full.
    fn queue_full() -> Self {
        Ending::close(
            close_code::QUEUE_FULL,
            "Outbound queue full: the client does not read what it is sent",
        )
    }
}

/// The error for an action an unauthenticated socket may not take while the
/// server requires authentication.
fn auth_required(action: &str) -> ErrorObject {
    ErrorObject::new(
        "AuthRequiredError",
        format!("{action} needs an authenticated socket: this server requires authentication"),
    )
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
    socket: Socket,
    state: State,
    /// The heartbeat the client answered, once known.
    ping_protocol: Option<PingProtocol>,
    /// Pings sent so far.
    pings_sent: u64,
    /// When the client must have sent something by.
    pong_deadline: Instant,
    /// Channels this socket is subscribed to.
    subscriptions: HashSet<String>,
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
}

/// Run a session on an upgraded connection until it closes.
pub async fn run<S>(
    ws: WebSocketStream<S>,
    peer: SocketAddr,
    upgrade: UpgradeRequest,
    ctx: Rc<SessionContext>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (outbox, inbox) = outbox(ctx.settings.max_queued_messages);
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
        socket: Socket {
            id: new_socket_id(),
            auth_token: None,
            remote_address: peer.to_string(),
        },
        state: State::Connecting,
        ping_protocol,
        pings_sent: 0,
        subscriptions: HashSet::new(),
        token_expiry: None,
        outbox,
        inbox,
        overflow,
        rate,
        upgrade: Some(Box::new(upgrade)),
    };
    let ending = session.serve().await;
    session.finish(ending).await;
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// The event loop: frames in, queued frames out, pings, deadlines.
    async fn serve(&mut self) -> Ending {
        let settings = self.ctx.settings.clone();
        let mut shutdown = self.ctx.shutdown.clone();
        let handshake_deadline = Instant::now() + settings.handshake_timeout;
        let mut pings = interval_at(
            Instant::now() + settings.ping_interval,
            settings.ping_interval,
        );
        pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let step = tokio::select! {
                frame = self.ws.next() => self.on_frames(frame).await,
                Some(frame) = self.inbox.recv() => self.write_queued(frame).await,
                () = self.overflow.wait() => Err(Ending::queue_full()),
                _ = pings.tick() => self.ping().await,
                () = sleep_until(self.pong_deadline) => Err(Ending::close(close_code::PONG_TIMEOUT, "")),
                () = sleep_until(handshake_deadline), if self.state == State::Connecting => {
                    Err(Ending::close(close_code::HANDSHAKE_TIMEOUT, ""))
                }
                _ = shutdown.wait_for(|&stop| stop) => Err(Ending::close(close_code::GOING_AWAY, "Server is shutting down")),
            };
            if let Err(ending) = step {
                return ending;
            }
        }
    }

    /// Handle a frame and every frame already received after it, then write
    /// all the answers in one flush: a pipelining client gets one write per
    /// burst rather than one per request.
    async fn on_frames(&mut self, first: Option<Result<Message, WsError>>) -> Result<(), Ending> {
        self.on_frame(first).await?;
        for _ in 0..MAX_FRAMES_PER_FLUSH {
            match self.ws.next().now_or_never() {
                Some(frame) => self.on_frame(frame).await?,
                None => break,
            }
        }
        self.flush().await
    }

    /// Handle what the WebSocket produced; answers are buffered, not flushed.
    async fn on_frame(&mut self, frame: Option<Result<Message, WsError>>) -> Result<(), Ending> {
        let message = match frame {
            None => return Err(Ending::lost()),
            Some(Ok(message)) => message,
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                tracing::info!(
                    socket = self.socket.id,
                    size,
                    max_size,
                    "frame over the maximum payload; closing with 1009"
                );
                return Err(Ending::close(
                    close_code::MESSAGE_TOO_BIG,
                    &format!(
                        "Message of {size} bytes exceeds the maximum payload of {max_size} bytes"
                    ),
                ));
            }
            Some(Err(WsError::Utf8(_))) => {
                return Err(Ending::close(
                    close_code::INVALID_PAYLOAD,
                    "Invalid UTF-8 in a text frame",
                ));
            }
            // The TCP connection ended without a close frame: lost, not a
            // protocol error (and there is nobody to send a close frame to).
            Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
                return Err(Ending::lost());
            }
            Some(Err(WsError::Protocol(error))) => {
                tracing::debug!(socket = self.socket.id, "WebSocket protocol error: {error}");
                return Err(Ending::close(close_code::PROTOCOL_ERROR, ""));
            }
            Some(Err(error)) => {
                tracing::debug!(socket = self.socket.id, "connection error: {error}");
                return Err(Ending::lost());
            }
        };
        // Like SocketCluster, only messages count as signs of life; WebSocket
        // control frames do not.
        if matches!(message, Message::Text(_) | Message::Binary(_)) {
            self.pong_deadline = Instant::now() + self.ctx.settings.ping_timeout;
            metrics::bump(&self.ctx.stats.messages_in);
        }
        match message {
            Message::Text(text) => self.on_text(&text).await?,
            Message::Binary(bytes) => match std::str::from_utf8(&bytes) {
                Ok(text) => self.on_text(text).await?,
                Err(_) if self.state == State::Connecting => {
                    return Err(Ending::close(close_code::MESSAGE_BEFORE_HANDSHAKE, ""));
                }
                Err(_) => tracing::debug!(
                    socket = self.socket.id,
                    "ignored a binary frame that is not UTF-8"
                ),
            },
            Message::Close(frame) => {
                let (code, reason) = frame.map_or((close_code::NO_STATUS, String::new()), |f| {
                    (f.code.into(), f.reason.to_string())
                });
                // Send tungstenite's close reply before the task ends.
                let _ = self.ws.flush().await;
                return Err(Ending::closed_by_peer(code, reason));
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
        Ok(())
    }

    /// Handle one text frame: a pong, a packet or a batch of packets.
    async fn on_text(&mut self, text: &str) -> Result<(), Ending> {
        let frame = protocol::parse_frame(text);
        if !matches!(frame, Frame::Packets(_)) {
            self.count_in(MessageKind::Other);
        }
        match frame {
            Frame::Pong(_) if self.state == State::Connecting => {
                Err(Ending::close(close_code::MESSAGE_BEFORE_HANDSHAKE, ""))
            }
            Frame::Pong(protocol) => {
                self.ping_protocol.get_or_insert(protocol);
                self.check_token_expiry().await
            }
            Frame::Unparsable if self.state == State::Connecting => {
                Err(Ending::close(close_code::MESSAGE_BEFORE_HANDSHAKE, ""))
            }
            Frame::Unparsable => {
                tracing::debug!(
                    socket = self.socket.id,
                    "ignored a frame that is not a SocketCluster packet"
                );
                Ok(())
            }
            Frame::Packets(packets) => {
                for packet in packets {
                    self.on_packet(packet).await?;
                }
                Ok(())
            }
        }
    }

    /// Handle one packet, in the order SocketCluster's `_processInboundPacket` does.
    async fn on_packet(&mut self, packet: Packet<'_>) -> Result<(), Ending> {
        let Packet::Event { event, data, cid } = packet else {
            self.count_in(MessageKind::Other);
            // Responses to server invokes and other values: nothing to do.
            return if self.state == State::Connecting {
                Err(Ending::close(close_code::MESSAGE_BEFORE_HANDSHAKE, ""))
            } else {
                Ok(())
            };
        };
        self.count_in(MessageKind::of_event(&event, cid.is_some()));
        match &*event {
            "#handshake" => self.on_handshake(data, cid).await,
            _ if self.state == State::Connecting => {
                Err(Ending::close(close_code::MESSAGE_BEFORE_HANDSHAKE, ""))
            }
            _ if !self.within_rate() => self.refuse_over_rate(&event, cid).await,
            "#authenticate" => self.on_authenticate(data, cid).await,
            "#removeAuthToken" => {
                self.clear_auth();
                Ok(())
            }
            _ => {
                // As SocketCluster: an expired token is dropped first, and
                // the packet is still handled (unauthenticated).
                self.check_token_expiry().await?;
                self.on_event(&event, data, cid).await
            }
        }
    }

    /// Count an inbound packet of this kind.
    fn count_in(&self, kind: MessageKind) {
        metrics::bump(&self.ctx.stats.messages_in_by_kind[kind as usize]);
    }

    /// Take a token for an inbound packet; `false` when the socket is over
    /// its rate limit.
    fn within_rate(&mut self) -> bool {
        self.rate
            .as_mut()
            .is_none_or(|bucket| bucket.take(Instant::now()))
    }

    /// Refuse a packet over the rate limit: an RPC gets `RateLimitError`,
    /// anything else is dropped.
    async fn refuse_over_rate(
        &mut self,
        event: &str,
        cid: Option<&RawValue>,
    ) -> Result<(), Ending> {
        metrics::bump(&self.ctx.stats.rate_limited);
        let limit = self.rate.as_ref().map(TokenBucket::limit);
        let Some((cid, limit)) = cid.zip(limit) else {
            tracing::debug!(
                socket = self.socket.id,
                event,
                "dropped a packet over the rate limit"
            );
            return Ok(());
        };
        let error = ErrorObject::new(
            "RateLimitError",
            format!(
                "Socket {} exceeded its rate limit of {} messages per second (burst {})",
                self.socket.id, limit.per_second, limit.burst
            ),
        )
        .with("retryAfterMs", rate::retry_after(limit).as_millis() as u64);
        self.send(protocol::error_response(cid, &error)).await
    }

    /// Handle a packet that is not one of the auth events.
    async fn on_event(
        &mut self,
        event: &str,
        data: Option<&RawValue>,
        cid: Option<&RawValue>,
    ) -> Result<(), Ending> {
        match event {
            "#subscribe" => self.on_subscribe(data, cid).await,
            "#unsubscribe" => self.on_unsubscribe(data, cid).await,
            "#publish" => self.on_publish(data, cid).await,
            _ => match cid {
                Some(cid) => self.on_invoke(event, data, cid).await,
                None => {
                    self.on_transmit(event, data).await;
                    Ok(())
                }
            },
        }
    }

    async fn on_handshake(
        &mut self,
        data: Option<&RawValue>,
        cid: Option<&RawValue>,
    ) -> Result<(), Ending> {
        let Some(cid) = cid else {
            tracing::debug!("handshake without a numeric cid; closing with 4008");
            return Err(Ending::close(close_code::HANDSHAKE_REJECTED, ""));
        };
        // A missing or null token is no error; a refused one is reported in
        // the reply and the connection still opens.
        let verified = protocol::handshake_token(data).map(|token| self.ctx.auth.verify(&token));
        if let Some(upgrade) = self.upgrade.take() {
            let info = HandshakeInfo {
                remote_address: self.socket.remote_address.clone(),
                url: upgrade.url,
                origin: upgrade.origin,
                auth_token: match &verified {
                    Some(Ok(token)) => Some(token.claims.clone()),
                    _ => None,
                },
            };
            let plugins = self.ctx.current_plugins();
            if let Err(error) = Box::pin(plugins.check_handshake(&info)).await {
                return self.refuse_handshake(cid, error).await;
            }
        }
        let refusal = match verified {
            Some(Ok(token)) => self.accept_token(token).await.err(),
            Some(Err(error)) => {
                self.clear_auth();
                Some(AuthRefusal::from(error))
            }
            None => None,
        };
        let reply = protocol::handshake_reply(
            cid,
            &self.socket.id,
            self.ctx.settings.ping_timeout.as_millis() as u64,
            refusal.as_ref().map(|refusal| &refusal.error),
            self.socket.auth_token.is_some(),
        );
        self.send(reply).await?;
        if refusal.is_some_and(|refusal| refusal.is_bad_token) {
            self.remove_client_token().await?;
        }
        if self.state == State::Connecting {
            self.state = State::Open;
            self.ctx
                .services
                .sockets
                .register(&self.socket.id, self.outbox.clone());
            let plugins = self.ctx.current_plugins();
            Box::pin(plugins.connected(&self.socket)).await;
        }
        Ok(())
    }

    /// A `handshake` middleware denied the connection: answer the handshake
    /// with its error and close with its `statusCode` (4008 unless the
    /// plugin chose a code of 4000-4999), as SocketCluster does.
    async fn refuse_handshake(
        &mut self,
        cid: &RawValue,
        mut error: ErrorObject,
    ) -> Result<(), Ending> {
        let code = error
            .details
            .get("statusCode")
            .and_then(serde_json::Value::as_u64)
            .and_then(|code| u16::try_from(code).ok())
            .filter(|code| (4000..=4999).contains(code))
            .unwrap_or(close_code::HANDSHAKE_REJECTED);
        error = error.with("statusCode", code);
        tracing::info!(
            socket = self.socket.id,
            code,
            "handshake denied by middleware: {}: {}",
            error.name,
            error.message
        );
        self.send(protocol::error_response(cid, &error)).await?;
        Err(Ending::close(code, ""))
    }

    /// `#authenticate`: verify the token and answer as SocketCluster does: a
    /// bad token is an error (and `#removeAuthToken`), a token that is not
    /// valid yet (or denied by middleware) an unauthenticated status.
    async fn on_authenticate(
        &mut self,
        data: Option<&RawValue>,
        cid: Option<&RawValue>,
    ) -> Result<(), Ending> {
        let Some(cid) = cid else {
            return Err(Ending::close(close_code::HANDSHAKE_REJECTED, ""));
        };
        let token = data
            .and_then(|data| serde_json::from_str::<String>(data.get()).ok())
            .unwrap_or_default();
        let outcome = match self.ctx.auth.verify(&token) {
            Ok(verified) => self.accept_token(verified).await,
            Err(error) => {
                self.clear_auth();
                Err(AuthRefusal::from(error))
            }
        };
        match outcome {
            Ok(()) => {
                self.send(protocol::ok_response(
                    cid,
                    Some(&protocol::auth_status(true, None)),
                ))
                .await
            }
            Err(refusal) if refusal.is_bad_token => {
                self.send(protocol::error_response(cid, &refusal.error))
                    .await?;
                self.remove_client_token().await
            }
            Err(refusal) => {
                let status = protocol::auth_status(false, Some(&refusal.error));
                self.send(protocol::ok_response(cid, Some(&status))).await
            }
        }
    }

    /// Run the `authenticate` middleware on a verified token and, when it
    /// allows it, authenticate the socket with its claims; otherwise the
    /// socket is unauthenticated.
    async fn accept_token(&mut self, verified: VerifiedToken) -> Result<(), AuthRefusal> {
        let plugins = self.ctx.current_plugins();
        if let Err(error) =
            Box::pin(plugins.check_authenticate(&self.socket, &verified.claims)).await
        {
            self.clear_auth();
            return Err(AuthRefusal::denied(error));
        }
        self.socket.auth_token = Some(verified.claims);
        self.token_expiry = verified.expires_at;
        Ok(())
    }

    /// Whether `require_auth` holds this socket back: the server requires
    /// authentication and the socket has no token.
    fn must_authenticate(&self) -> bool {
        self.ctx.settings.require_auth && self.socket.auth_token.is_none()
    }

    fn clear_auth(&mut self) {
        self.socket.auth_token = None;
        self.token_expiry = None;
    }

    /// Tell the client to drop its token.
    async fn remove_client_token(&mut self) -> Result<(), Ending> {
        self.send(protocol::event("#removeAuthToken", None)).await
    }

    /// Drop an expired token, and tell the client.
    async fn check_token_expiry(&mut self) -> Result<(), Ending> {
        if self.socket.auth_token.is_some() && AuthEngine::has_expired(self.token_expiry) {
            self.clear_auth();
            self.remove_client_token().await?;
        }
        Ok(())
    }

    async fn on_subscribe(
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
        if self.must_authenticate() {
            let error = auth_required(&format!("Subscribing to '{}'", request.channel));
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
        let plugins = self.ctx.current_plugins();
        let checked = plugins.check_subscribe(
            &self.socket,
            &request.channel,
            request.data.map(RawValue::get),
        );
        if let Err(error) = Box::pin(checked).await {
            return self.send(protocol::error_response(cid, &error)).await;
        }
        if self.subscriptions.insert(request.channel.to_string()) {
            let confirmation =
                self.ctx
                    .services
                    .broker
                    .subscribe(&request.channel, self.key, &self.outbox);
            if let Some(confirmation) = confirmation {
                // The first subscriber of a channel on this host is answered
                // once the broker listens to it on other hosts too, so that a
                // publication made elsewhere after the answer reaches it.
                // Bounded: while Redis is away, local delivery still works.
                let _ = tokio::time::timeout(BROKER_CONFIRM_TIMEOUT, confirmation).await;
            }
        }
        self.send(protocol::ok_response(cid, None)).await
    }

    async fn on_unsubscribe(
        &mut self,
        data: Option<&RawValue>,
        cid: Option<&RawValue>,
    ) -> Result<(), Ending> {
        let error = match protocol::unsubscribe_channel(data) {
            None => Some(ErrorObject::invalid_action(
                "Unsubscribe channel name was malformatted",
            )),
            Some(channel) if !self.subscriptions.remove(&*channel) => Some(ErrorObject::new(
                "BrokerError",
                format!(
                    "Failed to unsubscribe socket from the {channel} channel - InvalidActionError: \
                     Socket {} tried to unsubscribe from a channel which it is not subscribed to",
                    self.socket.id
                ),
            )),
            Some(channel) => {
                self.ctx.services.broker.unsubscribe(&channel, self.key);
                None
            }
        };
        self.answer(cid, error).await
    }

    async fn on_publish(
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
        if self.must_authenticate() {
            return Err(auth_required(&format!(
                "Publishing to '{}'",
                request.channel
            )));
        }
        let data = request.data.map(RawValue::get);
        let plugins = self.ctx.current_plugins();
        let rewritten =
            Box::pin(plugins.filter(Inbound::Publish, &self.socket, &request.channel, data))
                .await?;
        self.ctx
            .services
            .broker
            .publish(&request.channel, rewritten.as_deref().or(data));
        metrics::bump(&self.ctx.stats.publications[PublicationSource::Client as usize]);
        Ok(())
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

    async fn on_invoke(
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

    /// Check an RPC against `require_auth` and the `invoke` middleware, then
    /// have its plugin answer it.
    async fn invoke(&self, event: &str, data: Option<&str>) -> Result<Option<String>, ErrorObject> {
        let plugins = self.ctx.current_plugins();
        if self.must_authenticate() && !plugins.is_public_rpc(event) {
            return Err(auth_required(&format!("RPC '{event}'")));
        }
        // Plugin calls are boxed so that their large futures are not part of
        // every idle session's state.
        let rewritten =
            Box::pin(plugins.filter(Inbound::Invoke, &self.socket, event, data)).await?;
        Box::pin(plugins.invoke(&self.socket, event, rewritten.as_deref().or(data))).await
    }

    async fn on_transmit(&mut self, event: &str, data: Option<&RawValue>) {
        let data = data.map(RawValue::get);
        let plugins = self.ctx.current_plugins();
        let refused = if self.must_authenticate() {
            Err(auth_required(&format!("Transmit '{event}'")))
        } else {
            Box::pin(plugins.filter(Inbound::Transmit, &self.socket, event, data)).await
        };
        let rewritten = match refused {
            Ok(rewritten) => rewritten,
            Err(error) => {
                tracing::debug!(
                    socket = self.socket.id,
                    event,
                    "dropped a transmit: {}: {}",
                    error.name,
                    error.message
                );
                return;
            }
        };
        let data = rewritten.as_deref().or(data);
        if !Box::pin(plugins.transmit(&self.socket, event, data)).await {
            metrics::bump(&self.ctx.stats.unknown_transmits);
            tracing::debug!(
                socket = self.socket.id,
                event,
                "dropped a transmit that no plugin declares"
            );
        }
    }

    /// Send the heartbeat (see [`PingMode::Auto`] before the client answered).
    async fn ping(&mut self) -> Result<(), Ending> {
        self.pings_sent += 1;
        match self.ping_protocol {
            Some(protocol) => self.send_now(protocol.ping()).await,
            None if self.pings_sent == 1 => self.send_now(PingProtocol::V2.ping()).await,
            None => {
                self.send_now(PingProtocol::V2.ping()).await?;
                self.send_now(PingProtocol::V1.ping()).await
            }
        }
    }

    async fn send_now(&mut self, text: &'static str) -> Result<(), Ending> {
        self.send(text.to_owned()).await?;
        self.flush().await
    }

    /// Write a frame this session produced, after everything already queued
    /// for it, so that a publication fanned out before an RPC answer reaches
    /// the client first.
    async fn send(&mut self, frame: String) -> Result<(), Ending> {
        while let Some(queued) = self.inbox.try_recv() {
            self.apply(queued).await?;
        }
        self.feed(Utf8Bytes::from(frame)).await
    }

    /// Apply what the broker or plugins queued, in one flush.
    async fn write_queued(&mut self, first: Outbound) -> Result<(), Ending> {
        self.apply(first).await?;
        while let Some(queued) = self.inbox.try_recv() {
            self.apply(queued).await?;
        }
        self.flush().await
    }

    /// Write a queued frame, or apply an auth change a plugin asked for and
    /// write the frame that tells the client.
    async fn apply(&mut self, queued: Outbound) -> Result<(), Ending> {
        let control = match queued {
            Outbound::Frame(frame) => return self.feed(frame).await,
            Outbound::Control(control) => *control,
        };
        match control {
            Control::SetAuthToken {
                token,
                claims,
                expires_at,
            } => {
                self.socket.auth_token = Some(claims);
                self.token_expiry = expires_at;
                let data = serde_json::json!({ "token": token }).to_string();
                self.feed(Utf8Bytes::from(protocol::event(
                    "#setAuthToken",
                    Some(&data),
                )))
                .await
            }
            Control::Deauthenticate => {
                self.clear_auth();
                self.feed(Utf8Bytes::from(protocol::event("#removeAuthToken", None)))
                    .await
            }
            Control::KickOut { channel, message } => {
                if self.subscriptions.remove(&channel) {
                    self.ctx.services.broker.unsubscribe(&channel, self.key);
                }
                let data = protocol::kick_out(&channel, message.as_deref());
                self.feed(Utf8Bytes::from(protocol::event("#kickOut", Some(&data))))
                    .await
            }
            Control::Disconnect { code, reason } => Err(Ending::close(code, &reason)),
        }
    }

    /// Write a frame; a client that does not read blocks this until its
    /// queue overflows, which ends the session.
    async fn feed(&mut self, frame: Utf8Bytes) -> Result<(), Ending> {
        metrics::bump(&self.ctx.stats.messages_out);
        tokio::select! {
            written = self.ws.feed(Message::Text(frame)) => written.map_err(|_| Ending::lost()),
            () = self.overflow.wait() => Err(Ending::queue_full()),
        }
    }

    async fn flush(&mut self) -> Result<(), Ending> {
        tokio::select! {
            flushed = self.ws.flush() => flushed.map_err(|_| Ending::lost()),
            () = self.overflow.wait() => Err(Ending::queue_full()),
        }
    }

    /// Close the connection if the server ends it, release the socket's
    /// subscriptions, and tell plugins.
    async fn finish(mut self, ending: Ending) {
        if ending.code == close_code::QUEUE_FULL {
            metrics::bump(&self.ctx.stats.queue_overflows);
            tracing::warn!(
                socket = self.socket.id,
                code = ending.code,
                limit = self.ctx.settings.max_queued_messages,
                "outbound queue full: the client does not read what it is sent; disconnecting"
            );
        }
        if ending.send_close {
            let closing = async {
                // Deliver what is already queued (a shutdown must not lose
                // it), unless the queue is what overflowed.
                if !self.overflow.happened() {
                    while let Some(queued) = self.inbox.try_recv() {
                        if self.apply(queued).await.is_err() {
                            break;
                        }
                    }
                }
                let frame = CloseFrame {
                    code: ending.code.into(),
                    reason: Utf8Bytes::from(ending.reason.clone()),
                };
                if self.ws.close(Some(frame)).await.is_ok() {
                    // Let the client's close reply arrive so the TCP close is clean.
                    while let Some(Ok(_)) = self.ws.next().await {}
                }
            };
            // A client that does not read may never take the close frame.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
        }
        for channel in self.subscriptions.drain() {
            self.ctx.services.broker.unsubscribe(&channel, self.key);
        }
        if self.state == State::Open {
            self.ctx.services.sockets.remove(&self.socket.id);
            tracing::debug!(socket = self.socket.id, code = ending.code, "socket closed");
            let plugins = self.ctx.current_plugins();
            Box::pin(plugins.disconnected(&self.socket, ending.code, &ending.reason)).await;
        }
    }
}
