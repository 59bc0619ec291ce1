//! Output forwarding: every line of every rank arrives, whole, with its `[rank]` prefix; the
//! last line without a newline too; `--no-prefix` and `--output-dir` work.

mod support;

use std::time::Duration;

use support::*;

const LINES: usize = 2000;

fn lines_of<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter_map(|l| l.strip_prefix(prefix)).collect()
}

#[test]
fn every_line_arrives_prefixed_and_whole() {
    let mut cmd = launcher();
    cmd.args(["-np", "3", "--", FAKE, "--lines", &LINES.to_string(), "--stderr-lines", "5"]);
    cmd.args(["--long-line", "200000", "--partial", "last words"]);
    let f = run(cmd, Duration::from_secs(30));
    assert_eq!(f.code(), Some(0), "{}", f.stderr);
    for r in 0..3 {
        let got = lines_of(&f.stdout, &format!("[{r}] "));
        assert_eq!(got.len(), LINES + 2, "rank {r}: every line, the long one, and the last partial one");
        for (i, line) in got[..LINES].iter().enumerate() {
            assert_eq!(*line, format!("line {i} of rank {r}"));
        }
        assert_eq!(got[LINES], "x".repeat(200000), "the long line arrives whole");
        assert_eq!(got[LINES + 1], "last words", "a last line without newline is still printed");
        let err = lines_of(&f.stderr, &format!("[{r}] "));
        assert_eq!(err, (0..5).map(|i| format!("error line {i} of rank {r}")).collect::<Vec<_>>());
    }
    // Nothing but prefixed lines on stdout: no torn lines.
    assert!(f.stdout.lines().all(|l| l.starts_with('[')), "a line lost its prefix");
}

#[test]
fn no_prefix_forwards_lines_as_they_are() {
    let mut cmd = launcher();
    cmd.args(["-np", "2", "--no-prefix", "--", FAKE, "--lines", "3", "--partial", "tail"]);
    let f = run(cmd, Duration::from_secs(20));
    assert_eq!(f.code(), Some(0), "{}", f.stderr);
    let mut lines: Vec<&str> = f.stdout.lines().collect();
    lines.sort();
    let mut want: Vec<String> = (0..2).flat_map(|r| (0..3).map(move |i| format!("line {i} of rank {r}"))).collect();
    want.extend(["tail".to_string(), "tail".to_string()]);
    want.sort();
    assert_eq!(lines, want);
}

#[test]
fn output_dir_keeps_each_ranks_output() {
    let dir = TempDir::new("outdir");
    let mut cmd = launcher();
    cmd.env("FERROVOD_OUTPUT_DIR", dir.path());
    cmd.args(["-np", "2", "--", FAKE, "--lines", "4", "--stderr-lines", "2", "--partial", "end"]);
    let f = run(cmd, Duration::from_secs(20));
    assert_eq!(f.code(), Some(0), "{}", f.stderr);
    for r in 0..2 {
        let out = std::fs::read_to_string(dir.join(&format!("rank.{r}/stdout"))).unwrap();
        let want: String = (0..4).map(|i| format!("line {i} of rank {r}\n")).collect::<String>() + "end\n";
        assert_eq!(out, want);
        let err = std::fs::read_to_string(dir.join(&format!("rank.{r}/stderr"))).unwrap();
        assert_eq!(err, format!("error line 0 of rank {r}\nerror line 1 of rank {r}\n"));
    }
    // The terminal still gets the prefixed copy.
    assert_eq!(lines_of(&f.stdout, "[1] ").len(), 5);
}
