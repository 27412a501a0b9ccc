//! The control request decoder: any line a client sends gives a request or
//! an error reply, never a panic; a request decoded once decodes the same
//! from its own encoding (nothing is lost or invented on the way).
#![no_main]

use libfuzzer_sys::fuzz_target;
use minder::control::protocol::{parse_request, MAX_REQUEST};

fuzz_target!(|line: &[u8]| {
    // The server refuses longer lines before parsing them.
    if line.len() > MAX_REQUEST {
        return;
    }
    match parse_request(line) {
        Ok(request) => {
            let encoded = serde_json::to_vec(&request).expect("a request encodes");
            let again = parse_request(&encoded).expect("an encoded request decodes");
            assert_eq!(again, request);
        }
        Err(reply) => {
            // The error goes back to the client as one JSON line.
            let text = serde_json::to_string(&reply).expect("a reply encodes");
            assert!(!text.contains('\n'), "{text}");
        }
    }
});
