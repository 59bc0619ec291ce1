//! The first failure stops the job: every other process (and what it started) is gone within
//! 2 s, and the launcher exits with the failing rank's code and one summary line.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[test]
fn a_rank_exiting_3_stops_the_others_and_sets_the_exit_code() {
    let pids = TempDir::new("fail-pids");
    let mut cmd = launcher();
    cmd.args(["-np", "4", "--", FAKE, "--pid-dir", &pids.arg(), "--grandchildren", "1"]);
    cmd.args(["--fail-rank", "2", "--fail-code", "3", "--sleep", "60"]);
    let running = start(cmd);
    let all = wait_ready(pids.path(), 4, Duration::from_secs(20));
    let ready = Instant::now();
    let f = running.finish(Duration::from_secs(30));
    let after_ready = ready.elapsed();
    assert_eq!(f.code(), Some(3), "{f:?}");
    assert!(after_ready < Duration::from_secs(2), "the job took {after_ready:?} to stop after the failure");
    for pid in all.iter().flatten() {
        assert!(!alive(*pid), "pid {pid} survived the job");
    }
    let summary: Vec<&str> = f.stderr.lines().filter(|l| l.starts_with("ferrovod-run:")).collect();
    assert_eq!(summary.len(), 1, "one summary line expected:\n{}", f.stderr);
    for part in ["rank 2", "host 127.0.0.1", "exited with code 3", "stopped 3 other processes"] {
        assert!(summary[0].contains(part), "{part:?} missing from {:?}", summary[0]);
    }
}

#[test]
fn a_rank_killed_by_a_signal_gives_128_plus_the_signal() {
    let mut cmd = launcher();
    cmd.args(["-np", "2", "--", "sh", "-c", r#"if [ "$FERROVOD_RANK" = 1 ]; then kill -9 $$; fi; sleep 30"#]);
    let f = run(cmd, Duration::from_secs(20));
    assert_eq!(f.code(), Some(137), "{f:?}");
    assert!(f.stderr.contains("rank 1") && f.stderr.contains("SIGKILL"), "{}", f.stderr);
}

#[test]
fn a_command_that_does_not_exist_exits_127() {
    let mut cmd = launcher();
    cmd.args(["-np", "2", "--", "/nonexistent/ferrovod-test-program"]);
    let f = run(cmd, Duration::from_secs(20));
    assert_eq!(f.code(), Some(127), "{f:?}");
    assert!(
        f.stderr.contains("could not start") && f.stderr.contains("/nonexistent/ferrovod-test-program"),
        "{}",
        f.stderr
    );
}

#[test]
fn success_leaves_nothing_behind() {
    // Ranks that exit 0 but leave a background process in their group: the launcher ends it.
    let pids = TempDir::new("ok-pids");
    let mut cmd = launcher();
    cmd.args(["-np", "2", "--", FAKE, "--pid-dir", &pids.arg(), "--grandchildren", "1"]);
    let f = run(cmd, Duration::from_secs(20));
    assert_eq!(f.code(), Some(0), "{f:?}");
    for pid in read_pids(pids.path(), 2).iter().flatten() {
        assert!(!alive(*pid), "pid {pid} survived a successful job");
    }
}

#[test]
fn a_parent_that_ignores_sigchld_does_not_hide_the_ranks_exits() {
    use std::os::unix::process::CommandExt;
    let mut cmd = launcher();
    cmd.args(["-np", "2", "--", FAKE, "--fail-rank", "1", "--fail-code", "5"]);
    // SAFETY: signal(2) is async-signal-safe; the child execs right after.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGCHLD, libc::SIG_IGN);
            Ok(())
        })
    };
    let f = run(cmd, Duration::from_secs(20));
    assert_eq!(f.code(), Some(5), "{f:?}");
}
