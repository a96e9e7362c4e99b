//! Test support: start the real `wasmcluster` binary (and a real
//! `redis-server`) on free ports; clients are the testkit's raw
//! SocketCluster client.

#![allow(dead_code)]

pub mod failover;
pub mod gate;

use serde_json::json;
use std::collections::BTreeSet;
use testkit::{Client, WAIT};

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::net::TcpStream;

/// The repository root (tests live in `<root>/tests`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// An example plugin, built by `make plugins` (run here when needed); with
/// `WASMCLUSTER_TEST_PLUGINS=v0.1.0`, the build of it kept in
/// `tests/fixtures/v0.1.0` (`make test-compat`).
pub fn example_plugin(name: &str) -> PathBuf {
    if let Some(kept) = kept_build(name) {
        return kept;
    }
    ensure_plugins_built();
    repo_root().join("plugins").join(format!("{name}.wasm"))
}

/// The kept build of example `name` that `WASMCLUSTER_TEST_PLUGINS` names;
/// a missing one fails the test rather than quietly testing a fresh build.
fn kept_build(name: &str) -> Option<PathBuf> {
    let version = std::env::var("WASMCLUSTER_TEST_PLUGINS").ok()?;
    let path = repo_root()
        .join("tests/fixtures")
        .join(&version)
        .join(format!("{name}.wasm"));
    assert!(path.is_file(), "no kept build {}", path.display());
    Some(path)
}

/// The contract version the example plugins under test target: the kept
/// builds' (`WASMCLUSTER_TEST_PLUGINS=v0.1.0` gives `0.1.0`), or the
/// SDK's.
pub fn examples_wit_version() -> String {
    std::env::var("WASMCLUSTER_TEST_PLUGINS")
        .map(|kept| kept.trim_start_matches('v').to_owned())
        .unwrap_or_else(|_| "0.2.0".to_owned())
}

/// A test-only plugin, built by `make fixtures` (run here when needed).
pub fn fixture_plugin(name: &str) -> PathBuf {
    ensure_plugins_built();
    repo_root()
        .join("tests/fixtures/wasm")
        .join(format!("{name}.wasm"))
}

/// Build the example plugins and the test fixtures (`make plugins
/// fixtures`) when a build is missing or older than a source it is made
/// from, once per test process: `cargo test` alone is enough.
fn ensure_plugins_built() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let root = repo_root();
        let outputs = [root.join("plugins"), root.join("tests/fixtures/wasm")];
        let sources = [
            root.join("wit"),
            root.join("plugin-sdk/src"),
            root.join("examples"),
            root.join("tests/fixtures"),
        ];
        let oldest_output = outputs.iter().filter_map(|dir| oldest_wasm(dir)).min();
        let newest_source = sources
            .iter()
            .filter_map(|dir| newest_file(dir, &outputs))
            .max();
        let fresh = match (oldest_output, newest_source) {
            (Some(built), Some(changed)) => built >= changed,
            _ => false,
        };
        if fresh && outputs.iter().all(|dir| dir.is_dir()) {
            return;
        }
        let status = Command::new("make")
            .args(["-s", "plugins", "fixtures"])
            .current_dir(&root)
            .status()
            .expect("run make");
        assert!(
            status.success(),
            "`make plugins fixtures` failed: the tests need the example plugins and fixtures"
        );
    });
}

/// The modification time of the oldest `.wasm` in `dir`.
fn oldest_wasm(dir: &Path) -> Option<std::time::SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "wasm"))
        .filter_map(|entry| entry.metadata().ok()?.modified().ok())
        .min()
}

