//! Outbound HTTP (`wasi:http/outgoing-handler`), through the real binary
//! and the `fetch` example, against real HTTP and HTTPS servers on
//! loopback: granted, denied by host and by port, a name that resolves to
//! loopback refused unless listed, the size cap, the timeout, 50 requests
//! at once, metrics, and secrets kept out of logs, health and metrics.

mod support;

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{TestServer, plugins_dir};
use testkit::Client;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls;

/// A real HTTP/1.1 server on loopback that answers by path:
/// `/hello`; `/slow` after 300 ms; `/hang` never; `/big` 2 MiB without a
/// length (read to the close); `/headers` the request's headers.
struct Upstream {
    addr: SocketAddr,
}

impl Upstream {
    /// Plain HTTP on 127.0.0.1.
    async fn http() -> Upstream {
        Self::start(None).await
    }

    /// HTTPS on 127.0.0.1 with a certificate for `localhost`.
    async fn https(cert_pem: &str, key_pem: &str) -> Upstream {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .map(Result::unwrap)
            .collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        Self::start(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start(tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                answer(stream).await;
                            }
                        }
                        None => answer(stream).await,
                    }
                });
            }
        });
        Upstream { addr }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// Read one request and answer it by its path.
async fn answer(mut stream: impl AsyncRead + AsyncWrite + Unpin) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
    let (body, length) = match path.as_str() {
        "/hello" => (b"hello from upstream".to_vec(), true),
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            (b"slow".to_vec(), true)
        }
        "/hang" => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        }
        "/big" => (vec![b'x'; 2 << 20], false),
        "/headers" => (head.to_ascii_lowercase().into_bytes(), true),
        _ => (b"not found".to_vec(), true),
    };
    let mut response = String::from("HTTP/1.1 200 OK\r\nconnection: close\r\n");
    if length {
        response.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    response.push_str("\r\n");
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}

/// A server with the `fetch` plugin under `section` (the body of its
/// `[plugin.fetch]` section).
fn server_with(dir: &Path, section: &str, env: &[(&str, &str)]) -> TestServer {
    let config = dir.join("wasmcluster.toml");
    std::fs::write(&config, format!("[plugin.fetch]\n{section}\n")).unwrap();
    let plugins = plugins_dir(&["fetch", "echo"]);
    let server =
        TestServer::start_with_env(env, plugins.path(), &["--config", config.to_str().unwrap()]);
    // The plugins directory must outlive the server's start only.
    drop(plugins);
    server
}

async fn fetch(client: &mut Client, url: &str) -> Value {
    client.invoke("fetch", json!({ "url": url })).await
}

#[tokio::test]
async fn granted_destinations_are_reached_and_others_denied() {
    let upstream = Upstream::http().await;
    let other = Upstream::http().await;
    let dir = tempfile::tempdir().unwrap();
    let port = upstream.port();
    let server = server_with(
        dir.path(),
        &format!("allowed-outbound-hosts = [\"http://127.0.0.1:{port}\"]"),
        &[],
    );
    let mut client = server.client().await;

    let reply = fetch(&mut client, &format!("http://127.0.0.1:{port}/hello")).await;
    assert_eq!(
        reply["data"],
        json!({"status": 200, "body": "hello from upstream"}),
        "{reply}"
    );
    // Another host (127.0.0.2 is loopback too, but not listed).
    let reply = fetch(&mut client, &format!("http://127.0.0.2:{port}/hello")).await;
    assert_eq!(reply["error"]["name"], "OutboundNotAllowed", "{reply}");
    // Another port of the listed host.
    let reply = fetch(
        &mut client,
        &format!("http://127.0.0.1:{}/hello", other.port()),
    )
    .await;
    assert_eq!(reply["error"]["name"], "OutboundNotAllowed", "{reply}");
    // Another scheme.
    let reply = fetch(&mut client, &format!("https://127.0.0.1:{port}/hello")).await;
    assert_eq!(reply["error"]["name"], "OutboundNotAllowed", "{reply}");

    let (_, metrics) = server.http_get("/metrics", "").await;
    let granted = format!("host=\"http://127.0.0.1:{port}\"");
    assert!(
        metrics.lines().any(
            |line| line.starts_with("wasmcluster_outbound_requests_total")
                && line.contains(&granted)
                && line.contains("outcome=\"answered\"")
                && line.ends_with(" 1")
        ),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(
            |line| line.starts_with("wasmcluster_outbound_requests_total")
                && line.contains("outcome=\"denied\"")
                && line.ends_with(" 3")
        ),
        "{metrics}"
    );
    assert!(
        server.log().contains("outbound request refused"),
        "{}",
        server.log()
    );
}

