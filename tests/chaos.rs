//! The chaos harness's CI run: 20 trials (issue 18), each a random mix of collectives on 4
//! ranks struck once by a kill or a stop. Every trial must be safe: every survivor fails, no
//! wrong result, no hang, nothing left (see `chaos/trial.rs`). Naming the culprit within the
//! timeout is printed, not asserted: a rank stopped while rank 0 decides a stall is still named
//! late or with another rank in about 3% of trials (`benches/RESULTS.md`), which 20 trials
//! would turn into a coin toss. `FERROVOD_CHAOS_TRIALS` changes the count; the long runs are
//! `ferrovod-chaos --trials 200`.

use std::process::Command;

use ferrovod_tests::workspace_bin;

#[test]
fn twenty_random_faults_end_safely_every_survivor_failing() {
    let trials = std::env::var("FERROVOD_CHAOS_TRIALS").unwrap_or_else(|_| "20".into());
    let out = Command::new(workspace_bin("ferrovod-chaos"))
        .args(["--trials", &trials, "--timeout", "5"])
        .output()
        .expect("ferrovod-chaos runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "not every trial was safe (the seeds above run a trial again)");
    assert!(stdout.contains(&format!("| **all** | {trials} | {trials} |")), "{stdout}");
}
