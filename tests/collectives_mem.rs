//! Every collective over the in-process transport, ranks as threads, checked element by element
//! against the serial reference: N = 1, 2, 3, 4, 5, 8; every dtype and op; 0, 1, 7, 4093
//! elements and 1 MiB of data; 64 MiB for every dtype and op at N = 8 and a spread at the others.

use std::time::Duration;

use ferrovod::config::{AllreduceAlgorithm, Tuning};
use ferrovod::transport::Transport;
use ferrovod::transport::mem::MemTransport;
use ferrovod::{Communicator, DType, ReduceOp};
use ferrovod_tests::{Plan, check_collectives, check_small_counts, counts, in_threads};

const SIZES: [usize; 6] = [1, 2, 3, 4, 5, 8];

/// Small thresholds so that the large-message algorithms run on small inputs too, with many
/// segments and chunks; `allreduce` forces one algorithm at every world size.
fn tuning(allreduce: AllreduceAlgorithm) -> Tuning {
    Tuning {
        allreduce,
        small_allreduce: 4096,
        small_broadcast: 4096,
        segment: 4096,
        broadcast_segment: 4096,
        ring_chunk: 4096 * 3,
        timeout: Duration::from_secs(60),
        ..Tuning::default()
    }
}

const ALGORITHMS: [AllreduceAlgorithm; 4] = [
    AllreduceAlgorithm::Auto,
    AllreduceAlgorithm::Ring,
    AllreduceAlgorithm::HalvingDoubling,
    AllreduceAlgorithm::RecursiveDoubling,
];

fn world(n: usize, tuning: Tuning, body: impl Fn(&mut Communicator) -> Result<(), String> + Sync) {
    in_threads(n, tuning, |_| {}, body);
}

#[test]
fn small_counts_every_dtype_and_op() {
    for n in SIZES {
        for tuning in ALGORITHMS.map(tuning).into_iter().chain([Tuning::default()]) {
            world(n, tuning, check_small_counts);
        }
    }
}

#[test]
fn one_mib_every_dtype_and_op() {
    for n in SIZES {
        world(n, Tuning::default(), |c| {
            for dtype in DType::ALL {
                let mib = [counts(dtype, false)[4]];
                check_collectives(
                    c,
                    Plan { dtypes: &[dtype], ops: &ReduceOp::ALL, allreduce_counts: &mib, other_counts: &mib },
                )?;
            }
            Ok(())
        });
    }
}

#[test]
fn one_mib_allreduce_every_algorithm() {
    for n in SIZES {
        for algorithm in ALGORITHMS {
            let tuning = Tuning { allreduce: algorithm, ..Tuning::default() };
            world(n, tuning, |c| {
                for dtype in [DType::F32, DType::BF16, DType::I64] {
                    let mib = [counts(dtype, false)[4] + 3];
                    check_collectives(
                        c,
                        Plan { dtypes: &[dtype], ops: &ReduceOp::ALL, allreduce_counts: &mib, other_counts: &[] },
                    )?;
                }
                Ok(())
            });
        }
    }
}

#[test]
fn sixty_four_mib_allreduce() {
    // Every dtype and op at N = 8 (the most segments in flight); at the other sizes a spread
    // of dtypes and ops. Smaller counts above cover the full matrix at every N.
    let spread = [
        (DType::F32, ReduceOp::Sum),
        (DType::BF16, ReduceOp::Average),
        (DType::I8, ReduceOp::Product),
        (DType::F64, ReduceOp::Max),
        (DType::U8, ReduceOp::Min),
    ];
    for n in SIZES {
        world(n, Tuning::default(), |c| {
            let cases: Vec<(DType, ReduceOp)> = if n == 8 {
                DType::ALL.iter().flat_map(|&d| ReduceOp::ALL.map(|o| (d, o))).collect()
            } else {
                spread.to_vec()
            };
            for (dtype, op) in cases {
                let big = [counts(dtype, true)[5]];
                check_collectives(c, Plan { dtypes: &[dtype], ops: &[op], allreduce_counts: &big, other_counts: &[] })?;
            }
            Ok(())
        });
    }
}

