//! Log lines that a client can cause at will (refused upgrades, plugin
//! faults) are rate-limited: at most one line a second per kind, the next
//! one saying how many like it were left out. A flood of them costs the
//! operator's disk nothing; the counters in `/metrics` still count each.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// The shortest time between two lines of one kind.
const INTERVAL: Duration = Duration::from_secs(1);

/// Kinds of line to when their last one was written, and how many were
/// left out since.
static LAST_LINES: LazyLock<Mutex<HashMap<String, (Instant, u64)>>> = LazyLock::new(Mutex::default);

/// Whether a line of kind `key` may be written now: `Some(n)` with the
/// number of lines of that kind left out since the last one written, or
/// `None` (this one is left out, and counted).
pub(crate) fn admit(key: &str) -> Option<u64> {
    let mut lines = LAST_LINES.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    match lines.get_mut(key) {
        Some((last, left_out)) if now.duration_since(*last) < INTERVAL => {
            *left_out += 1;
            None
        }
        Some((last, left_out)) => {
            *last = now;
            Some(std::mem::take(left_out))
        }
        None => {
            lines.insert(key.to_owned(), (now, 0));
            Some(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_and_a_count_of_the_rest() {
        let key = "test: one line a second";
        assert_eq!(admit(key), Some(0));
        assert_eq!(admit(key), None);
        assert_eq!(admit(key), None);
        LAST_LINES.lock().unwrap().get_mut(key).unwrap().0 -= INTERVAL;
        assert_eq!(admit(key), Some(2));
        assert_eq!(admit("test: another kind"), Some(0));
    }
}
