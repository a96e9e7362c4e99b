//! The HTTP side of a connection: read the request head, then either upgrade
//! to a WebSocket on the SocketCluster path or answer a plain request
//! (`/healthz`, a static file).

use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The largest request head accepted; a larger one gets 431.
const MAX_HEAD: usize = 16 * 1024;
/// The most headers accepted.
const MAX_HEADERS: usize = 64;

/// A parsed request head.
#[derive(Debug, PartialEq)]
pub(super) struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// The request target as sent: path and query string.
    pub target: String,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The first value of header `name` (lower case).
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Whether the client asks for a WebSocket upgrade.
    pub(super) fn wants_websocket(&self) -> bool {
        self.header("upgrade")
            .is_some_and(|value| value.eq_ignore_ascii_case("websocket"))
    }

    /// The `101 Switching Protocols` answer for a valid WebSocket upgrade, or
    /// the error response explaining what is wrong with it.
    pub(super) fn websocket_accept(&self) -> Result<String, Response> {
        if self.method != "GET" {
            return Err(Response::text(
                400,
                "Bad Request",
                "A WebSocket upgrade must use GET\n",
            ));
        }
        let has_upgrade_token = self.header("connection").is_some_and(|value| {
            value
                .split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
        });
        if !has_upgrade_token {
            return Err(Response::text(
                400,
                "Bad Request",
                "A WebSocket upgrade needs the header Connection: Upgrade\n",
            ));
        }
        // Versions 8 and 13 share the framing; ws (SocketCluster's engine) accepts both.
        if !matches!(self.header("sec-websocket-version"), Some("13" | "8")) {
            return Err(Response::text(
                426,
                "Upgrade Required",
                "Only WebSocket version 13 is supported\n",
            )
            .with_header("Sec-WebSocket-Version", "13"));
        }
        let key = self
            .header("sec-websocket-key")
            .filter(|key| is_valid_key(key))
            .ok_or_else(|| {
                Response::text(
                    400,
                    "Bad Request",
                    "A WebSocket upgrade needs a Sec-WebSocket-Key header of 16 base64-encoded bytes\n",
                )
            })?;
        let mut accept = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
            derive_accept_key(key.as_bytes())
        );
        // Like ws' default handleProtocols: accept the first subprotocol
        // offered, so that clients that ask for one are not refused; and
        // like ws, refuse a header that is not a list of tokens (it would be
        // echoed back altered, or not at all).
        if let Some(offered) = self.header("sec-websocket-protocol") {
            let protocols: Vec<&str> = offered.split(',').map(str::trim).collect();
            if protocols.iter().any(|protocol| !is_token(protocol)) {
                return Err(Response::text(
                    400,
                    "Bad Request",
                    "Invalid Sec-WebSocket-Protocol header\n",
                ));
            }
            accept.push_str(&format!("Sec-WebSocket-Protocol: {}\r\n", protocols[0]));
        }
        accept.push_str("\r\n");
        Ok(accept)
    }
}

/// Whether `text` is an HTTP token (RFC 9110 5.6.2), as a subprotocol name
/// must be.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether a `Sec-WebSocket-Key` is 16 bytes in base64 (RFC 6455 4.2.1).
fn is_valid_key(key: &str) -> bool {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|bytes| bytes.len() == 16)
}

/// A complete plain HTTP response.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    /// Bytes, not text: a static file may be an image.
    body: Vec<u8>,
    /// An answer to `HEAD`: the head says the body's length, the body is
    /// not sent.
    head_only: bool,
}

impl Response {
    /// A `text/plain` response.
    pub(super) fn text(status: u16, reason: &'static str, body: &str) -> Self {
        Self::with_content_type(status, reason, "text/plain; charset=utf-8", body)
    }

    /// A `200 OK` HTML page.
    pub(super) fn html(body: &str) -> Self {
        Self::with_content_type(200, "OK", "text/html; charset=utf-8", body)
    }

    /// An `application/json` response.
    pub(super) fn json(status: u16, reason: &'static str, body: String) -> Self {
        Self::with_content_type(status, reason, "application/json", body)
    }

    /// A response with any content type.
    pub(super) fn with_content_type(
        status: u16,
        reason: &'static str,
        content_type: &'static str,
        body: impl Into<Vec<u8>>,
    ) -> Self {
        Response {
            status,
            reason,
            content_type,
            headers: Vec::new(),
            body: body.into(),
            head_only: false,
        }
    }

    /// Add a header.
    pub(super) fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    /// The same response as the answer to a `HEAD` request: its head only.
    pub(super) fn head_only(mut self) -> Self {
        self.head_only = true;
        self
    }

    /// The status code.
    #[cfg(test)]
    pub(super) fn status(&self) -> u16 {
        self.status
    }

