//! A rank for the multi-process tests. Joins from the environment, then runs one scenario:
//!
//! - `collectives DTYPES OPS COUNTS`: `check_collectives` (comma lists; `all`; counts
//!   `small` = 0,1,7,4093, `1mib`, `64mib`). Prints `ok over TRANSPORT` on success.
//! - `loop BYTES`: allreduces BYTES of f32 forever, printing `ready (ran ALGORITHM)` after the
//!   first one.
//! - `once BYTES`: one allreduce of BYTES of f32, checked; prints `ok ran ALGORITHM`.
//! - `loop-pause BYTES RANK MS`: the same, rank RANK sleeping MS before each allreduce (so
//!   that it meets a failure late).
//! - `mismatch-count`, `mismatch-dtype`: rank 1 calls allreduce with other arguments.
//! - `mismatch-blocks`: an allgather of 4 bytes in total, rank 1 cutting them as [1, 3] and
//!   the others as [3, 1] (same total, other blocks).
//! - `mismatch-kind`: rank 1 calls alltoall, the others broadcast (both over the shared-memory
//!   stage on one host): different collectives in the same step.
//! - `mismatch-splits`: an alltoall in which rank 0 expects two bytes from rank 1, which
//!   sends one (the counts exchange skipped).
//! - `mismatch-ring`: rank 1 calls allreduce (over messages when the ring is forced), the others
//!   a barrier (over the stage).
//! - `placement`: prints `placement rank=.. size=.. local=L/LS cross=C/CS cvd=.. host=..
//!   transport=..`, then checks every collective (every dtype and op, small counts); prints `ok
//!   over TRANSPORT`.
//! - `alternate ITERS`: ITERS times a barrier then a 1 KiB allreduce; prints `ok after ITERS
//!   over ALGORITHM`.
//! - `stall`: rank 1 sleeps instead of calling allreduce.
//! - `process-sets`: the even and the odd ranks each join a process set and allreduce in it
//!   at once (each set's sum is its own ranks'), then the whole job; joining with ranks that are
//!   not ascending, outside the job or without this rank is refused. Prints `ok` on success.
//!
//! Scenarios named `engine-*` start an [`Engine`] instead of a bare communicator, shut it
//! down when they succeed, and give up on a handle after 20 s (exit 4):
//!
//! - `engine-steps STEPS`: each step submits 30 named f32 allreduces of 1 to 300,000 elements
//!   in an order of its own (per rank and step), waits for all and checks every element.
//!   Prints `ok` on success.
//! - `engine-ops`: for every dtype and every allreduce op it takes, seven tensors of 1 to 20,000
//!   elements submitted together (fused into one bucket, so their ends share pieces), each checked
//!   element by element against the serial reference. Prints `ok` on success.
//! - `engine-late-rank SECS`: rank 1 sleeps SECS seconds before submitting `late.x`, the
//!   others submit it at once; every rank checks the result. Prints `ok` on success.
//! - `engine-missing`: every rank but the last submits `never`; the last submits only
//!   `other`, which nobody else does. Both stall: the wait fails (exit 3) once the stall
//!   timeout strikes; a wait that succeeds prints `unexpectedly completed` and exits 0.
//! - `engine-loop`: allreduces 4 MiB of f32 named `loop` forever, waiting for each, printing
//!   `ready` after the first one.
//!
//! Exit codes: 0 success, 3 a collective failed (the error on stderr), 2 bad usage, 4 (engine
//! scenarios) a handle did not complete in time, with what the engine says on stderr.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use ferrovod::{Collective, Communicator, DType, Engine, Handle, Output, ReduceOp, Submission};
use ferrovod_tests::{Plan, Rng, check, check_collectives, counts, expected_allreduce, input};

