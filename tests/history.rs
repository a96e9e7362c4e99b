//! Channel history through the real binary, frame by frame: publications
//! of a channel with history carry their position, a subscription that
//! says where it stopped gets exactly what it missed then a report, a
//! restart changes the epoch, expired history cannot be recovered, the
//! memory cap holds, and bad `[channels."..."]` sections stop the start.
//! With `--broker`, the history is in Redis: shared by hosts, kept across
//! a host's restart, new epoch after a flush, and what pub/sub loses is
//! fetched from it. (`tests/js/history.test.js` does the same with the
//! official client, and cuts connections at random across two hosts.)

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::{RedisServer, TestServer, plugins_dir};
use testkit::Client;

const CONFIG: &str = "[channels.\"room:*\"]\nhistory-size = 100\nhistory-ttl-secs = 60\n\n\
                      [channels.\"brief:*\"]\nhistory-size = 100\nhistory-ttl-secs = 1\n";

/// A server whose config file is `config`.
fn server_with(config: &str, extra: &[&str]) -> (tempfile::TempDir, TestServer) {
    let dir = plugins_dir(&["echo"]);
    let file = dir.path().join("wasmcluster.toml");
    std::fs::write(&file, config).unwrap();
    let mut flags = vec!["--config", file.to_str().unwrap()];
    flags.extend_from_slice(extra);
    let server = TestServer::start(dir.path(), &flags);
    (dir, server)
}

/// Subscribe with `#recover` set to `since`; the packets that follow the
/// answer, up to and including the history report.
async fn subscribe_since(client: &mut Client, channel: &str, since: Value) -> Vec<Value> {
    let data = json!({ "channel": channel, "data": { "#recover": since } });
    let reply = client.invoke("#subscribe", data).await;
    assert!(reply.get("error").is_none(), "{reply}");
    let mut packets = Vec::new();
    loop {
        let packet = client.next_packet().await;
        let done = packet["event"] == "wasmcluster:history";
        packets.push(packet);
        if done {
            return packets;
        }
    }
}

async fn publish(client: &mut Client, channel: &str, data: Value) {
    let reply = client
        .invoke("#publish", json!({ "channel": channel, "data": data }))
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
}

#[tokio::test]
async fn a_subscriber_gets_exactly_what_it_missed_then_the_report() {
    let (_dir, server) = server_with(CONFIG, &[]);
    let mut publisher = server.client().await;
    let mut first = server.client().await;
    let report = subscribe_since(&mut first, "room:a", Value::Null).await;
    assert_eq!(report.len(), 1);
    let epoch = report[0]["data"]["epoch"].as_str().unwrap().to_owned();
    assert_eq!(epoch.len(), 16);
    assert_eq!(
        report[0],
        json!({"event": "wasmcluster:history", "data": {
            "channel": "room:a", "recovered": true, "missed": 0, "epoch": epoch, "offset": 0}})
    );
    for n in 1..=3 {
        publish(&mut publisher, "room:a", json!(n)).await;
    }
    for n in 1..=3u64 {
        let packet = first.next_packet().await;
        assert_eq!(
            packet,
            json!({"event": "#publish", "data": {
                "channel": "room:a", "data": n, "offset": n, "epoch": epoch}})
        );
    }

    let mut late = server.client().await;
    let since = json!({ "epoch": epoch, "offset": 1 });
    let packets = subscribe_since(&mut late, "room:a", since).await;
    let offsets: Vec<&Value> = packets[..2].iter().map(|p| &p["data"]["offset"]).collect();
    assert_eq!(offsets, [&json!(2), &json!(3)]);
    assert_eq!(packets[2]["data"]["missed"], 2);
    assert_eq!(packets[2]["data"]["offset"], 3);
    // Live publications follow, with no gap and no repeat.
    publish(&mut publisher, "room:a", json!(4)).await;
    assert_eq!(late.next_packet().await["data"]["offset"], 4);

    // A plain subscription to the same channel asks nothing and gets no
    // report; its publications still carry their position.
    let mut plain = server.client().await;
    plain.subscribe("room:a").await;
    publish(&mut publisher, "room:a", json!(5)).await;
    assert_eq!(plain.next_packet().await["data"]["offset"], 5);

    let health = server.http_get("/metrics", "").await.1;
    assert!(
        health.contains("wasmcluster_history_channels 1"),
        "{health}"
    );
}

