//! The fault policy of one plugin on one worker: when calls are refused
//! for a while.
//!
//! The rule: a fault caused by a call costs that call and a rebuild of the
//! instance, nothing more. Two things make a plugin refuse calls for a
//! while, answering `PluginUnavailable` at once:
//!
//! - **The plugin cannot be rebuilt** (its `init` fails or traps): it backs
//!   off on this worker for everyone, for a delay that doubles from
//!   [`MIN_BACKOFF`] to [`MAX_BACKOFF`], and a task rebuilds it when the
//!   delay ends; the first good rebuild ends the back-off. No client can
//!   cause this: `init` sees only the operator's config.
//! - **One socket's calls fault [`FAULTS_BEFORE_BACKOFF`] times within
//!   [`FAULT_WINDOW`]**: that socket alone backs off from that plugin, for a
//!   delay that doubles the same way. Successful calls between do not wipe
//!   the count: a client alternating a call that runs into the deadline
//!   with a good one would otherwise hold an instance for a whole deadline
//!   per pair, forever.
//!   Every other socket is served as before, so a client calling a
//!   panicking RPC in a loop costs the plugin one rebuild per call it makes
//!   until it backs off, and makes it unavailable to nobody else.

use super::fault::CallFailure;
use super::loaded::LoadedPlugin;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// Faulted calls of one socket within [`FAULT_WINDOW`] after which that
/// socket backs off from the plugin.
pub(super) const FAULTS_BEFORE_BACKOFF: u32 = 10;
/// How long a socket's faults count toward its back-off; a socket with no
/// fault for this long starts again from nothing (its doubling included).
pub(super) const FAULT_WINDOW: Duration = Duration::from_secs(10);
/// The first back-off delay.
pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// The longest back-off delay.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A delay that doubles with each back-off, until something succeeds.
#[derive(Debug, Default)]
pub(super) struct Backoff {
    /// While it lasts: when calls are taken again.
    pub(super) until: Option<Instant>,
    /// The last delay, kept until a success so that repeated back-offs double.
    last_delay: Option<Duration>,
    /// Why calls are refused meanwhile.
    pub(super) reason: String,
}

impl Backoff {
    /// Whether calls are refused now.
    fn is_active(&self) -> bool {
        self.until.is_some_and(|until| Instant::now() < until)
    }

    /// Start backing off for the next delay; its length.
    pub(super) fn start(&mut self, reason: String) -> Duration {
        let delay = self
            .last_delay
            .map_or(MIN_BACKOFF, |last| (last * 2).min(MAX_BACKOFF));
        self.last_delay = Some(delay);
        self.until = Some(Instant::now() + delay);
        self.reason = reason;
        delay
    }
}

/// Faults caused by one socket's calls to the plugin.
#[derive(Debug)]
struct SocketFaults {
    /// Faults since `counting_since`.
    recent: u32,
    /// When the current count began.
    counting_since: Instant,
    /// When the last fault happened.
    last_fault: Instant,
    backoff: Backoff,
}

impl SocketFaults {
    fn new(now: Instant) -> Self {
        SocketFaults {
            recent: 0,
            counting_since: now,
            last_fault: now,
            backoff: Backoff::default(),
        }
    }
}

/// The back-offs of one plugin on one worker: its own, and its sockets'.
#[derive(Debug, Default)]
pub(super) struct FaultPolicy {
    /// The plugin's back-off on this worker, when it cannot be rebuilt.
    pub(super) backoff: Backoff,
    /// Sockets whose calls faulted within [`FAULT_WINDOW`], by socket id.
    by_socket: HashMap<String, SocketFaults>,
}

impl FaultPolicy {
    /// Why a call from `socket` (none for calls no socket makes) must be
    /// refused now, if it must.
    pub(super) fn refusal(&self, socket: Option<&str>) -> Option<CallFailure> {
        if self.backoff.is_active() {
            return Some(CallFailure::Unavailable(self.backoff.reason.clone()));
        }
        let faults = self.by_socket.get(socket?)?;
        faults
            .backoff
            .is_active()
            .then(|| CallFailure::Unavailable(faults.backoff.reason.clone()))
    }

    /// A call from `socket` succeeded: the plugin's own back-off doubling
    /// starts again; a socket's fault record is forgotten once it has had
    /// no fault for [`FAULT_WINDOW`].
    pub(super) fn succeeded(&mut self, socket: Option<&str>) {
        self.backoff.last_delay = None;
        if let Some(socket) = socket
            && self
                .by_socket
                .get(socket)
                .is_some_and(|faults| faults.last_fault.elapsed() >= FAULT_WINDOW)
        {
            self.by_socket.remove(socket);
        }
    }

    /// A call from `socket` faulted (described as `fault`); back that
    /// socket off after too many within [`FAULT_WINDOW`].
    pub(super) fn faulted(&mut self, socket: Option<&str>, plugin: &LoadedPlugin, fault: &str) {
        let Some(socket) = socket else {
            return;
        };
        let now = Instant::now();
        let faults = self
            .by_socket
            .entry(socket.to_owned())
            .or_insert_with(|| SocketFaults::new(now));
        if now.duration_since(faults.last_fault) >= FAULT_WINDOW {
            *faults = SocketFaults::new(now);
        } else if now.duration_since(faults.counting_since) >= FAULT_WINDOW {
            faults.recent = 0;
            faults.counting_since = now;
        }
        faults.last_fault = now;
        faults.recent += 1;
        if faults.recent >= FAULTS_BEFORE_BACKOFF {
            let reason = format!(
                "Plugin '{}' is unavailable to this socket for a while: {} of its calls \
                 faulted within {} s (last: {fault}); other sockets are served",
                plugin.name,
                faults.recent,
                FAULT_WINDOW.as_secs()
            );
            let delay = faults.backoff.start(reason);
            faults.recent = 0;
            faults.counting_since = now;
            plugin.health.socket_backoff_started();
            tracing::warn!(
                plugin = &*plugin.name,
                socket,
                delay_ms = delay.as_millis() as u64,
                "socket backing off from the plugin: {FAULTS_BEFORE_BACKOFF} of its calls \
                 faulted within {} s",
                FAULT_WINDOW.as_secs()
            );
        }
    }

    /// A socket is gone: forget its faults.
    pub(super) fn forget(&mut self, socket: &str) {
        self.by_socket.remove(socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_offs_double_up_to_the_longest_and_expire() {
        let mut backoff = Backoff::default();
        assert!(!backoff.is_active());
        assert_eq!(backoff.start("x".into()), MIN_BACKOFF);
        assert!(backoff.is_active());
        assert_eq!(backoff.start("x".into()), MIN_BACKOFF * 2);
        for _ in 0..20 {
            backoff.start("x".into());
        }
        assert_eq!(backoff.last_delay, Some(MAX_BACKOFF));
    }
}
