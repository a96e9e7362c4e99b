//! Plugin loading and the example plugins, through the real binary.

mod support;

use serde_json::json;
use std::time::Duration;
use support::{TestServer, example_plugin, plugins_dir};
use testkit::Closed;

#[tokio::test]
async fn a_broken_file_is_skipped_and_the_rest_is_served() {
    let dir = plugins_dir(&["echo"]);
    std::fs::write(dir.path().join("garbage.wasm"), b"this is not wasm").unwrap();
    // A valid core module is still not a component.
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    assert_eq!(client.call("echo", json!("served")).await, json!("served"));

    let log = server.log();
    for file in ["garbage.wasm", "core.wasm"] {
        let line = log
            .lines()
            .find(|line| line.contains("plugin skipped") && line.contains(file))
            .unwrap_or_else(|| panic!("no log line names {file}:\n{log}"));
        assert!(line.contains("not a valid WebAssembly component"), "{line}");
    }
    assert!(!log.contains("notes.txt"));
}

#[tokio::test]
async fn two_plugins_declaring_one_event_is_a_startup_error_naming_both() {
    let dir = plugins_dir(&["echo"]);
    std::fs::copy(example_plugin("echo"), dir.path().join("echo-copy.wasm")).unwrap();
    let log = match TestServer::try_start(dir.path(), &[]) {
        Ok(_) => panic!("the server started with a conflict"),
        Err(log) => log,
    };
    assert!(
        log.contains("echo.wasm") && log.contains("echo-copy.wasm"),
        "{log}"
    );
    assert!(
        log.contains("declared by both") || log.contains("used by both"),
        "{log}"
    );
}

#[tokio::test]
async fn a_missing_plugins_directory_is_a_clear_startup_error() {
    let missing = std::env::temp_dir().join("wasmcluster-no-such-dir");
    let log = TestServer::try_start(&missing, &[])
        .err()
        .expect("started without plugins dir");
    assert!(
        log.contains("cannot read the plugins directory")
            && log.contains("wasmcluster-no-such-dir"),
        "{log}"
    );
}

#[tokio::test]
async fn bad_flags_are_refused_naming_the_flag() {
    let dir = plugins_dir(&[]);
    let log = TestServer::try_start(
        dir.path(),
        &["--ping-interval-ms", "9000", "--ping-timeout-ms", "3000"],
    )
    .err()
    .expect("started with a bad config");
    assert!(log.contains("invalid --ping-interval-ms"), "{log}");
}

#[tokio::test]
async fn without_plugins_pub_sub_still_works() {
    let dir = plugins_dir(&[]);
    let server = TestServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    client.subscribe("c").await;
    client
        .invoke("#publish", json!({"channel": "c", "data": 1}))
        .await;
    assert_eq!(client.publication().await, ("c".into(), json!(1)));
    assert_eq!(
        client.invoke("echo", json!(1)).await["error"]["name"],
        "UnknownEventError"
    );
}

#[tokio::test]
async fn chat_rooms_across_workers_with_leave_on_disconnect() {
    let dir = plugins_dir(&["echo", "chat"]);
    let server = TestServer::start(dir.path(), &[]);
    let mut alice = server.client().await;
    let mut bob = server.client().await; // on the other worker
    bob.subscribe("room:lobby").await;

    let joined = alice
        .call("join", json!({"room": "lobby", "nick": "alice"}))
        .await;
    assert_eq!(joined, json!({"room": "lobby", "nick": "alice"}));
    assert_eq!(
        bob.publication().await,
        (
            "room:lobby".into(),
            json!({"type": "join", "nick": "alice"})
        )
    );

    alice
        .call("say", json!({"room": "lobby", "text": "hello"}))
        .await;
    assert_eq!(
        bob.publication().await,
        (
            "room:lobby".into(),
            json!({"type": "say", "nick": "alice", "text": "hello"})
        )
    );

    // A fault in another plugin leaves chat's KV state alone.
    assert_eq!(
        alice.invoke("crash", json!(null)).await["error"]["name"],
        "PluginError"
    );
    alice
        .call("say", json!({"room": "lobby", "text": "still me"}))
        .await;
    assert_eq!(
        bob.publication().await,
        (
            "room:lobby".into(),
            json!({"type": "say", "nick": "alice", "text": "still me"})
        )
    );

    let refused = bob
        .invoke("say", json!({"room": "lobby", "text": "x"}))
        .await;
    assert_eq!(refused["error"]["name"], "NotJoinedError");
    let invalid = bob.invoke("join", json!({"room": 5})).await;
    assert_eq!(invalid["error"]["name"], "InvalidDataError");

    alice.close(1000).await;
    assert_eq!(
        bob.publication().await,
        (
            "room:lobby".into(),
            json!({"type": "leave", "nick": "alice"})
        )
    );
}

