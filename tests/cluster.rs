//! Redis Cluster behind the hosts, through the real binary: three
//! primaries with a replica each (`--cluster-enabled yes`, joined by
//! `redis-cli --cluster create`), password-protected. Channels are sharded
//! (`SSUBSCRIBE`/`SPUBLISH`) and the KV spreads by plugin over the shards.
//! The primary of one shard is killed while one host publishes a numbered
//! stream on two of that shard's channels that a client of the other host
//! receives: its replica takes over, the hosts follow, and the stream
//! arrives without a duplicate or a reordering, losing only a contiguous
//! run inside the failover window, which is measured and printed.
//! Readiness says so during the window; the KV of the shard survives.
//! A channel's slot moved to another shard under a subscriber (resharding)
//! is followed too.

mod support;

use serde_json::{Value, json};
use std::cell::RefCell;
use std::time::{Duration, Instant};
use support::{RedisServer, TestServer, failover, plugins_dir};

const PASSWORD: &str = "cluster-secret";
const CONFIG: &str = "[channels.\"hist:*\"]\nhistory-size = 10000\nhistory-ttl-secs = 300\n";

/// The cluster's nodes; a killed one stays in the list, dead.
struct Cluster {
    nodes: RefCell<Vec<RedisServer>>,
}

impl Cluster {
    /// Three primaries with `replicas` replicas each.
    async fn start(replicas: usize) -> Cluster {
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| RedisServer::start_cluster_node(PASSWORD))
            .collect();
        let mut create = vec!["--cluster".to_owned(), "create".to_owned()];
        create.extend(nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)));
        create.extend(["--cluster-replicas".to_owned(), replicas.to_string()]);
        create.push("--cluster-yes".to_owned());
        let create: Vec<&str> = create.iter().map(String::as_str).collect();
        nodes[0].cli(&create);
        let cluster = Cluster {
            nodes: RefCell::new(nodes),
        };
        cluster.wait_until_ready().await;
        cluster
    }

    /// Until every node says the cluster is fine and every replica is in
    /// sync with its primary.
    async fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = self.nodes.borrow().iter().all(|node| {
                let info = node.cli(&["CLUSTER", "INFO"]);
                let replication = node.cli(&["INFO", "replication"]);
                info.contains("cluster_state:ok")
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            });
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster never got ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The URL hosts are given: two of the nodes, the rest discovered.
    fn url(&self) -> String {
        let nodes = self.nodes.borrow();
        format!(
            "redis+cluster://:{PASSWORD}@127.0.0.1:{},127.0.0.1:{}",
            nodes[0].port, nodes[1].port
        )
    }

    /// The index of the node that is primary for `key`'s slot.
    fn primary_for(&self, key: &str) -> usize {
        let nodes = self.nodes.borrow();
        let slot: u16 = nodes[0]
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap();
        let port = primaries(&nodes[0].cli(&["CLUSTER", "NODES"]))
            .into_iter()
            .find(|(_, slots)| slots.iter().any(|range| range.contains(&slot)))
            .map(|(port, _)| port)
            .expect("every slot has a primary");
        nodes.iter().position(|node| node.port == port).unwrap()
    }

    /// The port of the replica of node `primary`.
    fn replica_of(&self, primary: usize) -> u16 {
        let nodes = self.nodes.borrow();
        let primary_port = nodes[primary].port.to_string();
        nodes
            .iter()
            .find(|node| {
                let info = node.cli(&["INFO", "replication"]);
                info.contains(&format!("master_port:{primary_port}\r"))
            })
            .map(|node| node.port)
            .expect("a replica")
    }

    /// Move `key`'s slot from its primary to node `to`, as resharding
    /// does (`CLUSTER SETSLOT`: importing, migrating, then the new owner);
    /// the slot must hold no keys.
    fn move_slot(&self, key: &str, to: usize) {
        let from = self.primary_for(key);
        let nodes = self.nodes.borrow();
        let slot = nodes[0].cli(&["CLUSTER", "KEYSLOT", key]);
        let slot = slot.trim();
        let id = |node: usize| nodes[node].cli(&["CLUSTER", "MYID"]).trim().to_owned();
        let (from_id, to_id) = (id(from), id(to));
        assert_eq!(
            nodes[from]
                .cli(&["CLUSTER", "COUNTKEYSINSLOT", slot])
                .trim(),
            "0"
        );
        nodes[to].cli(&["CLUSTER", "SETSLOT", slot, "IMPORTING", &from_id]);
        nodes[from].cli(&["CLUSTER", "SETSLOT", slot, "MIGRATING", &to_id]);
        for node in nodes.iter() {
            node.cli(&["CLUSTER", "SETSLOT", slot, "NODE", &to_id]);
        }
    }

    /// Until node `primary`'s replica has every write it has.
    async fn wait_until_replicated(&self, primary: usize) {
        let replica = self.replica_of(primary);
        let offset = |port: u16, name: &str| -> u64 {
            let nodes = self.nodes.borrow();
            let node = nodes.iter().find(|node| node.port == port).unwrap();
            let info = node.cli(&["INFO", "replication"]);
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0)
        };
        let primary_port = self.nodes.borrow()[primary].port;
        let wanted = offset(primary_port, "master_repl_offset");
        while offset(replica, "slave_repl_offset") < wanted {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The primaries of a `CLUSTER NODES` reply: port and slot ranges.
fn primaries(nodes: &str) -> Vec<(u16, Vec<std::ops::RangeInclusive<u16>>)> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if !fields.get(2)?.split(',').any(|flag| flag == "master") {
                return None;
            }
            let port = fields[1]
                .split('@')
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()?;
            let slots = fields[8..]
                .iter()
                .filter(|range| !range.starts_with('['))
                .filter_map(|range| {
                    let (low, high) = range.split_once('-').unwrap_or((range, range));
                    Some(low.parse().ok()?..=high.parse().ok()?)
                })
                .collect();
            Some((port, slots))
        })
        .collect()
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