/// The modification time of the newest file under `dir`, leaving out build
/// outputs (`skip`) and `target` folders.
fn newest_file(dir: &Path, skip: &[PathBuf]) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.filter_map(Result::ok) {
        let path = entry.path();
        if skip.contains(&path) || path.file_name().is_some_and(|name| name == "target") {
            continue;
        }
        let time = if path.is_dir() {
            newest_file(&path, skip)
        } else {
            entry.metadata().ok()?.modified().ok()
        };
        newest = newest.max(time);
    }
    newest
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
        // Two workers, unless the test sets its own.
        let workers: &[&str] = if extra.iter().any(|arg| *arg == "-w" || *arg == "--workers") {
            &[]
        } else {
            &["-w", "2"]
        };
        let mut child = command
            .args(["serve", "--host", "127.0.0.1", "--port", "0"])
            .args(workers)
            .arg("--plugins")
            .arg(plugins)
            .arg("--cache-dir")
            .arg(cache_dir())
            .args(extra)
            // The server's own default filter, unless a test sets one.
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
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

    /// A figure of the server's `/proc/PID/status` in bytes: `VmRSS` (memory
    /// now) or `VmHWM` (the most it ever held).
    pub fn memory(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{field}:")))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|number| number.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"));
        kib * 1024
    }

    /// How many file descriptors the server holds open.
    pub fn descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// `GET /healthz`, parsed.
    pub async fn health(&self) -> serde_json::Value {
        let (_, body) = self.http_get("/healthz", "").await;
        serde_json::from_str(&body).unwrap()
    }

    /// Open connections, as `/healthz` counts them.
    pub async fn connections(&self) -> u64 {
        self.health().await["connections"].as_u64().unwrap()
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

/// A real `redis-server` on a free loopback port, killed on drop. It can be
/// stopped and started again on the same port, to test outages.
pub struct RedisServer {
    /// The port it listens on.
    pub port: u16,
    /// Arguments after `redis-server` besides the port (a sentinel's
    /// config file, a replica's primary, passwords).
    args: Vec<String>,
    /// The password clients give (`requirepass`), if any.
    password: Option<String>,
    /// A sentinel's config file (which it rewrites), in `dir`.
    config: Option<PathBuf>,
    /// Its working directory: a primary with a replica writes the snapshot
    /// it syncs from there (even with `--save ""`), and a sentinel its
    /// config, so nothing lands in the checkout.
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// Start `redis-server` (installed by `.ci/run`) without persistence.
    pub fn start() -> RedisServer {
        Self::start_with(&[], None)
    }

    /// Start `redis-server` without persistence, with `args` added and
    /// clients giving `password`.
    pub fn start_with(args: &[&str], password: Option<&str>) -> RedisServer {
        let mut all: Vec<String> = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            .into_iter()
            .chain(args.iter().copied())
            .map(str::to_owned)
            .collect();
        if let Some(password) = password {
            all.extend(["--requirepass", password, "--masterauth", password].map(str::to_owned));
        }
        Self::spawn(all, password, tempfile::tempdir().unwrap(), None)
    }

    /// Start a replica of `primary` (which clients and the replica reach
    /// with `password`).
    pub fn start_replica(primary: &RedisServer, password: &str) -> RedisServer {
        let port = primary.port.to_string();
        Self::start_with(&["--replicaof", "127.0.0.1", &port], Some(password))
    }

    /// Start a sentinel (`redis-server --sentinel`) watching `primary` as
    /// `master` (quorum 2, down after 1 s), reaching it with
    /// `primary_password` and asking clients and other sentinels for
    /// `password`.
    pub fn start_sentinel(
        primary: &RedisServer,
        master: &str,
        primary_password: &str,
        password: &str,
    ) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "bind 127.0.0.1\n\
                 requirepass {password}\n\
                 sentinel sentinel-pass {password}\n\
                 sentinel monitor {master} 127.0.0.1 {port} 2\n\
                 sentinel auth-pass {master} {primary_password}\n\
                 sentinel down-after-milliseconds {master} 1000\n\
                 sentinel failover-timeout {master} 10000\n",
                port = primary.port,
            ),
        )
        .unwrap();
        Self::spawn(
            vec!["--sentinel".to_owned()],
            Some(password),
            dir,
            Some(config),
        )
    }

    /// Start a Redis Cluster node (not yet in a cluster; `redis-cli
    /// --cluster create` makes one) that clients and the other nodes reach
    /// with `password`, and that calls a silent node failed after 1 s. Its
    /// cluster bus listens on a port of its own, rather than the port plus
    /// 10000, which may not be free.
    pub fn start_cluster_node(password: &str) -> RedisServer {
        let bus_port = free_port().to_string();
        Self::start_with(
            &[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
                "--cluster-port",
                &bus_port,
            ],
            Some(password),
        )
    }

    fn spawn(
        args: Vec<String>,
        password: Option<&str>,
        dir: tempfile::TempDir,
        config: Option<PathBuf>,
    ) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            args,
            password: password.map(str::to_owned),
            config,
            dir,
            child: None,
        };
        server.restart();
        server
    }

    /// The URL hosts connect to.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Run `redis-cli` against it with `args`; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut command = Command::new("redis-cli");
        command.args(["-p", &self.port.to_string()]);
        if let Some(password) = &self.password {
            command.args(["-a", password, "--no-auth-warning"]);
        }
        let output = command
            .args(args)
            .output()
            .expect("redis-cli is installed with redis-server (scripts/install-test-deps)");
        assert!(output.status.success(), "redis-cli {args:?} failed");
        String::from_utf8_lossy(&output.stdout).into_owned()
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
        let mut command = Command::new("redis-server");
        if let Some(file) = &self.config {
            command.arg(file);
        }
        command.current_dir(self.dir.path());
        let child = command
            .args(["--port", &self.port.to_string()])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is missing: install it (`apt-get install redis-server`, as .ci/run does)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it answers a `PING` (with `PONG`, or by asking for a
    /// password).
    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut reply = [0u8; 1];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && (reply[0] == b'+' || reply[0] == b'-')
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Put `source` at `dir/name` the way the README tells operators to: write
/// a temporary file, then rename it over the old one.
pub fn install(source: &Path, dir: &Path, name: &str) {
    let temporary = dir.join(format!(".{name}.partial"));
    std::fs::copy(source, &temporary).unwrap();
    std::fs::rename(&temporary, dir.join(name)).unwrap();
}

/// Send SIGUSR2 and wait until the server logged the reload it caused.
pub async fn reload(server: &TestServer) -> String {
    reload_with(server, || server.signal("USR2")).await
}

/// Trigger a reload with `trigger` and wait for its log line.
pub async fn reload_with(server: &TestServer, trigger: impl FnOnce()) -> String {
    let before = server.log().matches("reload done").count();
    trigger();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = server.log();
        if let Some(line) = log
            .lines()
            .filter(|line| line.contains("reload done"))
            .nth(before)
        {
            return line.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reload logged:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Check that `alice`'s join of the `lobby` through `presence` (made
/// before, on any host) is in the shared KV: `bob` joining on `server`
/// sees exactly the two of them.
pub async fn check_presence_kept(server: &TestServer) {
    let mut bob = server.client().await;
    let members = bob
        .call("presence.join", json!({"room": "lobby", "name": "bob"}))
        .await;
    let names: BTreeSet<&str> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|member| member["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from(["alice", "bob"]), "{members}");
}
