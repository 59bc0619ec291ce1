//! fake-worker: a stand-in training process for the launcher's tests.
//!
//! ```text
//! fake-worker [--report-dir DIR] [--pid-dir DIR] [--grandchildren N] [--ignore-term]
//!             [--lines N] [--stderr-lines N] [--long-line BYTES] [--partial TEXT]
//!             [--fail-rank R --fail-code C] [--sleep SECS] [--exit CODE]
//! ```
//!
//! In this order: ignores SIGTERM and SIGINT (`--ignore-term`); writes its environment, argv and pids as JSON to
//! `DIR/rank-R.json`; starts N grandchildren (copies of itself that sleep 300 s, in its process
//! group); writes its pid and theirs to `DIR/rank-R.pids` (one per line, own first; written
//! atomically, so the file's presence means "ready"); prints the lines; the failing rank waits
//! until every rank's pid file exists (with `--pid-dir`) and exits with its code; the others
//! sleep and exit with `--exit`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Args {
    report_dir: Option<PathBuf>,
    pid_dir: Option<PathBuf>,
    grandchildren: usize,
    ignore_term: bool,
    lines: usize,
    stderr_lines: usize,
    long_line: usize,
    partial: Option<String>,
    fail_rank: Option<usize>,
    fail_code: i32,
    sleep: f64,
    exit: i32,
}

fn parse() -> Result<Args, String> {
    let mut a = Args { fail_code: 1, ..Args::default() };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--ignore-term" {
            a.ignore_term = true;
            continue;
        }
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|_| format!("{flag}: {v:?} is not a count"));
        match flag.as_str() {
            "--report-dir" => a.report_dir = Some(v.into()),
            "--pid-dir" => a.pid_dir = Some(v.into()),
            "--grandchildren" => a.grandchildren = num(&v)?,
            "--lines" => a.lines = num(&v)?,
            "--stderr-lines" => a.stderr_lines = num(&v)?,
            "--long-line" => a.long_line = num(&v)?,
            "--partial" => a.partial = Some(v),
            "--fail-rank" => a.fail_rank = Some(num(&v)?),
            "--fail-code" => a.fail_code = v.parse().map_err(|_| format!("--fail-code {v:?}"))?,
            "--sleep" => a.sleep = v.parse().map_err(|_| format!("--sleep {v:?}"))?,
            "--exit" => a.exit = v.parse().map_err(|_| format!("--exit {v:?}"))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

fn write_atomic(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

fn run() -> Result<i32, String> {
    let a = parse()?;
    let rank: usize = std::env::var("FERROVOD_RANK").ok().and_then(|r| r.parse().ok()).unwrap_or(0);
    let size: usize = std::env::var("FERROVOD_SIZE").ok().and_then(|r| r.parse().ok()).unwrap_or(1);
    if a.ignore_term {
        // SAFETY: installing SIG_IGN has no memory-safety preconditions.
        unsafe {
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
            libc::signal(libc::SIGINT, libc::SIG_IGN);
        }
    }
    // SAFETY: plain system calls without arguments.
    let (pid, ppid, pgid) = unsafe { (libc::getpid(), libc::getppid(), libc::getpgid(0)) };
    if let Some(dir) = &a.report_dir {
        let env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| {
                k.starts_with("FERROVOD_")
                    || k == "CUDA_VISIBLE_DEVICES"
                    || ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"]
                        .contains(&k.as_str())
            })
            .collect();
        let argv: Vec<String> = std::env::args().collect();
        let cmdline = std::fs::read("/proc/self/cmdline").unwrap_or_default();
        let report = serde_json::json!({
            "env": env, "argv": argv, "cmdline": String::from_utf8_lossy(&cmdline),
            "pid": pid, "ppid": ppid, "pgid": pgid,
        });
        write_atomic(&dir.join(format!("rank-{rank}.json")), &report.to_string())?;
    }
    let mut pids = vec![pid as u32];
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    for _ in 0..a.grandchildren {
        let mut cmd = Command::new(&me);
        cmd.args(["--sleep", "300"]).stdin(Stdio::null());
        if a.ignore_term {
            cmd.arg("--ignore-term");
        }
        let child = cmd.spawn().map_err(|e| format!("starting a grandchild: {e}"))?;
        pids.push(child.id());
    }
    if let Some(dir) = &a.pid_dir {
        let text: String = pids.iter().map(|p| format!("{p}\n")).collect();
        write_atomic(&dir.join(format!("rank-{rank}.pids")), &text)?;
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for i in 0..a.lines {
            let _ = writeln!(out, "line {i} of rank {rank}");
        }
        if a.long_line > 0 {
            let _ = writeln!(out, "{}", "x".repeat(a.long_line));
        }
        if let Some(p) = &a.partial {
            let _ = write!(out, "{p}");
        }
        let _ = out.flush();
        let mut err = std::io::stderr().lock();
        for i in 0..a.stderr_lines {
            let _ = writeln!(err, "error line {i} of rank {rank}");
        }
    }
    if a.fail_rank == Some(rank) {
        if let Some(dir) = &a.pid_dir {
            let deadline = Instant::now() + Duration::from_secs(20);
            while (0..size).any(|r| !dir.join(format!("rank-{r}.pids")).exists()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        return Ok(a.fail_code);
    }
    if a.sleep > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(a.sleep));
    }
    Ok(a.exit)
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("fake-worker: {e}");
            ExitCode::from(99)
        }
    }
}
