//! `fetch`: the overhead the host adds to an outbound HTTP request. The
//! load generator serves HTTP on loopback itself, then measures, one
//! request at a time, a direct GET to it (a new connection each, as the
//! host makes), and RPC `fetch` `{url}` of the `fetch` plugin to the same
//! URL (WebSocket round trip, plugin call, allow-list check, resolution,
//! connection, request, response read in full). The server must allow
//! `http://127.0.0.1:*` for `fetch`. wasmcluster only.

use super::{Common, histogram, latency_fields, open};
use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::net::SocketAddr;
use testkit::{Incoming, reply_id};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// The upstream's answer.
const BODY: &str = "hello from upstream";

/// Run the scenario and return its figures.
pub async fn run(common: &Common) -> Result<Value> {
    let upstream = serve_upstream().await?;
    let half = common.duration / 2;

    let mut direct = histogram();
    let end = Instant::now() + half;
    while Instant::now() < end {
        let started = Instant::now();
        get(upstream).await?;
        direct.record(started.elapsed().as_micros().max(1) as u64)?;
    }

    let mut client = open(&common.target, None).await?;
    let url = format!("http://{upstream}/hello");
    let mut through = histogram();
    let mut cid = 1u64;
    let end = Instant::now() + half;
    while Instant::now() < end {
        cid += 1;
        let call = json!({"event": "fetch", "data": {"url": url}, "cid": cid});
        let started = Instant::now();
        client.send(call.to_string()).await?;
        let reply = loop {
            match client.next().await.context("reading a reply")? {
                Incoming::Packet(text) if reply_id(&text) == Some(cid) => break text,
                Incoming::Packet(_) => continue,
                Incoming::Closed(closed) => bail!("the connection closed: {closed:?}"),
            }
        };
        through.record(started.elapsed().as_micros().max(1) as u64)?;
        if !reply.contains(BODY) {
            bail!("`fetch` did not answer the upstream's body: {reply}");
        }
    }
    let mut figures = json!({
        "direct_requests": direct.len(),
        "fetch_requests": through.len(),
        "overhead_p50_ms": overhead(&through, &direct, 0.5),
        "overhead_p99_ms": overhead(&through, &direct, 0.99),
    });
    let object = figures.as_object_mut().expect("an object");
    object.extend(latency_fields("direct_", &direct));
    object.extend(latency_fields("fetch_", &through));
    Ok(figures)
}

/// The difference of one percentile, in ms.
fn overhead(through: &Histogram<u64>, direct: &Histogram<u64>, quantile: f64) -> f64 {
    let difference =
        through.value_at_quantile(quantile) as f64 - direct.value_at_quantile(quantile) as f64;
    difference / 1000.0
}

/// An HTTP/1.1 server on 127.0.0.1 answering every request with [`BODY`]
/// and closing the connection.
async fn serve_upstream() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => head.extend_from_slice(&buffer[..read]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
                    BODY.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// A GET on a new connection, its response read to the end.
async fn get(upstream: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let request = format!("GET /hello HTTP/1.1\r\nhost: {upstream}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    if !response.ends_with(BODY.as_bytes()) {
        bail!("unexpected upstream answer");
    }
    Ok(())
}
