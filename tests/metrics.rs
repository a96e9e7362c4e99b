//! `GET /metrics` through the real binary: the exposition parses as
//! OpenMetrics (and as Prometheus text), every sample belongs to a declared
//! family, and real traffic moves each counter by exactly what it did.

mod support;

use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use support::{TestServer, fixture_plugin, plugins_dir};
use testkit::host_and_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Pings far apart, so that heartbeats do not move the counters a test
/// checks exactly.
const QUIET: [&str; 4] = ["--ping-interval-ms", "20000", "--ping-timeout-ms", "60000"];

/// GET `/metrics` with an `Accept` header; the response head and body.
async fn get_metrics(server: &TestServer, accept: Option<&str>) -> (String, String) {
    let mut stream = TcpStream::connect(host_and_port(&server.url()))
        .await
        .unwrap();
    let accept = accept.map_or(String::new(), |accept| format!("Accept: {accept}\r\n"));
    let request = format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\n{accept}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(testkit::WAIT, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

/// Scrape as Prometheus does (OpenMetrics), check the answer and parse it.
async fn scrape(server: &TestServer) -> Scrape {
    let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                  version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (head, body) = get_metrics(server, Some(accept)).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains(&format!("Content-Type: {OPENMETRICS}\r\n")),
        "{head}"
    );
    Scrape::parse(&body, Format::OpenMetrics).unwrap_or_else(|error| panic!("{error}\n{body}"))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    OpenMetrics,
    Prometheus,
}

/// One sample line.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A histogram series' buckets: (`le`, cumulative count).
type Buckets = Vec<(f64, f64)>;

/// A parsed exposition: families by name, with their type, and samples.
#[derive(Debug)]
struct Scrape {
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

/// Whether `name` is a valid metric or label name (`[a-zA-Z_:][a-zA-Z0-9_:]*`;
/// no `:` in label names).
fn valid_name(name: &str, colon: bool) -> bool {
    let ok = |c: char, first: bool| {
        c.is_ascii_alphabetic() || c == '_' || (colon && c == ':') || (!first && c.is_ascii_digit())
    };
    let mut chars = name.chars();
    chars.next().is_some_and(|c| ok(c, true)) && chars.all(|c| ok(c, false))
}

/// Parse `{key="value",...}` at the start of `text`; the labels and the rest.
fn parse_labels(text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let Some(mut rest) = text.strip_prefix('{') else {
        return Ok((labels, text));
    };
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (key, after) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("label without =\" in {text}"))?;
        if !valid_name(key, false) {
            return Err(format!("bad label name {key:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated label value in {text}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in {text}")),
                },
                Some((_, '\n')) => return Err("newline in a label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(key.to_owned(), value).is_some() {
            return Err(format!("label {key} twice in {text}"));
        }
        rest = &after[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(format!("expected , or }} after a label in {text}"));
        }
    }
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text.parse().map_err(|_| format!("bad value {text:?}")),
    }
}

