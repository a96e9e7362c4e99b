//! A numbered stream between two hosts through a failover of the Redis
//! behind them, shared by the Sentinel and Cluster tests: one host's
//! client publishes 1, 2, 3... on a plain channel and on a channel with
//! history while the other host's client receives, `/readyz` is watched,
//! and the primary is killed; then what arrived is checked.

use super::{TestServer, plugins_dir};
use serde_json::json;
use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

/// How often the stream publishes, and how long it may wait for recovery.
const PUBLISH_EVERY: Duration = Duration::from_millis(5);
const RECOVERY_DEADLINE: Duration = Duration::from_secs(40);
/// Publications made after the kill that must arrive on both channels.
const AFTER_RECOVERY: usize = 200;

/// What the receiving client saw of one channel: `(position, number,
/// when)`, the position (epoch, offset) only on the channel with history.
type Seen = Vec<(Option<(String, u64)>, u64, Instant)>;

/// The two channels: `plain` without history, `numbered` with (the hosts'
/// config must give it history).
pub struct Channels<'a> {
    pub plain: &'a str,
    pub numbered: &'a str,
}

/// What happened to the stream.
pub struct Exchange {
    killed: Instant,
    published_before_kill: u64,
    sent: Vec<Instant>,
    plain: Seen,
    numbered: Seen,
    readiness: Vec<(Instant, bool)>,
}

/// Stream from `sender` to `receiver` on `channels`, `kill` the primary a
/// second in, and go on until the stream is back (or the deadline passed).
pub async fn stream_through(
    sender: &TestServer,
    receiver: &TestServer,
    channels: Channels<'_>,
    kill: impl FnOnce(),
) -> Exchange {
    let mut listener = receiver.client().await;
    listener.subscribe(channels.plain).await;
    listener.subscribe(channels.numbered).await;
    let mut publisher = sender.client().await;

    let sent: RefCell<Vec<Instant>> = RefCell::default();
    let seen: RefCell<[Seen; 2]> = RefCell::default();
    let readiness: RefCell<Vec<(Instant, bool)>> = RefCell::default();
    let killed_at: Cell<Option<(Instant, u64)>> = Cell::new(None);
    let done = Cell::new(false);

    let publish = async {
        while !done.get() {
            let number = sent.borrow().len() as u64 + 1;
            for channel in [channels.plain, channels.numbered] {
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
            let index = usize::from(data["channel"] == channels.numbered);
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
        kill();
        let at = sent.borrow().len() as u64;
        killed_at.set(Some((Instant::now(), at)));
        let deadline = Instant::now() + RECOVERY_DEADLINE;
        let recovered = || {
            seen.borrow().iter().all(|seen| {
                seen.iter().filter(|(_, number, _)| *number > at).count() >= AFTER_RECOVERY
            })
        };
        while !recovered() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        done.set(true);
    };
    tokio::join!(publish, receive, watch_readiness, fail_over);

    let (killed, published_before_kill) = killed_at.get().unwrap();
    let [plain, numbered] = seen.into_inner();
    Exchange {
        killed,
        published_before_kill,
        sent: sent.into_inner(),
        plain,
        numbered,
        readiness: readiness.into_inner(),
    }
}

impl Exchange {
    /// Check the stream came through `what` (named in the printed
    /// measurement) as promised: on the plain channel in order, never
    /// twice, losing one contiguous run (the failover window, measured and
    /// printed); on the channel with history never twice, offsets growing
    /// within an epoch; both back after the failover; readiness false
    /// during the window and true after. `log` is shown on failure.
    pub fn check(&self, what: &str, log: &str) {
        let numbers = |seen: &Seen| -> Vec<u64> { seen.iter().map(|(_, n, _)| *n).collect() };
        let after_kill = |seen: &Seen| {
            seen.iter()
                .filter(|(_, number, _)| *number > self.published_before_kill)
                .count()
        };
        let plain = numbers(&self.plain);
        assert!(
            after_kill(&self.plain) >= AFTER_RECOVERY,
            "the stream did not come back within {RECOVERY_DEADLINE:?}:\n{log}"
        );
        assert!(
            plain.windows(2).all(|pair| pair[0] < pair[1]),
            "duplicated or reordered: {plain:?}"
        );
        self.check_one_window(what, &plain);

        let positions: Vec<(String, u64)> = self
            .numbered
            .iter()
            .map(|(position, _, _)| position.clone().expect("a position"))
            .collect();
        let numbered = numbers(&self.numbered);
        assert!(
            numbered.windows(2).all(|pair| pair[0] < pair[1]),
            "duplicated or reordered: {numbered:?}"
        );
        assert!(
            positions
                .windows(2)
                .all(|pair| pair[0].0 != pair[1].0 || pair[0].1 < pair[1].1),
            "offsets duplicated or reordered: {positions:?}"
        );
        assert!(
            after_kill(&self.numbered) >= AFTER_RECOVERY,
            "the channel with history did not come back:\n{log}"
        );

        assert!(
            self.readiness
                .iter()
                .any(|(at, ready)| *at > self.killed && !*ready),
            "readiness never reported the failover:\n{log}"
        );
        assert!(
            self.readiness.last().unwrap().1,
            "not ready after the failover:\n{log}"
        );
    }

    /// What is missing of the plain channel is one contiguous run, from
    /// about the kill on; print the window.
    fn check_one_window(&self, what: &str, plain: &[u64]) {
        let window = self
            .plain
            .windows(2)
            .map(|pair| pair[1].2 - pair[0].2)
            .max()
            .unwrap();
        let last = *plain.last().unwrap();
        let missing: Vec<u64> = (1..=last)
            .filter(|n| plain.binary_search(n).is_err())
            .collect();
        let (Some(&first), Some(&end)) = (missing.first(), missing.last()) else {
            return;
        };
        assert_eq!(
            end - first + 1,
            missing.len() as u64,
            "losses outside one window: {missing:?}"
        );
        assert!(
            first + 20 >= self.published_before_kill,
            "lost {first} well before the kill at {}",
            self.published_before_kill
        );
        let sent = &self.sent;
        let lost_over = sent[end as usize - 1] - sent[first as usize - 1] + PUBLISH_EVERY;
        eprintln!(
            "{what}: no cross-host delivery for {:.0} ms; {} publications lost, made over \
             {:.0} ms from {:.0} ms after the kill ({} on the channel with history)",
            window.as_secs_f64() * 1000.0,
            missing.len(),
            lost_over.as_secs_f64() * 1000.0,
            sent[first as usize - 1]
                .saturating_duration_since(self.killed)
                .as_secs_f64()
                * 1000.0,
            sent.len() - self.numbered.len(),
        );
    }
}

/// Check that a server given `--broker url` refuses to start with a log
/// that says each of `expected`, and never shows the password `secret`.
pub fn check_start_error(url: &str, expected: &[&str]) {
    let dir = plugins_dir(&["echo"]);
    let log = TestServer::try_start(dir.path(), &["--broker", url])
        .err()
        .expect("started without Redis");
    for text in expected {
        assert!(log.contains(text), "no '{text}' in:\n{log}");
    }
    assert!(!log.contains("secret"), "{log}");
}
