//! Hostile and careless clients, through the real binary: what one client
//! sends, or stops reading, costs the server a bounded amount of memory,
//! time and trust, and everyone else is served meanwhile. One test per
//! finding of the hostile run that opened this work.

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use support::{TestServer, plugins_dir, repo_root};
use testkit::Closed;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket client whose kernel receive buffer is 4 KiB and that never
/// reads: what the server sends it piles up on the server's side.
async fn stalled_client(server: &TestServer) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(server.url(), stream)
        .await
        .unwrap();
    ws.send(Message::text(
        r##"{"event":"#handshake","data":{"authToken":null},"cid":1}"##,
    ))
    .await
    .unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert!(reply.to_text().unwrap().starts_with(r#"{"rid":1"#));
    ws
}

/// Wait until `check` holds, for at most `limit`.
async fn eventually(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A batch `[0,0,0,...]` used to be held at 35 times its size. It is
/// refused whole once it passes the batch limit, and the server holds about
/// the frame itself, once.
#[tokio::test]
async fn a_batch_of_a_million_packets_costs_about_its_bytes() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &["--max-payload-bytes", "67108864"]);
    let mut attacker = server.client().await;
    let before = server.memory("VmRSS");
    let frame = format!("[{}0]", "0,".repeat(24 * 1024 * 1024));
    attacker.send_text(&frame).await;
    assert_eq!(attacker.closed().await, Closed::Code(1009));
    let peak = server.memory("VmHWM");
    let grown = peak.saturating_sub(before);
    assert!(
        grown < 4 * frame.len() as u64,
        "a {} MiB frame took the peak {} MiB higher",
        frame.len() >> 20,
        grown >> 20
    );
    let mut other = server.client().await;
    assert_eq!(other.call("echo", json!(1)).await, json!(1));
}

/// A client that sends requests with large answers and never reads is
/// closed once the server's writes to it make no progress for the ping
/// timeout, and its connection is reset: nothing is left in the kernel.
#[tokio::test]
async fn a_client_that_stops_reading_is_timed_out_and_reset() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(
        dir.path(),
        &["--ping-timeout-ms", "2000", "--ping-interval-ms", "500"],
    );
    // The baseline once the server has served a connection: its workers
    // open some descriptors only then (under load, after start returned).
    let mut first = server.client().await;
    assert_eq!(first.call("echo", json!("warm")).await, json!("warm"));
    first.close(1000).await;
    eventually(
        "the first client is gone",
        Duration::from_secs(10),
        async || server.connections().await == 0,
    )
    .await;
    let descriptors = server.descriptors();
    let mut stalled = stalled_client(&server).await;
    let big = "x".repeat(1024 * 1024);
    for cid in 2..10 {
        let packet = json!({"event": "echo", "data": big, "cid": cid}).to_string();
        stalled.send(Message::text(packet)).await.unwrap();
    }
    eventually(
        "the stalled client is closed",
        Duration::from_secs(15),
        async || server.connections().await == 0,
    )
    .await;
    eventually(
        "its descriptor is freed",
        Duration::from_secs(10),
        async || server.descriptors() <= descriptors,
    )
    .await;
    // It is not kept for the whole ping timeout of the client side either:
    // the server is ready for others, who are served.
    let mut other = server.client().await;
    assert_eq!(other.call("echo", json!("ok")).await, json!("ok"));
    drop(stalled);
}

/// A subscriber that never reads, and large publications: its queue is
/// bounded in bytes, not only in messages.
#[tokio::test]
async fn the_outbound_queue_is_bounded_in_bytes() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &["--max-queued-bytes", "4194304"]);
    let mut stalled = stalled_client(&server).await;
    stalled
        .send(Message::text(
            r##"{"event":"#subscribe","data":{"channel":"flood"},"cid":2}"##,
        ))
        .await
        .unwrap();
    let mut publisher = server.client().await;
    // The subscription is in place once a publication reaches the client.
    let before = server.memory("VmRSS");
    let payload = "y".repeat(512 * 1024);
    for _ in 0..200 {
        publisher
            .send(json!({"event": "#publish", "data": {"channel": "flood", "data": payload}}))
            .await;
        if server.connections().await == 1 {
            break;
        }
    }
    eventually(
        "the stalled subscriber is closed",
        Duration::from_secs(10),
        async || server.connections().await == 1,
    )
    .await;
    let grown = server.memory("VmRSS").saturating_sub(before);
    assert!(grown < 48 << 20, "RSS grew by {} MiB", grown >> 20);
    let (_, metrics) = server.http_get("/metrics", "").await;
    assert!(
        metrics.contains("wasmcluster_queue_overflows_total 1"),
        "{metrics}"
    );
    drop(stalled);
}

