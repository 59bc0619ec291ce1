//! The engine with ranks as threads over the in-process transport: out-of-order submission,
//! mismatches, join, groups, fusion on and off, the stall timeout, the timeline, and many
//! submitting threads. (The stall warning's log line and real processes: `engine_processes`.)

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ferrovod::config::{EngineSettings, Tuning};
use ferrovod::engine::{Collective, Engine, Output, Submission};
use ferrovod::memory::{DeviceAllocation, DevicePtr, HostOps, Memory, MemoryRef, Ops, OpsError, Owned, Place};
use ferrovod::transport::mem::MemTransport;
use ferrovod::{Communicator, DType, Error, ReduceOp};

fn tuning(fusion_threshold: usize) -> Tuning {
    Tuning { fusion_threshold, ring_chunk: 4096, segment: 4096, timeout: Duration::from_secs(30), ..Tuning::default() }
}

/// The host memory operations, counted: every engine test runs its allocations, copies, fills
/// and divisions through this, so the engine is seen to use its `Ops` and nothing else.
struct Counted {
    host: HostOps,
    counts: Arc<[AtomicUsize; 4]>,
}

const COPY: usize = 0;
const FILL: usize = 1;
const DIVIDE: usize = 2;
const ALLOC: usize = 3;

impl Ops for Counted {
    fn alloc(&mut self, place: Place, len: usize) -> Result<Owned, OpsError> {
        self.counts[ALLOC].fetch_add(1, Ordering::Relaxed);
        self.host.alloc(place, len)
    }
    fn copy(&mut self, dst: Memory<'_>, src: MemoryRef<'_>) -> Result<(), OpsError> {
        self.counts[COPY].fetch_add(1, Ordering::Relaxed);
        self.host.copy(dst, src)
    }
    fn fill_identity(&mut self, dst: Memory<'_>, dtype: DType, op: ReduceOp) -> Result<(), OpsError> {
        self.counts[FILL].fetch_add(1, Ordering::Relaxed);
        self.host.fill_identity(dst, dtype, op)
    }
    fn divide(&mut self, buf: Memory<'_>, dtype: DType, n: usize) -> Result<(), OpsError> {
        self.counts[DIVIDE].fetch_add(1, Ordering::Relaxed);
        self.host.divide(buf, dtype, n)
    }
}

/// Runs `body(rank, engine)` on `n` ranks (threads), each with its own engine.
fn world<R: Send>(
    n: usize,
    tuning: Tuning,
    settings: EngineSettings,
    body: impl Fn(usize, &Engine) -> R + Sync,
) -> Vec<R> {
    world_counted(n, tuning, settings, body).into_iter().map(|(r, _)| r).collect()
}

/// [`world`], also returning how many copies, fills and divisions each rank's engine did.
fn world_counted<R: Send>(
    n: usize,
    tuning: Tuning,
    settings: EngineSettings,
    body: impl Fn(usize, &Engine) -> R + Sync,
) -> Vec<(R, [usize; 4])> {
    let transports = MemTransport::world(n, tuning.timeout);
    std::thread::scope(|s| {
        let handles: Vec<_> = transports
            .into_iter()
            .enumerate()
            .map(|(rank, t)| {
                let (tuning, settings, body) = (tuning.clone(), settings.clone(), &body);
                s.spawn(move || {
                    let counts: Arc<[AtomicUsize; 4]> = Arc::default();
                    let ops = Box::new(Counted { host: HostOps, counts: counts.clone() });
                    let comm = Communicator::from_transport(Box::new(t), tuning);
                    let engine = Engine::start_with(comm, &settings, ops)
                        .unwrap_or_else(|e| panic!("rank {rank}: engine did not start: {e}"));
                    let r = body(rank, &engine);
                    engine.shutdown().unwrap_or_else(|e| panic!("rank {rank}: shutdown: {e}"));
                    (r, counts.each_ref().map(|c| c.load(Ordering::Relaxed)))
                })
            })
            .collect();
        handles.into_iter().enumerate().map(|(r, h)| h.join().unwrap_or_else(|_| panic!("rank {r} panicked"))).collect()
    })
}

/// Rank r's value for element i of tensor t: small integers, so that every sum is exact in f32
/// whatever the order of reduction.
fn value(rank: usize, t: usize, i: usize) -> f32 {
    ((rank * 7 + t * 3 + i) % 11) as f32
}

fn tensor(rank: usize, t: usize, len: usize) -> Vec<f32> {
    (0..len).map(|i| value(rank, t, i)).collect()
}

fn summed(n: usize, t: usize, len: usize) -> Vec<f32> {
    (0..len).map(|i| (0..n).map(|r| value(r, t, i)).sum()).collect()
}

/// Tensor lengths: a mix of tiny, odd and larger than the ring chunk.
fn lengths() -> Vec<usize> {
    (0..24).map(|t| [1, 3, 100, 1025, 3000, 9001][t % 6] + t).collect()
}

fn submit_all(engine: &Engine, rank: usize, order: &[usize], step: usize) -> Vec<(usize, ferrovod::Handle)> {
    let lens = lengths();
    order
        .iter()
        .map(|&t| {
            let data = tensor(rank, t + step, lens[t]);
            let sub =
                Submission::from_slice(format!("grad.{t}"), Collective::Allreduce(ReduceOp::Sum), &[lens[t]], &data);
            (t, engine.submit(sub).unwrap_or_else(|e| panic!("rank {rank}: submit: {e}")))
        })
        .collect()
}

/// Each rank submits the same tensors in its own order, for several steps (the first
/// negotiates by name, the rest by cache bit); every result is checked element by element.
fn out_of_order(n: usize, threshold: usize) -> Vec<Vec<Vec<u8>>> {
    out_of_order_with(n, tuning(threshold))
}

