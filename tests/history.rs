//! Channel history through the real binary, frame by frame: publications
//! of a channel with history carry their position, a subscription that
//! says where it stopped gets exactly what it missed then a report, a
//! restart changes the epoch, expired history cannot be recovered, the
//! memory cap holds, and bad `[channels."..."]` sections stop the start.
//! (`tests/js/history.test.js` does the same with the official client.)

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::{TestServer, plugins_dir};
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
fn bad_channel_sections_and_history_with_a_broker_stop_the_start() {
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
    let log = start(
        "[channels.\"room:*\"]\nhistory-size = 5\nhistory-ttl-secs = 5\n",
        &["--broker", "redis://127.0.0.1:1/0"],
    );
    assert!(log.contains("cannot be used with --broker"), "{log}");
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
    client
        .call("join", json!({ "room": "lobby", "nick": "ann" }))
        .await;
    for text in ["one", "two", "three"] {
        client
            .call("say", json!({ "room": "lobby", "text": text }))
            .await;
    }
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
    // history-size = 3: the join event has gone, the three messages stay.
    let all = client.call("history", json!({ "room": "lobby" })).await;
    assert_eq!(all.as_array().unwrap().len(), 3);

    let plain = TestServer::start(dir.path(), &[]);
    let mut client = plain.client().await;
    let reply = client.invoke("history", json!({ "room": "lobby" })).await;
    assert_eq!(reply["error"]["name"], "NoHistoryError", "{reply}");
}