fn list<T: Copy>(arg: &str, all: &[T], parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>, String> {
    if arg == "all" {
        return Ok(all.to_vec());
    }
    arg.split(',').map(|s| parse(s).ok_or_else(|| format!("unknown item {s:?}"))).collect()
}

fn scenario(comm: &mut Communicator, args: &[String]) -> Result<(), String> {
    let r = comm.rank();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["collectives", dtypes, ops, sizes] => {
            let dtypes = list(dtypes, &DType::ALL, DType::from_name)?;
            let ops = list(ops, &ReduceOp::ALL, ReduceOp::from_name)?;
            for dtype in dtypes {
                let all = counts(dtype, true);
                let chosen: Vec<usize> = match *sizes {
                    "small" => all[..4].to_vec(),
                    "1mib" => vec![all[4]],
                    "64mib" => vec![all[5]],
                    other => return Err(format!("unknown counts {other:?}")),
                };
                let others: Vec<usize> = if *sizes == "64mib" { vec![] } else { chosen.clone() };
                check_collectives(
                    comm,
                    Plan { dtypes: &[dtype], ops: &ops, allreduce_counts: &chosen, other_counts: &others },
                )?;
            }
            println!("ok over {}", comm.transport());
            Ok(())
        }
        ["loop", bytes] => {
            let n: usize = bytes.parse::<usize>().map_err(|e| e.to_string())? / 4;
            let mut buf = vec![1.0f32; n];
            comm.allreduce(&mut buf, ReduceOp::Sum).map_err(|e| e.to_string())?;
            println!("ready (ran {})", comm.last_algorithm());
            loop {
                comm.allreduce(&mut buf, ReduceOp::Average).map_err(|e| e.to_string())?;
            }
        }
        ["once", bytes] => {
            let n: usize = bytes.parse::<usize>().map_err(|e| e.to_string())? / 4;
            let mut buf: Vec<f32> = (0..n).map(|i| (r + i % 5) as f32).collect();
            comm.allreduce(&mut buf, ReduceOp::Sum).map_err(|e| e.to_string())?;
            let size = comm.size();
            let ranks = (size * (size - 1) / 2) as f32;
            if let Some(i) = (0..n).find(|&i| buf[i] != ranks + (size * (i % 5)) as f32) {
                return Err(format!("element {i} is {}", buf[i]));
            }
            println!("ok ran {}", comm.last_algorithm());
            Ok(())
        }
        ["loop-pause", bytes, who, ms] => {
            let n: usize = bytes.parse::<usize>().map_err(|e| e.to_string())? / 4;
            let who: usize = who.parse().map_err(|e: std::num::ParseIntError| e.to_string())?;
            let pause =
                std::time::Duration::from_millis(ms.parse().map_err(|e: std::num::ParseIntError| e.to_string())?);
            let mut buf = vec![1.0f32; n];
            comm.allreduce(&mut buf, ReduceOp::Sum).map_err(|e| e.to_string())?;
            println!("ready");
            loop {
                if r == who {
                    std::thread::sleep(pause);
                }
                comm.allreduce(&mut buf, ReduceOp::Average).map_err(|e| e.to_string())?;
            }
        }
        ["mismatch-count"] => {
            let mut buf = vec![0f32; if r == 1 { 1000 } else { 1001 }];
            comm.allreduce(&mut buf, ReduceOp::Sum).map_err(|e| e.to_string())
        }
        ["mismatch-dtype"] => {
            if r == 1 {
                comm.allreduce(&mut [0f64; 64], ReduceOp::Sum).map_err(|e| e.to_string())
            } else {
                comm.allreduce(&mut [0f32; 64], ReduceOp::Sum).map_err(|e| e.to_string())
            }
        }
        ["mismatch-blocks"] => {
            let counts: &[usize] = if r == 1 { &[1, 3] } else { &[3, 1] };
            let mut others = vec![1usize; comm.size().saturating_sub(2)];
            let counts: Vec<usize> = counts.iter().copied().chain(others.drain(..)).collect();
            let mine = vec![r as u8; counts[r]];
            let mut out = vec![0u8; counts.iter().sum()];
            comm.allgatherv_into(&mine, &mut out, &counts, DType::U8).map_err(|e| e.to_string())
        }
        ["mismatch-kind"] => {
            let n = comm.size();
            if r == 1 {
                let send = vec![1u8; n];
                let mut recv = vec![0u8; n];
                comm.alltoall_into(send.as_slice(), &vec![1; n], recv.as_mut_slice(), &vec![1; n], DType::U8)
                    .map_err(|e| e.to_string())
            } else {
                comm.broadcast_bytes(vec![0u8; 64].as_mut_slice(), DType::U8, 0).map_err(|e| e.to_string())
            }
        }
        ["mismatch-splits"] => {
            // Every rank sends one byte to each; rank 0 expects two from rank 1.
            let n = comm.size();
            let mut expect = vec![1; n];
            if r == 0 {
                expect[1] = 2;
            }
            let mut recv = vec![0u8; expect.iter().sum()];
            comm.alltoall_into(vec![1u8; n].as_slice(), &vec![1; n], recv.as_mut_slice(), &expect, DType::U8)
                .map_err(|e| e.to_string())
        }
        ["mismatch-ring"] => {
            // With FERROVOD_ALLREDUCE_ALGORITHM=ring: rank 1's allreduce goes over the rings,
            // the others' barrier over the stage.
            if r == 1 {
                comm.allreduce(&mut [0f32; 64], ReduceOp::Sum).map_err(|e| e.to_string())
            } else {
                comm.barrier().map_err(|e| e.to_string())
            }
        }
        ["placement"] => {
            // Where the launcher put this rank, then every collective across the hosts.
            let cvd = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".into());
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            println!(
                "placement rank={r} size={} local={}/{} cross={}/{} cvd={cvd} host={} transport={}",
                comm.size(),
                comm.local_rank(),
                comm.local_size(),
                comm.cross_rank(),
                comm.cross_size(),
                host.trim(),
                comm.transport()
            );
            let (dtypes, ops) = (DType::ALL, ReduceOp::ALL);
            for dtype in dtypes {
                let small = &counts(dtype, false)[..4];
                check_collectives(
                    comm,
                    Plan { dtypes: &[dtype], ops: &ops, allreduce_counts: small, other_counts: small },
                )?;
            }
            println!("ok over {}", comm.transport());
            Ok(())
        }
        ["alternate", iters] => {
            // Back to back: a stage step (the barrier) and whatever the allreduce runs over.
            let iters: usize = iters.parse().map_err(|e| format!("{e}"))?;
            let mut buf = [1f32; 256];
            for _ in 0..iters {
                comm.barrier().map_err(|e| e.to_string())?;
                comm.allreduce(&mut buf, ReduceOp::Max).map_err(|e| e.to_string())?;
            }
            println!("ok after {iters} over {}", comm.last_algorithm());
            Ok(())
        }
        ["stall"] => {
            if r == 1 {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
            comm.allreduce(&mut [0f32; 64], ReduceOp::Sum).map_err(|e| e.to_string())
        }
        ["process-sets"] => process_sets(comm),
        _ => Err(format!("usage: see the file's docs; got {args:?}")),
    }
}

fn process_sets(comm: &mut Communicator) -> Result<(), String> {
    let (r, n) = (comm.rank(), comm.size());
    let config = ferrovod::config::Config::from_env().map_err(|e| e.to_string())?;
    for (bad, why) in [(vec![r, r], "ascending"), (vec![r, n], "not a rank"), (vec![(r + 1) % n], "not one of")] {
        match Communicator::join_set(&config, 7, &bad) {
            Err(e) if e.to_string().contains(why) => {}
            other => return Err(format!("members {bad:?}: want an error saying {why:?}, got {:?}", other.err())),
        }
    }
    let members: Vec<usize> = (0..n).filter(|m| m % 2 == r % 2).collect();
    let mut set = Communicator::join_set(&config, 1 + (r % 2) as u32, &members).map_err(|e| e.to_string())?;
    if set.rank() != r / 2 || set.size() != members.len() {
        return Err(format!("set rank {} of {}, want {} of {}", set.rank(), set.size(), r / 2, members.len()));
    }
    let mut buf = [r as f64; 5];
    set.allreduce(&mut buf, ReduceOp::Sum).map_err(|e| e.to_string())?;
    let want = members.iter().sum::<usize>() as f64;
    if buf != [want; 5] {
        return Err(format!("set allreduce gave {buf:?}, want {want}"));
    }
    let mut all = [r as f64; 3];
    comm.allreduce(&mut all, ReduceOp::Sum).map_err(|e| e.to_string())?;
    if all != [(n * (n - 1) / 2) as f64; 3] {
        return Err(format!("whole-job allreduce after the sets gave {all:?}"));
    }
    println!("ok");
    Ok(())
}

/// An engine scenario, parsed before joining so that bad usage exits 2.
enum EngineScenario {
    Steps(usize),
    Ops,
    LateRank(Duration),
    Missing,
    Loop,
}

impl EngineScenario {
    fn parse(args: &[String]) -> Option<EngineScenario> {
        match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["engine-steps", steps] => steps.parse().ok().map(EngineScenario::Steps),
            ["engine-ops"] => Some(EngineScenario::Ops),
            ["engine-late-rank", secs] => {
                let secs = secs.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0)?;
                Some(EngineScenario::LateRank(Duration::from_secs_f64(secs)))
            }
            ["engine-missing"] => Some(EngineScenario::Missing),
            ["engine-loop"] => Some(EngineScenario::Loop),
            _ => None,
        }
    }
}