    /// The value of header `name` (as written), if the response has it.
    #[cfg(test)]
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        match name {
            "Content-Type" => Some(self.content_type),
            _ => self
                .headers
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.as_str()),
        }
    }

    /// The body.
    #[cfg(test)]
    pub(super) fn body(&self) -> &[u8] {
        &self.body
    }

    /// The bytes on the wire; the connection closes after it.
    pub(super) fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }

    /// Write the response and shut the connection down.
    pub(super) async fn send<S: AsyncWrite + Unpin>(&self, stream: &mut S) -> std::io::Result<()> {
        stream.write_all(&self.to_bytes()).await?;
        stream.shutdown().await
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub(super) enum ReadError {
    /// The peer closed, failed, or was too slow; nothing to answer.
    Gone,
    /// The request is malformed or too large; answer with this.
    Reject(Response),
}

/// Read a request head. Returns the request and the bytes that followed the
/// head (the start of the WebSocket stream, if the client sent it early).
pub(super) async fn read_request<S>(
    stream: &mut S,
    timeout: Duration,
) -> Result<(Request, BytesMut), ReadError>
where
    S: AsyncRead + Unpin,
{
    tokio::time::timeout(timeout, read_head(stream))
        .await
        .unwrap_or(Err(ReadError::Gone))
}

async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(Request, BytesMut), ReadError> {
    let mut buffer = BytesMut::with_capacity(1024);
    loop {
        if stream
            .read_buf(&mut buffer)
            .await
            .map_err(|_| ReadError::Gone)?
            == 0
        {
            return Err(ReadError::Gone);
        }
        match parse_head(&buffer)? {
            Some((request, head_len)) => {
                let rest = buffer.split_off(head_len);
                return Ok((request, rest));
            }
            None if buffer.len() >= MAX_HEAD => {
                return Err(ReadError::Reject(Response::text(
                    431,
                    "Request Header Fields Too Large",
                    "Request head too large\n",
                )));
            }
            None => {}
        }
    }
}

/// Read a request head the way a connection does, and decide what it gets
/// (an upgrade's `101` answer or an error response): the input the fuzz
/// target `http_upgrade` drives. The answer, if the head is complete.
pub fn answer_request_head(bytes: &[u8]) -> Option<Vec<u8>> {
    match parse_head(bytes) {
        Ok(Some((request, _))) => Some(match request.websocket_accept() {
            Ok(accept) => accept.into_bytes(),
            Err(response) => response.to_bytes(),
        }),
        Ok(None) => None,
        Err(ReadError::Reject(response)) => Some(response.to_bytes()),
        Err(ReadError::Gone) => None,
    }
}

/// Parse a complete head from `bytes`; `None` while it is incomplete.
fn parse_head(bytes: &[u8]) -> Result<Option<(Request, usize)>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => {
            return Err(ReadError::Reject(Response::text(
                400,
                "Bad Request",
                &format!("Malformed HTTP request: {error}\n"),
            )));
        }
    };
    let target = parsed.path.unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/").to_owned();
    let headers = parsed
        .headers
        .iter()
        .map(|header| {
            (
                header.name.to_ascii_lowercase(),
                String::from_utf8_lossy(header.value).trim().to_owned(),
            )
        })
        .collect();
    let request = Request {
        method: parsed.method.unwrap_or("GET").to_owned(),
        path,
        target: target.to_owned(),
        headers,
    };
    Ok(Some((request, head_len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Request {
        match parse_head(text.as_bytes()) {
            Ok(Some((request, _))) => request,
            _ => panic!("did not parse"),
        }
    }

    const UPGRADE: &str = "GET /socketcluster/?foo=bar HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[test]
    fn upgrade_is_accepted_with_the_rfc_accept_key() {
        let request = parse(UPGRADE);
        assert_eq!(request.path, "/socketcluster/");
        assert!(request.wants_websocket());
        let accept = request.websocket_accept().unwrap();
        assert!(accept.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn upgrade_without_key_or_version_is_refused() {
        let no_key = parse(&UPGRADE.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""));
        assert_eq!(no_key.websocket_accept().unwrap_err().status(), 400);
        let old = parse(&UPGRADE.replace("Version: 13", "Version: 7"));
        assert_eq!(old.websocket_accept().unwrap_err().status(), 426);
        let bad_key = parse(&UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"));
        assert_eq!(bad_key.websocket_accept().unwrap_err().status(), 400);
    }

    #[test]
    fn the_first_offered_subprotocol_is_accepted() {
        let offer = parse(&UPGRADE.replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Protocol: chat, superchat\r\n\r\n",
        ));
        assert!(
            offer
                .websocket_accept()
                .unwrap()
                .contains("Sec-WebSocket-Protocol: chat\r\n")
        );
        assert!(
            !parse(UPGRADE)
                .websocket_accept()
                .unwrap()
                .contains("Sec-WebSocket-Protocol")
        );
    }

    #[test]
    fn a_subprotocol_header_that_is_not_tokens_is_refused() {
        let mut bytes = UPGRADE
            .replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: \r\n\r\n")
            .into_bytes();
        let at = bytes.len() - 4;
        bytes.splice(at..at, [0xff, 0xfe]);
        let (request, _) = parse_head(&bytes).ok().flatten().unwrap();
        assert_eq!(request.websocket_accept().unwrap_err().status(), 400);
        let spaced = parse(&UPGRADE.replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: a b\r\n\r\n"));
        assert_eq!(spaced.websocket_accept().unwrap_err().status(), 400);
    }

    #[test]
    fn partial_and_malformed_heads() {
        assert!(matches!(parse_head(b"GET / HTTP/1.1\r\nHost"), Ok(None)));
        assert!(matches!(
            parse_head(b"\x01\x02 nonsense\r\n\r\n"),
            Err(ReadError::Reject(_))
        ));
    }

    #[tokio::test]
    async fn bytes_after_the_head_are_kept() {
        let mut input = format!("{UPGRADE}early").into_bytes();
        let mut reader = &input[..];
        let (_, rest) = read_request(&mut reader, Duration::from_secs(1))
            .await
            .ok()
            .unwrap();
        assert_eq!(&rest[..], b"early");
        input.clear();
    }
}