impl Scrape {
    /// Parse an exposition strictly: every line is a `# HELP`, `# TYPE`,
    /// `# UNIT` (OpenMetrics) or a sample `name{labels} value`; every sample
    /// belongs to a family with a `# TYPE` declared before it (once, its
    /// samples together); histograms are cumulative and end with `+Inf` equal
    /// to `_count`; OpenMetrics ends with `# EOF`.
    fn parse(text: &str, format: Format) -> Result<Scrape, String> {
        let mut types: HashMap<String, String> = HashMap::new();
        let mut samples = Vec::new();
        let mut current: Option<String> = None;
        let mut finished: Vec<String> = Vec::new();
        let mut lines = text.lines();
        let mut eof = false;
        for line in lines.by_ref() {
            if format == Format::OpenMetrics && line == "# EOF" {
                eof = true;
                break;
            }
            if let Some(comment) = line.strip_prefix("# ") {
                let mut parts = comment.splitn(3, ' ');
                let (Some(keyword), Some(name)) = (parts.next(), parts.next()) else {
                    return Err(format!("bad comment line {line:?}"));
                };
                let rest = parts.next().unwrap_or("");
                if !valid_name(name, true) {
                    return Err(format!("bad metric name in {line:?}"));
                }
                match keyword {
                    "HELP" => {}
                    "UNIT" if format == Format::OpenMetrics => {
                        if !name.ends_with(&format!("_{rest}")) {
                            return Err(format!("the unit is not the name's suffix: {line:?}"));
                        }
                    }
                    "TYPE" => {
                        let known = [
                            "counter",
                            "gauge",
                            "histogram",
                            "summary",
                            "untyped",
                            "unknown",
                            "info",
                            "stateset",
                            "gaugehistogram",
                        ];
                        if !known.contains(&rest) {
                            return Err(format!("unknown type in {line:?}"));
                        }
                        if types.insert(name.to_owned(), rest.to_owned()).is_some() {
                            return Err(format!("family {name} declared twice"));
                        }
                        if let Some(previous) = current.replace(name.to_owned()) {
                            finished.push(previous);
                        }
                    }
                    _ => return Err(format!("unexpected comment {line:?}")),
                }
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                return Err(format!("unexpected line {line:?}"));
            }
            let name_end = line.find(['{', ' ']).ok_or(format!("no value: {line:?}"))?;
            let name = &line[..name_end];
            if !valid_name(name, true) {
                return Err(format!("bad metric name in {line:?}"));
            }
            let (labels, rest) = parse_labels(&line[name_end..])?;
            let value = rest
                .strip_prefix(' ')
                .ok_or_else(|| format!("no space before the value: {line:?}"))?;
            if value.contains(' ') {
                return Err(format!("unexpected timestamp or exemplar: {line:?}"));
            }
            let value = parse_value(value)?;
            let family = Self::family_of(&types, name, format)
                .ok_or_else(|| format!("sample {name} of no declared family"))?;
            if current.as_deref() != Some(family.as_str()) || finished.contains(&family) {
                return Err(format!("sample {name} outside its family's block"));
            }
            samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        if format == Format::OpenMetrics {
            if !eof {
                return Err("no # EOF".into());
            }
            if lines.next().is_some() {
                return Err("text after # EOF".into());
            }
        }
        let scrape = Scrape { types, samples };
        scrape.check_histograms()?;
        Ok(scrape)
    }

    /// The family a sample name belongs to, given the declared types.
    fn family_of(types: &HashMap<String, String>, name: &str, format: Format) -> Option<String> {
        let has = |family: &str, kind: &[&str]| {
            types
                .get(family)
                .is_some_and(|declared| kind.contains(&declared.as_str()))
        };
        if has(name, &["gauge", "unknown", "untyped", "info", "stateset"]) {
            return Some(name.to_owned());
        }
        if format == Format::Prometheus && has(name, &["counter"]) {
            return Some(name.to_owned());
        }
        for (suffix, kinds) in [
            ("_total", &["counter"][..]),
            ("_created", &["counter", "histogram", "summary"][..]),
            ("_bucket", &["histogram", "gaugehistogram"][..]),
            ("_sum", &["histogram", "summary"][..]),
            ("_count", &["histogram", "summary"][..]),
        ] {
            if let Some(family) = name.strip_suffix(suffix)
                && has(family, kinds)
                && (format == Format::OpenMetrics || suffix != "_total")
            {
                return Some(family.to_owned());
            }
        }
        None
    }

    /// Each histogram series: buckets with `le`, cumulative, `+Inf` last and
    /// equal to `_count`.
    fn check_histograms(&self) -> Result<(), String> {
        for (family, kind) in &self.types {
            if kind != "histogram" {
                continue;
            }
            let mut series: BTreeMap<Vec<(String, String)>, Buckets> = BTreeMap::new();
            for sample in self
                .samples
                .iter()
                .filter(|s| s.name == format!("{family}_bucket"))
            {
                let mut labels = sample.labels.clone();
                let le = labels
                    .remove("le")
                    .ok_or_else(|| format!("bucket of {family} without le"))?;
                let le = parse_value(&le)?;
                series
                    .entry(labels.into_iter().collect())
                    .or_default()
                    .push((le, sample.value));
            }
            for (labels, buckets) in series {
                if !buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
                {
                    return Err(format!("{family}{labels:?}: buckets not cumulative"));
                }
                let last = buckets.last().unwrap();
                let labels: Vec<(&str, &str)> = labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let count = self.get(&format!("{family}_count"), &labels);
                if last.0 != f64::INFINITY || Some(last.1) != count {
                    return Err(format!("{family}{labels:?}: +Inf bucket is not _count"));
                }
            }
        }
        Ok(())
    }

    /// The value of the sample with exactly these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|sample| sample.name == name && sample.labels == wanted)
            .map(|sample| sample.value)
    }

