//! Encoding what clients receive: answers, events and publications, byte
//! for byte as `socketcluster-server` 20 writes them.

use super::error::{ErrorObject, push_json_string};
use serde_json::value::RawValue;
use std::fmt::Write as _;

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

/// A server-to-client invoke, which the client answers with `{"rid":cid,..}`:
/// `{"event":..,"cid":..,"data":..}` in SocketCluster's key order (no
/// `data` key without data).
pub fn invoke(event: &str, cid: u64, data: Option<&str>) -> String {
    let mut out = String::with_capacity(40 + event.len() + data.map_or(0, str::len));
    out.push_str("{\"event\":");
    push_json_string(&mut out, event);
    out.push_str(",\"cid\":");
    out.push_str(&cid.to_string());
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

/// A `#publish` frame of a channel with history: the publication's
/// position beside its data, `{"event":"#publish","data":{"channel":..,
/// "data":..,"offset":..,"epoch":..}}` (clients read `channel` and `data`
/// only; a recovery helper reads the rest). `epoch` must need no escaping.
pub fn publication_at(channel: &str, data: Option<&str>, offset: u64, epoch: &str) -> String {
    let mut out = publication(channel, data);
    out.truncate(out.len() - 2);
    out.push_str(",\"offset\":");
    out.push_str(&offset.to_string());
    out.push_str(",\"epoch\":\"");
    out.push_str(epoch);
    out.push_str("\"}}");
    out
}

/// The `data` of a `#publish` frame this host encoded, as JSON text
/// (`None` when it has none).
pub fn publication_data(frame: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Packet<'a> {
        #[serde(borrow)]
        data: Inner<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Inner<'a> {
        #[serde(borrow)]
        data: Option<&'a RawValue>,
    }
    let packet: Packet<'_> = serde_json::from_str(frame).ok()?;
    packet.data.data.map(|data| data.get().to_owned())
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
    fn a_numbered_publication_carries_its_position_and_gives_its_data_back() {
        let frame = publication_at("room:1", Some(r#"{"a":[1]}"#), 7, "00ff");
        assert_eq!(
            frame,
            r##"{"event":"#publish","data":{"channel":"room:1","data":{"a":[1]},"offset":7,"epoch":"00ff"}}"##
        );
        assert_eq!(publication_data(&frame).as_deref(), Some(r#"{"a":[1]}"#));
        assert_eq!(publication_data(&publication_at("c", None, 1, "e")), None);
    }

    #[test]
    fn a_server_invoke_has_socketclusters_key_order() {
        assert_eq!(
            invoke("confirm", 1, Some(r#"{"a":1}"#)),
            r#"{"event":"confirm","cid":1,"data":{"a":1}}"#
        );
        assert_eq!(invoke("ping", 7, None), r#"{"event":"ping","cid":7}"#);
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
