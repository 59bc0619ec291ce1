//! Reading the plan is bounded whatever its source: a signal ends the wait at once (128 + N),
//! so does the connect timeout, and a source that never ends (`/dev/zero`) is refused after the
//! size cap instead of filling memory.

mod support;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{ChildStdin, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// Whether `pid` blocks `sig` (the launcher blocks its handled signals before it reads the
/// plan; from then on a signal is queued for it instead of killing it).
fn blocks(pid: i32, sig: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap_or(0);
    mask & (1 << (sig - 1)) != 0
}

fn mkfifo(dir: &TempDir) -> String {
    let p = dir.join("plan.fifo");
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo: {}", std::io::Error::last_os_error());
    p.display().to_string()
}

/// Starts a launcher waiting for its plan from `--plan source` (`-`: a pipe on standard input
/// that stays open and empty), with a connect timeout far longer than the test.
fn waiting(source: &str) -> (Running, Option<ChildStdin>) {
    let mut cmd = launcher();
    cmd.env("FERROVOD_CONNECT_TIMEOUT", "300");
    if source == "-" {
        cmd.stdin(Stdio::piped());
    }
    cmd.args(["--plan", source, "--", FAKE]);
    let mut running = start(cmd);
    let stdin = running.child.stdin.take();
    let pid = running.pid();
    assert!(wait_for(Duration::from_secs(10), || blocks(pid, libc::SIGTERM)), "the launcher never blocked SIGTERM");
    // Let it get into its read.
    std::thread::sleep(Duration::from_millis(200));
    (running, stdin)
}

fn signal_ends_the_wait(source: &str, sig: i32) {
    let (running, stdin) = waiting(source);
    let sent = Instant::now();
    kill(running.pid(), sig);
    let f = running.finish(Duration::from_secs(10));
    drop(stdin);
    assert_eq!(f.code(), Some(128 + sig), "{f:?}");
    assert!(sent.elapsed() < Duration::from_secs(2), "took {:?}", sent.elapsed());
    assert!(f.stderr.contains("while reading the plan"), "{}", f.stderr);
    assert!(f.stderr.contains(&ferrovod::os::signal_name(sig)), "{}", f.stderr);
}

#[test]
fn sigterm_while_reading_the_plan_from_stdin() {
    signal_ends_the_wait("-", libc::SIGTERM);
}

#[test]
fn sigint_while_reading_the_plan_from_stdin() {
    signal_ends_the_wait("-", libc::SIGINT);
}

#[test]
fn sigterm_while_waiting_for_a_fifo_writer() {
    let dir = TempDir::new("plan-fifo-term");
    signal_ends_the_wait(&mkfifo(&dir), libc::SIGTERM);
}

#[test]
fn sigint_while_waiting_for_a_fifo_writer() {
    let dir = TempDir::new("plan-fifo-int");
    signal_ends_the_wait(&mkfifo(&dir), libc::SIGINT);
}

#[test]
fn a_fifo_nobody_writes_ends_at_the_connect_timeout() {
    let dir = TempDir::new("plan-fifo-timeout");
    let fifo = mkfifo(&dir);
    let mut cmd = launcher();
    cmd.env("FERROVOD_CONNECT_TIMEOUT", "1");
    cmd.args(["--plan", &fifo, "--", FAKE]);
    let f = run(cmd, Duration::from_secs(10));
    assert_eq!(f.code(), Some(2), "{f:?}");
    assert!(f.elapsed < Duration::from_secs(4), "took {:?}", f.elapsed);
    assert!(f.stderr.contains("no complete plan within 1s"), "{}", f.stderr);
}

#[test]
fn a_plan_written_to_a_fifo_is_read() {
    let dir = TempDir::new("plan-fifo-good");
    let fifo = mkfifo(&dir);
    let plan = format!(
        r#"{{"version":1,"job_id":"fifo","rendezvous":"127.0.0.1:{}","task_index":0,"tasks":[{{"index":0,"host":"127.0.0.1","gpus":[],"slots":1}}]}}"#,
        free_port()
    );
    let mut cmd = launcher();
    cmd.args(["--plan", &fifo, "--", FAKE]);
    let running = start(cmd);
    // Opening for writing blocks until the launcher opened it for reading.
    let writer = std::thread::spawn(move || std::fs::write(Path::new(&fifo), plan));
    let f = running.finish(Duration::from_secs(20));
    writer.join().unwrap().unwrap();
    assert_eq!(f.code(), Some(0), "{f:?}");
}

#[test]
fn dev_zero_as_a_plan_is_refused_in_bounded_memory() {
    let mut cmd = launcher();
    // Without a cap on what is read, the launcher would read until memory runs out: give it
    // 1 GiB of address space, far above the 16 MiB cap, so that it fails quickly instead.
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: 1 << 30, rlim_max: 1 << 30 };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.args(["--plan", "/dev/zero", "--", FAKE]);
    let f = run(cmd, Duration::from_secs(20));
    assert_eq!(f.code(), Some(2), "{f:?}");
    assert!(f.stderr.contains("/dev/zero"), "{}", f.stderr);
    assert!(f.stderr.contains("larger than 16777216 bytes"), "{}", f.stderr);
}

#[test]
fn an_endless_stdin_is_refused_too() {
    let mut cmd = launcher();
    cmd.stdin(Stdio::from(std::fs::File::open("/dev/zero").unwrap()));
    cmd.args(["--plan", "-", "--", FAKE]);
    let f = run(cmd, Duration::from_secs(20));
    assert_eq!(f.code(), Some(2), "{f:?}");
    assert!(f.stderr.contains("standard input"), "{}", f.stderr);
    assert!(f.stderr.contains("larger than"), "{}", f.stderr);
}
