//! The mailbox of every socket: what other tasks (the broker, plugins on any
//! worker) queue for a session, and the registry that finds a socket's
//! mailbox by id.
//!
//! This is the vocabulary shared by the broker, the plugins and the
//! sessions; it imports nothing else of the crate, so that those three can
//! all depend on it without depending on each other.

mod queue;
mod registry;
mod subscriptions;

pub(crate) use queue::{Inbox, Outbox, OverflowSignal, outbox};
pub(crate) use registry::SocketRegistry;
pub(crate) use subscriptions::Subscriptions;

use std::sync::Arc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Identifies a session inside the process (the broker's subscriber key).
pub(crate) type SessionKey = u64;

/// What other tasks ask of a session: frames to write, and changes plugins
/// make to the socket (kept in order with the frames that tell the client).
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A frame to write as it is (publications are shared, not copied).
    Frame(Utf8Bytes),
    /// A publication of a channel whose history is kept in Redis, with its
    /// position, so that a session that just caught up from the history
    /// can drop the live copies of what it already wrote. Shared by every
    /// subscriber of the channel on this host.
    Numbered(Arc<NumberedFrame>),
    /// A change to the socket; boxed, being rare, so that the queue's
    /// blocks stay small for idle connections.
    Control(Box<Control>),
}

/// A `#publish` frame and where it stands in its channel's history.
#[derive(Debug)]
pub(crate) struct NumberedFrame {
    /// The channel.
    pub(crate) channel: String,
    /// The identity of the channel's history stream.
    pub(crate) epoch: String,
    /// The publication's offset in it.
    pub(crate) offset: u64,
    /// The frame as subscribers get it.
    pub(crate) frame: Utf8Bytes,
}

/// A change a plugin makes to a socket.
#[derive(Debug)]
pub(crate) enum Control {
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
    /// Invoke procedure `event` on the client and send its answer to
    /// `answer`. Dropping `answer` unanswered (the session ended) tells the
    /// caller the socket is gone.
    InvokeClient {
        /// The procedure's name.
        event: String,
        /// Its data (JSON), if any.
        data: Option<String>,
        /// Where the answer goes.
        answer: tokio::sync::oneshot::Sender<ClientAnswer>,
    },
}

/// What came of a procedure the server invoked on a client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ClientAnswer {
    /// The client answered with this data (JSON), or none.
    Data(Option<String>),
    /// The client's procedure failed with this error (JSON, as it sent it).
    Error(String),
    /// The session did not send the call; the text says why.
    Refused(String),
}

impl ClientAnswer {
    /// The answer a client's response packet carries: its `error` when it
    /// has one, else its `data` (JSON text, as received).
    pub(crate) fn of(
        data: Option<&serde_json::value::RawValue>,
        error: Option<&serde_json::value::RawValue>,
    ) -> Self {
        match error {
            Some(error) => ClientAnswer::Error(error.get().to_owned()),
            None => ClientAnswer::Data(data.map(|data| data.get().to_owned())),
        }
    }
}

impl Outbound {
    /// What the message costs the queue that holds it, in bytes: a frame's
    /// text (publications are shared, but every queue holding one keeps it
    /// alive), or a control message's size.
    pub(crate) fn size(&self) -> usize {
        match self {
            Outbound::Frame(frame) => frame.len(),
            Outbound::Numbered(numbered) => numbered.frame.len(),
            Outbound::Control(_) => size_of::<Control>(),
        }
    }
}

impl From<Control> for Outbound {
    fn from(control: Control) -> Self {
        Outbound::Control(Box::new(control))
    }
}
