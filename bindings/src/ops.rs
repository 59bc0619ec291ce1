//! The process-wide engine behind the Python API: `init`/`shutdown`, the world's shape, and
//! submitting arrays (lent, never copied) for the engine to run. Every wait goes through
//! [`PyHandle::wait`], which releases the GIL and checks for signals.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ferrovod::DevicePtr;
use ferrovod::engine::{Collective, Engine, Handle, Output, Submission};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::array::{Access, Lent, lend};
use crate::buffer::OutBuffer;
use crate::error::{InvalidArgumentError, NotInitializedError, PyFerrovodError};

/// How often a wait wakes to let Python handle a signal (Ctrl-C).
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// The engine, the engines of the process sets this rank is in, and handles dropped unwaited
/// whose arrays an engine may still be using.
struct State {
    engine: Arc<Engine>,
    sets: HashMap<u32, Arc<Engine>>,
    orphans: Vec<(Handle, Vec<Lent>)>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn state() -> MutexGuard<'static, Option<State>> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

fn engine() -> PyResult<Arc<Engine>> {
    engine_of(0)
}

/// The engine of process set `set` (0: the whole job's).
fn engine_of(set: u32) -> PyResult<Arc<Engine>> {
    let (engine, finished) = {
        let mut guard = state();
        let s = guard
            .as_mut()
            .ok_or_else(|| NotInitializedError::new_err("ferrovod is not initialized: call ferrovod.init() first"))?;
        // Arrays of handles dropped unwaited go back to Python once the engine is done with them.
        let (finished, pending): (Vec<_>, Vec<_>) =
            std::mem::take(&mut s.orphans).into_iter().partition(|(h, _)| h.poll());
        s.orphans = pending;
        let engine = if set == 0 { Some(s.engine.clone()) } else { s.sets.get(&set).cloned() };
        (engine, finished)
    };
    // Released outside the lock: giving an array back runs Python code.
    drop(finished);
    engine.ok_or_else(|| {
        InvalidArgumentError::new_err(format!(
            "process set {set} is not one this rank is in (it was never added here, or it was removed)"
        ))
    })
}

/// The reduction of an allreduce or reducescatter.
#[pyclass(module = "ferrovod._ferrovod", name = "ReduceOp", eq, eq_int, hash, frozen, from_py_object)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum PyReduceOp {
    Average,
    Sum,
    Min,
    Max,
    Product,
}

impl From<PyReduceOp> for ferrovod::ReduceOp {
    fn from(op: PyReduceOp) -> Self {
        match op {
            PyReduceOp::Average => ferrovod::ReduceOp::Average,
            PyReduceOp::Sum => ferrovod::ReduceOp::Sum,
            PyReduceOp::Min => ferrovod::ReduceOp::Min,
            PyReduceOp::Max => ferrovod::ReduceOp::Max,
            PyReduceOp::Product => ferrovod::ReduceOp::Product,
        }
    }
}

/// Joins the job described by the `FERROVOD_*` environment (one rank of one without it) and
/// starts the engine. Calling it again is a no-op.
#[pyfunction]
pub(crate) fn init(py: Python<'_>) -> PyResult<()> {
    if state().is_some() {
        return Ok(());
    }
    // Not under the lock: another thread blocking on it while holding the GIL would deadlock
    // with this one taking the GIL back.
    let engine = py.detach(Engine::from_env).map_err(PyFerrovodError)?;
    let mut guard = state();
    if guard.is_none() {
        *guard = Some(State { engine: Arc::new(engine), sets: HashMap::new(), orphans: Vec::new() });
    }
    Ok(())
}

