//! `answer_request_head` on any bytes, as a connection reads them before the
//! WebSocket upgrade. Must never panic, and an answer, when there is one,
//! must be a complete HTTP/1.1 response head (the client reads it as one).

#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmcluster::server::answer_request_head;

fuzz_target!(|bytes: &[u8]| {
    let Some(answer) = answer_request_head(bytes) else {
        return;
    };
    assert!(
        answer.starts_with(b"HTTP/1.1 "),
        "answer does not start with HTTP/1.1: {:?}",
        String::from_utf8_lossy(&answer)
    );
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&answer) {
        Ok(httparse::Status::Complete(_)) => {}
        other => panic!(
            "answer is not a complete response head ({other:?}): {:?}",
            String::from_utf8_lossy(&answer)
        ),
    }
    if response.code == Some(101) {
        assert!(
            response
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept")),
            "101 without Sec-WebSocket-Accept"
        );
    }
});
