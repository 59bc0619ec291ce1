//! The launcher's event lines (runner/src/events.rs `Event::decode`).
//!
//! Checks: a line that decodes encodes (when it fits a line) to one line, under the limit,
//! that decodes to an equal event; errors are messages, never panics.
#![no_main]

use ferrovod_runner::events::{Event, MAX_EVENT_LINE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Event::decode(data) {
        Ok(event) => {
            if let Some(line) = event.encode() {
                assert!(line.len() <= MAX_EVENT_LINE);
                assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
                assert_eq!(Event::decode(&line).expect("an encoded event decodes"), event);
            }
        }
        Err(e) => assert!(!e.is_empty()),
    }
});
