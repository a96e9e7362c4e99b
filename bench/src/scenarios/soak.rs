//! `soak`: mixed churn across two hosts, for `bench/soak`. Client slots
//! each repeat a session until the end: connect to one host or the other
//! (in turn), subscribe to three of the soak channels, make calls (one in a
//! hundred to `crash`, which panics in the plugin), publish on one of its
//! channels, unsubscribe, and leave. Sessions ride out whatever the soak
//! does to the servers meanwhile (hot swaps, a Redis failover): a session
//! whose call or connection fails is counted and started afresh. The
//! figures: sessions, calls answered, faults (answered with an error as
//! asked), other errors, publications acknowledged and received.

use super::{Common, Target, open, subscribe};
use anyhow::Result;
use rand::Rng;
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use testkit::{Connection, Incoming, is_error_reply, reply_id};
use tokio::time::Instant;

/// The soak channels: `soak-0` to `soak-49`.
const CHANNELS: usize = 50;
/// Channels a session subscribes to.
const CHANNELS_PER_SESSION: usize = 3;
/// How long one step (a call, a subscription) may take before the
/// session is counted as failed and started again.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// Parameters of the soak scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// The second host: sessions alternate between `--addr` and it.
    #[arg(long)]
    pub other: SocketAddr,
    /// Client slots churning at once.
    #[arg(long, default_value_t = 200)]
    pub clients: usize,
    /// Calls per session.
    #[arg(long, default_value_t = 20)]
    pub calls: usize,
    /// Pause between two calls of a session, in milliseconds (the load
    /// stays ordinary rather than saturating).
    #[arg(long, default_value_t = 50)]
    pub pause_ms: u64,
    /// One call in this many is to `crash`, which panics in the plugin;
    /// 0 for none.
    #[arg(long, default_value_t = 100)]
    pub fault_every: u32,
}

/// What the sessions did.
#[derive(Default)]
struct Counts {
    sessions: AtomicU64,
    calls: AtomicU64,
    faults: AtomicU64,
    errors: AtomicU64,
    failed_sessions: AtomicU64,
    publishes: AtomicU64,
    received: AtomicU64,
}

/// Run the scenario and return its figures.
pub async fn run(common: &Common, args: &SoakArgs) -> Result<Value> {
    let counts = Arc::new(Counts::default());
    let end = Instant::now() + common.duration;
    let hosts = [
        common.target.clone(),
        Target {
            addr: args.other,
            path: common.target.path.clone(),
        },
    ];
    let slots: Vec<_> = (0..args.clients)
        .map(|slot| {
            let hosts = hosts.clone();
            let counts = counts.clone();
            let args = args.clone();
            let source =
                (!common.sources.is_empty()).then(|| common.sources[slot % common.sources.len()]);
            tokio::spawn(async move {
                let mut turn = slot;
                while Instant::now() < end {
                    let host = &hosts[turn % hosts.len()];
                    turn += 1;
                    let session = tokio::time::timeout_at(
                        end + STEP_TIMEOUT,
                        session(host, source, &args, &counts),
                    );
                    if !matches!(session.await, Ok(Ok(()))) {
                        counts.failed_sessions.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
        })
        .collect();
    for slot in slots {
        slot.await?;
    }
    let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    Ok(json!({
        "clients": args.clients,
        "sessions": count(&counts.sessions),
        "failed_sessions": count(&counts.failed_sessions),
        "calls": count(&counts.calls),
        "faults": count(&counts.faults),
        "errors": count(&counts.errors),
        "publishes": count(&counts.publishes),
        "received": count(&counts.received),
    }))
}

/// One session on `host`, from `source`.
async fn session(
    host: &Target,
    source: Option<IpAddr>,
    args: &SoakArgs,
    counts: &Counts,
) -> Result<()> {
    let mut connection = step(open(host, source)).await?;
    let channels: Vec<String> = {
        let mut rng = rand::rng();
        (0..CHANNELS_PER_SESSION)
            .map(|_| format!("soak-{}", rng.random_range(0..CHANNELS)))
            .collect()
    };
    for channel in &channels {
        step(subscribe(&mut connection, channel)).await?;
    }
    let mut cid = 10;
    for _ in 0..args.calls {
        let crash = args.fault_every > 0 && rand::rng().random_range(0..args.fault_every) == 0;
        let event = if crash { "crash" } else { "echo" };
        cid += 1;
        let frame = format!(r#"{{"event":"{event}","data":{{"n":{cid}}},"cid":{cid}}}"#);
        let reply = step(call(&mut connection, frame, cid, counts)).await?;
        match (crash, is_error_reply(&reply)) {
            (false, false) => counts.calls.fetch_add(1, Ordering::Relaxed),
            (true, true) => counts.faults.fetch_add(1, Ordering::Relaxed),
            _ => counts.errors.fetch_add(1, Ordering::Relaxed),
        };
        tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;
    }
    cid += 1;
    let publish = format!(
        r##"{{"event":"#publish","data":{{"channel":"{}","data":{{"n":{cid}}}}},"cid":{cid}}}"##,
        channels[0]
    );
    let reply = step(call(&mut connection, publish, cid, counts)).await?;
    if is_error_reply(&reply) {
        counts.errors.fetch_add(1, Ordering::Relaxed);
    } else {
        counts.publishes.fetch_add(1, Ordering::Relaxed);
    }
    for channel in &channels {
        let unsubscribe = format!(r##"{{"event":"#unsubscribe","data":"{channel}"}}"##);
        step(connection.send(unsubscribe)).await?;
    }
    connection.close(1000).await;
    counts.sessions.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Send `frame` and wait for the answer to `cid`, counting publications
/// that arrive meanwhile.
async fn call(
    connection: &mut Connection,
    frame: String,
    cid: u64,
    counts: &Counts,
) -> Result<String> {
    connection.send(frame).await?;
    loop {
        match connection.next().await? {
            Incoming::Packet(text) if reply_id(&text) == Some(cid) => return Ok(text.to_string()),
            Incoming::Packet(text) if text.contains(r##""event":"#publish""##) => {
                counts.received.fetch_add(1, Ordering::Relaxed);
            }
            Incoming::Packet(_) => {}
            Incoming::Closed(closed) => anyhow::bail!("closed: {closed:?}"),
        }
    }
}

/// `future`, failed when it takes longer than [`STEP_TIMEOUT`].
async fn step<T, E: Into<anyhow::Error>>(future: impl Future<Output = Result<T, E>>) -> Result<T> {
    match tokio::time::timeout(STEP_TIMEOUT, future).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => anyhow::bail!("no answer within {STEP_TIMEOUT:?}"),
    }
}