#[tokio::test]
async fn a_name_granted_by_a_wildcard_may_not_resolve_to_loopback() {
    let upstream = Upstream::http().await;
    let port = upstream.port();
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(
        dir.path(),
        &format!("allowed-outbound-hosts = [\"http://*:{port}\"]"),
        &[],
    );
    let mut client = server.client().await;
    let reply = fetch(&mut client, &format!("http://localhost:{port}/hello")).await;
    assert_eq!(reply["error"]["name"], "OutboundNotAllowed", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("internal address"),
        "{reply}"
    );
    drop(server);

    // Listed by name, the same machine is reachable.
    let server = server_with(
        dir.path(),
        &format!("allowed-outbound-hosts = [\"http://*:{port}\", \"http://localhost:{port}\"]"),
        &[],
    );
    let mut client = server.client().await;
    let reply = fetch(&mut client, &format!("http://localhost:{port}/hello")).await;
    assert_eq!(reply["data"]["status"], 200, "{reply}");
}

#[tokio::test]
async fn responses_past_the_size_cap_and_the_timeout_fail() {
    let upstream = Upstream::http().await;
    let port = upstream.port();
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(
        dir.path(),
        &format!(
            "allowed-outbound-hosts = [\"http://127.0.0.1:{port}\"]\n\
             outbound-max-response-bytes = 1000000\n\
             outbound-timeout-ms = 500"
        ),
        &[],
    );
    let mut client = server.client().await;
    let reply = fetch(&mut client, &format!("http://127.0.0.1:{port}/big")).await;
    assert_eq!(reply["error"]["name"], "OutboundError", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1000000 bytes"),
        "{reply}"
    );
    let started = Instant::now();
    let reply = fetch(&mut client, &format!("http://127.0.0.1:{port}/hang")).await;
    assert_eq!(reply["error"]["name"], "OutboundError", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{reply}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The plugin serves on.
    let reply = fetch(&mut client, &format!("http://127.0.0.1:{port}/hello")).await;
    assert_eq!(reply["data"]["status"], 200, "{reply}");
}

#[tokio::test]
async fn https_is_verified_against_the_systems_roots() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (certified.cert.pem(), certified.signing_key.serialize_pem());
    let upstream = Upstream::https(&cert, &key).await;
    let port = upstream.port();
    let dir = tempfile::tempdir().unwrap();
    let roots = dir.path().join("roots.pem");
    std::fs::write(&roots, &cert).unwrap();
    let section = format!("allowed-outbound-hosts = [\"https://localhost:{port}\"]");
    let server = server_with(
        dir.path(),
        &section,
        &[("SSL_CERT_FILE", roots.to_str().unwrap())],
    );
    let mut client = server.client().await;
    let reply = fetch(&mut client, &format!("https://localhost:{port}/hello")).await;
    assert_eq!(reply["data"]["body"], "hello from upstream", "{reply}");
    drop(server);

    // Without the certificate among the roots, the upstream is not trusted.
    let server = server_with(dir.path(), &section, &[]);
    let mut client = server.client().await;
    let reply = fetch(&mut client, &format!("https://localhost:{port}/hello")).await;
    assert_eq!(reply["error"]["name"], "OutboundError", "{reply}");
}

