//! Fault isolation: a plugin that panics, loops or eats memory costs one
//! call; connections, subscriptions and KV state survive; a plugin that
//! cannot be rebuilt backs off and recovers by itself.

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::{TestServer, fixture_plugin, plugins_dir};
use testkit::Client;

fn parse_health(body: &str) -> Value {
    serde_json::from_str(body).unwrap()
}

fn plugin_health<'a>(health: &'a Value, name: &str) -> &'a Value {
    health["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|plugin| plugin["name"] == name)
        .unwrap()
}

#[tokio::test]
async fn spin_times_out_and_grow_runs_out_of_memory_without_closing_anything() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(
        dir.path(),
        &["--plugin-deadline-ms", "50", "--plugin-memory-mib", "16"],
    );
    let mut client = server.client().await;

    let reply = client.invoke("spin", json!(null)).await;
    assert_eq!(reply["error"]["name"], "PluginError");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("timed out (deadline 50 ms)"), "{message}");

    let reply = client.invoke("grow", json!(null)).await;
    assert_eq!(reply["error"]["name"], "PluginError");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("ran out of memory (cap 16 MiB)"),
        "{message}"
    );

    assert_eq!(client.call("echo", json!("alive")).await, json!("alive"));
    let (_, body) = server.http_get("/healthz", "").await;
    let echo = plugin_health(&parse_health(&body), "echo").clone();
    assert_eq!(echo["timeouts"], 1, "{echo}");
    assert_eq!(echo["outOfMemory"], 1, "{echo}");
    assert!(echo["rebuilds"].as_u64().unwrap() >= 2, "{echo}");
    assert_eq!(echo["status"], "ok");

    let log = server.log();
    assert!(
        log.contains("timed out") && log.contains("echo.wasm") && log.contains("on-invoke 'spin'"),
        "{log}"
    );
}

/// 200 connections: some call `crash`, `spin` and `grow` over and over,
/// the others call `echo`; chat state and subscriptions must survive.
#[tokio::test]
async fn chaos_with_200_connections_drops_nothing() {
    const CONNECTIONS: usize = 200;
    const FAULTY: usize = 20;
    // One short of the per-socket back-off (10 faults within 10 s): this
    // test is about isolation; the back-off has tests of its own.
    const ROUNDS: usize = 9;
    let dir = plugins_dir(&["echo", "chat"]);
    let server = TestServer::start(
        dir.path(),
        &["--plugin-deadline-ms", "20", "--plugin-memory-mib", "16"],
    );

    // State that must survive: a chat member and a subscriber.
    let mut member = server.client().await;
    member
        .call("join", json!({"room": "chaos", "nick": "survivor"}))
        .await;
    let mut listener = server.client().await;
    listener.subscribe("room:chaos").await;

    let mut tasks = Vec::new();
    for index in 0..CONNECTIONS {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            let mut faults = 0;
            for round in 0..ROUNDS {
                if index < FAULTY {
                    let event = ["crash", "spin", "grow"][(index + round) % 3];
                    let reply = client.invoke(event, json!(null)).await;
                    assert_eq!(reply["error"]["name"], "PluginError", "{event}: {reply}");
                    faults += 1;
                }
                let data = json!({"client": index, "round": round});
                assert_eq!(client.call("echo", data.clone()).await, data);
            }
            (client, faults)
        }));
    }
    let mut clients: Vec<Client> = Vec::new();
    let mut faults = 0;
    for task in tasks {
        let (client, count) = task.await.unwrap();
        faults += count;
        clients.push(client);
    }
    assert_eq!(faults, FAULTY * ROUNDS);

    // Every connection is still open and answers.
    for client in &mut clients {
        assert_eq!(
            client.call("echo", json!("still open")).await,
            json!("still open")
        );
    }
    // KV state and subscriptions survived: the member can still speak, the
    // listener still hears.
    member
        .call("say", json!({"room": "chaos", "text": "after the storm"}))
        .await;
    assert_eq!(
        listener.publication().await,
        (
            "room:chaos".into(),
            json!({"type": "say", "nick": "survivor", "text": "after the storm"})
        )
    );
    let (_, body) = server.http_get("/healthz", "").await;
    let health = parse_health(&body);
    assert_eq!(health["connections"], CONNECTIONS + 2);
    let echo = plugin_health(&health, "echo");
    let counted = echo["traps"].as_u64().unwrap()
        + echo["timeouts"].as_u64().unwrap()
        + echo["outOfMemory"].as_u64().unwrap();
    assert_eq!(counted, (FAULTY * ROUNDS) as u64, "{echo}");
}

