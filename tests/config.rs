//! The config file (`serve --config`), through the real binary: every flag
//! as a key with flag > environment > file > default, `[plugin.NAME]`
//! sections, errors that name the file, the line and the key, and
//! `config --example`.

mod support;

use serde_json::json;
use std::path::Path;
use std::process::Command;
use support::{TestServer, plugins_dir};
use testkit::Client;

/// Write a config file into `dir`; its path as a string.
fn config_file(dir: &Path, text: &str) -> String {
    let path = dir.join("wasmcluster.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The ping timeout a server tells clients in the handshake.
async fn ping_timeout(server: &TestServer) -> u64 {
    let mut client = Client::connect(&server.url()).await;
    client.handshake().await["pingTimeout"].as_u64().unwrap()
}

/// Run `wasmcluster serve --config FILE`, which must fail; its stderr.
fn refused(file: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_wasmcluster"))
        .args(["serve", "--port", "0", "--config", file])
        .output()
        .unwrap();
    assert!(!output.status.success(), "the server started with {file}");
    String::from_utf8(output.stderr).unwrap()
}

#[tokio::test]
async fn flags_beat_the_environment_which_beats_the_file() {
    let dir = plugins_dir(&["echo"]);
    let file = config_file(
        dir.path(),
        "ping-timeout-ms = 25000\nallow-client-publish = false\n",
    );
    let server = TestServer::start(dir.path(), &["--config", &file]);
    assert_eq!(ping_timeout(&server).await, 25000);
    let mut client = server.client().await;
    let reply = client
        .invoke("#publish", json!({"channel": "c", "data": 1}))
        .await;
    assert_eq!(
        reply["error"]["message"], "Client publish feature is disabled",
        "{reply}"
    );

    let env = [("WASMCLUSTER_PING_TIMEOUT_MS", "26000")];
    let server = TestServer::start_with_env(&env, dir.path(), &["--config", &file]);
    assert_eq!(ping_timeout(&server).await, 26000);

    let server = TestServer::start_with_env(
        &env,
        dir.path(),
        &["--config", &file, "--ping-timeout-ms", "27000"],
    );
    assert_eq!(ping_timeout(&server).await, 27000);
}

#[tokio::test]
async fn plugin_sections_set_limits_per_plugin() {
    let dir = plugins_dir(&["echo"]);
    let file = config_file(
        dir.path(),
        "[plugin.echo]\ndeadline-ms = 60\nmemory-mib = 16\nconfig = { greeting = \"hi\" }\n",
    );
    let server = TestServer::start(dir.path(), &["--config", &file]);
    let mut client = server.client().await;
    let reply = client.invoke("spin", json!(null)).await;
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timed out (deadline 60 ms)"),
        "{reply}"
    );
    let reply = client.invoke("grow", json!(null)).await;
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ran out of memory (cap 16 MiB)"),
        "{reply}"
    );
}

#[test]
fn errors_name_the_file_the_line_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(dir.path(), "port = 0\n\nprot = 8000\n");
    let stderr = refused(&file);
    assert!(
        stderr.contains(&format!("{file}:3: unknown key 'prot'")),
        "{stderr}"
    );

    let file = config_file(dir.path(), "# comment\nport = \"eighty\"\n");
    let stderr = refused(&file);
    assert!(
        stderr.contains(&format!("{file}:2: key 'port': invalid value 'eighty'")),
        "{stderr}"
    );

    let file = config_file(dir.path(), "watch = \"yes\"\n");
    assert!(refused(&file).contains(&format!("{file}:1: key 'watch': must be true or false")));

    let file = config_file(dir.path(), "ping-protocol = \"3\"\n");
    assert!(refused(&file).contains(&format!("{file}:1: key 'ping-protocol': invalid value '3'")));

    // Checks across keys point at the key that came from the file.
    let file = config_file(dir.path(), "port = 0\nping-interval-ms = 40000\n");
    let stderr = refused(&file);
    assert!(
        stderr.contains(&format!(
            "{file}:2: key 'ping-interval-ms': 40000 must be less"
        )),
        "{stderr}"
    );

    let file = config_file(dir.path(), "port = 0\n[plugin.echo]\ndeadline = 5\n");
    let stderr = refused(&file);
    assert!(stderr.contains("unknown field `deadline`"), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");

    let file = config_file(dir.path(), "port = 0\n[plugin.echo]\nmemory-mib = 0\n");
    let stderr = refused(&file);
    assert!(
        stderr.contains(&format!(
            "{file}:2: [plugin.echo] memory-mib must be between 1 and 4096"
        )),
        "{stderr}"
    );

    let file = config_file(dir.path(), "port = [0\n");
    assert!(refused(&file).contains("TOML parse error at line 1"));

    // A static directory that is not there stops the start, naming it.
    let web = dir.path().join("no-such-web");
    let file = config_file(
        dir.path(),
        &format!("port = 0\nstatic-dir = {:?}\n", web.to_str().unwrap()),
    );
    let stderr = refused(&file);
    assert!(
        stderr.contains(&format!(
            "{file}:2: key 'static-dir': cannot serve files from '{}': No such file or directory",
            web.display()
        )),
        "{stderr}"
    );

    let missing = dir.path().join("missing.toml");
    let stderr = refused(missing.to_str().unwrap());
    assert!(stderr.contains("cannot read the config file"), "{stderr}");
}

