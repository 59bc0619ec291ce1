//! The engine with ranks as real OS processes over loopback TCP: out-of-order submission over
//! several steps (fusion on and off), the stall warning's log line, the stall timeout, and a
//! rank killed while the others allreduce through their engines.

use std::time::{Duration, Instant};

use ferrovod_tests::{Ended, World, workspace_bin};

fn worker() -> std::path::PathBuf {
    workspace_bin("ferrovod-test-worker")
}

/// Every rank's error text, after checking that each rank failed with exit code 3 (4: the
/// worker gave up on a handle the engine never completed; see its docs).
fn failed(ended: &[Ended], skip: Option<usize>) -> Vec<(usize, &str)> {
    let mut errors = Vec::new();
    for (rank, e) in ended.iter().enumerate() {
        if Some(rank) == skip {
            continue;
        }
        assert_eq!(e.code, Some(3), "rank {rank} should fail with 3; stdout: {}; stderr: {}", e.stdout, e.stderr);
        errors.push((rank, e.stderr.as_str()));
    }
    errors
}

/// Steps of 30 tensors submitted in a different order on every rank, summed exactly. Over
/// shared memory, fused pieces are packed straight into the stage's regions where they run on
/// its slots: every piece at N = 2, the short ones at N = 3 (whose full pieces take the split,
/// through the private piece); over TCP and without fusion, never.
#[test]
fn out_of_order_steps() {
    let env = |transport: &str, fusion: bool| {
        let mut env = vec![("FERROVOD_TIMEOUT", "60".to_string()), ("FERROVOD_TRANSPORT", transport.to_string())];
        if !fusion {
            env.push(("FERROVOD_FUSION_THRESHOLD", "0".to_string()));
        }
        env
    };
    for (n, env) in [(2, env("shm", true)), (3, env("shm", true)), (3, env("shm", false)), (3, env("tcp", true))] {
        let ended = World::spawn(n, &worker(), &["engine-steps", "5"], &env).wait(Duration::from_secs(180));
        for (rank, e) in ended.iter().enumerate() {
            assert_eq!(e.code, Some(0), "rank {rank} ({env:?}): {}", e.stderr);
            assert_eq!(e.stdout.trim(), "ok", "rank {rank} ({env:?}); stderr: {}", e.stderr);
        }
    }
}

/// Fused buckets of every dtype and op, exact: over shared memory at N = 2 to 5 (every piece
/// packed straight into the stage: on its slots at N = 2, on its split for the full pieces at
/// N >= 3, with shares of every size), and over TCP.
#[test]
fn fused_buckets_of_every_dtype_and_op() {
    for (n, transport) in [(2, "shm"), (3, "shm"), (4, "shm"), (5, "shm"), (2, "tcp")] {
        let env = [("FERROVOD_TIMEOUT", "60".to_string()), ("FERROVOD_TRANSPORT", transport.to_string())];
        let ended = World::spawn(n, &worker(), &["engine-ops"], &env).wait(Duration::from_secs(180));
        for (rank, e) in ended.iter().enumerate() {
            assert_eq!(e.code, Some(0), "rank {rank} ({env:?}): {}", e.stderr);
            assert_eq!(e.stdout.trim(), "ok", "rank {rank} ({env:?}); stderr: {}", e.stderr);
        }
    }
}

#[test]
fn stall_warning_logs_missing_rank_and_name() {
    let env = [("FERROVOD_STALL_WARNING", "0.5".to_string()), ("FERROVOD_STALL_TIMEOUT", "30".to_string())];
    let ended = World::spawn(2, &worker(), &["engine-late-rank", "2"], &env).wait(Duration::from_secs(60));
    for (rank, e) in ended.iter().enumerate() {
        assert_eq!(e.code, Some(0), "rank {rank}: {}", e.stderr);
        assert_eq!(e.stdout.trim(), "ok", "rank {rank}; stderr: {}", e.stderr);
    }
    let log = &ended[0].stderr;
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("stall warning")).collect();
    assert_eq!(warnings.len(), 1, "rank 0 should warn once about late.x: {log}");
    assert!(warnings[0].contains("\"late.x\"") && warnings[0].contains("[1]"), "{log}");
    assert!(!ended[1].stderr.contains("stall warning"), "only rank 0 logs stalls: {}", ended[1].stderr);
}

#[test]
fn stall_timeout_fails_every_rank() {
    let env = [
        ("FERROVOD_STALL_WARNING", "0.3".to_string()),
        ("FERROVOD_STALL_TIMEOUT", "1.5".to_string()),
        ("FERROVOD_TIMEOUT", "60".to_string()),
    ];
    let start = Instant::now();
    let ended = World::spawn(3, &worker(), &["engine-missing"], &env).wait(Duration::from_secs(30));
    let took = start.elapsed();
    for (rank, err) in failed(&ended, None) {
        assert!(err.contains(&format!("rank {rank}: stalled")), "rank {rank}: {err}");
        assert!(
            err.contains("\"never\"") && err.contains("rank(s) [2]"),
            "rank {rank} should name never and rank 2: {err}"
        );
        assert!(err.contains("FERROVOD_STALL_TIMEOUT"), "rank {rank}: {err}");
    }
    assert!(took < Duration::from_secs(10), "the ranks took {took:?} to fail");
}

#[test]
fn dead_peer_fails_every_engine_naming_it() {
    let timeout = 30;
    let mut world = World::spawn(3, &worker(), &["engine-loop"], &[("FERROVOD_TIMEOUT", timeout.to_string())]);
    world.wait_for_line(0, "ready", Duration::from_secs(60));
    // The ranks are in the middle of the next 4 MiB allreduce, or negotiating it.
    std::thread::sleep(Duration::from_millis(100));
    let victim = 1;
    // SAFETY: kill(2) on a child's pid; no memory is involved.
    unsafe { libc::kill(world.children[victim].id() as libc::pid_t, libc::SIGKILL) };
    let start = Instant::now();
    let ended = world.wait(Duration::from_secs(timeout + 10));
    let took = start.elapsed();
    assert_eq!(ended[victim].code, None, "rank 1 was killed by a signal");
    for (rank, err) in failed(&ended, Some(victim)) {
        assert!(err.contains(&format!("rank {rank}: ")) && err.contains("rank 1"), "rank {rank}: {err}");
    }
    // A closed connection is seen at once: well within FERROVOD_TIMEOUT.
    assert!(took < Duration::from_secs(timeout / 3), "survivors took {took:?}");
}
