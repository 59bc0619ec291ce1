//! hello: joins the job from the environment, runs a barrier and a small allreduce, checks the
//! result and prints its place. With `--bytes N` (suffixes KiB, MiB) it also allreduces N bytes
//! of f32 and prints the time and bus bandwidth.
//!
//! `ferrovod-run -np 4 -- hello --bytes 64MiB`

use std::process::ExitCode;
use std::time::Instant;

use ferrovod::{Communicator, ReduceOp};

fn parse_bytes(s: &str) -> Option<usize> {
    let (num, mult) = match s {
        s if s.ends_with("GiB") => (&s[..s.len() - 3], 1 << 30),
        s if s.ends_with("MiB") => (&s[..s.len() - 3], 1 << 20),
        s if s.ends_with("KiB") => (&s[..s.len() - 3], 1 << 10),
        s => (s, 1),
    };
    num.parse::<usize>().ok().map(|n| n * mult)
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bytes = match args.as_slice() {
        [] => 0,
        [flag, v] if flag == "--bytes" => {
            parse_bytes(v).ok_or_else(|| format!("--bytes {v:?}: expected a size like 64MiB"))?
        }
        _ => return Err("usage: hello [--bytes SIZE]".into()),
    };
    let mut comm = Communicator::from_env().map_err(|e| e.to_string())?;
    let (rank, size) = (comm.rank(), comm.size());
    comm.barrier().map_err(|e| e.to_string())?;

    let mut v = [rank as f32 + 1.0; 4];
    comm.allreduce(&mut v, ReduceOp::Sum).map_err(|e| e.to_string())?;
    let want = (size * (size + 1) / 2) as f32;
    if v != [want; 4] {
        return Err(format!("allreduce gave {v:?}, expected {want} everywhere"));
    }
    println!(
        "hello from rank {rank} of {size} (local {}/{}, cross {}/{}, host {}): allreduce ok, sum = {want}",
        comm.local_rank(),
        comm.local_size(),
        comm.cross_rank(),
        comm.cross_size(),
        ferrovod::os::hostname()
    );

    if bytes > 0 {
        let n = bytes / 4;
        let mut big: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 + rank as f32).collect();
        comm.barrier().map_err(|e| e.to_string())?;
        let t = Instant::now();
        comm.allreduce(&mut big, ReduceOp::Sum).map_err(|e| e.to_string())?;
        let secs = t.elapsed().as_secs_f64();
        let rank_sum = (size * (size - 1) / 2) as f32;
        if let Some(i) = (0..n).find(|&i| big[i] != (i % 1000) as f32 * size as f32 + rank_sum) {
            return Err(format!(
                "large allreduce: element {i} is {}, expected {}",
                big[i],
                (i % 1000) as f32 * size as f32 + rank_sum
            ));
        }
        if rank == 0 {
            let busbw = bytes as f64 / secs * 2.0 * (size as f64 - 1.0) / size as f64 / 1e9;
            println!(
                "rank 0: allreduce of {bytes} bytes (f32 sum) on {size} ranks took {:.1} ms, bus bandwidth {busbw:.2} GB/s, result checked",
                secs * 1e3
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hello: {e}");
            ExitCode::FAILURE
        }
    }
}
