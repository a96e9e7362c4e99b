//! `idle`: many connections that only handshake and answer pings; the
//! server's resident memory per connection.

use super::{Common, open_many};
use crate::proc_stats::rss_bytes;
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::time::Duration;
use testkit::Incoming;

/// Parameters of the idle scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
}

/// Time given to the server to settle before its memory is read.
const SETTLE: Duration = Duration::from_secs(2);

/// Run the scenario and return its figures.
pub async fn run(common: &Common, args: &IdleArgs) -> Result<Value> {
    let pid = common
        .server_pid
        .context("idle needs --server-pid")?
        .to_string();
    let before = rss_bytes(&pid)?;
    let connections = open_many(common, args.connections).await?;
    let readers: Vec<_> = connections
        .into_iter()
        .map(|mut connection| {
            tokio::spawn(
                async move { while let Ok(Incoming::Packet(_)) = connection.next().await {} },
            )
        })
        .collect();
    tokio::time::sleep(SETTLE).await;
    let after = rss_bytes(&pid)?;
    let still_open = readers
        .iter()
        .filter(|reader| !reader.is_finished())
        .count();
    for reader in readers {
        reader.abort();
    }
    let per_connection = after.saturating_sub(before) as f64 / args.connections as f64;
    Ok(json!({
        "connections": args.connections,
        "open_after_settle": still_open,
        "server_rss_before_bytes": before,
        "server_rss_after_bytes": after,
        "bytes_per_connection": per_connection,
    }))
}
