//! The header in front of every TCP message and stripe (transport/tcp/pair.rs `check_header`,
//! used by the exchange in tcp/mod.rs and by the streams in tcp/stream.rs).
//!
//! Input: the expected tag, length, stripe and stripe count, then the 32 bytes received.
//! Checks: a header passes exactly when it equals the expected one byte for byte, and a
//! failure is the error for the first field that differs (marker, tag, length, stripes, stripe).
#![no_main]

use ferrovod::fuzzing::{tcp_check_header, tcp_header};
use ferrovod::transport::Error;
use ferrovod_fuzz::take;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let tag = u128::from_le_bytes(take::<16>(&mut data));
    let total = u64::from_le_bytes(take::<8>(&mut data));
    let stripe = u16::from_le_bytes(take::<2>(&mut data));
    let stripes = u16::from_le_bytes(take::<2>(&mut data));
    let [mode] = take::<1>(&mut data);
    let expected = tcp_header(tag, total, stripe, stripes);
    // Half the time, the received header is the expected one with the fuzzer's bytes over part
    // of it, so that every field's check is reached.
    let mut got = if mode & 1 == 0 { [0u8; 32] } else { expected };
    let at = usize::from(mode >> 1) % 32;
    for (g, d) in got[at..].iter_mut().zip(data) {
        *g = *d;
    }
    let result = tcp_check_header(&got, &expected);
    assert_eq!(result.is_ok(), got == expected, "{result:?}");
    let Err(e) = result else { return };
    assert!(!e.to_string().is_empty());
    let differs = |r: std::ops::Range<usize>| got[r.clone()] != expected[r];
    match e {
        Error::Protocol { .. } => assert!(differs(28..32) || differs(24..28)),
        Error::TagMismatch { expected: t, got: g, .. } => {
            assert!(!differs(28..32) && differs(0..16));
            assert_eq!((t, g), (tag, u128::from_le_bytes(got[..16].try_into().unwrap())));
        }
        Error::LengthMismatch { expected: t, got: g, .. } => {
            assert!(!differs(28..32) && !differs(0..16) && differs(16..24));
            assert_eq!((t, g), (total, u64::from_le_bytes(got[16..24].try_into().unwrap())));
        }
        other => panic!("unexpected error {other:?}"),
    }
});
