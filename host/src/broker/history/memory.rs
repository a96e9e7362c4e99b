//! Channel history on one host, in memory: publications of a channel with
//! history are numbered and delivered under one lock, and a subscription
//! with history registers under it too, so a subscriber sees the kept ones
//! and then the live ones with no gap and no duplicate.
//!
//! Memory is bounded per channel (`history-size`, `history-ttl-secs`) and
//! in all (`--history-max-bytes`: past it the oldest publications of any
//! channel go first). Channels without a rule cost nothing.

use super::{Catchup, HistoryRule, Position, Since, Unrecoverable, new_epoch};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One kept publication.
#[derive(Debug)]
struct Kept {
    offset: u64,
    at: Instant,
    /// The `#publish` frame as subscribers get it.
    frame: Utf8Bytes,
}

/// One channel's stream.
#[derive(Debug)]
struct Stream {
    epoch: String,
    /// The offset of the newest publication (0: none yet).
    last: u64,
    kept: VecDeque<Kept>,
    rule: HistoryRule,
    /// When it was last published to or subscribed with history.
    touched: Instant,
}

impl Stream {
    fn new(rule: HistoryRule, now: Instant) -> Self {
        Stream {
            epoch: new_epoch(),
            last: 0,
            kept: VecDeque::new(),
            rule,
            touched: now,
        }
    }

    fn position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset: self.last,
        }
    }

    /// Drop what is past the rule's size or age; the bytes freed.
    fn trim(&mut self, now: Instant) -> usize {
        let mut freed = 0;
        while let Some(oldest) = self.kept.front() {
            let too_many = self.kept.len() > self.rule.size;
            let too_old = now.duration_since(oldest.at) >= self.rule.ttl;
            if !too_many && !too_old {
                break;
            }
            freed += oldest.frame.len();
            self.kept.pop_front();
        }
        freed
    }
}
/// Every stream, and the order their publications were kept in.
#[derive(Debug, Default)]
struct State {
    streams: HashMap<Arc<str>, Stream>,
    /// `(channel, offset)` of every kept publication, oldest first: the
    /// order they go in when the memory cap is reached.
    order: VecDeque<(Arc<str>, u64)>,
    bytes: usize,
}

impl State {
    /// `channel`'s stream (a new one if it has none), trimmed to its rule
    /// at `now`, with the channel's shared name.
    fn stream(
        &mut self,
        channel: &str,
        rule: HistoryRule,
        now: Instant,
    ) -> (Arc<str>, &mut Stream) {
        let name: Arc<str> = match self.streams.get_key_value(channel) {
            Some((name, _)) => name.clone(),
            None => Arc::from(channel),
        };
        let stream = self
            .streams
            .entry(name.clone())
            .or_insert_with(|| Stream::new(rule, now));
        self.bytes -= stream.trim(now);
        (name, stream)
    }
}

/// The history of every channel with a rule, on this host.
#[derive(Debug)]
pub(crate) struct History {
    max_bytes: usize,
    state: Mutex<State>,
}

impl Default for History {
    fn default() -> Self {
        History::new(64 << 20)
    }
}

impl History {
    /// History keeping at most `max_bytes` of publications.
    pub(crate) fn new(max_bytes: usize) -> Self {
        History {
            max_bytes,
            state: Mutex::default(),
        }
    }

    /// Number and keep a publication of `channel` (which has `rule`), and
    /// run `deliver` with its frame while no subscription with history can
    /// come between; `encode` makes the frame from the position.
    pub(crate) fn publish<R>(
        &self,
        channel: &str,
        rule: HistoryRule,
        encode: impl FnOnce(&Position) -> String,
        deliver: impl FnOnce(&Utf8Bytes) -> R,
    ) -> R {
        let now = Instant::now();
        let mut state = self.lock();
        let (name, stream) = state.stream(channel, rule, now);
        stream.touched = now;
        stream.last += 1;
        let offset = stream.last;
        let frame = Utf8Bytes::from(encode(&stream.position()));
        let delivered = deliver(&frame);
        let added = frame.len();
        stream.kept.push_back(Kept {
            offset,
            at: now,
            frame,
        });
        let freed = stream.trim(now);
        state.bytes = state.bytes + added - freed;
        state.order.push_back((name, offset));
        self.enforce_cap(&mut state);
        delivered
    }

    /// Run `subscribe` (which registers the subscriber for live
    /// publications) where no publication of `channel` (which has `rule`)
    /// can come between, and give what the subscriber asked for.
    pub(crate) fn subscribe(
        &self,
        channel: &str,
        rule: HistoryRule,
        since: &Since,
        subscribe: impl FnOnce(),
    ) -> Catchup {
        let now = Instant::now();
        let mut state = self.lock();
        let (_, stream) = state.stream(channel, rule, now);
        stream.touched = now;
        subscribe();
        let mut catchup = Catchup {
            position: Some(stream.position()),
            ..Catchup::default()
        };
        match since {
            Since::Position(position) => match missed(stream, position) {
                Ok(frames) => catchup.frames = frames,
                Err(failure) => catchup.failure = Some(failure),
            },
            Since::Nothing | Since::Now if rule.last_value => {
                catchup
                    .frames
                    .extend(stream.kept.back().map(|kept| kept.frame.clone()));
            }
            Since::Nothing | Since::Now => {}
        }
        catchup
    }