/// One frame cannot hold a worker: a batch of runaway calls shares it with
/// the other sockets of that worker, and the rate limit meters a batch as
/// it arrives, handshakes included.
#[tokio::test]
async fn a_batch_is_metered_and_shares_its_worker() {
    let dir = plugins_dir(&["echo", "chat"]);
    let server = TestServer::start(
        dir.path(),
        &["--plugin-deadline-ms", "50", "--rate-limit", "20"],
    );
    // The first and third connections share a worker.
    let mut batcher = server.client().await;
    let _other_worker = server.client().await;
    let mut bystander = server.client().await;
    bystander
        .call("join", json!({"room": "fair", "nick": "b"}))
        .await;
    let batch: Vec<Value> = (0..20)
        .map(|cid| json!({"event": if cid % 2 == 0 { "spin" } else { "echo" }, "data": cid, "cid": 100 + cid}))
        .collect();
    batcher.send(Value::Array(batch)).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = tokio::time::Instant::now();
        bystander.call("members", json!({"room": "fair"})).await;
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        slowest < Duration::from_millis(150),
        "bystander waited {slowest:?}"
    );
    for cid in 100..120 {
        batcher.reply(cid).await;
    }

    // 300 RPCs in one frame, once the bucket is full again: the burst (20)
    // is served, the rest refused.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let batch: Vec<Value> = (0..300)
        .map(|cid| json!({"event": "echo", "data": cid, "cid": 1000 + cid}))
        .collect();
    batcher.send(Value::Array(batch)).await;
    let mut served = 0;
    for cid in 1000..1300 {
        let reply = batcher.reply(cid).await;
        match reply.get("error") {
            None => served += 1,
            Some(error) => assert_eq!(error["name"], "RateLimitError", "{reply}"),
        }
    }
    assert!(
        (18..=25).contains(&served),
        "{served} of 300 served at 20/s"
    );

    // Handshakes again are metered too.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let batch: Vec<Value> = (0..100)
        .map(|cid| json!({"event": "#handshake", "data": {}, "cid": 2000 + cid}))
        .collect();
    batcher.send(Value::Array(batch)).await;
    let mut refused = 0;
    for cid in 2000..2100 {
        if batcher.reply(cid).await.get("error").is_some() {
            refused += 1;
        }
    }
    assert!(refused >= 70, "only {refused} of 100 handshakes refused");

    // A batch past the packet limit is refused whole.
    let mut big = server.client().await;
    let batch: Vec<Value> = (0..1001).map(|_| json!({"event": "ping"})).collect();
    big.send(Value::Array(batch)).await;
    assert_eq!(big.closed().await, Closed::Code(1009));
}

/// An HS256 token with the server's test key.
fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"hostile-test-key").unwrap(),
    )
    .unwrap()
}

/// A token whose `exp` is fractional (what `time.time() + n` writes)
/// expires in the middle of a session as any other.
#[tokio::test]
async fn a_fractional_exp_expires_mid_session() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(
        dir.path(),
        &["--auth-key", "hostile-test-key", "--require-auth"],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut client = server.raw_client().await;
    client
        .send(json!({"event": "#handshake", "data": {"authToken": token(json!({"user": "u", "exp": now + 1.5}))}, "cid": 1}))
        .await;
    let reply = client.reply(1).await;
    assert_eq!(reply["data"]["isAuthenticated"], true, "{reply}");
    assert_eq!(client.call("echo", json!(1)).await, json!(1));
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let reply = client.invoke("echo", json!(2)).await;
    assert_eq!(reply["error"]["name"], "AuthRequiredError", "{reply}");
    assert_eq!(client.next_packet().await["event"], "#removeAuthToken");
}

