//! The SocketCluster wire protocol: parsing what clients send and encoding
//! what they receive. No I/O happens here.
//!
//! The format follows `socketcluster-server` 20 and `sc-formatter` 4 (see
//! `shared/reference/socketcluster-protocol.md`): text frames holding one JSON
//! packet or a JSON array of packets, plus the heartbeat frames `""` (protocol
//! v2) and `#1`/`#2` (protocol v1).
//!
//! Payloads are kept as borrowed [`RawValue`]s: data that only passes through
//! the server (an echo, a publication) is never parsed into a tree.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt::Write as _;

/// WebSocket close codes used by SocketCluster (`sc-errors`).
pub mod close_code {
    /// Normal closure; the client does not reconnect.
    pub const NORMAL: u16 = 1000;
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

/// A decoded text frame from a client.
#[derive(Debug)]
pub enum Frame<'a> {
    /// A heartbeat answer.
    Pong(PingProtocol),
    /// One packet, or the packets of a batch in order.
    Packets(Vec<Packet<'a>>),
    /// Text that is not a JSON object or array. SocketCluster ignores it
    /// after the handshake and closes with 4009 before it.
    Unparsable,
}

/// One packet from a client.
#[derive(Debug)]
pub enum Packet<'a> {
    /// An event: an RPC when `cid` is present, a transmit otherwise.
    Event {
        /// The event name (`#handshake`, `#publish`, `echo`, ...).
        event: Cow<'a, str>,
        /// The data, absent when the client sent none.
        data: Option<&'a RawValue>,
        /// The call id as the client wrote it; only numeric ids make an RPC.
        cid: Option<&'a RawValue>,
    },
    /// A response to a server-initiated RPC (`rid`).
    Response,
    /// A JSON value that is neither an event nor a response; ignored.
    Other,
}

impl Packet<'_> {
    /// The RPC call id, when this is an RPC.
    pub fn cid(&self) -> Option<&RawValue> {
        match self {
            Packet::Event { cid, .. } => *cid,
            _ => None,
        }
    }
}

/// The fields of a packet object that matter; others are ignored.
#[derive(Deserialize)]
struct RawPacket<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    event: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    cid: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    rid: Option<&'a RawValue>,
}

/// Deserialize a present field as `Some`, even when it is `null`: a client
/// that sends `"data": null` must get `null` back, not nothing.
fn present<'de, D>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// Whether a raw JSON value is a number (SocketCluster: `typeof cid === 'number'`).
fn is_number(value: &RawValue) -> bool {
    value
        .get()
        .starts_with(|c: char| c.is_ascii_digit() || c == '-')
}

/// Decode one text frame the way `sc-formatter` and `AGServerSocket` do.
pub fn parse_frame(text: &str) -> Frame<'_> {
    if let Some(protocol) = PingProtocol::of_pong(text) {
        return Frame::Pong(protocol);
    }
    let trimmed = text.trim_start_matches([' ', '\n', '\r', '\t']);
    if trimmed.starts_with('[') {
        match serde_json::from_str::<Vec<&RawValue>>(text) {
            Ok(items) => Frame::Packets(items.into_iter().map(parse_packet).collect()),
            Err(_) => Frame::Unparsable,
        }
    } else if trimmed.starts_with('{') {
        match serde_json::from_str::<RawPacket>(text) {
            Ok(raw) => Frame::Packets(vec![classify(raw)]),
            Err(_) => Frame::Unparsable,
        }
    } else {
        Frame::Unparsable
    }
}

/// Whether raw JSON is an object. serde reads a struct from an array too
/// (fields by position); SocketCluster only looks at object properties.
fn is_object(value: &RawValue) -> bool {
    value.get().starts_with('{')
}

fn parse_packet(item: &RawValue) -> Packet<'_> {
    if !is_object(item) {
        return Packet::Other;
    }
    match serde_json::from_str::<RawPacket>(item.get()) {
        Ok(raw) => classify(raw),
        Err(_) => Packet::Other,
    }
}

