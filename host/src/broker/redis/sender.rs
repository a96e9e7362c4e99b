//! Who sent a publication through Redis, so that one sent twice arrives
//! once.
//!
//! A publication can reach Redis twice: when the connection breaks after
//! Redis ran a command but before its answer arrived, the command is sent
//! again (once by the publisher task after a lost connection, by the Redis
//! client's own retries on a cluster), and if the primary had passed the
//! first one to the replica that takes over, both stand. So each
//! publication carries its host's id and a number, one more for each
//! publication the host's publisher task sends, in the order it sends
//! them: on one channel a host's numbers only grow. A plain publication
//! carries them as `<host id>:<number>\n<data>`, and a receiving host drops
//! one whose number is not above the last it delivered from that host on
//! that channel ([`Seen`]); the publish script of a channel with history
//! keeps the last number per host in the channel's meta hash and numbers
//! nothing twice.

use std::collections::HashMap;

/// Hosts remembered per channel; past it the oldest is forgotten (hosts
/// that restarted took new ids).
const HOSTS_PER_CHANNEL: usize = 16;

/// The sender of a plain publication, from the part of its payload before
/// the newline.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Sender<'a> {
    /// The sending host's id.
    pub(super) host: &'a [u8],
    /// Its number; none from a host of a version before numbering.
    pub(super) number: Option<u64>,
}

impl<'a> Sender<'a> {
    /// `<host id>:<number>`, or a bare `<host id>`.
    pub(super) fn parse(origin: &'a [u8]) -> Sender<'a> {
        let numbered = origin
            .iter()
            .rposition(|&byte| byte == b':')
            .and_then(|colon| {
                let number = std::str::from_utf8(&origin[colon + 1..])
                    .ok()?
                    .parse()
                    .ok()?;
                Some((&origin[..colon], number))
            });
        match numbered {
            Some((host, number)) => Sender {
                host,
                number: Some(number),
            },
            None => Sender {
                host: origin,
                number: None,
            },
        }
    }
}

/// The last number delivered per channel and sending host.
#[derive(Debug, Default)]
pub(super) struct Seen {
    channels: HashMap<String, Vec<LastFrom>>,
}

/// A sending host's id and the last number delivered from it.
type LastFrom = (Box<[u8]>, u64);

impl Seen {
    /// Whether a publication from `sender` on `channel` is delivered for
    /// the first time (it is remembered if so). One without a number
    /// always is.
    pub(super) fn first_time(&mut self, channel: &str, sender: &Sender) -> bool {
        let Some(number) = sender.number else {
            return true;
        };
        let hosts = match self.channels.get_mut(channel) {
            Some(hosts) => hosts,
            None => self.channels.entry(channel.to_owned()).or_default(),
        };
        match hosts.iter_mut().find(|(host, _)| **host == *sender.host) {
            Some((_, last)) if number <= *last => false,
            Some((_, last)) => {
                *last = number;
                true
            }
            None => {
                if hosts.len() == HOSTS_PER_CHANNEL {
                    hosts.remove(0);
                }
                hosts.push((sender.host.into(), number));
                true
            }
        }
    }

    /// `channel` is no longer listened to.
    pub(super) fn forget(&mut self, channel: &str) {
        self.channels.remove(channel);
    }

    /// Keep only the channels `listened` says are listened to.
    pub(super) fn retain(&mut self, listened: impl Fn(&str) -> bool) {
        self.channels.retain(|channel, _| listened(channel));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_are_read_with_or_without_a_number() {
        assert_eq!(
            Sender::parse(b"00ab:17"),
            Sender {
                host: b"00ab",
                number: Some(17)
            }
        );
        assert_eq!(
            Sender::parse(b"00ab"),
            Sender {
                host: b"00ab",
                number: None
            }
        );
        assert_eq!(Sender::parse(b"00ab:x").number, None);
    }

    #[test]
    fn a_publication_sent_twice_is_delivered_once() {
        let mut seen = Seen::default();
        let from = |host: &'static [u8], number| Sender {
            host,
            number: Some(number),
        };
        assert!(seen.first_time("c", &from(b"a", 1)));
        assert!(seen.first_time("c", &from(b"a", 2)));
        assert!(!seen.first_time("c", &from(b"a", 2)), "sent again");
        assert!(!seen.first_time("c", &from(b"a", 1)), "an older one");
        assert!(seen.first_time("c", &from(b"b", 1)), "another host");
        assert!(seen.first_time("d", &from(b"a", 2)), "another channel");
        assert!(seen.first_time(
            "c",
            &Sender {
                host: b"a",
                number: None
            }
        ));
        seen.forget("c");
        assert!(seen.first_time("c", &from(b"a", 1)));
    }

    #[test]
    fn restarted_hosts_are_forgotten_oldest_first() {
        let mut seen = Seen::default();
        let hosts: Vec<Vec<u8>> = (0..=HOSTS_PER_CHANNEL)
            .map(|n| format!("h{n}").into_bytes())
            .collect();
        for host in &hosts {
            let sender = Sender {
                host,
                number: Some(5),
            };
            assert!(seen.first_time("c", &sender));
        }
        assert_eq!(seen.channels["c"].len(), HOSTS_PER_CHANNEL);
        let first = Sender {
            host: &hosts[0],
            number: Some(5),
        };
        assert!(seen.first_time("c", &first), "the oldest was forgotten");
    }
}