/// Stops the engine on every rank (requests still pending fail) and forgets it; `init` may be
/// called again afterwards. A no-op when not initialized.
#[pyfunction]
pub(crate) fn shutdown(py: Python<'_>) -> PyResult<()> {
    let Some((engine, sets)) = state().as_mut().map(|s| (s.engine.clone(), std::mem::take(&mut s.sets))) else {
        return Ok(());
    };
    // The state stays in place until the engine threads have ended, so that arrays of handles
    // dropped meanwhile are kept until then. The sets' engines first: the job's holds the store.
    let result = py.detach(|| {
        let sets: Vec<_> = sets.into_values().map(|e| e.shutdown()).collect();
        let whole = engine.shutdown();
        sets.into_iter().find(|r| r.is_err()).unwrap_or(whole)
    });
    let gone = state().take();
    // Outside the lock, as in `engine()`.
    drop(gone);
    result.map_err(|e| PyFerrovodError(e).into())
}

#[pyfunction]
pub(crate) fn is_initialized() -> bool {
    state().is_some()
}

/// `(rank, size, local_rank, local_size, cross_rank, cross_size)`.
#[pyfunction]
pub(crate) fn world() -> PyResult<(usize, usize, usize, usize, usize, usize, bool)> {
    let e = engine()?;
    let t = e.topology();
    Ok((e.rank(), e.size(), t.local_rank, t.local_size, t.cross_rank, t.cross_size, t.homogeneous))
}

/// Joins process set `id` (ranks `ranks`, ascending) when this rank is one of them; a no-op on
/// the others. Every member must call it with the same arguments.
#[pyfunction]
pub(crate) fn add_process_set(py: Python<'_>, id: u32, ranks: Vec<usize>) -> PyResult<()> {
    let me = engine()?.rank();
    if !ranks.contains(&me) {
        return Ok(());
    }
    if state().as_ref().is_some_and(|s| s.sets.contains_key(&id)) {
        return Err(InvalidArgumentError::new_err(format!("process set {id} was added already")));
    }
    // Not under the lock, as in `init`.
    let set = py.detach(|| Engine::for_set(id, &ranks)).map_err(PyFerrovodError)?;
    if let Some(s) = state().as_mut() {
        s.sets.insert(id, Arc::new(set));
    }
    Ok(())
}

/// Stops process set `id`'s engine on this rank (its members must all remove it); a no-op where
/// this rank is not in it.
#[pyfunction]
pub(crate) fn remove_process_set(py: Python<'_>, id: u32) -> PyResult<()> {
    let Some(set) = state().as_mut().and_then(|s| s.sets.remove(&id)) else { return Ok(()) };
    py.detach(|| set.shutdown()).map_err(|e| PyFerrovodError(e).into())
}

/// `(rank, size)` of this rank in process set `id`.
#[pyfunction]
pub(crate) fn process_set_world(id: u32) -> PyResult<(usize, usize)> {
    let e = engine_of(id)?;
    Ok((e.rank(), e.size()))
}

/// `(rounds run by waiting callers, rounds run by the engine thread)` of process set `id`'s
/// engine on this rank: how often a synchronous collective ran its round on its own thread.
#[pyfunction]
#[pyo3(signature = (id=0))]
pub(crate) fn engine_rounds(id: u32) -> PyResult<(u64, u64)> {
    Ok(engine_of(id)?.rounds())
}

/// A request in flight, or its result. Waiting releases the GIL; dropping it unwaited is safe
/// (its arrays are kept until the engine is done with them).
#[pyclass(module = "ferrovod._ferrovod", name = "Handle")]
pub(crate) struct PyHandle {
    name: String,
    state: HandleState,
}

enum HandleState {
    Pending(Handle, Vec<Lent>),
    Done(PyResult<Py<PyAny>>),
    /// Only while a wait has the handle.
    Waiting,
}

impl PyHandle {
    fn new(handle: Handle, lent: Vec<Lent>) -> PyHandle {
        PyHandle { name: handle.name().to_string(), state: HandleState::Pending(handle, lent) }
    }
}

#[pymethods]
impl PyHandle {
    /// The tensor name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Whether the result is ready (`wait` will not block).
    fn poll(&self) -> bool {
        match &self.state {
            HandleState::Pending(h, _) => h.poll(),
            HandleState::Done(_) | HandleState::Waiting => true,
        }
    }

