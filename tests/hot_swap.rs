//! Hot swap on SIGUSR2: new plugin builds go live under load with no
//! connection closed, no call failed and no publication lost or repeated.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::{
    TestServer, example_plugin, fixture_plugin, install, plugins_dir, reload, reload_with,
};
use testkit::Client;

#[tokio::test]
async fn swapping_echo_under_load_loses_nothing() {
    const CLIENTS: usize = 100;
    let dir = plugins_dir(&["echo", "chat"]);
    let server = TestServer::start(dir.path(), &[]);

    // A numbered stream of publications, checked for gaps and duplicates.
    let mut subscriber = server.client().await;
    subscriber.subscribe("stream").await;
    let mut publisher = server.client().await;
    let (stop_publishing, mut stop) = tokio::sync::oneshot::channel::<()>();
    let publishing = tokio::spawn(async move {
        let mut sent = 0u64;
        loop {
            let reply = publisher
                .invoke("#publish", json!({"channel": "stream", "data": sent}))
                .await;
            assert_eq!(
                reply.as_object().unwrap().len(),
                1,
                "publish failed: {reply}"
            );
            sent += 1;
            if stop.try_recv().is_ok() || sent >= 100_000 {
                return (publisher, sent);
            }
        }
    });

    // Clients calling `version` until they have seen the new build.
    let mut callers = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = server.client().await;
        callers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut calls = 0u64;
            loop {
                let reply = client.invoke("version", json!(null)).await;
                assert!(
                    reply.get("error").is_none(),
                    "a call failed during the swap: {reply}"
                );
                calls += 1;
                if reply["data"]["version"] == "0.2.0" {
                    return (client, calls, Instant::now());
                }
                assert_eq!(reply["data"]["version"], "0.1.0");
                assert!(Instant::now() < deadline, "never saw the new version");
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    install(&fixture_plugin("echo-v2"), dir.path(), "echo.wasm");
    let signalled = Instant::now();
    let summary = reload(&server).await;
    assert!(summary.contains("updated=[\"echo\"]"), "{summary}");

    let mut clients = Vec::new();
    let mut slowest = Duration::ZERO;
    for caller in callers {
        let (client, calls, switched) = caller.await.unwrap();
        assert!(calls > 0);
        slowest = slowest.max(switched.saturating_duration_since(signalled));
        clients.push(client);
    }
    eprintln!("every client saw the new version {slowest:?} after SIGUSR2");

    stop_publishing.send(()).unwrap();
    let (mut publisher, sent) = publishing.await.unwrap();
    for expected in 0..sent {
        let (channel, data) = subscriber.publication().await;
        assert_eq!(channel, "stream");
        assert_eq!(data, json!(expected), "gap or duplicate in the stream");
    }
    subscriber.expect_silence(Duration::from_millis(200)).await;

    // Nothing was closed: every connection still answers.
    for client in clients.iter_mut().chain([&mut publisher, &mut subscriber]) {
        assert_eq!(client.call("echo", json!("after")).await, json!("after"));
    }
    let (_, body) = server.http_get("/healthz", "").await;
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["connections"], CLIENTS + 2);
}

#[tokio::test]
async fn a_broken_build_is_refused_and_the_old_one_keeps_serving() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &[]);
    let mut client = server.client().await;

    let broken = dir.path().join("broken-build");
    std::fs::write(&broken, b"\0asm but not really").unwrap();
    install(&broken, dir.path(), "echo.wasm");
    let summary = reload(&server).await;
    assert!(
        summary.contains("refused=[") && summary.contains("echo.wasm"),
        "{summary}"
    );
    assert!(summary.contains("updated=[]"), "{summary}");

    let reply = client.call("version", json!(null)).await;
    assert_eq!(reply["version"], "0.1.0");

    // Fixing the file is picked up by the next reload.
    install(&fixture_plugin("echo-v2"), dir.path(), "echo.wasm");
    reload(&server).await;
    assert_eq!(
        client.call("version", json!(null)).await["version"],
        "0.2.0"
    );
}

