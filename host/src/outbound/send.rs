//! One outbound request: granted by the plugin's allow list, resolved,
//! checked, connected, sent, and its response body metered against the
//! size cap and the timeout.

use super::address::is_internal;
use super::{OutboundClient, OutboundPolicy, Outcome, Scheme, parse_host_ip};
use crate::log_limit;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use wasmtime_wasi_http::WasiBody;
use wasmtime_wasi_http::io::TokioIo;

/// Why a request failed, as `wasi:http` tells the plugin.
pub(crate) type OutboundError = wasmtime_wasi_http::Error;

/// A response head with its metered body, and the connection's future (the
/// connection runs as a task of its own, so there is nothing left to wait
/// for).
pub(crate) type Reply = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), OutboundError>> + Send>,
);

/// Where a request goes.
#[derive(Debug)]
struct Target {
    scheme: Scheme,
    /// Lowercase name, or an address (IPv6 in brackets).
    host: String,
    port: u16,
}

impl Target {
    fn of(uri: &http::Uri) -> Result<Self, OutboundError> {
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            _ => return Err(OutboundError::HttpProtocolError),
        };
        let authority = uri
            .authority()
            .ok_or(OutboundError::HttpRequestUriInvalid)?;
        Ok(Target {
            scheme,
            host: authority.host().to_ascii_lowercase(),
            port: authority.port_u16().unwrap_or(scheme.default_port()),
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

impl OutboundClient {
    /// Send `request` for the plugin of `policy`: denied unless its allow
    /// list grants the destination, refused while the plugin has as many
    /// requests in flight as it may, and ended when the timeout passes
    /// (body included).
    pub(crate) async fn send(
        self: Arc<Self>,
        policy: Arc<OutboundPolicy>,
        request: http::Request<WasiBody>,
    ) -> Result<Reply, OutboundError> {
        let target = Target::of(request.uri())?;
        let plugin = &*policy.plugin;
        let Some(grant) = policy
            .allowed
            .grant(target.scheme, &target.host, target.port)
        else {
            self.metrics.count(plugin, "", Outcome::Denied);
            log_refusal(
                plugin,
                &target,
                "no entry of its allowed-outbound-hosts grants it",
            );
            return Err(OutboundError::HttpRequestDenied);
        };
        let entry = grant.entry.to_owned();
        let Ok(permit) = policy.in_flight.clone().try_acquire_owned() else {
            self.metrics.count(plugin, &entry, Outcome::Limited);
            return Err(OutboundError::ConnectionLimitReached);
        };
        let started = Instant::now();
        let deadline = started + policy.timeout;
        let exchange = self.exchange(&target, grant.explicit, request);
        let response = match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                let outcome = match error {
                    OutboundError::DestinationIpProhibited => {
                        log_refusal(
                            plugin,
                            &target,
                            "it resolves to an internal address, which only an entry naming \
                             the host or address itself grants",
                        );
                        Outcome::Denied
                    }
                    _ => Outcome::Failed,
                };
                self.metrics.count(plugin, &entry, outcome);
                return Err(error);
            }
            Err(_) => {
                self.metrics.count(plugin, &entry, Outcome::TimedOut);
                return Err(OutboundError::HttpResponseTimeout);
            }
        };
        self.metrics.count(plugin, &entry, Outcome::Answered);
        self.metrics.time(plugin, &entry, started.elapsed());
        let limit = policy.max_response_bytes;
        let declared = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|length| length.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit) {
            return Err(OutboundError::HttpResponseBodySize(declared));
        }
        let response = response.map(|incoming| {
            MeteredBody {
                incoming,
                limit,
                received: 0,
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
                _permit: permit,
            }
            .boxed_unsync()
        });
        Ok((response, Box::new(async { Ok(()) })))
    }

    /// Resolve, check, connect and send; the response head.
    async fn exchange(
        &self,
        target: &Target,
        explicit: bool,
        mut request: http::Request<WasiBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, OutboundError> {
        let addresses = resolve(target).await?;
        let addresses: Vec<SocketAddr> = addresses
            .into_iter()
            .filter(|address| explicit || !is_internal(address.ip()))
            .collect();
        if addresses.is_empty() {
            return Err(OutboundError::DestinationIpProhibited);
        }
        let tcp = connect(&addresses).await?;
        let stream: Box<dyn Stream> = match target.scheme {
            Scheme::Http => Box::new(tcp),
            Scheme::Https => {
                let name = match parse_host_ip(&target.host) {
                    Some(ip) => ServerName::from(ip),
                    None => ServerName::try_from(target.host.clone())
                        .map_err(|_| OutboundError::HttpRequestUriInvalid)?,
                };
                let tls = TlsConnector::from(self.tls())
                    .connect(name, tcp)
                    .await
                    .map_err(OutboundError::Tls)?;
                Box::new(tls)
            }
        };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        // The request line carries the path only; the scheme and host went
        // into the connection and the `Host` header.
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .parse()
            .map_err(|_| OutboundError::HttpRequestUriInvalid)?;
        *request.uri_mut() = path;
        Ok(sender.send_request(request).await?)
    }
}

/// A connection to the destination, TLS or not.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// The addresses of the destination: the address itself, or what its name
/// resolves to (once: the request goes to an address checked here).
async fn resolve(target: &Target) -> Result<Vec<SocketAddr>, OutboundError> {
    if let Some(ip) = parse_host_ip(&target.host) {
        return Ok(vec![SocketAddr::new(ip, target.port)]);
    }
    match tokio::net::lookup_host((target.host.as_str(), target.port)).await {
        Ok(addresses) => Ok(addresses.collect()),
        Err(error) => Err(OutboundError::DnsError {
            rcode: Some(error.to_string()),
            info_code: None,
        }),
    }
}

/// A TCP connection to the first of `addresses` that accepts one.
async fn connect(addresses: &[SocketAddr]) -> Result<TcpStream, OutboundError> {
    let mut last = OutboundError::DestinationUnavailable;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = OutboundError::ConnectionRefused;
            }
            Err(error) => last = OutboundError::Connect(error),
        }
    }
    Err(last)
}

/// Log a refused request, at most once a second per plugin: the URL may
/// come from a client. Only the scheme, host and port are logged, never
/// the path or query (which may carry credentials).
fn log_refusal(plugin: &str, target: &Target, why: &str) {
    if let Some(left_out) = log_limit::admit(&format!("outbound refused: {plugin}")) {
        tracing::warn!(
            plugin,
            destination = %target,
            left_out,
            "outbound request refused: {why}"
        );
    }
}

/// A response body that fails once it passes the size cap or the
/// request's deadline, and holds the request's place among the plugin's
/// requests in flight until it is read or dropped.
struct MeteredBody {
    incoming: hyper::body::Incoming,
    limit: u64,
    received: u64,
    deadline: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = OutboundError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, OutboundError>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.received += data.len() as u64;
                    if self.received > self.limit {
                        let limit = self.limit;
                        return Poll::Ready(Some(Err(OutboundError::HttpResponseBodySize(Some(
                            limit,
                        )))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(OutboundError::HttpResponseTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}