    /// Waits for the result: `None` for an in-place collective, else
    /// `(buffer, dtype, shape, splits)`. Raises the request's error. Ctrl-C interrupts it.
    fn wait(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        loop {
            match std::mem::replace(&mut self.state, HandleState::Waiting) {
                HandleState::Pending(handle, lent) => match py.detach(move || handle.wait_timeout(SIGNAL_CHECK)) {
                    Ok(result) => {
                        // The engine is done with the arrays: give them back before anything else.
                        drop(lent);
                        let converted = result.map_err(|e| PyFerrovodError(e).into()).and_then(|o| convert(py, o));
                        self.state = HandleState::Done(clone(py, &converted));
                        return converted;
                    }
                    Err(handle) => {
                        self.state = HandleState::Pending(handle, lent);
                        py.check_signals()?;
                    }
                },
                HandleState::Done(r) => {
                    let again = clone(py, &r);
                    self.state = HandleState::Done(r);
                    return again;
                }
                HandleState::Waiting => {
                    return Err(InvalidArgumentError::new_err(format!(
                        "handle of {:?} is being waited for by another thread",
                        self.name
                    )));
                }
            }
        }
    }

    fn __repr__(&self) -> String {
        format!("Handle(name={:?}, done={})", self.name, self.poll())
    }
}

impl Drop for PyHandle {
    fn drop(&mut self) {
        if let HandleState::Pending(mut handle, lent) = std::mem::replace(&mut self.state, HandleState::Waiting)
            && !lent.is_empty()
            && !handle.poll()
        {
            // A synchronous call interrupted between its submit and its wait: nobody will run
            // its round on this thread, so the engine thread must.
            handle.hand_to_engine();
            match state().as_mut() {
                Some(s) => s.orphans.push((handle, lent)),
                // No engine any more: its thread has ended and nothing uses the arrays.
                None => drop(lent),
            }
        }
    }
}

fn clone(py: Python<'_>, r: &PyResult<Py<PyAny>>) -> PyResult<Py<PyAny>> {
    match r {
        Ok(v) => Ok(v.clone_ref(py)),
        Err(e) => Err(e.clone_ref(py)),
    }
}

/// A result as Python sees it: `None` if it was written in place.
fn convert(py: Python<'_>, out: Output) -> PyResult<Py<PyAny>> {
    if out.in_place {
        return Ok(py.None());
    }
    let dtype = out.dtype.to_string();
    // New results lie in host memory: the Python layer gives allgather, reducescatter and
    // alltoall a CUDA tensor's host copy (`_arrays.readable`), and only in-place collectives
    // take device memory. Say so rather than guess if that ever changes unnoticed.
    let data = out
        .data
        .into_host()
        .ok_or_else(|| InvalidArgumentError::new_err("a result in device memory cannot be returned to Python yet"))?;
    let buffer = Bound::new(py, OutBuffer::new(data))?;
    let shape = PyTuple::new(py, out.shape)?;
    let t = (buffer, dtype, shape, out.splits).into_pyobject(py)?;
    Ok(t.into_any().unbind())
}

/// Lends `tensor` and submits it as `collective` under `name` to process set `set`'s engine.
/// `waited`: the caller waits on the handle at once (a synchronous collective), so the wait
/// may run the engine's round itself ([`Engine::submit_to_wait`]).
fn submit(
    tensor: &Bound<'_, PyAny>,
    name: String,
    collective: Collective,
    access: Access,
    set: u32,
    waited: bool,
) -> PyResult<PyHandle> {
    submit_with(tensor, name, collective, access, None, set, waited)
}