/// A subscription does not outlive the right to it: after a logout, a
/// dropped token or an expired one, `private:<user>` is revoked (`#kickOut`)
/// and publications there no longer arrive.
#[tokio::test]
async fn subscriptions_are_revoked_with_the_right_to_them() {
    let dir = plugins_dir(&["echo", "auth"]);
    let server = start_with_example_config(dir.path());
    let login = json!({"username": "demo", "password": "demo-password"});
    let mut publisher = server.client().await;
    publisher.call("login", login.clone()).await;

    for drop_right in ["logout", "#removeAuthToken"] {
        let mut client = server.client().await;
        client.call("login", login.clone()).await;
        assert_eq!(client.next_packet().await["event"], "#setAuthToken");
        client.subscribe("private:demo").await;
        publisher
            .invoke("#publish", json!({"channel": "private:demo", "data": 1}))
            .await;
        assert_eq!(client.publication().await.1, json!(1));
        match drop_right {
            "logout" => {
                client.call("logout", json!(null)).await;
            }
            _ => client.transmit("#removeAuthToken", json!(null)).await,
        }
        let mut kicked = false;
        for _ in 0..3 {
            let packet = client.next_packet().await;
            if packet["event"] == "#kickOut" {
                assert_eq!(packet["data"]["channel"], "private:demo", "{packet}");
                kicked = true;
                break;
            }
        }
        assert!(kicked, "no #kickOut after {drop_right}");
        publisher
            .invoke("#publish", json!({"channel": "private:demo", "data": 2}))
            .await;
        client.expect_silence(Duration::from_millis(300)).await;
    }
}

/// Unauthenticated inputs of any size do not reach plugins: a call's data
/// is checked against the plugin's limit before the plugin runs.
#[tokio::test]
async fn data_larger_than_a_plugin_takes_is_refused_before_the_call() {
    let dir = plugins_dir(&["echo", "auth"]);
    let server = start_with_example_config(dir.path());
    let mut client = server.client().await;
    // Three of them fit in one frame (4 MiB), each over what a call takes.
    let password = "p".repeat(1200 * 1024);
    let batch: Vec<Value> = (0..3)
        .map(|cid| json!({"event": "login", "data": {"username": "demo", "password": password}, "cid": 10 + cid}))
        .collect();
    client.send(Value::Array(batch)).await;
    for cid in 10..13 {
        let reply = client.reply(cid).await;
        assert_eq!(reply["error"]["name"], "DataTooLargeError", "{reply}");
    }
    // The plugin was never called, and serves everyone.
    assert_eq!(server.health().await["plugins"][0]["outOfMemory"], 0);
    let reply = client
        .invoke(
            "login",
            json!({"username": "demo", "password": "demo-password"}),
        )
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
}

/// Names have a length limit, and error answers quote at most a short
/// piece of what the client sent.
#[tokio::test]
async fn long_names_are_refused_and_not_echoed() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    let long = "n".repeat(2 * 1024 * 1024);
    let reply = client.invoke(&long, json!(null)).await;
    assert_eq!(reply["error"]["name"], "InvalidActionError");
    assert!(
        reply.to_string().len() < 512,
        "{} bytes",
        reply.to_string().len()
    );
    let reply = client.invoke(&"u".repeat(1000), json!(null)).await;
    assert_eq!(reply["error"]["name"], "UnknownEventError");
    assert!(reply.to_string().len() < 700, "{reply}");
    let reply = client.invoke("#subscribe", json!({"channel": long})).await;
    assert_eq!(reply["error"]["name"], "InvalidActionError");
    let reply = client.invoke("#unsubscribe", json!(long)).await;
    assert!(
        reply.to_string().len() < 700,
        "{} bytes",
        reply.to_string().len()
    );
    assert_eq!(client.call("echo", json!("ok")).await, json!("ok"));
}

