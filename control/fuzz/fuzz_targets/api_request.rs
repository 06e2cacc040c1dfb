//! Any bytes as an API connection's stream into the server's request
//! framing and parser: no panic or hang; every line handed out is within
//! the limit and holds no newline; every request that parses re-encodes
//! (as a client would send it) into one that parses to the same call.
#![no_main]
use libfuzzer_sys::fuzz_target;
use podrouter_api::{Call, Request, API_VERSION};
use podrouter_control::server::request::{parse, LineFramer};

/// A small limit, so that the too-long path is reached often.
const LIMIT: usize = 512;

fn round_trip(call: Call) {
    let req = Request {
        version: API_VERSION,
        call,
    };
    let line = serde_json::to_vec(&req).expect("a call encodes");
    assert_eq!(parse(&line).ok(), Some(req.call), "re-encoded request");
}

fuzz_target!(|data: &[u8]| {
    // The whole input as one request line.
    if let Ok(call) = parse(data) {
        round_trip(call);
    }
    // The input as a stream arriving in reads of a size its first byte
    // picks, as a slow or pipelining client would send it.
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let mut framer = LineFramer::new(LIMIT);
    for read in stream.chunks(usize::from(step % 64) + 1) {
        framer.push(read);
        loop {
            match framer.next_line() {
                Ok(Some(line)) => {
                    assert!(line.len() <= LIMIT && !line.contains(&b'\n'));
                    if let Ok(call) = parse(&line) {
                        round_trip(call);
                    }
                }
                Ok(None) => break,
                // The server closes the connection here.
                Err(_) => return,
            }
        }
    }
});
