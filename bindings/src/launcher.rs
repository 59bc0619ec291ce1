//! `ferrovod-run` from the Python package: the console script calls this, so that a pip
//! install is all a user or a Spark executor needs.

use pyo3::prelude::*;

/// Runs the launcher with `argv` (program name first) and returns its exit code. Holds no GIL
/// while the job runs.
#[pyfunction]
pub(crate) fn launcher_main(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.detach(move || ferrovod_runner::cli::main(argv.into_iter().map(Into::into)))
}
