//! GPU support as far as it is built (issue 13): finding and loading NCCL.

use std::path::PathBuf;

use ferrovod::backend::nccl::library::Nccl;
use pyo3::prelude::*;

use crate::error::UnsupportedError;

/// `(version code, path)` of the NCCL that ferrovod loads, trying `candidates` before the
/// dynamic loader's search (`FERROVOD_NCCL_LIBRARY`, when set, alone); `UnsupportedError`
/// saying what was tried when none loads.
#[pyfunction]
pub(crate) fn nccl_version(candidates: Vec<String>) -> PyResult<(i32, String)> {
    let candidates: Vec<PathBuf> = candidates.into_iter().map(PathBuf::from).collect();
    let nccl = Nccl::load(&candidates).map_err(|e| UnsupportedError::new_err(e.to_string()))?;
    let version =
        nccl.version().map_err(|e| UnsupportedError::new_err(format!("{}: ncclGetVersion: {e}", nccl.path)))?;
    Ok((version, nccl.path))
}