/// Upgrade an HTTP connection to WebSocket without ever handshaking; the
/// status line the server answered.
async fn upgrade_only(server: &TestServer, source: &str) -> (String, TcpStream) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    let request = "GET /socketcluster/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                   Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    (String::from_utf8_lossy(&head).into_owned(), stream)
}

/// Connections that never handshake are capped per source address: one
/// address cannot take the server's slots from others, and the refusals
/// are logged once a second, not once each.
#[tokio::test]
async fn connections_that_never_handshake_are_capped_per_address() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &["--max-pending-handshakes-per-ip", "20"]);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..60 {
        let (status, stream) = upgrade_only(&server, "127.0.0.1").await;
        if status.starts_with("HTTP/1.1 101") {
            held.push(stream);
        } else {
            assert!(status.starts_with("HTTP/1.1 503"), "{status}");
            refused += 1;
        }
    }
    assert_eq!((held.len(), refused), (20, 40));
    assert_eq!(server.health().await["pendingHandshakes"], 20);
    // Another address is served.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(server.url(), stream)
        .await
        .unwrap();
    drop(ws);
    let log = server.log();
    let lines = log.matches("refusing an upgrade").count();
    assert!(
        (1..=3).contains(&lines),
        "{lines} log lines for 40 refusals:\n{log}"
    );
    drop(held);
    eventually("the places come back", Duration::from_secs(5), async || {
        server.health().await["pendingHandshakes"] == 0
    })
    .await;
}

/// SIGTERM ends within `--shutdown-timeout-secs` whatever the clients do,
/// with every worker draining at once.
#[tokio::test]
async fn sigterm_ends_in_time_with_stalled_clients_on_every_worker() {
    let dir = plugins_dir(&["echo"]);
    let mut server = TestServer::start(dir.path(), &["-w", "4", "--shutdown-timeout-secs", "2"]);
    let mut stalled = Vec::new();
    let big = "z".repeat(1024 * 1024);
    for _ in 0..8 {
        let mut client = stalled_client(&server).await;
        for cid in 2..6 {
            let packet = json!({"event": "echo", "data": big, "cid": cid}).to_string();
            client.send(Message::text(packet)).await.unwrap();
        }
        stalled.push(client);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    server.signal("TERM");
    let code = server.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert!(
        started.elapsed() < Duration::from_millis(3500),
        "SIGTERM took {:?}",
        started.elapsed()
    );
    drop(stalled);
}

/// A plugin publication is trusted server code: the `echo` example keeps
/// its `broadcast` to channels of its own.
#[tokio::test]
async fn the_echo_example_broadcasts_only_on_its_own_channels() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &["--allow-client-publish", "false"]);
    let mut client = server.client().await;
    let reply = client
        .invoke("broadcast", json!({"channel": "private:demo", "data": 1}))
        .await;
    assert_eq!(reply["error"]["name"], "BroadcastNotAllowed", "{reply}");
}

/// A `Sec-WebSocket-Protocol` that is not a list of tokens is refused, as
/// `ws` does, rather than echoed back altered.
#[tokio::test]
async fn a_subprotocol_that_is_not_a_token_is_refused() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &[]);
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut request = b"GET /socketcluster/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                        Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: "
        .to_vec();
    request.extend_from_slice(&[0xff, 0xfe, b'\r', b'\n', b'\r', b'\n']);
    stream.write_all(&request).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("Invalid Sec-WebSocket-Protocol header"),
        "{answer}"
    );
}

/// A server with `examples/wasmcluster.toml` (what `make run` uses), its
/// data directory in `plugins` rather than the example's `data/`, which
/// another test may hold open, and its static directory found from here
/// (the file's paths are relative to the top of the repository, where
/// `make run` starts the server).
fn start_with_example_config(plugins: &std::path::Path) -> TestServer {
    let config = repo_root().join("examples/wasmcluster.toml");
    let data = plugins.join("data");
    let web = repo_root().join("examples/web");
    TestServer::start(
        plugins,
        &[
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--static-dir",
            web.to_str().unwrap(),
        ],
    )
}