/// Lengths of the tensors of one `engine-steps` step: single elements, odd sizes, sizes around
/// the 1 MiB ring chunk (262,144 f32) and a few larger than it.
const STEP_LENGTHS: [usize; 30] = [
    1, 2, 3, 5, 7, 16, 31, 64, 100, 127, 255, 512, 1000, 1023, 1025, 2048, 4093, 8191, 10_000, 16_384, 32_767, 65_536,
    100_000, 131_072, 200_003, 262_143, 262_144, 262_145, 299_999, 300_000,
];

/// Rank `rank`'s element `i` of tensor `t` in `step`: a small integer, so that every sum is
/// exact in f32 whatever order the reduction takes.
fn step_value(rank: usize, step: usize, t: usize, i: usize) -> f32 {
    ((rank * 7 + step * 5 + t * 3 + i) % 13) as f32
}

/// A permutation of `0..n` of its own for every seed (Fisher–Yates).
fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    order
}

/// How an engine scenario fails.
enum Fail {
    /// A collective failed, or gave a wrong result (exit 3).
    Failed(String),
    /// A handle did not complete within [`WAIT_LIMIT`] (exit 4).
    Lost(String),
}

impl From<String> for Fail {
    fn from(e: String) -> Fail {
        Fail::Failed(e)
    }
}

