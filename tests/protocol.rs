//! The SocketCluster protocol, end to end through the real binary, frame by
//! frame: each expected frame is what `socketcluster-server` 20 sends for the
//! same input, as captured from a real server.

mod support;

use serde_json::json;
use std::time::Duration;
use support::{TestServer, plugins_dir};
use testkit::Closed;

fn echo_server(extra: &[&str]) -> (TestServer, tempfile::TempDir) {
    let dir = plugins_dir(&["echo"]);
    (TestServer::start(dir.path(), extra), dir)
}

#[tokio::test]
async fn handshake_reply_has_id_ping_timeout_and_auth_state() {
    let (server, _dir) = echo_server(&["--ping-interval-ms", "1000", "--ping-timeout-ms", "5000"]);
    let mut client = server.raw_client().await;
    let data = client.handshake().await;
    assert_eq!(data["id"].as_str().unwrap().len(), 20);
    assert_eq!(data["pingTimeout"], 5000);
    assert_eq!(data["isAuthenticated"], false);

    // A second handshake is answered again with the same id.
    client
        .send(json!({"event": "#handshake", "data": {}, "cid": 13}))
        .await;
    let again = client.next_packet().await;
    assert_eq!(again["rid"], 13);
    assert_eq!(again["data"]["id"], data["id"]);
}

#[tokio::test]
async fn invoke_answers_data_errors_and_unknown_events() {
    let (server, _dir) = echo_server(&[]);
    let mut client = server.client().await;

    let reply = client
        .invoke("echo", json!({"hello": "world", "n": 1}))
        .await;
    assert_eq!(reply, json!({"rid": 2, "data": {"hello": "world", "n": 1}}));

    // No data in, no data out; explicit null stays null.
    client.send_text(r#"{"event":"echo","cid":40}"#).await;
    assert_eq!(client.reply(40).await, json!({"rid": 40}));
    client
        .send_text(r#"{"event":"echo","data":null,"cid":41}"#)
        .await;
    assert_eq!(client.reply(41).await, json!({"rid": 41, "data": null}));

    let reply = client.invoke("fail", json!(1)).await;
    assert_eq!(reply["error"]["name"], "EchoFailure");
    assert_eq!(reply["error"]["message"], "echo failed on purpose");

    let reply = client.invoke("noSuchProcedure", json!(1)).await;
    assert_eq!(reply["error"]["name"], "UnknownEventError");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("noSuchProcedure")
    );
    assert_eq!(reply["error"]["event"], "noSuchProcedure");
}

#[tokio::test]
async fn a_plugin_panic_fails_one_call_and_keeps_the_connection() {
    let (server, _dir) = echo_server(&[]);
    let mut client = server.client().await;
    client.subscribe("kept").await;

    let reply = client.invoke("crash", json!(null)).await;
    assert_eq!(reply["error"]["name"], "PluginError");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("echo") && message.contains("trapped"),
        "{message}"
    );

    assert_eq!(
        client.call("echo", json!("still here")).await,
        json!("still here")
    );
    client
        .invoke("#publish", json!({"channel": "kept", "data": 1}))
        .await;
    assert_eq!(client.publication().await, ("kept".into(), json!(1)));

    let log = server.log();
    assert!(
        log.contains("echo crashed on purpose"),
        "guest panic message in the log:\n{log}"
    );
    assert!(
        log.contains("plugins/echo.wasm") || log.contains("echo.wasm"),
        "{log}"
    );
}

#[tokio::test]
async fn transmit_reaches_the_plugin_which_transmits_back() {
    let (server, _dir) = echo_server(&[]);
    let mut client = server.client().await;
    client.transmit("ping", json!({"n": 7})).await;
    assert_eq!(
        client.next_packet().await,
        json!({"event": "pong", "data": {"n": 7}})
    );

    // An unknown transmit is dropped and counted; the connection keeps working.
    client.transmit("nobodyListens", json!(1)).await;
    assert_eq!(client.call("echo", json!(2)).await, json!(2));
    let (_, body) = server.http_get("/healthz", "").await;
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["unknownTransmits"], 1);
}

#[tokio::test]
async fn messages_before_the_handshake_close_with_4009() {
    let (server, _dir) = echo_server(&[]);
    for frame in [
        r#"{"event":"echo","data":1,"cid":1}"#,
        "",
        "not json",
        r#"{"rid":1}"#,
    ] {
        let mut client = server.raw_client().await;
        client.send_text(frame).await;
        assert_eq!(client.closed().await, Closed::Code(4009), "frame {frame:?}");
    }
}

