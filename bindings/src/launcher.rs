//! `ferrovod-run` from the Python package: the console script calls this, so that a pip
//! install is all a user or a Spark executor needs.

use pyo3::prelude::*;

/// Runs the launcher with `argv` (program name first) and returns its exit code. Holds no GIL
/// while the job runs.
#[pyfunction]
pub(crate) fn launcher_main(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.detach(move || ferrovod_runner::cli::main(argv.into_iter().map(Into::into)))
}

/// The barrier plan of one task of a job, as the JSON `ferrovod-run --plan` reads: built and
/// checked by the launcher's own builder (`Plan::build`), so Python and Rust never disagree on
/// it. `tasks` lists every task in index order as `(host, gpus, slots)`. A plan the launcher
/// would refuse raises `ValueError` with the launcher's message.
#[pyfunction]
pub(crate) fn barrier_plan(
    job_id: String,
    rendezvous_host: String,
    rendezvous_port: u16,
    task_index: usize,
    tasks: Vec<(String, Vec<u32>, usize)>,
) -> PyResult<String> {
    use ferrovod_runner::plan::{Plan, Task};
    let tasks =
        tasks.into_iter().enumerate().map(|(index, (host, gpus, slots))| Task { index, host, gpus, slots }).collect();
    Plan::build(job_id, &rendezvous_host, rendezvous_port, task_index, tasks)
        .map(|plan| plan.to_json())
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(format!("barrier plan: {e}")))
}
