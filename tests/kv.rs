//! The plugins' key-value store through the real binary, on each of its
//! three engines (in memory, embedded in `--data-dir`, a real
//! `redis-server`), driven by the `store` fixture: compare-and-set never
//! loses an update (from both workers, and with Redis from two hosts),
//! batches apply all or none around a plugin fault, keys expire, listing
//! pages stay exact while keys are added, quotas refuse and change nothing,
//! and on the embedded engine a `kill -9` in a write burst loses no
//! acknowledged write.

mod support;

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{RedisServer, TestServer, fixture_plugin};
use testkit::Client;

/// Which engine keeps the values, and what it needs to run.
enum Engine {
    Memory,
    Embedded(tempfile::TempDir),
    Redis(RedisServer),
}

impl Engine {
    fn memory() -> Self {
        Engine::Memory
    }
    fn embedded() -> Self {
        Engine::Embedded(tempfile::tempdir().unwrap())
    }
    fn redis() -> Self {
        Engine::Redis(RedisServer::start())
    }

    /// The flags that select it.
    fn flags(&self) -> Vec<String> {
        match self {
            Engine::Memory => Vec::new(),
            Engine::Embedded(dir) => vec!["--data-dir".into(), dir.path().display().to_string()],
            Engine::Redis(redis) => vec!["--broker".into(), redis.url()],
        }
    }

    /// The name `/healthz` reports.
    fn name(&self) -> &'static str {
        match self {
            Engine::Memory => "memory",
            Engine::Embedded(_) => "embedded",
            Engine::Redis(_) => "redis",
        }
    }
}

/// A plugins directory with the `store` fixture.
fn store_plugins() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture_plugin("store"), dir.path().join("store.wasm")).unwrap();
    dir
}

