//! `parse_frame` on any UTF-8 text (WebSocket text frames are UTF-8), every
//! packet taken, and the data readers of the events applied to every data
//! field. Must never panic.
//!
//! Also checked, as the session relies on them: a `cid` handed out is a
//! number; a handshake token is never empty; and what the encoder writes
//! from a parsed event name or channel name parses back to the same name.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmcluster::protocol::{
    ChannelRequest, Frame, Request, event, handshake_token, parse_frame, publication,
    unsubscribe_channel, validate_json,
};

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let _ = validate_json(text);
    let packets = match parse_frame(text) {
        Frame::Packets(packets) => packets,
        Frame::Pong(_) => {
            assert!(text.is_empty() || text == "#2", "pong from {text:?}");
            return;
        }
        // Unparsable text, a batch over the limit, and whatever else is
        // refused whole.
        _ => return,
    };
    for request in packets {
        let (name, cid) = (request.event(), request.cid());
        if let Some(cid) = cid {
            assert!(
                cid.get()
                    .starts_with(|c: char| c.is_ascii_digit() || c == '-'),
                "cid {:?} is not a number",
                cid.get()
            );
        }
        if !name.is_empty() {
            check_event_round_trip(name);
        }
        let data = match &request {
            Request::Handshake { data, .. }
            | Request::Authenticate { data, .. }
            | Request::Subscribe { data, .. }
            | Request::Unsubscribe { data, .. }
            | Request::Publish { data, .. }
            | Request::Invoke { data, .. }
            | Request::Transmit { data, .. } => *data,
            Request::RemoveAuthToken | Request::Response { .. } | Request::Other => None,
        };
        // Each reader on every data field, not only its own event's: they
        // must all cope with whatever a client sends.
        if let Some(token) = handshake_token(data) {
            assert!(!token.is_empty(), "empty handshake token");
        }
        let _ = unsubscribe_channel(data);
        if let Some(channel) = ChannelRequest::parse(data) {
            check_publication_round_trip(&channel.channel, channel.data.map(|d| d.get()));
        }
    }
});

/// A transmit the server would send with this event name parses back to it.
fn check_event_round_trip(name: &str) {
    let frame = event(name, None);
    let Frame::Packets(mut packets) = parse_frame(&frame) else {
        panic!("event({name:?}) encoded as an unparsable frame: {frame}");
    };
    let request = packets.next().expect("one packet");
    assert_eq!(request.event(), name, "event name changed by {frame}");
}

/// A publication on this channel parses back to the same channel and data.
fn check_publication_round_trip(channel: &str, data: Option<&str>) {
    let frame = publication(channel, data);
    let Frame::Packets(mut packets) = parse_frame(&frame) else {
        panic!("publication encoded as an unparsable frame: {frame}");
    };
    let Some(Request::Publish { data: inner, .. }) = packets.next() else {
        panic!("publication is not a #publish: {frame}");
    };
    let parsed = ChannelRequest::parse(inner).expect("publication data has a channel");
    assert_eq!(parsed.channel, channel, "channel changed by {frame}");
    assert_eq!(
        parsed.data.map(|d| d.get()),
        data,
        "data changed by {frame}"
    );
}