    /// Like [`Scrape::get`], failing when the sample is missing.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    }
}

/// How much a sample grew from `before` to `after`.
fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.value(name, labels) - before.value(name, labels)
}

#[test]
fn the_parser_rejects_what_prometheus_would() {
    let good = "# HELP x_total A counter\n# TYPE x counter\nx_total{a=\"1\\\"\"} 3\n# EOF\n";
    let parsed = Scrape::parse(good, Format::OpenMetrics).unwrap();
    assert_eq!(parsed.value("x_total", &[("a", "1\"")]), 3.0);
    for bad in [
        // No TYPE for the family.
        "y_total 1\n# EOF\n",
        // A sample name that is no sample of its counter family.
        "# TYPE x counter\nx 1\n# EOF\n",
        // Malformed labels, values, names.
        "# TYPE x gauge\nx{a=1} 1\n# EOF\n",
        "# TYPE x gauge\nx one\n# EOF\n",
        "# TYPE 1x gauge\n1x 1\n# EOF\n",
        // No EOF; something after it; a blank line.
        "# TYPE x gauge\nx 1\n",
        "# TYPE x gauge\nx 1\n# EOF\nx 2\n",
        "# TYPE x gauge\n\nx 1\n# EOF\n",
        // A family's samples split by another family.
        "# TYPE x gauge\n# TYPE y gauge\nx 1\n# EOF\n",
        // A histogram whose +Inf bucket is not its count.
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n# EOF\n",
    ] {
        assert!(
            Scrape::parse(bad, Format::OpenMetrics).is_err(),
            "accepted {bad:?}"
        );
    }
}

