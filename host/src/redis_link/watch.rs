//! Listening to the sentinels' announcements of a new primary
//! (`+switch-master` on their pub/sub), so that a link moves as soon as a
//! failover ends, even before a command of its own fails.

use super::address::SentinelAddress;
use super::primary::Ask;
use super::{CONNECT_TIMEOUT, RedisLink, timed_out};
use futures_util::StreamExt;
use std::time::Duration;

/// The sentinels' channel for a finished failover: messages
/// `<master> <old ip> <old port> <new ip> <new port>`.
const SWITCH_MASTER: &str = "+switch-master";
/// How long to wait before trying the next sentinel when one is away.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// Listen to one sentinel at a time, the next when it goes away, and make
/// `link` follow every failover of `address.master` announced.
pub(super) async fn announcements(link: RedisLink, address: SentinelAddress) {
    for sentinel in address.sentinels.iter().cycle() {
        match listen(&link, sentinel, &address.master).await {
            Ok(()) => tracing::debug!(sentinel = %sentinel.addr(), "broker: sentinel went away"),
            Err(error) => tracing::debug!(
                sentinel = %sentinel.addr(),
                "broker: cannot listen to the sentinel: {error}"
            ),
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }
}

/// Follow the failovers of `master` one sentinel announces, until it goes
/// away.
async fn listen(
    link: &RedisLink,
    sentinel: &redis::ConnectionInfo,
    master: &str,
) -> redis::RedisResult<()> {
    let client = redis::Client::open(sentinel.clone())?;
    let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
        .await
        .unwrap_or_else(|_| Err(timed_out()))?;
    pubsub.subscribe(SWITCH_MASTER).await?;
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        let payload: String = message.get_payload()?;
        if payload.split(' ').next() == Some(master) {
            tracing::info!(sentinel = %sentinel.addr(), "broker: the sentinels announced a new primary: {payload}");
            link.follow(Ask::Announced).await;
        }
    }
    Ok(())
}
