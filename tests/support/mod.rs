//! Test support: start the real `wasmcluster` binary on a free port and talk
//! to it with a raw SocketCluster client over tokio-tungstenite.

#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// A client's byte stream: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How long a test waits for any single expected frame.
pub const WAIT: Duration = Duration::from_secs(10);

/// The repository root (tests live in `<root>/tests`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// An example plugin built by `make plugins`.
pub fn example_plugin(name: &str) -> PathBuf {
    let path = repo_root().join("plugins").join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run `make plugins` first (make test does)",
        path.display()
    );
    path
}

/// A test-only plugin built by `make fixtures`.
pub fn fixture_plugin(name: &str) -> PathBuf {
    let path = repo_root()
        .join("tests/fixtures/wasm")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run `make fixtures` first (make test does)",
        path.display()
    );
    path
}

/// A plugins directory holding copies of the given example plugins.
pub fn plugins_dir(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in names {
        std::fs::copy(
            example_plugin(name),
            dir.path().join(format!("{name}.wasm")),
        )
        .unwrap();
    }
    dir
}

/// Compiled modules are cached here across test runs, so that starting the
/// binary many times does not compile the plugins every time.
fn cache_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("wasm-cache-tests")
}

/// A running server process, killed on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    child: Child,
    stderr: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl TestServer {
    /// Start `wasmcluster serve` with `plugins` and extra flags.
    pub fn start(plugins: &Path, extra: &[&str]) -> TestServer {
        match Self::try_start(plugins, extra) {
            Ok(server) => server,
            Err(log) => panic!("server did not start:\n{log}"),
        }
    }

    /// Start the server; on failure return its stderr.
    pub fn try_start(plugins: &Path, extra: &[&str]) -> Result<TestServer, String> {
        Self::try_start_under(&[], &[], plugins, extra)
    }

    /// Start the server with extra environment variables.
    pub fn start_with_env(env: &[(&str, &str)], plugins: &Path, extra: &[&str]) -> TestServer {
        Self::try_start_under(&[], env, plugins, extra)
            .unwrap_or_else(|log| panic!("server did not start:\n{log}"))
    }

    /// Start the server through a wrapper command (such as `prlimit`).
    pub fn start_under(wrapper: &[&str], plugins: &Path, extra: &[&str]) -> TestServer {
        Self::try_start_under(wrapper, &[], plugins, extra)
            .unwrap_or_else(|log| panic!("server did not start:\n{log}"))
    }

    fn try_start_under(
        wrapper: &[&str],
        env: &[(&str, &str)],
        plugins: &Path,
        extra: &[&str],
    ) -> Result<TestServer, String> {
        let log_dir = tempfile::tempdir().unwrap();
        let stderr = log_dir.path().join("stderr.log");
        let binary = env!("CARGO_BIN_EXE_wasmcluster");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let mut child = command
            .args(["serve", "--host", "127.0.0.1", "--port", "0", "-w", "2"])
            .arg("--plugins")
            .arg(plugins)
            .arg("--cache-dir")
            .arg(cache_dir())
            .args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start the wasmcluster binary");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let Some(addr) = line.trim().strip_prefix("wasmcluster listening on ") else {
            let _ = child.wait();
            return Err(std::fs::read_to_string(&stderr).unwrap_or_default());
        };
        Ok(TestServer {
            addr: addr.parse().unwrap(),
            child,
            stderr,
            _log_dir: log_dir,
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The WebSocket URL of the SocketCluster endpoint.
    pub fn url(&self) -> String {
        format!("ws://{}/socketcluster/", self.addr)
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Connect a client and complete the handshake.
    pub async fn client(&self) -> Client {
        let mut client = self.raw_client().await;
        client.handshake().await;
        client
    }

    /// Connect a client without handshaking.
    pub async fn raw_client(&self) -> Client {
        Client::connect(&self.url()).await
    }

    /// Send a signal to the server process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Wait for the process to exit; its exit code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// GET a plain HTTP path; the status line and the body.
    pub async fn http_get(&self, path: &str, headers: &str) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        tokio::time::timeout(WAIT, stream.read_to_string(&mut response))
            .await
            .unwrap()
            .unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a client saw end its connection.
#[derive(Debug, PartialEq)]
pub enum Closed {
    /// A close frame with this code.
    Code(u16),
    /// The TCP connection ended without a close frame.
    Dropped,
}

/// A raw SocketCluster client.
pub struct Client {
    ws: WebSocketStream<Box<dyn Io>>,
    /// Packets read while waiting for something else, returned first.
    pending: std::collections::VecDeque<Value>,
    next_cid: u64,
    /// Answer `""` and `#1` pings automatically while waiting for packets.
    pub auto_pong: bool,
    /// The socket id from the handshake.
    pub id: String,
}

impl Client {
    /// Open a WebSocket to `url`.
    pub async fn connect(url: &str) -> Client {
        let tcp = TcpStream::connect(host_and_port(url))
            .await
            .expect("connect");
        Self::over(url, Box::new(tcp))
            .await
            .expect("WebSocket upgrade")
    }

    /// Open a `wss://` WebSocket to `url`, trusting only `root_pem`.
    pub async fn connect_tls(url: &str, root_pem: &str) -> Result<Client, String> {
        let stream = tls_connect(url, root_pem).await?;
        Self::over(url, Box::new(stream)).await
    }

    /// Upgrade an open stream to a WebSocket.
    async fn over(url: &str, stream: Box<dyn Io>) -> Result<Client, String> {
        let (ws, _) = tokio_tungstenite::client_async(url, stream)
            .await
            .map_err(|error| error.to_string())?;
        Ok(Client {
            ws,
            pending: Default::default(),
            next_cid: 1,
            auto_pong: true,
            id: String::new(),
        })
    }

    /// Send a text frame as it is.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// Send a JSON packet.
    pub async fn send(&mut self, packet: Value) {
        self.send_text(&packet.to_string()).await;
    }

    /// The next text frame, heartbeats included.
    pub async fn next_text(&mut self) -> Result<String, Closed> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("timed out waiting for a frame");
            match message {
                Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
                Some(Ok(Message::Close(frame))) => {
                    return Err(frame.map_or(Closed::Code(1005), |f| Closed::Code(f.code.into())));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(Closed::Dropped),
            }
        }
    }

    /// The next packet, answering heartbeats on the way when `auto_pong`.
    pub async fn next_packet(&mut self) -> Value {
        if let Some(packet) = self.pending.pop_front() {
            return packet;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = tokio::time::timeout_at(deadline, self.next_text())
                .await
                .expect("timed out waiting for a packet")
                .expect("connection closed");
            match text.as_str() {
                "" | "#1" => {
                    if self.auto_pong {
                        let pong = if text.is_empty() { "" } else { "#2" };
                        self.send_text(pong).await;
                    }
                }
                _ => return serde_json::from_str(&text).expect("a JSON packet"),
            }
        }
    }

    /// Wait until the server closes the connection; its close code.
    pub async fn closed(&mut self) -> Closed {
        loop {
            if let Err(closed) = self.next_text().await {
                return closed;
            }
        }
    }

    /// Assert that nothing but heartbeats arrives for `time`.
    pub async fn expect_silence(&mut self, time: Duration) {
        assert!(
            self.pending.is_empty(),
            "unread packets: {:?}",
            self.pending
        );
        let deadline = tokio::time::Instant::now() + time;
        while let Ok(message) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            match message {
                Some(Ok(Message::Text(text))) if text.is_empty() || text == "#1" => {}
                other => panic!("expected silence, got {other:?}"),
            }
        }
    }

    fn cid(&mut self) -> u64 {
        self.next_cid += 1;
        self.next_cid - 1
    }

    /// Send `#handshake` and return the reply's data.
    pub async fn handshake(&mut self) -> Value {
        let cid = self.cid();
        self.send(json!({"event": "#handshake", "data": {"authToken": null}, "cid": cid}))
            .await;
        let reply = self.next_packet().await;
        assert_eq!(reply["rid"], cid, "handshake reply: {reply}");
        self.id = reply["data"]["id"].as_str().unwrap().to_owned();
        reply["data"].clone()
    }

    /// Invoke an RPC and return the whole reply packet; packets that arrive
    /// before it are kept for [`Client::next_packet`].
    pub async fn invoke(&mut self, event: &str, data: Value) -> Value {
        let cid = self.cid();
        self.send(json!({"event": event, "data": data, "cid": cid}))
            .await;
        self.reply(cid).await
    }

    /// Wait for the reply to `cid`; other packets are kept for later.
    pub async fn reply(&mut self, cid: u64) -> Value {
        if let Some(index) = self.pending.iter().position(|p| p["rid"] == cid) {
            return self.pending.remove(index).unwrap();
        }
        let mut skipped = Vec::new();
        let reply = loop {
            let packet = self.read_packet().await;
            if packet["rid"] == cid {
                break packet;
            }
            skipped.push(packet);
        };
        self.pending.extend(skipped);
        reply
    }

    /// Read a packet from the connection, bypassing `pending`.
    async fn read_packet(&mut self) -> Value {
        let kept = std::mem::take(&mut self.pending);
        let packet = self.next_packet().await;
        self.pending = kept;
        packet
    }

    /// Invoke and return the reply's data, failing on an error reply.
    pub async fn call(&mut self, event: &str, data: Value) -> Value {
        let reply = self.invoke(event, data).await;
        assert!(reply.get("error").is_none(), "{event} failed: {reply}");
        reply.get("data").cloned().unwrap_or(Value::Null)
    }

    /// Send a transmit.
    pub async fn transmit(&mut self, event: &str, data: Value) {
        self.send(json!({"event": event, "data": data})).await;
    }

    /// Subscribe to a channel (as an RPC, as the official client does).
    pub async fn subscribe(&mut self, channel: &str) {
        let reply = self.invoke("#subscribe", json!({"channel": channel})).await;
        assert_eq!(
            reply.as_object().unwrap().len(),
            1,
            "subscribe reply: {reply}"
        );
    }

    /// The next packet, which must be a publication: (channel, data).
    pub async fn publication(&mut self) -> (String, Value) {
        let packet = self.next_packet().await;
        assert_eq!(
            packet["event"], "#publish",
            "expected a publication, got {packet}"
        );
        let data = &packet["data"];
        (
            data["channel"].as_str().unwrap().to_owned(),
            data["data"].clone(),
        )
    }

    /// Close the connection with a code.
    pub async fn close(mut self, code: u16) {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        let frame = CloseFrame {
            code: code.into(),
            reason: "".into(),
        };
        let _ = self.ws.close(Some(frame)).await;
        while let Some(Ok(_)) = self.ws.next().await {}
    }
}

/// `host:port` of a `ws://` or `wss://` URL.
pub fn host_and_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap().to_owned()
}

/// A TLS connection to the host of `url` (name `localhost`), trusting only
/// the certificate `root_pem`.
pub async fn tls_connect(
    url: &str,
    root_pem: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(host_and_port(url))
        .await
        .map_err(|error| error.to_string())?;
    let name = ServerName::try_from("localhost").unwrap();
    connector
        .connect(name, tcp)
        .await
        .map_err(|error| error.to_string())
}

/// A real `redis-server` on a free loopback port, killed on drop. It can be
/// stopped and started again on the same port, to test outages.
pub struct RedisServer {
    /// The port it listens on.
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Start `redis-server` (installed by `.ci/run`) without persistence.
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer { port, child: None };
        server.restart();
        server
    }

    /// The URL hosts connect to.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kill it (no clean shutdown: an outage).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it (again) on its port and wait until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is missing: install it (`apt-get install redis-server`, as .ci/run does)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.answers_ping() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers_ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
