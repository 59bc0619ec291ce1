//! Malformed plans and inconsistent command lines: exit code 2, a message that names the
//! problem, and nothing started.

mod support;

use std::time::Duration;

use support::*;

const GOOD_TASKS: &str = r#"[{"index": 0, "host": "127.0.0.1", "gpus": [], "slots": 1}]"#;

fn plan_with(fields: &[(&str, &str)]) -> String {
    let mut map: Vec<(String, String)> = vec![
        ("version".into(), "1".into()),
        ("job_id".into(), "\"bad-plan\"".into()),
        ("rendezvous".into(), format!("\"127.0.0.1:{}\"", free_port())),
        ("task_index".into(), "0".into()),
        ("tasks".into(), GOOD_TASKS.into()),
    ];
    for (k, v) in fields {
        match map.iter_mut().find(|(name, _)| name == k) {
            Some(entry) if v.is_empty() => entry.1.clear(),
            Some(entry) => entry.1 = v.to_string(),
            None => map.push((k.to_string(), v.to_string())),
        }
    }
    let body: Vec<String> = map.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| format!("\"{k}\": {v}")).collect();
    format!("{{{}}}", body.join(", "))
}

/// Runs the launcher on `plan` and checks exit 2, that stderr contains every `expect`ed
/// fragment, and that no worker started.
fn refused(plan: &str, expect: &[&str]) {
    refused_with(plan, expect, &[])
}

fn refused_with(plan: &str, expect: &[&str], env: &[(&str, &str)]) {
    let dir = TempDir::new("plan-errors");
    let path = write_file(&dir, "plan.json", plan);
    let reports = TempDir::new("plan-errors-reports");
    let mut cmd = launcher();
    cmd.envs(env.iter().copied());
    cmd.args(["--plan", &path, "--", FAKE, "--report-dir", &reports.arg()]);
    let f = run(cmd, Duration::from_secs(20));
    assert_eq!(f.code(), Some(2), "plan {plan}\n{f:?}");
    for e in expect {
        assert!(f.stderr.contains(e), "stderr should mention {e:?}:\n{}", f.stderr);
    }
    assert_eq!(std::fs::read_dir(reports.path()).unwrap().count(), 0, "a worker was started");
}

#[test]
fn the_good_plan_runs() {
    let dir = TempDir::new("plan-good");
    let path = write_file(&dir, "plan.json", &plan_with(&[]));
    let mut cmd = launcher();
    cmd.args(["--plan", &path, "--", FAKE]);
    let f = run(cmd, Duration::from_secs(20));
    assert_eq!(f.code(), Some(0), "{f:?}");
}