#[tokio::test]
async fn a_restart_changes_the_epoch_and_says_the_history_is_gone() {
    let (dir, server) = server_with(CONFIG, &[]);
    let mut publisher = server.client().await;
    publish(&mut publisher, "room:b", json!("before")).await;
    let mut client = server.client().await;
    let report = subscribe_since(&mut client, "room:b", Value::Null).await;
    let old_epoch = report[0]["data"]["epoch"].clone();
    drop(server);

    let file = dir.path().join("wasmcluster.toml");
    let server = TestServer::start(dir.path(), &["--config", file.to_str().unwrap()]);
    let mut client = server.client().await;
    let since = json!({ "epoch": old_epoch, "offset": 1 });
    let report = subscribe_since(&mut client, "room:b", since).await;
    assert_eq!(report.len(), 1);
    let data = &report[0]["data"];
    assert_eq!(
        (&data["recovered"], &data["reason"]),
        (&json!(false), &json!("epoch-changed"))
    );
    assert_ne!(data["epoch"], old_epoch);
    assert_eq!(data["offset"], 0);
}

#[tokio::test]
async fn expired_history_cannot_be_recovered() {
    let (_dir, server) = server_with(CONFIG, &[]);
    let mut publisher = server.client().await;
    let mut client = server.client().await;
    let report = subscribe_since(&mut client, "brief:c", Value::Null).await;
    let epoch = report[0]["data"]["epoch"].clone();
    publish(&mut publisher, "brief:c", json!(1)).await;
    publish(&mut publisher, "brief:c", json!(2)).await;
    // history-ttl-secs = 1, swept every second.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let metrics = server.http_get("/metrics", "").await.1;
    assert!(
        metrics.contains("wasmcluster_history_stored_bytes 0"),
        "{metrics}"
    );
    let mut late = server.client().await;
    let since = json!({ "epoch": epoch, "offset": 0 });
    let report = subscribe_since(&mut late, "brief:c", since).await;
    assert_eq!(report[0]["data"]["reason"], "too-old", "{report:?}");
    assert_eq!(report[0]["data"]["offset"], 2);
}

