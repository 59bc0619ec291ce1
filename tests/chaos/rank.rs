//! One rank of a chaos trial: random collectives of random sizes and dtypes through the
//! engine, several in flight at a time, each result checked element by element, until the
//! trial's fault ends the job.
//!
//! Every rank draws the same sequence from the trial's seed, so the ranks agree on what to
//! submit without talking; the data is each rank's own (`ferrovod_tests::input`). Lines it
//! writes (the driver reads them):
//!
//! - stdout `ready PID` after the first step completed;
//! - stderr `chaos: failed: culprits [R, ...]: ...` when a collective fails (exit 3), with the
//!   ranks the error blames, `chaos: WRONG RESULT: ...`
//!   when one returns a wrong result (exit 5), `chaos: HANG: ...` when a handle neither
//!   completes nor fails in three timeouts (exit 4).

use std::io::Write;
use std::time::Duration;

use ferrovod::memory::Owned;
use ferrovod::{Collective, DType, Engine, Handle, Output, ReduceOp, Submission};
use ferrovod_tests::{Rng, check, expected_allreduce, input};

/// Exit codes the driver tells apart.
pub const FAILED: i32 = 3;
pub const HANG: i32 = 4;
pub const WRONG: i32 = 5;

/// Elements of one tensor: most small, some up to 2^18, so that both the latency and the
/// chunked paths run.
fn draw_count(rng: &mut Rng) -> usize {
    match rng.below(4) {
        0 => rng.below(8) as usize,
        1 | 2 => rng.below(4096) as usize,
        _ => rng.below(1 << 18) as usize,
    }
}

/// What this rank must get back from one submission.
struct Expect {
    name: String,
    collective: Collective,
    dtype: DType,
    /// The result's bytes (empty for a barrier).
    want: Vec<u8>,
}

/// One submission as every rank draws it (the same draws on every rank), with this rank's data.
fn plan(rng: &mut Rng, name: String, r: usize, n: usize) -> (Submission, Expect) {
    let dtype = DType::ALL[rng.below(DType::ALL.len() as u64) as usize];
    let e = dtype.size();
    let count = draw_count(rng);
    let mut op = ReduceOp::ALL[rng.below(ReduceOp::ALL.len() as u64) as usize];
    if Collective::Allreduce(op).refuses(dtype).is_some() {
        op = ReduceOp::Sum;
    }
    let (collective, submission, want) = match rng.below(20) {
        0 => (Collective::Barrier, Submission::barrier(&name), Vec::new()),
        1..=7 => {
            let c = Collective::Allreduce(op);
            let sub = Submission::new(&name, c, dtype, &[count], input(dtype, op, r, count).bytes().to_vec());
            (c, sub, expected_allreduce(dtype, op, n, count).bytes().to_vec())
        }
        8..=10 => {
            // Rank i contributes count + i rows.
            let c = Collective::Allgather;
            let sub = Submission::new(&name, c, dtype, &[count + r], input(dtype, op, r, count + r).bytes().to_vec());
            let want = (0..n).flat_map(|i| input(dtype, op, i, count + i).bytes().to_vec()).collect();
            (c, sub, want)
        }
        11..=13 => {
            let root = rng.below(n as u64) as usize;
            let c = Collective::Broadcast(root as u32);
            let mine = if r == root { input(dtype, op, r, count) } else { input(dtype, op, n + r, count) };
            let sub = Submission::new(&name, c, dtype, &[count], mine.bytes().to_vec());
            (c, sub, input(dtype, op, root, count).bytes().to_vec())
        }
        14..=16 => {
            // The first ranks get one row more when the rows do not divide.
            let c = Collective::Reducescatter(op);
            let sub = Submission::new(&name, c, dtype, &[count], input(dtype, op, r, count).bytes().to_vec());
            let (base, extra) = (count / n, count % n);
            let start = r * base + r.min(extra);
            let rows = base + usize::from(r < extra);
            (c, sub, expected_allreduce(dtype, op, n, count).bytes()[start * e..(start + rows) * e].to_vec())
        }
        _ => {
            // Rank i sends split(i, j) rows to rank j, in order from its input.
            let seed = rng.bits();
            let split = |i: usize, j: usize| (Rng::new(seed ^ (i * n + j) as u64).below(count as u64 / 4 + 3)) as usize;
            let mine: Vec<usize> = (0..n).map(|j| split(r, j)).collect();
            let total: usize = mine.iter().sum();
            let c = Collective::Alltoall;
            let sub =
                Submission::new(&name, c, dtype, &[total], input(dtype, op, r, total).bytes().to_vec()).splits(mine);
            let mut want = Vec::new();
            for i in 0..n {
                let theirs = input(dtype, op, i, (0..n).map(|j| split(i, j)).sum());
                let start: usize = (0..r).map(|j| split(i, j)).sum();
                want.extend_from_slice(&theirs.bytes()[start * e..(start + split(i, r)) * e]);
            }
            (c, sub, want)
        }
    };
    (submission, Expect { name, collective, dtype, want })
}

/// How a rank's run ends when it does not go on forever.
pub enum End {
    Failed(String),
    Wrong(String),
    Hang(String),
}

fn wait(h: Handle, what: &str, limit: Duration) -> Result<Output, End> {
    match h.wait_timeout(limit) {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(End::Failed(format!("culprits {:?}: {what}: {e}", e.culprits()))),
        Err(_) => Err(End::Hang(format!("{what}: neither completed nor failed within {limit:?}"))),
    }
}

fn verify(p: &Expect, out: &Output) -> Result<(), End> {
    if p.collective == Collective::Barrier {
        return Ok(());
    }
    let what = format!("{} ({} {})", p.name, p.collective.name(), p.dtype);
    let Owned::Host(got) = &out.data else {
        return Err(End::Wrong(format!("{what}: the result is not in host memory")));
    };
    check(&what, p.dtype, got, &p.want).map_err(End::Wrong)
}

/// Runs steps until one fails; never returns `Ok`.
pub fn run(engine: &Engine, seed: u64, timeout: Duration) -> End {
    let (r, n) = (engine.rank(), engine.size());
    // A handle must complete or fail well within the job's timeout (a dead peer is an error
    // within it); three of them is a hang.
    let limit = timeout * 3;
    for step in 0u64.. {
        let mut rng = Rng::new(seed ^ step.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let batch = 1 + rng.below(4) as usize;
        let (subs, expects): (Vec<Submission>, Vec<Expect>) =
            (0..batch).map(|j| plan(&mut rng, format!("chaos.{step}.{j}"), r, n)).unzip();
        let handles: Vec<Handle> = match subs.into_iter().map(|s| engine.submit(s)).collect::<Result<_, _>>() {
            Ok(h) => h,
            Err(e) => return End::Failed(format!("culprits {:?}: step {step}: submitting: {e}", e.culprits())),
        };
        for (p, h) in expects.iter().zip(handles) {
            let checked = wait(h, &p.name, limit).and_then(|out| verify(p, &out));
            if let Err(end) = checked {
                return end;
            }
        }
        if step == 0 {
            println!("ready {}", std::process::id());
            let _ = std::io::stdout().flush();
        }
    }
    unreachable!("the step counter does not run out")
}
