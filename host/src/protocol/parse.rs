//! Parsing what clients send: a text frame into a heartbeat or packets, and
//! each packet into a typed [`Request`]. Event names are matched here, once;
//! the session dispatches on the enum.

use super::PingProtocol;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// A decoded text frame from a client.
#[derive(Debug)]
pub enum Frame<'a> {
    /// A heartbeat answer.
    Pong(PingProtocol),
    /// One packet, or the packets of a batch in order.
    Packets(Packets<'a>),
    /// Text that is not a JSON object or array. SocketCluster ignores it
    /// after the handshake and closes with 4009 before it.
    Unparsable,
    /// A batch of more than [`MAX_BATCH`] packets: refused whole, before any
    /// of it is handled or held.
    TooManyPackets,
}

/// The most packets one frame may batch. The official client batches what
/// it sends within one event-loop turn (subscriptions after a reconnect,
/// bursts of emits); a thousand is far above that, and bounds what one
/// frame costs to parse to a list of a thousand references.
pub const MAX_BATCH: usize = 1000;

/// The packets of a frame, each parsed into a [`Request`] only when it is
/// taken, so that a batch is held as one list of raw values, never two.
#[derive(Debug)]
pub struct Packets<'a>(PacketsInner<'a>);

#[derive(Debug)]
enum PacketsInner<'a> {
    One(Option<Request<'a>>),
    Batch(std::vec::IntoIter<&'a RawValue>),
}

impl<'a> Iterator for Packets<'a> {
    type Item = Request<'a>;

    fn next(&mut self) -> Option<Request<'a>> {
        match &mut self.0 {
            PacketsInner::One(request) => request.take(),
            PacketsInner::Batch(items) => items.next().map(Request::parse),
        }
    }
}

/// One packet from a client, by what it asks for.
///
/// `cid` is the call id as the client wrote it, present only when it is a
/// number: SocketCluster treats a packet with another `cid` as a transmit.
#[derive(Debug)]
pub enum Request<'a> {
    /// `#handshake`.
    Handshake {
        /// `{"authToken": ..}`.
        data: Option<&'a RawValue>,
        /// The call id; a handshake without one is refused.
        cid: Option<&'a RawValue>,
    },
    /// `#authenticate` with a token.
    Authenticate {
        /// The token (a JSON string).
        data: Option<&'a RawValue>,
        /// The call id.
        cid: Option<&'a RawValue>,
    },
    /// `#removeAuthToken`: the client dropped its token.
    RemoveAuthToken,
    /// `#subscribe`: `{"channel", "data"?}`.
    Subscribe {
        /// The channel and subscribe options data.
        data: Option<&'a RawValue>,
        /// The call id; without one the subscription is not performed.
        cid: Option<&'a RawValue>,
    },
    /// `#unsubscribe`: a bare channel name.
    Unsubscribe {
        /// The channel name (a JSON string).
        data: Option<&'a RawValue>,
        /// The call id, when the client wants an answer.
        cid: Option<&'a RawValue>,
    },
    /// `#publish`: `{"channel", "data"}`.
    Publish {
        /// The channel and the data to publish.
        data: Option<&'a RawValue>,
        /// The call id, when the client wants an answer.
        cid: Option<&'a RawValue>,
    },
    /// An RPC for a plugin (an event with a numeric cid).
    Invoke {
        /// The event name.
        event: Cow<'a, str>,
        /// The data, absent when the client sent none.
        data: Option<&'a RawValue>,
        /// The call id.
        cid: &'a RawValue,
    },
    /// A transmit for a plugin (an event without a numeric cid).
    Transmit {
        /// The event name.
        event: Cow<'a, str>,
        /// The data, absent when the client sent none.
        data: Option<&'a RawValue>,
    },
    /// An answer to a procedure the server invoked on the client (an
    /// object with a numeric `rid` and no `event`): `{"rid", "data"}`, or
    /// `{"rid", "error"}` when the client's procedure failed.
    Response {
        /// The call id the server sent, when it is one the server can have
        /// sent (a whole number); other answers are answers to nothing.
        rid: Option<u64>,
        /// The answer's data, absent when the client sent none.
        data: Option<&'a RawValue>,
        /// The client's error, when its procedure failed.
        error: Option<&'a RawValue>,
    },
    /// A JSON value that is neither an event nor a response; ignored.
    Other,
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
    #[serde(borrow, default, deserialize_with = "present")]
    error: Option<&'a RawValue>,
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

/// Whether raw JSON is an object. serde reads a struct from an array too
/// (fields by position); SocketCluster only looks at object properties.
fn is_object(value: &RawValue) -> bool {
    value.get().starts_with('{')
}