    /// The newest kept publications of `channel` (which has `rule`) below
    /// offset `before` (all when `None`), at most `limit`, oldest first,
    /// with the stream's position.
    pub(crate) fn page(
        &self,
        channel: &str,
        rule: HistoryRule,
        before: Option<u64>,
        limit: usize,
    ) -> (Position, Vec<(u64, Utf8Bytes)>) {
        let mut state = self.lock();
        let (_, stream) = state.stream(channel, rule, Instant::now());
        let below = before.unwrap_or(u64::MAX);
        let mut page: Vec<(u64, Utf8Bytes)> = stream
            .kept
            .iter()
            .rev()
            .filter(|kept| kept.offset < below)
            .take(limit)
            .map(|kept| (kept.offset, kept.frame.clone()))
            .collect();
        page.reverse();
        (stream.position(), page)
    }

    /// Drop expired publications, and the streams that have none left, no
    /// subscriber here (`subscribed`) and no publication or subscription
    /// for their TTL: their epoch goes with them, so a client that comes
    /// back later is told its history is gone.
    pub(crate) fn sweep(&self, subscribed: impl Fn(&str) -> bool) {
        let now = Instant::now();
        let mut state = self.lock();
        let state = &mut *state;
        let mut freed = 0;
        state.streams.retain(|channel, stream| {
            freed += stream.trim(now);
            !stream.kept.is_empty()
                || now.duration_since(stream.touched) < stream.rule.ttl
                || subscribed(channel)
        });
        state.bytes -= freed;
        let streams = &state.streams;
        state.order.retain(|(channel, offset)| {
            streams
                .get(channel)
                .and_then(|stream| stream.kept.front())
                .is_some_and(|oldest| oldest.offset <= *offset)
        });
    }

    /// Bytes of publications kept, and channels with a stream.
    pub(crate) fn usage(&self) -> (usize, usize) {
        let state = self.lock();
        (state.bytes, state.streams.len())
    }

    /// Drop the oldest publications of any channel until under the cap.
    fn enforce_cap(&self, state: &mut State) {
        while state.bytes > self.max_bytes {
            let Some((channel, offset)) = state.order.pop_front() else {
                return;
            };
            let Some(stream) = state.streams.get_mut(&channel) else {
                continue;
            };
            if stream
                .kept
                .front()
                .is_some_and(|oldest| oldest.offset == offset)
            {
                let oldest = stream.kept.pop_front().expect("checked above");
                state.bytes -= oldest.frame.len();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The frames after `position` in `stream`, or why they cannot be given.
fn missed(stream: &Stream, position: &Position) -> Result<Vec<Utf8Bytes>, Unrecoverable> {
    if position.epoch != stream.epoch || position.offset > stream.last {
        return Err(Unrecoverable::EpochChanged);
    }
    if position.offset == stream.last {
        return Ok(Vec::new());
    }
    let oldest = stream
        .kept
        .front()
        .map_or(stream.last + 1, |kept| kept.offset);
    if oldest > position.offset + 1 {
        return Err(Unrecoverable::TooOld);
    }
    Ok(stream
        .kept
        .iter()
        .filter(|kept| kept.offset > position.offset)
        .map(|kept| kept.frame.clone())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::super::tests::RULE;
    use super::*;

    fn history() -> History {
        History::new(1 << 20)
    }

    fn publish(history: &History, channel: &str, n: u64) -> Position {
        let mut seen = None;
        history.publish(
            channel,
            RULE,
            |position| {
                seen = Some(position.clone());
                format!("{n}@{}", position.offset)
            },
            |_| (),
        );
        seen.unwrap()
    }

    #[test]
    fn a_subscriber_gets_what_it_missed_or_is_told_why_not() {
        let history = history();
        let start = history
            .subscribe("room:1", RULE, &Since::Now, || ())
            .position
            .unwrap();
        assert_eq!(start.offset, 0);
        for n in 1..=2 {
            publish(&history, "room:1", n);
        }
        let catchup = history.subscribe("room:1", RULE, &Since::Position(start.clone()), || ());
        let frames: Vec<&str> = catchup.frames.iter().map(Utf8Bytes::as_str).collect();
        assert_eq!(frames, ["1@1", "2@2"]);
        for n in 3..=5 {
            publish(&history, "room:1", n);
        }
        // Size 3 keeps offsets 3-5: offset 1 missed 2, which is gone.
        let one = Position {
            offset: 1,
            ..start.clone()
        };
        let catchup = history.subscribe("room:1", RULE, &Since::Position(one), || ());
        assert_eq!(catchup.failure, Some(Unrecoverable::TooOld));
        let two = Position { offset: 2, ..start };
        let catchup = history.subscribe("room:1", RULE, &Since::Position(two), || ());
        assert_eq!(catchup.frames.len(), 3);
        let other = Position {
            epoch: "other".into(),
            offset: 2,
        };
        let catchup = history.subscribe("room:1", RULE, &Since::Position(other), || ());
        assert_eq!(catchup.failure, Some(Unrecoverable::EpochChanged));
    }

    #[test]
    fn pages_go_back_from_the_newest() {
        let history = history();
        for n in 1..=3 {
            publish(&history, "room:1", n);
        }
        let (position, page) = history.page("room:1", RULE, None, 2);
        assert_eq!(position.offset, 3);
        let offsets: Vec<u64> = page.iter().map(|(offset, _)| *offset).collect();
        assert_eq!(offsets, [2, 3]);
        let (_, page) = history.page("room:1", RULE, Some(2), 10);
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].1.as_str(), "1@1");
    }

    #[test]
    fn the_memory_cap_drops_the_oldest_publications_of_any_channel() {
        let history = History::new(10);
        publish(&history, "a", 1); // "1@1": 3 bytes
        publish(&history, "b", 2);
        publish(&history, "a", 3);
        assert_eq!(history.usage().0, 9);
        publish(&history, "b", 4); // 12 bytes: a's first goes
        assert_eq!(history.usage().0, 9);
        let state = history.lock();
        assert_eq!(state.streams["a"].kept.len(), 1);
        assert_eq!(state.streams["b"].kept.len(), 2);
    }
}
