//! The hierarchical allreduce with ranks as real processes on hosts faked on this machine
//! (`FERROVOD_HOSTNAME` per group of ranks): within a faked host the ranks share memory,
//! between hosts they talk TCP, as on real hosts. Results are checked element by element
//! against the serial reference, forced on and forced off (the flat result), and a rank killed
//! in the middle is named by every other.

use std::time::{Duration, Instant};

use ferrovod_tests::{Ended, World, workspace_bin};

fn worker() -> std::path::PathBuf {
    workspace_bin("ferrovod-test-worker")
}

/// Runs `args` on `hosts` × `per_host` faked hosts and checks that every rank succeeded and
/// printed `want`.
fn run(hosts: usize, per_host: usize, args: &[&str], env: &[(&str, String)], want: &str) -> Vec<Ended> {
    let ended = World::spawn_hosts(hosts, per_host, &worker(), args, env).wait(Duration::from_secs(300));
    for (rank, e) in ended.iter().enumerate() {
        assert_eq!(e.code, Some(0), "rank {rank} of {hosts}×{per_host} ({args:?}, {env:?}): {}", e.stderr);
        assert!(e.stdout.contains(want), "rank {rank} of {hosts}×{per_host} should say {want:?}: {}", e.stdout);
    }
    ended
}

fn knob(value: &str) -> (&'static str, String) {
    ("FERROVOD_HIERARCHICAL_ALLREDUCE", value.to_string())
}

#[test]
fn every_dtype_and_op_matches_the_reference_forced_on_and_off() {
    // `check_collectives` asserts that every allreduce ran hierarchically under `on` and never
    // under `off`; the other collectives run flat over TCP either way.
    for (hosts, per_host) in [(2, 2), (2, 3), (3, 2), (2, 4)] {
        for value in ["on", "off"] {
            run(hosts, per_host, &["collectives", "all", "all", "small"], &[knob(value)], "ok over tcp");
        }
        // Every flat algorithm between the hosts, and stage regions smaller than the buffer
        // (the steps within a host in many pieces).
        for algorithm in ["ring", "halving-doubling", "recursive-doubling"] {
            let env = [
                knob("on"),
                ("FERROVOD_ALLREDUCE_ALGORITHM", algorithm.to_string()),
                ("FERROVOD_SHM_RING", "4096".into()),
                ("FERROVOD_SEGMENT", "4096".into()),
            ];
            run(hosts, per_host, &["collectives", "f32,i8,bf16,f64", "all", "1mib"], &env, "ok over tcp");
        }
    }
}

#[test]
fn sixty_four_mib_every_op() {
    run(2, 2, &["collectives", "f32,bf16", "all", "64mib"], &[knob("on")], "ok over tcp");
}

#[test]
fn auto_takes_it_where_the_model_says_it_pays() {
    // 2 hosts × 2 ranks: the model prefers the hierarchical allreduce at every size (fewer
    // network messages; shared memory much faster than the network per byte).
    for bytes in [4096, 1 << 20, 16 << 20] {
        run(2, 2, &["once", &bytes.to_string()], &[], "ok ran hierarchical");
    }
    // Off, or a flat algorithm forced: flat.
    run(2, 2, &["once", "4096"], &[knob("off")], "ok ran recursive-doubling");
    run(2, 2, &["once", "4096"], &[("FERROVOD_ALLREDUCE_ALGORITHM", "ring".into())], "ok ran ring");
    // One rank per host: nothing to share, flat.
    run(4, 1, &["once", &(1 << 20).to_string()], &[knob("on")], "ok ran halving-doubling");
    // Every rank on one host: the whole job shares memory, flat over it.
    run(1, 4, &["once", &(1 << 20).to_string()], &[knob("on")], "ok ran stage-split");
}

#[test]
fn on_without_shared_memory_is_a_clear_error() {
    let env = [knob("on"), ("FERROVOD_TRANSPORT", "tcp".to_string())];
    let ended = World::spawn_hosts(2, 2, &worker(), &["once", "4096"], &env).wait(Duration::from_secs(120));
    for (rank, e) in ended.iter().enumerate() {
        assert_ne!(e.code, Some(0), "rank {rank} should refuse: {}", e.stdout);
        assert!(
            e.stderr.contains("FERROVOD_HIERARCHICAL_ALLREDUCE") && e.stderr.contains("FERROVOD_TRANSPORT=tcp"),
            "rank {rank}: {}",
            e.stderr
        );
    }
}

#[test]
fn kill_9_mid_hierarchical_allreduce_fails_every_rank_naming_it() {
    // 2 hosts × 2: rank 1 shares memory with rank 0 and talks TCP to rank 3; killed in the
    // middle of a 64 MiB allreduce, every survivor names it, within the timeout.
    let timeout = 30;
    let env = [knob("on"), ("FERROVOD_TIMEOUT", timeout.to_string())];
    for victim in [1, 2] {
        let mut world = World::spawn_hosts(2, 2, &worker(), &["loop", &(64 << 20).to_string()], &env);
        let seen = world.wait_for_line(0, "ready", Duration::from_secs(60));
        assert!(seen.iter().any(|l| l.contains("ran hierarchical")), "{seen:?}");
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: kill(2) on a child's pid; no memory is involved.
        unsafe { libc::kill(world.children[victim].id() as libc::pid_t, libc::SIGKILL) };
        let start = Instant::now();
        let ended = world.wait(Duration::from_secs(timeout + 10));
        assert!(start.elapsed() < Duration::from_secs(timeout), "survivors took {:?}", start.elapsed());
        let needle = format!("rank {victim}");
        for (rank, e) in ended.iter().enumerate().filter(|&(r, _)| r != victim) {
            assert_eq!(e.code, Some(3), "rank {rank} should fail with 3: {}", e.stderr);
            assert!(e.stderr.contains("allreduce") && e.stderr.contains(&needle), "rank {rank}: {}", e.stderr);
        }
    }
}
