//! Failures with ranks as real processes: a rank killed mid-allreduce, mismatched arguments, a
//! silent rank. Every surviving rank must fail within the timeout with an error that names
//! the rank at fault and the operation.

use std::time::{Duration, Instant};

use ferrovod_tests::{Ended, World, workspace_bin};

fn worker() -> std::path::PathBuf {
    workspace_bin("ferrovod-test-worker")
}

fn assert_failed_naming(ended: &[Ended], skip: Option<usize>, needles: &[&str]) {
    for (rank, e) in ended.iter().enumerate() {
        if Some(rank) == skip {
            continue;
        }
        assert_eq!(e.code, Some(3), "rank {rank} should fail with 3; stderr: {}", e.stderr);
        for needle in needles {
            assert!(e.stderr.contains(needle), "rank {rank}'s error lacks {needle:?}: {}", e.stderr);
        }
    }
}

#[test]
fn kill_9_mid_64mib_allreduce_fails_every_rank_naming_it() {
    // Over shared memory (the default on one host), then over TCP.
    kill_9_mid_64mib_allreduce(&[]);
    kill_9_mid_64mib_allreduce(&[("FERROVOD_TRANSPORT", "tcp".to_string())]);
}

fn kill_9_mid_64mib_allreduce(env: &[(&str, String)]) {
    let timeout = 30;
    let env: Vec<(&str, String)> = env.iter().cloned().chain([("FERROVOD_TIMEOUT", timeout.to_string())]).collect();
    let mut world = World::spawn(4, &worker(), &["loop", &(64 << 20).to_string()], &env);
    world.wait_for_line(0, "ready", Duration::from_secs(60));
    // The ranks are in the middle of the next 64 MiB allreduce now.
    std::thread::sleep(Duration::from_millis(100));
    let victim = 2;
    // SAFETY: kill(2) on a child's pid; no memory is involved.
    unsafe { libc::kill(world.children[victim].id() as libc::pid_t, libc::SIGKILL) };
    let start = Instant::now();
    let ended = world.wait(Duration::from_secs(timeout + 10));
    assert!(start.elapsed() < Duration::from_secs(timeout), "survivors took {:?}", start.elapsed());
    assert_eq!(ended[victim].code, None, "rank 2 was killed by a signal");
    assert_failed_naming(&ended, Some(victim), &["allreduce", "rank 2"]);
    // The root cause is a lost link to rank 2, reported by a rank that saw it.
    assert!(
        ended.iter().all(|e| e.stderr.is_empty() || e.stderr.contains("connection to rank 2 closed")),
        "{ended:#?}"
    );
}

#[test]
fn without_a_launcher_a_killed_rank_is_named_not_the_rank_serving_the_store() {
    // Rank 0 serves the store; when it fails it keeps the store up until the others have read
    // the first-failure record, so they blame rank 1 (killed), never rank 0 (which only left).
    // Rank 3 pauses before each allreduce, so it meets the failure after ranks 0 and 2 have
    // exited, and its first broken link is to rank 2.
    for trial in 0..5u64 {
        let args = ["loop-pause", "4096", "3", "700"];
        let mut world = World::spawn_host_store(4, &worker(), &args, &[("FERROVOD_TIMEOUT", "20".into())]);
        world.wait_for_line(0, "ready", Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(100 + 60 * trial));
        // SAFETY: kill(2) on a child's pid; no memory is involved.
        unsafe { libc::kill(world.children[1].id() as libc::pid_t, libc::SIGKILL) };
        let ended = world.wait(Duration::from_secs(40));
        assert_eq!(ended[1].code, None, "trial {trial}: rank 1 was killed by a signal");
        assert_failed_naming(&ended, Some(1), &["rank 1"]);
        for r in [0, 2, 3] {
            for live in [0, 2, 3] {
                let blamed = format!("rank {live} closed");
                assert!(
                    !ended[r].stderr.contains(&blamed),
                    "trial {trial}: rank {r} blames rank {live}: {}",
                    ended[r].stderr
                );
            }
        }
    }
}

#[test]
fn mismatched_counts_fail_every_rank() {
    let ended = World::spawn(4, &worker(), &["mismatch-count"], &[("FERROVOD_TIMEOUT", "30".into())])
        .wait(Duration::from_secs(40));
    assert_failed_naming(&ended, None, &["allreduce #0 (f32, sum, 1001 elements)", "1000 elements"]);
}

#[test]
fn mismatched_dtypes_fail_every_rank() {
    let ended = World::spawn(3, &worker(), &["mismatch-dtype"], &[("FERROVOD_TIMEOUT", "30".into())])
        .wait(Duration::from_secs(40));
    assert_failed_naming(
        &ended,
        None,
        &["allreduce #0 (f32, sum, 64 elements)", "allreduce #0 (f64, sum, 64 elements)"],
    );
}