/// Decode one text frame the way `sc-formatter` and `AGServerSocket` do.
pub fn parse_frame(text: &str) -> Frame<'_> {
    if let Some(protocol) = PingProtocol::of_pong(text) {
        return Frame::Pong(protocol);
    }
    let trimmed = text.trim_start_matches([' ', '\n', '\r', '\t']);
    if trimmed.starts_with('[') {
        match parse_batch(text) {
            Ok(items) => Frame::Packets(Packets(PacketsInner::Batch(items.into_iter()))),
            Err(BatchError::TooMany) => Frame::TooManyPackets,
            Err(BatchError::Invalid) => Frame::Unparsable,
        }
    } else if trimmed.starts_with('{') {
        match serde_json::from_str::<RawPacket>(text) {
            Ok(raw) => Frame::Packets(Packets(PacketsInner::One(Some(Request::classify(raw))))),
            Err(_) => Frame::Unparsable,
        }
    } else {
        Frame::Unparsable
    }
}

/// Why a batch was not read.
enum BatchError {
    TooMany,
    Invalid,
}

/// The items of a JSON array, as raw values, stopping at the first item
/// past [`MAX_BATCH`]: an array of a million `0`s costs no more than one of
/// a thousand.
fn parse_batch(text: &str) -> Result<Vec<&RawValue>, BatchError> {
    struct Bounded;
    impl<'de> serde::de::Visitor<'de> for Bounded {
        type Value = Vec<&'de RawValue>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "an array of at most {MAX_BATCH} packets")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
            while let Some(item) = seq.next_element::<&RawValue>()? {
                if items.len() == MAX_BATCH {
                    return Err(serde::de::Error::custom(TOO_MANY));
                }
                items.push(item);
            }
            Ok(items)
        }
    }
    const TOO_MANY: &str = "too many packets";
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let items =
        serde::Deserializer::deserialize_seq(&mut deserializer, Bounded).map_err(|error| {
            if error.to_string().starts_with(TOO_MANY) {
                BatchError::TooMany
            } else {
                BatchError::Invalid
            }
        })?;
    deserializer.end().map_err(|_| BatchError::Invalid)?;
    Ok(items)
}

impl<'a> Request<'a> {
    /// The event name the packet carried (`#subscribe`, `echo`, ...), for
    /// logs; `""` for a response or a value that is no event.
    pub fn event(&self) -> &str {
        match self {
            Request::Handshake { .. } => "#handshake",
            Request::Authenticate { .. } => "#authenticate",
            Request::RemoveAuthToken => "#removeAuthToken",
            Request::Subscribe { .. } => "#subscribe",
            Request::Unsubscribe { .. } => "#unsubscribe",
            Request::Publish { .. } => "#publish",
            Request::Invoke { event, .. } | Request::Transmit { event, .. } => event,
            Request::Response { .. } | Request::Other => "",
        }
    }

