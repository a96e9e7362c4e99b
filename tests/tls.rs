//! TLS through the real binary: `wss://` and `https://` with certificates
//! generated in the test (rcgen), start-up errors for bad files, and a
//! certificate reload on SIGUSR2 that keeps open connections.

mod support;

use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{TestServer, plugins_dir};
use testkit::{Client, tls_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A self-signed certificate for `localhost`: (certificate PEM, key PEM).
fn certificate() -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    (cert.cert.pem(), cert.signing_key.serialize_pem())
}

/// Write a certificate pair to `dir`; the paths.
fn write_pair(dir: &Path, (cert, key): &(String, String)) -> (PathBuf, PathBuf) {
    let cert_path = dir.join("server.crt");
    let key_path = dir.join("server.key");
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    (cert_path, key_path)
}

fn tls_server(dir: &Path, cert: &Path, key: &Path) -> TestServer {
    TestServer::start(
        dir,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )
}

fn wss_url(server: &TestServer) -> String {
    format!("wss://{}/socketcluster/", server.addr)
}

#[tokio::test]
async fn wss_and_https_are_served_with_the_given_certificate() {
    let plugins = plugins_dir(&["echo"]);
    let certs = tempfile::tempdir().unwrap();
    let pair = certificate();
    let (cert, key) = write_pair(certs.path(), &pair);
    let server = tls_server(plugins.path(), &cert, &key);

    let mut client = Client::connect_tls(&wss_url(&server), &pair.0)
        .await
        .unwrap();
    client.handshake().await;
    assert_eq!(
        client.call("echo", json!({"over": "tls"})).await,
        json!({"over": "tls"})
    );

    // Plain HTTP on the same port, through TLS.
    let mut stream = tls_connect(&wss_url(&server), &pair.0).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");

    // A client that does not trust the certificate does not get through,
    // and a plain-text client is not served.
    let stranger = certificate();
    assert!(
        Client::connect_tls(&wss_url(&server), &stranger.0)
            .await
            .is_err()
    );
    let error = tokio_tungstenite::connect_async(server.url()).await.err();
    assert!(error.is_some(), "plain ws:// must fail against a TLS port");
    // The server keeps serving.
    assert_eq!(client.call("echo", json!(2)).await, json!(2));
}

#[tokio::test]
async fn a_certificate_reload_serves_new_connections_and_keeps_open_ones() {
    let plugins = plugins_dir(&["echo"]);
    let certs = tempfile::tempdir().unwrap();
    let first = certificate();
    let (cert, key) = write_pair(certs.path(), &first);
    let server = tls_server(plugins.path(), &cert, &key);
    let mut old = Client::connect_tls(&wss_url(&server), &first.0)
        .await
        .unwrap();
    old.handshake().await;

    let renewed = certificate();
    write_pair(certs.path(), &renewed);
    server.signal("USR2");
    wait_for_log(&server, "TLS certificate reloaded").await;
    let mut new = Client::connect_tls(&wss_url(&server), &renewed.0)
        .await
        .unwrap();
    new.handshake().await;
    assert!(
        Client::connect_tls(&wss_url(&server), &first.0)
            .await
            .is_err(),
        "the old certificate is still served"
    );
    assert_eq!(
        old.call("echo", json!("still open")).await,
        json!("still open")
    );

    // A broken renewal is refused: the current certificate stays.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    server.signal("USR2");
    wait_for_log(&server, "TLS certificate not reloaded").await;
    let mut after = Client::connect_tls(&wss_url(&server), &renewed.0)
        .await
        .unwrap();
    after.handshake().await;
    assert_eq!(old.call("echo", json!(3)).await, json!(3));
}

#[test]
fn bad_certificate_files_stop_the_start_with_their_name() {
    let plugins = plugins_dir(&["echo"]);
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(certs.path(), &certificate());
    let (_, other_key) = {
        let dir = certs.path().join("other");
        std::fs::create_dir(&dir).unwrap();
        write_pair(&dir, &certificate())
    };
    let missing = certs.path().join("missing.crt");
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--tls-cert",
                missing.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ],
            "--tls-cert",
        ),
        (
            &[
                "--tls-cert",
                key.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ],
            "no PEM certificate",
        ),
        (
            &[
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                other_key.to_str().unwrap(),
            ],
            "with --tls-key",
        ),
        (&["--tls-cert", cert.to_str().unwrap()], "--tls-key"),
    ];
    for (flags, expected) in cases {
        let log = TestServer::try_start(plugins.path(), flags)
            .err()
            .unwrap_or_else(|| panic!("started with {flags:?}"));
        assert!(log.contains(expected), "{flags:?}: {log}");
    }
}

async fn wait_for_log(server: &TestServer, text: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !server.log().contains(text) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no '{text}' in the log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
