//! The store server's decoder (bootstrap/wire.rs `read_msg` of a store.rs `Request`): one
//! frame, then a whole connection's worth of frames served against an empty store.
//!
//! Checks: a decoded request frames again to bytes that decode to the same frame; a length
//! over the cap is refused without allocating it, and no allocation exceeds what the header
//! claimed (up to the cap) or the input, plus serde's 1 MiB preallocation; every answer the
//! store writes decodes as a `Response` (the client's decoder); the store's byte count matches
//! what it holds (asserted inside `store_session`).
#![no_main]

use ferrovod::fuzzing::{MAX_MESSAGE, store_request, store_response, store_session};
use ferrovod_fuzz::{frames, largest_allocation};
use libfuzzer_sys::fuzz_target;

const SERDE_PREALLOC: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let (decoded, largest) = largest_allocation(|| store_request(data));
    let claimed = data.get(..4).map_or(0, |l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize);
    if claimed > MAX_MESSAGE {
        let err = decoded.as_ref().expect_err("a frame over the cap is refused");
        assert!(err.to_string().contains("cap"), "{err}");
        assert!(largest < 4096, "{largest} bytes allocated for a refused frame of {claimed}");
    } else {
        let bound = claimed.max(data.len()) + SERDE_PREALLOC;
        assert!(largest <= bound, "{largest} bytes allocated for a frame of {claimed} ({} given)", data.len());
    }
    match decoded {
        Ok(again) => assert_eq!(store_request(&again).expect("a re-encoded request decodes"), again),
        Err(e) => assert!(!e.to_string().is_empty()),
    }

    let answers = store_session(data);
    for frame in frames(&answers) {
        let resp = store_response(frame).unwrap_or_else(|e| panic!("the client cannot read the store's answer: {e}"));
        assert_eq!(resp, frame, "an answer frames again to the same bytes");
    }
});
