//! One accepted TCP connection: its HTTP request, then either a WebSocket
//! session or a plain answer.

use super::http::{self, ReadError, Response};
use super::pending::TooMany;
use super::shared::Shared;
use super::static_files;
use super::tls::Tls;
use crate::log_limit;
use crate::metrics::{self, Format};
use crate::session::{self, SessionContext, Transport, UpgradeRequest};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// Bytes of the WebSocket read buffer; small, since most frames are small
/// and every idle connection holds one (it grows for larger messages).
const READ_BUFFER: usize = 1024;
/// Bytes buffered before a write reaches the socket; frames are flushed
/// after every batch anyway.
const WRITE_BUFFER: usize = 16 * 1024;

/// The status page served at `/`: static, it polls `/healthz`.
const STATUS_PAGE: &str = include_str!("status.html");

/// What to do with a request.
enum Action {
    /// Switch to WebSocket with this `101` answer; the request's URL and
    /// origin, for the handshake middleware.
    Upgrade {
        accept: String,
        url: String,
        origin: Option<String>,
    },
    /// Answer and close.
    Respond(Response),
    /// Answer from the static files directory, and close.
    Static(http::Request),
}

/// Serve one connection to the end, through TLS when the server has a
/// certificate.
///
/// The short-lived parts (TLS handshake, HTTP request, upgrade) run in
/// boxed futures that are freed when they finish, and the session runs in
/// a box of its own: the connection's task itself stays small for the life
/// of an idle connection.
pub(super) async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Rc<SessionContext>,
    shared: Arc<Shared>,
) {
    let _ = stream.set_nodelay(true);
    match &shared.tls {
        None => serve(stream, peer, ctx, &shared).await,
        Some(tls) => {
            let timeout = shared.config.session.handshake_timeout;
            // Boxed too, and moved into the box at once: a TLS stream is
            // large, and only TLS connections should pay for it.
            let handshake = Box::pin(tls_handshake(tls, stream, peer, timeout)).await;
            if let Some(serving) =
                handshake.map(|stream| Box::pin(serve(stream, peer, ctx, &shared)))
            {
                serving.await;
            }
        }
    }
}

/// Complete the TLS handshake within `timeout`.
async fn tls_handshake(
    tls: &Tls,
    stream: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, tls.acceptor().accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::debug!(%peer, "TLS handshake failed: {error}");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Upgrade the connection (or answer its plain request), then run its
/// WebSocket session.
async fn serve<S: Transport>(
    stream: S,
    peer: SocketAddr,
    ctx: Rc<SessionContext>,
    shared: &Shared,
) {
    // The WebSocket goes straight into the boxed session, inside the
    // closure: a local holding it would keep room for it in this future
    // while the session runs.
    let upgraded = Box::pin(upgrade(stream, peer, &ctx, shared)).await;
    let Some((session, _slot)) =
        upgraded.map(|(ws, upgrade, slot)| (Box::pin(session::run(ws, peer, upgrade, ctx)), slot))
    else {
        return;
    };
    session.await;
}

/// Read the HTTP request and either answer it or switch to WebSocket: the
/// WebSocket, what the handshake middleware needs of the request, and the
/// connection's slot under `--max-connections`.
async fn upgrade<'a, S: Transport>(
    mut stream: S,
    peer: SocketAddr,
    ctx: &SessionContext,
    shared: &'a Shared,
) -> Option<(WebSocketStream<S>, UpgradeRequest, WebSocketSlot<'a>)> {
    let config = &shared.config;
    let (request, early) =
        match http::read_request(&mut stream, config.session.handshake_timeout).await {
            Ok(request) => request,
            Err(ReadError::Gone) => return None,
            Err(ReadError::Reject(response)) => {
                let _ = response.send(&mut stream).await;
                return None;
            }
        };
    // The request is dropped here: only what handshake middleware needs
    // stays, until the handshake.
    let (accept, url, origin) = match route(request, shared) {
        Action::Upgrade {
            accept,
            url,
            origin,
        } => (accept, url, origin),
        Action::Respond(response) => {
            let _ = response.send(&mut stream).await;
            return None;
        }
        Action::Static(request) => {
            // Routed only when there is a directory.
            let root = config.static_dir.as_deref()?;
            let response = static_files::serve(root, &request).await;
            let sent = response.send(&mut stream);
            let _ = tokio::time::timeout(static_files::SEND_TIMEOUT, sent).await;
            return None;
        }
    };
    let handshake_timeout = config.session.handshake_timeout;
    let (pending, handshake_timeout) = match shared.pending.take(peer.ip(), handshake_timeout) {
        Ok(taken) => taken,
        Err(too_many) => {
            metrics::bump(&ctx.stats.upgrades_refused);
            let why = match too_many {
                TooMany::InAll => "too many connections wait for their handshake",
                TooMany::FromAddress => {
                    "too many connections from this address wait for their handshake"
                }
            };
            if let Some(left_out) = log_limit::admit("refused upgrade: pending handshakes") {
                tracing::warn!(%peer, left_out, "refusing an upgrade (503): {why}");
            }
            let response = Response::text(
                503,
                "Service Unavailable",
                &format!("The server refuses new connections for now: {why}; try again later\n"),
            )
            .with_header("Retry-After", "1");
            let _ = response.send(&mut stream).await;
            return None;
        }
    };
    let upgrade = UpgradeRequest {
        url,
        origin,
        handshake_timeout,
        _held_until_handshake: Box::new(pending),
    };
    let Some(slot) = WebSocketSlot::take(shared) else {
        metrics::bump(&ctx.stats.upgrades_refused);
        if let Some(left_out) = log_limit::admit("refused upgrade: connection limit") {
            tracing::warn!(
                limit = config.max_connections,
                left_out,
                "connection limit reached: refusing an upgrade (503)"
            );
        }
        let response = Response::text(
            503,
            "Service Unavailable",
            "The server is at its connection limit; try again later\n",
        )
        .with_header("Retry-After", "1");
        let _ = response.send(&mut stream).await;
        return None;
    };
    stream.write_all(accept.as_bytes()).await.ok()?;
    metrics::bump(&ctx.stats.connections_accepted);
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(config.max_payload_bytes))
        .max_frame_size(Some(config.max_payload_bytes));
    let ws =
        WebSocketStream::from_partially_read(stream, early.to_vec(), Role::Server, Some(ws_config))
            .await;
    Some((ws, upgrade, slot))
}