    /// The call id, when the client expects an answer.
    pub fn cid(&self) -> Option<&'a RawValue> {
        match self {
            Request::Handshake { cid, .. }
            | Request::Authenticate { cid, .. }
            | Request::Subscribe { cid, .. }
            | Request::Unsubscribe { cid, .. }
            | Request::Publish { cid, .. } => *cid,
            Request::Invoke { cid, .. } => Some(cid),
            Request::RemoveAuthToken
            | Request::Transmit { .. }
            | Request::Response { .. }
            | Request::Other => None,
        }
    }

    /// Parse one item of a batch.
    fn parse(item: &'a RawValue) -> Self {
        if !is_object(item) {
            return Request::Other;
        }
        match serde_json::from_str::<RawPacket>(item.get()) {
            Ok(raw) => Request::classify(raw),
            Err(_) => Request::Other,
        }
    }

    /// What a packet asks for, by its event name and call id.
    fn classify(raw: RawPacket<'a>) -> Self {
        let event = raw
            .event
            .and_then(|event| serde_json::from_str::<Cow<str>>(event.get()).ok());
        let Some(event) = event else {
            return if let Some(rid) = raw.rid.filter(|rid| is_number(rid)) {
                Request::Response {
                    rid: rid.get().parse().ok(),
                    data: raw.data,
                    error: raw.error,
                }
            } else {
                Request::Other
            };
        };
        let (data, cid) = (raw.data, raw.cid.filter(|cid| is_number(cid)));
        match &*event {
            "#handshake" => Request::Handshake { data, cid },
            "#authenticate" => Request::Authenticate { data, cid },
            "#removeAuthToken" => Request::RemoveAuthToken,
            "#subscribe" => Request::Subscribe { data, cid },
            "#unsubscribe" => Request::Unsubscribe { data, cid },
            "#publish" => Request::Publish { data, cid },
            _ => match cid {
                Some(cid) => Request::Invoke { event, data, cid },
                None => Request::Transmit { event, data },
            },
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> &RawValue {
        serde_json::from_str(text).unwrap()
    }

    fn requests(text: &str) -> Vec<Request<'_>> {
        match parse_frame(text) {
            Frame::Packets(packets) => packets.collect(),
            other => panic!("expected packets, got {other:?}"),
        }
    }

    fn single(text: &str) -> Request<'_> {
        let mut all = requests(text);
        assert_eq!(all.len(), 1, "{all:?}");
        all.remove(0)
    }

    #[test]
    fn pongs_of_both_protocols() {
        assert!(matches!(parse_frame(""), Frame::Pong(PingProtocol::V2)));
        assert!(matches!(parse_frame("#2"), Frame::Pong(PingProtocol::V1)));
        assert!(matches!(parse_frame("#1"), Frame::Unparsable));
    }

    #[test]
    fn invoke_with_numeric_cid_is_rpc() {
        let Request::Invoke { event, data, cid } =
            single(r#"{"event":"echo","data":{"hello":"world","n":1},"cid":2}"#)
        else {
            panic!("not an RPC")
        };
        assert_eq!(event, "echo");
        assert_eq!(data.unwrap().get(), r#"{"hello":"world","n":1}"#);
        assert_eq!(cid.get(), "2");
    }

    #[test]
    fn string_cid_makes_a_transmit() {
        assert!(matches!(
            single(r#"{"event":"echo","data":"cid-string","cid":"4"}"#),
            Request::Transmit { .. }
        ));
    }

    #[test]
    fn reserved_events_are_typed() {
        assert!(matches!(
            single(r##"{"event":"#handshake","data":{},"cid":1}"##),
            Request::Handshake { cid: Some(_), .. }
        ));
        assert!(matches!(
            single(r##"{"event":"#subscribe","data":{"channel":"x"}}"##),
            Request::Subscribe { cid: None, .. }
        ));
        assert!(matches!(
            single(r##"{"event":"#removeAuthToken"}"##),
            Request::RemoveAuthToken
        ));
        assert!(matches!(
            single(r##"{"event":"#other","cid":3}"##),
            Request::Invoke { .. }
        ));
    }

    #[test]
    fn omitted_and_null_data_differ() {
        let Request::Invoke { data, .. } = single(r#"{"event":"echo","cid":5}"#) else {
            panic!()
        };
        assert!(data.is_none());
        let Request::Invoke { data, .. } = single(r#"{"event":"echo","data":null,"cid":5}"#) else {
            panic!()
        };
        assert_eq!(data.unwrap().get(), "null");
    }

    #[test]
    fn escaped_event_names_are_decoded() {
        let Request::Invoke { event, .. } = single(r#"{"event":"a\"b","cid":1}"#) else {
            panic!()
        };
        assert_eq!(event, "a\"b");
    }

    #[test]
    fn batches_keep_order_and_tolerate_junk() {
        let packets = requests(
            r#"[{"event":"echo","data":"b1","cid":2},7,{"rid":999,"data":"x"},{"event":"chat","data":"t"}]"#,
        );
        assert_eq!(packets.len(), 4);
        assert!(matches!(&packets[0], Request::Invoke { cid, .. } if cid.get() == "2"));
        assert!(matches!(packets[1], Request::Other));
        assert!(matches!(
            packets[2],
            Request::Response { rid: Some(999), data: Some(data), error: None } if data.get() == r#""x""#
        ));
        assert!(matches!(&packets[3], Request::Transmit { event, .. } if event == "chat"));
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
    fn a_batch_past_the_limit_is_refused_whole() {
        let at_limit = format!("[{}0]", "0,".repeat(MAX_BATCH - 1));
        assert_eq!(requests(&at_limit).len(), MAX_BATCH);
        let past = format!("[{}0]", "0,".repeat(MAX_BATCH));
        assert!(matches!(parse_frame(&past), Frame::TooManyPackets));
        let huge = format!("[{}0]", "0,".repeat(1_000_000));
        assert!(matches!(parse_frame(&huge), Frame::TooManyPackets));
        assert!(matches!(parse_frame("[1,2] x"), Frame::Unparsable));
    }

    #[test]
    fn arrays_are_not_packets() {
        assert!(matches!(
            requests(r##"[["#handshake",{},1]]"##)[0],
            Request::Other
        ));
    }

    #[test]
    fn non_string_event_is_other() {
        assert!(matches!(single(r#"{"event":5,"cid":1}"#), Request::Other));
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
}
