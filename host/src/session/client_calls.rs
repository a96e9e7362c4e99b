//! Procedures the server invokes on the client (a plugin's
//! `invoke-client`): the call ids sent, and the answers routed back to
//! whoever waits for them.

use crate::mailbox::ClientAnswer;
use std::collections::HashMap;
use tokio::sync::oneshot;

/// Most calls to one client that may wait for its answer at once. A caller
/// that gave up (timed out) leaves its entry until the client answers, the
/// socket closes, or this many are reached and the abandoned ones are
/// swept: a client that never answers cannot grow the table without bound.
const MAX_WAITING: usize = 1024;

/// The calls of one session; nothing is allocated until the first.
#[derive(Debug, Default)]
pub(super) struct ClientCalls(Option<Box<Waiting>>);

#[derive(Debug, Default)]
struct Waiting {
    /// The last call id sent. Ids are never reused on a connection, so a
    /// late answer to an abandoned call cannot answer a newer one.
    last_cid: u64,
    /// Who waits for the answer to each call id.
    by_cid: HashMap<u64, oneshot::Sender<ClientAnswer>>,
}

impl ClientCalls {
    /// The call id for a new call whose answer goes to `answer`; `None`
    /// when the call is not to be sent (its caller gave up already, or too
    /// many wait; the caller is told).
    pub(super) fn start(&mut self, answer: oneshot::Sender<ClientAnswer>) -> Option<u64> {
        if answer.is_closed() {
            return None;
        }
        let waiting = self.0.get_or_insert_with(Box::default);
        if waiting.by_cid.len() >= MAX_WAITING {
            waiting.by_cid.retain(|_, caller| !caller.is_closed());
        }
        if waiting.by_cid.len() >= MAX_WAITING {
            let _ = answer.send(ClientAnswer::Refused(format!(
                "{MAX_WAITING} calls to this client are waiting for its answer already"
            )));
            return None;
        }
        waiting.last_cid += 1;
        waiting.by_cid.insert(waiting.last_cid, answer);
        Some(waiting.last_cid)
    }

    /// The connection is gone: every caller waiting is told so (its answer
    /// is dropped unsent). Later calls are not sent.
    pub(super) fn disconnected(&mut self) {
        if let Some(waiting) = self.0.as_mut() {
            waiting.by_cid.clear();
        }
    }

    /// The client answered call `rid`; an answer to no call waiting is
    /// ignored, as SocketCluster does.
    pub(super) fn answer(&mut self, rid: u64, answer: ClientAnswer) {
        let Some(waiting) = self.0.as_mut() else {
            return;
        };
        if let Some(caller) = waiting.by_cid.remove(&rid) {
            let _ = caller.send(answer);
        }
        if waiting.by_cid.is_empty() {
            waiting.by_cid.shrink_to(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_go_to_their_call_and_ids_are_not_reused() {
        let mut calls = ClientCalls::default();
        let (first, mut first_answer) = oneshot::channel();
        let (second, mut second_answer) = oneshot::channel();
        assert_eq!(calls.start(first), Some(1));
        assert_eq!(calls.start(second), Some(2));
        calls.answer(2, ClientAnswer::Data(None));
        calls.answer(99, ClientAnswer::Data(None));
        assert_eq!(second_answer.try_recv(), Ok(ClientAnswer::Data(None)));
        assert!(first_answer.try_recv().is_err(), "1 is still waiting");
        let (third, _third_answer) = oneshot::channel();
        assert_eq!(calls.start(third), Some(3));
    }

    #[test]
    fn abandoned_calls_are_swept_and_the_table_is_bounded() {
        let mut calls = ClientCalls::default();
        let mut kept = Vec::new();
        for _ in 0..MAX_WAITING {
            let (caller, answer) = oneshot::channel();
            calls.start(caller).unwrap();
            kept.push(answer);
        }
        let (refused, mut refused_answer) = oneshot::channel();
        assert_eq!(calls.start(refused), None);
        assert!(matches!(
            refused_answer.try_recv(),
            Ok(ClientAnswer::Refused(_))
        ));
        // Callers that gave up make room.
        kept.truncate(10);
        let (caller, _answer) = oneshot::channel();
        assert!(calls.start(caller).is_some());
    }
}