/// A channel named `<stem><n>` whose slot `node` serves.
fn channel_on(cluster: &Cluster, node: usize, stem: &str) -> String {
    (0..1000)
        .map(|n| format!("{stem}{n}"))
        .find(|channel| cluster.primary_for(channel) == node)
        .expect("a channel on every shard")
}

#[tokio::test]
async fn hosts_follow_a_cluster_shard_failover_without_duplicates() {
    let cluster = Cluster::start(1).await;
    let dir = plugins_dir(&["echo", "presence"]);
    let sender = host(&cluster.url(), &dir);
    let receiver = host(&cluster.url(), &dir);
    let status = healthz(&receiver).await;
    assert_eq!(status["broker"]["redis"]["topology"], "cluster", "{status}");

    // The shard that keeps the presence plugin's KV is the one to fail;
    // the stream's channels live there too.
    let shard = cluster.primary_for("presence");
    let plain = channel_on(&cluster, shard, "plain-");
    let numbered = channel_on(&cluster, shard, "hist:");
    let mut alice = sender.client().await;
    alice
        .call("presence.join", json!({"room": "lobby", "name": "alice"}))
        .await;
    cluster.wait_until_replicated(shard).await;
    let replica = cluster.replica_of(shard);

    let exchange = failover::stream_through(
        &sender,
        &receiver,
        failover::Channels {
            plain: &plain,
            numbered: &numbered,
        },
        || cluster.nodes.borrow_mut()[shard].kill(),
    )
    .await;
    exchange.check("cluster shard failover", &receiver.log());

    // The replica is the shard's primary now; the hosts said what
    // happened; the KV write is there.
    assert_eq!(
        primaries(
            &cluster.nodes.borrow()[(shard + 1) % cluster.nodes.borrow().len()]
                .cli(&["CLUSTER", "NODES"])
        )
        .iter()
        .filter(|(port, slots)| *port == replica && !slots.is_empty())
        .count(),
        1,
        "the replica did not take over"
    );
    assert!(
        receiver
            .log()
            .contains("listening again where the Redis Cluster has every channel"),
        "{}",
        receiver.log()
    );
    let status = healthz(&receiver).await;
    assert!(
        status["broker"]["reconnects"].as_u64().unwrap() >= 1,
        "{status}"
    );
    support::check_presence_kept(&receiver).await;
}

#[tokio::test]
async fn hosts_follow_a_channel_whose_slot_moved_to_another_shard() {
    let cluster = Cluster::start(0).await;
    let dir = plugins_dir(&["echo"]);
    let sender = host(&cluster.url(), &dir);
    let receiver = host(&cluster.url(), &dir);
    let channel = "moving-channel";
    let from = cluster.primary_for(channel);
    let mut listener = receiver.client().await;
    listener.subscribe(channel).await;
    let mut publisher = sender.client().await;
    let mut publish = async |number: u64| {
        publisher
            .send(json!({"event": "#publish", "data": {"channel": channel, "data": number}}))
            .await;
    };
    publish(1).await;
    assert_eq!(listener.publication().await, (channel.to_owned(), json!(1)));

    let to = (from + 1) % 3;
    cluster.move_slot(channel, to);
    assert_eq!(cluster.primary_for(channel), to);
    // The old shard unsubscribed the receiving host; publications reach
    // it again once it listens on the new one. Publish until one arrives.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut number = 1;
    let arrived = loop {
        number += 1;
        publish(number).await;
        match tokio::time::timeout(Duration::from_millis(100), listener.publication()).await {
            Ok(publication) => break publication,
            Err(_) if Instant::now() < deadline => continue,
            Err(_) => panic!("nothing arrived after the slot moved\n{}", receiver.log()),
        }
    };
    assert_eq!(arrived.0, channel);
    let log = receiver.log();
    assert!(
        log.contains("moved the channel's slot to another shard"),
        "{log}"
    );
    // From now on every publication arrives, in order.
    let first = arrived.1.as_u64().unwrap();
    for expected in first + 1..=number {
        assert_eq!(listener.publication().await.1, json!(expected));
    }
    for next in number + 1..number + 20 {
        publish(next).await;
        assert_eq!(listener.publication().await.1, json!(next));
    }
}

#[test]
fn cluster_urls_that_lead_nowhere_are_clear_start_up_errors() {
    failover::check_start_error(
        "redis+cluster://127.0.0.1",
        &[
            "invalid --broker URL 'redis+cluster://127.0.0.1'",
            "needs a port",
        ],
    );
    failover::check_start_error(
        "redis+cluster://:secret@127.0.0.1:1",
        &["cannot reach the broker at redis+cluster://:***@127.0.0.1:1"],
    );
}