/// A host on `engine`, with `extra` flags.
async fn host(engine: &Engine, plugins: &tempfile::TempDir, extra: &[&str]) -> TestServer {
    let mut flags = engine.flags();
    flags.extend(extra.iter().map(|flag| flag.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = TestServer::start(plugins.path(), &flags);
    assert_eq!(server.health().await["kv"]["engine"], engine.name());
    server
}

/// The reply's data, or its error object as `{"error": ..}`.
async fn call(client: &mut Client, event: &str, data: Value) -> Value {
    let reply = client.invoke(event, data).await;
    match reply.get("error") {
        Some(error) => json!({ "error": error }),
        None => reply.get("data").cloned().unwrap_or(Value::Null),
    }
}

async fn get(client: &mut Client, key: &str) -> Value {
    client.call("kv.get", json!({ "key": key })).await
}

/// Generates one test per engine for a scenario `async fn(Engine)`.
macro_rules! on_every_engine {
    ($scenario:ident) => {
        mod $scenario {
            use super::*;
            #[tokio::test]
            async fn memory() {
                super::$scenario(Engine::memory()).await;
            }
            #[tokio::test]
            async fn embedded() {
                super::$scenario(Engine::embedded()).await;
            }
            #[tokio::test]
            async fn redis() {
                super::$scenario(Engine::redis()).await;
            }
        }
    };
}

on_every_engine!(compare_and_set_loses_no_update);
on_every_engine!(batches_apply_all_or_none);
on_every_engine!(keys_expire);
on_every_engine!(listing_pages_stay_exact_while_keys_are_added);
on_every_engine!(quotas_refuse_and_change_nothing);

/// 10,000 increments through get + compare-and-set loops, from clients on
/// both workers (and with Redis, on two hosts), end exact.
async fn compare_and_set_loses_no_update(engine: Engine) {
    let plugins = store_plugins();
    let mut hosts = vec![host(&engine, &plugins, &[]).await];
    if let Engine::Redis(_) = engine {
        hosts.push(host(&engine, &plugins, &[]).await);
    }
    const CLIENTS: usize = 8;
    const CALLS: usize = 25;
    const TIMES: usize = 50;
    let mut tasks = Vec::new();
    for index in 0..CLIENTS {
        let mut client = hosts[index % hosts.len()].client().await;
        tasks.push(tokio::spawn(async move {
            let mut retries = 0;
            for _ in 0..CALLS {
                let done = client
                    .call("kv.cas-incr", json!({ "key": "counter", "times": TIMES }))
                    .await;
                retries += done["retries"].as_u64().unwrap();
            }
            retries
        }));
    }
    let mut retries = 0;
    for task in tasks {
        retries += tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("the increments finish")
            .unwrap();
    }
    let mut client = hosts[0].client().await;
    assert_eq!(
        get(&mut client, "counter").await,
        json!((CLIENTS * CALLS * TIMES).to_string())
    );
    // The loops did race (a CAS failed and was retried), so the count
    // being exact means something. In memory a worker's calls do not
    // interleave (no operation waits), so races there need both workers
    // running at the same instant: likely, not certain.
    if !matches!(engine, Engine::Memory) {
        assert!(retries > 0, "no compare-and-set ever conflicted");
    }
    // The fixture's plain set-if-absent: only the first one wins.
    let claim = |value: &str| json!({ "ops": [{"check": "owner", "expected": null}, {"set": "owner", "value": value}] });
    assert_eq!(
        client.call("kv.batch", claim("a")).await,
        json!({ "applied": [] })
    );
    assert_eq!(
        client.call("kv.batch", claim("b")).await,
        json!({ "conflict": 0 })
    );
    assert_eq!(get(&mut client, "owner").await, "a");
}

/// A batch stopped by a failed check, a value that is not an integer or a
/// fault before its commit changes nothing; a fault after its commit keeps
/// all of it.
async fn batches_apply_all_or_none(engine: Engine) {
    let plugins = store_plugins();
    let server = host(&engine, &plugins, &[]).await;
    let mut client = server.client().await;
    client
        .call("kv.set", json!({ "key": "text", "value": "not a number" }))
        .await;
    let three_sets_around = |middle: Value| {
        json!([
            {"set": "a", "value": "1"},
            {"incr": "n", "delta": 5},
            middle,
            {"set": "b", "value": "2"},
        ])
    };
    // A value that is not an integer, in the middle.
    let ops = three_sets_around(json!({"incr": "text", "delta": 1}));
    let reply = call(&mut client, "kv.batch", json!({ "ops": ops })).await;
    assert_eq!(reply["error"]["name"], "HostError", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not an integer")
    );
    assert_nothing_written(&mut client).await;

    // A check that does not hold, in the middle.
    let ops = three_sets_around(json!({"check": "text", "expected": "other"}));
    let reply = client.call("kv.batch", json!({ "ops": ops })).await;
    assert_eq!(reply, json!({ "conflict": 2 }));
    assert_nothing_written(&mut client).await;

    // The plugin faults halfway through building it.
    let ops = three_sets_around(json!({"set": "c", "value": "3"}));
    let reply = call(
        &mut client,
        "kv.batch",
        json!({ "ops": ops, "trap": "before" }),
    )
    .await;
    assert_eq!(reply["error"]["name"], "PluginError", "{reply}");
    assert_nothing_written(&mut client).await;

    // The plugin faults right after it committed: all of it stays.
    let reply = call(
        &mut client,
        "kv.batch",
        json!({ "ops": ops, "trap": "after" }),
    )
    .await;
    assert_eq!(reply["error"]["name"], "PluginError", "{reply}");
    assert_eq!(get(&mut client, "a").await, "1");
    assert_eq!(get(&mut client, "n").await, "5");
    assert_eq!(get(&mut client, "c").await, "3");
    assert_eq!(get(&mut client, "b").await, "2");

    // Applied: each operation sees the ones before it; incr values in order.
    let ops = json!([
        {"check": "n", "expected": "5"},
        {"incr": "n", "delta": 10},
        {"delete": "a"},
        {"incr": "fresh", "delta": -3},
        {"set": "a", "value": "again"},
    ]);
    let reply = client.call("kv.batch", json!({ "ops": ops })).await;
    assert_eq!(reply, json!({ "applied": [15, -3] }));
    assert_eq!(get(&mut client, "a").await, "again");
}

async fn assert_nothing_written(client: &mut Client) {
    for key in ["a", "b", "n"] {
        assert_eq!(get(client, key).await, Value::Null, "{key} was written");
    }
}

/// Keys given an expiry read as absent once it passes, are not listed, and
/// leave the plugin's usage; `expire(None)` keeps a key for good and
/// `incr` keeps an expiry.
async fn keys_expire(engine: Engine) {
    let plugins = store_plugins();
    let server = host(&engine, &plugins, &[]).await;
    let mut client = server.client().await;
    let set =
        |key: &str, ttl_ms: Option<u64>| json!({ "key": key, "value": "5", "ttl_ms": ttl_ms });
    client.call("kv.set", set("short", Some(400))).await;
    client.call("kv.set", set("kept", Some(400))).await;
    client.call("kv.set", set("counted", Some(400))).await;
    client.call("kv.set", set("plain", None)).await;
    assert_eq!(
        client
            .call("kv.expire", json!({ "key": "kept", "ttl_ms": null }))
            .await,
        true
    );
    assert_eq!(
        client
            .call("kv.expire", json!({ "key": "absent", "ttl_ms": 100 }))
            .await,
        false
    );
    assert_eq!(
        client
            .call("kv.incr", json!({ "key": "counted", "delta": 1 }))
            .await,
        6
    );
    assert_eq!(get(&mut client, "short").await, "5");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(get(&mut client, "short").await, Value::Null);
    assert_eq!(
        get(&mut client, "counted").await,
        Value::Null,
        "incr kept the expiry"
    );
    assert_eq!(get(&mut client, "kept").await, "5");
    let page = client
        .call("kv.list", json!({ "prefix": "", "limit": 10 }))
        .await;
    assert_eq!(page["entries"], json!([["kept", "5"], ["plain", "5"]]));
    // The next write sweeps the expired keys out of the usage.
    client.call("kv.set", set("after", None)).await;
    let metrics = server.http_get("/metrics", "").await.1;
    assert!(
        metrics.contains("wasmcluster_kv_keys{plugin=\"store\"} 3"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("kv_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Paging a prefix while keys are added: every key present from start to
/// end is listed exactly once, in order; keys added after the cursor are
/// seen; other prefixes never are.
async fn listing_pages_stay_exact_while_keys_are_added(engine: Engine) {
    let plugins = store_plugins();
    let server = host(&engine, &plugins, &[]).await;
    let mut client = server.client().await;
    client
        .call(
            "kv.fill",
            json!({ "prefix": "p:", "count": 250, "bytes": 3 }),
        )
        .await;
    client
        .call(
            "kv.fill",
            json!({ "prefix": "q:", "count": 10, "bytes": 3 }),
        )
        .await;
    let original: Vec<String> = (0..250).map(|i| format!("p:{i:06}")).collect();
    let mut listed = Vec::new();
    let mut cursor = Value::Null;
    for round in 0.. {
        assert!(round < 20, "the listing does not end");
        let page = client
            .call(
                "kv.list",
                json!({ "prefix": "p:", "cursor": cursor, "limit": 40 }),
            )
            .await;
        let entries = page["entries"].as_array().unwrap();
        assert!(entries.len() <= 40);
        listed.extend(entries.iter().map(|e| e[0].as_str().unwrap().to_owned()));
        // Add one key behind the cursor and one far ahead of it.
        for key in [format!("p:{:06}a", round * 10), format!("p:9{round:02}")] {
            client
                .call("kv.set", json!({ "key": key, "value": "new" }))
                .await;
        }
        cursor = page["cursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    let unique: BTreeSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "a key was listed twice");
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "not in key order");
    for key in &original {
        assert!(unique.contains(key), "{key} was never listed");
    }
    assert!(listed.iter().all(|key| key.starts_with("p:")));
    assert!(
        unique.contains(&"p:900".to_owned()),
        "a key added ahead was not seen"
    );
}

/// Over `--kv-max-keys` or `--kv-max-bytes` a write fails with an error
/// naming the quota and writes nothing; deleting still works.
async fn quotas_refuse_and_change_nothing(engine: Engine) {
    let plugins = store_plugins();
    let flags = ["--kv-max-keys", "20", "--kv-max-bytes", "2000"];
    let server = host(&engine, &plugins, &flags).await;
    let mut client = server.client().await;
    let reply = call(
        &mut client,
        "kv.fill",
        json!({ "prefix": "k", "count": 25, "bytes": 10 }),
    )
    .await;
    let error = &reply["error"];
    assert_eq!(error["written"], 20, "{reply}");
    assert_eq!(error["reason"], "unavailable");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("at most 20 keys (kv-max-keys)")
    );
    assert_eq!(get(&mut client, "k000020").await, Value::Null);
    let big = json!({ "key": "k000000", "value": "x".repeat(2000) });
    let reply = call(&mut client, "kv.set", big).await;
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("kv-max-bytes"),
        "{reply}"
    );
    assert_eq!(get(&mut client, "k000000").await, "x".repeat(10));
    // A batch over the quota applies none of its operations.
    let ops = json!([{"delete": "k000001"}, {"set": "new1", "value": "1"}, {"set": "new2", "value": "2"}]);
    let reply = call(&mut client, "kv.batch", json!({ "ops": ops })).await;
    assert!(reply.get("error").is_some(), "{reply}");
    assert_eq!(get(&mut client, "k000001").await, "x".repeat(10));
    // Shrinking is always allowed, and frees room.
    let ops = json!([{"delete": "k000001"}, {"set": "new1", "value": "1"}]);
    let reply = client.call("kv.batch", json!({ "ops": ops })).await;
    assert_eq!(reply, json!({ "applied": [] }));
    let metrics = server.http_get("/metrics", "").await.1;
    assert!(metrics.contains("wasmcluster_kv_keys{plugin=\"store\"} 20"));
    assert!(metrics.contains(
        "wasmcluster_kv_operations_total{plugin=\"store\",operation=\"set\",outcome=\"refused\"} 2"
    ));
}

/// `[plugin.store] kv-max-keys` overrides the flag for that plugin.
#[tokio::test]
async fn a_plugin_section_sets_its_own_quota() {
    let plugins = store_plugins();
    let config = plugins.path().join("wasmcluster.toml");
    std::fs::write(&config, "[plugin.store]\nkv-max-keys = 3\n").unwrap();
    let server = TestServer::start(plugins.path(), &["--config", config.to_str().unwrap()]);
    let mut client = server.client().await;
    let reply = call(
        &mut client,
        "kv.fill",
        json!({ "prefix": "k", "count": 5, "bytes": 1 }),
    )
    .await;
    assert_eq!(reply["error"]["written"], 3, "{reply}");
}

/// `kill -9` in the middle of a burst of writes on the embedded engine:
/// after a restart every acknowledged write is there, and the store works.
#[tokio::test]
async fn kill_9_during_writes_loses_no_acknowledged_write() {
    let engine = Engine::embedded();
    let plugins = store_plugins();
    let mut server = host(&engine, &plugins, &[]).await;
    // Each writer records a key once its write is acknowledged; the
    // connection dying under it ends its task (the client panics then).
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for writer in 0..4 {
        let mut client = server.client().await;
        let acknowledged = Arc::clone(&acknowledged);
        writers.push(tokio::spawn(async move {
            for index in 0..100_000 {
                let key = format!("w{writer}:{index}");
                let data = json!({ "key": key, "value": index.to_string() });
                let reply = client.invoke("kv.set", data).await;
                assert!(reply.get("error").is_none(), "{reply}");
                acknowledged.lock().unwrap().push(key);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.signal("KILL");
    server.wait(Duration::from_secs(5));
    for writer in writers {
        let ended = tokio::time::timeout(Duration::from_secs(10), writer).await;
        assert!(ended.is_ok(), "a writer did not notice the server died");
    }
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    assert!(
        acknowledged.len() > 100,
        "only {} writes",
        acknowledged.len()
    );

    let server = host(&engine, &plugins, &[]).await;
    let mut client = server.client().await;
    for key in &acknowledged {
        let index = key.split(':').nth(1).unwrap();
        assert_eq!(get(&mut client, key).await, index, "{key} was lost");
    }
    client
        .call("kv.set", json!({ "key": "after", "value": "restart" }))
        .await;
    assert_eq!(get(&mut client, "after").await, "restart");
}

/// Two servers may not share a data directory: the second says why.
#[tokio::test]
async fn a_data_directory_in_use_is_a_clear_start_up_error() {
    let engine = Engine::embedded();
    let plugins = store_plugins();
    let _first = host(&engine, &plugins, &[]).await;
    let flags = engine.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let log = TestServer::try_start(plugins.path(), &flags)
        .err()
        .expect("a second server on the same data directory started");
    assert!(log.contains("kv.redb"), "{log}");
    assert!(log.contains("another process has it open"), "{log}");
}

/// The `chat` example keeps its rooms in the store: with a data directory
/// they and their message counts survive a restart.
#[tokio::test]
async fn chat_rooms_survive_a_restart_with_a_data_directory() {
    let engine = Engine::embedded();
    let plugins = support::plugins_dir(&["chat"]);
    let mut server = host(&engine, &plugins, &[]).await;
    let mut client = server.client().await;
    for room in ["lobby", "garden"] {
        client
            .call("join", json!({ "room": room, "nick": "ann" }))
            .await;
    }
    for text in ["hello", "again"] {
        client
            .call("say", json!({ "room": "lobby", "text": text }))
            .await;
    }
    let before = client.call("rooms", json!({})).await;
    server.signal("TERM");
    server.wait(Duration::from_secs(10));

    let server = host(&engine, &plugins, &[]).await;
    let mut client = server.client().await;
    let after = client.call("rooms", Value::Null).await;
    assert_eq!(after, before, "the rooms changed across the restart");
    let rooms = after["rooms"].as_array().unwrap();
    let names: Vec<_> = rooms
        .iter()
        .map(|r| (r["room"].clone(), r["messages"].clone()))
        .collect();
    assert_eq!(
        names,
        [(json!("garden"), json!(0)), (json!("lobby"), json!(2))]
    );
    assert!(rooms[0]["created_ms"].as_u64().unwrap() > 0);
    assert_eq!(after["cursor"], Value::Null);
}

/// A value an earlier build wrote to Redis (no listing index, not counted
/// in the quota) reads as before and joins the listing and the usage once
/// it is written again.
#[tokio::test]
async fn values_written_to_redis_by_earlier_builds_join_the_index_when_written() {
    let engine = Engine::redis();
    let Engine::Redis(redis) = &engine else {
        unreachable!()
    };
    redis.cli(&["SET", "wasmcluster:kv:store:old", "5"]);
    let plugins = store_plugins();
    let server = host(&engine, &plugins, &[]).await;
    let mut client = server.client().await;
    assert_eq!(get(&mut client, "old").await, "5");
    let list = json!({ "prefix": "", "limit": 10 });
    assert_eq!(
        client.call("kv.list", list.clone()).await["entries"],
        json!([])
    );
    assert_eq!(
        client
            .call("kv.incr", json!({ "key": "old", "delta": 1 }))
            .await,
        6
    );
    assert_eq!(
        client.call("kv.list", list).await["entries"],
        json!([["old", "6"]])
    );
    let metrics = server.http_get("/metrics", "").await.1;
    assert!(
        metrics.contains("wasmcluster_kv_keys{plugin=\"store\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("wasmcluster_kv_stored_bytes{plugin=\"store\"} 4"));
}

/// The embedded engine counts its commits and the writes they carried, so
/// that an operator sees how many writes share an fsync; other engines
/// have no such series.
#[tokio::test]
async fn the_embedded_engine_counts_its_commits_and_the_writes_they_carried() {
    let engine = Engine::embedded();
    let plugins = store_plugins();
    let server = host(&engine, &plugins, &[]).await;
    let mut writers = Vec::new();
    for writer in 0..4 {
        let mut client = server.client().await;
        writers.push(tokio::spawn(async move {
            let sets =
                (0..25).map(|index| json!({ "key": format!("w{writer}:{index}"), "value": "v" }));
            let cids: Vec<u64> = {
                let mut cids = Vec::new();
                for set in sets {
                    cids.push(client.send_invoke("kv.set", set).await);
                }
                cids
            };
            for cid in cids {
                assert!(client.reply(cid).await.get("error").is_none());
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let metrics = server.http_get("/metrics", "").await.1;
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(value("wasmcluster_kv_committed_batches_total"), 100);
    let commits = value("wasmcluster_kv_commits_total");
    assert!((1..=100).contains(&commits), "{commits} commits");

    let memory = host(&Engine::memory(), &plugins, &[]).await;
    let metrics = memory.http_get("/metrics", "").await.1;
    assert!(!metrics.contains("kv_commits"), "{metrics}");
}