#[tokio::test]
async fn a_plugin_that_cannot_be_rebuilt_backs_off_and_recovers() {
    let dir = plugins_dir(&["echo"]);
    std::fs::copy(fixture_plugin("flaky"), dir.path().join("flaky.wasm")).unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    assert_eq!(client.call("flaky-ok", json!(null)).await, json!("ok"));

    // Broken for 1.5 s: the call traps, and every rebuild until then traps in init.
    let reply = client.invoke("flaky-break", json!({"for_ms": 1500})).await;
    assert_eq!(reply["error"]["name"], "PluginError");
    let reply = client.invoke("flaky-ok", json!(null)).await;
    assert_eq!(reply["error"]["name"], "PluginUnavailable", "{reply}");
    assert!(
        reply["error"]["message"].as_str().unwrap().contains("init"),
        "{reply}"
    );

    // Degraded, while another plugin is not affected.
    let (_, body) = server.http_get("/healthz", "").await;
    let health = parse_health(&body);
    assert_eq!(health["status"], "degraded");
    let flaky = plugin_health(&health, "flaky");
    assert_eq!(flaky["status"], "degraded");
    assert!(
        flaky["lastError"].as_str().unwrap().contains("init"),
        "{flaky}"
    );
    assert_eq!(
        client.call("echo", json!("unaffected")).await,
        json!("unaffected")
    );

    // Recovers by itself once a rebuild succeeds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reply = client.invoke("flaky-ok", json!(null)).await;
        if reply.get("error").is_none() {
            assert_eq!(reply["data"], "ok");
            break;
        }
        assert_eq!(reply["error"]["name"], "PluginUnavailable", "{reply}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "flaky never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The other worker recovers too (connections alternate between workers).
    let mut other = server.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while other
        .invoke("flaky-ok", json!(null))
        .await
        .get("error")
        .is_some()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "flaky never recovered on the other worker"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, body) = server.http_get("/healthz", "").await;
    let health = parse_health(&body);
    assert_eq!(health["status"], "ok", "{health}");
    assert!(
        plugin_health(&health, "flaky")["backoffs"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert!(server.log().contains("plugin recovered"));
}

#[tokio::test]
async fn a_quiet_worker_recovers_from_a_back_off_without_traffic() {
    let dir = plugins_dir(&[]);
    std::fs::copy(fixture_plugin("flaky"), dir.path().join("flaky.wasm")).unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    // Broken for a moment: the rebuild after the panic fails, the plugin
    // backs off (the one thing that makes it unavailable to everyone).
    let reply = client.invoke("flaky-break", json!({"for_ms": 300})).await;
    assert_eq!(reply["error"]["name"], "PluginError", "{reply}");
    let reply = client.invoke("flaky-ok", json!(null)).await;
    assert_eq!(reply["error"]["name"], "PluginUnavailable", "{reply}");
    let (status, _) = server.http_get("/readyz", "").await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    // No more calls: the instance is rebuilt when the back-off ends, and the
    // server is ready again by itself (a load balancer sends it no traffic
    // while it is unready, so waiting for a call would never end).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = server.http_get("/readyz", "").await;
        if status == "HTTP/1.1 200 OK" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still unready: {body}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.log().contains("plugin recovered"));
}

#[tokio::test]
async fn calls_that_fault_again_and_again_back_off() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    let mut unavailable = false;
    for _ in 0..30 {
        let reply = client.invoke("crash", json!(null)).await;
        match reply["error"]["name"].as_str().unwrap() {
            "PluginError" => {}
            "PluginUnavailable" => {
                unavailable = true;
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(unavailable, "ten crashes in a row must back off");
    // After the back-off, good calls are served again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let reply = client.invoke("echo", json!(1)).await;
        if reply.get("error").is_none() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn good_calls_between_faults_do_not_wipe_the_count() {
    // A client alternating a faulting call with a good one must back off
    // too: otherwise `[spin, echo] x 50` holds the instance for 50 deadlines.
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    for crash in 1..=10 {
        let reply = client.invoke("crash", json!(null)).await;
        assert_eq!(
            reply["error"]["name"], "PluginError",
            "crash {crash}: {reply}"
        );
        if crash < 10 {
            assert_eq!(client.call("echo", json!(crash)).await, json!(crash));
        }
    }
    let refused = client.invoke("echo", json!("after ten")).await;
    assert_eq!(refused["error"]["name"], "PluginUnavailable", "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("10 of its calls faulted within 10 s"),
        "{message}"
    );
    // Another socket is served meanwhile.
    let mut other = server.client().await;
    assert_eq!(other.call("echo", json!("fine")).await, json!("fine"));
}

#[tokio::test]
async fn broken_builds_are_refused_at_load_with_their_reason() {
    let dir = plugins_dir(&["echo"]);
    for fixture in ["init-trap", "bad-import", "not-a-plugin"] {
        std::fs::copy(
            fixture_plugin(fixture),
            dir.path().join(format!("{fixture}.wasm")),
        )
        .unwrap();
    }
    let server = TestServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    assert_eq!(client.call("echo", json!("served")).await, json!("served"));

    let log = server.log();
    let line = |file: &str| {
        log.lines()
            .find(|line| line.contains("plugin skipped") && line.contains(file))
            .unwrap_or_else(|| panic!("no refusal names {file}:\n{log}"))
            .to_owned()
    };
    let init = line("init-trap.wasm");
    assert!(init.contains("init failed"), "{init}");
    let import = line("bad-import.wasm");
    assert!(
        import.contains("does not fit") && import.contains("missing"),
        "{import}"
    );
    let world = line("not-a-plugin.wasm");
    assert!(world.contains("does not fit"), "{world}");
    assert!(
        log.contains("init-trap: init always panics"),
        "the guest's panic message is logged"
    );
}

/// One socket that calls a panicking RPC again and again costs the plugin a
/// rebuild per call and then backs off alone: fifty other sockets on the
/// same workers are served all along, the plugin never backs off for
/// everyone and the server stays ready.
#[tokio::test(flavor = "multi_thread")]
async fn one_socket_crashing_a_plugin_in_a_loop_takes_it_from_nobody_else() {
    const OTHERS: usize = 50;
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &[]);
    let hostile_end = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut hostile = server.client().await;
    let attack = tokio::spawn(async move {
        let (mut faults, mut refused) = (0, 0);
        while tokio::time::Instant::now() < hostile_end {
            let reply = hostile.invoke("crash", json!(null)).await;
            match reply["error"]["name"].as_str().unwrap() {
                "PluginError" => faults += 1,
                "PluginUnavailable" => {
                    refused += 1;
                    let message = reply["error"]["message"].as_str().unwrap().to_owned();
                    assert!(message.contains("unavailable to this socket"), "{message}");
                }
                other => panic!("unexpected {other}"),
            }
        }
        (faults, refused)
    });
    let mut others = Vec::new();
    for _ in 0..OTHERS {
        others.push(server.client().await);
    }
    let served = tokio::spawn(async move {
        let mut calls = 0u64;
        while tokio::time::Instant::now() < hostile_end {
            for (index, client) in others.iter_mut().enumerate() {
                let reply = client.invoke("echo", json!(index)).await;
                assert_eq!(
                    reply.get("error"),
                    None,
                    "an honest client was refused: {reply}"
                );
                assert_eq!(reply["data"], json!(index));
                calls += 1;
            }
        }
        calls
    });
    let mut ready_checks = 0;
    while tokio::time::Instant::now() < hostile_end {
        let (status, body) = server.http_get("/readyz", "").await;
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        ready_checks += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (faults, refused) = attack.await.unwrap();
    let calls = served.await.unwrap();
    assert!(
        faults >= 10 && refused > 0,
        "faults {faults}, refused {refused}"
    );
    assert!(calls >= OTHERS as u64 * 10, "only {calls} honest calls");
    assert!(ready_checks > 10);
    let (_, body) = server.http_get("/healthz", "").await;
    let echo = plugin_health(&parse_health(&body), "echo").clone();
    assert_eq!(echo["backoffs"], 0, "{echo}");
    assert!(echo["socketBackoffs"].as_u64().unwrap() >= 1, "{echo}");
}

/// A call that runs until its deadline does not hold its worker: another
/// socket on the same worker is answered meanwhile (by another plugin: a
/// plugin's own instance serves one call at a time).
#[tokio::test]
async fn a_runaway_call_yields_its_worker_to_other_sockets() {
    let dir = plugins_dir(&["echo", "chat"]);
    let server = TestServer::start(dir.path(), &["--plugin-deadline-ms", "600"]);
    // Connections go to the two workers in turn: the first and the third
    // share a worker.
    let mut spinner = server.client().await;
    let _other_worker = server.client().await;
    let mut bystander = server.client().await;
    bystander
        .call("join", json!({"room": "yield", "nick": "b"}))
        .await;
    let spinning = tokio::spawn(async move { spinner.invoke("spin", json!(null)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = tokio::time::Instant::now();
        bystander.call("members", json!({"room": "yield"})).await;
        slowest = slowest.max(started.elapsed());
    }
    let reply = spinning.await.unwrap();
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timed out (deadline 600 ms)"),
        "{reply}"
    );
    assert!(
        slowest < Duration::from_millis(150),
        "the bystander waited {slowest:?} behind a runaway call on its worker"
    );
}

/// Fault reports name the file and line of each frame, from the plugin's
/// debug line tables, without any setting: the line the guest's panic
/// message names is in the backtrace (a report that read the line tables
/// from the wrong offset named nearby lines instead). The guest's panic
/// message is there, and Rust's RUST_BACKTRACE hint (no use to a plugin)
/// is not.
#[tokio::test]
async fn fault_reports_name_files_and_lines() {
    let dir = plugins_dir(&["echo"]);
    let server = TestServer::start(dir.path(), &[]);
    let mut client = server.client().await;
    client.invoke("crash", json!(null)).await;
    let log = server.log();
    let fault = &log[log
        .find("plugin fault")
        .unwrap_or_else(|| panic!("no fault logged:\n{log}"))..];
    assert!(fault.contains("echo crashed on purpose"), "{fault}");
    assert!(!log.contains("RUST_BACKTRACE"), "{log}");
    // "panicked at examples/echo/src/lib.rs:145:24:" in the guest's stderr
    let panicked_at = fault
        .split("panicked at ")
        .nth(1)
        .and_then(|rest| rest.split(": ").next())
        .unwrap_or_else(|| panic!("no panic location: {fault}"));
    // The builds kept in tests/fixtures/v0.1.0 were stripped of names and
    // DWARF: their backtraces have neither to show.
    if std::env::var_os("WASMCLUSTER_TEST_PLUGINS").is_some() {
        return;
    }
    let backtrace = &fault[..fault.find("guest_stderr").unwrap()];
    assert!(
        backtrace
            .split_whitespace()
            .any(|word| word.ends_with(&format!("/{panicked_at}"))),
        "the backtrace does not name {panicked_at}: {fault}"
    );
}

/// What clients and operators read about faults and refusals is plain
/// words: no Rust debug output (`Variant("...")`, `Type::Variant`).
#[tokio::test]
async fn fault_messages_are_plain_words() {
    let dir = plugins_dir(&["echo"]);
    std::fs::copy(fixture_plugin("control"), dir.path().join("control.wasm")).unwrap();
    std::fs::copy(
        fixture_plugin("bad-import"),
        dir.path().join("bad-import.wasm"),
    )
    .unwrap();
    std::fs::copy(
        fixture_plugin("not-a-plugin"),
        dir.path().join("not-a-plugin.wasm"),
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.wasm"), "these are notes, not wasm\n").unwrap();
    let server = TestServer::start(
        dir.path(),
        &["--plugin-deadline-ms", "50", "--plugin-memory-mib", "16"],
    );
    let mut client = server.client().await;
    let mut messages = Vec::new();
    for (event, data) in [
        ("crash", json!(null)),
        ("spin", json!(null)),
        ("grow", json!(null)),
        ("no-such-event", json!(null)),
        ("close-me", json!({"code": 999, "reason": "x"})),
        ("close-me", json!("not an object")),
    ] {
        let reply = client.invoke(event, data).await;
        let message = reply["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{reply}"));
        messages.push(format!("{event}: {message}"));
    }
    let log = server.log();
    // The reasons the log gives, without the log line's own target path.
    messages.extend(
        log.lines()
            .filter_map(|line| line.split_once("plugin skipped: "))
            .map(|(_, reason)| reason.to_owned()),
    );
    assert_eq!(
        log.lines()
            .filter(|line| line.contains("plugin skipped"))
            .count(),
        3,
        "{log}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m
                .contains("notes.wasm: not a valid WebAssembly component: not WebAssembly at all")),
        "{messages:#?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("999 is not a close code a server may send")),
        "{messages:#?}"
    );
    for message in &messages {
        assert!(
            !message.contains("(\"") && !message.contains("::") && !message.contains('\n'),
            "debug output in: {message}"
        );
    }
}