#[test]
fn ranks_that_cut_an_allgather_differently_fail_every_rank() {
    // Same total bytes, other blocks: over the stage each piece has the same length, so only
    // the layout check sees it (over TCP, a message's length).
    for transport in ["shm", "tcp"] {
        let env = [("FERROVOD_TIMEOUT", "30".to_string()), ("FERROVOD_TRANSPORT", transport.to_string())];
        let ended = World::spawn(3, &worker(), &["mismatch-blocks"], &env).wait(Duration::from_secs(40));
        assert_failed_naming(&ended, None, &["allgather #0"]);
    }
}

#[test]
fn an_alltoall_whose_ranks_disagree_on_a_block_fails_every_rank_naming_the_pair() {
    // Over the stage every rank sees every rank's sizes: the pair refuses at once, the third
    // rank fails with their report.
    let start = Instant::now();
    let env = [("FERROVOD_TIMEOUT", "30".to_string())];
    let ended = World::spawn(3, &worker(), &["mismatch-splits"], &env).wait(Duration::from_secs(40));
    // Whichever of the pair reports first, every rank's error is that report: the pair and
    // the sizes each side has.
    let (zero, one) = (
        "rank 0: alltoall #0 (u8) does not match rank 1, which called the same operation with 1 bytes where this rank has 2",
        "rank 1: alltoall #0 (u8) does not match rank 0, which called the same operation with 2 bytes where this rank has 1",
    );
    for (rank, e) in ended.iter().enumerate() {
        assert_eq!(e.code, Some(3), "rank {rank}: {}", e.stderr);
        assert!(e.stderr.contains(zero) || e.stderr.contains(one), "rank {rank}: {}", e.stderr);
    }
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}: a timeout, not a mismatch", start.elapsed());
}

#[test]
fn a_collective_over_the_stage_against_one_over_messages_fails_at_once() {
    // Each side sees the other's call where it waits (a stage step in the ring's wait, a ring
    // message in the stage's), and after looking again it still is another call.
    let start = Instant::now();
    let env = [("FERROVOD_TIMEOUT", "30".to_string()), ("FERROVOD_ALLREDUCE_ALGORITHM", "ring".to_string())];
    let ended = World::spawn(3, &worker(), &["mismatch-ring"], &env).wait(Duration::from_secs(40));
    assert_failed_naming(&ended, None, &["barrier #0", "allreduce #0"]);
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}: a timeout, not a mismatch", start.elapsed());
}

#[test]
fn different_collectives_in_the_same_stage_step_fail_at_once() {
    let start = Instant::now();
    let env = [("FERROVOD_TIMEOUT", "30".to_string())];
    let ended = World::spawn(3, &worker(), &["mismatch-kind"], &env).wait(Duration::from_secs(40));
    assert_failed_naming(&ended, None, &["broadcast #0", "alltoall #0"]);
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}: a timeout, not a mismatch", start.elapsed());
}

#[test]
fn silent_rank_times_out_naming_it_and_waiting_sleeps() {
    // The default wait polls, yielding its core, for 50 µs before it sleeps; at the maximum it
    // polls 10 ms, no longer; 0 sleeps at once. Every one of them sleeps through a long wait.
    for spin in [None, Some("0"), Some("10000")] {
        let mut env = vec![("FERROVOD_TIMEOUT", "2".to_string())];
        env.extend(spin.map(|s| ("FERROVOD_SPIN_US", s.to_string())));
        let spin = spin.unwrap_or("the default");
        let mut world = World::spawn(3, &worker(), &["stall"], &env);
        let start = Instant::now();
        // Rank 1 sleeps for an hour; collect the others, then kill it.
        let mut sleeper = world.children.remove(1);
        let ended = world.wait(Duration::from_secs(20));
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        assert!(start.elapsed() < Duration::from_secs(15), "took {:?}", start.elapsed());
        for (i, e) in ended.iter().enumerate() {
            assert_eq!(e.code, Some(3), "{i}: {}", e.stderr);
            assert!(e.stderr.contains("allreduce #0") && e.stderr.contains("rank(s) [1]"), "{i}: {}", e.stderr);
            // Two seconds of waiting (plus start-up) cost a few milliseconds of CPU, not two
            // seconds: the wait sleeps.
            let cpu: u64 = e
                .stderr
                .lines()
                .find_map(|l| l.strip_prefix("cpu: ")?.strip_suffix(" ms")?.parse().ok())
                .unwrap_or_else(|| panic!("{i}: no cpu line in {}", e.stderr));
            assert!(cpu < 400, "rank {i} with FERROVOD_SPIN_US={spin} used {cpu} ms of CPU in a 2 s wait");
        }
    }
}