fn out_of_order_with(n: usize, tuning: Tuning) -> Vec<Vec<Vec<u8>>> {
    world(n, tuning, EngineSettings::default(), |rank, engine| {
        let lens = lengths();
        let mut results = Vec::new();
        for step in 0..4 {
            let mut order: Vec<usize> = (0..lens.len()).collect();
            // A different permutation per rank and step.
            order.sort_by_key(|&t| (t * (rank + 3) * (step + 1) * 7919) % 101);
            let mut got: Vec<(usize, Output)> =
                submit_all(engine, rank, &order, step).into_iter().map(|(t, h)| (t, h.wait().unwrap())).collect();
            got.sort_by_key(|(t, _)| *t);
            for (t, out) in &got {
                assert_eq!(out.to_vec::<f32>().unwrap(), summed(n, t + step, lens[*t]), "rank {rank} tensor {t}");
                assert_eq!(out.shape, [lens[*t]]);
            }
            results.extend(got.into_iter().map(|(_, o)| o.data.into_host().expect("host memory in, host memory out")));
        }
        results
    })
    .into_iter()
    .collect()
}

#[test]
fn out_of_order_submission_gives_correct_results() {
    for n in [1, 2, 3, 4] {
        out_of_order(n, 64 << 20);
    }
}

#[test]
fn fusion_off_and_on_give_identical_results() {
    for n in [2, 3] {
        let off = out_of_order(n, 0);
        let small = out_of_order(n, 10_000);
        let on = out_of_order(n, 64 << 20);
        assert_eq!(off, on, "N={n}");
        assert_eq!(small, on, "N={n}");
    }
}

#[test]
fn eager_data_in_the_round_gives_the_same_results() {
    // Off; the default (the small tensors only); every tensor of the test (up to 36 kB).
    for n in [2, 3] {
        let run = |eager_bytes| out_of_order_with(n, Tuning { eager_bytes, ..tuning(64 << 20) });
        let off = run(0);
        assert_eq!(run(8192), off, "N={n}");
        assert_eq!(run(1 << 20), off, "N={n}");
    }
}

/// Runs `sub(rank)` on two ranks and returns each rank's error text, checking it came fast.
fn mismatch(sub: impl Fn(usize) -> Submission + Sync) -> Vec<String> {
    world(2, tuning(64 << 20), EngineSettings::default(), |rank, engine| {
        let t = Instant::now();
        let e = engine.submit(sub(rank)).unwrap().wait().expect_err("a mismatch must fail");
        assert!(t.elapsed() < Duration::from_secs(1), "rank {rank}: the error took {:?}", t.elapsed());
        assert!(matches!(e, Error::TensorMismatch { .. }), "rank {rank}: {e}");
        // The engine goes on: a matching tensor still works.
        let ok = engine.allreduce("after", &[1.0f32, 2.0], ReduceOp::Sum).unwrap();
        assert_eq!(ok, [2.0, 4.0]);
        e.to_string()
    })
}

#[test]
fn mismatches_fail_on_every_rank_naming_what_differs() {
    let allreduce = Collective::Allreduce(ReduceOp::Sum);
    let dtype = mismatch(|rank| match rank {
        0 => Submission::from_slice("w", allreduce, &[2], &[1.0f32, 2.0]),
        _ => Submission::from_slice("w", allreduce, &[2], &[1.0f64, 2.0]),
    });
    for (rank, e) in dtype.iter().enumerate() {
        assert!(e.contains(&format!("rank {rank}")) && e.contains("\"w\""), "{e}");
        assert!(e.contains("dtype") && e.contains("rank 0: f32") && e.contains("rank 1: f64"), "{e}");
    }
    let shape = mismatch(|rank| Submission::from_slice("w", allreduce, &[1 + rank], &vec![0i32; 1 + rank]));
    assert!(shape.iter().all(|e| e.contains("shape") && e.contains("rank 0: [1]") && e.contains("rank 1: [2]")));
    let op = mismatch(|rank| {
        let op = if rank == 0 { ReduceOp::Sum } else { ReduceOp::Max };
        Submission::from_slice("w", Collective::Allreduce(op), &[1], &[1i32])
    });
    assert!(
        op.iter().all(|e| e.contains("op") && e.contains("allreduce sum") && e.contains("allreduce max")),
        "{op:?}"
    );
    let root = mismatch(|rank| Submission::from_slice("w", Collective::Broadcast(rank as u32), &[1], &[1i32]));
    assert!(root.iter().all(|e| e.contains("root") && e.contains("rank 0: 0") && e.contains("rank 1: 1")), "{root:?}");
    let kind = mismatch(|rank| {
        let c = if rank == 0 { Collective::Allgather } else { Collective::Broadcast(0) };
        Submission::from_slice("w", c, &[1], &[1i32])
    });
    assert!(kind.iter().all(|e| e.contains("op") && e.contains("allgather") && e.contains("broadcast")), "{kind:?}");
}

#[test]
fn a_changed_shape_after_caching_is_still_caught() {
    world(2, tuning(64 << 20), EngineSettings::default(), |rank, engine| {
        for _ in 0..3 {
            assert_eq!(engine.allreduce("w", &[1i64, 2], ReduceOp::Sum).unwrap(), [2, 4]);
        }
        let len = if rank == 0 { 2 } else { 3 };
        let sub = Submission::from_slice("w", Collective::Allreduce(ReduceOp::Sum), &[len], &vec![1i64; len]);
        let e = engine.submit(sub).unwrap().wait().expect_err("shape changed on rank 1 only").to_string();
        assert!(e.contains("shape") && e.contains("rank 0: [2]") && e.contains("rank 1: [3]"), "{e}");
        assert_eq!(engine.allreduce("w", &[1i64, 2], ReduceOp::Sum).unwrap(), [2, 4]);
    });
}

