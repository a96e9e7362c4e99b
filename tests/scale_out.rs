//! Several hosts behind one real `redis-server`, through the real binary:
//! publications reach every host exactly once, the plugin KV is shared, a
//! Redis outage interrupts only cross-host delivery and recovers by itself,
//! and a host that dies leaves the others serving.

mod support;

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::Duration;
use support::gate::Gate;
use support::{RedisServer, TestServer, plugins_dir};
use testkit::Client;

const KEY: &str = "scale-out-test-key";

fn host(redis: &RedisServer, dir: &tempfile::TempDir) -> TestServer {
    TestServer::start(dir.path(), &["--broker", &redis.url(), "--auth-key", KEY])
}

/// How many hosts listen to `channel` in Redis (`PUBSUB NUMSUB`).
fn hosts_listening(redis: &RedisServer, channel: &str) -> i64 {
    let name = format!("wasmcluster:ch:{channel}");
    let command = format!(
        "*3\r\n$6\r\nPUBSUB\r\n$6\r\nNUMSUB\r\n${}\r\n{name}\r\n",
        name.len()
    );
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", redis.port)) else {
        return -1;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    stream.write_all(command.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let mut buffer = [0u8; 256];
    while !reply.ends_with(b"\r\n") || reply.iter().filter(|&&b| b == b'\n').count() < 4 {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return -1,
            Ok(n) => reply.extend_from_slice(&buffer[..n]),
        }
    }
    let text = String::from_utf8(reply).unwrap();
    text.lines()
        .rev()
        .find_map(|line| line.strip_prefix(':'))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(-1)
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn ready(server: &TestServer) -> bool {
    server.http_get("/readyz", "").await.0 == "HTTP/1.1 200 OK"
}

async fn wait_ready(server: &TestServer, expected: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while ready(server).await != expected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyz never became {expected}:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publish on `channel` as a client, acked.
async fn publish(client: &mut Client, channel: &str, data: Value) {
    let reply = client
        .invoke("#publish", json!({"channel": channel, "data": data}))
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
}

/// The data of the next `count` publications a client receives.
async fn received(client: &mut Client, count: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..count {
        let (_, data) = client.publication().await;
        assert!(seen.insert(data.to_string()), "received {data} twice");
    }
    seen
}

#[tokio::test]
async fn publications_reach_every_host_exactly_once() {
    let redis = RedisServer::start();
    let dir = plugins_dir(&["echo"]);
    let hosts: Vec<TestServer> = (0..3).map(|_| host(&redis, &dir)).collect();
    let mut subscribers = Vec::new();
    for host in &hosts {
        let mut client = host.client().await;
        client.subscribe("broadcast:news").await;
        subscribers.push(client);
    }
    // No waiting: a subscription is answered once its host listens to the
    // channel in Redis, so publications made after the answers reach it.
    assert_eq!(hosts_listening(&redis, "broadcast:news"), 3);

    for (index, host) in hosts.iter().enumerate() {
        let mut publisher = host.client().await;
        publish(&mut publisher, "broadcast:news", json!({"from": index})).await;
    }
    // A plugin publishing on one host reaches the others too.
    let mut client = hosts[1].client().await;
    client
        .call(
            "broadcast",
            json!({"channel": "broadcast:news", "data": {"from": "plugin"}}),
        )
        .await;
    let (_, metrics) = hosts[1].http_get("/metrics", "").await;
    assert!(
        metrics.contains("wasmcluster_publications_total{source=\"plugin\"} 1\n"),
        "{metrics}"
    );

    let expected: BTreeSet<String> = [
        r#"{"from":0}"#,
        r#"{"from":1}"#,
        r#"{"from":2}"#,
        r#"{"from":"plugin"}"#,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for subscriber in &mut subscribers {
        assert_eq!(received(subscriber, 4).await, expected);
        subscriber.expect_silence(Duration::from_millis(300)).await;
    }

    // The last subscriber of a host leaving makes that host stop listening.
    let last = subscribers.pop().unwrap();
    last.close(1000).await;
    wait_until("two hosts listening", || {
        hosts_listening(&redis, "broadcast:news") == 2
    })
    .await;
}

#[tokio::test]
async fn a_publication_right_after_a_subscription_answer_reaches_the_subscriber() {
    let redis = RedisServer::start();
    let dir = plugins_dir(&["echo"]);
    let near = host(&redis, &dir);
    let far = host(&redis, &dir);
    let mut subscriber = near.client().await;
    let mut publisher = far.client().await;
    // A fresh channel each time, so that each subscription is its host's
    // first and has to reach Redis before it is answered.
    for round in 0..50 {
        let channel = format!("fresh-{round}");
        subscriber.subscribe(&channel).await;
        publisher
            .send(json!({"event": "#publish", "data": {"channel": channel, "data": round}}))
            .await;
        assert_eq!(subscriber.publication().await, (channel, json!(round)));
    }
}

#[tokio::test]
async fn the_plugin_key_value_store_is_shared_by_every_host() {
    let redis = RedisServer::start();
    let dir = plugins_dir(&["presence"]);
    let first = host(&redis, &dir);
    let second = host(&redis, &dir);
    let mut alice = first.client().await;
    alice
        .call("presence.join", json!({"room": "lobby", "name": "alice"}))
        .await;
    support::check_presence_kept(&second).await;
}

#[tokio::test]
async fn a_redis_outage_interrupts_only_cross_host_delivery() {
    let mut redis = RedisServer::start();
    let dir = plugins_dir(&["echo"]);
    let first = host(&redis, &dir);
    let second = host(&redis, &dir);
    let mut near = first.client().await;
    near.subscribe("news").await;
    let mut far = second.client().await;
    far.subscribe("news").await;
    // Each host's first subscription is answered once Redis has it.
    assert_eq!(hosts_listening(&redis, "news"), 2);
    assert!(ready(&first).await);

    let (_, metrics) = first.http_get("/metrics", "").await;
    assert!(
        metrics.contains("\nwasmcluster_broker_connected 1\n"),
        "{metrics}"
    );
    redis.kill();
    wait_ready(&first, false).await;
    let (_, body) = first.http_get("/readyz", "").await;
    assert!(body.contains(r#""brokerConnected":false"#), "{body}");
    let (_, metrics) = first.http_get("/metrics", "").await;
    assert!(
        metrics.contains("\nwasmcluster_broker_connected 0\n"),
        "{metrics}"
    );
    // Local delivery goes on; the other host does not get it (at most once).
    let mut publisher = first.client().await;
    publish(&mut publisher, "news", json!("during the outage")).await;
    assert_eq!(near.publication().await.1, json!("during the outage"));
    far.expect_silence(Duration::from_millis(300)).await;

    redis.restart();
    wait_ready(&first, true).await;
    wait_ready(&second, true).await;
    wait_until("both hosts listening again", || {
        hosts_listening(&redis, "news") == 2
    })
    .await;
    let mut publisher = second.client().await;
    publish(&mut publisher, "news", json!("after the outage")).await;
    assert_eq!(near.publication().await.1, json!("after the outage"));
    // The first host sends what failed again for a few seconds, so the
    // publication made during the outage may reach the other host once
    // Redis is back, if that host listens again first: at most once, and
    // before the later one.
    let mut arrived = vec![far.publication().await.1];
    if arrived[0] == json!("during the outage") {
        arrived.push(far.publication().await.1);
    }
    assert_eq!(
        arrived.last(),
        Some(&json!("after the outage")),
        "{arrived:?}"
    );
    assert!(
        first.log().contains("reconnected to Redis"),
        "{}",
        first.log()
    );
}

#[tokio::test]
async fn a_publication_made_while_its_host_lost_redis_arrives_once_it_is_back() {
    let redis = RedisServer::start();
    // Only the publishing host's connections go through the gate: the
    // other host listens all along.
    let gate = Gate::start(redis.port);
    let dir = plugins_dir(&["echo"]);
    let gated_url = format!("redis://127.0.0.1:{}/0", gate.port);
    let sender = TestServer::start(dir.path(), &["--broker", &gated_url, "--auth-key", KEY]);
    let receiver = host(&redis, &dir);
    let mut listener = receiver.client().await;
    listener.subscribe("resend").await;
    let mut publisher = sender.client().await;
    publish(&mut publisher, "resend", json!(1)).await;
    assert_eq!(listener.publication().await.1, json!(1));

    gate.close();
    wait_ready(&sender, false).await;
    publish(&mut publisher, "resend", json!(2)).await;
    listener.expect_silence(Duration::from_secs(1)).await;
    // Within the publisher's patience (5 s) the failed batch is sent again
    // and arrives, once.
    gate.open();
    assert_eq!(listener.publication().await.1, json!(2));
    wait_ready(&sender, true).await;
    publish(&mut publisher, "resend", json!(3)).await;
    assert_eq!(listener.publication().await.1, json!(3));
}

#[tokio::test]
async fn a_host_that_dies_leaves_the_others_serving() {
    let redis = RedisServer::start();
    let dir = plugins_dir(&["echo"]);
    let first = host(&redis, &dir);
    let doomed = host(&redis, &dir);
    let third = host(&redis, &dir);
    let mut listener = third.client().await;
    listener.subscribe("news").await;
    let mut victim = doomed.client().await;
    victim.subscribe("news").await;
    assert_eq!(hosts_listening(&redis, "news"), 2);

    drop(victim);
    drop(doomed);
    let mut publisher = first.client().await;
    publish(&mut publisher, "news", json!("still here")).await;
    assert_eq!(listener.publication().await.1, json!("still here"));
    wait_until("one host listening", || {
        hosts_listening(&redis, "news") == 1
    })
    .await;
}

#[test]
fn an_unreachable_broker_is_a_clear_start_up_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = plugins_dir(&["echo"]);
    let url = format!("redis://:hunter2@127.0.0.1:{port}/0");
    let log = TestServer::try_start(dir.path(), &["--broker", &url])
        .err()
        .expect("started without its broker");
    assert!(
        log.contains("cannot reach the broker at redis://:***@127.0.0.1"),
        "{log}"
    );
    assert!(!log.contains("hunter2"), "the password leaked: {log}");
    let log = TestServer::try_start(dir.path(), &["--broker", "http://nope"])
        .err()
        .unwrap();
    assert!(log.contains("invalid --broker URL"), "{log}");
}

/// A publication that reached Redis twice (a command sent again after its
/// answer was lost with the connection) reaches each subscriber once:
/// plain ones by the sending host's number, those of a channel with history
/// because the publish script numbers them once. Sent here as another host
/// would send them.
#[tokio::test]
async fn a_publication_redis_got_twice_is_delivered_once() {
    let redis = RedisServer::start();
    let dir = plugins_dir(&["echo"]);
    let config = dir.path().join("wasmcluster.toml");
    std::fs::write(
        &config,
        "[channels.\"hist:*\"]\nhistory-size = 100\nhistory-ttl-secs = 60\n",
    )
    .unwrap();
    let server = TestServer::start(
        dir.path(),
        &[
            "--broker",
            &redis.url(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let mut client = server.client().await;
    client.subscribe("room").await;
    client.subscribe("hist:room").await;

    let other_host = "0123456789abcdef";
    let publish_script = concat!(
        include_str!("../host/src/broker/redis/epoch.lua"),
        "\n",
        include_str!("../host/src/broker/redis/publish.lua")
    );
    for (number, n) in [(7, 1), (7, 1), (8, 2), (8, 2)] {
        let data = format!("{{\"n\":{n}}}");
        redis.cli(&[
            "PUBLISH",
            "wasmcluster:ch:room",
            &format!("{other_host}:{number}\n{data}"),
        ]);
        redis.cli(&[
            "EVAL",
            publish_script,
            "2",
            "wasmcluster:hist:{hist:room}",
            "wasmcluster:histmeta:{hist:room}",
            "wasmcluster:ch:hist:room",
            &data,
            "100",
            "60000",
            "86400000",
            "e1",
            "PUBLISH",
            other_host,
            &number.to_string(),
        ]);
    }

    let mut seen = Vec::new();
    while let Ok(packet) =
        tokio::time::timeout(Duration::from_millis(500), client.next_packet()).await
    {
        let data = &packet["data"];
        seen.push((
            data["channel"].as_str().unwrap().to_owned(),
            data["data"]["n"].as_u64().unwrap(),
            data["offset"].as_u64(),
        ));
    }
    assert_eq!(
        seen,
        [
            ("room".to_owned(), 1, None),
            ("hist:room".to_owned(), 1, Some(1)),
            ("room".to_owned(), 2, None),
            ("hist:room".to_owned(), 2, Some(2)),
        ]
    );
    assert_eq!(
        redis.cli(&["XLEN", "wasmcluster:hist:{hist:room}"]).trim(),
        "2"
    );
}