#[tokio::test]
async fn removing_and_adding_files_unloads_and_loads_plugins() {
    let dir = plugins_dir(&["echo", "chat"]);
    let server = TestServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    client.call("join", json!({"room": "r", "nick": "n"})).await;

    std::fs::remove_file(dir.path().join("chat.wasm")).unwrap();
    install(&fixture_plugin("flaky"), dir.path(), "flaky.wasm");
    let summary = reload(&server).await;
    assert!(
        summary.contains("loaded=[\"flaky\"]") && summary.contains("unloaded=[\"chat\"]"),
        "{summary}"
    );

    let reply = client
        .invoke("join", json!({"room": "r", "nick": "n"}))
        .await;
    assert_eq!(reply["error"]["name"], "UnknownEventError");
    assert_eq!(client.call("flaky-ok", json!(null)).await, json!("ok"));
    // An unchanged plugin is not reloaded.
    assert!(!summary.contains("\"echo\""), "{summary}");
    assert_eq!(client.call("echo", json!(1)).await, json!(1));
}

#[tokio::test]
async fn a_reload_without_changes_changes_nothing() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &[]);
    let summary = reload(&server).await;
    assert!(
        summary.contains("loaded=[] updated=[] unloaded=[] refused=[]"),
        "{summary}"
    );
}

#[tokio::test]
async fn the_reload_command_signals_the_server_named_in_its_pid_file() {
    let dir = plugins_dir(&["echo"]);
    let pid_file = dir.path().join("wasmcluster.pid");
    let server = TestServer::start(dir.path(), &["--pid-file", pid_file.to_str().unwrap()]);
    let mut client = server.client().await;
    assert!(
        std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse::<u32>()
            .is_ok()
    );

    install(&fixture_plugin("echo-v2"), dir.path(), "echo.wasm");
    reload_with(&server, || {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_wasmcluster"))
            .args(["reload", "--pid-file"])
            .arg(&pid_file)
            .status()
            .unwrap();
        assert!(status.success());
    })
    .await;
    assert_eq!(
        client.call("version", json!(null)).await["version"],
        "0.2.0"
    );

    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_wasmcluster"))
        .args(["reload", "--pid-file", "/nonexistent/wasmcluster.pid"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("cannot read the pid file /nonexistent/wasmcluster.pid")
    );
}

/// The members of `room` known to the client's worker (chat's in-memory state).
async fn members(client: &mut Client, room: &str) -> serde_json::Value {
    client.call("members", json!({ "room": room })).await
}

#[tokio::test]
async fn chat_hands_its_room_members_to_the_new_build() {
    let dir = plugins_dir(&["echo", "chat"]);
    let server = TestServer::start(dir.path(), &[]);
    let mut alice = server.client().await;
    let mut bob = server.client().await; // the other worker
    alice
        .call("join", json!({"room": "lobby", "nick": "alice"}))
        .await;
    bob.call("join", json!({"room": "lobby", "nick": "bob"}))
        .await;
    assert_eq!(members(&mut alice, "lobby").await, json!(["alice"]));
    assert_eq!(members(&mut bob, "lobby").await, json!(["bob"]));

    install(&fixture_plugin("chat-v2"), dir.path(), "chat.wasm");
    let summary = reload(&server).await;
    assert!(summary.contains("updated=[\"chat\"]"), "{summary}");

    // Each worker's new instance holds what the old one had.
    assert_eq!(members(&mut alice, "lobby").await, json!(["alice"]));
    assert_eq!(members(&mut bob, "lobby").await, json!(["bob"]));
    assert_eq!(
        server
            .log()
            .matches("state handed over to the new build")
            .count(),
        2
    );
    // And the restored state keeps changing as before.
    alice
        .call("join", json!({"room": "hall", "nick": "alice"}))
        .await;
    assert_eq!(members(&mut alice, "hall").await, json!(["alice"]));
    assert_eq!(members(&mut alice, "lobby").await, json!(["alice"]));
}

#[tokio::test]
async fn watch_reloads_when_a_new_build_is_renamed_into_place() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &["--watch"]);
    let mut client = server.client().await;
    assert_eq!(
        client.call("version", json!(null)).await["version"],
        "0.1.0"
    );

    // A hidden file (a copy in progress) is not a plugin.
    std::fs::copy(fixture_plugin("flaky"), dir.path().join(".flaky.wasm")).unwrap();
    install(&fixture_plugin("echo-v2"), dir.path(), "echo.wasm");
    wait_for_watch_reload(&server, &mut client).await;
    assert_eq!(
        client.invoke("flaky-ok", json!(null)).await["error"]["name"],
        "UnknownEventError"
    );
}

