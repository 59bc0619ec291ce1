//! The tch example under `ferrovod-run -np 2`, against one process trained on the concatenated
//! shards (`--reference 2`): real processes, real sockets, the project venv's libtorch.
//!
//! `ferrovod-run` comes from the main workspace's build (`FERROVOD_RUN`, or
//! `target/release/ferrovod-run` at the repository root).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tch::Tensor;

const TRAIN: &str = env!("CARGO_BIN_EXE_tch_train");
/// A short run: enough steps for momentum SGD to move every parameter well away from its
/// start.
const SHORT: &[&str] = &["--epochs", "3", "--steps", "10", "--batch", "16"];

fn launcher() -> PathBuf {
    let path = std::env::var_os("FERROVOD_RUN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/ferrovod-run"));
    assert!(path.exists(), "{} is missing: build the main workspace (cargo build --release)", path.display());
    path
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrovod-tch-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("start the process");
    eprintln!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

/// Trains at two ranks and in one reference process; returns the largest parameter difference.
fn distributed_against_reference(name: &str, extra: &[&str]) -> f64 {
    let dir = scratch(name);
    let job = run(Command::new(launcher())
        .args(["-np", "2", "--", TRAIN])
        .args(SHORT)
        .args(extra)
        .arg("--save")
        .arg(dir.join("job"))
        .env("FERROVOD_STALL_TIMEOUT", "60"));
    assert!(job.status.success(), "the two-rank job failed");
    let stdout = String::from_utf8_lossy(&job.stdout);
    for rank in 0..2 {
        assert!(
            stdout.contains(&format!("rank {rank}: parameters equal rank 0's")),
            "rank {rank} did not confirm equal parameters"
        );
    }
    let extra_no_fp16: Vec<&str> = extra.iter().copied().filter(|a| *a != "--fp16").collect();
    let reference = run(Command::new(TRAIN)
        .args(SHORT)
        .args(&extra_no_fp16)
        .args(["--reference", "2", "--save"])
        .arg(dir.join("reference")));
    assert!(reference.status.success(), "the reference run failed");
    let diff = largest_difference(&dir.join("job/params.safetensors"), &dir.join("reference/params.safetensors"));
    let moved = largest_difference(&dir.join("job/params.safetensors"), &initial(&dir));
    eprintln!("{name}: job vs reference {diff:e}; parameters moved up to {moved:e} from the start");
    // The comparison means something only if training moved the parameters.
    assert!(moved > 1e-2, "training barely moved the parameters ({moved:e})");
    let _ = std::fs::remove_dir_all(&dir);
    diff
}

/// The parameters before training (zero epochs), for the "did it move" check.
fn initial(dir: &Path) -> PathBuf {
    let out = run(Command::new(TRAIN).args(["--epochs", "0", "--reference", "2", "--save"]).arg(dir.join("initial")));
    assert!(out.status.success());
    dir.join("initial/params.safetensors")
}

fn largest_difference(a: &Path, b: &Path) -> f64 {
    let mut a = Tensor::read_safetensors(a).unwrap();
    let mut b = Tensor::read_safetensors(b).unwrap();
    a.sort_by(|x, y| x.0.cmp(&y.0));
    b.sort_by(|x, y| x.0.cmp(&y.0));
    let names = |v: &[(String, Tensor)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b), "the two runs saved different variables");
    a.iter().zip(&b).map(|((_, x), (_, y))| (x - y).abs().max().double_value(&[])).fold(0.0, f64::max)
}

#[test]
fn two_ranks_train_as_one_process_on_the_concatenated_data() {
    let diff = distributed_against_reference("plain", &[]);
    assert!(diff <= 1e-5, "two ranks ended {diff:e} away from the reference (allowed 1e-5)");
}

#[test]
fn two_backward_passes_per_step_add_up_before_the_reduction() {
    let diff = distributed_against_reference("passes", &["--backward-passes", "2"]);
    assert!(diff <= 1e-5, "two ranks ended {diff:e} away from the reference (allowed 1e-5)");
}

/// Half precision keeps about three decimal digits of each gradient; over 30 momentum steps the
/// parameters stay within 2e-3 of full-precision training (measured: about 2e-4).
#[test]
fn fp16_compression_stays_close_to_full_precision() {
    let diff = distributed_against_reference("fp16", &["--fp16"]);
    assert!(diff <= 2e-3, "fp16 training ended {diff:e} away from the reference (allowed 2e-3)");
    assert!(diff > 0.0, "fp16 compression changed nothing: were the gradients compressed at all?");
}

#[test]
fn a_variable_whose_shape_differs_between_ranks_fails_on_both() {
    let dir = scratch("shape");
    let job = run(Command::new(launcher())
        .args(["-np", "2", "--output-dir"])
        .arg(&dir)
        .args(["--", TRAIN])
        .args(SHORT)
        .args(["--hidden-for-rank", "1:65"])
        .env("FERROVOD_STALL_TIMEOUT", "60"));
    assert!(!job.status.success(), "a job whose ranks built different models succeeded");
    for rank in 0..2 {
        let stderr = std::fs::read_to_string(dir.join(format!("rank.{rank}/stderr"))).unwrap();
        assert!(
            stderr.contains(&format!("tch_train: rank {rank}:")) && stderr.contains("shape"),
            "rank {rank} did not fail on the shape itself: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// NaN parameters compare unequal to everything: a diverged run must not pass the equality
/// check (a maximum that skips NaN would report "equal").
#[test]
fn a_diverged_run_is_not_reported_as_equal_parameters() {
    let job = run(Command::new(launcher())
        .args(["-np", "2", "--", TRAIN])
        .args(SHORT)
        .args(["--hidden", "1024", "--layers", "3", "--lr", "0.5"])
        .env("FERROVOD_STALL_TIMEOUT", "60"));
    assert!(!job.status.success(), "a diverged job succeeded");
    let stderr = String::from_utf8_lossy(&job.stderr);
    assert!(stderr.contains("not finite"), "the job did not fail on its non-finite parameters: {stderr}");
}
