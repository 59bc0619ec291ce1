//! The store client's decoder (bootstrap/client.rs: `read_msg` of a store.rs `Response`).
//!
//! Checks: a decoded answer frames again to bytes that decode to the same frame; a length over
//! the cap is refused without allocating it; no allocation exceeds the claimed length (up to
//! the cap) or the input, plus serde's 1 MiB preallocation.
#![no_main]

use ferrovod::fuzzing::{MAX_MESSAGE, store_response};
use ferrovod_fuzz::largest_allocation;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (decoded, largest) = largest_allocation(|| store_response(data));
    let claimed = data.get(..4).map_or(0, |l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize);
    if claimed > MAX_MESSAGE {
        assert!(decoded.is_err(), "a frame over the cap is refused");
        assert!(largest < 4096, "{largest} bytes allocated for a refused frame of {claimed}");
    } else {
        assert!(largest <= claimed.max(data.len()) + (1 << 20), "{largest} bytes for a frame of {claimed}");
    }
    match decoded {
        Ok(again) => assert_eq!(store_response(&again).expect("a re-encoded answer decodes"), again),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