#[tokio::test]
async fn malformed_handshake_and_authenticate_close_with_4008() {
    let (server, _dir) = echo_server(&[]);
    let mut client = server.raw_client().await;
    client
        .send_text(r##"{"event":"#handshake","data":{}}"##)
        .await;
    assert_eq!(client.closed().await, Closed::Code(4008));

    let mut client = server.client().await;
    client
        .send_text(r##"{"event":"#authenticate","data":null}"##)
        .await;
    assert_eq!(client.closed().await, Closed::Code(4008));
}

#[tokio::test]
async fn no_handshake_closes_with_4005_after_a_ping() {
    let (server, _dir) =
        echo_server(&["--handshake-timeout-ms", "600", "--ping-interval-ms", "200"]);
    let mut client = server.raw_client().await;
    assert_eq!(
        client.next_text().await,
        Ok(String::new()),
        "pings start before the handshake"
    );
    assert_eq!(client.closed().await, Closed::Code(4005));
}

#[tokio::test]
async fn edge_cases_on_an_open_socket_match_socketcluster() {
    let (server, _dir) = echo_server(&[]);
    let mut client = server.client().await;

    // A batch is answered in order.
    client
        .send_text(r#"[{"event":"echo","data":"b1","cid":2},{"event":"echo","data":"b2","cid":3},{"event":"ping","data":"t"}]"#)
        .await;
    assert_eq!(client.next_packet().await, json!({"rid": 2, "data": "b1"}));
    assert_eq!(client.next_packet().await, json!({"rid": 3, "data": "b2"}));
    assert_eq!(
        client.next_packet().await,
        json!({"event": "pong", "data": "t"})
    );

    // A string cid is a transmit (no answer); junk and unknown rids are ignored.
    client
        .send_text(r#"{"event":"echo","data":"cid-string","cid":"4"}"#)
        .await;
    client.send_text("{not valid json").await;
    client.send_text(r#"{"rid":999,"data":"x"}"#).await;
    client.send_text(r#"{"event":"echo","cid":5}"#).await;
    assert_eq!(client.next_packet().await, json!({"rid": 5}));

    // Malformed reserved events get SocketCluster's errors.
    client
        .send_text(r##"{"event":"#subscribe","data":{"nochannel":true},"cid":6}"##)
        .await;
    client
        .send_text(r##"{"event":"#unsubscribe","data":{"channel":"x"},"cid":7}"##)
        .await;
    client
        .send_text(r##"{"event":"#publish","data":"x","cid":8}"##)
        .await;
    client
        .send_text(r##"{"event":"#unsubscribe","data":"notSubscribed","cid":9}"##)
        .await;
    let mut replies = Vec::new();
    for _ in 0..4 {
        replies.push(client.next_packet().await);
    }
    assert_eq!(
        replies[0],
        json!({"rid": 6, "error": {"message": "Subscribe channel name was malformatted", "name": "InvalidActionError"}})
    );
    assert_eq!(
        replies[1],
        json!({"rid": 7, "error": {"message": "Unsubscribe channel name was malformatted", "name": "InvalidActionError"}})
    );
    assert_eq!(
        replies[2],
        json!({"rid": 8, "error": {"message": "Publish channel name was malformatted", "name": "InvalidActionError"}})
    );
    let expected = format!(
        "Failed to unsubscribe socket from the notSubscribed channel - InvalidActionError: Socket {} tried to unsubscribe from a channel which it is not subscribed to",
        client.id
    );
    assert_eq!(
        replies[3],
        json!({"rid": 9, "error": {"message": expected, "name": "BrokerError"}})
    );

    // A #subscribe without cid is not performed.
    client
        .send_text(r##"{"event":"#subscribe","data":{"channel":"rawchan2"}}"##)
        .await;
    client
        .send_text(
            r##"{"event":"#publish","data":{"channel":"rawchan2","data":"hello raw2"},"cid":10}"##,
        )
        .await;
    assert_eq!(client.next_packet().await, json!({"rid": 10}));

    // Subscribing twice is fine; publish, then unsubscribe as RPC.
    client.subscribe("rawchan").await;
    client.subscribe("rawchan").await;
    client
        .send_text(
            r##"{"event":"#publish","data":{"channel":"rawchan","data":"hello raw"},"cid":11}"##,
        )
        .await;
    assert_eq!(
        client.next_packet().await,
        json!({"event": "#publish", "data": {"channel": "rawchan", "data": "hello raw"}})
    );
    assert_eq!(client.next_packet().await, json!({"rid": 11}));
    client
        .send_text(r##"{"event":"#unsubscribe","data":"rawchan","cid":12}"##)
        .await;
    assert_eq!(client.next_packet().await, json!({"rid": 12}));
    client
        .send_text(r##"{"event":"#publish","data":{"channel":"rawchan","data":"gone"},"cid":13}"##)
        .await;
    assert_eq!(client.next_packet().await, json!({"rid": 13}));
}

#[tokio::test]
async fn publications_reach_every_subscriber_on_every_worker() {
    let (server, _dir) = echo_server(&[]);
    // With two workers, consecutive connections land on different workers.
    let mut alice = server.client().await;
    let mut bob = server.client().await;
    let mut carol = server.client().await;
    alice.subscribe("broadcast:news").await;
    bob.subscribe("broadcast:news").await;

    // Publish with ack: the publisher's own copy arrives before the ack.
    carol.subscribe("broadcast:news").await;
    carol.send(json!({"event": "#publish", "data": {"channel": "broadcast:news", "data": {"msg": "with ack"}}, "cid": 50})).await;
    assert_eq!(
        carol.next_packet().await,
        json!({"event": "#publish", "data": {"channel": "broadcast:news", "data": {"msg": "with ack"}}})
    );
    assert_eq!(carol.next_packet().await, json!({"rid": 50}));
    assert_eq!(
        alice.publication().await,
        ("broadcast:news".into(), json!({"msg": "with ack"}))
    );
    assert_eq!(
        bob.publication().await,
        ("broadcast:news".into(), json!({"msg": "with ack"}))
    );

    // Without ack, and without data.
    carol
        .transmit(
            "#publish",
            json!({"channel": "broadcast:news", "data": "no ack"}),
        )
        .await;
    assert_eq!(
        alice.publication().await,
        ("broadcast:news".into(), json!("no ack"))
    );
    assert_eq!(
        bob.publication().await,
        ("broadcast:news".into(), json!("no ack"))
    );
    carol
        .transmit("#publish", json!({"channel": "broadcast:news"}))
        .await;
    assert_eq!(
        bob.next_packet().await.to_string(),
        r##"{"data":{"channel":"broadcast:news"},"event":"#publish"}"##
    );
    assert_eq!(
        alice.publication().await,
        ("broadcast:news".into(), serde_json::Value::Null)
    );

    // From inside a plugin.
    carol
        .call(
            "broadcast",
            json!({"channel": "broadcast:news", "data": "from plugin"}),
        )
        .await;
    assert_eq!(
        alice.publication().await,
        ("broadcast:news".into(), json!("from plugin"))
    );
    assert_eq!(
        bob.publication().await,
        ("broadcast:news".into(), json!("from plugin"))
    );

    // Unsubscribed sockets get nothing more.
    alice
        .transmit("#unsubscribe", json!("broadcast:news"))
        .await;
    assert_eq!(alice.call("echo", json!("sync")).await, json!("sync"));
    carol
        .call(
            "broadcast",
            json!({"channel": "broadcast:news", "data": "after"}),
        )
        .await;
    assert_eq!(
        bob.publication().await,
        ("broadcast:news".into(), json!("after"))
    );
    alice.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn client_publish_can_be_disabled() {
    let (server, _dir) = echo_server(&["--allow-client-publish", "false"]);
    let mut client = server.client().await;
    client.subscribe("broadcast:news").await;
    let reply = client
        .invoke("#publish", json!({"channel": "broadcast:news", "data": 1}))
        .await;
    assert_eq!(
        reply["error"],
        json!({"message": "Client publish feature is disabled", "name": "InvalidActionError"})
    );
    client
        .transmit("#publish", json!({"channel": "broadcast:news", "data": 2}))
        .await;
    // Plugins may still publish.
    client
        .call("broadcast", json!({"channel": "broadcast:news", "data": 3}))
        .await;
    assert_eq!(
        client.publication().await,
        ("broadcast:news".into(), json!(3))
    );
}

#[tokio::test]
async fn auto_ping_serves_v2_and_v1_clients() {
    let (server, _dir) = echo_server(&["--ping-interval-ms", "150", "--ping-timeout-ms", "1000"]);

    // A v2 client answers the first ping and never sees a v1 ping; the
    // connection outlives the ping timeout.
    let mut v2 = server.client().await;
    v2.auto_pong = false;
    for _ in 0..10 {
        assert_eq!(v2.next_text().await.unwrap(), "");
        v2.send_text("").await;
    }

    // A v1 client ignores "" and gets "#1" from the second ping on.
    let mut v1 = server.client().await;
    v1.auto_pong = false;
    assert_eq!(v1.next_text().await.unwrap(), "");
    assert_eq!(v1.next_text().await.unwrap(), "");
    assert_eq!(v1.next_text().await.unwrap(), "#1");
    v1.send_text("#2").await;
    for _ in 0..10 {
        assert_eq!(v1.next_text().await.unwrap(), "#1");
        v1.send_text("#2").await;
    }
    assert_eq!(v1.call("echo", json!("v1 alive")).await, json!("v1 alive"));
}

#[tokio::test]
async fn websocket_protocol_errors_get_a_close_code() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server, _dir) = echo_server(&[]);
    for (frame, code) in [
        // Reserved opcode 0x3, masked, empty.
        (vec![0x83u8, 0x80, 0, 0, 0, 0], 1002u16),
        // Text frame holding invalid UTF-8 (0xff), masked with a zero key.
        (vec![0x81u8, 0x81, 0, 0, 0, 0, 0xff], 1007),
    ] {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let upgrade = "GET /socketcluster/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        stream.write_all(upgrade.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"));
        stream.write_all(&frame).await.unwrap();
        let mut close = [0u8; 4];
        tokio::time::timeout(testkit::WAIT, stream.read_exact(&mut close))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(close[0], 0x88, "a close frame");
        assert_eq!(u16::from_be_bytes([close[2], close[3]]), code);
    }
}

#[tokio::test]
async fn fixed_ping_protocol_sends_one_kind() {
    let (server, _dir) = echo_server(&["--ping-interval-ms", "100", "--ping-protocol", "1"]);
    let mut client = server.client().await;
    client.auto_pong = false;
    for _ in 0..3 {
        assert_eq!(client.next_text().await.unwrap(), "#1");
    }
}

#[tokio::test]
async fn a_silent_client_is_closed_with_4001() {
    let (server, _dir) = echo_server(&["--ping-interval-ms", "100", "--ping-timeout-ms", "500"]);
    let mut client = server.client().await;
    client.auto_pong = false;
    assert_eq!(client.closed().await, Closed::Code(4001));
}

#[tokio::test]
async fn an_oversized_message_closes_that_socket_with_1009_only() {
    let (server, _dir) = echo_server(&["--max-payload-bytes", "4096"]);
    let mut big = server.client().await;
    let mut other = server.client().await;
    big.call("echo", json!("x".repeat(3000))).await;
    big.send(json!({"event": "echo", "data": "x".repeat(5000), "cid": 99}))
        .await;
    assert_eq!(big.closed().await, Closed::Code(1009));
    assert_eq!(other.call("echo", json!("fine")).await, json!("fine"));
}

#[tokio::test]
async fn clean_client_close_is_answered() {
    let (server, _dir) = echo_server(&[]);
    let client = server.client().await;
    client.close(1000).await;
    let mut next = server.client().await;
    assert_eq!(next.call("echo", json!(1)).await, json!(1));
}

#[tokio::test]
async fn http_endpoints() {
    let (server, _dir) = echo_server(&[]);
    let _client = server.client().await;

    let (status, body) = server.http_get("/healthz", "").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["workers"], 2);
    assert_eq!(health["connections"], 1);
    assert_eq!(health["plugins"][0]["name"], "echo");
    assert_eq!(health["plugins"][0]["file"], "echo.wasm");

    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let (status, _) = server.http_get("/socketcluster", upgrade).await;
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    let (status, _) = server.http_get("/socketcluster/", "").await;
    assert_eq!(status, "HTTP/1.1 426 Upgrade Required");
    let (status, _) = server.http_get("/nothing-here", "").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    // The status page, and the counters it turns into rates.
    let (status, body) = server.http_get("/", "").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("<title>wasmcluster status</title>"), "{body}");
    assert!(health["messagesIn"].as_u64().unwrap() >= 1, "{health}");
    assert!(health["messagesOut"].as_u64().unwrap() >= 1, "{health}");
}

#[tokio::test]
async fn the_status_page_can_be_turned_off() {
    let (server, _dir) = echo_server(&["--status-page", "false"]);
    let (status, _) = server.http_get("/", "").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

#[tokio::test]
async fn running_out_of_file_descriptors_refuses_cleanly_and_recovers() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start_under(&["prlimit", "--nofile=64:64", "--"], dir.path(), &[]);
    let mut open = Vec::new();
    let mut refused = false;
    for _ in 0..64 {
        match tokio_tungstenite::connect_async(server.url()).await {
            Ok((ws, _)) => open.push(ws),
            Err(error) => {
                assert!(
                    error.to_string().contains("503"),
                    "refused with 503: {error}"
                );
                refused = true;
                break;
            }
        }
    }
    assert!(
        refused,
        "64 descriptors cannot hold 64 connections plus the server's own"
    );
    assert!(server.log().contains("out of file descriptors"));
    // Probes and scrapes still get answers, through the descriptor the
    // server keeps in reserve.
    let (status, body) = server.http_get("/healthz", "").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let (status, _) = server.http_get("/metrics", "").await;
    assert_eq!(status, "HTTP/1.1 200 OK");

    // Free some descriptors: the server accepts again and serves.
    open.truncate(open.len().saturating_sub(5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut client = server.client().await;
    assert_eq!(client.call("echo", json!("back")).await, json!("back"));
}
