//! The session's loop: frames in, dispatched once by what they ask for;
//! queued frames out; pings and deadlines; and the close.

use super::rate::{self, TokenBucket};
use super::{Ending, Session, State, Transport};
use crate::mailbox::{ClientAnswer, Outbound, OverflowSignal};
use crate::metrics::{self, MessageKind};
use crate::protocol::{self, ErrorObject, Frame, MAX_BATCH, PingProtocol, Request, close_code};
use futures_util::{FutureExt, SinkExt, StreamExt};
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep, sleep_until};
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

/// The most frames handled before their answers are flushed, so that a
/// client streaming without pause still gets its answers regularly.
const MAX_FRAMES_PER_FLUSH: usize = 64;

/// Packets of a batch handled before the session yields its worker to
/// other tasks, so that one large frame does not hold the worker.
const PACKETS_PER_SLICE: usize = 32;

/// How long closing a connection may take (queued frames, the close frame,
/// the client's close reply) before it is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

impl<S: Transport> Session<S> {
    /// The event loop: frames in, queued frames out, pings, deadlines.
    pub(super) async fn serve(&mut self) -> Ending {
        let settings = self.ctx.settings.clone();
        let mut shutdown = self.ctx.shutdown.clone();
        let handshake_timeout = self
            .upgrade
            .as_ref()
            .map_or(settings.handshake_timeout, |upgrade| {
                upgrade.handshake_timeout
            });
        let handshake_deadline = Instant::now() + handshake_timeout;
        let mut pings = interval_at(
            Instant::now() + settings.ping_interval,
            settings.ping_interval,
        );
        pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // One timer for the pong and handshake deadlines, armed at the
        // earlier of them and re-armed only when it fires early: the pong
        // deadline moves with every message, and a timer made or moved per
        // message is a timer-wheel update per request.
        let watchdog = sleep_until(self.next_deadline(handshake_deadline));
        tokio::pin!(watchdog);
        loop {
            // Frames that arrived while a plugin call waited come first.
            if let Some(message) = self.next_deferred() {
                if let Err(ending) = Box::pin(self.on_frames(Some(Ok(message)))).await {
                    return ending;
                }
                continue;
            }
            let step = tokio::select! {
                // Boxed: the handling of a frame (plugin calls, answers) is
                // the largest part of the session's state, and an idle
                // connection should not hold room for it.
                frame = self.ws.next() => Box::pin(self.on_frames(frame)).await,
                frame = self.inbox.recv() => self.write_queued(frame).await,
                () = self.overflow.wait() => Err(Ending::queue_full()),
                _ = pings.tick() => self.ping().await,
                () = &mut watchdog => self.deadline_passed(handshake_deadline, watchdog.as_mut()),
                _ = shutdown.wait_for(|&stop| stop) => Err(Ending::close(close_code::GOING_AWAY, "Server is shutting down")),
            };
            // An ending met while a plugin call waited counts once the
            // call is done.
            if let Err(ending) = step.and_then(|()| self.take_ending()) {
                return ending;
            }
        }
    }

    /// The watchdog fired: close if the pong deadline (or, before the
    /// handshake, the handshake deadline) has passed, else re-arm it for
    /// the deadline that is next now.
    fn deadline_passed(
        &self,
        handshake_deadline: Instant,
        watchdog: std::pin::Pin<&mut tokio::time::Sleep>,
    ) -> Result<(), Ending> {
        let now = Instant::now();
        if self.state == State::Connecting && now >= handshake_deadline {
            return Err(Ending::close(close_code::HANDSHAKE_TIMEOUT, ""));
        }
        if now >= self.pong_deadline {
            return Err(Ending::close(close_code::PONG_TIMEOUT, ""));
        }
        watchdog.reset(self.next_deadline(handshake_deadline));
        Ok(())
    }

    /// The deadline the watchdog waits for: the pong deadline, or the
    /// handshake deadline when that comes first and the handshake is not
    /// done.
    fn next_deadline(&self, handshake_deadline: Instant) -> Instant {
        if self.state == State::Connecting {
            self.pong_deadline.min(handshake_deadline)
        } else {
            self.pong_deadline
        }
    }

