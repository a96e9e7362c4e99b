//! What a host makes of a channel's history when it catches up on what
//! pub/sub did not bring: the publications to deliver, or that the
//! history no longer holds what the host delivered.
//!
//! Redis replicates asynchronously, so a failover can lose the last
//! publications of a channel after hosts delivered them; the new primary
//! then gives their offsets to other publications. A host notices when it
//! reads the history after reconnecting: the stream stands below the last
//! offset it delivered, or holds other data at that offset (compared by a
//! fingerprint, so that no data is kept).

use super::history::Found;
use crate::broker::history::{Position, Unrecoverable};
use std::hash::{DefaultHasher, Hash, Hasher};

/// The last publication delivered here on a channel with history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Delivered {
    /// Where it stands.
    pub(super) at: Position,
    /// A fingerprint of its data.
    pub(super) fingerprint: u64,
}

impl Delivered {
    pub(super) fn new(at: Position, data: Option<&str>) -> Self {
        Delivered {
            at,
            fingerprint: fingerprint(data),
        }
    }

    /// What to read to catch up: after the last publication delivered, or
    /// from it when it is to be checked.
    pub(super) fn read_from(&self, check: bool) -> Position {
        let offset = match check {
            true => self.at.offset.saturating_sub(1),
            false => self.at.offset,
        };
        Position {
            epoch: self.at.epoch.clone(),
            offset,
        }
    }
}

fn fingerprint(data: Option<&str>) -> u64 {
    let mut hasher = DefaultHasher::new();
    data.hash(&mut hasher);
    hasher.finish()
}

/// What a read of the history means for a host that delivered `last`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum CatchUp {
    /// Deliver these (`offset`, data), newer than `last`, in this epoch.
    Deliver(String, Vec<(u64, Option<String>)>),
    /// The history no longer holds what was delivered: start a new epoch.
    Rewritten,
    /// What was missed cannot be read (no longer kept, another epoch).
    Missing(Unrecoverable),
}

/// Judge `found`, read from [`Delivered::read_from`]`(check)`: with
/// `check`, it starts at the last publication delivered, whose data must
/// still be there.
pub(super) fn judge(last: &Delivered, found: Found, check: bool) -> CatchUp {
    let same_epoch = found.position.epoch == last.at.epoch;
    let behind = found.position.offset < last.at.offset;
    match found.failure {
        // The stream stands below what the read started from.
        Some(Unrecoverable::EpochChanged) if same_epoch => return CatchUp::Rewritten,
        Some(failure) => return CatchUp::Missing(failure),
        None if same_epoch && behind => return CatchUp::Rewritten,
        None => {}
    }
    let mut publications = found.publications;
    if check {
        match publications.first() {
            Some((offset, data))
                if *offset == last.at.offset
                    && fingerprint(data.as_deref()) == last.fingerprint =>
            {
                publications.remove(0);
            }
            _ => return CatchUp::Rewritten,
        }
    }
    CatchUp::Deliver(found.position.epoch, publications)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last() -> Delivered {
        let at = Position {
            epoch: "e1".into(),
            offset: 3,
        };
        Delivered::new(at, Some("\"three\""))
    }

    fn found(epoch: &str, offset: u64, publications: &[(u64, &str)]) -> Found {
        Found {
            position: Position {
                epoch: epoch.into(),
                offset,
            },
            publications: publications
                .iter()
                .map(|(offset, data)| (*offset, Some((*data).to_owned())))
                .collect(),
            failure: None,
        }
    }

    #[test]
    fn a_checked_catch_up_delivers_what_follows_the_last_delivered() {
        assert_eq!(last().read_from(true).offset, 2);
        assert_eq!(last().read_from(false).offset, 3);
        let read = found("e1", 5, &[(3, "\"three\""), (4, "4"), (5, "5")]);
        assert_eq!(
            judge(&last(), read, true),
            CatchUp::Deliver(
                "e1".into(),
                vec![(4, Some("4".into())), (5, Some("5".into()))]
            )
        );
        let read = found("e1", 3, &[(3, "\"three\"")]);
        assert_eq!(
            judge(&last(), read, true),
            CatchUp::Deliver("e1".into(), vec![])
        );
    }

    #[test]
    fn other_data_at_the_last_offset_is_a_rewritten_history() {
        let read = found("e1", 4, &[(3, "\"other\""), (4, "4")]);
        assert_eq!(judge(&last(), read, true), CatchUp::Rewritten);
    }

    #[test]
    fn a_stream_below_the_last_offset_is_a_rewritten_history() {
        // Read from 2: the stream stands at 2 (nothing to give) or at 1
        // (below the position read from: the read says epoch-changed).
        assert_eq!(
            judge(&last(), found("e1", 2, &[]), true),
            CatchUp::Rewritten
        );
        let mut below = found("e1", 1, &[]);
        below.failure = Some(Unrecoverable::EpochChanged);
        assert_eq!(judge(&last(), below, true), CatchUp::Rewritten);
        // Unchecked (a gap on a live connection): the same rule.
        assert_eq!(
            judge(&last(), found("e1", 2, &[]), false),
            CatchUp::Rewritten
        );
    }

    #[test]
    fn another_epoch_or_a_trimmed_history_is_missing() {
        let mut other = found("e2", 1, &[]);
        other.failure = Some(Unrecoverable::EpochChanged);
        assert_eq!(
            judge(&last(), other, true),
            CatchUp::Missing(Unrecoverable::EpochChanged)
        );
        let mut trimmed = found("e1", 90, &[]);
        trimmed.failure = Some(Unrecoverable::TooOld);
        assert_eq!(
            judge(&last(), trimmed, true),
            CatchUp::Missing(Unrecoverable::TooOld)
        );
    }
}
