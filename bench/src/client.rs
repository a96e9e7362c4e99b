//! A lean SocketCluster client for load generation: connect (optionally from
//! a chosen source address), handshake, send packets with batched writes,
//! and read frames while answering heartbeats.

use anyhow::{Context, Result, bail};
use futures_util::{FutureExt, SinkExt, StreamExt};
use std::net::{IpAddr, SocketAddr};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

/// Where the server is.
#[derive(Debug, Clone)]
pub struct Target {
    /// Server address.
    pub addr: SocketAddr,
    /// WebSocket path, e.g. `/socketcluster/`.
    pub path: String,
}

/// One open, handshaken connection.
pub struct Connection {
    ws: WebSocketStream<TcpStream>,
    unflushed: bool,
}

/// What [`Connection::next`] read.
pub enum Incoming {
    /// A packet (JSON text); heartbeats are answered and not returned.
    Packet(Utf8Bytes),
    /// The connection ended.
    Closed,
}

impl Connection {
    /// Connect from `source` (any local address when `None`) and handshake.
    pub async fn open(target: &Target, source: Option<IpAddr>) -> Result<Connection> {
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .context("binding the source address")?;
        }
        let stream = socket.connect(target.addr).await.context("TCP connect")?;
        stream.set_nodelay(true)?;
        let url = format!("ws://{}{}", target.addr, target.path);
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(16 * 1024);
        let (ws, _) = client_async_with_config(url, stream, Some(config))
            .await
            .context("WebSocket upgrade")?;
        let mut connection = Connection {
            ws,
            unflushed: false,
        };
        connection
            .send(r##"{"event":"#handshake","data":{"authToken":null},"cid":1}"##.to_owned())
            .await?;
        loop {
            match connection.next().await? {
                Incoming::Packet(text) if reply_id(&text) == Some(1) => return Ok(connection),
                Incoming::Packet(_) => {}
                Incoming::Closed => bail!("closed during the handshake"),
            }
        }
    }

    /// Queue a text frame; it is written at the next flush (before waiting
    /// for input) or when the buffer fills.
    pub async fn send(&mut self, text: String) -> Result<()> {
        self.ws.feed(Message::text(text)).await?;
        self.unflushed = true;
        Ok(())
    }

    /// The next packet. Frames already received are returned without a
    /// flush, so that replies to a burst are answered in one write.
    pub async fn next(&mut self) -> Result<Incoming> {
        loop {
            let message = match self.ws.next().now_or_never() {
                Some(message) => message,
                None => {
                    if self.unflushed {
                        self.ws.flush().await?;
                        self.unflushed = false;
                    }
                    self.ws.next().await
                }
            };
            match message {
                Some(Ok(Message::Text(text))) => match text.as_str() {
                    "" => self.send(String::new()).await?,
                    "#1" => self.send("#2".to_owned()).await?,
                    _ => return Ok(Incoming::Packet(text)),
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(Incoming::Closed),
                Some(Ok(_)) => {}
            }
        }
    }

    /// Close with 1000 and wait briefly for the server's answer.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let drain = async { while let Some(Ok(_)) = self.ws.next().await {} };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
    }
}

/// The `rid` of a reply frame, read without a full JSON parse (both
/// SocketCluster and wasmcluster start replies with `{"rid":`).
pub fn reply_id(text: &str) -> Option<u64> {
    let rest = text.strip_prefix("{\"rid\":")?;
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

/// The integer after the first `"<key>":` in a frame.
pub fn integer_field(text: &str, key: &str) -> Option<u64> {
    let pattern = format!("\"{key}\":");
    let start = text.find(&pattern)? + pattern.len();
    let rest = &text[start..];
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

/// Whether a reply frame carries an error.
pub fn is_error_reply(text: &str) -> bool {
    text.contains("\"error\":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_reply_ids_and_fields() {
        assert_eq!(reply_id(r#"{"rid":42,"data":1}"#), Some(42));
        assert_eq!(reply_id(r#"{"event":"x"}"#), None);
        assert_eq!(
            integer_field(
                r##"{"event":"#publish","data":{"channel":"b","data":{"t":123,"p":"x"}}}"##,
                "t"
            ),
            Some(123)
        );
        assert!(is_error_reply(r#"{"rid":1,"error":{"message":"x"}}"#));
    }
}
