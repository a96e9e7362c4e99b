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
use std::cell::RefCell;
use std::time::{Duration, Instant};
use support::{RedisServer, TestServer, failover, plugins_dir};

const MASTER: &str = "wasmcluster-primary";
const PASSWORD: &str = "redis-secret";
const SENTINEL_PASSWORD: &str = "sentinel-secret";
const CONFIG: &str = "[channels.\"hist:*\"]\nhistory-size = 10000\nhistory-ttl-secs = 300\n";

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

    let exchange = failover::stream_through(
        &sender,
        &receiver,
        failover::Channels {
            plain: "plain",
            numbered: "hist:numbered",
        },
        || set.primary.borrow_mut().kill(),
    )
    .await;
    exchange.check("sentinel failover", &receiver.log());

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
    support::check_presence_kept(&receiver).await;
}

#[test]
fn sentinel_urls_that_lead_nowhere_are_clear_start_up_errors() {
    failover::check_start_error(
        "redis+sentinel://127.0.0.1:1",
        &[
            "invalid --broker URL 'redis+sentinel://127.0.0.1:1'",
            "name the primary",
        ],
    );
    failover::check_start_error(
        "redis+sentinel://:secret@127.0.0.1:1/mymaster",
        &[
            "cannot reach the broker at redis+sentinel://:***@127.0.0.1:1/mymaster",
            "the sentinels name no primary",
        ],
    );
}
