//! ferrovod-bench: starts N local processes of itself and prints an nccl-tests-style table.
//!
//! `ferrovod-bench --np N --op allreduce|broadcast|allgather|reducescatter|alltoall --sizes 4KiB,1MiB,64MiB [--transport auto|shm|tcp] [--hosts H] [--json PATH]`
//! `ferrovod-bench --np N --tensors resnet50 [--json PATH]`: a training step's gradients through
//! the engine (see `tensors.rs`).
//! `ferrovod-bench --model [--alpha-us US --gbit G] [--sizes ..] [--model-np 2,3,4]`: fits the
//! alpha-beta model's parameters from point-to-point timings of this host, prints its
//! predictions for 2 to 1,024 ranks, then measures ring and halving-doubling allreduces next to
//! them (see `model.rs` and `model_measure.rs`).
//!
//! Method, per size: check the result once; warm up; pick the iteration count from the median
//! of 5 timed iterations (at least `--min-iters` and `--min-time` seconds in all); then per iteration a barrier and
//! the op timed on every rank. An iteration's time is the maximum over ranks; the table shows
//! the median. Sizes follow nccl-tests: allgather's is the gathered output, reducescatter's the
//! full input, alltoall's one rank's send buffer. busbw = algbw × 2(n−1)/n for allreduce,
//! × (n−1)/n for allgather, reducescatter and alltoall, × 1 for broadcast.

use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use ferrovod::bootstrap::{Secret, StoreServer};
use ferrovod::{Communicator, ReduceOp};
use serde::Serialize;

