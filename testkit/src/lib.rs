//! A raw SocketCluster protocol client, the one the end-to-end tests and
//! the load generator (`bench/`) both speak through: frames as text, no
//! hidden behaviour but answering heartbeats.
//!
//! [`Connection`] is the lean layer: it writes frames in batches (a burst of
//! sends goes out in one write, flushed before waiting for input) and reads
//! frames, answering pings. [`Client`] adds what tests need: JSON packets,
//! call ids, replies matched to their calls while other packets wait.

mod client;
mod frames;

pub use client::{Client, WAIT};
pub use frames::{integer_field, is_error_reply, reply_id};

use futures_util::{FutureExt, SinkExt, StreamExt};
use std::net::{IpAddr, SocketAddr};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

/// A client's byte stream: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Why a connection could not be made or used.
#[derive(Debug, Error)]
pub enum Error {
    /// The TCP connection failed.
    #[error("cannot connect: {0}")]
    Connect(#[from] std::io::Error),
    /// The TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// The WebSocket upgrade or a frame failed.
    #[error("WebSocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// The server closed the connection while an answer was awaited.
    #[error("the connection closed: {0:?}")]
    Closed(Closed),
}

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// A close frame with this code (1005 when it carried none).
    Code(u16),
    /// The TCP connection ended without a close frame.
    Dropped,
}

/// What [`Connection::next`] read.
#[derive(Debug)]
pub enum Incoming {
    /// A packet (JSON text); heartbeats are answered and not returned.
    Packet(Utf8Bytes),
    /// The connection ended.
    Closed(Closed),
}

/// One WebSocket connection speaking SocketCluster frames.
pub struct Connection {
    ws: WebSocketStream<Box<dyn Io>>,
    unflushed: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("unflushed", &self.unflushed)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Open a `ws://` connection to `url`, from `source` (any local address
    /// when `None`); the handshake is the caller's.
    pub async fn connect(url: &str, source: Option<IpAddr>) -> Result<Connection, Error> {
        let addr: SocketAddr = host_and_port(url)
            .parse()
            .map_err(|_| std::io::Error::other(format!("not an ip:port URL: {url}")))?;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Self::over(url, Box::new(stream)).await
    }

    /// Open a `wss://` connection to `url` (server name `localhost`),
    /// trusting only the certificates of `root_pem`.
    pub async fn connect_tls(url: &str, root_pem: &str) -> Result<Connection, Error> {
        let stream = tls_connect(url, root_pem).await?;
        Self::over(url, Box::new(stream)).await
    }

    /// Upgrade an open stream to a WebSocket.
    pub async fn over(url: &str, stream: Box<dyn Io>) -> Result<Connection, Error> {
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(16 * 1024);
        let (ws, _) = client_async_with_config(url, stream, Some(config)).await?;
        Ok(Connection {
            ws,
            unflushed: false,
        })
    }

    /// Queue a text frame; it is written at the next flush (before waiting
    /// for input) or when the buffer fills.
    pub async fn send(&mut self, text: impl Into<Utf8Bytes>) -> Result<(), Error> {
        self.ws.feed(Message::Text(text.into())).await?;
        self.unflushed = true;
        Ok(())
    }

    /// Write what is queued.
    pub async fn flush(&mut self) -> Result<(), Error> {
        if self.unflushed {
            self.ws.flush().await?;
            self.unflushed = false;
        }
        Ok(())
    }

    /// The next text frame as it is, heartbeats included. Frames already
    /// received are returned without a flush, so that replies to a burst
    /// are answered in one write.
    pub async fn next_frame(&mut self) -> Result<Utf8Bytes, Closed> {
        loop {
            let message = match self.ws.next().now_or_never() {
                Some(message) => message,
                None => {
                    if self.flush().await.is_err() {
                        return Err(Closed::Dropped);
                    }
                    self.ws.next().await
                }
            };
            match message {
                Some(Ok(Message::Text(text))) => return Ok(text),
                Some(Ok(Message::Close(frame))) => {
                    return Err(frame.map_or(Closed::Code(1005), |f| Closed::Code(f.code.into())));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Err(Closed::Dropped),
            }
        }
    }

    /// The next packet; pings of either protocol are answered on the way.
    pub async fn next(&mut self) -> Result<Incoming, Error> {
        loop {
            let text = match self.next_frame().await {
                Ok(text) => text,
                Err(closed) => return Ok(Incoming::Closed(closed)),
            };
            match text.as_str() {
                "" => self.send("").await?,
                "#1" => self.send("#2").await?,
                _ => return Ok(Incoming::Packet(text)),
            }
        }
    }

    /// Send `#handshake` (with cid 1) and wait for its answer, answering
    /// heartbeats; the answer's text.
    pub async fn handshake(&mut self) -> Result<Utf8Bytes, Error> {
        self.send(r##"{"event":"#handshake","data":{"authToken":null},"cid":1}"##)
            .await?;
        loop {
            match self.next().await? {
                Incoming::Packet(text) if reply_id(&text) == Some(1) => return Ok(text),
                Incoming::Packet(_) => {}
                Incoming::Closed(closed) => return Err(Error::Closed(closed)),
            }
        }
    }

    /// Close with `code` and wait briefly for the server's answer.
    pub async fn close(mut self, code: u16) {
        let frame = CloseFrame {
            code: code.into(),
            reason: "".into(),
        };
        let _ = self.ws.close(Some(frame)).await;
        let drain = async { while let Some(Ok(_)) = self.ws.next().await {} };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
    }
}

/// `host:port` of a `ws://` or `wss://` URL.
pub fn host_and_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    authority.split('?').next().unwrap_or_default().to_owned()
}

/// A TLS connection to the host of `url` (name `localhost`), trusting only
/// the certificates of `root_pem`.
pub async fn tls_connect(
    url: &str,
    root_pem: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
    use std::sync::Arc;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
    let tls_error = |error: &dyn std::fmt::Display| Error::Tls(error.to_string());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        let cert = cert.map_err(|error| tls_error(&error))?;
        roots.add(cert).map_err(|error| tls_error(&error))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| tls_error(&error))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(host_and_port(url)).await?;
    let name = ServerName::try_from("localhost").map_err(|error| tls_error(&error))?;
    connector
        .connect(name, tcp)
        .await
        .map_err(|error| tls_error(&error))
}