/// Starts rank 0 of 2, then rank 1 with `env` on top of the job's (same store); returns how
/// rank 1 ended, and the world with rank 0. (Rank 1 is never started with the job's own
/// settings: a process killed to make room could already have claimed its rank.)
fn replace_rank_1(timeout: &str, env: &[(&str, &str)]) -> (std::process::Output, World) {
    let args = ["collectives", "f32", "sum", "small"];
    let world = World::spawn_first(2, 1, &worker(), &args, &[("FERROVOD_CONNECT_TIMEOUT", timeout.into())]);
    let mut cmd = std::process::Command::new(worker());
    cmd.args(args)
        .env("FERROVOD_RANK", "1")
        .env("FERROVOD_SIZE", "2")
        .env(
            "FERROVOD_RENDEZVOUS",
            world.store.as_ref().expect("this process serves the store").local_addr().to_string(),
        )
        .env("FERROVOD_SECRET", &world.secret)
        .env("FERROVOD_CONNECT_TIMEOUT", timeout);
    for (k, v) in env {
        cmd.env(k, v);
    }
    (cmd.output().expect("worker runs"), world)
}

#[test]
fn wrong_secret_is_refused_at_start() {
    let (out, _world) = replace_rank_1("5", &[("FERROVOD_SECRET", "not-the-job-secret")]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rank 1: start-up failed") && err.contains("wrong job secret"), "{err}");
}

#[test]
fn ranks_with_different_tuning_fail_at_start_naming_the_knob() {
    let (out, mut world) = replace_rank_1("20", &[("FERROVOD_RING_CHUNK", "2097152")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("FERROVOD_RING_CHUNK") && err.contains("rank 0 has 1048576, rank 1 has 2097152"), "{err}");
    let rank0 = world.children.remove(0).wait_with_output().expect("rank 0 ends");
    let err0 = String::from_utf8_lossy(&rank0.stderr);
    assert_eq!(rank0.status.code(), Some(3), "{err0}");
    assert!(err0.contains("FERROVOD_RING_CHUNK") && err0.contains("rank 1 has 2097152"), "{err0}");
}

#[test]
fn a_rank_that_dies_after_rendezvous_fails_the_mesh_at_once_naming_it() {
    // Over TCP (it published only a TCP address), and over shared memory (it published both,
    // so the others wait for its verdict on shared memory).
    dead_after_rendezvous(&["tcp"], "exited before connecting");
    dead_after_rendezvous(&["tcp", "shm"], "exited before setting up shared memory");
}

fn dead_after_rendezvous(transports: &[&str], what: &str) {
    use ferrovod::bootstrap::{PeerInfo, Secret, StoreClient, StoreServer, exchange_peers};
    let secret = Secret::new(b"job".to_vec());
    let store = StoreServer::bind("127.0.0.1:0", secret.clone()).unwrap();
    let addr = store.local_addr().to_string();
    // Rank 1 is a process that published its record and then died: a child that has exited
    // and been reaped, on this host, with an address nobody listens on.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let pid = dead.id();
    dead.wait().unwrap();
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let tuning = ferrovod::config::Tuning::default();
    let me = PeerInfo {
        hostname: ferrovod::os::hostname(),
        boot_id: ferrovod::os::boot_id(),
        addresses: transports
            .iter()
            .map(|&t| {
                let a =
                    if t == "tcp" { closed_port.to_string().into_bytes() } else { b"\0\0\0\0\0\0\0\0nobody".to_vec() };
                (t.to_string(), a)
            })
            .collect(),
        pid,
        pid_ns: ferrovod::os::pid_namespace(),
        tuning: tuning.agreed().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    };
    // A rank's first join at a rendezvous address (every call here binds a store of its own)
    // keys under generation 0.
    let prefix = "ferrovod/comm0".to_string();
    let rank1 = {
        let (addr, secret) = (addr.clone(), secret.clone());
        std::thread::spawn(move || {
            let mut c = StoreClient::connect(&addr, &secret, Duration::from_secs(10)).unwrap();
            exchange_peers(&mut c, &prefix, 1, 2, &me, Duration::from_secs(30)).unwrap();
        })
    };
    let start = Instant::now();
    let e = ferrovod::Communicator::builder()
        .rank(0)
        .size(2)
        .rendezvous(addr)
        .secret(secret)
        .tuning(ferrovod::config::Tuning { connect_timeout: Duration::from_secs(60), ..tuning })
        .build()
        .expect_err("rank 1 is dead");
    rank1.join().unwrap();
    let took = start.elapsed();
    let text = e.to_string();
    assert!(text.contains(&format!("rank 1 (pid {pid}, this host) {what}")), "{text}");
    assert!(took < Duration::from_secs(10), "noticed after {took:?} (the connect timeout is 60 s)");
}
