//! `wasmcluster new`: the crate it creates builds for wasm32-wasip2 as it
//! is, passes `wasmcluster check` and serves its RPC and transmit from the
//! real server; bad names, existing directories and a wrong `--sdk` are
//! refused without touching anything.

mod support;

use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::{TestServer, repo_root};

/// The longest the plugin build may take. The build reuses the compiled
/// dependencies of the shared target directory, so it takes seconds; a cold
/// target directory compiles serde and wit-bindgen for wasm first, and
/// another cargo holding the target directory's lock delays it.
const BUILD_LIMIT: Duration = Duration::from_secs(180);

/// Run the binary with `args` in `cwd`.
fn wasmcluster(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasmcluster"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run the wasmcluster binary")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The repository's SDK, as a string for the command line.
fn sdk() -> String {
    repo_root().join("plugin-sdk").display().to_string()
}

/// The target directory the tests share (compiled dependencies are reused).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// `cargo build --release --target wasm32-wasip2` in `dir`, as the crate's
/// README says, killed after [`BUILD_LIMIT`].
fn build_plugin(dir: &Path) {
    // The workspace's lock file: the same dependency versions as the
    // repository's plugins, so the build reuses their compiled artifacts and
    // needs no registry access. Cargo drops the entries it does not need.
    std::fs::copy(repo_root().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let log = dir.join("build.log");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("run cargo");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BUILD_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the plugin build took more than {BUILD_LIMIT:?}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "the new plugin does not build:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_plugin_builds_checks_and_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().to_str().unwrap();
    let output = wasmcluster(
        &["new", "demo-plugin", "--path", parent, "--sdk", &sdk()],
        tmp.path(),
    );
    assert!(output.status.success(), "new failed: {}", stderr(&output));
    let dir = tmp.path().join("demo-plugin");
    assert!(
        stdout(&output).contains("cargo build --release --target wasm32-wasip2"),
        "{}",
        stdout(&output)
    );

    // The files, and what they promise.
    let cargo_toml = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let manifest: toml::Table = cargo_toml.parse().unwrap();
    assert_eq!(manifest["package"]["name"].as_str(), Some("demo-plugin"));
    assert_eq!(manifest["package"]["edition"].as_str(), Some("2024"));
    assert_eq!(
        manifest["lib"]["crate-type"].as_array().unwrap()[0].as_str(),
        Some("cdylib")
    );
    assert!(manifest.contains_key("workspace"), "{cargo_toml}");
    let sdk_path = manifest["dependencies"]["wasmcluster-sdk"]["path"]
        .as_str()
        .unwrap();
    // The path is relative to the new crate, where cargo reads it.
    assert_eq!(
        dir.join(sdk_path).canonicalize().unwrap(),
        repo_root().join("plugin-sdk").canonicalize().unwrap()
    );
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(readme.contains("cargo build --release --target wasm32-wasip2"));
    assert!(readme.contains("wasmcluster strip target/wasm32-wasip2/release/demo_plugin.wasm"));
    assert!(readme.contains("wasmcluster check target/wasm32-wasip2/release/demo_plugin.wasm"));
    let gitignore = std::fs::read_to_string(dir.join(".gitignore")).unwrap();
    assert!(gitignore.lines().any(|line| line == "/target"));
    let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
    assert!(lib.contains("export!(DemoPlugin);"), "{lib}");

    build_plugin(&dir);
    let wasm = target_dir().join("wasm32-wasip2/release/demo_plugin.wasm");
    let built = std::fs::metadata(&wasm).unwrap().len();
    let strip = wasmcluster(&["strip", wasm.to_str().unwrap()], tmp.path());
    assert!(strip.status.success(), "strip failed: {}", stderr(&strip));
    let stripped = std::fs::metadata(&wasm).unwrap().len();
    assert!(stripped < built / 3 * 2, "{stripped} of {built} bytes");

    let check = wasmcluster(&["check", wasm.to_str().unwrap()], tmp.path());
    assert!(check.status.success(), "check failed: {}", stderr(&check));
    let report = stdout(&check);
    for line in [
        "plugin     demo-plugin 0.1.0",
        "rpc        demo-plugin.hello",
        "transmit   demo-plugin.say",
        "hooks      -",
    ] {
        assert!(report.contains(line), "`{line}` missing from:\n{report}");
    }

    // Served, with the greeting from the config file as its README shows.
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(&wasm, plugins.path().join("demo_plugin.wasm")).unwrap();
    let config = plugins.path().join("wasmcluster.toml");
    std::fs::write(
        &config,
        "[plugin.demo-plugin]\nconfig = { greeting = \"Hi\" }\n",
    )
    .unwrap();
    let server = TestServer::start(plugins.path(), &["--config", config.to_str().unwrap()]);
    let mut client = server.client().await;
    let answer = client
        .call("demo-plugin.hello", json!({ "name": "ada" }))
        .await;
    assert_eq!(
        answer,
        json!({ "text": "Hi, ada!", "count": 1, "socket": client.id })
    );
    let reply = client.invoke("demo-plugin.hello", json!(null)).await;
    assert_eq!(reply["data"]["text"], "Hi, world!", "{reply}");
    assert_eq!(reply["data"]["count"], 2, "{reply}");
    let reply = client
        .invoke("demo-plugin.hello", json!({ "name": 7 }))
        .await;
    assert_eq!(reply["error"]["name"], "InvalidDataError", "{reply}");

    client.subscribe("demo-plugin").await;
    client.transmit("demo-plugin.say", json!({ "x": 1 })).await;
    let (channel, data) = client.publication().await;
    assert_eq!(channel, "demo-plugin");
    assert_eq!(data, json!({ "from": client.id, "data": { "x": 1 } }));
}

#[test]
fn bad_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().to_str().unwrap();
    for name in [
        "1demo", "Demo", "de mo", "de/mo", "../demo", "demo.x", "", "fn", "test",
    ] {
        let output = wasmcluster(
            &["new", name, "--path", parent, "--sdk", &sdk()],
            tmp.path(),
        );
        assert!(!output.status.success(), "'{name}' was accepted");
        assert!(
            stderr(&output).contains(&format!("invalid plugin name '{name}'")),
            "'{name}': {}",
            stderr(&output)
        );
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "files were created: {left:?}");
}

