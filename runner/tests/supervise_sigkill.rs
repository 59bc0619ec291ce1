//! A launcher killed with SIGKILL takes its processes and their children with it.

mod support;

use std::time::Duration;

use support::*;

#[test]
fn sigkill_of_the_launcher_leaves_no_child_or_grandchild() {
    let pids = TempDir::new("kill-pids");
    let mut cmd = launcher();
    cmd.args([
        "-np",
        "3",
        "--",
        FAKE,
        "--pid-dir",
        &pids.arg(),
        "--grandchildren",
        "2",
        "--ignore-term",
        "--sleep",
        "60",
    ]);
    let running = start(cmd);
    let all = wait_ready(pids.path(), 3, Duration::from_secs(20));
    assert_eq!(all.iter().map(Vec::len).sum::<usize>(), 9);
    kill(running.pid(), libc::SIGKILL);
    let f = running.finish(Duration::from_secs(10));
    assert_eq!(f.status.code(), None, "killed by a signal");
    let gone = wait_for(Duration::from_secs(2), || all.iter().flatten().all(|&p| !alive(p)));
    let left: Vec<u32> = all.iter().flatten().copied().filter(|&p| alive(p)).collect();
    assert!(gone, "still alive 2 s after the launcher was killed: {left:?}");
}
