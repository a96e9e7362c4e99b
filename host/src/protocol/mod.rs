//! The SocketCluster wire protocol: what clients send, parsed once into a
//! typed [`Request`], and what they receive, encoded. No I/O happens here.
//!
//! The format follows `socketcluster-server` 20 and `sc-formatter` 4: text
//! frames holding one JSON packet or a JSON array of packets, plus the
//! heartbeat frames `""` (protocol v2) and `#1`/`#2` (protocol v1).
//!
//! Payloads are kept as borrowed [`RawValue`](serde_json::value::RawValue)s:
//! data that only passes through the server (an echo, a publication) is
//! never parsed into a tree.

mod encode;
mod error;
mod parse;

pub use encode::{
    auth_status, error_response, event, handshake_reply, invoke, kick_out, ok_response,
    publication, publication_at, publication_data, validate_json,
};
pub use error::{ErrorObject, MAX_NAME_BYTES, quoted};
pub use parse::{
    ChannelRequest, Frame, MAX_BATCH, Packets, Request, handshake_token, parse_frame,
    unsubscribe_channel,
};

/// WebSocket close codes used by SocketCluster (`sc-errors`), and
/// wasmcluster's own in the 4100 range.
pub mod close_code {
    /// The server is going away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the WebSocket protocol (bad opcode, unmasked frame...).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The client's close frame carried no code.
    pub const NO_STATUS: u16 = 1005;
    /// The connection was lost without a close frame (never sent).
    pub const ABNORMAL: u16 = 1006;
    /// A text frame was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame was larger than the configured maximum payload.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The client did not answer pings in time.
    pub const PONG_TIMEOUT: u16 = 4001;
    /// No `#handshake` arrived in time.
    pub const HANDSHAKE_TIMEOUT: u16 = 4005;
    /// The handshake (or an `#authenticate` without cid) was rejected.
    pub const HANDSHAKE_REJECTED: u16 = 4008;
    /// Something other than `#handshake` arrived before the handshake.
    pub const MESSAGE_BEFORE_HANDSHAKE: u16 = 4009;
    /// wasmcluster's own: the socket's outbound queue was full, its client
    /// does not read what it is sent (`--max-queued-messages`).
    pub const QUEUE_FULL: u16 = 4100;
}

/// Which heartbeat frames a connection uses.
///
/// SocketCluster does not negotiate this on the wire: v2 clients (the
/// current `socketcluster-client`) answer `""` pings with `""`, v1 clients
/// (SocketCluster 14 and older) answer `#1` with `#2`, and each ignores the
/// other's ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingProtocol {
    /// Protocol v1: ping `#1`, pong `#2`.
    V1,
    /// Protocol v2: ping and pong are empty frames.
    V2,
}

impl PingProtocol {
    /// The ping frame text.
    pub fn ping(self) -> &'static str {
        match self {
            PingProtocol::V1 => "#1",
            PingProtocol::V2 => "",
        }
    }

    /// The protocol whose pong `text` is, if it is a pong.
    pub fn of_pong(text: &str) -> Option<PingProtocol> {
        match text {
            "" => Some(PingProtocol::V2),
            "#2" => Some(PingProtocol::V1),
            _ => None,
        }
    }
}
