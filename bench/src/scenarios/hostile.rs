//! `hostile`: one hostile or careless client's attack, replayed for the
//! measured window, while an honest client calls `echo` one call at a time
//! beside it. The figures: the server's peak memory above its start, and
//! the honest client's latency and errors.

use super::{Common, histogram, latency_fields, open};
use crate::proc_stats::{peak_rss_bytes, rss_bytes};
use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// The attacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Case {
    /// A batch `[0,0,0,...]` as large as the server takes, again and again.
    BigBatch,
    /// Ten clients that ask for 1 MiB answers and never read them.
    StalledReaders,
    /// A subscriber that never reads, and 512 KiB publications for it.
    QueueFlood,
    /// Batches of `[spin, echo] x 50`, one a second.
    SpinBatch,
    /// RPCs with 1 MiB event names.
    LongNames,
    /// Connections that upgrade and never handshake.
    NoHandshake,
    /// One socket calling a panicking RPC in a loop.
    CrashLoop,
}

impl Case {
    /// The name given on the command line (`big-batch`).
    fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map_or_else(|| format!("{self:?}"), |value| value.get_name().to_owned())
    }
}

/// Parameters of the hostile scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct HostileArgs {
    /// The attack.
    #[arg(long, value_enum)]
    pub case: Case,
    /// The largest message the server takes (its `--max-payload-bytes`).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub max_payload_bytes: usize,
}

/// Run the attack and the honest client side by side.
pub async fn run(common: &Common, args: &HostileArgs) -> Result<Value> {
    let pid = common
        .server_pid
        .context("hostile needs --server-pid")?
        .to_string();
    let before = rss_bytes(&pid)?;
    let end = Instant::now() + common.duration;
    let attack = tokio::spawn(attack(common.clone(), args.clone(), end));
    let mut honest = open(&common.target, None).await?;
    let mut latency = histogram();
    let (mut calls, mut errors) = (0u64, 0u64);
    while Instant::now() < end {
        let started = Instant::now();
        honest
            .send(format!(
                "{{\"event\":\"echo\",\"data\":{calls},\"cid\":{}}}",
                calls + 2
            ))
            .await?;
        let answered = loop {
            match tokio::time::timeout(Duration::from_secs(5), honest.next()).await {
                Ok(Ok(testkit::Incoming::Packet(text))) if testkit::reply_id(&text).is_some() => {
                    break !testkit::is_error_reply(&text);
                }
                Ok(Ok(testkit::Incoming::Packet(_))) => {}
                _ => break false,
            }
        };
        latency.saturating_record(started.elapsed().as_micros() as u64);
        calls += 1;
        if !answered {
            errors += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let attacks = attack.await??;
    let peak = peak_rss_bytes(&pid)?;
    let mut figures = json!({
        "case": args.case.name(),
        "attacks": attacks,
        "honest_calls": calls,
        "honest_errors": errors,
        "server_rss_before_bytes": before,
        "server_peak_above_start_bytes": peak.saturating_sub(before),
    });
    if let Some(object) = figures.as_object_mut() {
        object.extend(latency_fields("honest_", &latency));
    }
    Ok(figures)
}

/// Replay `args.case` until `end`; how many times it was done.
async fn attack(common: Common, args: HostileArgs, end: Instant) -> Result<u64> {
    let mut done = 0u64;
    let mut stalled_held = Vec::new();
    let mut upgraded_held = Vec::new();
    while Instant::now() < end {
        match args.case {
            Case::BigBatch => {
                let mut connection = open(&common.target, None).await?;
                let items = args.max_payload_bytes.saturating_sub(1024) / 2;
                connection
                    .send(format!("[{}0]", "0,".repeat(items)))
                    .await?;
                connection.flush().await?;
                while let Ok(testkit::Incoming::Packet(_)) = connection.next().await {}
            }
            Case::StalledReaders => {
                if stalled_held.len() < 10 {
                    let mut stalled = stalled(&common).await?;
                    let big = "x".repeat(1024 * 1024);
                    for cid in 2..5 {
                        let packet = json!({"event": "echo", "data": big, "cid": cid});
                        stalled.send(Message::text(packet.to_string())).await?;
                    }
                    stalled_held.push(stalled);
                } else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            Case::QueueFlood => {
                let mut stalled = stalled(&common).await?;
                stalled
                    .send(Message::text(
                        r##"{"event":"#subscribe","data":{"channel":"flood"},"cid":2}"##,
                    ))
                    .await?;
                let mut publisher = open(&common.target, None).await?;
                let payload = "y".repeat(512 * 1024);
                for _ in 0..100 {
                    let packet =
                        json!({"event": "#publish", "data": {"channel": "flood", "data": payload}});
                    publisher.send(packet.to_string()).await?;
                    publisher.flush().await?;
                }
                stalled_held.push(stalled);
            }
            Case::SpinBatch => {
                let mut connection = open(&common.target, None).await?;
                let batch: Vec<Value> = (0..100)
                    .map(|cid| json!({"event": if cid % 2 == 0 { "spin" } else { "echo" }, "cid": cid + 2}))
                    .collect();
                connection.send(Value::Array(batch).to_string()).await?;
                connection.flush().await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Case::LongNames => {
                let mut connection = open(&common.target, None).await?;
                let name = "n".repeat(1024 * 1024);
                connection
                    .send(json!({"event": name, "cid": 2}).to_string())
                    .await?;
                connection.flush().await?;
                let _ = connection.next().await;
            }
            Case::NoHandshake => {
                if upgraded_held.len() < 200 {
                    upgraded_held.push(upgraded_only(&common).await?);
                } else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            Case::CrashLoop => {
                let mut connection = open(&common.target, None).await?;
                for cid in 2..100 {
                    connection
                        .send(format!("{{\"event\":\"crash\",\"cid\":{cid}}}"))
                        .await?;
                    connection.flush().await?;
                    let _ = connection.next().await?;
                }
            }
        }
        done += 1;
    }
    drop((stalled_held, upgraded_held));
    Ok(done)
}

/// A handshaken WebSocket whose kernel receive buffer is 4 KiB and that
/// will never be read.
async fn stalled(common: &Common) -> Result<WebSocketStream<TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let stream = socket.connect(common.target.addr).await?;
    let url = format!("ws://{}{}", common.target.addr, common.target.path);
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    ws.send(Message::text(
        r##"{"event":"#handshake","data":{"authToken":null},"cid":1}"##,
    ))
    .await?;
    let _ = ws.next().await;
    Ok(ws)
}

/// A connection upgraded to WebSocket that never sends `#handshake`
/// (`None` once the server refuses upgrades).
async fn upgraded_only(common: &Common) -> Result<Option<TcpStream>> {
    let mut stream = TcpStream::connect(common.target.addr).await?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        common.target.path
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await?;
    Ok(head.starts_with(b"HTTP/1.1 101").then_some(stream))
}