fn classify(raw: RawPacket<'_>) -> Packet<'_> {
    let event = raw
        .event
        .and_then(|event| serde_json::from_str::<Cow<str>>(event.get()).ok());
    match event {
        Some(event) => Packet::Event {
            event,
            data: raw.data,
            cid: raw.cid.filter(|cid| is_number(cid)),
        },
        None if raw.rid.is_some_and(is_number) => Packet::Response,
        None => Packet::Other,
    }
}

/// A SocketCluster error object as sent in `{"rid":..,"error":{..}}`.
///
/// On the wire it is `{"message":..,"name":..,...details}`, the shape
/// `sc-errors`' `dehydrateError` produces and `hydrateError` reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorObject {
    /// `err.name` on the client.
    pub name: String,
    /// `err.message` on the client.
    pub message: String,
    /// Extra properties; `name` and `message` keys here are ignored.
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl ErrorObject {
    /// An error with a name and a message.
    pub fn new(name: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorObject {
            name: name.into(),
            message: message.into(),
            details: serde_json::Map::new(),
        }
    }

    /// Add an extra property.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// `InvalidActionError`, what SocketCluster answers malformed reserved events with.
    pub fn invalid_action(message: impl Into<String>) -> Self {
        ErrorObject::new("InvalidActionError", message)
    }

    /// The answer to an RPC that no plugin declares.
    pub fn unknown_event(event: &str) -> Self {
        ErrorObject::new(
            "UnknownEventError",
            format!("No plugin handles the event '{event}'"),
        )
        .with("event", event)
    }

    fn write_json(&self, out: &mut String) {
        out.push_str("{\"message\":");
        push_json_string(out, &self.message);
        out.push_str(",\"name\":");
        push_json_string(out, &self.name);
        for (key, value) in &self.details {
            if key == "name" || key == "message" {
                continue;
            }
            out.push(',');
            push_json_string(out, key);
            out.push(':');
            out.push_str(&value.to_string());
        }
        out.push('}');
    }
}

fn push_json_string(out: &mut String, text: &str) {
    // Serializing a &str into a String cannot fail.
    out.push_str(&serde_json::to_string(text).unwrap_or_default());
}

/// The handshake reply:
/// `{"rid":cid,"data":{"id","pingTimeout"[,"authError"],"isAuthenticated"}}`,
/// in SocketCluster's key order. `authError` is there only when the client
/// sent a token that was refused.
pub fn handshake_reply(
    cid: &RawValue,
    socket_id: &str,
    ping_timeout_ms: u64,
    auth_error: Option<&ErrorObject>,
    authenticated: bool,
) -> String {
    let mut out = String::with_capacity(96);
    let _ = write!(out, "{{\"rid\":{},\"data\":{{\"id\":", cid.get());
    push_json_string(&mut out, socket_id);
    let _ = write!(out, ",\"pingTimeout\":{ping_timeout_ms}");
    if let Some(error) = auth_error {
        out.push_str(",\"authError\":");
        error.write_json(&mut out);
    }
    let _ = write!(out, ",\"isAuthenticated\":{authenticated}}}}}");
    out
}

/// The data of an `#authenticate` answer:
/// `{"isAuthenticated":..,"authError":{..}|null}`.
pub fn auth_status(authenticated: bool, auth_error: Option<&ErrorObject>) -> String {
    let mut out = format!("{{\"isAuthenticated\":{authenticated},\"authError\":");
    match auth_error {
        Some(error) => error.write_json(&mut out),
        None => out.push_str("null"),
    }
    out.push('}');
    out
}

/// A successful RPC answer: `{"rid":cid,"data":..}`, or `{"rid":cid}` without data.
pub fn ok_response(cid: &RawValue, data: Option<&str>) -> String {
    let mut out = String::with_capacity(16 + data.map_or(0, str::len));
    let _ = write!(out, "{{\"rid\":{}", cid.get());
    if let Some(data) = data {
        out.push_str(",\"data\":");
        out.push_str(data);
    }
    out.push('}');
    out
}

/// A failed RPC answer: `{"rid":cid,"error":{..}}`.
pub fn error_response(cid: &RawValue, error: &ErrorObject) -> String {
    let mut out = String::with_capacity(96);
    let _ = write!(out, "{{\"rid\":{},\"error\":", cid.get());
    error.write_json(&mut out);
    out.push('}');
    out
}

/// A server-to-client transmit: `{"event":..,"data":..}` (no `data` key without data).
pub fn event(event: &str, data: Option<&str>) -> String {
    let mut out = String::with_capacity(24 + event.len() + data.map_or(0, str::len));
    out.push_str("{\"event\":");
    push_json_string(&mut out, event);
    if let Some(data) = data {
        out.push_str(",\"data\":");
        out.push_str(data);
    }
    out.push('}');
    out
}

/// A publication as subscribers receive it:
/// `{"event":"#publish","data":{"channel":..,"data":..}}`. Encoded once per
/// publication and shared by every subscriber.
///
/// Without data (a client `#publish` with no `data` key) the inner `data`
/// key is left out, as `JSON.stringify` does.
pub fn publication(channel: &str, data: Option<&str>) -> String {
    let mut out = String::with_capacity(48 + channel.len() + data.map_or(0, str::len));
    out.push_str("{\"event\":\"#publish\",\"data\":{\"channel\":");
    push_json_string(&mut out, channel);
    if let Some(data) = data {
        out.push_str(",\"data\":");
        out.push_str(data);
    }
    out.push_str("}}");
    out
}

/// The data of `#subscribe` and `#publish`: `{"channel": string, "data"?: any}`.
#[derive(Debug, Deserialize)]
pub struct ChannelRequest<'a> {
    /// The channel name.
    #[serde(borrow)]
    pub channel: Cow<'a, str>,
    /// Subscribe options data, or the data to publish.
    #[serde(borrow, default, deserialize_with = "present")]
    pub data: Option<&'a RawValue>,
}

