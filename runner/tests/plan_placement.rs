//! Rank, local and cross placement computed from plans (the library's pure part).

use ferrovod_runner::placement::{JobEnv, child_env, place};
use ferrovod_runner::plan::Plan;

fn plan(tasks: &str, task_index: usize) -> Plan {
    Plan::parse(&format!(
        r#"{{"version": 1, "job_id": "j", "rendezvous": "10.0.0.1:29400", "task_index": {task_index}, "tasks": [{tasks}]}}"#
    ))
    .unwrap()
}

/// (rank, local_rank, local_size, cross_rank, cross_size, task, gpu)
type Row = (usize, usize, usize, usize, usize, usize, Option<u32>);

fn rows(p: &Plan) -> Vec<Row> {
    place(p).iter().map(|x| (x.rank, x.local_rank, x.local_size, x.cross_rank, x.cross_size, x.task, x.gpu)).collect()
}

#[test]
fn two_hosts_two_gpus_each() {
    // Listed out of order: ranks follow the task index, not the list order.
    let p = plan(
        r#"{"index": 1, "host": "10.0.0.2", "gpus": [0, 1], "slots": 2},
           {"index": 0, "host": "10.0.0.1", "gpus": [0, 1], "slots": 2}"#,
        1,
    );
    assert_eq!(
        rows(&p),
        vec![
            (0, 0, 2, 0, 2, 0, Some(0)),
            (1, 1, 2, 0, 2, 0, Some(1)),
            (2, 0, 2, 1, 2, 1, Some(0)),
            (3, 1, 2, 1, 2, 1, Some(1)),
        ]
    );
    assert!(place(&p).iter().all(|x| x.size == 4));
}

#[test]
fn uneven_slots_and_a_host_shared_by_two_tasks() {
    let p = plan(
        r#"{"index": 0, "host": "a", "gpus": [], "slots": 3},
           {"index": 1, "host": "b", "gpus": [], "slots": 1},
           {"index": 2, "host": "a", "gpus": [], "slots": 2}"#,
        0,
    );
    // Host a holds ranks 0,1,2 (task 0) and 4,5 (task 2): local ranks 0..4 in rank order.
    // Host b holds rank 3 (local rank 0). Local rank 0 is shared by ranks 0 and 3 (cross size
    // 2); every other local rank exists only on host a (cross size 1).
    assert_eq!(
        rows(&p),
        vec![
            (0, 0, 5, 0, 2, 0, None),
            (1, 1, 5, 0, 1, 0, None),
            (2, 2, 5, 0, 1, 0, None),
            (3, 0, 1, 1, 2, 1, None),
            (4, 3, 5, 0, 1, 2, None),
            (5, 4, 5, 0, 1, 2, None),
        ]
    );
}

#[test]
fn gpus_win_over_slots() {
    let p = plan(r#"{"index": 0, "host": "a", "gpus": [7], "slots": 4}"#, 0);
    assert_eq!(rows(&p), vec![(0, 0, 1, 0, 1, 0, Some(7))]);
}

#[test]
fn environment_names_match_design() {
    let p = plan(r#"{"index": 0, "host": "a", "gpus": [], "slots": 2}"#, 0);
    let placed = place(&p);
    let job = job();
    let env = child_env(&placed[1], &job);
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "FERROVOD_RANK",
            "FERROVOD_SIZE",
            "FERROVOD_LOCAL_RANK",
            "FERROVOD_LOCAL_SIZE",
            "FERROVOD_CROSS_RANK",
            "FERROVOD_CROSS_SIZE",
            "FERROVOD_RENDEZVOUS",
            "FERROVOD_SECRET",
            "RANK",
            "WORLD_SIZE",
            "LOCAL_RANK",
            "LOCAL_WORLD_SIZE",
            "MASTER_ADDR",
            "MASTER_PORT",
            // Beyond DESIGN.md's list: horovodrun's names, for Horovod scripts (README).
            "HOROVOD_RANK",
            "HOROVOD_SIZE",
            "HOROVOD_LOCAL_RANK",
            "HOROVOD_LOCAL_SIZE",
            "HOROVOD_CROSS_RANK",
            "HOROVOD_CROSS_SIZE",
            "CUDA_VISIBLE_DEVICES",
        ]
    );
    assert_eq!((get_of(&env, "HOROVOD_RANK"), get_of(&env, "HOROVOD_LOCAL_SIZE")), (Some("1"), Some("2")));
    let get = |k: &str| get_of(&env, k);
    assert_eq!(get("FERROVOD_RANK"), Some("1"));
    assert_eq!(get("MASTER_PORT"), Some("29501"));
    assert_eq!(get("CUDA_VISIBLE_DEVICES"), Some(""));
    // Every FERROVOD_ name the launcher sets is one the comm crate declares.
    for (k, _) in &env {
        if k.starts_with("FERROVOD_") {
            assert!(ferrovod::config::KNOBS.iter().any(|kn| kn.name == k), "{k} is not a comm knob");
        }
    }
}

/// The job's shared environment, GPUs pinned.
fn job() -> JobEnv {
    JobEnv {
        rendezvous: "10.0.0.1:29400".into(),
        secret: "00ff".into(),
        master_addr: "10.0.0.1".into(),
        master_port: 29501,
        pin_gpus: true,
    }
}

fn get_of<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
    env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

#[test]
fn every_process_sees_its_hosts_gpus_in_local_rank_order() {
    // Host a: tasks 0 and 2; host b: task 1; host c mixes a GPU task and a CPU task.
    let p = plan(
        r#"{"index": 0, "host": "a", "gpus": [3, 1], "slots": 0},
           {"index": 1, "host": "b", "gpus": [0], "slots": 0},
           {"index": 2, "host": "a", "gpus": [5], "slots": 0},
           {"index": 3, "host": "c", "gpus": [2], "slots": 0},
           {"index": 4, "host": "c", "gpus": [], "slots": 1}"#,
        0,
    );
    let placed = place(&p);
    let job = job();
    let seen: Vec<(usize, String)> = placed
        .iter()
        .map(|x| (x.local_rank, get_of(&child_env(x, &job), "CUDA_VISIBLE_DEVICES").unwrap().to_string()))
        .collect();
    assert_eq!(
        seen,
        [
            (0, "3,1,5".to_string()),
            (1, "3,1,5".to_string()),
            (0, "0".to_string()),
            (2, "3,1,5".to_string()),
            // Host c cannot index by local rank: each process sees its own GPU, or none.
            (0, "2".to_string()),
            (1, String::new()),
        ]
    );
    // Where a host's processes all have a GPU, `cuda:<local_rank>` is the process's own.
    for x in placed.iter().filter(|x| x.host != "c") {
        assert_eq!(x.visible_gpus.get(x.local_rank).copied(), x.gpu, "rank {}", x.rank);
    }
}