#[tokio::test]
async fn watch_reloads_when_a_kubernetes_volume_swaps_its_data_link() {
    // The layout the kubelet gives a ConfigMap volume: the visible file is a
    // symlink through `..data`, itself a symlink to a timestamped folder.
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("..v1")).unwrap();
    std::fs::copy(example_plugin("echo"), root.join("..v1/echo.wasm")).unwrap();
    symlink("..v1", root.join("..data")).unwrap();
    symlink("..data/echo.wasm", root.join("echo.wasm")).unwrap();
    let server = TestServer::start(root, &["--watch"]);
    let mut client = server.client().await;
    assert_eq!(
        client.call("version", json!(null)).await["version"],
        "0.1.0"
    );

    // An update: a new folder, a new link renamed over `..data`.
    std::fs::create_dir(root.join("..v2")).unwrap();
    std::fs::copy(fixture_plugin("echo-v2"), root.join("..v2/echo.wasm")).unwrap();
    symlink("..v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    wait_for_watch_reload(&server, &mut client).await;
}

#[tokio::test]
async fn a_plugin_built_without_the_state_exports_loads_and_swaps() {
    let dir = plugins_dir(&["echo"]);
    std::fs::copy(fixture_plugin("plain-world"), dir.path().join("plain.wasm")).unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    assert_eq!(client.call("plain-ping", json!(null)).await, json!("pong"));

    // Replaced by itself under another file name: no state to hand over.
    std::fs::remove_file(dir.path().join("plain.wasm")).unwrap();
    install(
        &fixture_plugin("plain-world"),
        dir.path(),
        "plain-renamed.wasm",
    );
    let summary = reload(&server).await;
    assert!(summary.contains("refused=[]"), "{summary}");
    assert_eq!(client.call("plain-ping", json!(null)).await, json!("pong"));
}

/// Wait until `--watch` has loaded echo 0.2.0 by itself: the new build
/// answers and the server logged the reload (a worker may serve the new
/// build a moment before the reload's log line is written).
async fn wait_for_watch_reload(server: &TestServer, client: &mut Client) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.call("version", json!(null)).await["version"] != "0.2.0"
        || !server.log().contains("reload done")
    {
        assert!(
            Instant::now() < deadline,
            "--watch did not reload:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `wasmcluster reload` prints what the reload did, and fails when it
/// refused a file (the previous build keeps serving).
#[tokio::test]
async fn the_reload_command_prints_the_outcome_and_fails_on_a_refusal() {
    let dir = plugins_dir(&["echo"]);
    let pid_file = dir.path().join("wasmcluster.pid");
    let server = TestServer::start(dir.path(), &["--pid-file", pid_file.to_str().unwrap()]);
    let mut client = server.client().await;
    let reload = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_wasmcluster"))
            .args(["reload", "--pid-file"])
            .arg(&pid_file)
            .output()
            .unwrap()
    };

    let broken = dir.path().join("broken-build");
    std::fs::write(&broken, b"\0asm but not really").unwrap();
    install(&broken, dir.path(), "echo.wasm");
    let refused = reload();
    let out = String::from_utf8_lossy(&refused.stdout);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{out}");
    assert!(
        out.contains("refused   ") && out.contains("echo.wasm") && out.contains("keeps serving"),
        "{out}"
    );
    assert!(err.contains("the reload refused 1 file(s)"), "{err}");
    assert_eq!(
        client.call("version", json!(null)).await["version"],
        "0.1.0"
    );

    install(&fixture_plugin("echo-v2"), dir.path(), "echo.wasm");
    let fixed = reload();
    let out = String::from_utf8_lossy(&fixed.stdout);
    assert!(fixed.status.success(), "{out}");
    assert!(out.contains("updated   echo"), "{out}");
    assert_eq!(
        client.call("version", json!(null)).await["version"],
        "0.2.0"
    );
}
