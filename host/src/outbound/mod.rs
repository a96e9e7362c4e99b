//! Outbound HTTP for plugins (`wasi:http/outgoing-handler`): who may reach
//! what, and the requests themselves.
//!
//! Access is denied by default and granted per plugin by the operator
//! (`allow`). A name granted only through a wildcard may not resolve to an
//! internal address (`address`); the host resolves a name once, checks
//! every address, and connects to the one it checked, so DNS rebinding
//! cannot turn an allowed name into an internal machine. Each request has a
//! wall-clock timeout and a response size cap, and each plugin a cap on
//! requests in flight (`OutboundPolicy`). HTTPS uses rustls with the
//! system's roots (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured), or
//! Mozilla's when the system has none. Outcomes and latency are counted
//! (`metrics`).

mod address;
mod allow;
mod metrics;
mod send;

pub use allow::AllowedHosts;
pub(crate) use allow::{Scheme, parse_host_ip};
pub(crate) use metrics::{OutboundMetrics, Outcome};
pub(crate) use send::{OutboundError, Reply};

use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_rustls::rustls;

/// What the operator set for one plugin's outbound requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundSettings {
    /// The destinations it may reach; none by default.
    pub allowed: AllowedHosts,
    /// How long one request may take, body included.
    pub timeout: Option<Duration>,
    /// The largest response body it may receive, in bytes.
    pub max_response_bytes: Option<u64>,
    /// The most requests it may have in flight at once, on the whole host.
    pub max_concurrent: Option<usize>,
}

/// The default outbound timeout.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default response size cap.
pub(crate) const DEFAULT_MAX_RESPONSE_BYTES: u64 = 10 << 20;
/// The default cap on requests in flight per plugin.
pub(crate) const DEFAULT_MAX_CONCURRENT: usize = 64;

/// One plugin's outbound policy, shared by its instances on every worker.
#[derive(Debug)]
pub(crate) struct OutboundPolicy {
    /// The plugin's name, for metrics and logs.
    pub(crate) plugin: Arc<str>,
    /// The destinations it may reach.
    pub(crate) allowed: AllowedHosts,
    /// How long one request may take, body included.
    pub(crate) timeout: Duration,
    /// The largest response body, in bytes.
    pub(crate) max_response_bytes: u64,
    /// One permit per request in flight.
    pub(crate) in_flight: Arc<Semaphore>,
}

impl OutboundPolicy {
    /// The policy of `plugin` under `settings`, defaults filled in.
    pub(crate) fn new(plugin: Arc<str>, settings: &OutboundSettings) -> Self {
        let max_concurrent = settings.max_concurrent.unwrap_or(DEFAULT_MAX_CONCURRENT);
        OutboundPolicy {
            plugin,
            allowed: settings.allowed.clone(),
            timeout: settings.timeout.unwrap_or(DEFAULT_TIMEOUT),
            max_response_bytes: settings
                .max_response_bytes
                .unwrap_or(DEFAULT_MAX_RESPONSE_BYTES),
            in_flight: Arc::new(Semaphore::new(max_concurrent)),
        }
    }
}

/// What every plugin's requests share: the TLS roots (loaded on the first
/// HTTPS request) and the metrics.
#[derive(Debug, Default)]
pub(crate) struct OutboundClient {
    tls: OnceLock<Arc<rustls::ClientConfig>>,
    /// Outcomes and latency of every request.
    pub(crate) metrics: OutboundMetrics,
}

impl OutboundClient {
    /// The TLS client configuration, with the system's roots or Mozilla's.
    fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls
            .get_or_init(|| {
                let mut roots = rustls::RootCertStore::empty();
                let native = rustls_native_certs::load_native_certs();
                for error in &native.errors {
                    tracing::warn!("outbound HTTPS: a system root certificate was not loaded: {error}");
                }
                let (added, _) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    tracing::warn!(
                        "outbound HTTPS: the system has no root certificates; using Mozilla's (webpki-roots)"
                    );
                    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default protocol versions")
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Arc::new(config)
            })
            .clone()
    }
}
