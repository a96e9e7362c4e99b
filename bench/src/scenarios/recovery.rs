//! `recovery`: how long a subscriber that comes back takes to get what it
//! missed. Each round, a subscriber learns the channel's position
//! (`"#recover": null`) and leaves; a publisher publishes `--missed`
//! publications (acked); a new connection subscribes with that position
//! and the time runs from its `#subscribe` to the server's
//! `wasmcluster:history` report, which follows the last missed
//! publication. Every round checks the offsets arrive complete and in
//! order. The server must keep history for the channel (`[channels.
//! "history:*"]` with `history-size` at least `--missed`). wasmcluster
//! only.

use super::{Common, histogram, latency_fields, open};
use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use testkit::{Connection, Incoming, is_error_reply, reply_id};
use tokio::time::Instant;

/// Parameters of the recovery scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct RecoveryArgs {
    /// Publications missed per round.
    #[arg(long, default_value_t = 10_000)]
    pub missed: usize,
    /// The channel (the server keeps history for it).
    #[arg(long, default_value = "history:bench")]
    pub channel: String,
    /// The most rounds.
    #[arg(long, default_value_t = 50)]
    pub max_rounds: usize,
}

/// Run the scenario and return its figures.
pub async fn run(common: &Common, args: &RecoveryArgs) -> Result<Value> {
    let mut publisher = open(&common.target, None).await?;
    // Sees each round's publications arrive: with history in Redis they
    // are numbered after the publisher's acks, and a round measures the
    // recovery of publications that are all in the history.
    let mut witness = open(&common.target, None).await?;
    subscribe(&mut witness, &args.channel, Value::Null).await?;
    let mut times = histogram();
    let end = Instant::now() + common.duration;
    let mut rounds = 0;
    while rounds < args.max_rounds && (rounds < 3 || Instant::now() < end) {
        let mut leaving = open(&common.target, None).await?;
        let (position, _) = subscribe(&mut leaving, &args.channel, Value::Null).await?;
        leaving.close(1000).await;
        publish(&mut publisher, &args.channel, args.missed).await?;
        let last = position["offset"].as_u64().context("no offset")? + args.missed as u64;
        arrived(&mut witness, last).await?;

        let mut back = open(&common.target, None).await?;
        let started = Instant::now();
        let (report, offsets) = subscribe(&mut back, &args.channel, position.clone()).await?;
        times.record(started.elapsed().as_micros().max(1) as u64)?;
        back.close(1000).await;
        let first = position["offset"].as_u64().context("no offset")? + 1;
        let expected: Vec<u64> = (first..first + args.missed as u64).collect();
        ensure!(
            offsets == expected && report["recovered"] == true,
            "round {rounds}: recovered {} publications, report {report}",
            offsets.len()
        );
        rounds += 1;
    }
    publisher.close(1000).await;
    witness.close(1000).await;
    let mut figures = json!({ "rounds": rounds, "missed": args.missed });
    if let Value::Object(object) = &mut figures {
        object.extend(latency_fields("", &times));
        object.insert("max_ms".into(), json!(times.max() as f64 / 1000.0));
    }
    Ok(figures)
}

/// Subscribe with `"#recover": since`; the history report and the offsets
/// of the publications that came before it.
async fn subscribe(
    connection: &mut Connection,
    channel: &str,
    since: Value,
) -> Result<(Value, Vec<u64>)> {
    let request = json!({"event": "#subscribe", "cid": 1,
        "data": {"channel": channel, "data": {"#recover": since}}});
    connection.send(request.to_string()).await?;
    let mut offsets = Vec::new();
    loop {
        let text = match connection.next().await? {
            Incoming::Packet(text) => text,
            Incoming::Closed(closed) => bail!("closed while recovering: {closed:?}"),
        };
        if reply_id(&text) == Some(1) {
            ensure!(!is_error_reply(&text), "subscribe failed: {text}");
            continue;
        }
        // A publication's offset without parsing the whole packet, so that
        // the load generator's own work stays small beside the server's.
        if text.starts_with("{\"event\":\"#publish\"") {
            offsets.push(offset_of(&text).context("a publication without an offset")?);
            continue;
        }
        let packet: Value = serde_json::from_str(&text)?;
        if packet["event"] == "wasmcluster:history" {
            let data = &packet["data"];
            let report = if since.is_null() {
                json!({"epoch": data["epoch"], "offset": data["offset"]})
            } else {
                data.clone()
            };
            return Ok((report, offsets));
        }
    }
}

/// Wait until the publication at offset `last` reaches `connection`.
async fn arrived(connection: &mut Connection, last: u64) -> Result<()> {
    loop {
        match connection.next().await? {
            Incoming::Packet(text) if text.starts_with("{\"event\":\"#publish\"") => {
                if offset_of(&text).is_some_and(|offset| offset >= last) {
                    return Ok(());
                }
            }
            Incoming::Packet(_) => {}
            Incoming::Closed(closed) => bail!("the witness closed: {closed:?}"),
        }
    }
}

/// The `"offset"` of a numbered `#publish` frame.
fn offset_of(frame: &str) -> Option<u64> {
    let start = frame.rfind("\"offset\":")? + "\"offset\":".len();
    let digits = &frame[start..];
    let end = digits.find(|c: char| !c.is_ascii_digit())?;
    digits[..end].parse().ok()
}

/// Publish `count` numbered publications, 64 in flight, and wait for
/// every ack.
async fn publish(connection: &mut Connection, channel: &str, count: usize) -> Result<()> {
    let frame = |n: usize| {
        json!({"event": "#publish", "cid": n + 10,
            "data": {"channel": channel, "data": {"n": n, "pad": "x".repeat(40)}}})
        .to_string()
    };
    let mut sent = 0;
    let mut acked = 0;
    while sent < count.min(64) {
        connection.send(frame(sent)).await?;
        sent += 1;
    }
    while acked < count {
        match connection.next().await? {
            Incoming::Packet(text) if reply_id(&text).is_some() => {
                ensure!(!is_error_reply(&text), "publish failed: {text}");
                acked += 1;
                if sent < count {
                    connection.send(frame(sent)).await?;
                    sent += 1;
                }
            }
            Incoming::Packet(_) => {}
            Incoming::Closed(closed) => bail!("publisher closed: {closed:?}"),
        }
    }
    Ok(())
}
