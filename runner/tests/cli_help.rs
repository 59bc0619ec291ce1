//! The command line: --help explains every option, --version, and usage errors exit 2.

mod support;

use std::time::Duration;

use support::*;

#[test]
fn help_names_every_option_and_its_variable() {
    let mut cmd = launcher();
    cmd.arg("--help");
    let f = run(cmd, Duration::from_secs(10));
    assert_eq!(f.code(), Some(0));
    for opt in [
        "--np",
        "--plan",
        "--listen-fd",
        "--gpus",
        "--output-dir",
        "--no-prefix",
        "--grace-period",
        "--connect-timeout",
        "--store-linger",
        "--no-watch-parent",
        "--verbose",
        "--version",
        "FERROVOD_OUTPUT_DIR",
        "FERROVOD_NO_PREFIX",
        "FERROVOD_GRACE_PERIOD",
        "FERROVOD_CONNECT_TIMEOUT",
        "FERROVOD_STORE_LINGER",
        "FERROVOD_NO_WATCH_PARENT",
        "FERROVOD_VERBOSE",
        "Exit status",
    ] {
        assert!(f.stdout.contains(opt), "--help does not mention {opt}:\n{}", f.stdout);
    }
}

#[test]
fn version() {
    let mut cmd = launcher();
    cmd.arg("--version");
    let f = run(cmd, Duration::from_secs(10));
    assert_eq!(f.code(), Some(0));
    assert_eq!(f.stdout.trim(), format!("ferrovod-run {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["--", "true"][..],
        &["-np", "0", "--", "true"],
        &["-np", "2", "--gpus", "0", "--", "true"],
        &["-np", "2"],
        &["-np", "2", "--plan", "x.json", "--", "true"],
        &["-np", "2", "--grace-period", "soon", "--", "true"],
        &["-np", "18446744073709551615", "--", "true"],
        &["-np", "2", "--gpus", "0,0", "--", "true"],
    ] {
        let mut cmd = launcher();
        cmd.args(args);
        let f = run(cmd, Duration::from_secs(10));
        assert_eq!(f.code(), Some(2), "{args:?}: {f:?}");
        assert!(!f.stderr.is_empty(), "{args:?}: no message");
    }
}

#[test]
fn knobs_are_read_from_the_environment() {
    // An unparsable FERROVOD_GRACE_PERIOD is an error naming the value, not a silent default.
    let mut cmd = launcher();
    cmd.env("FERROVOD_GRACE_PERIOD", "soon").args(["-np", "1", "--", "true"]);
    let f = run(cmd, Duration::from_secs(10));
    assert_eq!(f.code(), Some(2), "{f:?}");
    assert!(f.stderr.contains("soon"), "{}", f.stderr);
}

#[test]
fn a_huge_bad_value_is_cut_in_the_message() {
    // clap quotes a bad value whole; a 100 KB one must not become a 100 KB message.
    let huge = "9x".repeat(50_000);
    for (env, args) in [
        (None, vec!["-np", "1", "--grace-period", huge.as_str(), "--", "true"]),
        (Some(("FERROVOD_CONNECT_TIMEOUT", huge.as_str())), vec!["-np", "1", "--", "true"]),
    ] {
        let mut cmd = launcher();
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        cmd.args(&args);
        let f = run(cmd, Duration::from_secs(10));
        assert_eq!(f.code(), Some(2), "{f:?}");
        assert!(f.stderr.len() < 2000, "{} bytes of message:\n{}", f.stderr.len(), &f.stderr[..2000]);
        assert!(f.stderr.contains("bytes cut"), "{}", f.stderr);
        assert!(f.stderr.contains("9x9x"), "{}", f.stderr);
    }
}