    /// Handle a frame and every frame already received after it, then write
    /// all the answers in one flush: a pipelining client gets one write per
    /// burst rather than one per request.
    async fn on_frames(&mut self, first: Option<Result<Message, WsError>>) -> Result<(), Ending> {
        self.on_frame(first).await?;
        self.take_ending()?;
        for _ in 0..MAX_FRAMES_PER_FLUSH {
            // Frames kept while a call waited come before newer ones.
            let next = match self.next_deferred() {
                Some(message) => Some(Ok(message)),
                None => match self.ws.next().now_or_never() {
                    Some(frame) => frame,
                    None => break,
                },
            };
            self.on_frame(next).await?;
            self.take_ending()?;
        }
        self.flush().await
    }

    /// Handle what the WebSocket produced; answers are buffered, not flushed.
    pub(super) async fn on_frame(
        &mut self,
        frame: Option<Result<Message, WsError>>,
    ) -> Result<(), Ending> {
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
        match protocol::parse_frame(text) {
            Frame::Pong(_) | Frame::Unparsable if self.state == State::Connecting => {
                self.count_in(MessageKind::Other);
                Err(Ending::close(close_code::MESSAGE_BEFORE_HANDSHAKE, ""))
            }
            Frame::Pong(protocol) => {
                self.count_in(MessageKind::Other);
                self.ping_protocol.get_or_insert(protocol);
                self.check_token_expiry().await
            }
            Frame::Unparsable => {
                self.count_in(MessageKind::Other);
                tracing::debug!(
                    socket = self.socket.id,
                    "ignored a frame that is not a SocketCluster packet"
                );
                Ok(())
            }
            Frame::TooManyPackets => {
                self.count_in(MessageKind::Other);
                tracing::info!(
                    socket = self.socket.id,
                    limit = MAX_BATCH,
                    "a batch of too many packets; closing with 1009"
                );
                Err(Ending::close(
                    close_code::MESSAGE_TOO_BIG,
                    &format!("A batch may hold at most {MAX_BATCH} packets"),
                ))
            }
            Frame::Packets(packets) => {
                // The whole frame arrived now: its packets are metered by
                // the rate limit as of now, however long handling them takes.
                let arrived = self.rate.is_some().then(Instant::now);
                for (index, request) in packets.enumerate() {
                    if index > 0 && index % PACKETS_PER_SLICE == 0 {
                        // A long batch shares the worker with other sockets.
                        tokio::task::yield_now().await;
                    }
                    self.on_request(request, arrived).await?;
                }
                Ok(())
            }
        }
    }

    /// Handle one packet, in the order SocketCluster's
    /// `_processInboundPacket` does. This is the one place requests are
    /// dispatched.
    async fn on_request(
        &mut self,
        request: Request<'_>,
        arrived: Option<Instant>,
    ) -> Result<(), Ending> {
        self.count_in(MessageKind::of(&request));
        match request {
            Request::Handshake { data, cid } if self.state == State::Connecting => {
                self.on_handshake(data, cid).await
            }
            _ if self.state == State::Connecting => {
                Err(Ending::close(close_code::MESSAGE_BEFORE_HANDSHAKE, ""))
            }
            // Answers to procedures invoked on the client, unmetered: the
            // server asked for them.
            Request::Response {
                rid: Some(rid),
                data,
                error,
            } => {
                self.client_calls.answer(rid, ClientAnswer::of(data, error));
                Ok(())
            }
            // Answers to nothing and other values: nothing to do.
            Request::Response { rid: None, .. } | Request::Other => Ok(()),
            // Every other packet is metered, handshakes again included.
            _ if !self.within_rate(arrived) => self.refuse_over_rate(&request).await,
            Request::Handshake { data, cid } => self.on_handshake(data, cid).await,
            Request::Authenticate { data, cid } => self.on_authenticate(data, cid).await,
            Request::RemoveAuthToken => {
                self.clear_auth();
                self.recheck_subscriptions().await
            }
            // As SocketCluster: before any other event an expired token is
            // dropped, and the packet is still handled (unauthenticated).
            Request::Subscribe { data, cid } => {
                self.check_token_expiry().await?;
                self.on_subscribe(data, cid).await
            }
            Request::Unsubscribe { data, cid } => {
                self.check_token_expiry().await?;
                self.on_unsubscribe(data, cid).await
            }
            Request::Publish { data, cid } => {
                self.check_token_expiry().await?;
                self.on_publish(data, cid).await
            }
            Request::Invoke { event, data, cid } => {
                self.check_token_expiry().await?;
                self.on_invoke(&event, data, cid).await
            }
            Request::Transmit { event, data } => {
                self.check_token_expiry().await?;
                self.on_transmit(&event, data).await;
                Ok(())
            }
        }
    }