#[tokio::test]
async fn traffic_moves_every_counter_by_what_it_did() {
    let dir = plugins_dir(&["echo"]);
    // Two workers (the test servers' default): counters are summed.
    let server = TestServer::start(dir.path(), &QUIET);

    // Both formats parse; plain clients (curl) get the Prometheus text format.
    let (head, body) = get_metrics(&server, None).await;
    assert!(
        head.contains(&format!("Content-Type: {PROMETHEUS}\r\n")),
        "{head}"
    );
    let plain = Scrape::parse(&body, Format::Prometheus).unwrap_or_else(|e| panic!("{e}\n{body}"));
    assert_eq!(plain.types["wasmcluster_messages_in_total"], "counter");
    assert_eq!(plain.value("wasmcluster_connections_open", &[]), 0.0);

    let before = scrape(&server).await;
    assert_eq!(
        before.types["wasmcluster_rpc_duration_seconds"],
        "histogram"
    );
    assert_eq!(before.types["wasmcluster_messages_in"], "counter");
    assert_eq!(before.types["wasmcluster_connections_open"], "gauge");
    let echo = [("plugin", "echo"), ("event", "echo")];
    assert_eq!(
        before.value("wasmcluster_rpc_duration_seconds_count", &echo),
        0.0
    );

    let mut a = server.client().await;
    let mut b = server.client().await;
    b.subscribe("news").await;
    for n in 0..5 {
        assert_eq!(a.call("echo", json!(n)).await, json!(n));
    }
    assert_eq!(
        a.invoke("fail", json!(1)).await["error"]["name"],
        "EchoFailure"
    );
    assert_eq!(
        a.invoke("noSuchEvent", json!(1)).await["error"]["name"],
        "UnknownEventError"
    );
    a.transmit("ping", json!("hi")).await;
    let pong = a.next_packet().await;
    assert_eq!(pong, json!({"event": "pong", "data": "hi"}));

    let during = scrape(&server).await;
    assert_eq!(during.value("wasmcluster_connections_open", &[]), 2.0);
    assert_eq!(during.value("wasmcluster_channels", &[]), 1.0);

    a.call("#publish", json!({"channel": "news", "data": "extra"}))
        .await;
    assert_eq!(b.publication().await, ("news".to_owned(), json!("extra")));
    let crash = a.invoke("crash", json!(null)).await;
    assert_eq!(crash["error"]["name"], "PluginError", "{crash}");
    // The next event rebuilds the instance the crash dropped.
    assert_eq!(a.call("echo", json!("again")).await, json!("again"));
    b.call("#unsubscribe", json!("news")).await;

    let after = scrape(&server).await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    let kinds = [
        ("handshake", 2.0),
        ("subscribe", 1.0),
        // echo x6, fail, noSuchEvent, crash
        ("invoke", 9.0),
        ("transmit", 1.0),
        ("publish", 1.0),
        ("unsubscribe", 1.0),
        ("authenticate", 0.0),
        ("other", 0.0),
    ];
    for (kind, count) in kinds {
        assert_eq!(
            d("wasmcluster_messages_in_total", &[("kind", kind)]),
            count,
            "messages in of kind {kind}"
        );
    }
    // Handshake replies 2, subscribe ack, 9 RPC answers, pong, publication
    // and its ack, unsubscribe ack.
    assert_eq!(d("wasmcluster_messages_out_total", &[]), 16.0);
    assert_eq!(d("wasmcluster_connections_accepted_total", &[]), 2.0);
    assert_eq!(d("wasmcluster_upgrades_refused_total", &[]), 0.0);
    assert_eq!(after.value("wasmcluster_channels", &[]), 0.0);
    assert_eq!(
        d("wasmcluster_publications_total", &[("source", "client")]),
        1.0
    );

    assert_eq!(d("wasmcluster_rpc_duration_seconds_count", &echo), 6.0);
    assert!(d("wasmcluster_rpc_duration_seconds_sum", &echo) > 0.0);
    assert_eq!(d("wasmcluster_rpc_errors_total", &echo), 0.0);
    let fail = [("plugin", "echo"), ("event", "fail")];
    assert_eq!(d("wasmcluster_rpc_errors_total", &fail), 1.0);
    assert_eq!(d("wasmcluster_rpc_duration_seconds_count", &fail), 1.0);
    let crashed = [("plugin", "echo"), ("event", "crash")];
    assert_eq!(d("wasmcluster_rpc_errors_total", &crashed), 1.0);
    // An unknown event is answered but creates no series.
    assert!(
        !after
            .samples
            .iter()
            .any(|s| s.labels.values().any(|v| v == "noSuchEvent")),
        "a series for an unknown event"
    );

    let trap = [("plugin", "echo"), ("kind", "trap")];
    assert_eq!(d("wasmcluster_plugin_faults_total", &trap), 1.0);
    let timeout = [("plugin", "echo"), ("kind", "timeout")];
    assert_eq!(d("wasmcluster_plugin_faults_total", &timeout), 0.0);
    let plugin = [("plugin", "echo")];
    assert_eq!(d("wasmcluster_plugin_rebuilds_total", &plugin), 1.0);
    assert_eq!(d("wasmcluster_plugin_backoffs_total", &plugin), 0.0);
    assert_eq!(after.value("wasmcluster_plugin_degraded", &plugin), 0.0);

    // A reload that refuses a broken file counts both.
    std::fs::copy(
        fixture_plugin("not-a-plugin"),
        dir.path().join("broken.wasm"),
    )
    .unwrap();
    server.signal("USR2");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let reloaded = loop {
        let now = scrape(&server).await;
        if now.value("wasmcluster_plugin_reloads_total", &[("result", "ok")]) == 1.0 {
            break now;
        }
        assert!(tokio::time::Instant::now() < deadline, "no reload counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let refused = [("result", "refused")];
    assert_eq!(
        reloaded.value("wasmcluster_plugin_reloads_total", &refused),
        1.0
    );
    // The unchanged echo keeps its histogram across the reload.
    assert_eq!(
        reloaded.value("wasmcluster_rpc_duration_seconds_count", &echo),
        after.value("wasmcluster_rpc_duration_seconds_count", &echo)
    );
    drop((a, b));
}

#[tokio::test]
async fn limits_and_middleware_denials_are_counted() {
    let dir = plugins_dir(&["echo", "chat"]);
    std::fs::copy(fixture_plugin("guard"), dir.path().join("guard.wasm")).unwrap();
    let mut args = vec![
        "--max-connections",
        "2",
        "--rate-limit",
        "2",
        "--rate-limit-burst",
        "5",
    ];
    args.extend(QUIET);
    let server = TestServer::start(dir.path(), &args);
    let before = scrape(&server).await;

    let mut a = server.client().await;
    let mut b = server.client().await;
    // A third upgrade is over the connection limit.
    let upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let (status, _) = server.http_get("/socketcluster/", upgrade).await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");

    // A burst of 10 RPCs in one frame: 5 pass, 5 are over the rate limit.
    let batch: Vec<_> = (0..10)
        .map(|n| json!({"event": "echo", "data": n, "cid": 100 + n}))
        .collect();
    a.send(json!(batch)).await;
    for n in 0..10 {
        a.reply(100 + n).await;
    }

    // The guard denies a subscription and a publication.
    let reply = b
        .invoke("#subscribe", json!({"channel": "forbidden"}))
        .await;
    assert_eq!(reply["error"]["name"], "SubscribeForbidden", "{reply}");
    b.subscribe("readonly").await;
    let reply = b
        .invoke("#publish", json!({"channel": "readonly", "data": "nope"}))
        .await;
    assert_eq!(reply["error"]["name"], "PublishForbidden", "{reply}");

    let after = scrape(&server).await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    assert_eq!(d("wasmcluster_upgrades_refused_total", &[]), 1.0);
    assert_eq!(d("wasmcluster_connections_accepted_total", &[]), 2.0);
    assert_eq!(after.value("wasmcluster_connections_open", &[]), 2.0);
    assert_eq!(d("wasmcluster_rate_limited_total", &[]), 5.0);
    // Packets over the limit are still counted as received.
    assert_eq!(
        d("wasmcluster_messages_in_total", &[("kind", "invoke")]),
        10.0
    );
    let echo = [("plugin", "echo"), ("event", "echo")];
    assert_eq!(d("wasmcluster_rpc_duration_seconds_count", &echo), 5.0);
    for (hook, count) in [
        ("subscribe", 1.0),
        ("publish_in", 1.0),
        ("handshake", 0.0),
        ("invoke", 0.0),
    ] {
        assert_eq!(
            d("wasmcluster_middleware_denials_total", &[("hook", hook)]),
            count,
            "denials by {hook}"
        );
    }
    assert_eq!(
        d("wasmcluster_publications_total", &[("source", "client")]),
        0.0
    );
    drop((a, b));
}

#[tokio::test]
async fn a_queue_overflow_is_counted() {
    let dir = plugins_dir(&["echo"]);
    let mut args = vec!["--max-queued-messages", "16"];
    args.extend(QUIET);
    let server = TestServer::start(dir.path(), &args);
    let mut stalled = server.client().await;
    stalled.subscribe("flood").await;
    // From here on `stalled` reads nothing.
    let mut publisher = server.client().await;
    let payload = "x".repeat(64 * 1024);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        for _ in 0..50 {
            publisher
                .send(json!({"event": "#publish", "data": {"channel": "flood", "data": payload}}))
                .await;
        }
        publisher.call("echo", json!("sync")).await;
        let now = scrape(&server).await;
        if now.value("wasmcluster_queue_overflows_total", &[]) == 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no overflow counted:\n{}",
            server.log()
        );
    }
    // The publisher, reading what it is sent, was never in danger.
    assert_eq!(publisher.call("echo", json!("ok")).await, json!("ok"));
    drop(stalled);
}
