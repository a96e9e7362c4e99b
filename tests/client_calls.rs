//! Procedures invoked on clients (`invoke-client`), through the real binary
//! and the `echo` example's `ask` RPC: answered, errored, timed out, and a
//! client that disconnects while asked; and while a call waits for a client,
//! the plugin keeps serving others on the same worker (its pool of
//! instances).

mod support;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::{TestServer, plugins_dir};
use testkit::Client;

/// Send `ask` for procedure `event`; the `ask` call id, and the server's
/// invoke as the client received it.
async fn ask(client: &mut Client, event: &str, data: Value, timeout_ms: u64) -> (u64, Value) {
    let cid = client
        .send_invoke(
            "ask",
            json!({"event": event, "data": data, "timeout_ms": timeout_ms}),
        )
        .await;
    let invoked = client.next_packet().await;
    (cid, invoked)
}

#[tokio::test]
async fn a_clients_answer_is_the_answer() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    let (cid, invoked) = ask(&mut client, "confirm", json!({"q": "sure?"}), 5_000).await;
    assert_eq!(invoked["event"], "confirm", "{invoked}");
    assert_eq!(invoked["data"], json!({"q": "sure?"}), "{invoked}");
    let server_cid = invoked["cid"].as_u64().expect("a numeric cid");
    client
        .send(json!({"rid": server_cid, "data": {"yes": true}}))
        .await;
    let reply = client.reply(cid).await;
    assert_eq!(reply["data"], json!({"yes": true}), "{reply}");

    // Call ids are not reused on a connection.
    let (cid, invoked) = ask(&mut client, "confirm", json!(null), 5_000).await;
    let next_cid = invoked["cid"].as_u64().unwrap();
    assert!(next_cid > server_cid, "{invoked}");
    client.send(json!({"rid": next_cid})).await;
    let reply = client.reply(cid).await;
    assert_eq!(reply.get("error"), None, "{reply}");
    assert_eq!(reply["data"], Value::Null, "{reply}");
}

#[tokio::test]
async fn a_clients_error_comes_back_as_that_error() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    let (cid, invoked) = ask(&mut client, "confirm", json!(1), 5_000).await;
    let error = json!({"name": "Refused", "message": "not now", "code": 7});
    client
        .send(json!({"rid": invoked["cid"], "error": error}))
        .await;
    let reply = client.reply(cid).await;
    assert_eq!(reply["error"]["name"], "Refused", "{reply}");
    assert_eq!(reply["error"]["message"], "not now", "{reply}");
    assert_eq!(reply["error"]["code"], 7, "{reply}");
}

#[tokio::test]
async fn no_answer_in_time_is_a_timeout_error() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    let (cid, invoked) = ask(&mut client, "confirm", json!(1), 200).await;
    let reply = client.reply(cid).await;
    assert_eq!(reply["error"]["name"], "TimeoutError", "{reply}");
    // A late answer is an answer to nothing: ignored, the socket served.
    client
        .send(json!({"rid": invoked["cid"], "data": "late"}))
        .await;
    assert_eq!(client.call("echo", json!("after")).await, json!("after"));
}

#[tokio::test]
async fn a_client_that_disconnects_while_asked_frees_the_call() {
    let dir = plugins_dir(&["echo"]);
    // One worker, one instance: the call that waits holds the only one.
    let server = TestServer::start(
        dir.path(),
        &["--workers", "1", "--plugin-max-instances", "1"],
    );
    let mut asked = server.client().await;
    let (_cid, _invoked) = ask(&mut asked, "confirm", json!(1), 20_000).await;
    asked.close(1000).await;
    // Had the call kept waiting for its 20 s timeout, the instance would
    // still be busy and this echo would wait behind it.
    let mut other = server.client().await;
    let started = Instant::now();
    assert_eq!(other.call("echo", json!("free")).await, json!("free"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "echo waited {:?} behind a call to a gone client",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_call_waiting_for_a_client_leaves_the_plugin_to_others() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &["--workers", "1"]);
    // Three calls wait for clients that do not answer...
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let mut client = server.client().await;
        let (cid, _) = ask(&mut client, "confirm", json!(1), 3_000).await;
        waiting.push((client, cid));
    }
    // ...while other sockets' calls to echo, on the same worker, are served
    // (one instance would have made them wait for the 3 s timeouts).
    let mut other = server.client().await;
    let started = Instant::now();
    for n in 0..20 {
        assert_eq!(other.call("echo", json!(n)).await, json!(n));
    }
    assert!(
        started.elapsed() < Duration::from_millis(2_000),
        "echo waited {:?} behind calls waiting for clients",
        started.elapsed()
    );
    for (mut client, cid) in waiting {
        let reply = client.reply(cid).await;
        assert_eq!(reply["error"]["name"], "TimeoutError", "{reply}");
    }
}

#[tokio::test]
async fn bad_procedure_names_are_refused() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    let reply = client
        .invoke(
            "ask",
            json!({"event": "#publish", "data": 1, "timeout_ms": 100}),
        )
        .await;
    assert_eq!(reply["error"]["name"], "HostError", "{reply}");
    assert_eq!(reply["error"]["reason"], "invalid-argument", "{reply}");
}

#[tokio::test]
async fn packets_sent_while_a_call_waits_are_handled_after_it_in_order() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    let (ask_cid, _invoked) = ask(&mut client, "confirm", json!(1), 300).await;
    let mut echo_cids = Vec::new();
    for n in 0..3 {
        echo_cids.push(client.send_invoke("echo", json!(n)).await);
    }
    let first = client.next_packet().await;
    assert_eq!(
        first["rid"], ask_cid,
        "the waiting call answers first: {first}"
    );
    assert_eq!(first["error"]["name"], "TimeoutError", "{first}");
    for (n, cid) in echo_cids.into_iter().enumerate() {
        let reply = client.next_packet().await;
        assert_eq!(reply["rid"], cid, "{reply}");
        assert_eq!(reply["data"], json!(n), "{reply}");
    }
}

#[tokio::test]
async fn a_call_waiting_past_the_wait_limit_is_ended_as_a_fault() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &["--plugin-max-wait-ms", "300"]);
    let mut client = server.client().await;
    let started = Instant::now();
    let (cid, _invoked) = ask(&mut client, "confirm", json!(1), 10_000).await;
    let reply = client.reply(cid).await;
    assert_eq!(reply["error"]["name"], "PluginError", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("wait limit of 300 ms"),
        "{reply}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The instance it dropped is rebuilt for the next call.
    assert_eq!(client.call("echo", json!("again")).await, json!("again"));
}