#[test]
fn an_existing_directory_is_not_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().to_str().unwrap();
    let taken = tmp.path().join("taken");
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join("keep.txt"), "mine").unwrap();
    std::fs::write(tmp.path().join("file"), "a file").unwrap();
    for name in ["taken", "file"] {
        let output = wasmcluster(
            &["new", name, "--path", parent, "--sdk", &sdk()],
            tmp.path(),
        );
        assert!(!output.status.success(), "{name} was overwritten");
        let expected = format!("{} already exists", tmp.path().join(name).display());
        assert!(stderr(&output).contains(&expected), "{}", stderr(&output));
    }
    assert_eq!(
        std::fs::read_to_string(taken.join("keep.txt")).unwrap(),
        "mine"
    );
    assert!(!taken.join("Cargo.toml").exists());
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("file")).unwrap(),
        "a file"
    );
}

#[test]
fn the_sdk_is_checked_and_found() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().to_str().unwrap();

    // --sdk must be the SDK (or a checkout holding it).
    let output = wasmcluster(
        &["new", "demo", "--path", parent, "--sdk", parent],
        tmp.path(),
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("not the wasmcluster SDK"),
        "{}",
        stderr(&output)
    );
    assert!(!tmp.path().join("demo").exists());

    // Without --sdk: the first plugin-sdk in DIR or its parents, by a
    // relative path.
    let checkout = tmp.path().join("checkout");
    std::fs::create_dir_all(checkout.join("plugin-sdk")).unwrap();
    std::fs::write(
        checkout.join("plugin-sdk/Cargo.toml"),
        "[package]\nname = \"wasmcluster-sdk\"\nversion = \"0.1.0\"\n",
    )
    .unwrap();
    let examples = checkout.join("examples");
    let output = wasmcluster(
        &["new", "found", "--path", examples.to_str().unwrap()],
        tmp.path(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let cargo_toml = std::fs::read_to_string(examples.join("found/Cargo.toml")).unwrap();
    assert!(
        cargo_toml.contains(r#"wasmcluster-sdk = { path = "../../plugin-sdk" }"#),
        "{cargo_toml}"
    );

    // A checkout's root works for --sdk too; --sdk-git writes a git dependency.
    let output = wasmcluster(
        &[
            "new",
            "root",
            "--path",
            parent,
            "--sdk",
            checkout.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let cargo_toml = std::fs::read_to_string(tmp.path().join("root/Cargo.toml")).unwrap();
    assert!(
        cargo_toml.contains(r#"wasmcluster-sdk = { path = "../checkout/plugin-sdk" }"#),
        "{cargo_toml}"
    );
    let url = "https://example.com/wasmcluster.git";
    let output = wasmcluster(
        &["new", "gitdep", "--path", parent, "--sdk-git", url],
        tmp.path(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let cargo_toml = std::fs::read_to_string(tmp.path().join("gitdep/Cargo.toml")).unwrap();
    assert!(
        cargo_toml.contains(&format!(r#"wasmcluster-sdk = {{ git = "{url}" }}"#)),
        "{cargo_toml}"
    );
}

#[test]
fn the_build_path_follows_cargo_target_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().to_str().unwrap();
    let new = |name: &str, target: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wasmcluster"));
        command
            .args(["new", name, "--path", parent, "--sdk", &sdk()])
            .current_dir(tmp.path());
        match target {
            Some(target) => command.env("CARGO_TARGET_DIR", target),
            None => command.env_remove("CARGO_TARGET_DIR"),
        };
        stdout(&command.output().unwrap())
    };
    let shared = new("shared-target", Some("/srv/builds"));
    assert!(
        shared.contains("wasmcluster check /srv/builds/wasm32-wasip2/release/shared_target.wasm"),
        "{shared}"
    );
    let local = new("local-target", None);
    assert!(
        local.contains("wasmcluster check target/wasm32-wasip2/release/local_target.wasm"),
        "{local}"
    );
}