/// Longest wait for one handle in the engine scenarios. Every scenario completes or fails its
/// handles within seconds; one the engine never completes must fail the test with a message
/// rather than hang the rank until the harness kills it.
const WAIT_LIMIT: Duration = Duration::from_secs(20);

/// Waits for `h` (the tensor `what`), at most [`WAIT_LIMIT`].
fn wait(engine: &Engine, h: Handle, what: &str) -> Result<Output, Fail> {
    match h.wait_timeout(WAIT_LIMIT) {
        Ok(result) => result.map_err(|e| Fail::Failed(format!("{what}: {e}"))),
        Err(_) => {
            // A stopped engine refuses new submissions, giving the reason it stopped.
            let probe = Submission::from_slice("watchdog.probe", Collective::Allreduce(ReduceOp::Sum), &[1], &[0u8]);
            let state = match engine.submit(probe) {
                Err(e) => format!("the engine refuses new submissions: {e}"),
                Ok(_) => "the engine still takes submissions".to_string(),
            };
            Err(Fail::Lost(format!("{what}: the handle did not complete within {WAIT_LIMIT:?}; {state}")))
        }
    }
}

/// Submits `data` for a sum allreduce under `name`.
fn submit(engine: &Engine, name: &str, data: &[f32]) -> Result<Handle, Fail> {
    let sub = Submission::from_slice(name, Collective::Allreduce(ReduceOp::Sum), &[data.len()], data);
    engine.submit(sub).map_err(|e| Fail::Failed(format!("submitting {name:?}: {e}")))
}

