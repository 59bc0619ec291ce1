//! The launcher stops the job when its parent dies (a Spark task's Python worker is SIGKILLed
//! on cancel, and nothing it started may survive).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

#[test]
fn the_job_stops_when_the_launchers_parent_is_killed() {
    let pids = TempDir::new("parent-pids");
    let script = format!(
        "'{RUN}' -np 2 -- '{FAKE}' --pid-dir '{}' --grandchildren 1 --sleep 60 >/dev/null 2>&1 & echo $!; wait",
        pids.arg()
    );
    let mut shell = Command::new("sh");
    shell.args(["-c", &script]).env("FERROVOD_GRACE_PERIOD", "1").stdout(Stdio::piped()).stdin(Stdio::null());
    let mut shell = shell.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(shell.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let launcher_pid: u32 = line.trim().parse().unwrap();
    let all = wait_ready(pids.path(), 2, Duration::from_secs(20));

    shell.kill().unwrap(); // SIGKILL: the shell cannot pass anything on
    shell.wait().unwrap();
    let gone = wait_for(Duration::from_secs(4), || !alive(launcher_pid) && all.iter().flatten().all(|&p| !alive(p)));
    let left: Vec<u32> =
        std::iter::once(launcher_pid).chain(all.iter().flatten().copied()).filter(|&p| alive(p)).collect();
    assert!(gone, "still alive after the launcher's parent died: {left:?}");
}