/// One of the `--max-connections` WebSocket connections, released on drop.
struct WebSocketSlot<'a>(&'a AtomicUsize);

impl<'a> WebSocketSlot<'a> {
    /// Take a slot, unless the limit is reached.
    fn take(shared: &'a Shared) -> Option<Self> {
        let limit = shared.config.max_connections;
        let open = &shared.websockets;
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| {
            (limit == 0 || count < limit).then_some(count + 1)
        })
        .ok()
        .map(|_| WebSocketSlot(open))
    }
}

impl Drop for WebSocketSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Decide what a request gets: the WebSocket path, the status page, the
/// probes and the recovery helper come first; any other path is a static
/// file when the server has a static directory.
fn route(request: http::Request, shared: &Shared) -> Action {
    let path = &shared.config.path;
    if request.path == *path {
        if !request.wants_websocket() {
            return Action::Respond(
                Response::text(
                    426,
                    "Upgrade Required",
                    "This endpoint speaks the SocketCluster protocol over WebSocket\n",
                )
                .with_header("Upgrade", "websocket"),
            );
        }
        let origin = request.header("origin");
        if !shared.config.origins.allows(origin) {
            let origin = origin.unwrap_or("(none)");
            if let Some(left_out) = log_limit::admit("refused upgrade: origin") {
                tracing::info!(
                    origin,
                    left_out,
                    "WebSocket upgrade refused: origin not allowed"
                );
            }
            return Action::Respond(Response::text(
                403,
                "Forbidden",
                &format!("Failed to authorize socket handshake - Invalid origin: {origin}\n"),
            ));
        }
        match request.websocket_accept() {
            Ok(accept) => Action::Upgrade {
                accept,
                url: request.target.clone(),
                origin: origin.map(str::to_owned),
            },
            Err(response) => Action::Respond(response),
        }
    } else if request.wants_websocket() {
        // What SocketCluster (ws) answers for an upgrade on another path.
        Action::Respond(Response::text(
            400,
            "Bad Request",
            &format!(
                "No WebSocket endpoint at {}; SocketCluster is served at {path}\n",
                request.path
            ),
        ))
    } else if request.path == "/" && request.method == "GET" && shared.config.status_page {
        Action::Respond(Response::html(STATUS_PAGE).with_header("Cache-Control", "no-cache"))
    } else if let Some(response) = probe(&request, shared) {
        Action::Respond(response)
    } else if request.path == static_files::RECOVERY_JS_PATH {
        Action::Respond(static_files::recovery_helper(&request.method))
    } else if shared.config.static_dir.is_some() {
        Action::Static(request)
    } else {
        Action::Respond(Response::text(404, "Not Found", "Not found\n"))
    }
}

impl Transport for TcpStream {
    fn abort_on_close(&self) {
        // SO_LINGER 0: close() resets the connection and frees its buffers
        // at once (a zero linger never blocks the close).
        let _ = socket2::SockRef::from(self).set_linger(Some(Duration::ZERO));
    }
}

impl Transport for TlsStream<TcpStream> {
    fn abort_on_close(&self) {
        self.get_ref().0.abort_on_close();
    }
}

/// The answer to a health, readiness or metrics request (`GET /healthz`,
/// `/readyz`, `/metrics`); `None` for any other request. Also served when
/// the process is out of file descriptors, through the one held in reserve.
pub(super) fn probe(request: &http::Request, shared: &Shared) -> Option<Response> {
    if request.method != "GET" {
        return None;
    }
    Some(match request.path.as_str() {
        "/healthz" => Response::json(200, "OK", shared.health_json()),
        "/metrics" => {
            let format = Format::negotiate(request.header("accept"));
            let body = metrics::render(&shared.metrics_snapshot(), format);
            Response::with_content_type(200, "OK", format.content_type(), body)
        }
        "/readyz" => match shared.readiness() {
            (true, body) => Response::json(200, "OK", body),
            (false, body) => Response::json(503, "Service Unavailable", body),
        },
        _ => return None,
    })
}
