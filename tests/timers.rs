//! Timers (`set-timer`, `on-timer`) and `subscriptions`, through the real
//! binary and the `echo` example's `later` and `subs` RPCs: a timer fires
//! once, also after a fault of the instance that set it and after a hot
//! swap; 10,000 pending timers fire once each; the cap is enforced.

mod support;

use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;
use support::{TestServer, fixture_plugin, install, plugins_dir, reload};
use testkit::Client;

/// Ask `echo` to publish `data` on `channel` after `delay_ms`.
async fn later(client: &mut Client, delay_ms: u64, channel: &str, data: Value) -> Value {
    client
        .invoke(
            "later",
            json!({"delay_ms": delay_ms, "channel": channel, "data": data}),
        )
        .await
}

/// A subscriber to `channel`.
async fn subscriber(server: &TestServer, channel: &str) -> Client {
    let mut client = server.client().await;
    client.subscribe(channel).await;
    client
}

#[tokio::test]
async fn a_timer_fires_once_when_due() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &[]);
    let mut listener = subscriber(&server, "broadcast:later").await;
    let mut client = server.client().await;
    let reply = later(&mut client, 150, "broadcast:later", json!({"n": 1})).await;
    assert_eq!(reply["data"], Value::Null, "{reply}");
    assert_eq!(
        listener.publication().await,
        ("broadcast:later".into(), json!({"n": 1}))
    );
    listener.expect_silence(Duration::from_millis(400)).await;
}

#[tokio::test]
async fn a_timer_outlives_a_fault_of_the_instance_that_set_it() {
    let dir = plugins_dir(&["echo"]);
    // One worker: the crash below rebuilds the very instance that set it.
    let server = TestServer::start(dir.path(), &["--workers", "1"]);
    let mut listener = subscriber(&server, "broadcast:crash").await;
    let mut client = server.client().await;
    later(&mut client, 300, "broadcast:crash", json!("survived")).await;
    let crashed = client.invoke("crash", json!(null)).await;
    assert_eq!(crashed["error"]["name"], "PluginError", "{crashed}");
    assert_eq!(
        listener.publication().await,
        ("broadcast:crash".into(), json!("survived"))
    );
    listener.expect_silence(Duration::from_millis(400)).await;
}

#[tokio::test]
async fn a_timer_fires_into_the_new_build_after_a_hot_swap() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &["--workers", "1"]);
    let mut listener = subscriber(&server, "broadcast:swap").await;
    let mut client = server.client().await;
    later(&mut client, 1500, "broadcast:swap", json!("after the swap")).await;
    install(&fixture_plugin("echo-v2"), dir.path(), "echo.wasm");
    let summary = reload(&server).await;
    assert!(summary.contains("updated=[\"echo\"]"), "{summary}");
    let version = client.call("version", json!(null)).await;
    assert_eq!(version["version"], "0.2.0");
    assert_eq!(
        listener.publication().await,
        ("broadcast:swap".into(), json!("after the swap"))
    );
    listener.expect_silence(Duration::from_millis(400)).await;
}

#[tokio::test]
async fn ten_thousand_pending_timers_fire_once_each_and_the_cap_holds() {
    const TIMERS: u64 = 10_000;
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(
        dir.path(),
        &["--workers", "1", "--plugin-max-timers", &TIMERS.to_string()],
    );
    let mut listener = subscriber(&server, "broadcast:many").await;
    let mut client = server.client().await;
    // Every timer is due after the last one is set: all are pending at once.
    for n in 0..TIMERS {
        let reply = later(&mut client, 6000, "broadcast:many", json!(n)).await;
        assert_eq!(reply["data"], Value::Null, "timer {n}: {reply}");
    }
    let refused = later(&mut client, 6000, "broadcast:many", json!("one too many")).await;
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("10000 timers pending") && message.contains("--plugin-max-timers"),
        "{refused}"
    );

    let mut seen = HashSet::new();
    for _ in 0..TIMERS {
        let (_, data) = listener.publication().await;
        let n = data.as_u64().unwrap();
        assert!(seen.insert(n), "timer {n} fired twice");
    }
    listener.expect_silence(Duration::from_millis(300)).await;
    // Fired timers no longer count against the cap.
    assert_eq!(
        later(&mut client, 10, "broadcast:many", json!("room again")).await["data"],
        Value::Null
    );
}

#[tokio::test]
async fn subscriptions_lists_the_calling_sockets_channels() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    assert_eq!(client.call("subs", json!(null)).await, json!([]));
    client.subscribe("b").await;
    client.subscribe("a").await;
    assert_eq!(client.call("subs", json!(null)).await, json!(["a", "b"]));
    let reply = client.invoke("#unsubscribe", json!("a")).await;
    assert!(reply.get("error").is_none(), "{reply}");
    assert_eq!(client.call("subs", json!(null)).await, json!(["b"]));
}

#[tokio::test]
async fn a_plugin_section_sets_its_own_timer_limit() {
    let dir = plugins_dir(&["echo"]);
    let config = dir.path().join("wasmcluster.toml");
    std::fs::write(&config, "[plugin.echo]\nmax-timers = 2\n").unwrap();
    let server = TestServer::start(
        dir.path(),
        &["--workers", "1", "--config", config.to_str().unwrap()],
    );
    let mut client = server.client().await;
    for n in 0..2 {
        let reply = later(&mut client, 60_000, "broadcast:capped", json!(n)).await;
        assert_eq!(reply["data"], Value::Null, "{reply}");
    }
    let refused = later(&mut client, 60_000, "broadcast:capped", json!(2)).await;
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("has 2 timers pending"), "{refused}");
}

#[tokio::test]
async fn a_cancelled_timer_stops_firing() {
    if support::examples_wit_version() == "0.1.0" {
        // `cancel-timer` is new in 0.2.0; the kept 0.1.0 echo has no `every`.
        return;
    }
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &[]);
    let mut listener = subscriber(&server, "broadcast:every").await;
    let mut client = server.client().await;
    let id = client
        .call(
            "every",
            json!({"period_ms": 100, "channel": "broadcast:every", "data": "tick"}),
        )
        .await;
    for _ in 0..3 {
        assert_eq!(
            listener.publication().await,
            ("broadcast:every".into(), json!("tick"))
        );
    }
    assert_eq!(client.call("cancel", json!({"id": id})).await, json!(true));
    assert_eq!(client.call("cancel", json!({"id": id})).await, json!(false));
    // A firing already under way when it was cancelled may still land.
    tokio::time::sleep(Duration::from_millis(150)).await;
    while tokio::time::timeout(Duration::from_millis(1), listener.publication())
        .await
        .is_ok()
    {}
    listener.expect_silence(Duration::from_millis(500)).await;
}