#[test]
fn join_with_uneven_steps() {
    let n = 3;
    let results = world_counted(n, tuning(64 << 20), EngineSettings::default(), |rank, engine| {
        let steps = [2, 5, 3][rank];
        let mut outs = Vec::new();
        for step in 0..steps {
            let data = vec![(rank + 1) as f32; 5];
            let sum = engine.allreduce("g", &data, ReduceOp::Sum).unwrap();
            let avg = engine.allreduce("a", &data, ReduceOp::Average).unwrap();
            let max = engine.allreduce("m", &data, ReduceOp::Max).unwrap();
            let rows = engine
                .submit(Submission::from_slice(
                    "rows",
                    Collective::Allgather,
                    &[rank + 1],
                    &vec![rank as i32; rank + 1],
                ))
                .unwrap()
                .wait()
                .map(|r| r.to_vec::<i32>().unwrap())
                .map_err(|e| e.to_string());
            outs.push((step, sum[0], avg[0], max[0], rows));
        }
        (engine.join().unwrap(), outs)
    });
    for (rank, ((last, outs), counts)) in results.iter().enumerate() {
        // Fused small tensors are staged (copies) in an allocated fusion buffer, allgather
        // results allocated, averages divided, and a joined rank's stand-ins filled with the
        // identity, all through the engine's memory operations.
        assert!(counts[COPY] > 0 && counts[DIVIDE] > 0, "rank {rank}: {counts:?}");
        // The 2 allgathers before rank 0 joined ran, each allocating its result; the fusion
        // buffer is allocated once and kept.
        assert_eq!(counts[ALLOC], 2 + 1, "rank {rank}: {counts:?}");
        if rank != 1 {
            assert!(counts[FILL] > 0, "rank {rank} joined before rank 1 and filled stand-ins: {counts:?}");
        } else {
            assert_eq!(counts[FILL], 0, "rank 1 never joined early: {counts:?}");
        }
        assert_eq!(*last, 1, "rank {rank}: rank 1 runs longest, so it joins last");
        for (step, sum, avg, max, rows) in outs {
            // Ranks still active at this step: those with more steps than `step`.
            let active: Vec<usize> = (0..n).filter(|&r| [2, 5, 3][r] > *step).collect();
            let want_sum: f32 = active.iter().map(|&r| (r + 1) as f32).sum();
            assert_eq!(*sum, want_sum, "rank {rank} step {step}");
            // A joined rank counts as zeros: the average divides by every rank, as Horovod's.
            assert_eq!(*avg, want_sum / n as f32, "rank {rank} step {step}: average over every rank");
            assert_eq!(*max, active.iter().map(|&r| (r + 1) as f32).fold(f32::MIN, f32::max));
            if active.len() == n {
                let want_rows: Vec<i32> = active.iter().flat_map(|&r| vec![r as i32; r + 1]).collect();
                assert_eq!(*rows, Ok(want_rows), "rank {rank} step {step}");
            } else {
                // As in Horovod, an allgather is an error while a rank has joined; the ranks
                // go on with the next collectives.
                let e = rows.as_ref().expect_err("an allgather while rank 0 has joined");
                let joined: Vec<usize> = (0..n).filter(|r| !active.contains(r)).collect();
                assert!(e.contains(&format!("allgather is not supported while rank(s) {joined:?} have joined")), "{e}");
            }
        }
    }
}

#[test]
fn a_group_completes_together() {
    world(2, tuning(1 << 20), EngineSettings::default(), |rank, engine| {
        for step in 0..5 {
            if rank == 1 {
                std::thread::sleep(Duration::from_millis(20));
            }
            let big = vec![1.0f32; 4 << 20];
            let subs = vec![
                Submission::from_slice("a.small", Collective::Allreduce(ReduceOp::Sum), &[1], &[1.0f32]),
                Submission::from_slice("b.big", Collective::Allreduce(ReduceOp::Sum), &[big.len()], &big),
                Submission::from_slice("c.bcast", Collective::Broadcast(0), &[2], &[rank as i32, 7]),
                // Python's grouped_allgather and grouped_reducescatter are groups like this one.
                Submission::from_slice("d.gather", Collective::Allgather, &[rank + 1], &vec![rank as i64; rank + 1]),
                Submission::from_slice("e.scatter", Collective::Reducescatter(ReduceOp::Sum), &[4], &[1i32, 2, 3, 4]),
            ];
            let mut handles = engine.submit_group(subs).unwrap();
            let small = handles.remove(0);
            let out = small.wait().unwrap();
            assert_eq!(out.to_vec::<f32>().unwrap(), [2.0]);
            assert!(handles.iter().all(|h| h.poll()), "rank {rank} step {step}: the group completed piecemeal");
            let big = handles.remove(0).wait().unwrap().to_vec::<f32>().unwrap();
            assert!(big.iter().all(|&x| x == 2.0));
            assert_eq!(handles.remove(0).wait().unwrap().to_vec::<i32>().unwrap(), [0, 7]);
            assert_eq!(handles.remove(0).wait().unwrap().to_vec::<i64>().unwrap(), [0, 1, 1]);
            let share = if rank == 0 { [2, 4] } else { [6, 8] };
            assert_eq!(handles.remove(0).wait().unwrap().to_vec::<i32>().unwrap(), share);
        }
    });
}

