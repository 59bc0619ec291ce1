//! A rank for the multi-process tests. Joins from the environment, then runs one scenario:
//!
//! - `collectives DTYPES OPS COUNTS`: `check_collectives` (comma lists; `all`; counts
//!   `small` = 0,1,7,4093, `1mib`, `64mib`). Prints `ok` on success.
//! - `loop BYTES`: allreduces BYTES of f32 forever, printing `ready` after the first one.
//! - `mismatch-count`, `mismatch-dtype`: rank 1 calls allreduce with other arguments.
//! - `stall`: rank 1 sleeps instead of calling allreduce.
//!
//! Exit codes: 0 success, 3 a collective failed (the error on stderr), 2 bad usage.

use std::process::ExitCode;

use ferrovod::{Communicator, DType, ReduceOp};
use ferrovod_tests::{Plan, check_collectives, counts};

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
            println!("ok");
            Ok(())
        }
        ["loop", bytes] => {
            let n: usize = bytes.parse::<usize>().map_err(|e| e.to_string())? / 4;
            let mut buf = vec![1.0f32; n];
            comm.allreduce(&mut buf, ReduceOp::Sum).map_err(|e| e.to_string())?;
            println!("ready");
            loop {
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
        ["stall"] => {
            if r == 1 {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
            comm.allreduce(&mut [0f32; 64], ReduceOp::Sum).map_err(|e| e.to_string())
        }
        _ => Err(format!("usage: see the file's docs; got {args:?}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
            ExitCode::from(3)
        }
    }
}
