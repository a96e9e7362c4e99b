//! A session's outbound queue, bounded in messages and in bytes: a client
//! that stops reading cannot make the server hold an ever longer queue of
//! frames for it. When a sender finds the queue full, the message is dropped
//! and the session is told to close the connection ([`Inbox::overflow`]).

use super::Outbound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::sync::{Notify, mpsc};

/// The session is gone: nothing is queued for it any more.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Gone;

/// What the two sides of a queue share: the bytes queued, against their
/// limit, and the overflow signal, set once by the first sender that finds
/// the queue full.
#[derive(Debug, Default)]
struct Overflow {
    happened: AtomicBool,
    notify: Notify,
    /// Bytes of the frames queued and not yet taken by the session.
    bytes: AtomicUsize,
    /// The most bytes the queue may hold.
    max_bytes: usize,
}

impl Overflow {
    fn signal(&self) {
        if !self.happened.swap(true, Ordering::AcqRel) {
            self.notify.notify_one();
        }
    }
}

/// The sending side, held by the broker, the socket registry and the
/// session itself.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Outbound>,
    overflow: Arc<Overflow>,
}

/// The receiving side, drained by the session.
#[derive(Debug)]
pub(crate) struct Inbox {
    rx: mpsc::Receiver<Outbound>,
    overflow: Arc<Overflow>,
}

/// A queue holding at most `capacity` messages and `max_bytes` bytes.
pub(crate) fn outbox(capacity: usize, max_bytes: usize) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let overflow = Arc::new(Overflow {
        max_bytes,
        ..Overflow::default()
    });
    (
        Outbox {
            tx,
            overflow: overflow.clone(),
        },
        Inbox { rx, overflow },
    )
}

impl Outbox {
    /// Queue a message. A full queue drops it and makes the session close
    /// (its client is not reading); that is not an error for the sender.
    pub(crate) fn send(&self, message: Outbound) -> Result<(), Gone> {
        let size = message.size();
        let queued = self.overflow.bytes.fetch_add(size, Ordering::AcqRel) + size;
        if queued > self.overflow.max_bytes {
            self.overflow.bytes.fetch_sub(size, Ordering::AcqRel);
            self.overflow.signal();
            return if self.tx.is_closed() {
                Err(Gone)
            } else {
                Ok(())
            };
        }
        match self.tx.try_send(message) {
            Ok(()) => Ok(()),
            Err(error) => {
                self.overflow.bytes.fetch_sub(size, Ordering::AcqRel);
                match error {
                    mpsc::error::TrySendError::Full(_) => {
                        self.overflow.signal();
                        Ok(())
                    }
                    mpsc::error::TrySendError::Closed(_) => Err(Gone),
                }
            }
        }
    }
}

impl Inbox {
    /// The next queued message.
    pub(crate) async fn recv(&mut self) -> Option<Outbound> {
        let message = self.rx.recv().await?;
        Some(self.taken(message))
    }

    /// A queued message, if one is waiting.
    pub(crate) fn try_recv(&mut self) -> Option<Outbound> {
        let message = self.rx.try_recv().ok()?;
        Some(self.taken(message))
    }

    /// Count a message out of the queue's bytes.
    fn taken(&self, message: Outbound) -> Outbound {
        self.overflow
            .bytes
            .fetch_sub(message.size(), Ordering::AcqRel);
        message
    }

    /// The signal of a full queue, to wait for beside `recv`.
    pub(crate) fn overflow(&self) -> OverflowSignal {
        OverflowSignal(self.overflow.clone())
    }
}

/// Tells a session that a sender found its queue full.
#[derive(Debug)]
pub(crate) struct OverflowSignal(Arc<Overflow>);

impl OverflowSignal {
    /// Whether a sender found the queue full.
    pub(crate) fn happened(&self) -> bool {
        self.0.happened.load(Ordering::Acquire)
    }

    /// Resolves once a sender has found the queue full.
    pub(crate) async fn wait(&self) {
        let notified = self.0.notify.notified();
        if self.happened() {
            return;
        }
        notified.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    fn frame(text: &'static str) -> Outbound {
        Outbound::Frame(Utf8Bytes::from_static(text))
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_signals_once() {
        let (outbox, mut inbox) = outbox(2, 1 << 20);
        assert_eq!(outbox.send(frame("1")), Ok(()));
        assert_eq!(outbox.send(frame("2")), Ok(()));
        let signal = inbox.overflow();
        assert!(!signal.happened());
        assert_eq!(outbox.send(frame("3")), Ok(()));
        assert!(signal.happened());
        signal.wait().await;
        assert!(matches!(inbox.recv().await, Some(Outbound::Frame(f)) if f == "1"));
        assert!(matches!(inbox.try_recv(), Some(Outbound::Frame(f)) if f == "2"));
        assert!(inbox.try_recv().is_none());
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_too() {
        let (outbox, mut inbox) = outbox(100, 10);
        let signal = inbox.overflow();
        assert_eq!(outbox.send(frame("123456")), Ok(()));
        assert_eq!(outbox.send(frame("1234")), Ok(()));
        assert!(!signal.happened());
        assert_eq!(outbox.send(frame("x")), Ok(()));
        assert!(signal.happened(), "eleven bytes do not fit in ten");
        // Taking frames out frees their bytes.
        assert!(inbox.try_recv().is_some());
        assert!(inbox.try_recv().is_some());
        assert!(inbox.try_recv().is_none());
        assert_eq!(outbox.overflow.bytes.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn sending_to_a_closed_session_says_gone() {
        let (outbox, inbox) = outbox(2, 1 << 20);
        drop(inbox);
        assert_eq!(outbox.send(frame("1")), Err(Gone));
    }
}
