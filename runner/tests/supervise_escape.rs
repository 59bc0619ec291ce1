//! A process that a rank starts in a session of its own (`setsid`, Python's
//! `start_new_session=True`: a data-loader helper, a server) ends with the job, however the job
//! ends: normally, on SIGTERM to the launcher, or with the launcher SIGKILLed.

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

/// The `setsid` grandchildren the ranks below `n` wrote to `dir/rank-R.setsid`. Every test
/// kills whatever of them is still alive when it ends, pass or fail: no strays from the tests.
struct Strays(Vec<u32>);

impl Strays {
    fn read(dir: &Path, n: usize) -> Strays {
        let ok = wait_for(Duration::from_secs(20), || (0..n).all(|r| dir.join(format!("rank-{r}.setsid")).exists()));
        let pids = (0..n)
            .filter_map(|r| std::fs::read_to_string(dir.join(format!("rank-{r}.setsid"))).ok())
            .filter_map(|t| t.trim().parse().ok())
            .collect::<Vec<u32>>();
        assert!(ok && pids.len() == n, "not every rank of {n} wrote its setsid grandchild's pid: {pids:?}");
        Strays(pids)
    }

    /// Waits (up to `limit`) for all of them to end; returns those still alive.
    fn left_after(&self, limit: Duration) -> Vec<u32> {
        wait_for(limit, || self.0.iter().all(|&p| !alive(p)));
        self.0.iter().copied().filter(|&p| alive(p)).collect()
    }
}

impl Drop for Strays {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("fake-worker"));
            if alive(pid) && ours {
                kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

fn job(pids: &TempDir, extra: &[&str]) -> std::process::Command {
    let mut cmd = launcher();
    cmd.env("FERROVOD_GRACE_PERIOD", "1");
    cmd.args(["-np", "2", "--", FAKE, "--pid-dir", &pids.arg(), "--setsid-child"]);
    cmd.args(extra);
    cmd
}

#[test]
fn a_setsid_grandchild_ends_with_a_job_that_succeeds() {
    let pids = TempDir::new("escape-ok");
    // The ranks start their helper and exit 0 at once: the helper is orphaned while the job
    // is still running.
    let f = run(job(&pids, &[]), Duration::from_secs(30));
    let strays = Strays::read(pids.path(), 2);
    assert_eq!(f.code(), Some(0), "{f:?}");
    let left = strays.left_after(Duration::from_secs(3));
    assert!(left.is_empty(), "setsid grandchildren {left:?} outlived a job that ended normally\n{}", f.stderr);
}

#[test]
fn a_setsid_grandchild_ends_when_the_launcher_gets_sigterm() {
    let pids = TempDir::new("escape-term");
    // Rank and helper ignore SIGTERM: the helper needs the SIGKILL after the grace period too.
    let running = start(job(&pids, &["--ignore-term", "--sleep", "60"]));
    wait_ready(pids.path(), 2, Duration::from_secs(20));
    let strays = Strays::read(pids.path(), 2);
    kill(running.pid(), libc::SIGTERM);
    let f = running.finish(Duration::from_secs(30));
    assert_eq!(f.code(), Some(128 + libc::SIGTERM), "{f:?}");
    let left = strays.left_after(Duration::from_secs(3));
    assert!(left.is_empty(), "setsid grandchildren {left:?} outlived the launcher's SIGTERM\n{}", f.stderr);
}

#[test]
fn a_setsid_grandchild_ends_when_the_launcher_is_killed() {
    let pids = TempDir::new("escape-kill");
    let running = start(job(&pids, &["--sleep", "60"]));
    wait_ready(pids.path(), 2, Duration::from_secs(20));
    let strays = Strays::read(pids.path(), 2);
    kill(running.pid(), libc::SIGKILL);
    let f = running.finish(Duration::from_secs(10));
    assert_eq!(f.code(), None, "killed by a signal");
    let left = strays.left_after(Duration::from_secs(3));
    assert!(left.is_empty(), "setsid grandchildren {left:?} outlived a SIGKILLed launcher");
}