#[tokio::test]
async fn sigterm_closes_every_socket_with_1001_and_exits_cleanly() {
    let dir = plugins_dir(&["echo", "chat"]);
    let mut server = TestServer::start(dir.path(), &[]);
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.call("join", json!({"room": "r", "nick": "a"})).await;
    server.signal("TERM");
    assert_eq!(a.closed().await, Closed::Code(1001));
    assert_eq!(b.closed().await, Closed::Code(1001));
    assert_eq!(server.wait(Duration::from_secs(10)), Some(0));
    assert!(server.log().contains("stopped"));
}

#[tokio::test]
async fn check_prints_the_manifest_or_the_reason_for_refusal() {
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_wasmcluster"))
        .arg("check")
        .arg(example_plugin("chat"))
        .output()
        .unwrap();
    assert!(ok.status.success());
    let out = String::from_utf8(ok.stdout).unwrap();
    assert!(out.contains("ok, the server would load it"), "{out}");
    assert!(out.contains("plugin     chat 0.1.0"), "{out}");
    assert!(out.contains("rpc        join, say, members"), "{out}");
    assert!(out.contains("hooks      disconnect"), "{out}");
    let version = support::examples_wit_version();
    assert!(
        out.contains(&format!("built for  wasmcluster:plugin@{version}")),
        "{out}"
    );
    assert!(out.contains("state hand-off  yes"), "{out}");

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_wasmcluster"))
        .arg("check")
        .arg(support::fixture_plugin("bad-import"))
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8(refused.stderr).unwrap();
    assert!(
        err.contains("bad-import.wasm: does not fit") && err.contains("test:extra/missing"),
        "{err}"
    );
}

/// `strip` writes a plugin the server still loads, never larger, in place
/// without leaving a temporary file; what is not WebAssembly is refused
/// with the file's name and nothing is written. (That a stripped plugin's
/// fault reports still name the faulting line is `faults.rs`'s test: the
/// examples are stripped when built.)
#[test]
fn strip_keeps_a_plugin_loadable_and_refuses_what_is_not_webassembly() {
    let dir = tempfile::tempdir().unwrap();
    let original = example_plugin("echo");
    let copy = dir.path().join("echo.wasm");
    std::fs::copy(&original, &copy).unwrap();
    let strip = wasmcluster(&["strip", copy.to_str().unwrap()]);
    assert!(strip.status.success(), "{strip:?}");
    let before = std::fs::metadata(&original).unwrap().len();
    let after = std::fs::metadata(&copy).unwrap().len();
    assert!(after <= before, "{after} > {before}");
    let out = String::from_utf8(strip.stdout).unwrap();
    assert!(
        out.contains(&format!("{after} bytes (was {before})")),
        "{out}"
    );
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let check = wasmcluster(&["check", copy.to_str().unwrap()]);
    assert!(check.status.success(), "{check:?}");
    let report = String::from_utf8(check.stdout).unwrap();
    assert!(
        report.contains(&format!("size       {after} bytes, loaded in")),
        "{report}"
    );

    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "not wasm").unwrap();
    let truncated = dir.path().join("truncated.wasm");
    let bytes = std::fs::read(&copy).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    for (input, reason) in [
        (&text, "not a WebAssembly component or module"),
        (&truncated, "not valid WebAssembly"),
    ] {
        let output = dir.path().join("out.wasm");
        let refused = wasmcluster(&[
            "strip",
            input.to_str().unwrap(),
            "-o",
            output.to_str().unwrap(),
        ]);
        assert!(!refused.status.success());
        let err = String::from_utf8(refused.stderr).unwrap();
        assert!(
            err.starts_with(&format!("error: {}: {reason}", input.display())),
            "{err}"
        );
        assert!(!output.exists());
    }
}

