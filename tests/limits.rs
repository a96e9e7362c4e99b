//! Limits and backpressure through the real binary: a client that stops
//! reading is disconnected without growing the server's memory, and the
//! channel, rate and connection limits answer with their documented errors.

mod support;

use serde_json::json;
use std::time::Duration;
use support::{TestServer, plugins_dir};
use testkit::{Client, Closed};

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_and_memory_stays_bounded() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &["--max-queued-messages", "64"]);
    let mut stalled = server.client().await;
    stalled.subscribe("flood").await;
    // From here on `stalled` reads nothing: the kernel buffers fill, then
    // the server's queue for it.
    let mut publisher = server.client().await;
    let mut bystander = server.client().await;
    assert_eq!(server.connections().await, 3);
    let before = server.memory("VmRSS");

    let payload = "x".repeat(16 * 1024);
    for batch in 0..40 {
        for _ in 0..100 {
            publisher
                .send(json!({"event": "#publish", "data": {"channel": "flood", "data": payload}}))
                .await;
        }
        // Everyone else is still served while the flood goes on.
        assert_eq!(bystander.call("echo", json!(batch)).await, json!(batch));
    }
    // 4,000 publications of 16 KiB (64 MiB) went to a client that reads
    // nothing; it was closed and the server did not keep them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.connections().await != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled client is still connected:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grown = server.memory("VmRSS").saturating_sub(before);
    assert!(
        grown < 24 * 1024 * 1024,
        "RSS grew by {} MiB",
        grown / 1024 / 1024
    );
    assert!(server.log().contains("4100"), "{}", server.log());
    assert_eq!(publisher.call("echo", json!("ok")).await, json!("ok"));
    drop(stalled);
}

#[tokio::test]
async fn the_channel_limit_answers_as_socketcluster() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &["--socket-channel-limit", "3"]);
    let mut client = server.client().await;
    for channel in ["a", "b", "c"] {
        client.subscribe(channel).await;
    }
    let reply = client.invoke("#subscribe", json!({"channel": "d"})).await;
    assert_eq!(
        reply["error"],
        json!({
            "name": "BrokerError",
            "message": format!(
                "Failed to subscribe socket to the d channel - InvalidActionError: Socket {} \
                 tried to exceed the channel subscription limit of 3",
                client.id
            )
        })
    );
    // Making room allows it again.
    client.call("#unsubscribe", json!("a")).await;
    client.subscribe("d").await;
}

#[tokio::test]
async fn messages_over_the_rate_limit_are_refused() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(
        dir.path(),
        &["--rate-limit", "2", "--rate-limit-burst", "5"],
    );
    let mut client = server.client().await;
    // A burst of 10 RPCs in one frame: 5 pass, 5 are refused.
    let batch: Vec<_> = (0..10)
        .map(|n| json!({"event": "echo", "data": n, "cid": 100 + n}))
        .collect();
    client.send(json!(batch)).await;
    let mut refused = 0;
    for n in 0..10 {
        let reply = client.reply(100 + n).await;
        match reply.get("error") {
            None => assert_eq!(reply["data"], n),
            Some(error) => {
                assert_eq!(error["name"], "RateLimitError", "{reply}");
                assert_eq!(error["retryAfterMs"], 500, "{reply}");
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 5);
    // Tokens come back with time; the socket was not closed.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(client.call("echo", json!("again")).await, json!("again"));
}

#[tokio::test]
async fn upgrades_beyond_the_connection_limit_get_503() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &["--max-connections", "2"]);
    let first = server.client().await;
    let _second = server.client().await;
    let upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let (status, _) = server.http_get("/socketcluster/", upgrade).await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    // Plain HTTP is still served, and a freed slot is taken again.
    let (status, _) = server.http_get("/healthz", "").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    first.close(1000).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut client = Client::connect(&server.url()).await;
        client
            .send(json!({"event": "#handshake", "data": {}, "cid": 1}))
            .await;
        match client.next_text().await {
            Ok(_) => break,
            Err(Closed::Dropped | Closed::Code(_)) => {
                assert!(tokio::time::Instant::now() < deadline);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
