//! Every collective over shared memory with the ranks as threads of one process (each rank's
//! segment mapped by every rank, all in this address space), checked element by element against
//! the serial reference: N = 1, 2, 3, 4, 5, 8; every dtype and op; small counts, and 1 MiB,
//! which takes the stage's split in region-sized pieces. The same collectives run as real
//! processes in `collectives_processes.rs`.

use std::collections::HashMap;

use ferrovod::config::Config;
use ferrovod::{Communicator, DType, ReduceOp};
use ferrovod_tests::{Plan, check_collectives, check_small_counts};

const SIZES: [usize; 6] = [1, 2, 3, 4, 5, 8];

/// Runs `body` on `n` ranks, threads joining one job over shared memory (rank 0 serves the
/// store); panics naming every rank that failed, or did not join over shared memory.
fn shm_threads(n: usize, body: impl Fn(&mut Communicator) -> Result<(), String> + Sync) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let secret = format!("{:032x}", u128::from(std::process::id()) * 7919 + n as u128);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|rank| {
                let (secret, body) = (secret.clone(), &body);
                s.spawn(move || {
                    let env: HashMap<&str, String> = HashMap::from([
                        ("FERROVOD_RANK", rank.to_string()),
                        ("FERROVOD_SIZE", n.to_string()),
                        ("FERROVOD_RENDEZVOUS", format!("127.0.0.1:{port}")),
                        ("FERROVOD_SECRET", secret),
                        ("FERROVOD_TRANSPORT", (if n == 1 { "auto" } else { "shm" }).to_string()),
                        ("FERROVOD_TIMEOUT", "60".to_string()),
                        ("FERROVOD_CONNECT_TIMEOUT", "60".to_string()),
                        // Rank 0 serves the store.
                        ("FERROVOD_HOST_STORE", (if rank == 0 { "1" } else { "" }).to_string()),
                    ]);
                    let config = Config::from_lookup(|k| env.get(k).cloned()).map_err(|e| e.to_string())?;
                    let mut comm = Communicator::from_config(config).map_err(|e| format!("joining: {e}"))?;
                    if n > 1 && !comm.staged() {
                        return Err("the ranks did not join over shared memory".to_string());
                    }
                    body(&mut comm)
                })
            })
            .collect();
        let failed: Vec<String> = handles
            .into_iter()
            .enumerate()
            .filter_map(|(rank, h)| match h.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("rank {rank} of {n}: {e}")),
                Err(_) => Some(format!("rank {rank} of {n} panicked")),
            })
            .collect();
        assert!(failed.is_empty(), "{failed:#?}");
    });
}

#[test]
fn small_counts_every_dtype_and_op() {
    for n in SIZES {
        shm_threads(n, check_small_counts);
    }
}

#[test]
fn one_mib_every_dtype_and_op() {
    for n in [2, 3, 5] {
        shm_threads(n, |c| {
            for dtype in DType::ALL {
                let count = [(1 << 20) / dtype.size()];
                check_collectives(
                    c,
                    Plan { dtypes: &[dtype], ops: &ReduceOp::ALL, allreduce_counts: &count, other_counts: &count },
                )?;
            }
            Ok(())
        });
    }
}
