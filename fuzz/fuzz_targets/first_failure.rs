//! First-failure records (bootstrap/first_failure.rs) of both writers: the communicator's
//! `FailureNote` (failure.rs) and the launcher's `Failure` (runner/src/failure.rs, published by
//! runner/src/coord.rs).
//!
//! Checks: a record that decodes encodes to bytes that decode to an equal record; one that does
//! not is an error that says so; the launcher's record describes itself without panicking.
#![no_main]

use ferrovod::fuzzing::first_failure;
use ferrovod::failure::FailureNote;
use ferrovod_runner::failure::Failure;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match first_failure::<FailureNote>(data) {
        Ok(note) => {
            let again = postcard::to_stdvec(&note).unwrap();
            assert_eq!(first_failure::<FailureNote>(&again).unwrap(), note);
        }
        Err(e) => assert!(e.to_string().contains("does not decode"), "{e}"),
    }
    match first_failure::<Failure>(data) {
        Ok(failure) => {
            let again = postcard::to_stdvec(&failure).unwrap();
            assert_eq!(first_failure::<Failure>(&again).unwrap(), failure);
            assert!(!failure.describe().is_empty());
            let _ = failure.exit_code();
        }
        Err(e) => assert!(e.to_string().contains("does not decode"), "{e}"),
    }
});