#[test]
fn the_stall_timeout_fails_every_rank() {
    let settings = EngineSettings {
        stall_warning: Some(Duration::from_millis(100)),
        stall_timeout: Some(Duration::from_millis(600)),
        timeline: None,
    };
    let errors = world(3, tuning(64 << 20), settings, |rank, engine| {
        let t = Instant::now();
        let e = if rank == 2 {
            // Rank 2 never submits "x"; it waits on something else that never comes either.
            std::thread::sleep(Duration::from_millis(1500));
            engine
                .submit(Submission::from_slice("y", Collective::Allreduce(ReduceOp::Sum), &[1], &[1u8]))
                .err()
                .unwrap_or_else(|| panic!("rank 2: the engine should have stopped"))
        } else {
            let sub = Submission::from_slice("x", Collective::Allreduce(ReduceOp::Sum), &[1], &[1u8]);
            engine.submit(sub).unwrap().wait().expect_err("x stalls")
        };
        assert!(t.elapsed() < Duration::from_secs(5), "rank {rank}: {:?}", t.elapsed());
        e.to_string()
    });
    for (rank, e) in errors.iter().enumerate() {
        assert!(e.contains(&format!("rank {rank}")) && e.contains("stall"), "{e}");
        assert!(e.contains("\"x\"") && e.contains("[2]"), "rank {rank}: should name x and the missing rank 2: {e}");
    }
}

