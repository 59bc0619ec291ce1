//! fake-worker: a stand-in training process for the launcher's tests.
//!
//! ```text
//! fake-worker [--report-dir DIR] [--pid-dir DIR] [--grandchildren N] [--ignore-term]
//!             [--lines N] [--stderr-lines N] [--long-line BYTES] [--partial TEXT]
//!             [--fail-rank R --fail-code C] [--sleep SECS] [--exit CODE]
//!             [--setsid-child] [--exit-on-peer-death]
//! ```
//!
//! In this order: ignores SIGTERM and SIGINT (`--ignore-term`); writes its environment, argv and pids as JSON to
//! `DIR/rank-R.json`; starts N grandchildren (copies of itself that sleep 300 s, in its process
//! group); with `--setsid-child`, starts one more that leaves for a session of its own
//! (`setsid`, as a data-loader helper or a server might) and writes its pid to
//! `DIR/rank-R.setsid`; writes its pid and the grandchildren's (not the setsid one) to
//! `DIR/rank-R.pids` (one per line, own first; written atomically, so the file's presence
//! means "ready"); prints the lines; with `--exit-on-peer-death`, once every rank's pid file
//! exists, watches the other ranks and exits with code 1 as soon as one of them ends (as a
//! ferrovod rank whose collective fails on a dead peer does); the failing rank waits
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
    setsid_child: bool,
    exit_on_peer_death: bool,
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
        match flag.as_str() {
            "--ignore-term" => a.ignore_term = true,
            "--setsid-child" => a.setsid_child = true,
            "--exit-on-peer-death" => a.exit_on_peer_death = true,
            _ => {}
        }
        if ["--ignore-term", "--setsid-child", "--exit-on-peer-death"].contains(&flag.as_str()) {
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
                    || k.starts_with("HOROVOD_")
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
    if a.setsid_child {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(&me);
        cmd.args(["--sleep", "300"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        if a.ignore_term {
            cmd.arg("--ignore-term");
        }
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("starting a setsid grandchild: {e}"))?;
        if let Some(dir) = &a.pid_dir {
            write_atomic(&dir.join(format!("rank-{rank}.setsid")), &format!("{}\n", child.id()))?;
        }
    }
    if let Some(dir) = &a.pid_dir {
        let text: String = pids.iter().map(|p| format!("{p}\n")).collect();
        write_atomic(&dir.join(format!("rank-{rank}.pids")), &text)?;
        if a.exit_on_peer_death {
            let dir = dir.clone();
            std::thread::spawn(move || watch_peers(&dir, rank, size));
        }
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

/// Waits (up to 20 s) for every rank's pid file, then exits with code 1 as soon as another
/// rank ends.
fn watch_peers(dir: &Path, rank: usize, size: usize) {
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut fds = Vec::new();
    for r in (0..size).filter(|&r| r != rank) {
        let pid = loop {
            let text = std::fs::read_to_string(dir.join(format!("rank-{r}.pids"))).unwrap_or_default();
            if let Some(pid) = text.lines().next().and_then(|l| l.trim().parse::<i32>().ok()) {
                break pid;
            }
            if Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        match ferrovod::os::pidfd_open(pid) {
            Some(fd) => fds.push((r, fd)),
            None => {
                eprintln!("rank {rank}: rank {r} is gone");
                std::process::exit(1);
            }
        }
    }
    loop {
        let mut pfds: Vec<ferrovod::os::PollFd> = fds
            .iter()
            .map(|(_, fd)| ferrovod::os::PollFd { fd: fd.as_raw_fd(), read: true, write: false, ready: false })
            .collect();
        if ferrovod::os::poll(&mut pfds, Duration::from_secs(60)).is_err() {
            return;
        }
        if let Some(i) = pfds.iter().position(|p| p.ready) {
            eprintln!("rank {rank}: rank {} died", fds[i].0);
            std::process::exit(1);
        }
    }
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
