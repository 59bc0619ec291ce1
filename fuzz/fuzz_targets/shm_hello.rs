//! The shared-memory link's decoders (transport/shm/connect.rs and shm/mod.rs): a peer's
//! published address (cookie + abstract socket name), whether that name fits a socket address,
//! the 16-byte hello a peer sends with its descriptors, and which rank that hello is taken for.
//!
//! Input: rank, size, pid selector, then the hello, then the published address. Checks: an
//! address parses exactly when it has a cookie and encodes back to itself; a name fits exactly
//! when it leaves room for the leading NUL in `sun_path`; a hello is taken only for a rank of
//! the world other than this one, whose published pid matches and that has not arrived yet.
#![no_main]

use ferrovod::fuzzing::{shm_address, shm_awaited, shm_encode_address, shm_read_hello, shm_socket_name_fits};
use ferrovod_fuzz::take;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let [size, rank, pid_sel, arrived_mask] = take::<4>(&mut data);
    let hello = take::<16>(&mut data);
    let address = data;

    match shm_address(address) {
        Some((cookie, name)) => {
            assert!(address.len() >= 8);
            assert_eq!(shm_encode_address(cookie, &name), address);
            let fits = shm_socket_name_fits(&name);
            assert_eq!(fits, name.len() < 108, "a name of {} bytes", name.len());
        }
        None => assert!(address.len() < 8),
    }

    let (from, cookie) = shm_read_hello(&hello).expect("16 bytes");
    assert_eq!(hello[..8], from.to_le_bytes());
    assert_eq!(hello[8..], cookie.to_le_bytes());
    let size = usize::from(size % 17);
    let rank = usize::from(rank) % size.max(1);
    let pids: Vec<u32> = (0..size as u32).map(|r| 100 + r).collect();
    let arrived: Vec<bool> = (0..size).map(|r| arrived_mask & (1 << (r % 8)) != 0).collect();
    let pid = 100 + u32::from(pid_sel % 20);
    if let Some(r) = shm_awaited(from, pid, rank, size, &pids, &arrived) {
        assert_eq!(r as u64, from);
        assert!(r < size && r != rank && pids[r] == pid && !arrived[r]);
    } else if (from as usize) < size && from as usize != rank {
        let r = from as usize;
        assert!(pids[r] != pid || arrived[r]);
    }
    // A shorter pid list than the world never panics.
    let _ = shm_awaited(from, pid, rank, size, &pids[..size / 2], &arrived);
});