#[tokio::test]
async fn fifty_slow_requests_run_together_and_echo_keeps_answering() {
    let upstream = Upstream::http().await;
    let port = upstream.port();
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(
        dir.path(),
        &format!("allowed-outbound-hosts = [\"http://127.0.0.1:{port}\"]"),
        &[],
    );
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(server.client().await);
    }
    let started = Instant::now();
    let url = format!("http://127.0.0.1:{port}/slow");
    let fetches = clients.into_iter().map(|mut client| {
        let url = url.clone();
        tokio::spawn(async move { fetch(&mut client, &url).await })
    });
    let fetches: Vec<_> = fetches.collect();
    let mut echo = server.client().await;
    let mut slowest_echo = Duration::ZERO;
    for n in 0..20 {
        let asked = Instant::now();
        assert_eq!(echo.call("echo", json!(n)).await, json!(n));
        slowest_echo = slowest_echo.max(asked.elapsed());
    }
    for fetched in fetches {
        let reply = fetched.await.unwrap();
        assert_eq!(reply["data"]["body"], "slow", "{reply}");
    }
    let took = started.elapsed();
    // One after another they would take 50 x 300 ms = 15 s.
    assert!(
        took < Duration::from_millis(7_500),
        "50 fetches took {took:?}"
    );
    assert!(
        slowest_echo < Duration::from_millis(1_000),
        "echo waited {slowest_echo:?} while fetches were in flight"
    );
}

#[tokio::test]
async fn requests_past_the_plugins_cap_in_flight_fail_at_once() {
    let upstream = Upstream::http().await;
    let port = upstream.port();
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(
        dir.path(),
        &format!(
            "allowed-outbound-hosts = [\"http://127.0.0.1:{port}\"]\n\
             outbound-max-concurrent = 1"
        ),
        &[],
    );
    let mut slow = server.client().await;
    let slow_url = format!("http://127.0.0.1:{port}/hang");
    let in_flight = tokio::spawn(async move { fetch(&mut slow, &slow_url).await });
    // Let the first request take the plugin's only place.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut client = server.client().await;
    let reply = fetch(&mut client, &format!("http://127.0.0.1:{port}/hello")).await;
    assert_eq!(reply["error"]["name"], "OutboundError", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("in flight"),
        "{reply}"
    );
    in_flight.abort();
}

#[tokio::test]
async fn secrets_reach_the_plugin_and_nothing_else() {
    const SECRET: &str = "s3cr3t-T0KEN-4-outbound";
    let upstream = Upstream::http().await;
    let port = upstream.port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{SECRET}-from-file\n")).unwrap();
    let server = server_with(
        dir.path(),
        &format!(
            "allowed-outbound-hosts = [\"http://127.0.0.1:{port}\"]\n\
             config = {{ headers = {{ authorization = \"Bearer ${{env:FETCH_TEST_TOKEN}}\", \
             x-file = \"${{file:{}}}\" }} }}",
            file.display()
        ),
        &[("FETCH_TEST_TOKEN", SECRET), ("RUST_LOG", "debug")],
    );
    let mut client = server.client().await;
    let reply = fetch(&mut client, &format!("http://127.0.0.1:{port}/headers")).await;
    let seen = reply["data"]["body"].as_str().unwrap();
    assert!(
        seen.contains(&format!(
            "authorization: bearer {}",
            SECRET.to_ascii_lowercase()
        )),
        "{reply}"
    );
    assert!(
        seen.contains(&format!(
            "x-file: {}-from-file",
            SECRET.to_ascii_lowercase()
        )),
        "{reply}"
    );
    // A denied request and a fault, so that errors and the log have
    // plenty to say.
    let denied = fetch(&mut client, "http://127.0.0.2:1/").await;
    let crashed = client.invoke("crash", json!(null)).await;
    let (_, health) = server.http_get("/healthz", "").await;
    let (_, metrics) = server.http_get("/metrics", "").await;
    for (what, text) in [
        ("log", server.log()),
        ("/healthz", health),
        ("/metrics", metrics),
        ("errors", format!("{denied}\n{crashed}")),
    ] {
        assert!(
            !text.contains(SECRET),
            "the secret is in the {what}:\n{text}"
        );
    }
}

#[tokio::test]
async fn a_bad_allow_list_stops_the_start_naming_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wasmcluster.toml");
    std::fs::write(
        &config,
        "[plugin.fetch]\nallowed-outbound-hosts = [\"api.example.com\"]\n",
    )
    .unwrap();
    let plugins = plugins_dir(&["fetch"]);
    let error = TestServer::try_start(plugins.path(), &["--config", config.to_str().unwrap()])
        .err()
        .expect("the server must refuse the config");
    assert!(
        error.contains("allowed-outbound-hosts") && error.contains("'api.example.com'"),
        "{error}"
    );
}