fn engine_scenario(engine: &Engine, scenario: &EngineScenario) -> Result<(), Fail> {
    let (r, n) = (engine.rank(), engine.size());
    match scenario {
        EngineScenario::Steps(steps) => {
            for step in 0..*steps {
                let order = permutation(STEP_LENGTHS.len(), ((r as u64) << 32) | step as u64);
                let mut handles = Vec::with_capacity(order.len());
                for &t in &order {
                    let data: Vec<f32> = (0..STEP_LENGTHS[t]).map(|i| step_value(r, step, t, i)).collect();
                    handles.push((t, submit(engine, &format!("grad.{t}"), &data)?));
                }
                for (t, h) in handles {
                    let what = format!("step {step}: tensor \"grad.{t}\"");
                    let out = wait(engine, h, &what)?;
                    let len = STEP_LENGTHS[t];
                    if out.shape != [len] {
                        return Err(format!("{what}: shape {:?}, expected [{len}]", out.shape).into());
                    }
                    let got = out.to_vec::<f32>().map_err(|e| format!("{what}: {e}"))?;
                    let want = |i: usize| (0..n).map(|q| step_value(q, step, t, i)).sum::<f32>();
                    if let Some(i) = (0..len).find(|&i| got[i] != want(i)) {
                        return Err(format!("{what}: element {i} is {}, expected {}", got[i], want(i)).into());
                    }
                }
            }
            println!("ok");
            Ok(())
        }
        EngineScenario::Ops => {
            const COUNTS: [usize; 7] = [1, 7, 100, 1000, 4093, 3000, 20_000];
            for dtype in DType::ALL {
                for op in ReduceOp::ALL.into_iter().filter(|&op| Collective::Allreduce(op).refuses(dtype).is_none()) {
                    let mut handles = Vec::with_capacity(COUNTS.len());
                    for (k, &count) in COUNTS.iter().enumerate() {
                        let name = format!("{dtype}.{op:?}.{k}");
                        let data = input(dtype, op, r, count).bytes().to_vec();
                        let sub = Submission::new(name.clone(), Collective::Allreduce(op), dtype, &[count], data);
                        let h = engine.submit(sub).map_err(|e| format!("submitting {name:?}: {e}"))?;
                        handles.push((name, count, h));
                    }
                    for (name, count, h) in handles {
                        let out = wait(engine, h, &name)?;
                        let ferrovod::memory::Owned::Host(got) = &out.data else {
                            return Err(format!("{name}: the result is not in host memory").into());
                        };
                        check(&name, dtype, got, expected_allreduce(dtype, op, n, count).bytes())?;
                    }
                }
            }
            println!("ok");
            Ok(())
        }
        EngineScenario::LateRank(delay) => {
            if r == 1 {
                std::thread::sleep(*delay);
            }
            let data: Vec<f32> = (0..1000).map(|i| ((r + 1) * (i % 7)) as f32).collect();
            let out = wait(engine, submit(engine, "late.x", &data)?, "late.x")?;
            let got = out.to_vec::<f32>().map_err(|e| format!("late.x: {e}"))?;
            let want = |i: usize| ((1..=n).sum::<usize>() * (i % 7)) as f32;
            if got.len() != data.len() {
                return Err(format!("late.x: {} elements, expected {}", got.len(), data.len()).into());
            }
            if let Some(i) = (0..data.len()).find(|&i| got[i] != want(i)) {
                return Err(format!("late.x: element {i} is {}, expected {}", got[i], want(i)).into());
            }
            println!("ok");
            Ok(())
        }
        EngineScenario::Missing => {
            let name = if r + 1 == n { "other" } else { "never" };
            wait(engine, submit(engine, name, &[1.0; 4])?, name)?;
            println!("unexpectedly completed");
            Ok(())
        }
        EngineScenario::Loop => {
            let data = vec![1.0f32; (4 << 20) / 4];
            let first = wait(engine, submit(engine, "loop", &data)?, "loop")?;
            if first.to_vec::<f32>().map_err(|e| format!("loop: {e}"))?.iter().any(|&x| x != n as f32) {
                return Err(format!("loop: the first allreduce did not sum to {n}").into());
            }
            println!("ready");
            let _ = std::io::stdout().flush();
            loop {
                wait(engine, submit(engine, "loop", &data)?, "loop")?;
            }
        }
    }
}

fn engine_main(args: &[String]) -> ExitCode {
    let Some(scenario) = EngineScenario::parse(args) else {
        eprintln!("usage: see the file's docs; got {args:?}");
        return ExitCode::from(2);
    };
    let engine = match Engine::from_env() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(3);
        }
    };
    let (message, code) = match engine_scenario(&engine, &scenario) {
        Ok(()) => match engine.shutdown() {
            Ok(()) => return ExitCode::SUCCESS,
            Err(e) => (format!("shutdown: {e}"), 3),
        },
        Err(Fail::Failed(e)) => (e, 3),
        Err(Fail::Lost(e)) => (e, 4),
    };
    eprintln!("{message}");
    // Not through the engine's `Drop`: shutting down is a round with the other ranks, which
    // may be gone or have gone on.
    std::process::exit(code)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a.starts_with("engine-")) {
        return engine_main(&args);
    }
    let mut comm = match Communicator::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(3);
        }
    };
    match scenario(&mut comm, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("cpu: {} ms", cpu_ms());
            ExitCode::from(3)
        }
    }
}

/// User plus system CPU time this process has used, in milliseconds.
fn cpu_ms() -> u128 {
    // SAFETY: getrusage fills the zeroed struct it is given; nothing else is touched.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let ms = |t: libc::timeval| t.tv_sec as u128 * 1000 + t.tv_usec as u128 / 1000;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}