mod model;
mod model_measure;
mod resnet50;
mod tensors;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Op {
    Allreduce,
    Broadcast,
    Allgather,
    Reducescatter,
    Alltoall,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TensorSet {
    /// ResNet-50's 161 parameter tensors (25.6 M f32).
    Resnet50,
    /// 1024 tensors of 256 f32 each: where per-collective latency dominates.
    Small,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TransportArg {
    /// Shared memory on one host, TCP otherwise (FERROVOD_TRANSPORT=auto).
    Auto,
    /// Shared memory.
    Shm,
    /// Loopback TCP.
    Tcp,
}

#[derive(Parser, Debug)]
#[command(version, about = "Benchmark ferrovod collectives over N local processes (f32)")]
struct Args {
    /// Number of processes.
    #[arg(long, default_value_t = 2)]
    np: usize,
    /// The collective.
    #[arg(long, value_enum, default_value_t = Op::Allreduce)]
    op: Op,
    /// Comma-separated sizes in bytes, with optional KiB/MiB/GiB suffix [default:
    /// 4KiB,1MiB,16MiB,64MiB; with --model 4KiB,256KiB,4MiB,16MiB].
    #[arg(long, value_parser = parse_sizes)]
    sizes: Option<Sizes>,
    /// The transport the ranks use (sets FERROVOD_TRANSPORT; the table says which ran).
    #[arg(long, value_enum, default_value_t = TransportArg::Auto)]
    transport: TransportArg,
    /// Fake this many hosts on this machine (ranks placed host by host, each publishing its
    /// host's name through FERROVOD_HOSTNAME): shared memory within each, TCP between them.
    #[arg(long, default_value_t = 1)]
    hosts: usize,
    /// Fit the alpha-beta cost model on this host, print its predictions, and measure ring and
    /// halving-doubling allreduces over tcp and shm next to them.
    #[arg(long)]
    model: bool,
    /// --model: also predict for a network of this latency (µs per message), e.g. a netem delay.
    #[arg(long, requires = "model")]
    alpha_us: Option<f64>,
    /// --model: also predict for a network of this bandwidth (Gbit/s).
    #[arg(long, requires = "model")]
    gbit: Option<f64>,
    /// --model: ranks per host in the cluster predictions.
    #[arg(long, default_value_t = 8)]
    ranks_per_host: usize,
    /// --model: world sizes of the measured points.
    #[arg(long, value_delimiter = ',', default_value = "2,3,4")]
    model_np: Vec<usize>,
    /// --model: fit and predict only, measure no allreduce.
    #[arg(long)]
    no_measure: bool,
    /// Internal: time point-to-point messages for --model (set by the parent).
    #[arg(long, hide = true)]
    probe: bool,
    /// Write the rows as a JSON array here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Minimum measured seconds per size.
    #[arg(long, default_value_t = 1.0)]
    min_time: f64,
    /// Minimum iterations per size.
    #[arg(long, default_value_t = 5)]
    min_iters: usize,
    /// Instead of --op/--sizes: submit this model's gradient set through the engine.
    #[arg(long, value_enum)]
    tensors: Option<TensorSet>,
    /// Where the timeline variant of --tensors writes its trace.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    timeline_dir: std::path::PathBuf,
    /// Internal: run as one rank (set by the parent).
    #[arg(long, hide = true)]
    worker: bool,
}

#[derive(Clone, Debug)]
struct Sizes(Vec<usize>);

fn parse_sizes(s: &str) -> Result<Sizes, String> {
    s.split(',')
        .map(|p| {
            let p = p.trim();
            let (num, mult) = [("GiB", 1usize << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("B", 1)]
                .iter()
                .find_map(|(suf, m)| p.strip_suffix(suf).map(|n| (n, *m)))
                .unwrap_or((p, 1));
            num.trim()
                .parse::<usize>()
                .map(|n| n * mult)
                .map_err(|_| format!("{p:?} is not a size like 4KiB or 1048576"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Sizes)
}

#[derive(Serialize)]
struct Row {
    #[serde(rename = "impl")]
    implementation: &'static str,
    op: &'static str,
    transport: &'static str,
    algorithm: &'static str,
    np: usize,
    dtype: &'static str,
    bytes: usize,
    iters: usize,
    median_s: f64,
    algbw_gbs: f64,
    busbw_gbs: f64,
}

fn name(op: Op) -> &'static str {
    match op {
        Op::Allreduce => "allreduce",
        Op::Broadcast => "broadcast",
        Op::Allgather => "allgather",
        Op::Reducescatter => "reducescatter",
        Op::Alltoall => "alltoall",
    }
}

fn bus_factor(op: Op, n: usize) -> f64 {
    let n = n as f64;
    match op {
        Op::Allreduce => 2.0 * (n - 1.0) / n,
        Op::Broadcast => 1.0,
        Op::Allgather | Op::Reducescatter | Op::Alltoall => (n - 1.0) / n,
    }
}

/// Buffers for one size, reused by every iteration.
struct Buffers {
    a: Vec<f32>,
    b: Vec<f32>,
}

fn buffers(op: Op, bytes: usize, n: usize, rank: usize) -> Buffers {
    let elems = bytes / 4;
    let per_rank = elems / n;
    let (a, b) = match op {
        Op::Allreduce | Op::Broadcast | Op::Reducescatter | Op::Alltoall => (elems, 0),
        Op::Allgather => (per_rank, per_rank * n),
    };
    let fill = |len: usize| (0..len).map(|i| ((i * 7 + rank * 3) % 13) as f32).collect();
    Buffers { a: fill(a), b: vec![0.0; b] }
}

fn run_op(comm: &mut Communicator, op: Op, buf: &mut Buffers) -> ferrovod::Result<()> {
    let n = comm.size();
    match op {
        Op::Allreduce => comm.allreduce(&mut buf.a, ReduceOp::Sum),
        Op::Broadcast => comm.broadcast(&mut buf.a, 0),
        Op::Allgather => comm.allgather(&buf.a, &mut buf.b),
        Op::Reducescatter => comm.reducescatter(&buf.a, ReduceOp::Sum).map(|_| ()),
        Op::Alltoall => {
            let len = buf.a.len();
            let splits: Vec<usize> = (0..n).map(|i| len * (i + 1) / n - len * i / n).collect();
            comm.alltoall(&buf.a, &splits).map(|_| ())
        }
    }
}

/// Runs the op once on fresh data and checks the result against what it must be.
fn check(comm: &mut Communicator, op: Op, bytes: usize) -> Result<(), String> {
    let (r, n) = (comm.rank(), comm.size());
    let mut buf = buffers(op, bytes, n, r);
    let input_of = |rank: usize, len: usize| buffers(op, len * 4, n, rank).a;
    let orig = buf.a.clone();
    let bad = |what: &str| Err(format!("{} check failed on rank {r}: {what}", name(op)));
    match op {
        Op::Allreduce => {
            comm.allreduce(&mut buf.a, ReduceOp::Sum).map_err(|e| e.to_string())?;
            let want: Vec<f32> = (0..orig.len()).map(|i| (0..n).map(|q| ((i * 7 + q * 3) % 13) as f32).sum()).collect();
            if buf.a != want {
                return bad("sum differs");
            }
        }
        Op::Broadcast => {
            if r != 0 {
                buf.a.iter_mut().for_each(|x| *x = -1.0);
            }
            comm.broadcast(&mut buf.a, 0).map_err(|e| e.to_string())?;
            if buf.a != input_of(0, orig.len()) {
                return bad("data differs from root's");
            }
        }
        Op::Allgather => {
            comm.allgather(&buf.a, &mut buf.b).map_err(|e| e.to_string())?;
            let want: Vec<f32> = (0..n).flat_map(|q| buffers(op, bytes, n, q).a).collect();
            if buf.b != want {
                return bad("gathered data differs");
            }
        }
        Op::Reducescatter => {
            let got = comm.reducescatter(&buf.a, ReduceOp::Sum).map_err(|e| e.to_string())?;
            let len = orig.len();
            let start = (0..r).map(|q| len / n + usize::from(q < len % n)).sum::<usize>();
            let want: Vec<f32> =
                (start..start + got.len()).map(|i| (0..n).map(|q| ((i * 7 + q * 3) % 13) as f32).sum()).collect();
            if got != want {
                return bad("reduced share differs");
            }
        }
        Op::Alltoall => {
            let len = orig.len();
            let splits: Vec<usize> = (0..n).map(|i| len * (i + 1) / n - len * i / n).collect();
            let (got, _) = comm.alltoall(&buf.a, &splits).map_err(|e| e.to_string())?;
            let offset = |j: usize| len * j / n;
            let want: Vec<f32> =
                (0..n).flat_map(|q| input_of(q, len)[offset(r)..offset(r) + splits[r]].to_vec()).collect();
            if got != want {
                return bad("received blocks differ");
            }
        }
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}

/// Times `iters` iterations, each after a barrier; returns each iteration's time on the slowest
/// rank.
fn timed(comm: &mut Communicator, op: Op, buf: &mut Buffers, iters: usize) -> Result<Vec<f64>, String> {
    let mut times = vec![0f64; iters];
    for slot in times.iter_mut() {
        comm.barrier().map_err(|e| e.to_string())?;
        let t = Instant::now();
        run_op(comm, op, buf).map_err(|e| e.to_string())?;
        *slot = t.elapsed().as_secs_f64();
    }
    comm.allreduce(&mut times, ReduceOp::Max).map_err(|e| e.to_string())?;
    Ok(times)
}

/// `--tensors`: the engine variants against one plain allreduce of the same bytes.
fn tensors_worker(args: &Args) -> Result<(), String> {
    let (set, params) = match args.tensors {
        Some(TensorSet::Small) => ("small", (0..1024).map(|i| (format!("small.{i}"), vec![256])).collect()),
        _ => ("resnet50", resnet50::resnet50_parameters()),
    };
    let rows = tensors::run(params, args.min_time, args.min_iters, &args.timeline_dir)?;
    let n: usize = std::env::var("FERROVOD_SIZE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let rank: usize = std::env::var("FERROVOD_RANK").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    if rank != 0 {
        return Ok(());
    }
    let base = rows[0].median_s;
    println!(
        "# ferrovod-bench: {set} gradients, {} tensors, {} bytes f32, on {n} processes; time = median step of the slowest rank",
        rows[1].tensors, rows[0].bytes
    );
    println!(
        "{:>16} {:>9} {:>8} {:>12} {:>4} {:>6} {:>10} {:>12} {:>13}",
        "variant", "transport", "tensors", "bytes", "np", "iters", "time(ms)", "busbw(GB/s)", "vs allreduce"
    );
    let mut json = Vec::new();
    for r in &rows {
        let algbw = r.bytes as f64 / r.median_s / 1e9;
        println!(
            "{:>16} {:>9} {:>8} {:>12} {:>4} {:>6} {:>10.2} {:>12.3} {:>12.2}x",
            r.variant,
            r.transport,
            r.tensors,
            r.bytes,
            n,
            r.iters,
            r.median_s * 1e3,
            algbw * bus_factor(Op::Allreduce, n),
            r.median_s / base
        );
        json.push(Row {
            implementation: "ferrovod",
            op: r.variant,
            transport: r.transport,
            algorithm: "engine",
            np: n,
            dtype: "f32",
            bytes: r.bytes,
            iters: r.iters,
            median_s: r.median_s,
            algbw_gbs: algbw,
            busbw_gbs: algbw * bus_factor(Op::Allreduce, n),
        });
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

fn worker(args: &Args) -> Result<(), String> {
    if args.tensors.is_some() {
        return tensors_worker(args);
    }
    let mut comm = Communicator::from_env().map_err(|e| e.to_string())?;
    let (r, n) = (comm.rank(), comm.size());
    let e = |e: ferrovod::Error| e.to_string();
    let mut rows = Vec::new();
    if r == 0 {
        println!(
            "# ferrovod-bench: {} on {n} processes, f32; time = median over iterations of the slowest rank",
            name(args.op)
        );
        println!(
            "{:>12} {:>12} {:>6} {:>14} {:>9} {:>18} {:>4} {:>7} {:>11} {:>12} {:>12}",
            "size(B)",
            "count",
            "type",
            "op",
            "transport",
            "algorithm",
            "np",
            "iters",
            "time(us)",
            "algbw(GB/s)",
            "busbw(GB/s)"
        );
    }
    for &bytes in args.sizes() {
        check(&mut comm, args.op, bytes)?;
        let mut buf = buffers(args.op, bytes, n, r);
        // Zeros from here on: sums stay finite however many iterations run.
        buf.a.iter_mut().for_each(|x| *x = 0.0);
        for _ in 0..2 {
            run_op(&mut comm, args.op, &mut buf).map_err(e)?;
        }
        let algorithm = comm.last_algorithm();
        // Estimate from the median of a few timed iterations (max over ranks): a single one is
        // too noisy to size the run.
        let mut est = timed(&mut comm, args.op, &mut buf, 5)?;
        let est = median(&mut est);
        let iters = ((args.min_time / est.max(1e-7)).ceil() as usize).clamp(args.min_iters, 100_000);
        let mut times = timed(&mut comm, args.op, &mut buf, iters)?;
        let med = median(&mut times);
        let algbw = bytes as f64 / med / 1e9;
        let row = Row {
            implementation: "ferrovod",
            op: name(args.op),
            // The hierarchical allreduce runs within hosts over shared memory, between them
            // over the job's transport.
            transport: if algorithm == "hierarchical" { "shm+tcp" } else { comm.transport() },
            algorithm,
            np: n,
            dtype: "f32",
            bytes,
            iters,
            median_s: med,
            algbw_gbs: algbw,
            busbw_gbs: algbw * bus_factor(args.op, n),
        };
        if r == 0 {
            println!(
                "{:>12} {:>12} {:>6} {:>14} {:>9} {:>18} {:>4} {:>7} {:>11.1} {:>12.3} {:>12.3}",
                row.bytes,
                row.bytes / 4,
                row.dtype,
                row.op,
                row.transport,
                row.algorithm,
                row.np,
                row.iters,
                row.median_s * 1e6,
                row.algbw_gbs,
                row.busbw_gbs
            );
        }
        rows.push(row);
    }
    if let (0, Some(path)) = (r, &args.json) {
        let text = serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

fn parent(args: &Args) -> Result<(), String> {
    if args.np == 0 {
        return Err("--np must be at least 1".into());
    }
    let sizes_ok =
        args.sizes().iter().all(|&b| b % (4 * args.np) == 0 || args.op == Op::Allreduce || args.op == Op::Broadcast);
    if !sizes_ok {
        return Err(format!("{} sizes must be multiples of 4 × np bytes", name(args.op)));
    }
    let child_args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.hosts == 0 || !args.np.is_multiple_of(args.hosts) {
        return Err(format!("--np {} is not a multiple of --hosts {}", args.np, args.hosts));
    }
    let hosts = args.hosts;
    launch(&Launch { np: args.np, hosts, transport: args.transport, args: &child_args, env: &[], quiet: false })
}

/// One run of N local processes of this binary as ranks.
struct Launch<'a> {
    np: usize,
    /// Hosts faked (see `Args::hosts`); 1: none.
    hosts: usize,
    transport: TransportArg,
    /// The ranks' arguments (`--worker` is added).
    args: &'a [std::ffi::OsString],
    /// Environment beyond the rank's own.
    env: &'a [(&'a str, &'a str)],
    /// Drop the ranks' standard output.
    quiet: bool,
}

/// Starts the ranks of `run` with a fresh store and secret and waits for all of them; on the
/// first failure stops the rest.
fn launch(run: &Launch<'_>) -> Result<(), String> {
    let secret = Secret::generate_hex().map_err(|e| e.to_string())?;
    let store =
        StoreServer::bind("127.0.0.1:0", Secret::new(secret.clone().into_bytes())).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut children: Vec<Child> = Vec::new();
    for rank in 0..run.np {
        let mut cmd = Command::new(&exe);
        // Killing the benchmark kills its ranks.
        ferrovod::os::killed_with_parent(&mut cmd);
        cmd.args(run.args)
            .arg("--worker")
            .env("FERROVOD_RANK", rank.to_string())
            .env("FERROVOD_SIZE", run.np.to_string())
            .env("FERROVOD_RENDEZVOUS", store.local_addr().to_string())
            .env("FERROVOD_SECRET", &secret)
            .env("FERROVOD_TRANSPORT", transport_name(run.transport))
            .envs(run.env.iter().copied());
        if run.hosts > 1 {
            cmd.env("FERROVOD_HOSTNAME", format!("bench-host-{}", rank / (run.np / run.hosts)));
        }
        if run.quiet {
            cmd.stdout(std::process::Stdio::null());
        }
        match cmd.spawn() {
            Ok(child) => children.push(child),
            Err(e) => {
                for c in &mut children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(format!("starting rank {rank}: {e}"));
            }
        }
    }
    // Wait for all; on the first failure stop the rest.
    let mut failed = None;
    let mut left = children.len();
    while left > 0 {
        left = 0;
        for (rank, c) in children.iter_mut().enumerate() {
            match c.try_wait() {
                Ok(Some(st)) if !st.success() && failed.is_none() => {
                    failed = Some(format!("rank {rank} exited with {st}"))
                }
                Ok(Some(_)) => {}
                _ => left += 1,
            }
        }
        if failed.is_some() {
            for c in &mut children {
                let _ = c.kill();
                let _ = c.wait();
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(store);
    failed.map_or(Ok(()), Err)
}

fn transport_name(t: TransportArg) -> &'static str {
    match t {
        TransportArg::Auto => "auto",
        TransportArg::Shm => "shm",
        TransportArg::Tcp => "tcp",
    }
}

impl Args {
    /// The sizes asked for, or the mode's default.
    fn sizes(&self) -> &[usize] {
        const DEFAULT: &[usize] = &[4 << 10, 1 << 20, 16 << 20, 64 << 20];
        const MODEL: &[usize] = &[4 << 10, 256 << 10, 4 << 20, 16 << 20];
        match &self.sizes {
            Some(s) => &s.0,
            None if self.model => MODEL,
            None => DEFAULT,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match (args.worker, args.probe, args.model) {
        (true, true, _) => model_measure::probe_worker(&args),
        (true, false, _) => worker(&args),
        (false, _, true) => model_measure::run(&args),
        (false, _, false) => parent(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrovod-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
