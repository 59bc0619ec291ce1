//! Two task launchers on this machine running one job, as two hosts of a Spark barrier stage
//! would: ranks and environments across tasks, an inherited listening socket for task 0, and a
//! failure on one task stopping the other within seconds.

mod support;

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

fn two_task_plan(port: u16, task_index: usize, tasks: &str) -> String {
    format!(
        r#"{{"version": 1, "job_id": "two-{port}", "rendezvous": "127.0.0.1:{port}", "task_index": {task_index}, "tasks": {tasks}}}"#
    )
}

const TWO_BY_TWO: &str = r#"[{"index": 0, "host": "host-a", "gpus": [0, 1], "slots": 2},
                             {"index": 1, "host": "host-b", "gpus": [0, 1], "slots": 2}]"#;

fn task_launcher(dir: &TempDir, plan: &str, task: usize, secret: &str, worker: &[&str]) -> Command {
    let path = write_file(dir, &format!("plan-{task}.json"), plan);
    let mut cmd = launcher();
    cmd.env("FERROVOD_SECRET", secret).args(["--plan", &path, "--", FAKE]).args(worker);
    cmd
}

#[test]
fn two_hosts_with_two_gpus_each_run_one_job() {
    let dir = TempDir::new("two-ok");
    let reports_dir = TempDir::new("two-ok-reports");
    let port = free_port();
    let secret = secret();
    let worker = ["--report-dir", &reports_dir.arg()];
    // Task 1 first: its launcher waits for task 0's store.
    let t1 = start(task_launcher(&dir, &two_task_plan(port, 1, TWO_BY_TWO), 1, &secret, &worker));
    let t0 = start(task_launcher(&dir, &two_task_plan(port, 0, TWO_BY_TWO), 0, &secret, &worker));
    let (f0, f1) = (t0.finish(Duration::from_secs(30)), t1.finish(Duration::from_secs(30)));
    assert_eq!((f0.code(), f1.code()), (Some(0), Some(0)), "{f0:?}\n{f1:?}");

    let reports = reports(reports_dir.path());
    assert_eq!(reports.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    let master_port = env_of(&reports[&0], "MASTER_PORT").unwrap();
    assert_ne!(master_port, port.to_string(), "MASTER_PORT must not be the ferrovod store's port");
    // (rank, local rank, cross rank); each host's GPUs in local-rank order
    for (r, local, cross, gpu) in [(0, 0, 0, "0,1"), (1, 1, 0, "0,1"), (2, 0, 1, "0,1"), (3, 1, 1, "0,1")] {
        let rep = &reports[&r];
        let s = |v: usize| v.to_string();
        assert_eq!(env_of(rep, "FERROVOD_RANK"), Some(s(r).as_str()));
        assert_eq!(env_of(rep, "FERROVOD_SIZE"), Some("4"));
        assert_eq!(env_of(rep, "FERROVOD_LOCAL_RANK"), Some(s(local).as_str()));
        assert_eq!(env_of(rep, "FERROVOD_LOCAL_SIZE"), Some("2"));
        assert_eq!(env_of(rep, "FERROVOD_CROSS_RANK"), Some(s(cross).as_str()));
        assert_eq!(env_of(rep, "FERROVOD_CROSS_SIZE"), Some("2"));
        assert_eq!(env_of(rep, "CUDA_VISIBLE_DEVICES"), Some(gpu));
        assert_eq!(env_of(rep, "FERROVOD_RENDEZVOUS"), Some(format!("127.0.0.1:{port}").as_str()));
        assert_eq!(env_of(rep, "FERROVOD_SECRET"), Some(secret.as_str()));
        assert_eq!(env_of(rep, "MASTER_ADDR"), Some("127.0.0.1"));
        assert_eq!(env_of(rep, "MASTER_PORT"), Some(master_port), "every task agrees on MASTER_PORT");
        assert_eq!(env_of(rep, "WORLD_SIZE"), Some("4"));
        assert_eq!(env_of(rep, "LOCAL_WORLD_SIZE"), Some("2"));
    }
}

#[test]
fn uneven_cpu_tasks_with_an_inherited_listening_socket() {
    let dir = TempDir::new("two-fd");
    let reports_dir = TempDir::new("two-fd-reports");
    // What the Spark side does: bind first, publish the port, hand the socket over.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let tasks = r#"[{"index": 0, "host": "host-a", "gpus": [], "slots": 3},
                    {"index": 1, "host": "host-b", "gpus": [], "slots": 1}]"#;
    let secret = secret();
    let worker = ["--report-dir", &reports_dir.arg()];
    let fd = listener.as_raw_fd();
    let path = write_file(&dir, "plan-fd0.json", &two_task_plan(port, 0, tasks));
    let mut c0 = launcher();
    c0.env("FERROVOD_SECRET", &secret).args(["--plan", &path, "--listen-fd", "3", "--", FAKE]).args(worker);
    // SAFETY: dup2/fcntl are async-signal-safe; the closure runs between fork and exec.
    unsafe {
        c0.pre_exec(move || {
            if fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let t0 = start(c0);
    drop(listener); // the launcher holds its own copy now
    let t1 = start(task_launcher(&dir, &two_task_plan(port, 1, tasks), 1, &secret, &worker));
    let (f0, f1) = (t0.finish(Duration::from_secs(30)), t1.finish(Duration::from_secs(30)));
    assert_eq!((f0.code(), f1.code()), (Some(0), Some(0)), "{f0:?}\n{f1:?}");
    let reports = reports(reports_dir.path());
    assert_eq!(reports.len(), 4);
    // (rank, local rank, local size, cross rank, cross size)
    for (r, lr, ls, cr, cs) in [(0, 0, 3, 0, 2), (1, 1, 3, 0, 1), (2, 2, 3, 0, 1), (3, 0, 1, 1, 2)] {
        let rep = &reports[&r];
        let got: Vec<&str> =
            ["FERROVOD_LOCAL_RANK", "FERROVOD_LOCAL_SIZE", "FERROVOD_CROSS_RANK", "FERROVOD_CROSS_SIZE"]
                .iter()
                .map(|k| env_of(rep, k).unwrap())
                .collect();
        assert_eq!(got, [lr, ls, cr, cs].map(|v| v.to_string()), "rank {r}");
        assert_eq!(env_of(rep, "CUDA_VISIBLE_DEVICES"), Some(""));
    }
}

#[test]
fn a_failure_on_one_task_stops_the_other() {
    let dir = TempDir::new("two-fail");
    let pids = TempDir::new("two-fail-pids");
    let port = free_port();
    let secret = secret();
    // Rank 3 (task 1) fails once all four ranks run; the others would sleep for a minute.
    let worker =
        ["--pid-dir", &pids.arg(), "--grandchildren", "1", "--fail-rank", "3", "--fail-code", "5", "--sleep", "60"];
    let t0 = start(task_launcher(&dir, &two_task_plan(port, 0, TWO_BY_TWO), 0, &secret, &worker));
    let t1 = start(task_launcher(&dir, &two_task_plan(port, 1, TWO_BY_TWO), 1, &secret, &worker));
    let all = wait_ready(pids.path(), 4, Duration::from_secs(20));
    let ready = Instant::now();
    let f1 = t1.finish(Duration::from_secs(30));
    let f0 = t0.finish(Duration::from_secs(30));
    let took = ready.elapsed();
    assert_eq!(f1.code(), Some(5), "task 1:\n{f1:?}");
    assert_eq!(f0.code(), Some(5), "task 0 exits with the first failing rank's code:\n{f0:?}");
    assert!(took < Duration::from_secs(4), "the job took {took:?} to stop");
    for pid in all.iter().flatten() {
        assert!(!alive(*pid), "pid {pid} survived");
    }
    for f in [&f0, &f1] {
        assert!(
            f.stderr.contains("rank 3 (host host-b, task 1) exited with code 5"),
            "summary should name rank 3 on host-b:\n{}",
            f.stderr
        );
    }
    assert!(f0.stderr.contains("stopped this task's 2 processes"), "{}", f0.stderr);
}

#[test]
fn a_signal_to_task_0_stops_task_1() {
    let dir = TempDir::new("two-signal");
    let pids = TempDir::new("two-signal-pids");
    let port = free_port();
    let secret = secret();
    let worker = ["--pid-dir", &pids.arg(), "--sleep", "60"];
    let t0 = start(task_launcher(&dir, &two_task_plan(port, 0, TWO_BY_TWO), 0, &secret, &worker));
    let t1 = start(task_launcher(&dir, &two_task_plan(port, 1, TWO_BY_TWO), 1, &secret, &worker));
    let all = wait_ready(pids.path(), 4, Duration::from_secs(20));
    kill(t0.pid(), libc::SIGTERM);
    let (f0, f1) = (t0.finish(Duration::from_secs(30)), t1.finish(Duration::from_secs(30)));
    assert_eq!((f0.code(), f1.code()), (Some(143), Some(143)), "{f0:?}\n{f1:?}");
    assert!(f1.stderr.contains("task 0") && f1.stderr.contains("SIGTERM"), "{}", f1.stderr);
    for pid in all.iter().flatten() {
        assert!(!alive(*pid), "pid {pid} survived");
    }
}