fn submit_with(
    tensor: &Bound<'_, PyAny>,
    name: String,
    collective: Collective,
    access: Access,
    splits: Option<Vec<usize>>,
    set: u32,
    waited: bool,
) -> PyResult<PyHandle> {
    let engine = engine_of(set)?;
    let (sub, lent) = lend_submission(tensor, name, collective, access)?;
    let sub = match splits {
        Some(s) => sub.splits(s),
        None => sub,
    };
    let handle = if waited { engine.submit_to_wait(sub) } else { engine.submit(sub) };
    Ok(PyHandle::new(handle.map_err(PyFerrovodError)?, vec![lent]))
}

fn lend_submission(
    tensor: &Bound<'_, PyAny>,
    name: String,
    collective: Collective,
    access: Access,
) -> PyResult<(Submission, Lent)> {
    let lent = lend(tensor, access, &format!("{} of {name:?}", collective.name()))?;
    // SAFETY: `lent` keeps the memory alive and goes with the handle (or the orphans) until the
    // engine reports the request complete; Python code that touches the array meanwhile races
    // with the collective, as with Horovod's async API (documented on the Python side).
    let sub = match &lent.cuda {
        None => unsafe { Submission::borrowed(name, collective, lent.dtype, &lent.shape, lent.ptr, lent.len) },
        Some(c) => {
            let (device, stream, ready) = (c.device, c.stream, c.ready.handle());
            let ptr = DevicePtr { ptr: lent.ptr.as_ptr() as u64, len: lent.len, device, stream, ready };
            // SAFETY: as above; the data is ready once the `ready` event has happened, which
            // the producer arranged (it ordered `stream` after its work when it gave the
            // capsule for that stream, and the event was recorded there just after). `lent`
            // keeps the event alive as long as the memory.
            unsafe { Submission::device(name, collective, lent.dtype, &lent.shape, ptr) }
        }
    };
    Ok((sub, lent))
}

/// Allreduce of `tensor` into itself.
#[pyfunction]
#[pyo3(signature = (tensor, name, op, process_set=0, waited=false))]
pub(crate) fn allreduce_async_(
    tensor: &Bound<'_, PyAny>,
    name: String,
    op: PyReduceOp,
    process_set: u32,
    waited: bool,
) -> PyResult<PyHandle> {
    submit(tensor, name, Collective::Allreduce(op.into()), Access::Write, process_set, waited)
}

/// Allreduces of `tensors` into themselves, run and completed together.
#[pyfunction]
#[pyo3(signature = (tensors, names, op, process_set=0))]
pub(crate) fn grouped_allreduce_async_(
    tensors: Vec<Bound<'_, PyAny>>,
    names: Vec<String>,
    op: PyReduceOp,
    process_set: u32,
) -> PyResult<Vec<PyHandle>> {
    submit_group(&tensors, names, Collective::Allreduce(op.into()), Access::Write, process_set)
}

/// Allgathers of `tensors`, run and completed together; each result is a new buffer.
#[pyfunction]
#[pyo3(signature = (tensors, names, process_set=0))]
pub(crate) fn grouped_allgather_async(
    tensors: Vec<Bound<'_, PyAny>>,
    names: Vec<String>,
    process_set: u32,
) -> PyResult<Vec<PyHandle>> {
    submit_group(&tensors, names, Collective::Allgather, Access::Read, process_set)
}

/// Reducescatters of `tensors`, run and completed together; each result is a new buffer.
#[pyfunction]
#[pyo3(signature = (tensors, names, op, process_set=0))]
pub(crate) fn grouped_reducescatter_async(
    tensors: Vec<Bound<'_, PyAny>>,
    names: Vec<String>,
    op: PyReduceOp,
    process_set: u32,
) -> PyResult<Vec<PyHandle>> {
    submit_group(&tensors, names, Collective::Reducescatter(op.into()), Access::Read, process_set)
}