#[test]
fn the_timeline_holds_every_phase() {
    let dir = std::env::temp_dir().join(format!("ferrovod-timeline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("trace.json");
    let settings = EngineSettings { timeline: Some(path.clone()), ..EngineSettings::default() };
    world(2, tuning(64 << 20), settings, |rank, engine| {
        for step in 0..3 {
            let order: Vec<usize> = (0..lengths().len()).collect();
            for (_, h) in submit_all(engine, rank, &order, step) {
                h.wait().unwrap();
            }
        }
    });
    for file in [path.clone(), PathBuf::from(format!("{}.1", path.display()))] {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let events: Vec<serde_json::Value> =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", file.display()));
        let phases: BTreeSet<&str> = events.iter().filter_map(|e| e["name"].as_str()).collect();
        for phase in ["QUEUED", "NEGOTIATED", "COPY_IN_FUSION_BUFFER", "COMMUNICATED", "COPY_OUT_FUSION_BUFFER", "DONE"]
        {
            assert!(phases.contains(phase), "{}: no {phase} event in {phases:?}", file.display());
        }
        let tracks = events.iter().filter(|e| e["name"] == "thread_name").count();
        assert_eq!(tracks, lengths().len(), "one track per tensor");
        for e in events.iter().filter(|e| e["ph"] == "X") {
            assert!(e["ts"].as_f64().is_some() && e["dur"].as_f64().is_some_and(|d| d >= 0.0), "{e}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn many_threads_submit_at_once() {
    let n = 3;
    let (threads, per) = (8, 40);
    world(n, tuning(64 << 20), EngineSettings::default(), |rank, engine| {
        std::thread::scope(|s| {
            for th in 0..threads {
                s.spawn(move || {
                    for i in 0..per {
                        // Threads race each other differently on every rank.
                        let t = th * per + i;
                        let data = tensor(rank, t, 1 + t % 37);
                        let name = format!("thread{th}.{i}");
                        let out = engine.allreduce(&name, &data, ReduceOp::Sum).unwrap();
                        assert_eq!(out, summed(n, t, 1 + t % 37), "rank {rank} {name}");
                    }
                });
            }
        });
    });
}

#[test]
fn every_collective_through_the_engine() {
    let n = 3;
    world(n, tuning(64 << 20), EngineSettings::default(), |rank, engine| {
        let rows = rank + 1;
        let mine: Vec<i32> = (0..rows * 2).map(|i| (rank * 100 + i) as i32).collect();
        let got = engine.submit(Submission::from_slice("ag", Collective::Allgather, &[rows, 2], &mine)).unwrap();
        let got = got.wait().unwrap();
        assert_eq!(got.shape, [6, 2]);
        assert_eq!(got.splits, Some(vec![1, 2, 3]));
        let want: Vec<i32> = (0..n).flat_map(|r| (0..(r + 1) * 2).map(move |i| (r * 100 + i) as i32)).collect();
        assert_eq!(got.to_vec::<i32>().unwrap(), want);

        let b =
            engine.submit(Submission::from_slice("bc", Collective::Broadcast(2), &[2], &[rank as f64, 1.5])).unwrap();
        assert_eq!(b.wait().unwrap().to_vec::<f64>().unwrap(), [2.0, 1.5]);

        let input: Vec<i64> = (0..7).map(|i| i * (rank as i64 + 1)).collect();
        let rs = engine.submit(Submission::from_slice("rs", Collective::Reducescatter(ReduceOp::Sum), &[7], &input));
        let rs = rs.unwrap().wait().unwrap();
        let (start, len) = [(0, 3), (3, 2), (5, 2)][rank];
        assert_eq!(rs.shape, [len]);
        assert_eq!(rs.to_vec::<i64>().unwrap(), (start..start + len).map(|i| i as i64 * 6).collect::<Vec<_>>());

        // Rank r sends r+1 rows to each rank; row values say who sent them.
        let splits = vec![rank + 1; n];
        let data: Vec<u8> = vec![rank as u8; (rank + 1) * n];
        let a2a = Submission::from_slice("a2a", Collective::Alltoall, &[(rank + 1) * n], &data).splits(splits);
        let a2a = engine.submit(a2a).unwrap().wait().unwrap();
        assert_eq!(a2a.splits, Some(vec![1, 2, 3]));
        assert_eq!(a2a.to_vec::<u8>().unwrap(), [0, 1, 1, 2, 2, 2]);
    });
}

/// Submits `data` lent to the engine and waits for the result.
fn lend<T: bytemuck::Pod>(engine: &Engine, name: &str, c: Collective, shape: &[usize], data: &mut [T]) -> Output {
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(data);
    let ptr = std::ptr::NonNull::new(bytes.as_mut_ptr()).unwrap();
    let dtype = if size_of::<T>() == 4 { ferrovod::DType::F32 } else { ferrovod::DType::I64 };
    // SAFETY: `data` is borrowed mutably for this whole function, which waits for the handle.
    let sub = unsafe { Submission::borrowed(name, c, dtype, shape, ptr, bytes.len()) };
    engine.submit(sub).unwrap().wait().unwrap()
}

#[test]
fn lent_memory_is_reduced_in_place_and_only_read_by_the_others() {
    let n = 3;
    for threshold in [0, 64 << 20] {
        world(n, tuning(threshold), EngineSettings::default(), |rank, engine| {
            // Large enough to be reduced in place piece by piece, and a small one that is staged.
            for len in [0, 5, 20_000] {
                let mut big: Vec<f32> = (0..len).map(|i| value(rank, 1, i)).collect();
                let out = lend(engine, &format!("ar{len}"), Collective::Allreduce(ReduceOp::Sum), &[len], &mut big);
                assert!(out.in_place && out.data.is_empty());
                assert_eq!(big, summed(n, 1, len));
            }
            let mut avg: Vec<f32> = vec![rank as f32 * 3.0; 4];
            lend(engine, "avg", Collective::Allreduce(ReduceOp::Average), &[4], &mut avg);
            assert_eq!(avg, [3.0; 4]);

            let mut b: Vec<i64> = vec![rank as i64 + 10; 3];
            let out = lend(engine, "bc", Collective::Broadcast(1), &[3], &mut b);
            assert!(out.in_place);
            assert_eq!(b, [11; 3]);

            // Reducescatter reduces in a copy: the lent input is left as it was.
            let mut rs: Vec<i64> = (0..6).map(|i| i + rank as i64).collect();
            let before = rs.clone();
            let out = lend(engine, "rs", Collective::Reducescatter(ReduceOp::Sum), &[6], &mut rs);
            assert_eq!(rs, before);
            assert!(!out.in_place);
            let want: Vec<i64> = (2 * rank..2 * rank + 2).map(|i| 3 * i as i64 + 3).collect();
            assert_eq!(out.to_vec::<i64>().unwrap(), want);

            let mut ag: Vec<f32> = vec![rank as f32; rank + 1];
            let out = lend(engine, "ag", Collective::Allgather, &[rank + 1], &mut ag);
            assert_eq!(ag, vec![rank as f32; rank + 1]);
            assert_eq!(out.to_vec::<f32>().unwrap(), [0.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
        });
    }
}

#[test]
fn bad_submissions_are_refused_at_once() {
    world(2, tuning(64 << 20), EngineSettings::default(), |rank, engine| {
        let wrong_len =
            Submission::new("w", Collective::Allreduce(ReduceOp::Sum), ferrovod::DType::F32, &[3], vec![0; 8]);
        assert!(engine.submit(wrong_len).unwrap_err().to_string().contains("do not hold shape"));
        let root = Submission::from_slice("r", Collective::Broadcast(5), &[1], &[1u8]);
        assert!(engine.submit(root).unwrap_err().to_string().contains("root 5"));
        let a = Submission::from_slice("dup", Collective::Allreduce(ReduceOp::Sum), &[1], &[1u8]);
        let h = engine.submit(a).unwrap();
        let again = Submission::from_slice("dup", Collective::Allreduce(ReduceOp::Sum), &[1], &[1u8]);
        assert!(engine.submit(again).unwrap_err().to_string().contains("already in flight"), "rank {rank}");
        assert_eq!(h.wait().unwrap().to_vec::<u8>().unwrap(), [2]);
    });
}

#[test]
fn device_tensors_are_refused_without_device_support() {
    let results = world(2, tuning(1 << 20), EngineSettings::default(), |_, engine| {
        let dev = DevicePtr { ptr: 0x7000_0000, len: 16, device: 0, stream: 0, ready: 0 };
        // SAFETY: the engine refuses it at submission, before anything could touch it.
        let sub =
            unsafe { Submission::device("gpu.grad", Collective::Allreduce(ReduceOp::Sum), DType::F32, &[4], dev) };
        let refused = engine.submit(sub).map(|_| ()).expect_err("device memory without a device backend").to_string();
        // The engine goes on: a host tensor after it is reduced as usual.
        let after = engine.allreduce("host.grad", &[1.0f32, 2.0], ReduceOp::Sum).unwrap();
        (refused, after)
    });
    for (rank, (refused, after)) in results.into_iter().enumerate() {
        assert!(
            refused.contains("\"gpu.grad\" is in device memory") && refused.contains("no device support"),
            "rank {rank}: {refused}"
        );
        assert_eq!(after, [2.0, 4.0], "rank {rank}");
    }
}

/// The default engine takes device memory (its memory operations load CUDA when it first
/// arrives); on a machine without the NVIDIA driver the tensor fails on every rank saying what
/// is missing, and nothing else happens to it.
#[test]
fn without_cuda_a_device_tensor_fails_on_every_rank_naming_the_driver() {
    if ferrovod::cuda::driver().is_ok() {
        eprintln!("SKIPPED: this machine has CUDA's driver library");
        return;
    }
    let tuning = tuning(1 << 20);
    let transports = MemTransport::world(2, tuning.timeout);
    let errors: Vec<String> = std::thread::scope(|s| {
        let ranks: Vec<_> = transports
            .into_iter()
            .map(|t| {
                let tuning = tuning.clone();
                s.spawn(move || {
                    let comm = Communicator::from_transport(Box::new(t), tuning);
                    let engine = Engine::start(comm, &EngineSettings::default()).unwrap();
                    let dev = DevicePtr { ptr: 0x7000_0000, len: 16, device: 0, stream: 0, ready: 0 };
                    // SAFETY: never dereferenced: CUDA cannot load here, so nothing reaches it.
                    let sub = unsafe {
                        Submission::device("gpu.grad", Collective::Allreduce(ReduceOp::Sum), DType::F32, &[4], dev)
                    };
                    let e = engine.submit(sub).and_then(|h| h.wait()).map(|_| ()).expect_err("no CUDA here");
                    let _ = engine.shutdown();
                    e.to_string()
                })
            })
            .collect();
        ranks.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (rank, e) in errors.iter().enumerate() {
        assert!(e.contains("cuda:0") && e.contains("libcuda.so.1"), "rank {rank}: {e}");
    }
}

/// "Device" memory that is host memory at a raw address: enough for the engine to take device
/// tensors (its memory operations reach them), with no device behind it.
struct HostAsDevice;

/// A "device" allocation of [`HostAsDevice`]: host bytes.
#[derive(Debug)]
struct HostBytes {
    buf: Vec<u8>,
    device: i32,
}

impl DeviceAllocation for HostBytes {
    fn ptr(&self) -> DevicePtr {
        DevicePtr { ptr: self.buf.as_ptr() as u64, len: self.buf.len(), device: self.device, stream: 0, ready: 0 }
    }
}

/// `bytes` as device 0's memory, for [`HostAsDevice`] and the staged path's stand-in.
fn host_as_device(bytes: &mut [u8]) -> DevicePtr {
    DevicePtr { ptr: bytes.as_mut_ptr() as u64, len: bytes.len(), device: 0, stream: 0, ready: 0 }
}

impl HostAsDevice {
    fn bytes<'a>(m: Memory<'a>) -> &'a mut [u8] {
        match m {
            Memory::Host(b) => b,
            // SAFETY: every "device" pointer of these tests is a live host allocation of `len`
            // bytes that only the engine uses until the handle completes.
            Memory::Device(d, _) => unsafe { std::slice::from_raw_parts_mut(d.ptr as *mut u8, d.len) },
        }
    }
}

impl Ops for HostAsDevice {
    fn takes_device_memory(&self) -> bool {
        true
    }
    fn alloc(&mut self, place: Place, len: usize) -> Result<Owned, OpsError> {
        Ok(match place {
            Place::Host => Owned::Host(vec![0; len]),
            Place::Device(device) => Owned::Device(Box::new(HostBytes { buf: vec![0; len], device })),
        })
    }
    fn copy(&mut self, dst: Memory<'_>, src: MemoryRef<'_>) -> Result<(), OpsError> {
        let src = match src {
            MemoryRef::Host(b) => b,
            // SAFETY: as in `bytes`.
            MemoryRef::Device(d, _) => unsafe { std::slice::from_raw_parts(d.ptr as *const u8, d.len) },
        };
        HostOps.copy(Memory::Host(Self::bytes(dst)), MemoryRef::Host(src))
    }
    fn fill_identity(&mut self, dst: Memory<'_>, dtype: DType, op: ReduceOp) -> Result<(), OpsError> {
        HostOps.fill_identity(Memory::Host(Self::bytes(dst)), dtype, op)
    }
    fn divide(&mut self, buf: Memory<'_>, dtype: DType, n: usize) -> Result<(), OpsError> {
        HostOps.divide(Memory::Host(Self::bytes(buf)), dtype, n)
    }
}

#[test]
fn a_tensor_on_a_device_on_one_rank_and_on_the_host_on_another_is_a_mismatch() {
    let transports = MemTransport::world(2, tuning(1 << 20).timeout);
    let results: Vec<(String, Vec<f32>)> = std::thread::scope(|s| {
        let handles: Vec<_> = transports
            .into_iter()
            .enumerate()
            .map(|(rank, t)| {
                s.spawn(move || {
                    let comm = Communicator::from_transport(Box::new(t), tuning(1 << 20));
                    let engine = Engine::start_with(comm, &EngineSettings::default(), Box::new(HostAsDevice)).unwrap();
                    let mut grad = vec![1.0f32; 4];
                    let sub = if rank == 0 {
                        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut grad);
                        let dev = host_as_device(bytes);
                        // SAFETY: `grad` outlives the handle's wait below and nothing else touches it.
                        unsafe {
                            Submission::device("grad", Collective::Allreduce(ReduceOp::Sum), DType::F32, &[4], dev)
                        }
                    } else {
                        Submission::from_slice("grad", Collective::Allreduce(ReduceOp::Sum), &[4], &grad)
                    };
                    let refused =
                        engine.submit(sub).unwrap().wait().map(|_| ()).expect_err("host and device").to_string();
                    // A per-tensor disagreement: the engine goes on.
                    let after = engine.allreduce("next", &[1.0f32, 2.0], ReduceOp::Sum).unwrap();
                    engine.shutdown().unwrap();
                    (refused, after)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (rank, (refused, after)) in results.into_iter().enumerate() {
        assert!(
            refused.contains("ranks disagree on memory") && refused.contains("rank 0: device memory"),
            "rank {rank}: {refused}"
        );
        assert_eq!(after, [2.0, 4.0], "rank {rank}");
    }
}

#[test]
fn a_barrier_goes_through_the_engine_by_name() {
    let results = world(3, tuning(1 << 20), EngineSettings::default(), |rank, engine| {
        // Ranks reach the barrier at different times; none leaves before the last arrives.
        std::thread::sleep(Duration::from_millis(100 * rank as u64));
        let t = Instant::now();
        let out = engine.submit(Submission::barrier("barrier.0")).unwrap().wait().unwrap();
        (t.elapsed(), out.data.len())
    });
    assert!(results[0].0 >= Duration::from_millis(150), "rank 0 waited for rank 2: {:?}", results[0].0);
    assert!(results.iter().all(|(_, len)| *len == 0));
}

/// A synchronous collective (`submit_and_wait`) runs the engine's rounds on the waiting thread
/// when no one else runs them; mixed with another thread's asynchronous submissions, every
/// result is still right, element by element.
#[test]
fn a_waiting_caller_runs_the_rounds_itself() {
    let n = 2;
    let rounds = world(n, tuning(64 << 20), EngineSettings::default(), |rank, engine| {
        std::thread::scope(|s| {
            // Another thread submits asynchronously meanwhile, and waits later.
            s.spawn(move || {
                for step in 0..20 {
                    let handles = submit_all(engine, rank, &[0, 3, 5], step);
                    for (t, h) in handles {
                        let out = h.wait().unwrap_or_else(|e| panic!("rank {rank}: async: {e}"));
                        assert_eq!(out.to_vec::<f32>().unwrap(), summed(n, t + step, lengths()[t]), "rank {rank}");
                    }
                }
            });
            for i in 0..300 {
                // Small (in the round's own message) and large (run after it) in turn.
                let len = if i % 3 == 0 { 70_000 } else { 1024 };
                let data = tensor(rank, i, len);
                let sub = Submission::from_slice(
                    format!("sync.{}", i % 3),
                    Collective::Allreduce(ReduceOp::Sum),
                    &[len],
                    &data,
                );
                let out = engine.submit_and_wait(sub).unwrap_or_else(|e| panic!("rank {rank}: sync {i}: {e}"));
                assert_eq!(out.to_vec::<f32>().unwrap(), summed(n, i, len), "rank {rank}: sync {i}");
            }
        });
        engine.rounds()
    });
    for (rank, (by_callers, by_thread)) in rounds.into_iter().enumerate() {
        println!("rank {rank}: {by_callers} rounds run by waiting callers, {by_thread} by the engine thread");
        assert!(by_callers > 0, "rank {rank}: no waiting caller ever ran a round ({by_thread} by the thread)");
    }
}

/// While callers run the rounds and the engine thread keeps away, a stall is still judged and
/// fails every rank, naming the tensor and the rank that never sent it.
#[test]
fn a_stall_is_caught_while_callers_run_the_rounds() {
    let settings = EngineSettings {
        stall_warning: Some(Duration::from_millis(100)),
        stall_timeout: Some(Duration::from_millis(600)),
        timeline: None,
    };
    let errors = world(2, tuning(64 << 20), settings, |rank, engine| {
        for i in 0..50 {
            assert_eq!(engine.allreduce("warm", &[i as f32], ReduceOp::Sum).unwrap(), [2.0 * i as f32]);
        }
        let t = Instant::now();
        let e = if rank == 1 {
            // Rank 1 never sends "lonely": its engine thread, parked after the last wait, must
            // still take part in the rounds that carry the verdict.
            std::thread::sleep(Duration::from_millis(1500));
            let sub = Submission::from_slice("late", Collective::Allreduce(ReduceOp::Sum), &[1], &[1u8]);
            engine.submit(sub).err().unwrap_or_else(|| panic!("rank 1: the engine should have stopped"))
        } else {
            let sub = Submission::from_slice("lonely", Collective::Allreduce(ReduceOp::Sum), &[1], &[1u8]);
            engine.submit_and_wait(sub).expect_err("lonely stalls")
        };
        assert!(t.elapsed() < Duration::from_secs(5), "rank {rank}: {:?}", t.elapsed());
        e.to_string()
    });
    for (rank, e) in errors.iter().enumerate() {
        assert!(e.contains(&format!("rank {rank}")) && e.contains("stall"), "{e}");
        assert!(e.contains("\"lonely\"") && e.contains("[1]"), "rank {rank}: should name lonely and rank 1: {e}");
    }
}

/// A synchronous submission whose wait never comes still runs: an asynchronous one queued
/// behind it rings the engine thread, and `hand_to_engine` (or dropping the handle) does too.
#[test]
fn a_synchronous_submission_left_unwaited_still_runs() {
    world(2, tuning(64 << 20), EngineSettings::default(), |rank, engine| {
        let sub =
            |name: &str, v: f32| Submission::from_slice(name, Collective::Allreduce(ReduceOp::Sum), &[2], &[v, v]);
        // Let the engine thread fall asleep first.
        std::thread::sleep(Duration::from_millis(100));
        let quiet = engine.submit_to_wait(sub("quiet", 1.0)).unwrap();
        let loud = engine.submit(sub("loud", 2.0)).unwrap();
        let out = loud.wait_timeout(Duration::from_secs(5)).unwrap_or_else(|_| panic!("rank {rank}: loud never ran"));
        assert_eq!(out.unwrap().to_vec::<f32>().unwrap(), [4.0, 4.0]);
        assert_eq!(quiet.wait().unwrap().to_vec::<f32>().unwrap(), [2.0, 2.0]);
        std::thread::sleep(Duration::from_millis(100));
        let mut handed = engine.submit_to_wait(sub("handed", 3.0)).unwrap();
        handed.hand_to_engine();
        let start = Instant::now();
        while !handed.poll() {
            assert!(start.elapsed() < Duration::from_secs(5), "rank {rank}: a handed-over request never ran");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(handed.wait().unwrap().to_vec::<f32>().unwrap(), [6.0, 6.0]);
    });
}

/// Runs `body(rank, engine)` on `n` ranks whose engines take "device" memory (host memory at
/// raw addresses, [`HostAsDevice`]) through the staged path over a host stand-in, in pieces
/// of 16 KiB.
fn staged_world(n: usize, body: impl Fn(usize, &Engine) + Sync) {
    use ferrovod::backend::staged::OnDevices;
    use ferrovod::backend::staged::device::{DeviceCopies, HostStandIn};

    let tuning = tuning(1 << 20);
    let transports = MemTransport::world(n, tuning.timeout);
    std::thread::scope(|s| {
        let ranks: Vec<_> = transports
            .into_iter()
            .enumerate()
            .map(|(rank, t)| {
                let (tuning, body) = (tuning.clone(), &body);
                s.spawn(move || {
                    let staged = Tuning { staged_piece: 16 << 10, ..tuning.clone() };
                    let mut comm = Communicator::from_transport(Box::new(t), tuning);
                    // SAFETY: every "device" pointer of these tests is host memory.
                    let make =
                        Box::new(|d, _: &Tuning| Ok(Box::new(unsafe { HostStandIn::new(d) }) as Box<dyn DeviceCopies>));
                    comm.register_backend(Box::new(OnDevices::new(make, staged)));
                    let engine = Engine::start_with(comm, &EngineSettings::default(), Box::new(HostAsDevice)).unwrap();
                    body(rank, &engine);
                    engine.shutdown().unwrap();
                })
            })
            .collect();
        for r in ranks {
            r.join().unwrap();
        }
    });
}

/// Submits `bufs` as one group of device allreduces under `prefix`, and waits.
fn device_group(engine: &Engine, prefix: &str, op: ReduceOp, bufs: &mut [Vec<f32>]) {
    let subs = bufs
        .iter_mut()
        .enumerate()
        .map(|(t, b)| {
            let len = b.len();
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(b);
            // SAFETY: `bufs` outlives the waits below; nothing else touches it.
            unsafe {
                Submission::device(
                    format!("{prefix}.{t}"),
                    Collective::Allreduce(op),
                    DType::F32,
                    &[len],
                    host_as_device(bytes),
                )
            }
        })
        .collect();
    for h in engine.submit_group(subs).unwrap() {
        h.wait().unwrap_or_else(|e| panic!("{prefix} {op}: {e}"));
    }
}

/// Device tensors through the whole engine and the staged path, a host stand-in for the device:
/// fused small tensors and tensors of many pieces, every reduction including the average (which
/// the staged path divides on its host pieces), and a broadcast, element by element.
#[test]
fn device_tensors_run_through_the_engine_and_the_staged_path() {
    let n = 3;
    let lens = [1usize, 300, 1500, 40_000];
    staged_world(n, |rank, engine| {
        for op in [ReduceOp::Sum, ReduceOp::Average, ReduceOp::Max] {
            let mut bufs: Vec<Vec<f32>> = lens.iter().enumerate().map(|(t, &len)| tensor(rank, t, len)).collect();
            device_group(engine, "g", op, &mut bufs);
            for (t, b) in bufs.iter().enumerate() {
                let all: Vec<Vec<f32>> = (0..n).map(|r| tensor(r, t, lens[t])).collect();
                let want: Vec<f32> = (0..lens[t])
                    .map(|i| match op {
                        ReduceOp::Sum => all.iter().map(|v| v[i]).sum(),
                        ReduceOp::Average => all.iter().map(|v| v[i]).sum::<f32>() / n as f32,
                        _ => all.iter().map(|v| v[i]).fold(f32::MIN, f32::max),
                    })
                    .collect();
                assert_eq!(*b, want, "rank {rank}: {op} of tensor {t}");
            }
        }
        let mut root = if rank == 1 { tensor(1, 9, 50_000) } else { vec![0.0; 50_000] };
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut root);
        // SAFETY: as above.
        let sub =
            unsafe { Submission::device("b", Collective::Broadcast(1), DType::F32, &[50_000], host_as_device(bytes)) };
        engine.submit(sub).unwrap().wait().unwrap();
        assert_eq!(root, tensor(1, 9, 50_000), "rank {rank}: broadcast");
    });
}

/// A rank that joined stands in for device tensors on its own GPU (the identity, counted in
/// the average as zeros), so it runs the same path as the ranks still submitting.
#[test]
fn a_joined_rank_stands_in_for_device_tensors_on_its_gpu() {
    let n = 3;
    let steps = [1, 3, 2];
    let lens = [300usize, 40_000];
    staged_world(n, |rank, engine| {
        for step in 0..steps[rank] {
            for op in [ReduceOp::Sum, ReduceOp::Average] {
                let mut bufs: Vec<Vec<f32>> = lens.iter().map(|&len| vec![(rank + 1) as f32; len]).collect();
                device_group(engine, &format!("j.{op}"), op, &mut bufs);
                let active: f32 = (0..n).filter(|&r| steps[r] > step).map(|r| (r + 1) as f32).sum();
                let want = if op == ReduceOp::Average { active / n as f32 } else { active };
                for b in &bufs {
                    assert!(b.iter().all(|&x| x == want), "rank {rank} step {step} {op}: {} != {want}", b[0]);
                }
            }
        }
        assert_eq!(engine.join().unwrap(), 1, "rank {rank}: rank 1 joins last");
    });
}