impl<'a> ChannelRequest<'a> {
    /// Read `{"channel": string, ...}`; `None` when malformed (SocketCluster:
    /// `!packet.data || typeof packet.data.channel !== 'string'`).
    pub fn parse(data: Option<&'a RawValue>) -> Option<Self> {
        let data = data.filter(|data| is_object(data))?;
        serde_json::from_str(data.get()).ok()
    }
}

/// The token in a `#handshake`'s data (`{"authToken": string|null}`), if
/// one was sent. SocketCluster treats an empty or missing token as none.
pub fn handshake_token(data: Option<&RawValue>) -> Option<String> {
    #[derive(Deserialize)]
    struct Handshake {
        #[serde(rename = "authToken")]
        auth_token: Option<String>,
    }
    let data = data.filter(|data| is_object(data))?;
    serde_json::from_str::<Handshake>(data.get())
        .ok()?
        .auth_token
        .filter(|token| !token.is_empty())
}

/// The data of `#unsubscribe`: a bare channel name string.
pub fn unsubscribe_channel(data: Option<&RawValue>) -> Option<Cow<'_, str>> {
    serde_json::from_str(data?.get()).ok()
}

/// The data of `#kickOut`: `{"channel":..,"message":..}` (no `message`
/// key without a message). `message` must be valid JSON.
pub fn kick_out(channel: &str, message: Option<&str>) -> String {
    let mut out = String::from("{\"channel\":");
    push_json_string(&mut out, channel);
    if let Some(message) = message {
        out.push_str(",\"message\":");
        out.push_str(message);
    }
    out.push('}');
    out
}

