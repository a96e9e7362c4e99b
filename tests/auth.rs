//! JWT authentication as SocketCluster does it, through the real binary:
//! tokens in the handshake, `#authenticate`, `#removeAuthToken`, expiry
//! during a session, and bad tokens that never authenticate.

mod support;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{TestServer, plugins_dir};
use testkit::Client;

const KEY: &str = "capture-secret-key";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token signed the way SocketCluster signs them (HS256).
fn token(key: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(key.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn server() -> (TestServer, tempfile::TempDir) {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(
        dir.path(),
        &[
            "--auth-key",
            KEY,
            "--ping-interval-ms",
            "200",
            "--ping-timeout-ms",
            "5000",
        ],
    );
    (server, dir)
}

async fn handshake_with(server: &TestServer, token: &str) -> (Client, Value) {
    let mut client = server.raw_client().await;
    client
        .send(json!({"event": "#handshake", "data": {"authToken": token}, "cid": 1}))
        .await;
    let reply = client.next_packet().await;
    (client, reply)
}

#[tokio::test]
async fn a_valid_token_in_the_handshake_authenticates() {
    let (server, _dir) = server();
    let valid = token(KEY, json!({"username": "alice", "exp": now() + 60}));
    let (_client, reply) = handshake_with(&server, &valid).await;
    assert_eq!(reply["data"]["isAuthenticated"], true, "{reply}");
    assert!(reply["data"].get("authError").is_none());
}

#[tokio::test]
async fn refused_tokens_in_the_handshake_get_socketclusters_errors() {
    let (server, _dir) = server();
    let cases = [
        (
            token(KEY, json!({"exp": 1_000_000})),
            "AuthTokenExpiredError",
            "jwt expired",
        ),
        (
            token("another key", json!({})),
            "AuthTokenInvalidError",
            "invalid signature",
        ),
        (
            "garbage".to_owned(),
            "AuthTokenInvalidError",
            "jwt malformed",
        ),
        // alg: none, unsigned
        (
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJ1c2VybmFtZSI6Im1hbGxvcnkifQ.".to_owned(),
            "AuthTokenInvalidError",
            "",
        ),
        ("x".repeat(200_000), "AuthTokenInvalidError", ""),
    ];
    for (bad, name, message) in cases {
        let (mut client, reply) = handshake_with(&server, &bad).await;
        let data = &reply["data"];
        assert_eq!(data["isAuthenticated"], false, "{reply}");
        assert_eq!(data["authError"]["name"], name, "{reply}");
        if !message.is_empty() {
            assert_eq!(data["authError"]["message"], message, "{reply}");
        }
        assert_eq!(data["authError"]["isBadToken"], true);
        assert_eq!(
            client.next_packet().await,
            json!({"event": "#removeAuthToken"})
        );
        // The connection is open and unauthenticated.
        assert_eq!(client.call("echo", json!(1)).await, json!(1));
    }
    let (_, reply) = handshake_with(&server, &token(KEY, json!({"exp": 1_000_000}))).await;
    assert_eq!(
        reply["data"]["authError"]["expiry"],
        "1970-01-12T13:46:40.000Z"
    );
}

#[tokio::test]
async fn authenticate_on_a_live_socket() {
    let (server, _dir) = server();
    let mut client = server.client().await;

    let valid = token(KEY, json!({"username": "bob", "exp": now() + 60}));
    let reply = client.invoke("#authenticate", json!(valid)).await;
    assert_eq!(
        reply["data"],
        json!({"isAuthenticated": true, "authError": null})
    );

    let expired = token(KEY, json!({"exp": 1_000_000}));
    let reply = client.invoke("#authenticate", json!(expired)).await;
    assert_eq!(reply["error"]["name"], "AuthTokenExpiredError", "{reply}");
    assert_eq!(
        client.next_packet().await,
        json!({"event": "#removeAuthToken"})
    );

    let early = token(KEY, json!({"nbf": now() + 3600}));
    let reply = client.invoke("#authenticate", json!(early)).await;
    assert_eq!(reply["data"]["isAuthenticated"], false, "{reply}");
    assert_eq!(
        reply["data"]["authError"]["name"],
        "AuthTokenNotBeforeError"
    );
    assert_eq!(reply["data"]["authError"]["isBadToken"], false);

    let reply = client.invoke("#authenticate", json!(12)).await;
    assert_eq!(reply["error"]["message"], "jwt must be provided", "{reply}");
}

#[tokio::test]
async fn a_token_that_expires_during_the_session_is_removed_at_the_next_pong() {
    let (server, _dir) = server();
    let soon = token(KEY, json!({"username": "carol", "exp": now() + 1}));
    let (mut client, reply) = handshake_with(&server, &soon).await;
    assert_eq!(reply["data"]["isAuthenticated"], true);
    // Pings every 200 ms are answered by next_packet; within ~2 s the token
    // has expired and the server says so.
    let removed = tokio::time::timeout(Duration::from_secs(5), client.next_packet())
        .await
        .unwrap();
    assert_eq!(removed, json!({"event": "#removeAuthToken"}));
}

#[tokio::test]
async fn tokens_signed_by_the_server_are_rejected_with_another_key() {
    let dir = plugins_dir(&["echo"]);
    let other = TestServer::start(dir.path(), &["--auth-key", "not the same key"]);
    let (_client, reply) = handshake_with(&other, &token(KEY, json!({}))).await;
    assert_eq!(reply["data"]["authError"]["message"], "invalid signature");

    let refused = TestServer::try_start(dir.path(), &["--auth-key", ""])
        .err()
        .expect("an empty key must be refused");
    assert!(refused.contains("invalid --auth-key"), "{refused}");
}

fn tokens_server() -> (TestServer, tempfile::TempDir) {
    let dir = plugins_dir(&["echo"]);
    std::fs::copy(
        support::fixture_plugin("tokens"),
        dir.path().join("tokens.wasm"),
    )
    .unwrap();
    let server = TestServer::start(dir.path(), &["--auth-key", KEY]);
    (server, dir)
}

#[tokio::test]
async fn a_plugin_signs_a_token_for_a_socket_and_takes_it_back() {
    let (server, _dir) = tokens_server();
    let mut client = server.client().await;
    assert_eq!(client.call("whoami", json!(null)).await, Value::Null);

    // The token arrives before the RPC's answer, and verifies with the key.
    client
        .send(json!({"event": "issue", "data": {"username": "alice"}, "cid": 70}))
        .await;
    let set = client.next_packet().await;
    assert_eq!(set["event"], "#setAuthToken", "{set}");
    assert_eq!(client.next_packet().await, json!({"rid": 70}));
    let token = set["data"]["token"].as_str().unwrap();
    let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
    validation.required_spec_claims.clear();
    let decoded = jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(KEY.as_bytes()).unwrap(),
        &validation,
    )
    .unwrap();
    assert_eq!(decoded.claims["username"], "alice");
    let iat = decoded.claims["iat"].as_u64().unwrap();
    assert_eq!(decoded.claims["exp"].as_u64().unwrap(), iat + 86_400);

    // Plugins see the claims on the socket.
    assert_eq!(
        client.call("whoami", json!(null)).await["username"],
        "alice"
    );

    // The same token authenticates a new connection.
    let (_other, reply) = handshake_with(&server, token).await;
    assert_eq!(reply["data"]["isAuthenticated"], true);

    client.send(json!({"event": "logout", "cid": 71})).await;
    assert_eq!(
        client.next_packet().await,
        json!({"event": "#removeAuthToken"})
    );
    assert_eq!(client.next_packet().await, json!({"rid": 71}));
    assert_eq!(client.call("whoami", json!(null)).await, Value::Null);

    // Claims must be an object.
    let reply = client.invoke("issue", json!([1, 2])).await;
    assert_eq!(reply["error"]["name"], "HostError", "{reply}");
}