/// One engine group: the same collective on each of `tensors`, under `names`.
fn submit_group(
    tensors: &[Bound<'_, PyAny>],
    names: Vec<String>,
    collective: Collective,
    access: Access,
    set: u32,
) -> PyResult<Vec<PyHandle>> {
    if tensors.len() != names.len() {
        return Err(InvalidArgumentError::new_err(format!("{} tensors but {} names", tensors.len(), names.len())));
    }
    let engine = engine_of(set)?;
    let mut subs = Vec::with_capacity(tensors.len());
    let mut lents = Vec::with_capacity(tensors.len());
    for (t, name) in tensors.iter().zip(names) {
        let (sub, lent) = lend_submission(t, name, collective, access)?;
        subs.push(sub);
        lents.push(lent);
    }
    let handles = engine.submit_group(subs).map_err(PyFerrovodError)?;
    Ok(handles.into_iter().zip(lents).map(|(h, l)| PyHandle::new(h, vec![l])).collect())
}

/// Broadcast from `root_rank` (a rank of process set `process_set`) into `tensor`.
#[pyfunction]
#[pyo3(signature = (tensor, name, root_rank, process_set=0, waited=false))]
pub(crate) fn broadcast_async_(
    tensor: &Bound<'_, PyAny>,
    name: String,
    root_rank: i64,
    process_set: u32,
    waited: bool,
) -> PyResult<PyHandle> {
    let root = u32::try_from(root_rank).map_err(|_| {
        let why = if root_rank < 0 { "is negative".to_string() } else { "is not a rank of this world".to_string() };
        InvalidArgumentError::new_err(format!("broadcast of {name:?}: root rank {root_rank} {why}"))
    })?;
    submit(tensor, name, Collective::Broadcast(root), Access::Write, process_set, waited)
}

/// Allgather along the first dimension; the result is a new buffer.
#[pyfunction]
#[pyo3(signature = (tensor, name, process_set=0, waited=false))]
pub(crate) fn allgather_async(
    tensor: &Bound<'_, PyAny>,
    name: String,
    process_set: u32,
    waited: bool,
) -> PyResult<PyHandle> {
    submit(tensor, name, Collective::Allgather, Access::Read, process_set, waited)
}

/// Reducescatter along the first dimension; the result is a new buffer.
#[pyfunction]
#[pyo3(signature = (tensor, name, op, process_set=0, waited=false))]
pub(crate) fn reducescatter_async(
    tensor: &Bound<'_, PyAny>,
    name: String,
    op: PyReduceOp,
    process_set: u32,
    waited: bool,
) -> PyResult<PyHandle> {
    submit(tensor, name, Collective::Reducescatter(op.into()), Access::Read, process_set, waited)
}

/// All-to-all: `splits[j]` rows go to rank j (even split when `None`).
#[pyfunction]
#[pyo3(signature = (tensor, name, splits=None, process_set=0, waited=false))]
pub(crate) fn alltoall_async(
    tensor: &Bound<'_, PyAny>,
    name: String,
    splits: Option<Vec<usize>>,
    process_set: u32,
    waited: bool,
) -> PyResult<PyHandle> {
    submit_with(tensor, name, Collective::Alltoall, Access::Read, splits, process_set, waited)
}

/// A barrier under `name`: the handle completes once every rank has submitted one by that name.
#[pyfunction]
#[pyo3(signature = (name, process_set=0, waited=false))]
pub(crate) fn barrier_async(name: String, process_set: u32, waited: bool) -> PyResult<PyHandle> {
    let engine = engine_of(process_set)?;
    let sub = Submission::barrier(name);
    let handle = if waited { engine.submit_to_wait(sub) } else { engine.submit(sub) };
    Ok(PyHandle::new(handle.map_err(PyFerrovodError)?, Vec::new()))
}

/// Starts joining: the handle's result is a one-element int64 buffer with the last rank to join.
#[pyfunction]
pub(crate) fn join_async() -> PyResult<PyHandle> {
    let handle = engine()?.join_async().map_err(PyFerrovodError)?;
    Ok(PyHandle::new(handle, Vec::new()))
}
