//! End to end: four ranks of the comm crate's `hello` example (barrier + allreduce) under the
//! launcher.
//!
//! `hello` is a binary of another package (`ferrovod-examples`), which cargo does not build for
//! this crate's tests; the test builds it (`cargo build -p ferrovod-examples --bin hello`, same
//! profile and target directory: a no-op when it is fresh) and runs it from
//! `target/<profile>/hello`. A missing package is a failure, never a skip: a test that passes
//! without running proves nothing.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;

/// `target/<profile>`: the directory above this test executable's `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    deps.parent().unwrap().to_path_buf()
}

fn build_hello(profile_dir: &Path) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let manifest = workspace.join("examples/Cargo.toml");
    let has_package = std::fs::read_to_string(&manifest).is_ok_and(|t| t.contains("name = \"ferrovod-examples\""));
    assert!(
        has_package,
        "launch_hello needs the ferrovod-examples package (its hello binary) at {}, and it is missing",
        manifest.display()
    );
    let target_dir = profile_dir.parent().unwrap();
    let profile = profile_dir.file_name().unwrap().to_string_lossy().into_owned();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace).args(["build", "--quiet", "-p", "ferrovod-examples", "--bin", "hello"]);
    cmd.arg("--target-dir").arg(target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd.status().expect("running cargo to build hello");
    assert!(status.success(), "cargo build -p ferrovod-examples --bin hello failed");
    let hello = profile_dir.join("hello");
    assert!(hello.exists(), "{} missing after the build", hello.display());
    hello
}

#[test]
fn four_ranks_of_hello() {
    let hello = build_hello(&profile_dir());
    let mut cmd = launcher();
    cmd.arg("-np").arg("4").arg("--").arg(&hello);
    let f = run(cmd, Duration::from_secs(60));
    assert_eq!(f.code(), Some(0), "hello failed:\n{}\n{}", f.stdout, f.stderr);
    for r in 0..4 {
        let prefix = format!("[{r}] hello from rank {r} of 4");
        assert!(f.stdout.lines().any(|l| l.starts_with(&prefix)), "no line starting {prefix:?} in:\n{}", f.stdout);
    }
}
