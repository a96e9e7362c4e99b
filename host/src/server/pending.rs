//! Connections upgraded to WebSocket but not handshaken yet, counted in all
//! and per source address: a client that opens connections and never sends
//! `#handshake` must not take the server's connection slots from others.
//! Past half the limit the server is under pressure, and new connections
//! get a shorter time to handshake.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a connection has to handshake while the server is under
/// pressure (when it is shorter than `--handshake-timeout-ms`).
const HANDSHAKE_TIMEOUT_UNDER_PRESSURE: Duration = Duration::from_secs(2);

/// The pending handshakes and their limits.
#[derive(Debug)]
pub(super) struct PendingHandshakes {
    counts: Mutex<Counts>,
    /// The most pending handshakes in all (0: no limit).
    max_total: usize,
    /// The most pending handshakes from one source address (0: no limit).
    max_per_address: usize,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// Why a connection may not wait for its handshake now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TooMany {
    /// The server has as many pending handshakes as it takes.
    InAll,
    /// This source address has as many as it may have.
    FromAddress,
}

/// One connection's place among the pending handshakes, given back when
/// dropped (at its handshake, or when it closes).
#[derive(Debug)]
pub(super) struct PendingSlot {
    pending: Arc<PendingHandshakes>,
    address: IpAddr,
}

impl PendingHandshakes {
    /// No pending handshake yet, with these limits (0: none).
    pub(super) fn new(max_total: usize, max_per_address: usize) -> Self {
        PendingHandshakes {
            counts: Mutex::default(),
            max_total,
            max_per_address,
        }
    }

    /// Take a place for a connection from `address`, and the time it has to
    /// handshake (`handshake_timeout`, shorter under pressure).
    pub(super) fn take(
        self: &Arc<Self>,
        address: IpAddr,
        handshake_timeout: Duration,
    ) -> Result<(PendingSlot, Duration), TooMany> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if self.max_total > 0 && counts.total >= self.max_total {
            return Err(TooMany::InAll);
        }
        let from_address = counts.per_address.get(&address).copied().unwrap_or(0);
        if self.max_per_address > 0 && from_address >= self.max_per_address {
            return Err(TooMany::FromAddress);
        }
        counts.total += 1;
        *counts.per_address.entry(address).or_default() += 1;
        let under_pressure = self.max_total > 0 && counts.total * 2 > self.max_total;
        let timeout = if under_pressure {
            handshake_timeout.min(HANDSHAKE_TIMEOUT_UNDER_PRESSURE)
        } else {
            handshake_timeout
        };
        let slot = PendingSlot {
            pending: self.clone(),
            address,
        };
        Ok((slot, timeout))
    }

    /// How many connections wait for their handshake now.
    pub(super) fn count(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut counts = self
            .pending
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(count) = counts.per_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.per_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_in_all_and_per_address_and_places_come_back() {
        let pending = Arc::new(PendingHandshakes::new(4, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let timeout = Duration::from_secs(10);
        let first = pending.take(a, timeout).unwrap();
        assert_eq!(first.1, timeout);
        let _second = pending.take(a, timeout).unwrap();
        assert_eq!(pending.take(a, timeout).unwrap_err(), TooMany::FromAddress);
        let third = pending.take(b, timeout).unwrap();
        assert_eq!(
            third.1, HANDSHAKE_TIMEOUT_UNDER_PRESSURE,
            "past half: pressure"
        );
        let _fourth = pending.take(b, timeout).unwrap();
        assert_eq!(
            pending
                .take("10.0.0.3".parse().unwrap(), timeout)
                .unwrap_err(),
            TooMany::InAll
        );
        drop(first);
        assert_eq!(pending.count(), 3);
        assert!(pending.take(a, timeout).is_ok());
    }
}
