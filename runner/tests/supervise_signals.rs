//! Signals to the launcher: forwarded to every process group; a process that ignores SIGTERM
//! is killed after the grace period.

mod support;

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn sigterm_is_forwarded_and_sigkill_follows_the_grace_period() {
    let pids = TempDir::new("term-pids");
    let mut cmd = launcher();
    cmd.env("FERROVOD_GRACE_PERIOD", "1");
    cmd.args([
        "-np",
        "2",
        "--",
        FAKE,
        "--pid-dir",
        &pids.arg(),
        "--ignore-term",
        "--grandchildren",
        "1",
        "--sleep",
        "60",
    ]);
    let running = start(cmd);
    let all = wait_ready(pids.path(), 2, Duration::from_secs(20));
    let sent = Instant::now();
    kill(running.pid(), libc::SIGTERM);
    let f = running.finish(Duration::from_secs(30));
    let took = sent.elapsed();
    assert_eq!(f.code(), Some(128 + libc::SIGTERM), "{f:?}");
    assert!(took >= Duration::from_millis(950), "SIGKILL came before the grace period: {took:?}");
    assert!(took < Duration::from_secs(4), "SIGKILL came late: {took:?}");
    for pid in all.iter().flatten() {
        assert!(!alive(*pid), "pid {pid} survived");
    }
    assert!(f.stderr.contains("received SIGTERM"), "{}", f.stderr);
}

#[test]
fn sigint_is_forwarded() {
    sigint_stops_every_rank("int-pids", 3, launcher());
}

#[test]
fn sigint_is_forwarded_when_the_launcher_started_with_it_ignored() {
    // As a shell starts a background job: SIGINT and SIGQUIT ignored, which exec keeps. The
    // launcher still reads them (it blocks them), and its ranks must not ignore what it forwards.
    let mut cmd = launcher();
    // SAFETY: signal() is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            libc::signal(libc::SIGQUIT, libc::SIG_IGN);
            Ok(())
        });
    }
    sigint_stops_every_rank("int-ignored-pids", 2, cmd);
}

/// Starts `np` sleeping ranks under `cmd`, sends the launcher SIGINT, and checks that it
/// exits with 128 + SIGINT at once (well within its 10 s grace period) and leaves no rank.
fn sigint_stops_every_rank(dir: &str, np: usize, mut cmd: Command) {
    let pids = TempDir::new(dir);
    cmd.env("FERROVOD_GRACE_PERIOD", "10");
    cmd.args(["-np", &np.to_string(), "--", FAKE, "--pid-dir", &pids.arg(), "--sleep", "60"]);
    let running = start(cmd);
    let all = wait_ready(pids.path(), np, Duration::from_secs(20));
    let sent = Instant::now();
    kill(running.pid(), libc::SIGINT);
    let f = running.finish(Duration::from_secs(30));
    assert_eq!(f.code(), Some(128 + libc::SIGINT), "{f:?}");
    assert!(sent.elapsed() < Duration::from_secs(2), "the ranks did not stop on SIGINT: {:?}", sent.elapsed());
    for pid in all.iter().flatten() {
        assert!(!alive(*pid), "pid {pid} survived");
    }
}

#[test]
fn a_second_signal_kills_at_once() {
    let pids = TempDir::new("twice-pids");
    let mut cmd = launcher();
    cmd.env("FERROVOD_GRACE_PERIOD", "30");
    cmd.args(["-np", "2", "--", FAKE, "--pid-dir", &pids.arg(), "--ignore-term", "--sleep", "60"]);
    let running = start(cmd);
    wait_ready(pids.path(), 2, Duration::from_secs(20));
    let sent = Instant::now();
    kill(running.pid(), libc::SIGTERM);
    kill(running.pid(), libc::SIGINT);
    let f = running.finish(Duration::from_secs(30));
    // Whichever the launcher read first is the reason; the second one kills at once instead
    // of waiting out the 30 s grace period.
    let code = f.code();
    assert!(code == Some(128 + libc::SIGTERM) || code == Some(128 + libc::SIGINT), "{f:?}");
    assert!(sent.elapsed() < Duration::from_secs(3), "took {:?}", sent.elapsed());
}
