//! `_ferrovod`: the extension module behind the Python package `ferrovod`. It converts and
//! registers; the work is done by the `ferrovod` crate (collectives, engine) and
//! `ferrovod-runner` (the launcher).
//!
//! | module | what it does |
//! |--------|--------------|
//! | [`ops`] | the process-wide engine, submitting arrays, handles and waiting |
//! | [`array`], [`dlpack`] | borrowing numpy/buffer-protocol and DLPack memory without copies |
//! | [`buffer`] | results ferrovod allocated, exported through the buffer protocol |
//! | [`error`] | the `FerrovodError` hierarchy |
//! | [`gpu`] | GPU support as far as it is built: loading NCCL |
//! | [`launcher`] | the `ferrovod-run` console script |

mod array;
mod buffer;
mod dlpack;
mod error;
mod gpu;
mod launcher;
mod ops;

use pyo3::prelude::*;

#[pymodule]
fn _ferrovod(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ops::PyReduceOp>()?;
    m.add_class::<ops::PyHandle>()?;
    m.add_class::<buffer::OutBuffer>()?;
    m.add_function(wrap_pyfunction!(ops::init, m)?)?;
    m.add_function(wrap_pyfunction!(ops::shutdown, m)?)?;
    m.add_function(wrap_pyfunction!(ops::is_initialized, m)?)?;
    m.add_function(wrap_pyfunction!(ops::world, m)?)?;
    m.add_function(wrap_pyfunction!(ops::add_process_set, m)?)?;
    m.add_function(wrap_pyfunction!(ops::remove_process_set, m)?)?;
    m.add_function(wrap_pyfunction!(ops::process_set_world, m)?)?;
    m.add_function(wrap_pyfunction!(ops::engine_rounds, m)?)?;
    m.add_function(wrap_pyfunction!(ops::allreduce_async_, m)?)?;
    m.add_function(wrap_pyfunction!(ops::grouped_allreduce_async_, m)?)?;
    m.add_function(wrap_pyfunction!(ops::grouped_allgather_async, m)?)?;
    m.add_function(wrap_pyfunction!(ops::grouped_reducescatter_async, m)?)?;
    m.add_function(wrap_pyfunction!(ops::broadcast_async_, m)?)?;
    m.add_function(wrap_pyfunction!(ops::allgather_async, m)?)?;
    m.add_function(wrap_pyfunction!(ops::reducescatter_async, m)?)?;
    m.add_function(wrap_pyfunction!(ops::alltoall_async, m)?)?;
    m.add_function(wrap_pyfunction!(ops::barrier_async, m)?)?;
    m.add_function(wrap_pyfunction!(ops::join_async, m)?)?;
    m.add_function(wrap_pyfunction!(array::dtypes, m)?)?;
    m.add_function(wrap_pyfunction!(gpu::nccl_version, m)?)?;
    m.add_function(wrap_pyfunction!(launcher::launcher_main, m)?)?;
    m.add_function(wrap_pyfunction!(launcher::barrier_plan, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
