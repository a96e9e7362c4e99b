//! A short run of every load generator scenario against the real server, so
//! that the benchmark cannot rot. Checks behaviour only (work was done, no
//! errors), never speed.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The server binary, built next to `loadgen` by `make build`.
fn server_binary() -> PathBuf {
    let loadgen = Path::new(env!("CARGO_BIN_EXE_loadgen"));
    let server = loadgen.with_file_name("wasmcluster");
    assert!(
        server.exists(),
        "{} is missing: run `make build` first (make test does)",
        server.display()
    );
    server
}

struct Server {
    child: Child,
    addr: String,
    _plugins: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server() -> Server {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let echo = repo.join("plugins/echo.wasm");
    assert!(
        echo.exists(),
        "{} is missing: run `make plugins`",
        echo.display()
    );
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(&echo, plugins.path().join("echo.wasm")).unwrap();
    std::fs::copy(
        repo.join("plugins/fetch.wasm"),
        plugins.path().join("fetch.wasm"),
    )
    .unwrap();
    std::fs::copy(
        repo.join("tests/fixtures/wasm/store.wasm"),
        plugins.path().join("store.wasm"),
    )
    .expect("tests/fixtures/wasm/store.wasm: run `make fixtures`");
    let config = plugins.path().join("wasmcluster.toml");
    std::fs::write(
        &config,
        "[plugin.fetch]\nallowed-outbound-hosts = [\"http://127.0.0.1:*\"]\n\n\
         [channels.\"history:*\"]\nhistory-size = 10000\nhistory-ttl-secs = 600\n",
    )
    .unwrap();
    let cache = Path::new(env!("CARGO_BIN_EXE_loadgen")).with_file_name("wasm-cache-tests");
    let mut child = Command::new(server_binary())
        .args(["serve", "--port", "0", "-w", "2", "--plugins"])
        .arg(plugins.path())
        .arg("--cache-dir")
        .arg(cache)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("wasmcluster listening on ")
        .expect("server started")
        .to_owned();
    Server {
        child,
        addr,
        _plugins: plugins,
    }
}

fn loadgen(server: &Server, args: &[&str]) -> Value {
    loadgen_for(server, "0.5", args)
}

/// Run a scenario for `seconds`; its JSON result.
fn loadgen_for(server: &Server, seconds: &str, args: &[&str]) -> Value {
    let pid = server.child.id().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(&args[..1])
        .args([
            "--addr",
            &server.addr,
            "--server-pid",
            &pid,
            "--duration-secs",
            seconds,
        ])
        .args(["--tag", r#"{"target":"wasmcluster"}"#])
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn every_scenario_runs_against_the_server() {
    let server = start_server();

    for scenario in ["rpc", "transmit"] {
        let result = loadgen(&server, &[scenario, "--connections", "8", "--window", "4"]);
        assert_eq!(result["scenario"], scenario);
        assert!(result["ops"].as_u64().unwrap() > 0, "{result}");
        assert_eq!(result["errors"], 0, "{result}");
        assert!(result["server_cpu_s"].as_f64().is_some(), "{result}");
    }

    // At a fixed rate: about what was offered is answered, each request
    // timed from when it was due.
    let paced_rpc = loadgen(
        &server,
        &[
            "rpc",
            "--connections",
            "4",
            "--window",
            "4",
            "--rate",
            "400",
        ],
    );
    let duration = paced_rpc["duration_s"].as_f64().unwrap();
    let offered = 400.0 * duration;
    let answered = paced_rpc["ops"].as_u64().unwrap() as f64;
    assert!((answered - offered).abs() <= offered * 0.1, "{paced_rpc}");
    assert_eq!(paced_rpc["errors"], 0, "{paced_rpc}");
    assert_eq!(paced_rpc["rate"], 400, "{paced_rpc}");

    let full = loadgen(&server, &["fanout", "--subscribers", "20"]);
    assert!(full["published"].as_u64().unwrap() > 0, "{full}");
    assert_eq!(full["lost"], 0, "{full}");
    assert_eq!(
        full["delivered"],
        full["published"].as_u64().unwrap() * 20,
        "{full}"
    );

    let spread = loadgen(
        &server,
        &["fanout", "--subscribers", "20", "--channels", "4"],
    );
    assert!(spread["published"].as_u64().unwrap() > 0, "{spread}");
    assert_eq!(spread["lost"], 0, "{spread}");

    let paced = loadgen(&server, &["fanout", "--subscribers", "20", "--rate", "100"]);
    assert!(paced["published"].as_u64().unwrap() > 0, "{paced}");
    assert_eq!(paced["lost"], 0, "{paced}");

    let idle = loadgen(
        &server,
        &[
            "idle",
            "--connections",
            "200",
            "--sources",
            "127.0.0.1,127.0.0.2",
        ],
    );
    assert_eq!(idle["open_after_settle"], 200, "{idle}");
    assert!(
        idle["bytes_per_connection"].as_f64().unwrap() > 0.0,
        "{idle}"
    );

    let connect = loadgen(&server, &["connect", "--concurrency", "4"]);
    assert!(connect["connections"].as_u64().unwrap() > 0, "{connect}");
    assert_eq!(connect["errors"], 0, "{connect}");

    // Due times start 3 s after the timers are set.
    let timers = loadgen_for(&server, "0.5", &["timers", "--timers", "200"]);
    assert_eq!(timers["fired"], 200, "{timers}");

    for operation in ["get", "set", "cas-incr"] {
        let args = [
            "kv",
            "--operation",
            operation,
            "--connections",
            "4",
            "--window",
            "2",
        ];
        let kv = loadgen(&server, &args);
        assert!(kv["ops"].as_u64().unwrap() > 0, "{kv}");
        assert_eq!(kv["errors"], 0, "{kv}");
    }

    let recovery = loadgen(
        &server,
        &["recovery", "--missed", "300", "--max-rounds", "3"],
    );
    assert_eq!(recovery["rounds"], 3, "{recovery}");
    assert!(recovery["p50_ms"].as_f64().unwrap() > 0.0, "{recovery}");

    // Both "hosts" are this server here.
    let soak = loadgen_for(
        &server,
        "1",
        &[
            "soak",
            "--other",
            &server.addr,
            "--clients",
            "8",
            "--calls",
            "5",
            "--pause-ms",
            "5",
        ],
    );
    assert!(soak["sessions"].as_u64().unwrap() > 0, "{soak}");
    assert!(soak["calls"].as_u64().unwrap() > 0, "{soak}");
    assert_eq!(soak["errors"], 0, "{soak}");
    assert_eq!(soak["failed_sessions"], 0, "{soak}");

    let fetch = loadgen(&server, &["fetch"]);
    assert!(fetch["fetch_requests"].as_u64().unwrap() > 0, "{fetch}");
    assert!(fetch["direct_requests"].as_u64().unwrap() > 0, "{fetch}");

    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let new_build = repo.join("tests/fixtures/wasm/echo-v2.wasm");
    assert!(
        new_build.exists(),
        "{} is missing: run `make fixtures`",
        new_build.display()
    );
    let plugins_dir = server._plugins.path().to_str().unwrap().to_owned();
    // Long enough for the new build to compile when it is not cached yet.
    let swap = loadgen_for(
        &server,
        "4",
        &[
            "hot-swap",
            "--connections",
            "8",
            "--window",
            "4",
            "--plugins-dir",
            &plugins_dir,
            "--new-build",
            new_build.to_str().unwrap(),
        ],
    );
    assert_eq!(swap["all_switched"], true, "{swap}");
    assert_eq!(swap["errors"], 0, "{swap}");
    assert_eq!(swap["closed"], 0, "{swap}");
}

#[test]
fn report_turns_results_into_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("results.jsonl");
    let lines = [
        r#"{"case":"rpc","target":"socketcluster","ops_per_s":100.0}"#,
        r#"{"case":"rpc","target":"socketcluster","ops_per_s":120.0}"#,
        r#"{"case":"rpc","target":"socketcluster","ops_per_s":80.0}"#,
        r#"{"case":"rpc","target":"wasmcluster","ops_per_s":1500.0}"#,
        r#"{"case":"idle","target":"socketcluster","bytes_per_connection":20000.0}"#,
        r#"{"case":"idle","target":"wasmcluster","bytes_per_connection":10000.0}"#,
    ];
    let table = report(&input, &lines);
    assert!(
        table.contains("| rpc: ops/s | 100 (80.00–120) | 1500 | 15.00x more | ≥ 10x | yes |"),
        "{table}"
    );
    assert!(table.contains("| idle: server memory per connection (bytes) | 20000 | 10000 | 2.00x less | ≥ 5x | **no** |"), "{table}");
    assert!(
        !table.contains("Key-value store"),
        "no KV runs, no KV table"
    );

    let kv = [
        r#"{"case":"kv-set-memory","target":"wasmcluster","ops_per_s":50000.0}"#,
        r#"{"case":"kv-set-embedded","target":"wasmcluster","ops_per_s":9000.0}"#,
        r#"{"case":"kv-get-redis-single","target":"wasmcluster","p50_ms":0.2}"#,
    ];
    let table = report(&input, &kv);
    assert!(
        table.contains("| set: ops/s, 50 connections × 4 in flight | 50000 | 9000 | — |"),
        "{table}"
    );
    assert!(
        table.contains("| get: p50 one at a time (ms) | — | — | 0.200 |"),
        "{table}"
    );

    let history = [
        r#"{"case":"recovery","target":"wasmcluster","p50_ms":12.5}"#,
        r#"{"case":"fanout-history","target":"wasmcluster","deliveries_per_s":300000.0}"#,
    ];
    let table = report(&input, &history);
    assert!(
        table.contains("| recovery of 10,000 missed publications: p50 (ms) | 12.50 |"),
        "{table}"
    );
    assert!(
        table.contains("| fanout with history: deliveries/s | 300000 |"),
        "{table}"
    );
}

/// `loadgen report` of result `lines` written to `input`.
fn report(input: &Path, lines: &[&str]) -> String {
    std::fs::write(input, lines.join("\n")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["report", "--input"])
        .arg(input)
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}