/// The `wasmcluster` binary with `args`, run to the end.
fn wasmcluster(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_wasmcluster"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &["--log-format", "json"]);
    let mut client = server.client().await;
    client.invoke("crash", json!(null)).await;
    let log = server.log();
    let mut lines = 0;
    for line in log.lines() {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(
            entry["level"].is_string() && entry["fields"]["message"].is_string(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines >= 3, "{log}");
    assert!(log.contains("\"plugin\":\"echo\""), "{log}");
}

#[tokio::test]
async fn plugins_kick_sockets_out_of_channels_and_close_them() {
    let dir = plugins_dir(&["echo"]);
    std::fs::copy(
        support::fixture_plugin("control"),
        dir.path().join("control.wasm"),
    )
    .unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    client.subscribe("broadcast:kick").await;

    client
        .send(json!({"event": "kick-me", "data": {"channel": "broadcast:kick", "message": "you were kicked"}, "cid": 80}))
        .await;
    assert_eq!(
        client.next_packet().await,
        json!({"event": "#kickOut", "data": {"channel": "broadcast:kick", "message": "you were kicked"}})
    );
    assert_eq!(client.next_packet().await, json!({"rid": 80}));
    // Unsubscribed by the server: a publication no longer arrives.
    client
        .call("broadcast", json!({"channel": "broadcast:kick", "data": 1}))
        .await;
    client.expect_silence(Duration::from_millis(200)).await;

    let refused = client
        .invoke("close-me", json!({"code": 1005, "reason": ""}))
        .await;
    assert_eq!(refused["error"]["name"], "HostError", "{refused}");

    // The socket is closed at once; like a SocketCluster procedure that
    // disconnects its socket, the call gets no answer.
    client
        .send(json!({"event": "close-me", "data": {"code": 4321, "reason": "bye"}, "cid": 81}))
        .await;
    assert_eq!(client.closed().await, Closed::Code(4321));
}

#[tokio::test]
async fn plugins_tell_a_clean_close_from_a_lost_connection() {
    let dir = plugins_dir(&["presence"]);
    let server = TestServer::start(dir.path(), &[]);
    let mut watcher = server.client().await;
    watcher.subscribe("presence:lobby").await;

    let mut clean = server.client().await;
    clean
        .call("presence.join", json!({"room": "lobby", "name": "clean"}))
        .await;
    assert_eq!(watcher.publication().await.1["type"], "joined");
    clean.close(1000).await;
    let (_, left) = watcher.publication().await;
    assert_eq!(
        (&left["type"], &left["name"]),
        (&json!("left"), &json!("clean"))
    );

    let mut cut = server.client().await;
    cut.call("presence.join", json!({"room": "lobby", "name": "cut"}))
        .await;
    assert_eq!(watcher.publication().await.1["type"], "joined");
    // The TCP connection ends without a close frame: a lost connection.
    drop(cut);
    let (_, lost) = watcher.publication().await;
    assert_eq!(
        lost,
        json!({"type": "lost", "id": lost["id"], "name": "cut", "code": 1006})
    );
}

/// `check --plugins DIR` refuses what a reload of DIR would refuse (a name
/// or an event another plugin there has), and state hand-off is reported
/// only for a plugin whose snapshot returns state.
#[tokio::test]
async fn check_against_a_directory_finds_conflicts_and_tells_state_apart() {
    let dir = plugins_dir(&["echo", "chat"]);
    let conflict = std::process::Command::new(env!("CARGO_BIN_EXE_wasmcluster"))
        .arg("check")
        .arg(support::fixture_plugin("echo-v2"))
        .arg("--plugins")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!conflict.status.success());
    let err = String::from_utf8_lossy(&conflict.stderr);
    assert!(
        err.contains("plugin name 'echo' is used by both")
            && err.contains("echo.wasm")
            && err.contains("echo-v2.wasm"),
        "{err}"
    );

    // Checking a newer build of a file that is in the directory compares it
    // with the others only.
    let update = std::process::Command::new(env!("CARGO_BIN_EXE_wasmcluster"))
        .arg("check")
        .arg(dir.path().join("echo.wasm"))
        .arg("--plugins")
        .arg(dir.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&update.stdout);
    assert!(update.status.success(), "{out}");
    assert!(
        out.contains("checked against the 1 other plugin(s)"),
        "{out}"
    );
    assert!(
        out.contains("state hand-off  no (it exports snapshot/restore, but a fresh instance's snapshot returns nothing"),
        "{out}"
    );
}