#[test]
fn uneven_blocks_that_are_whole_segments() {
    // Blocks of one segment plus one element next to blocks of exactly one segment: every
    // rank must cut every step into the same number of messages.
    let elems = Tuning::default().segment / 4;
    for n in [3, 4, 5] {
        for algorithm in [AllreduceAlgorithm::Ring, AllreduceAlgorithm::HalvingDoubling] {
            let tuning = Tuning { allreduce: algorithm, ring_chunk: 64 << 20, ..Tuning::default() };
            world(n, tuning, |c| {
                let count = [n * elems + 1];
                check_collectives(
                    c,
                    Plan {
                        dtypes: &[DType::F32],
                        ops: &[ReduceOp::Sum],
                        allreduce_counts: &count,
                        other_counts: &count,
                    },
                )
            });
        }
    }
}

#[test]
fn mismatched_counts_name_both_sides() {
    let transports = MemTransport::world(2, Duration::from_secs(5));
    let errors: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = transports
            .into_iter()
            .map(|t| {
                s.spawn(move || {
                    let r = t.rank();
                    let mut c = Communicator::from_transport(Box::new(t), Tuning::default());
                    let mut buf = vec![0f32; 10 + r];
                    c.allreduce(&mut buf, ReduceOp::Sum).err().map(|e| e.to_string()).unwrap_or_default()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    assert!(
        errors[0].contains("rank 0: allreduce #0 (f32, sum, 10 elements) does not match rank 1, which called allreduce #0 (f32, sum, 11 elements)"),
        "{errors:?}"
    );
    assert!(errors[1].contains("does not match rank 0"), "{errors:?}");
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    world(2, Tuning::default(), |c| {
        let e = c.broadcast(&mut [0f32; 4], 2).expect_err("root 2 of 2").to_string();
        assert!(e.contains("root 2 is not a rank"), "{e}");
        let e = c.allgather(&[0f32; 4], &mut [0f32; 7]).expect_err("wrong output").to_string();
        assert!(e.contains("output has 7 elements, expected 2 ranks × 4"), "{e}");
        let e = c.alltoall(&[0f32; 4], &[1, 1]).expect_err("splits do not sum").to_string();
        assert!(e.contains("splits [1, 1]"), "{e}");
        let e = c.allreduce_bytes(&mut [0u8; 7], DType::F32, ReduceOp::Sum).expect_err("partial element").to_string();
        assert!(e.contains("7 bytes is not a whole number of f32"), "{e}");
        let e = c
            .alltoall_into(&[0u8; 8], &[1, 1], &mut [0u8; 8], &[2, 0], DType::F32)
            .expect_err("self counts")
            .to_string();
        assert!(e.contains("sends itself"), "{e}");
        let e = c.allreduce_bytes(&mut [1u8; 4], DType::Bool, ReduceOp::Average).expect_err("bool average").to_string();
        assert!(e.contains("allreduce: invalid argument: bool tensors have no average"), "{e}");
        let e = c.reducescatter_bytes(&mut [1u8; 4], &[0..2, 2..4], DType::Bool, ReduceOp::Average);
        assert!(e.expect_err("bool average").to_string().contains("no average"));
        // Nothing was sent: the communicator still works.
        let mut v = [c.rank() as f32; 3];
        c.allreduce(&mut v, ReduceOp::Max).map_err(|e| e.to_string())?;
        assert_eq!(v, [1.0; 3]);
        Ok(())
    });
}

#[test]
fn builder_rejects_impossible_worlds() {
    let e = Communicator::builder().size(0).build().expect_err("size 0").to_string();
    assert!(e.contains("FERROVOD_SIZE") && e.contains("at least 1"), "{e}");
    let e = Communicator::builder().rank(3).size(2).build().expect_err("rank 3 of 2").to_string();
    assert!(e.contains("rank 3 is not below FERROVOD_SIZE=2"), "{e}");
    let e = Communicator::builder()
        .size(2)
        .rendezvous("127.0.0.1:1")
        .secret(ferrovod::bootstrap::Secret::new(Vec::new()))
        .build();
    assert!(e.expect_err("empty secret").to_string().contains("FERROVOD_SECRET"));
}