#[test]
fn missing_field() {
    refused(&plan_with(&[("rendezvous", "")]), &["missing field `rendezvous`"]);
    refused(
        &plan_with(&[("tasks", r#"[{"index": 0, "gpus": [], "slots": 1}]"#)]),
        &["tasks[0]", "missing field `host`"],
    );
}

#[test]
fn unknown_field() {
    refused(&plan_with(&[("colour", "\"blue\"")]), &["unknown field `colour`"]);
}

#[test]
fn duplicate_task_index() {
    let tasks =
        r#"[{"index": 0, "host": "a", "gpus": [], "slots": 1}, {"index": 0, "host": "b", "gpus": [], "slots": 1}]"#;
    refused(&plan_with(&[("tasks", tasks)]), &["task index 0 appears twice"]);
}

#[test]
fn gap_in_task_indices() {
    let tasks =
        r#"[{"index": 0, "host": "a", "gpus": [], "slots": 1}, {"index": 2, "host": "b", "gpus": [], "slots": 1}]"#;
    refused(&plan_with(&[("tasks", tasks)]), &["1 is missing"]);
}

#[test]
fn negative_gpu_id() {
    let tasks = r#"[{"index": 0, "host": "a", "gpus": [0, -1], "slots": 0}]"#;
    refused(&plan_with(&[("tasks", tasks)]), &["tasks[0].gpus", "GPU id -1 is not a non-negative integer"]);
}

#[test]
fn non_integer_gpu_id() {
    for (bad, shown) in [("1.5", "1.5"), ("\"0\"", "\"0\""), ("null", "null")] {
        let tasks = format!(r#"[{{"index": 0, "host": "a", "gpus": [{bad}], "slots": 0}}]"#);
        refused(&plan_with(&[("tasks", &tasks)]), &[&format!("GPU id {shown} is not a non-negative integer")]);
    }
}

#[test]
fn repeated_gpu_id() {
    let tasks = r#"[{"index": 0, "host": "a", "gpus": [1, 1], "slots": 0}]"#;
    refused(&plan_with(&[("tasks", tasks)]), &["GPU 1 is listed twice"]);
}

#[test]
fn empty_task_list() {
    refused(&plan_with(&[("tasks", "[]")]), &["task list is empty"]);
}

#[test]
fn rendezvous_that_does_not_parse() {
    for bad in ["\"10.0.0.1\"", "\"10.0.0.1:0\"", "\"host:port\"", "\"a b:80\"", "\":29400\""] {
        refused(&plan_with(&[("rendezvous", bad)]), &["rendezvous", "is not a host:port address"]);
    }
}

#[test]
fn task_index_not_in_plan() {
    refused(&plan_with(&[("task_index", "3")]), &["task_index 3 is not the index of a task"]);
}

#[test]
fn unsupported_version() {
    refused(&plan_with(&[("version", "2")]), &["version 2 is not supported"]);
}

#[test]
fn task_without_processes() {
    let tasks = r#"[{"index": 0, "host": "a", "gpus": [], "slots": 0}]"#;
    refused(&plan_with(&[("tasks", tasks)]), &["task 0: no processes to start"]);
}

#[test]
fn not_json() {
    refused("{\"version\": 1,", &["not valid JSON"]);
}

#[test]
fn multi_task_plan_without_a_shared_secret() {
    let tasks =
        r#"[{"index": 0, "host": "a", "gpus": [], "slots": 1}, {"index": 1, "host": "b", "gpus": [], "slots": 1}]"#;
    refused(&plan_with(&[("tasks", tasks)]), &["FERROVOD_SECRET is not set"]);
}

#[test]
fn listen_fd_on_a_task_other_than_0() {
    let tasks =
        r#"[{"index": 0, "host": "a", "gpus": [], "slots": 1}, {"index": 1, "host": "b", "gpus": [], "slots": 1}]"#;
    let dir = TempDir::new("plan-fd");
    let path = write_file(&dir, "plan.json", &plan_with(&[("tasks", tasks), ("task_index", "1")]));
    let mut cmd = launcher();
    cmd.env("FERROVOD_SECRET", secret());
    cmd.args(["--plan", &path, "--listen-fd", "0", "--", FAKE]);
    let f = run(cmd, Duration::from_secs(20));
    assert_eq!(f.code(), Some(2), "{f:?}");
    assert!(f.stderr.contains("--listen-fd is for task 0"), "{}", f.stderr);
}

#[test]
fn listen_fd_that_is_not_a_listening_socket() {
    let dir = TempDir::new("plan-fd0");
    let path = write_file(&dir, "plan.json", &plan_with(&[]));
    let mut cmd = launcher();
    cmd.args(["--plan", &path, "--listen-fd", "0", "--", FAKE]);
    let f = run(cmd, Duration::from_secs(20));
    assert_eq!(f.code(), Some(2), "{f:?}");
    assert!(f.stderr.contains("--listen-fd 0"), "{}", f.stderr);
}

#[test]
fn plan_file_that_does_not_exist() {
    let mut cmd = launcher();
    cmd.args(["--plan", "/nonexistent/plan.json", "--", FAKE]);
    let f = run(cmd, Duration::from_secs(20));
    assert_eq!(f.code(), Some(2), "{f:?}");
    assert!(f.stderr.contains("/nonexistent/plan.json"), "{}", f.stderr);
}

#[test]
fn a_key_given_twice() {
    let text = plan_with(&[]).replacen("\"version\": 1", "\"version\": 1, \"version\": 2", 1);
    refused(&text, &["plan: the key \"version\" appears twice"]);
    let tasks = r#"[{"index": 0, "host": "127.0.0.1", "gpus": [], "slots": 1, "slots": 4}]"#;
    refused(&plan_with(&[("tasks", tasks)]), &["tasks[0]: the key \"slots\" appears twice"]);
}

#[test]
fn a_huge_field_is_cut_in_the_message() {
    let text = "A".repeat(10 << 20);
    let huge = format!("\"{text}\"");
    for plan in [
        plan_with(&[("job_id", &huge)]),
        plan_with(&[("version", &huge)]),
        plan_with(&[("rendezvous", &huge)]),
        plan_with(&[("tasks", &huge)]),
        plan_with(&[(&text, "1")]),
    ] {
        let dir = TempDir::new("plan-huge");
        let path = write_file(&dir, "plan.json", &plan);
        let mut cmd = launcher();
        cmd.args(["--plan", &path, "--", FAKE]);
        let f = run(cmd, Duration::from_secs(20));
        assert_eq!(f.code(), Some(2), "{}", &f.stderr[..f.stderr.len().min(2000)]);
        assert!(f.stderr.len() < 2000, "{} bytes of message:\n{}", f.stderr.len(), &f.stderr[..2000]);
        assert!(f.stderr.contains("bytes cut"), "{}", f.stderr);
    }
}
