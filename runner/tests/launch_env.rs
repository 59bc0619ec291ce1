//! Local mode and one-task plans: every process gets its rank and the environment DESIGN.md
//! lists, and the secret never appears on a command line.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn local_mode_assigns_ranks_and_environment() {
    let dir = TempDir::new("local-env");
    let mut cmd = launcher();
    cmd.args(["-np", "3", "--", FAKE, "--report-dir", &dir.arg()]);
    let f = run(cmd, LIMIT);
    assert_eq!(f.code(), Some(0), "{f:?}");
    let reports = reports(dir.path());
    assert_eq!(reports.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);

    let rendezvous = env_of(&reports[&0], "FERROVOD_RENDEZVOUS").unwrap().to_string();
    let secret = env_of(&reports[&0], "FERROVOD_SECRET").unwrap().to_string();
    assert!(rendezvous.starts_with("127.0.0.1:"), "{rendezvous}");
    assert_eq!(secret.len(), 64, "a generated secret is 32 bytes in hex");
    let master_port = env_of(&reports[&0], "MASTER_PORT").unwrap().to_string();
    assert_ne!(rendezvous.rsplit(':').next(), Some(master_port.as_str()), "MASTER_PORT must not be the store's port");

    for (&r, rep) in &reports {
        let want = [
            ("FERROVOD_RANK", r.to_string()),
            ("FERROVOD_SIZE", "3".into()),
            ("FERROVOD_LOCAL_RANK", r.to_string()),
            ("FERROVOD_LOCAL_SIZE", "3".into()),
            ("FERROVOD_CROSS_RANK", "0".into()),
            ("FERROVOD_CROSS_SIZE", "1".into()),
            ("FERROVOD_RENDEZVOUS", rendezvous.clone()),
            ("FERROVOD_SECRET", secret.clone()),
            ("RANK", r.to_string()),
            ("WORLD_SIZE", "3".into()),
            ("LOCAL_RANK", r.to_string()),
            ("LOCAL_WORLD_SIZE", "3".into()),
            ("MASTER_ADDR", "127.0.0.1".into()),
            ("MASTER_PORT", master_port.clone()),
            ("HOROVOD_RANK", r.to_string()),
            ("HOROVOD_SIZE", "3".into()),
            ("HOROVOD_LOCAL_RANK", r.to_string()),
            ("HOROVOD_LOCAL_SIZE", "3".into()),
            ("HOROVOD_CROSS_RANK", "0".into()),
            ("HOROVOD_CROSS_SIZE", "1".into()),
        ];
        for (k, v) in want {
            assert_eq!(env_of(rep, k), Some(v.as_str()), "rank {r}: {k}");
        }
        assert_eq!(env_of(rep, "CUDA_VISIBLE_DEVICES"), None, "local mode without --gpus leaves CUDA alone");
        assert!(!rep["cmdline"].as_str().unwrap().contains(&secret), "the secret is on rank {r}'s command line");
        assert!(env_of(rep, "FERROVOD_HOST_STORE").is_none());
    }
    // Each rank leads its own process group.
    let groups: BTreeSet<i64> = reports.values().map(|r| r["pgid"].as_i64().unwrap()).collect();
    assert_eq!(groups.len(), 3);
    for rep in reports.values() {
        assert_eq!(rep["pgid"], rep["pid"]);
    }
}

#[test]
fn local_mode_takes_the_secret_from_the_environment_and_pins_gpus() {
    let dir = TempDir::new("local-gpus");
    let mut cmd = launcher();
    cmd.env("FERROVOD_SECRET", "s3cr3t-from-env").env("FERROVOD_HOST_STORE", "1");
    cmd.args(["--gpus", "2,5", "--", FAKE, "--report-dir", &dir.arg()]);
    let f = run(cmd, LIMIT);
    assert_eq!(f.code(), Some(0), "{f:?}");
    let reports = reports(dir.path());
    assert_eq!(reports.len(), 2, "-np defaults to the number of GPUs");
    // Both see both GPUs, in local-rank order: `cuda:<local_rank>` is each one's own.
    assert_eq!(env_of(&reports[&0], "CUDA_VISIBLE_DEVICES"), Some("2,5"));
    assert_eq!(env_of(&reports[&1], "CUDA_VISIBLE_DEVICES"), Some("2,5"));
    for rep in reports.values() {
        assert_eq!(env_of(rep, "FERROVOD_SECRET"), Some("s3cr3t-from-env"));
        assert!(env_of(rep, "FERROVOD_HOST_STORE").is_none(), "FERROVOD_HOST_STORE must not reach the ranks");
    }
}

#[test]
fn one_task_plan_assigns_gpus_and_serves_the_store_on_the_plan_address() {
    let dir = TempDir::new("plan-one");
    let port = free_port();
    let plan = format!(
        r#"{{"version": 1, "job_id": "one", "rendezvous": "127.0.0.1:{port}", "task_index": 0,
            "tasks": [{{"index": 0, "host": "node-a", "gpus": [3, 1, 0], "slots": 0}}]}}"#
    );
    let path = write_file(&dir, "plan.json", &plan);
    let reports_dir = TempDir::new("plan-one-reports");
    let mut cmd = launcher();
    cmd.args(["--plan", &path, "--", FAKE, "--report-dir", &reports_dir.arg()]);
    let f = run(cmd, LIMIT);
    assert_eq!(f.code(), Some(0), "{f:?}");
    let reports = reports(reports_dir.path());
    assert_eq!(reports.len(), 3);
    for r in 0..3 {
        assert_eq!(env_of(&reports[&r], "CUDA_VISIBLE_DEVICES"), Some("3,1,0"));
        assert_eq!(env_of(&reports[&r], "FERROVOD_RENDEZVOUS"), Some(format!("127.0.0.1:{port}").as_str()));
        assert_eq!(env_of(&reports[&r], "FERROVOD_LOCAL_RANK"), Some(r.to_string().as_str()));
        assert_eq!(env_of(&reports[&r], "MASTER_ADDR"), Some("127.0.0.1"));
    }
}

#[test]
fn cpu_plan_hides_gpus_and_reads_the_plan_from_stdin() {
    let port = free_port();
    let plan = format!(
        r#"{{"version": 1, "job_id": "cpu", "rendezvous": "127.0.0.1:{port}", "task_index": 0,
            "tasks": [{{"index": 0, "host": "127.0.0.1", "gpus": [], "slots": 2}}]}}"#
    );
    let reports_dir = TempDir::new("plan-cpu");
    let mut cmd = launcher();
    cmd.stdin(std::process::Stdio::piped());
    cmd.args(["--plan", "-", "--", FAKE, "--report-dir", &reports_dir.arg()]);
    let mut running = start(cmd);
    {
        use std::io::Write;
        let mut stdin = running.child.stdin.take().unwrap();
        stdin.write_all(plan.as_bytes()).unwrap();
    }
    let f = running.finish(LIMIT);
    assert_eq!(f.code(), Some(0), "{f:?}");
    let reports = reports(reports_dir.path());
    assert_eq!(reports.len(), 2);
    for rep in reports.values() {
        assert_eq!(env_of(rep, "CUDA_VISIBLE_DEVICES"), Some(""), "CPU plans hide every GPU");
    }
}
