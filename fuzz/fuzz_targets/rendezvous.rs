//! Rendezvous records (bootstrap/rendezvous.rs): every rank's published `PeerInfo`, the
//! placement computed from them (bootstrap/topology.rs), and the transport addresses they carry
//! (transport/tcp/mod.rs, transport/shm/mod.rs).
//!
//! Input: a rank count, then the records, each behind a one-byte length. Checks: a decoded
//! record encodes to bytes that decode to an equal record; every rank's placement is
//! consistent (its local rank within its local size, itself among its local ranks, local and
//! cross sizes that multiply out for a homogeneous world); a TCP address reads back from its
//! text, a shared-memory address encodes back to its bytes.
#![no_main]

use ferrovod::fuzzing::{rendezvous, shm_address, shm_encode_address, tcp_address};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, mut data)) = data.split_first() else { return };
    let n = usize::from(n % 8) + 1;
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        let Some((&len, rest)) = data.split_first() else { break };
        let len = usize::from(len).min(rest.len());
        values.push(rest[..len].to_vec());
        data = &rest[len..];
    }
    if values.is_empty() {
        return;
    }
    let (peers, topology) = match rendezvous(&values) {
        Ok(v) => v,
        Err(e) => {
            assert!(e.to_string().contains("malformed record"), "{e}");
            return;
        }
    };
    let encoded: Vec<Vec<u8>> = peers.iter().map(|p| postcard::to_stdvec(p).unwrap()).collect();
    let (again, _) = rendezvous(&encoded).expect("re-encoded records decode");
    assert_eq!(again, peers);
    for (rank, t) in topology.iter().enumerate() {
        assert!(t.local_rank < t.local_size && t.cross_rank < t.cross_size, "{t:?}");
        assert_eq!(t.local_ranks.get(t.local_rank), Some(&rank), "{t:?}");
        assert_eq!(t.local_ranks.len(), t.local_size);
        if t.homogeneous {
            assert_eq!(t.local_size * t.cross_size, peers.len(), "{t:?}");
        }
    }
    for p in &peers {
        for (transport, a) in &p.addresses {
            match transport.as_str() {
                "tcp" => {
                    if let Some(sa) = tcp_address(a) {
                        assert_eq!(tcp_address(sa.to_string().as_bytes()), Some(sa));
                    }
                }
                _ => {
                    if let Some((cookie, name)) = shm_address(a) {
                        assert_eq!(&shm_encode_address(cookie, &name), a);
                    }
                }
            }
        }
    }
});
