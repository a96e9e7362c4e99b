//! The channels a socket is subscribed to, kept by its session and read by
//! plugins on any worker (`subscriptions(socket-id)`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

/// A socket's channels. The session changes them; a plugin reads a copy
/// through the registry, without a round trip to the session (which may be
/// the very session waiting for that plugin's answer).
#[derive(Debug, Clone, Default)]
pub(crate) struct Subscriptions(Arc<Mutex<HashSet<String>>>);

impl Subscriptions {
    fn channels(&self) -> MutexGuard<'_, HashSet<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Add a channel; whether it was new.
    pub(crate) fn insert(&self, channel: &str) -> bool {
        let mut channels = self.channels();
        !channels.contains(channel) && channels.insert(channel.to_owned())
    }

    /// Remove a channel; whether it was there.
    pub(crate) fn remove(&self, channel: &str) -> bool {
        self.channels().remove(channel)
    }

    /// How many channels.
    pub(crate) fn len(&self) -> usize {
        self.channels().len()
    }

    /// The channels, sorted.
    pub(crate) fn list(&self) -> Vec<String> {
        let mut list: Vec<String> = self.channels().iter().cloned().collect();
        list.sort_unstable();
        list
    }

    /// Remove and return every channel.
    pub(crate) fn take(&self) -> Vec<String> {
        self.channels().drain().collect()
    }
}