    /// Count an inbound packet of this kind.
    fn count_in(&self, kind: MessageKind) {
        metrics::bump(&self.ctx.stats.messages_in_by_kind[kind as usize]);
    }

    /// Take a token for an inbound packet that `arrived` (read only when
    /// the socket has a rate limit); `false` when it is over the limit.
    fn within_rate(&mut self, arrived: Option<Instant>) -> bool {
        self.rate
            .as_mut()
            .is_none_or(|bucket| bucket.take(arrived.unwrap_or_else(Instant::now)))
    }

    /// Refuse a packet over the rate limit: an RPC gets `RateLimitError`,
    /// anything else is dropped.
    async fn refuse_over_rate(&mut self, request: &Request<'_>) -> Result<(), Ending> {
        metrics::bump(&self.ctx.stats.rate_limited);
        let limit = self.rate.as_ref().map(TokenBucket::limit);
        let Some((cid, limit)) = request.cid().zip(limit) else {
            tracing::debug!(
                socket = self.socket.id,
                event = request.event(),
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

    /// Send the heartbeat (see [`PingMode::Auto`] before the client answered).
    pub(super) async fn ping(&mut self) -> Result<(), Ending> {
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
    pub(super) async fn send(&mut self, frame: String) -> Result<(), Ending> {
        while let Some(queued) = self.inbox.try_recv() {
            self.apply(queued).await?;
        }
        self.feed(Utf8Bytes::from(frame)).await
    }

    /// Apply what the broker or plugins queued, in one flush.
    pub(super) async fn write_queued(&mut self, first: Outbound) -> Result<(), Ending> {
        self.apply(first).await?;
        while let Some(queued) = self.inbox.try_recv() {
            self.apply(queued).await?;
        }
        self.flush().await
    }

    /// Write a frame; a client that does not read blocks this until its
    /// queue overflows, which ends the session.
    pub(super) async fn feed(&mut self, frame: Utf8Bytes) -> Result<(), Ending> {
        metrics::bump(&self.ctx.stats.messages_out);
        let written = self.ws.feed(Message::Text(frame));
        unless_stalled(written, &self.overflow, self.ctx.settings.ping_timeout).await
    }

    async fn flush(&mut self) -> Result<(), Ending> {
        let flushed = self.ws.flush();
        unless_stalled(flushed, &self.overflow, self.ctx.settings.ping_timeout).await
    }

    /// Close the connection if the server ends it, release the socket's
    /// subscriptions, and tell plugins.
    pub(super) async fn finish(mut self, ending: Ending) {
        // Plugin calls waiting for this client's answers learn it is gone.
        self.client_calls.disconnected();
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
        if ending.abort {
            // Unsent data would keep the connection (and its buffers) in the
            // kernel after it is closed: reset it instead.
            self.ws.get_ref().abort_on_close();
        }
        for channel in self.subscriptions.take() {
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

/// Finish a write, unless the queue overflows or the write makes no
/// progress for `stall` (a client that stopped reading). A write done at
/// once, as nearly every write is, costs no timer.
async fn unless_stalled(
    write: impl Future<Output = Result<(), WsError>>,
    overflow: &OverflowSignal,
    stall: Duration,
) -> Result<(), Ending> {
    let mut write = std::pin::pin!(write);
    if let Some(done) = (&mut write).now_or_never() {
        return done.map_err(|_| Ending::lost());
    }
    // The client is not taking data as fast as it comes. Boxed, so that the
    // timer's room is not part of every idle session's state.
    Box::pin(async move {
        tokio::select! {
            written = write => written.map_err(|_| Ending::lost()),
            () = overflow.wait() => Err(Ending::queue_full()),
            () = sleep(stall) => Err(Ending::write_stalled()),
        }
    })
    .await
}
