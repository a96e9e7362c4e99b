//! A session's outbound queue, bounded in messages and in bytes: a client
//! that stops reading cannot make the server hold an ever longer queue of
//! frames for it. When a sender finds the queue full, the message is dropped
//! and the session is told to close the connection ([`Inbox::overflow`]).
//!
//! Most connections are idle most of the time, so an empty queue holds no
//! buffer: frames sit in a `VecDeque` that is allocated by the first frame
//! and given back when the session has taken a burst out. (tokio's `mpsc`
//! allocated a block of 32 slots and its channel state up front: about
//! 1.8 KB of every idle connection.) Senders are on any thread (the broker,
//! other workers); the session is woken through an `AtomicWaker`.

use super::Outbound;
use futures_util::task::AtomicWaker;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use tokio::sync::Notify;

/// A drained queue keeps a buffer this large for the next frames; a larger
/// one (a burst) is given back.
const KEPT_CAPACITY: usize = 8;

/// The session is gone: nothing is queued for it any more.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Gone;

/// What the senders and the session share.
#[derive(Debug, Default)]
struct Shared {
    /// The frames waiting for the session.
    queue: Mutex<Queued>,
    /// The session waiting for a frame.
    waker: AtomicWaker,
    /// The session has ended (its [`Inbox`] was dropped).
    closed: AtomicBool,
    /// Set once, by the first sender that finds the queue full.
    overflowed: AtomicBool,
    /// Wakes the session when `overflowed` is set.
    overflow: Notify,
    /// The most messages the queue may hold.
    max_messages: usize,
    /// The most bytes the queue may hold.
    max_bytes: usize,
}

/// The frames queued and not yet taken by the session, and their bytes.
#[derive(Debug, Default)]
struct Queued {
    frames: VecDeque<Outbound>,
    bytes: usize,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queued> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn signal_overflow(&self) {
        if !self.overflowed.swap(true, Ordering::AcqRel) {
            self.overflow.notify_one();
        }
    }
}

/// The sending side, held by the broker, the socket registry and the
/// session itself.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    shared: Arc<Shared>,
}

/// The receiving side, drained by the session.
#[derive(Debug)]
pub(crate) struct Inbox {
    shared: Arc<Shared>,
}

/// A queue holding at most `capacity` messages and `max_bytes` bytes.
pub(crate) fn outbox(capacity: usize, max_bytes: usize) -> (Outbox, Inbox) {
    let shared = Arc::new(Shared {
        max_messages: capacity.max(1),
        max_bytes,
        ..Shared::default()
    });
    (
        Outbox {
            shared: shared.clone(),
        },
        Inbox { shared },
    )
}

impl Outbox {
    /// Queue a message. A full queue drops it and makes the session close
    /// (its client is not reading); that is not an error for the sender.
    pub(crate) fn send(&self, message: Outbound) -> Result<(), Gone> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Gone);
        }
        let size = message.size();
        let mut queued = self.shared.queue();
        if queued.frames.len() >= self.shared.max_messages
            || queued.bytes + size > self.shared.max_bytes
        {
            drop(queued);
            self.shared.signal_overflow();
            return Ok(());
        }
        queued.bytes += size;
        queued.frames.push_back(message);
        drop(queued);
        self.shared.waker.wake();
        Ok(())
    }
}

impl Inbox {
    /// The next queued message, once there is one.
    pub(crate) async fn recv(&mut self) -> Outbound {
        std::future::poll_fn(|cx| {
            if let Some(message) = self.try_recv() {
                return Poll::Ready(message);
            }
            self.shared.waker.register(cx.waker());
            // A frame queued before the registration did not wake us.
            self.try_recv().map_or(Poll::Pending, Poll::Ready)
        })
        .await
    }

    /// A queued message, if one is waiting.
    pub(crate) fn try_recv(&mut self) -> Option<Outbound> {
        let mut queued = self.shared.queue();
        let message = queued.frames.pop_front()?;
        queued.bytes -= message.size();
        if queued.frames.is_empty() && queued.frames.capacity() > KEPT_CAPACITY {
            queued.frames = VecDeque::new();
        }
        Some(message)
    }

    /// The signal of a full queue, to wait for beside `recv`.
    pub(crate) fn overflow(&self) -> OverflowSignal {
        OverflowSignal(self.shared.clone())
    }
}

impl Drop for Inbox {
    /// Senders learn the session is gone; what was queued is dropped now,
    /// not when the last sender lets go.
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        let frames = std::mem::take(&mut self.shared.queue().frames);
        drop(frames);
    }
}

/// Tells a session that a sender found its queue full.
#[derive(Debug)]
pub(crate) struct OverflowSignal(Arc<Shared>);

impl OverflowSignal {
    /// Whether a sender found the queue full.
    pub(crate) fn happened(&self) -> bool {
        self.0.overflowed.load(Ordering::Acquire)
    }

    /// Resolves once a sender has found the queue full.
    pub(crate) async fn wait(&self) {
        let notified = self.0.overflow.notified();
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
        assert!(matches!(inbox.recv().await, Outbound::Frame(f) if f == "1"));
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
        assert_eq!(outbox.shared.queue().bytes, 0);
    }

    /// A frame sent from another thread wakes a session waiting in `recv`,
    /// and a drained burst gives its buffer back.
    #[tokio::test]
    async fn a_waiting_session_is_woken_and_a_burst_is_given_back() {
        let (outbox, mut inbox) = outbox(100, 1 << 20);
        let sender = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            for _ in 0..20 {
                outbox.send(frame("x")).unwrap();
            }
            outbox
        });
        assert!(matches!(inbox.recv().await, Outbound::Frame(f) if f == "x"));
        let outbox = sender.join().unwrap();
        while inbox.try_recv().is_some() {}
        assert_eq!(outbox.shared.queue().frames.capacity(), 0);
    }

    #[tokio::test]
    async fn sending_to_a_closed_session_says_gone() {
        let (outbox, inbox) = outbox(2, 1 << 20);
        drop(inbox);
        assert_eq!(outbox.send(frame("1")), Err(Gone));
    }
}
