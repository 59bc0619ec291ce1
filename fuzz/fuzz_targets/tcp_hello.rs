//! What a rank's TCP link says after the handshake (transport/tcp/connect.rs `read_hello`).
//!
//! Input: the accepting rank, world size and streams (a byte each), then the 16-byte hello.
//! Checks: a hello is accepted exactly when it names a higher rank of the same world, a stream
//! it has, and the same number of streams, and then it is the hello that rank would send.
#![no_main]

use ferrovod::fuzzing::{tcp_hello, tcp_read_hello};
use ferrovod_fuzz::take;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let [size, rank, streams] = take::<3>(&mut data);
    let size = usize::from(size).max(1);
    let rank = usize::from(rank) % size;
    let streams = usize::from(streams % 16).max(1);
    let Some(result) = tcp_read_hello(data, rank, size, streams) else {
        assert_ne!(data.len(), 16);
        return;
    };
    let word = |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]) as usize;
    let fits = word(8) == size && word(0) > rank && word(0) < size && word(4) < streams && word(12) == streams;
    match result {
        Ok((peer, stream)) => {
            assert!(fits);
            assert_eq!((peer, stream), (word(0), word(4)));
            assert_eq!(tcp_hello(peer, stream, size, streams), data);
        }
        Err(e) => assert!(!fits && !e.is_empty(), "{e}"),
    }
});