#[tokio::test]
async fn the_example_file_lists_every_flag_and_loads_as_it_is() {
    let output = Command::new(env!("CARGO_BIN_EXE_wasmcluster"))
        .args(["config", "--example"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let example = String::from_utf8(output.stdout).unwrap();
    let help = Command::new(env!("CARGO_BIN_EXE_wasmcluster"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for flag in help
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("--"))
        .map(|flag| flag.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
        .filter(|flag| !["help", "config", "log-format"].contains(flag))
    {
        assert!(
            example.contains(&format!("\n{flag} =")) || example.contains(&format!("\n#{flag} =")),
            "--{flag} is missing from the example:\n{example}"
        );
    }

    let dir = plugins_dir(&["echo"]);
    let file = config_file(dir.path(), &example);
    let server = TestServer::start(dir.path(), &["--config", &file]);
    assert_eq!(ping_timeout(&server).await, 30000);
}

/// A typo in a plugin's `init` config: the plugin does not load, the log
/// says why where the config section is named, and the server says it is
/// not ready until the config is fixed; `--strict` refuses to start.
#[tokio::test]
async fn a_plugin_that_fails_to_load_leaves_the_server_unready() {
    let dir = plugins_dir(&["echo", "auth"]);
    let file = config_file(
        dir.path(),
        "[plugin.auth]\nconfig = { users = {}, default_duration = 60 }\n\n[plugin.poll]\ndeadline-ms = 50\n",
    );
    let server = TestServer::start(dir.path(), &["--config", &file]);
    let mut client = server.client().await;
    assert_eq!(
        client.call("echo", json!(1)).await,
        json!(1),
        "the rest is served"
    );

    let (status, body) = server.http_get("/readyz", "").await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    let files = ready["problems"]["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{ready}");
    assert_eq!(files[0]["file"], "auth.wasm");
    assert_eq!(files[0]["plugin"], "auth");
    assert_eq!(files[0]["serving"], "nothing");
    assert!(
        files[0]["error"]
            .as_str()
            .unwrap()
            .contains("default_duration"),
        "{ready}"
    );
    let sections = ready["problems"]["configSections"].as_array().unwrap();
    assert!(
        sections.iter().any(|s| s
            .as_str()
            .unwrap()
            .starts_with("the config file's [plugin.auth] section is not applied:")
            && s.as_str().unwrap().contains("default_duration")),
        "{ready}"
    );
    assert!(
        sections.iter().any(|s| s
            .as_str()
            .unwrap()
            .contains("no plugin in the plugins directory is named 'poll'")),
        "{ready}"
    );
    let (_, health) = server.http_get("/healthz", "").await;
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    let log = server.log();
    assert!(
        log.contains("[plugin.auth] section is not applied"),
        "{log}"
    );
    assert!(!log.contains("but no loaded plugin has that name"), "{log}");

    let strict = refused_with(&file, dir.path(), &["--strict"]);
    assert!(
        strict.contains("--strict: not starting with plugin problems")
            && strict.contains("default_duration")
            && strict.contains("'poll'"),
        "{strict}"
    );
}

/// `serve --config FILE --plugins DIR EXTRA...`, which must fail; its stderr.
fn refused_with(file: &str, plugins: &Path, extra: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_wasmcluster"))
        .args(["serve", "--port", "0", "--config", file, "--plugins"])
        .arg(plugins)
        .args(extra)
        .output()
        .unwrap();
    assert!(!output.status.success(), "the server started");
    String::from_utf8(output.stderr).unwrap()
}
