//! No single point of failure behind the hosts, through the real binary:
//! two hosts on a Redis primary with a replica and three real sentinels
//! (`redis-server --sentinel`), all password-protected. The primary is
//! killed while one host publishes a numbered stream that a client of the
//! other receives; the hosts find the new primary by themselves, and the
//! stream arrives without a duplicate or a reordering, losing only a
//! contiguous run inside the failover window, which is measured and
//! printed. Readiness says so during the window; the KV survives.

mod support;

use serde_json::{Value, json};
use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};
use support::{RedisServer, TestServer, plugins_dir};

const MASTER: &str = "wasmcluster-primary";
const PASSWORD: &str = "redis-secret";
const SENTINEL_PASSWORD: &str = "sentinel-secret";
const CONFIG: &str = "[channels.\"hist:*\"]\nhistory-size = 10000\nhistory-ttl-secs = 300\n";
/// How often the test publishes, and how long it may wait for recovery.
const PUBLISH_EVERY: Duration = Duration::from_millis(5);
const RECOVERY_DEADLINE: Duration = Duration::from_secs(40);

/// A primary, its replica, and three sentinels watching them.
struct SentinelSet {
    primary: RefCell<RedisServer>,
    replica: RedisServer,
    sentinels: Vec<RedisServer>,
}

impl SentinelSet {
    async fn start() -> SentinelSet {
        let primary = RedisServer::start_with(&[], Some(PASSWORD));
        let replica = RedisServer::start_replica(&primary, PASSWORD);
        let sentinels = (0..3)
            .map(|_| RedisServer::start_sentinel(&primary, MASTER, PASSWORD, SENTINEL_PASSWORD))
            .collect();
        let set = SentinelSet {
            primary: RefCell::new(primary),
            replica,
            sentinels,
        };
        set.wait_until_ready().await;
        set
    }

    /// Until the replica is in sync and every sentinel knows it and the
    /// other two sentinels (so that they can agree on a failover).
    async fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let synced = self
                .primary
                .borrow()
                .cli(&["INFO", "replication"])
                .contains("state=online");
            let known = self.sentinels.iter().all(|sentinel| {
                let master = sentinel.cli(&["SENTINEL", "MASTER", MASTER]);
                field(&master, "num-slaves") == Some("1")
                    && field(&master, "num-other-sentinels") == Some("2")
            });
            if synced && known {
                return;
            }
            assert!(Instant::now() < deadline, "the sentinels never got ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The URL hosts are given.
    fn url(&self) -> String {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|sentinel| format!("127.0.0.1:{}", sentinel.port))
            .collect();
        format!(
            "redis+sentinel://:{PASSWORD}@{}/{MASTER}?sentinel-password={SENTINEL_PASSWORD}",
            sentinels.join(",")
        )
    }

