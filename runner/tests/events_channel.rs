//! The events channel (`--events-fd`): what started the launcher learns how the job went as
//! JSON lines, never by parsing the launcher's text. Every line is versioned, the failing rank
//! comes as a number, the report is the last line, and with `--events-output` the ranks' lines
//! arrive tagged with their rank instead of on the launcher's stdout.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

#[test]
fn a_failing_rank_reaches_the_channel_as_data_with_every_rank_s_output() {
    let mut cmd = launcher();
    cmd.args(["-np", "3", "--events-fd", "5", "--events-output", "--"]);
    cmd.args([FAKE, "--lines", "2", "--stderr-lines", "1", "--fail-rank", "1", "--fail-code", "7", "--sleep", "30"]);
    let (f, events) = run_with_events(cmd, Duration::from_secs(30));
    assert_eq!(f.code(), Some(7), "{f:?}");
    assert!(!events.is_empty(), "no events; stderr:\n{}", f.stderr);
    for e in &events {
        assert_eq!(e["v"], 1, "unversioned line {e}");
    }

    let failures = of_kind(&events, "failure");
    assert_eq!(failures.len(), 1, "{events:#?}");
    let failure = &failures[0]["failure"];
    assert_eq!(failures[0]["local"], true);
    assert_eq!(failure["kind"], "rank");
    assert_eq!(failure["rank"], 1);
    assert_eq!(failure["exit_code"], 7);
    assert_eq!(failure["task"], 0);
    assert_eq!(failure["signal"], Value::Null);
    assert!(failure["message"].as_str().unwrap().contains("rank 1"), "{failure}");

    let last = events.last().unwrap();
    assert_eq!(last["event"], "report", "the report comes last: {events:#?}");
    assert_eq!(last["outcome"], "failed");
    assert_eq!(last["exit_code"], 7);
    assert_eq!(last["failure"], *failure);
    assert_eq!(last["world"], 3);
    assert_eq!(last["started"], 3);

    // Rank 1's lines, tagged with its rank and stream, and none of them on the launcher's stdout.
    let out: Vec<(u64, &str, &str)> = of_kind(&events, "output")
        .iter()
        .map(|e| (e["rank"].as_u64().unwrap(), e["stream"].as_str().unwrap(), e["line"].as_str().unwrap()))
        .collect();
    for want in
        [(1, "stdout", "line 0 of rank 1"), (1, "stdout", "line 1 of rank 1"), (1, "stderr", "error line 0 of rank 1")]
    {
        assert!(out.contains(&want), "{want:?} missing from {out:?}");
    }
    assert!(!f.stdout.contains("line 0 of rank"), "output went to stdout too:\n{}", f.stdout);
}

#[test]
fn success_is_one_report_and_output_stays_on_stdout_without_events_output() {
    let mut cmd = launcher();
    cmd.args(["-np", "2", "--events-fd", "5", "--", FAKE, "--lines", "1"]);
    let (f, events) = run_with_events(cmd, Duration::from_secs(30));
    assert_eq!(f.code(), Some(0), "{f:?}");
    assert_eq!(events.len(), 1, "{events:#?}");
    let report = &events[0];
    assert_eq!((report["event"].as_str(), report["outcome"].as_str()), (Some("report"), Some("success")));
    assert_eq!(report["exit_code"], 0);
    assert_eq!(report["failure"], Value::Null);
    assert!(f.stdout.contains("[0] line 0 of rank 0") && f.stdout.contains("[1] line 0 of rank 1"), "{}", f.stdout);
}

#[test]
fn a_launcher_that_cannot_run_the_job_says_why_in_an_error_event() {
    let dir = TempDir::new("events-plan");
    let plan = write_file(&dir, "plan.json", r#"{"version": 1, "job_id": "j"}"#);
    let mut cmd = launcher();
    cmd.args(["--plan", &plan, "--events-fd", "5", "--", "true"]);
    let (f, events) = run_with_events(cmd, Duration::from_secs(30));
    assert_eq!(f.code(), Some(2), "{f:?}");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["event"], "error");
    assert_eq!(events[0]["exit_code"], 2);
    assert!(events[0]["message"].as_str().unwrap().contains("missing field"), "{}", events[0]);
}

#[test]
fn a_missing_or_read_only_events_descriptor_is_refused_before_anything_starts() {
    let mut cmd = launcher();
    cmd.args(["-np", "1", "--events-fd", "77", "--", "true"]);
    let f = run(cmd, Duration::from_secs(20));
    assert_eq!(f.code(), Some(2), "{f:?}");
    assert!(f.stderr.contains("--events-fd 77") && f.stderr.contains("not open"), "{}", f.stderr);

    let mut cmd = launcher();
    cmd.args(["-np", "1", "--events-output", "--", "true"]);
    let f = run(cmd, Duration::from_secs(20));
    assert_eq!(f.code(), Some(2), "{f:?}");
    assert!(f.stderr.contains("--events-fd"), "{}", f.stderr);
}

#[test]
fn every_task_reports_the_first_failure_and_says_whether_it_saw_it() {
    let dir = TempDir::new("events-two");
    let port = free_port();
    let secret = secret();
    let tasks = r#"[{"index": 0, "host": "host-a", "gpus": [], "slots": 2},
                    {"index": 1, "host": "host-b", "gpus": [], "slots": 2}]"#;
    let task = |index: usize| {
        let plan = format!(
            r#"{{"version": 1, "job_id": "ev-{port}", "rendezvous": "127.0.0.1:{port}", "task_index": {index}, "tasks": {tasks}}}"#
        );
        let path = write_file(&dir, &format!("plan-{index}.json"), &plan);
        let mut cmd = launcher();
        cmd.env("FERROVOD_SECRET", &secret).args(["--plan", &path, "--events-fd", "5", "--", FAKE]);
        cmd.args(["--fail-rank", "3", "--fail-code", "5", "--sleep", "30"]);
        cmd
    };
    let (t1, e1) = start_with_events(task(1));
    let (t0, e0) = start_with_events(task(0));
    let (f0, f1) = (t0.finish(Duration::from_secs(40)), t1.finish(Duration::from_secs(40)));
    let (e0, e1) = (e0.join().unwrap(), e1.join().unwrap());
    assert_eq!((f0.code(), f1.code()), (Some(5), Some(5)), "{f0:?}\n{f1:?}");

    // Task 1 saw rank 3 fail; task 0 learnt it from task 1.
    let (r0, r1) = (e0.last().unwrap(), e1.last().unwrap());
    assert_eq!((r0["event"].as_str(), r1["event"].as_str()), (Some("report"), Some("report")));
    assert_eq!(r0["failure"], r1["failure"], "both tasks report the same first failure");
    assert_eq!((r1["failure"]["rank"].as_u64(), r1["failure"]["task"].as_u64()), (Some(3), Some(1)));
    assert_eq!(r1["failure"]["host"], "host-b");
    assert_eq!((r0["local"].as_bool(), r1["local"].as_bool()), (Some(false), Some(true)));
    let adopted = of_kind(&e0, "failure");
    assert_eq!(adopted.last().map(|f| &f["failure"]), Some(&r0["failure"]));
    assert_eq!(adopted.last().map(|f| f["local"].as_bool()), Some(Some(false)));
}
