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

/// A piece whose bytes lie in several runs (the engine's fused tensors), reduced on the stage
/// with its region as the fusion buffer (`Communicator::allreduce_on_stage`: the slots for short
/// pieces, the split for long ones), gives the same bits as the allreduce of the same bytes laid
/// end to end: random floats (whose sums depend on the order), runs of random lengths, empty
/// ones included, N = 2 to 5.
#[test]
fn packed_pieces_give_the_bits_of_the_contiguous_allreduce() {
    use ferrovod::algorithms::Runs;
    use ferrovod_tests::Rng;
    for n in [2, 3, 4, 5] {
        shm_threads(n, |c| {
            let rank = c.rank();
            for (k, (dtype, op)) in [
                (DType::F32, ReduceOp::Sum),
                (DType::BF16, ReduceOp::Sum),
                (DType::F64, ReduceOp::Product),
                (DType::F32, ReduceOp::Min),
            ]
            .into_iter()
            .enumerate()
            {
                // Short pieces (the slots) and 64 KiB to 1 MiB ones (the split at N >= 3).
                for elems in [1, 7, 1000, (64 << 10) / dtype.size(), (1 << 20) / dtype.size() - 3] {
                    let mut rng = Rng::new((rank * 1000 + k * 10) as u64 + elems as u64);
                    let mut whole = vec![0u8; elems * dtype.size()];
                    for e in whole.chunks_exact_mut(dtype.size()) {
                        let v = (rng.below(2001) as f64 - 1000.0) / 7.0;
                        let v = if op == ReduceOp::Product { 1.0 + v / 1e4 } else { v };
                        match dtype {
                            DType::F32 => e.copy_from_slice(&(v as f32).to_le_bytes()),
                            DType::F64 => e.copy_from_slice(&v.to_le_bytes()),
                            _ => e.copy_from_slice(&ferrovod::bf16::from_f64(v).to_le_bytes()),
                        }
                    }
                    // The same bytes in runs of random whole-element lengths (every rank cuts its own).
                    let mut runs: Vec<Vec<u8>> = Vec::new();
                    let mut at = 0;
                    while at < elems {
                        let take = (rng.below(3000) as usize).min(elems - at);
                        runs.push(whole[at * dtype.size()..(at + take) * dtype.size()].to_vec());
                        at += take;
                    }
                    let what = format!("{dtype} {op:?} {elems} elements in {} runs", runs.len());
                    let mut packed = Runs(runs.iter_mut().map(Vec::as_mut_slice).collect());
                    match c.allreduce_on_stage(whole.len(), dtype, op, &mut packed) {
                        Some(Ok(())) => {}
                        Some(Err(e)) => return Err(format!("{what}: {e}")),
                        None => return Err(format!("{what}: not reduced on the stage")),
                    }
                    c.allreduce_bytes(whole.as_mut_slice(), dtype, op).map_err(|e| format!("{what}: {e}"))?;
                    if runs.concat() != whole {
                        return Err(format!("{what}: the packed result differs from the contiguous one"));
                    }
                }
            }
            Ok(())
        });
    }
}
