//! Middleware hooks and operator policies through the real binary: plugins
//! that allow, rewrite or deny handshakes, tokens, subscriptions,
//! publications, RPCs and transmits; the order of a chain; middleware that
//! fails closed; `--require-auth` and the origin allow-list.

mod support;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::time::Duration;
use support::{TestServer, fixture_plugin, plugins_dir};
use testkit::{Client, Closed};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const KEY: &str = "middleware-test-key";

/// A token for `username`, signed with the server's key.
fn token(username: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({ "username": username }),
        &EncodingKey::from_secret(KEY.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// `echo` and `chat` guarded by the `guard` (and `guard-low`) fixtures.
fn server_with(fixtures: &[&str], extra: &[&str]) -> (TestServer, tempfile::TempDir) {
    let dir = plugins_dir(&["echo", "chat"]);
    for fixture in fixtures {
        std::fs::copy(
            fixture_plugin(fixture),
            dir.path().join(format!("{fixture}.wasm")),
        )
        .unwrap();
    }
    let mut args = vec!["--auth-key", KEY];
    args.extend_from_slice(extra);
    (TestServer::start(dir.path(), &args), dir)
}

fn guarded() -> (TestServer, tempfile::TempDir) {
    server_with(&["guard", "guard-low"], &[])
}

async fn handshake_with_token(client: &mut Client, token: &str) -> Value {
    client
        .send(json!({"event": "#handshake", "data": {"authToken": token}, "cid": 1}))
        .await;
    client.next_packet().await
}

#[tokio::test]
async fn a_denied_handshake_gets_the_error_and_its_close_code() {
    let (server, _dir) = guarded();
    let mut client = Client::connect(&format!("{}?reject=1", server.url())).await;
    client
        .send(json!({"event": "#handshake", "data": {}, "cid": 1}))
        .await;
    let reply = client.next_packet().await;
    assert_eq!(
        reply,
        json!({"rid": 1, "error": {"name": "HandshakeRejected", "message": "rejected by guard", "statusCode": 4008}})
    );
    assert_eq!(client.closed().await, Closed::Code(4008));

    let mut client = Client::connect(&format!("{}?reject=4567", server.url())).await;
    client
        .send(json!({"event": "#handshake", "data": {}, "cid": 1}))
        .await;
    let reply = client.next_packet().await;
    assert_eq!(reply["error"]["statusCode"], 4567, "{reply}");
    assert_eq!(client.closed().await, Closed::Code(4567));

    // Others connect as usual.
    let mut client = server.client().await;
    assert_eq!(client.call("echo", json!(1)).await, json!(1));
}

#[tokio::test]
async fn authenticate_middleware_denies_a_valid_token() {
    let (server, _dir) = guarded();
    let mut client = server.raw_client().await;
    let reply = handshake_with_token(&mut client, &token("mallory")).await;
    assert_eq!(reply["data"]["isAuthenticated"], false, "{reply}");
    assert_eq!(
        reply["data"]["authError"],
        json!({"name": "BannedUser", "message": "mallory is banned"})
    );
    // Not a bad token: the client keeps it, and the socket works.
    client.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(client.call("echo", json!("hi")).await, json!("hi"));

    // On #authenticate: an unauthenticated status with the error.
    let reply = client
        .invoke("#authenticate", json!(token("mallory")))
        .await;
    assert_eq!(
        reply["data"],
        json!({"isAuthenticated": false, "authError": {"name": "BannedUser", "message": "mallory is banned"}})
    );
    let reply = client.invoke("#authenticate", json!(token("alice"))).await;
    assert_eq!(reply["data"]["isAuthenticated"], true, "{reply}");

    // isBadToken from the middleware: an error, and the client drops it.
    let reply = client.invoke("#authenticate", json!(token("eve"))).await;
    assert_eq!(reply["error"]["name"], "BannedUser", "{reply}");
    assert_eq!(reply["error"]["isBadToken"], true, "{reply}");
    assert_eq!(client.next_packet().await["event"], "#removeAuthToken");
}

#[tokio::test]
async fn subscribe_and_publish_middleware_deny_and_rewrite() {
    let (server, _dir) = guarded();
    let mut client = server.client().await;
    let reply = client
        .invoke("#subscribe", json!({"channel": "forbidden"}))
        .await;
    assert_eq!(
        reply["error"],
        json!({"name": "SubscribeForbidden", "message": "Not allowed to subscribe to forbidden"})
    );

    client.subscribe("readonly").await;
    let reply = client
        .invoke("#publish", json!({"channel": "readonly", "data": "nope"}))
        .await;
    assert_eq!(reply["error"]["name"], "PublishForbidden", "{reply}");
    // Without a cid, the denied publication is dropped without an answer.
    client
        .send(json!({"event": "#publish", "data": {"channel": "readonly", "data": "nope"}}))
        .await;

    client.subscribe("wrapped").await;
    let reply = client
        .invoke("#publish", json!({"channel": "wrapped", "data": {"n": 1}}))
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
    assert_eq!(
        client.publication().await,
        ("wrapped".to_owned(), json!({"wrapped": {"n": 1}}))
    );
    client.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn invoke_middleware_runs_by_priority_and_the_first_deny_wins() {
    let (server, _dir) = guarded();
    let mut client = server.client().await;
    // guard-low (priority 20) runs before guard (10), then echo answers.
    assert_eq!(
        client.call("echo", json!("chain")).await,
        json!("chain+low+guard")
    );
    let reply = client.invoke("both-deny", json!(null)).await;
    assert_eq!(reply["error"]["name"], "LowDenied", "{reply}");
    // The error as the plugin made it, details included. No plugin declares
    // `forbidden`: middleware runs before routing, as in SocketCluster.
    let reply = client.invoke("forbidden", json!({"a": 1})).await;
    assert_eq!(
        reply["error"],
        json!({"name": "ForbiddenError", "message": "You cannot call forbidden", "extra": {"why": "test"}})
    );
}

#[tokio::test]
async fn transmit_middleware_drops_and_rewrites() {
    let (server, _dir) = guarded();
    let mut client = server.client().await;
    client.transmit("ping", json!("blocked")).await;
    client.transmit("ping", json!("rewrite-me")).await;
    let pong = client.next_packet().await;
    assert_eq!(pong, json!({"event": "pong", "data": "rewritten"}));
    client.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn middleware_that_faults_denies_and_the_socket_stays() {
    let (server, _dir) = guarded();
    let mut client = server.client().await;
    let reply = client.invoke("echo", json!("crash-hook")).await;
    assert_eq!(reply["error"]["name"], "PluginError", "{reply}");
    assert_eq!(reply["error"]["plugin"], "guard", "{reply}");
    let reply = client
        .invoke("#subscribe", json!({"channel": "crash-sub"}))
        .await;
    assert_eq!(reply["error"]["name"], "PluginError", "{reply}");
    client.subscribe("crash-pub").await;
    let reply = client
        .invoke("#publish", json!({"channel": "crash-pub", "data": 1}))
        .await;
    assert_eq!(reply["error"]["name"], "PluginError", "{reply}");
    // Nothing was published, and the guard serves again after its rebuild.
    assert_eq!(
        client.call("echo", json!("chain")).await,
        json!("chain+low+guard")
    );
    client.expect_silence(Duration::from_millis(200)).await;
    assert!(server.log().contains("guard crashed in on-invoke-in"));
}

#[tokio::test]
async fn require_auth_allows_only_public_rpcs_until_authenticated() {
    let (server, _dir) = server_with(&["tokens"], &["--require-auth"]);
    let mut client = server.client().await;
    for (event, data) in [
        ("echo", json!(1)),
        ("#subscribe", json!({"channel": "news"})),
        ("#publish", json!({"channel": "news", "data": 1})),
    ] {
        let reply = client.invoke(event, data).await;
        assert_eq!(
            reply["error"]["name"], "AuthRequiredError",
            "{event}: {reply}"
        );
    }
    client.transmit("ping", json!("unauthenticated")).await;
    client.expect_silence(Duration::from_millis(200)).await;

    // `issue` of the tokens fixture is public; it authenticates the socket.
    let reply = client.invoke("issue", json!({"username": "alice"})).await;
    assert!(reply.get("error").is_none(), "{reply}");
    assert_eq!(client.next_packet().await["event"], "#setAuthToken");
    assert_eq!(client.call("echo", json!(2)).await, json!(2));
    client.subscribe("news").await;
}

#[tokio::test]
async fn origins_outside_the_allow_list_get_403() {
    let (server, _dir) = server_with(&[], &["--origins", "app.example.com:443,localhost:*"]);
    let upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let (status, body) = server
        .http_get(
            "/socketcluster/",
            &format!("{upgrade}Origin: https://evil.example\r\n"),
        )
        .await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
    assert_eq!(
        body.trim(),
        "Failed to authorize socket handshake - Invalid origin: https://evil.example"
    );
    // Without an Origin header (not a browser), only `*:*` lets it through.
    let (status, _) = server.http_get("/socketcluster/", upgrade).await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden");

    for origin in ["https://app.example.com", "http://localhost:3000"] {
        let mut request = server.url().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
        let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(response.status(), 101, "{origin}");
        drop(ws);
    }
}