#[tokio::test]
async fn the_memory_cap_holds_across_channels() {
    let (_dir, server) = server_with(CONFIG, &["--history-max-bytes", "2000"]);
    let mut publisher = server.client().await;
    for n in 0..200 {
        publish(
            &mut publisher,
            &format!("room:{}", n % 7),
            json!("x".repeat(50)),
        )
        .await;
    }
    let metrics = server.http_get("/metrics", "").await.1;
    let stored: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("wasmcluster_history_stored_bytes "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(stored <= 2000 && stored > 1500, "{stored} bytes kept");
}

#[test]
fn bad_channel_sections_stop_the_start() {
    let dir = plugins_dir(&["echo"]);
    let file = dir.path().join("wasmcluster.toml");
    let start = |config: &str, extra: &[&str]| {
        std::fs::write(&file, config).unwrap();
        let mut flags = vec!["--config", file.to_str().unwrap()];
        flags.extend_from_slice(extra);
        TestServer::try_start(dir.path(), &flags)
            .err()
            .expect("the server started")
    };
    let log = start(
        "port = 0\n\n[channels.\"room:*\"]\nhistory-size = 0\nhistory-ttl-secs = 5\n",
        &[],
    );
    assert!(
        log.contains("wasmcluster.toml:3")
            && log.contains("history-size must be between 1 and 100000"),
        "{log}"
    );
    let log = start("[channels.\"room:*\"]\nhistory-size = 5\n", &[]);
    assert!(log.contains("missing field `history-ttl-secs`"), "{log}");
    let log = start(
        "[channels.\"room:*\"]\nhistory-size = 5\nhistory-ttl-secs = 5\nsize = 1\n",
        &[],
    );
    assert!(log.contains("unknown field `size`"), "{log}");
}

/// `ann` joins `chat`'s room `lobby` and says "one", "two", "three".
async fn join_and_say_three(client: &mut Client) {
    client
        .call("join", json!({ "room": "lobby", "nick": "ann" }))
        .await;
    for text in ["one", "two", "three"] {
        client
            .call("say", json!({ "room": "lobby", "text": text }))
            .await;
    }
}

/// `chat`'s RPC `history` with limit 2 answers the last two of
/// [`join_and_say_three`]'s events.
async fn last_two_are_two_and_three(client: &mut Client) {
    let history = client
        .call("history", json!({ "room": "lobby", "limit": 2 }))
        .await;
    assert_eq!(
        history,
        json!([
            {"type": "say", "nick": "ann", "text": "two"},
            {"type": "say", "nick": "ann", "text": "three"},
        ])
    );
}

/// `chat`'s RPC `history` reads its room's channel history through the
/// plugin host function `channel-history`; without history for the room's
/// channel it says so.
#[tokio::test]
async fn chat_answers_a_rooms_last_messages_from_the_channel_history() {
    let dir = plugins_dir(&["chat"]);
    let file = dir.path().join("wasmcluster.toml");
    std::fs::write(
        &file,
        "[channels.\"room:*\"]\nhistory-size = 3\nhistory-ttl-secs = 60\n",
    )
    .unwrap();
    let server = TestServer::start(dir.path(), &["--config", file.to_str().unwrap()]);
    let mut client = server.client().await;
    join_and_say_three(&mut client).await;
    last_two_are_two_and_three(&mut client).await;
    // history-size = 3: the join event has gone, the three messages stay.
    let all = client.call("history", json!({ "room": "lobby" })).await;
    assert_eq!(all.as_array().unwrap().len(), 3);

    let plain = TestServer::start(dir.path(), &[]);
    let mut client = plain.client().await;
    let reply = client.invoke("history", json!({ "room": "lobby" })).await;
    assert_eq!(reply["error"]["name"], "NoHistoryError", "{reply}");
}

/// A host with history under `CONFIG`, on `redis`.
fn redis_host(redis: &RedisServer, dir: &tempfile::TempDir) -> TestServer {
    let file = dir.path().join("wasmcluster.toml");
    std::fs::write(&file, CONFIG).unwrap();
    let config = file.to_str().unwrap();
    TestServer::start(dir.path(), &["--config", config, "--broker", &redis.url()])
}

/// Two hosts with history under `CONFIG`, on one Redis.
fn two_redis_hosts() -> (RedisServer, tempfile::TempDir, TestServer, TestServer) {
    let redis = RedisServer::start();
    let dir = plugins_dir(&["echo"]);
    let a = redis_host(&redis, &dir);
    let b = redis_host(&redis, &dir);
    (redis, dir, a, b)
}

/// The next `count` publications' `(offset, data)`, checking their channel
/// and epoch.
async fn offsets_and_data(
    client: &mut Client,
    channel: &str,
    epoch: &Value,
    count: usize,
) -> Vec<(u64, Value)> {
    let mut seen = Vec::new();
    for _ in 0..count {
        let packet = client.next_packet().await;
        assert_eq!(packet["event"], "#publish", "{packet}");
        assert_eq!(packet["data"]["channel"], channel, "{packet}");
        assert_eq!(&packet["data"]["epoch"], epoch, "{packet}");
        let offset = packet["data"]["offset"].as_u64().unwrap();
        seen.push((offset, packet["data"]["data"].clone()));
    }
    seen
}

/// With Redis, every host numbers a channel's publications in one stream:
/// subscribers on either host (the publisher's included) get each once, in
/// order, with the same position; a subscriber recovers on another host,
/// and on a host that was restarted.
#[tokio::test]
async fn history_in_redis_is_shared_by_hosts_and_outlives_a_host() {
    let (redis, dir, a, b) = two_redis_hosts();
    let mut on_a = a.client().await;
    let report = subscribe_since(&mut on_a, "room:r", Value::Null).await;
    let epoch = report[0]["data"]["epoch"].clone();
    assert_eq!(report[0]["data"]["offset"], 0);
    let mut on_b = b.client().await;
    let report = subscribe_since(&mut on_b, "room:r", Value::Null).await;
    assert_eq!(
        report[0]["data"]["epoch"], epoch,
        "one stream for both hosts"
    );

    let mut publisher = b.client().await;
    for n in 1..=3 {
        publish(&mut publisher, "room:r", json!(n)).await;
    }
    let expected: Vec<(u64, Value)> = (1..=3).map(|n| (n, json!(n))).collect();
    assert_eq!(
        offsets_and_data(&mut on_a, "room:r", &epoch, 3).await,
        expected
    );
    assert_eq!(
        offsets_and_data(&mut on_b, "room:r", &epoch, 3).await,
        expected
    );
    on_b.expect_silence(Duration::from_millis(200)).await;

    // Stopped at 1 on host B, comes back on host A.
    let mut moved = a.client().await;
    let since = json!({ "epoch": epoch, "offset": 1 });
    let packets = subscribe_since(&mut moved, "room:r", since).await;
    let offsets: Vec<&Value> = packets.iter().map(|p| &p["data"]["offset"]).collect();
    assert_eq!(offsets, [&json!(2), &json!(3), &json!(3)]);
    assert_eq!(packets[2]["data"]["recovered"], true);

    // Host A restarts; publications go on meanwhile on B.
    drop((a, on_a, moved));
    publish(&mut publisher, "room:r", json!(4)).await;
    offsets_and_data(&mut on_b, "room:r", &epoch, 1).await;
    let a = redis_host(&redis, &dir);
    let mut back = a.client().await;
    let since = json!({ "epoch": epoch, "offset": 0 });
    let packets = subscribe_since(&mut back, "room:r", since).await;
    assert_eq!(packets.len(), 5, "{packets:?}");
    assert_eq!(packets[3]["data"]["data"], 4);
    assert_eq!(packets[4]["data"]["missed"], 4);
    publish(&mut publisher, "room:r", json!(5)).await;
    assert_eq!(
        offsets_and_data(&mut back, "room:r", &epoch, 1).await,
        [(5, json!(5))]
    );
}

/// In Redis too, a publication past its TTL is never served: a client
/// that stopped before it is told `too-old`.
#[tokio::test]
async fn expired_history_in_redis_cannot_be_recovered() {
    let redis = RedisServer::start();
    let dir = plugins_dir(&["echo"]);
    let host = redis_host(&redis, &dir);
    let mut publisher = host.client().await;
    let mut client = host.client().await;
    let report = subscribe_since(&mut client, "brief:c", Value::Null).await;
    let epoch = report[0]["data"]["epoch"].clone();
    publish(&mut publisher, "brief:c", json!(1)).await;
    publish(&mut publisher, "brief:c", json!(2)).await;
    // Acknowledged publications are numbered in Redis a moment later.
    offsets_and_data(&mut client, "brief:c", &epoch, 2).await;
    let mut fresh = host.client().await;
    let since = json!({ "epoch": epoch, "offset": 0 });
    let report = subscribe_since(&mut fresh, "brief:c", since.clone()).await;
    assert_eq!(report.len(), 3, "kept while young: {report:?}");
    // history-ttl-secs = 1.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut late = host.client().await;
    let report = subscribe_since(&mut late, "brief:c", since).await;
    assert_eq!(report[0]["data"]["reason"], "too-old", "{report:?}");
    assert_eq!(report[0]["data"]["offset"], 2);
}

/// Flushing Redis loses the history: the next publication starts a new
/// epoch and a client that stopped in the old one is told.
#[tokio::test]
async fn a_flushed_redis_starts_a_new_epoch() {
    let redis = RedisServer::start();
    let dir = plugins_dir(&["echo"]);
    let host = redis_host(&redis, &dir);
    let mut publisher = host.client().await;
    let mut client = host.client().await;
    subscribe_since(&mut client, "room:f", Value::Null).await;
    publish(&mut publisher, "room:f", json!("before")).await;
    let old = client.next_packet().await["data"].clone();
    assert_eq!(old["offset"], 1);
    redis.cli(&["FLUSHALL"]);
    publish(&mut publisher, "room:f", json!("after")).await;
    let live = client.next_packet().await;
    assert_ne!(live["data"]["epoch"], old["epoch"]);
    assert_eq!(live["data"]["offset"], 1);

    let mut late = host.client().await;
    let since = json!({ "epoch": old["epoch"], "offset": 1 });
    let report = subscribe_since(&mut late, "room:f", since).await;
    let data = &report[0]["data"];
    assert_eq!(
        (&data["recovered"], &data["reason"]),
        (&json!(false), &json!("epoch-changed"))
    );
    assert_eq!(
        (&data["epoch"], &data["offset"]),
        (&live["data"]["epoch"], &json!(1))
    );
}

/// Publications Redis pub/sub drops while a host's subscriber connection
/// is down are fetched from the history when it is back: the subscribers
/// there still see every offset once, in order.
#[tokio::test]
async fn what_pub_sub_loses_is_fetched_from_the_history() {
    let (redis, _dir, a, b) = two_redis_hosts();
    let mut subscriber = b.client().await;
    let report = subscribe_since(&mut subscriber, "room:p", Value::Null).await;
    let epoch = report[0]["data"]["epoch"].clone();
    let mut publisher = a.client().await;
    const COUNT: u64 = 300;
    for n in 1..=COUNT {
        publish(&mut publisher, "room:p", json!(n)).await;
        if n == 100 {
            // Both hosts' pub/sub connections drop; they reconnect after
            // 100 ms, while publications go on.
            redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let seen = offsets_and_data(&mut subscriber, "room:p", &epoch, COUNT as usize).await;
    let expected: Vec<(u64, Value)> = (1..=COUNT).map(|n| (n, json!(n))).collect();
    assert_eq!(seen, expected);
    subscriber.expect_silence(Duration::from_millis(200)).await;
    let broker = &b.health().await["broker"];
    assert_eq!(broker["reconnects"], 1, "{broker}");
    assert!(
        broker["history_refetched"].as_u64().unwrap() > 0,
        "{broker}"
    );
}

/// Redis replicates asynchronously: a failover can lose a channel's last
/// publications after a host delivered them, and the new primary would
/// give their offsets to other publications. Simulated on one Redis: the
/// last two entries and the last offset are taken back, and the pub/sub
/// connections cut. The host that delivered them notices when it catches
/// up, and the channel starts a new epoch: the next publication arrives
/// in it (not dropped as an offset already delivered), and a client that
/// recovers from the old position is told `epoch-changed`.
#[tokio::test]
async fn a_history_that_lost_delivered_publications_starts_a_new_epoch() {
    let (redis, _dir, a, b) = two_redis_hosts();
    let mut subscriber = b.client().await;
    let report = subscribe_since(&mut subscriber, "room:w", Value::Null).await;
    let old = report[0]["data"]["epoch"].clone();
    let mut publisher = a.client().await;
    for n in 1..=3 {
        publish(&mut publisher, "room:w", json!(n)).await;
    }
    offsets_and_data(&mut subscriber, "room:w", &old, 3).await;

    redis.cli(&["XDEL", "wasmcluster:hist:{room:w}", "2-0", "3-0"]);
    redis.cli(&["HSET", "wasmcluster:histmeta:{room:w}", "offset", "1"]);
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.health().await["broker"]["history_lost"] != 1 {
        assert!(tokio::time::Instant::now() < deadline, "{}", b.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        b.log().contains("history lost publications delivered here"),
        "{}",
        b.log()
    );

    publish(&mut publisher, "room:w", json!("after")).await;
    let live = subscriber.next_packet().await;
    assert_eq!(live["data"]["data"], "after", "{live}");
    assert_eq!(live["data"]["offset"], 1, "{live}");
    assert_ne!(live["data"]["epoch"], old, "{live}");

    let mut late = a.client().await;
    let since = json!({ "epoch": old, "offset": 3 });
    let report = subscribe_since(&mut late, "room:w", since).await;
    assert_eq!(report[0]["data"]["reason"], "epoch-changed", "{report:?}");
    assert_eq!(report[0]["data"]["epoch"], live["data"]["epoch"]);
}

/// Last-value channels and the plugin host function work the same with
/// history in Redis; while Redis is away, a recovering subscriber is told
/// the history is unavailable rather than left waiting.
#[tokio::test]
async fn last_value_plugins_and_outages_with_history_in_redis() {
    let mut redis = RedisServer::start();
    let dir = plugins_dir(&["chat"]);
    let file = dir.path().join("wasmcluster.toml");
    let config = "[channels.\"room:*\"]\nhistory-size = 3\nhistory-ttl-secs = 60\n\n\
                  [channels.\"price:*\"]\nhistory-size = 1\nhistory-ttl-secs = 60\nlast-value = true\n";
    std::fs::write(&file, config).unwrap();
    let flags = ["--config", file.to_str().unwrap(), "--broker", &redis.url()];
    let a = TestServer::start(dir.path(), &flags);
    let b = TestServer::start(dir.path(), &flags);

    // Publications are acknowledged before Redis numbers them: the
    // watcher sees when they are all in the history.
    let mut watcher = a.client().await;
    watcher.subscribe("room:lobby").await;
    watcher.subscribe("price:x").await;
    let mut client = a.client().await;
    join_and_say_three(&mut client).await;
    for _ in 0..4 {
        watcher.publication().await;
    }
    let mut other = b.client().await;
    last_two_are_two_and_three(&mut other).await;

    for price in [10, 11] {
        publish(&mut client, "price:x", json!(price)).await;
        watcher.publication().await;
    }
    let mut newcomer = b.client().await;
    newcomer.subscribe("price:x").await;
    let latest = newcomer.next_packet().await;
    assert_eq!(
        (&latest["data"]["data"], &latest["data"]["offset"]),
        (&json!(11), &json!(2))
    );
    newcomer.expect_silence(Duration::from_millis(200)).await;

    redis.kill();
    let mut late = a.client().await;
    let since = json!({ "epoch": latest["data"]["epoch"], "offset": 1 });
    let report = subscribe_since(&mut late, "price:x", since).await;
    let data = &report[0]["data"];
    assert_eq!(
        (&data["recovered"], &data["reason"]),
        (&json!(false), &json!("unavailable")),
        "{data}"
    );
    let reply = other.invoke("history", json!({ "room": "lobby" })).await;
    assert_eq!(reply["error"]["name"], "HistoryUnavailableError", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot be read now"),
        "{reply}"
    );
}
