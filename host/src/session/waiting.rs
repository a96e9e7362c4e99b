//! Serving the connection while one of its plugin calls waits on the host.
//!
//! A session handles its client's packets in order, one at a time. A plugin
//! call may wait: for an HTTP response, for Redis, or for this very client
//! to answer a procedure the plugin invoked on it (`invoke-client`). While
//! it waits the connection must stay alive: what is queued for the socket
//! is written, pings are sent, the client's answers to the server's calls
//! are taken, and its other packets are kept, in order, for after the call.
//! A call that completes at once, as nearly every call does, costs none of
//! this.

use super::{Ending, Session, Transport};
use crate::mailbox::ClientAnswer;
use crate::protocol::{self, Frame, Request, close_code};
use futures_util::{FutureExt, StreamExt};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use tokio::time::{Instant, Interval, interval_at, sleep_until};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Frames of other packets kept while a call waits; past it (or past
/// [`MAX_DEFERRED_BYTES`]) the session stops reading, and TCP pushes back on
/// the client.
const MAX_DEFERRED_FRAMES: usize = 64;
/// Bytes of frames kept while a call waits, beyond which no more are read:
/// a client cannot make its connection hold more than this plus one frame
/// (which `--max-payload-bytes` bounds) by sending while its call waits.
const MAX_DEFERRED_BYTES: usize = 1 << 20;

/// Frames that arrived while a call waited, to be handled after it.
pub(super) type Deferred = Option<Box<DeferredFrames>>;

/// Frames kept for after a call, and their size.
#[derive(Debug, Default)]
pub(super) struct DeferredFrames {
    frames: VecDeque<Message>,
    bytes: usize,
}

impl<S: Transport> Session<S> {
    /// Run `call` (a plugin call that owns what it needs) while the
    /// connection keeps being served. If the connection ends meanwhile,
    /// calls waiting for this client are told it is gone, the call still
    /// runs to its end (so that its instance is not thrown away), and the
    /// ending is kept for the session's loop ([`Session::take_ending`]).
    pub(super) async fn serving<T>(&mut self, call: impl Future<Output = T>) -> T {
        let mut call = std::pin::pin!(call);
        if let Some(done) = call.as_mut().now_or_never() {
            return done;
        }
        // Boxed: the timers and the select below would otherwise make the
        // future of every frame's handling larger, for calls that rarely
        // wait.
        Box::pin(self.serve_until(call)).await
    }

    /// Serve the connection until `call` is done.
    async fn serve_until<T>(&mut self, mut call: Pin<&mut impl Future<Output = T>>) -> T {
        let interval = self.ctx.settings.ping_interval;
        let mut pings = interval_at(Instant::now() + interval, interval);
        loop {
            let ended = self.ended.is_some();
            tokio::select! {
                biased;
                done = &mut call => return done,
                step = Box::pin(self.serve_one(&mut pings)), if !ended => {
                    if let Err(ending) = step {
                        self.client_calls.disconnected();
                        self.ended = Some(Box::new(ending));
                    }
                }
            }
        }
    }

    /// The ending recorded while a call waited, if the connection ended.
    pub(super) fn take_ending(&mut self) -> Result<(), Ending> {
        match self.ended.take() {
            Some(ending) => Err(*ending),
            None => Ok(()),
        }
    }

    /// A frame that arrived while a call waited, oldest first.
    pub(super) fn next_deferred(&mut self) -> Option<Message> {
        let deferred = self.deferred.as_mut()?;
        let next = deferred.frames.pop_front();
        if deferred.frames.is_empty() {
            self.deferred = None;
        }
        next
    }

    /// Serve the connection for one event while a call waits.
    async fn serve_one(&mut self, pings: &mut Interval) -> Result<(), Ending> {
        let reading = self.deferred.as_ref().is_none_or(|deferred| {
            deferred.frames.len() < MAX_DEFERRED_FRAMES && deferred.bytes < MAX_DEFERRED_BYTES
        });
        tokio::select! {
            queued = self.inbox.recv() => self.write_queued(queued).await,
            frame = self.ws.next(), if reading => self.on_frame_while_waiting(frame).await,
            () = self.overflow.wait() => Err(Ending::queue_full()),
            _ = pings.tick() => self.ping().await,
            () = sleep_until(self.pong_deadline) => Err(Ending::close(close_code::PONG_TIMEOUT, "")),
        }
    }

    /// Take the client's answers to the server's calls from a frame at
    /// once, and keep the frame for after the call when it holds anything
    /// else (answers in it are then answers to nothing: ignored).
    async fn on_frame_while_waiting(
        &mut self,
        frame: Option<Result<Message, WsError>>,
    ) -> Result<(), Ending> {
        let message = match frame {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => message,
            // Ends, errors and control frames are handled as always.
            other => return self.on_frame(other).await,
        };
        self.pong_deadline = Instant::now() + self.ctx.settings.ping_timeout;
        if let Message::Text(text) = &message
            && self.take_answers(text)
        {
            crate::metrics::bump(&self.ctx.stats.messages_in);
            return Ok(());
        }
        let deferred = self.deferred.get_or_insert_with(Box::default);
        deferred.bytes += message.len();
        deferred.frames.push_back(message);
        Ok(())
    }

    /// Hand the answers in `text` to the calls waiting for them; whether
    /// that was all the frame held.
    fn take_answers(&mut self, text: &str) -> bool {
        let Frame::Packets(packets) = protocol::parse_frame(text) else {
            return false;
        };
        let mut only_answers = true;
        for request in packets {
            match request {
                Request::Response {
                    rid: Some(rid),
                    data,
                    error,
                } => self.client_calls.answer(rid, ClientAnswer::of(data, error)),
                _ => only_answers = false,
            }
        }
        only_answers
    }
}