/// Check that text from a plugin is one JSON value before it is spliced into
/// a frame.
pub fn validate_json(text: &str) -> Result<(), serde_json::Error> {
    serde_json::from_str::<&RawValue>(text).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> &RawValue {
        serde_json::from_str(text).unwrap()
    }

    fn single(text: &str) -> Packet<'_> {
        match parse_frame(text) {
            Frame::Packets(mut packets) if packets.len() == 1 => packets.remove(0),
            other => panic!("expected one packet, got {other:?}"),
        }
    }

    #[test]
    fn pongs_of_both_protocols() {
        assert!(matches!(parse_frame(""), Frame::Pong(PingProtocol::V2)));
        assert!(matches!(parse_frame("#2"), Frame::Pong(PingProtocol::V1)));
        assert!(matches!(parse_frame("#1"), Frame::Unparsable));
    }

    #[test]
    fn invoke_with_numeric_cid_is_rpc() {
        let packet = single(r#"{"event":"echo","data":{"hello":"world","n":1},"cid":2}"#);
        let Packet::Event { event, data, cid } = packet else {
            panic!("not an event")
        };
        assert_eq!(event, "echo");
        assert_eq!(data.unwrap().get(), r#"{"hello":"world","n":1}"#);
        assert_eq!(cid.unwrap().get(), "2");
    }

    #[test]
    fn string_cid_makes_a_transmit() {
        let packet = single(r#"{"event":"echo","data":"cid-string","cid":"4"}"#);
        assert!(packet.cid().is_none());
    }

    #[test]
    fn omitted_and_null_data_differ() {
        let Packet::Event { data, .. } = single(r#"{"event":"echo","cid":5}"#) else {
            panic!()
        };
        assert!(data.is_none());
        let Packet::Event { data, .. } = single(r#"{"event":"echo","data":null,"cid":5}"#) else {
            panic!()
        };
        assert_eq!(data.unwrap().get(), "null");
    }

    #[test]
    fn escaped_event_names_are_decoded() {
        let Packet::Event { event, .. } = single(r#"{"event":"a\"b","cid":1}"#) else {
            panic!()
        };
        assert_eq!(event, "a\"b");
    }

    #[test]
    fn batches_keep_order_and_tolerate_junk() {
        let Frame::Packets(packets) = parse_frame(
            r#"[{"event":"echo","data":"b1","cid":2},7,{"rid":999,"data":"x"},{"event":"chat","data":"t"}]"#,
        ) else {
            panic!()
        };
        assert_eq!(packets.len(), 4);
        assert_eq!(packets[0].cid().unwrap().get(), "2");
        assert!(matches!(packets[1], Packet::Other));
        assert!(matches!(packets[2], Packet::Response));
        assert!(matches!(&packets[3], Packet::Event { event, cid: None, .. } if event == "chat"));
    }

    #[test]
    fn malformed_frames_are_unparsable() {
        for text in [
            "{not valid json",
            "not json",
            "42",
            "\"string\"",
            "[1,2",
            "{\"event\":\"x\"} trailing",
        ] {
            assert!(matches!(parse_frame(text), Frame::Unparsable), "{text}");
        }
    }

    #[test]
    fn arrays_are_not_packets() {
        let Frame::Packets(packets) = parse_frame(r##"[["#handshake",{},1]]"##) else {
            panic!()
        };
        assert!(matches!(packets[0], Packet::Other));
    }

    #[test]
    fn non_string_event_is_other() {
        assert!(matches!(single(r#"{"event":5,"cid":1}"#), Packet::Other));
    }

    #[test]
    fn encodes_match_the_captured_frames() {
        assert_eq!(
            handshake_reply(raw("1"), "K1TZeJiuGyGhFkXdAAAA", 5000, None, false),
            r#"{"rid":1,"data":{"id":"K1TZeJiuGyGhFkXdAAAA","pingTimeout":5000,"isAuthenticated":false}}"#
        );
        assert_eq!(ok_response(raw("3"), None), r#"{"rid":3}"#);
        assert_eq!(
            ok_response(raw("2"), Some(r#"{"hello":"world","n":1}"#)),
            r#"{"rid":2,"data":{"hello":"world","n":1}}"#
        );
        assert_eq!(
            publication("news", Some("\"published without ack\"")),
            r##"{"event":"#publish","data":{"channel":"news","data":"published without ack"}}"##
        );
        assert_eq!(
            event("#removeAuthToken", None),
            r##"{"event":"#removeAuthToken"}"##
        );
        let error = ErrorObject::new("CustomError", "Custom failure")
            .with("code", 42)
            .with("details", serde_json::json!({"input": "abc"}));
        assert_eq!(
            error_response(raw("5"), &error),
            r#"{"rid":5,"error":{"message":"Custom failure","name":"CustomError","code":42,"details":{"input":"abc"}}}"#
        );
    }

    #[test]
    fn kick_out_matches_the_captured_frame() {
        assert_eq!(
            event(
                "#kickOut",
                Some(&kick_out("kickChannel", Some("\"you were kicked\"")))
            ),
            r##"{"event":"#kickOut","data":{"channel":"kickChannel","message":"you were kicked"}}"##
        );
    }

    #[test]
    fn publication_without_data_has_no_data_key() {
        assert_eq!(
            publication("x", None),
            r##"{"event":"#publish","data":{"channel":"x"}}"##
        );
    }

    #[test]
    fn channel_requests_must_name_a_string_channel() {
        let ok = raw(r#"{"channel":"rawchan","data":{"x":1}}"#);
        let request = ChannelRequest::parse(Some(ok)).unwrap();
        assert_eq!(request.channel, "rawchan");
        assert_eq!(request.data.unwrap().get(), r#"{"x":1}"#);
        for bad in [
            r#"{"nochannel":true}"#,
            r#""x""#,
            r#"{"channel":5}"#,
            "null",
        ] {
            assert!(ChannelRequest::parse(Some(raw(bad))).is_none(), "{bad}");
        }
        assert!(ChannelRequest::parse(None).is_none());
        assert_eq!(unsubscribe_channel(Some(raw(r#""news""#))).unwrap(), "news");
        assert!(unsubscribe_channel(Some(raw(r#"{"channel":"x"}"#))).is_none());
    }

    #[test]
    fn error_details_cannot_override_name_or_message() {
        let error = ErrorObject::new("A", "b")
            .with("name", "Evil")
            .with("message", "x");
        assert_eq!(
            error_response(raw("1"), &error),
            r#"{"rid":1,"error":{"message":"b","name":"A"}}"#
        );
    }

    #[test]
    fn validate_json_rejects_garbage() {
        assert!(validate_json(r#"{"a":1}"#).is_ok());
        assert!(validate_json("null").is_ok());
        assert!(validate_json("{").is_err());
        assert!(validate_json("1 2").is_err());
        assert!(validate_json("").is_err());
    }
}