    /// Until the replica has every write the primary has.
    async fn wait_until_replicated(&self) {
        let offset = |server: &RedisServer, name: &str| -> u64 {
            let info = server.cli(&["INFO", "replication"]);
            field_colon(&info, name)
                .and_then(|value| value.parse().ok())
                .unwrap_or(0)
        };
        let wanted = offset(&self.primary.borrow(), "master_repl_offset");
        while offset(&self.replica, "slave_repl_offset") < wanted {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The value after `name` in the alternating name/value lines `redis-cli`
/// prints for a map.
fn field<'a>(reply: &'a str, name: &str) -> Option<&'a str> {
    let mut lines = reply.lines();
    while let Some(line) = lines.next() {
        if line == name {
            return lines.next();
        }
    }
    None
}

/// The value of `name:value` in an `INFO` reply.
fn field_colon<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

fn host(url: &str, dir: &tempfile::TempDir) -> TestServer {
    let file = dir.path().join("wasmcluster.toml");
    std::fs::write(&file, CONFIG).unwrap();
    TestServer::start(
        dir.path(),
        &["--config", file.to_str().unwrap(), "--broker", url],
    )
}

async fn healthz(server: &TestServer) -> Value {
    let (_, body) = server.http_get("/healthz", "").await;
    serde_json::from_str(&body).unwrap()
}

/// What the receiving client saw of one channel: `(position, number,
/// when)`, the position (epoch, offset) only on the channel with history.
type Seen = Vec<(Option<(String, u64)>, u64, Instant)>;

#[tokio::test]
async fn hosts_follow_a_sentinel_failover_without_duplicates() {
    let set = SentinelSet::start().await;
    let dir = plugins_dir(&["echo", "presence"]);
    let sender = host(&set.url(), &dir);
    let receiver = host(&set.url(), &dir);
    let status = healthz(&receiver).await;
    let redis = &status["broker"]["redis"];
    assert_eq!(redis["topology"], "sentinel", "{status}");
    assert_eq!(
        redis["primary"],
        format!("127.0.0.1:{}", set.primary.borrow().port)
    );

    // A KV write before the failover, replicated.
    let mut alice = sender.client().await;
    alice
        .call("presence.join", json!({"room": "lobby", "name": "alice"}))
        .await;
    set.wait_until_replicated().await;

    let mut listener = receiver.client().await;
    listener.subscribe("plain").await;
    listener.subscribe("hist:numbered").await;
    let mut publisher = sender.client().await;

    let sent: RefCell<Vec<Instant>> = RefCell::default();
    let seen: RefCell<[Seen; 2]> = RefCell::default();
    let readiness: RefCell<Vec<(Instant, bool)>> = RefCell::default();
    let killed_at: Cell<Option<(Instant, u64)>> = Cell::new(None);
    let done = Cell::new(false);

    let publish = async {
        while !done.get() {
            let number = sent.borrow().len() as u64 + 1;
            for channel in ["plain", "hist:numbered"] {
                publisher
                    .send(
                        json!({"event": "#publish", "data": {"channel": channel, "data": number}}),
                    )
                    .await;
            }
            sent.borrow_mut().push(Instant::now());
            tokio::time::sleep(PUBLISH_EVERY).await;
        }
    };
    let receive = async {
        while !done.get() {
            let Ok(packet) =
                tokio::time::timeout(Duration::from_millis(100), listener.next_packet()).await
            else {
                continue;
            };
            assert_eq!(packet["event"], "#publish", "{packet}");
            let data = &packet["data"];
            let index = usize::from(data["channel"] == "hist:numbered");
            let number = data["data"].as_u64().unwrap();
            let position = data["offset"]
                .as_u64()
                .map(|offset| (data["epoch"].as_str().unwrap().to_owned(), offset));
            seen.borrow_mut()[index].push((position, number, Instant::now()));
        }
    };
    let watch_readiness = async {
        while !done.get() {
            let (status, _) = receiver.http_get("/readyz", "").await;
            readiness
                .borrow_mut()
                .push((Instant::now(), status == "HTTP/1.1 200 OK"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let fail_over = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        set.primary.borrow_mut().kill();
        let at = sent.borrow().len() as u64;
        killed_at.set(Some((Instant::now(), at)));
        // Recovered: 200 publications made after the kill arrived on both
        // channels.
        let deadline = Instant::now() + RECOVERY_DEADLINE;
        let recovered = || {
            seen.borrow()
                .iter()
                .all(|seen| seen.iter().filter(|(_, number, _)| *number > at).count() >= 200)
        };
        while !recovered() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        done.set(true);
    };
    tokio::join!(publish, receive, watch_readiness, fail_over);

    let (killed, published_before_kill) = killed_at.get().unwrap();
    let sent = sent.into_inner();
    let [plain, numbered] = seen.into_inner();
    let lost_with_history = sent.len() - numbered.len();
    // The failover window: the longest time without a cross-host delivery.
    let window = plain
        .windows(2)
        .map(|pair| pair[1].2 - pair[0].2)
        .max()
        .unwrap();
    let plain: Vec<u64> = plain.iter().map(|(_, number, _)| *number).collect();
    assert!(
        plain
            .iter()
            .filter(|number| **number > published_before_kill)
            .count()
            >= 200,
        "the stream did not come back within {RECOVERY_DEADLINE:?}:\n{}",
        receiver.log()
    );

    // Plain channel: in order, never twice, and what is missing is one
    // contiguous run: the failover window.
    assert!(
        plain.windows(2).all(|pair| pair[0] < pair[1]),
        "duplicated or reordered: {plain:?}"
    );
    let last = *plain.last().unwrap();
    let missing: Vec<u64> = (1..=last)
        .filter(|n| plain.binary_search(n).is_err())
        .collect();
    if let (Some(&first), Some(&end)) = (missing.first(), missing.last()) {
        assert_eq!(
            end - first + 1,
            missing.len() as u64,
            "losses outside one window: {missing:?}"
        );
        assert!(
            first + 20 >= published_before_kill,
            "lost {first} well before the kill at {published_before_kill}"
        );
        let lost_over = sent[end as usize - 1] - sent[first as usize - 1] + PUBLISH_EVERY;
        eprintln!(
            "sentinel failover: no cross-host delivery for {:.0} ms; {} publications lost, \
             made over {:.0} ms from {:.0} ms after the kill ({lost_with_history} on the \
             channel with history)",
            window.as_secs_f64() * 1000.0,
            missing.len(),
            lost_over.as_secs_f64() * 1000.0,
            sent[first as usize - 1]
                .saturating_duration_since(killed)
                .as_secs_f64()
                * 1000.0,
        );
    }

    // Channel with history: numbers only ever grow, and offsets within an
    // epoch (a failover that lost publications a host delivered starts a
    // new one); never a duplicate; delivery came back.
    let positions: Vec<(String, u64)> = numbered
        .iter()
        .map(|(position, _, _)| position.clone().expect("a position"))
        .collect();
    assert!(
        numbered.windows(2).all(|pair| pair[0].1 < pair[1].1),
        "duplicated or reordered: {numbered:?}"
    );
    assert!(
        positions
            .windows(2)
            .all(|pair| pair[0].0 != pair[1].0 || pair[0].1 < pair[1].1),
        "offsets duplicated or reordered: {positions:?}"
    );
    assert!(
        numbered
            .iter()
            .filter(|(_, number, _)| *number > published_before_kill)
            .count()
            >= 200,
        "the channel with history did not come back"
    );

    // Readiness said so during the window and recovered.
    let readiness = readiness.into_inner();
    assert!(
        readiness.iter().any(|(at, ready)| *at > killed && !*ready),
        "readiness never reported the failover"
    );
    assert!(readiness.last().unwrap().1, "not ready after the failover");

    // Both hosts moved to the replica; the KV write is there.
    for server in [&sender, &receiver] {
        let status = healthz(server).await;
        let redis = &status["broker"]["redis"];
        assert_eq!(redis["primary"], format!("127.0.0.1:{}", set.replica.port));
        assert_eq!(redis["primary_moves"], 1, "{status}");
        assert!(server.log().contains("the Redis primary moved"));
        let (_, metrics) = server.http_get("/metrics", "").await;
        assert!(
            metrics.contains("\nwasmcluster_broker_primary_moves_total 1\n"),
            "{metrics}"
        );
    }
    let mut bob = receiver.client().await;
    let members = bob
        .call("presence.join", json!({"room": "lobby", "name": "bob"}))
        .await;
    let names: Vec<&str> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|member| member["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"alice") && names.contains(&"bob"),
        "{members}"
    );
}

#[test]
fn sentinel_urls_that_lead_nowhere_are_clear_start_up_errors() {
    let dir = plugins_dir(&["echo"]);
    let start = |url: &str| {
        TestServer::try_start(dir.path(), &["--broker", url])
            .err()
            .expect("started without Redis")
    };
    let log = start("redis+sentinel://127.0.0.1:1");
    assert!(
        log.contains("invalid --broker URL 'redis+sentinel://127.0.0.1:1'")
            && log.contains("name the primary"),
        "{log}"
    );
    let log = start("redis+sentinel://:secret@127.0.0.1:1/mymaster");
    assert!(
        log.contains("cannot reach the broker at redis+sentinel://:***@127.0.0.1:1/mymaster")
            && log.contains("the sentinels name no primary"),
        "{log}"
    );
    assert!(!log.contains("secret"), "{log}");
}
