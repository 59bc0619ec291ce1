//! Borrowing an array's memory from Python without copying it: the buffer protocol (numpy,
//! `bytearray`, `memoryview`, `array.array`, ...) or DLPack (torch tensors). What comes out is a
//! [`Lent`] array that keeps the memory alive, and gives it back when dropped.

use std::ffi::{CStr, c_char};
use std::ptr::NonNull;
use std::sync::Arc;

use ferrovod::DType;
use pyo3::ffi;
use pyo3::prelude::*;

use crate::dlpack;
use crate::error::{InvalidArgumentError, UnsupportedError};

/// An array whose memory Python lends us: where it is, what it holds, and what keeps it alive.
pub(crate) struct Lent {
    pub ptr: NonNull<u8>,
    pub len: usize,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Where CUDA memory lies and what orders it; `None` for host memory.
    pub cuda: Option<OnCuda>,
    keep: Keep,
}

enum Keep {
    /// A buffer-protocol view, released with `PyBuffer_Release`.
    Buffer(Box<ffi::Py_buffer>),
    /// A consumed DLPack capsule's tensor, released with its deleter.
    DLPack(NonNull<dlpack::ManagedTensor>),
    /// The same from a versioned (DLPack 1.x) capsule.
    DLPackVersioned(NonNull<dlpack::ManagedTensorVersioned>),
}

impl Lent {
    /// What keeps an array alive, before its place and type are read: released on drop
    /// whatever happens next.
    fn holding(keep: Keep) -> Lent {
        Lent { ptr: NonNull::dangling(), len: 0, dtype: DType::U8, shape: Vec::new(), cuda: None, keep }
    }
}

// SAFETY: `Lent` only moves between threads inside ferrovod's own objects; the memory it names
// is used by the engine thread under the `Submission::borrowed` contract, and the keep-alive is
// released with the GIL held (see `Drop`).
unsafe impl Send for Lent {}
unsafe impl Sync for Lent {}

impl Drop for Lent {
    fn drop(&mut self) {
        Python::attach(|_py| match &mut self.keep {
            // SAFETY: the view was filled by a successful PyObject_GetBuffer and is released once.
            Keep::Buffer(view) => unsafe { ffi::PyBuffer_Release(&mut **view) },
            // SAFETY: we consumed the capsule (renamed it "used_dltensor"), so the deleter is
            // ours to call, exactly once.
            Keep::DLPack(m) => unsafe {
                if let Some(deleter) = (*m.as_ptr()).deleter {
                    deleter(m.as_ptr());
                }
            },
            // SAFETY: as above, for a "used_dltensor_versioned" capsule.
            Keep::DLPackVersioned(m) => unsafe {
                if let Some(deleter) = (*m.as_ptr()).deleter {
                    deleter(m.as_ptr());
                }
            },
        });
    }
}

/// A CUDA tensor's device, the stream its producer ordered it on (ferrovod's ingress stream,
/// handed to `__dlpack__`), and the event marking it ready there.
pub(crate) struct OnCuda {
    pub device: i32,
    pub stream: u64,
    pub ready: ferrovod::cuda::Event,
}

/// What the caller will do with the memory.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Read it only.
    Read,
    /// Write the result into it.
    Write,
}

/// Why a read-only array cannot take an in-place collective (the Python torch layer raises the
/// same words for tensors it knows to be read-only: `ferrovod._arrays.READ_ONLY`).
const READ_ONLY: &str = "the array is read-only and this operation writes its result into it";

fn invalid(what: &str, detail: impl std::fmt::Display) -> PyErr {
    InvalidArgumentError::new_err(format!("{what}: {detail}"))
}

/// Borrows `obj`'s memory: the buffer protocol if it has it, DLPack otherwise. `what` names the
/// argument in errors.
pub(crate) fn lend(obj: &Bound<'_, PyAny>, access: Access, what: &str) -> PyResult<Lent> {
    // SAFETY: a plain query on a live object.
    if unsafe { ffi::PyObject_CheckBuffer(obj.as_ptr()) } == 1 {
        return lend_buffer(obj, access, what);
    }
    if obj.hasattr("__dlpack__")? {
        return lend_dlpack(obj, access, what);
    }
    let ty = obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
    Err(invalid(what, format!("expected a numpy array, a torch tensor or a buffer, got {ty}")))
}

fn lend_buffer(obj: &Bound<'_, PyAny>, access: Access, what: &str) -> PyResult<Lent> {
    let mut view = Box::new(ffi::Py_buffer::new());
    // Ask for shape, strides and format; check writability and layout ourselves, for the message.
    // SAFETY: `view` is a fresh Py_buffer; on success it is released by `Lent::drop`.
    if unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, ffi::PyBUF_RECORDS_RO) } != 0 {
        let cause = PyErr::fetch(obj.py());
        return Err(invalid(what, format!("cannot read its buffer: {cause}")));
    }
    // From here on `view` must be released: wrap it at once (a placeholder pointer until checked).
    let mut lent = Lent::holding(Keep::Buffer(view));
    let Keep::Buffer(view) = &lent.keep else { unreachable!() };
    let itemsize = view.itemsize as usize;
    // SAFETY: with PyBUF_FORMAT the format is a NUL-terminated string (or null, meaning "B").
    let format = if view.format.is_null() { "B".to_string() } else { cstr(view.format) };
    let dtype = DType::from_buffer_format(&format, itemsize).ok_or_else(|| {
        invalid(
            what,
            format!(
                "unsupported element type (buffer format {format:?}, {itemsize} bytes); ferrovod takes {}",
                DType::supported()
            ),
        )
    })?;
    let ndim = view.ndim as usize;
    // SAFETY: with PyBUF_ND and PyBUF_STRIDES, shape and strides have `ndim` entries.
    let (shape, strides) = if ndim == 0 {
        (Vec::new(), Vec::new())
    } else {
        unsafe {
            (
                std::slice::from_raw_parts(view.shape, ndim).iter().map(|&d| d as usize).collect::<Vec<_>>(),
                std::slice::from_raw_parts(view.strides, ndim).iter().map(|&s| s as i64).collect::<Vec<_>>(),
            )
        }
    };
    if !row_major(&shape, &strides, itemsize as i64) {
        return Err(invalid(
            what,
            format!(
                "the array is not contiguous (shape {shape:?}, strides {strides:?} bytes); make a contiguous copy first, e.g. numpy.ascontiguousarray"
            ),
        ));
    }
    if access == Access::Write && view.readonly != 0 {
        return Err(invalid(what, READ_ONLY));
    }
    lent.len = view.len as usize;
    lent.ptr = NonNull::new(view.buf.cast()).unwrap_or(NonNull::dangling());
    lent.dtype = dtype;
    lent.shape = shape;
    Ok(lent)
}

/// Asks `obj` for a versioned capsule first (DLPack 1.x says whether the memory is read-only),
/// and for a plain one when it does not know `max_version` (an older producer).
///
/// A CUDA tensor (`__dlpack_device__` says so) is asked with `stream=` ferrovod's stream of its
/// device: the producer then orders that stream after the work that made the data (DLPack's
/// contract), so the collective reads it complete, with no synchronise.
fn lend_dlpack(obj: &Bound<'_, PyAny>, access: Access, what: &str) -> PyResult<Lent> {
    let py = obj.py();
    let cuda = cuda_device(obj, what)?;
    let stream = cuda.as_ref().map(|d| d.ingress());
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("max_version", (dlpack::MAJOR_VERSION, 0))?;
    if let Some(stream) = stream {
        kwargs.set_item("stream", stream)?;
    }
    let capsule = match obj.call_method("__dlpack__", (), Some(&kwargs)) {
        Ok(c) => c,
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyTypeError>(py) => {
            let plain = pyo3::types::PyDict::new(py);
            if let Some(stream) = stream {
                plain.set_item("stream", stream)?;
            }
            obj.call_method("__dlpack__", (), Some(&plain))
                .map_err(|e| invalid(what, format!("__dlpack__() failed: {e}")))?
        }
        Err(e) => return Err(invalid(what, format!("__dlpack__(max_version=(1, 0)) failed: {e}"))),
    };
    const VERSIONED: &CStr = c"dltensor_versioned";
    const PLAIN: &CStr = c"dltensor";
    // SAFETY: checks the capsule's type and name before reading its pointer.
    let raw = unsafe { ffi::PyCapsule_GetPointer(capsule.as_ptr(), VERSIONED.as_ptr()) };
    let (lent, t, flags) = if let Some(managed) = NonNull::new(raw.cast::<dlpack::ManagedTensorVersioned>()) {
        // SAFETY: a valid versioned capsule: the struct starts with its version.
        let version = unsafe { managed.as_ref().version };
        if version.major != dlpack::MAJOR_VERSION {
            // Not consumed: the capsule's destructor frees it.
            return Err(invalid(
                what,
                format!(
                    "__dlpack__ gave DLPack {}.{}, asked for at most {}.x",
                    version.major,
                    version.minor,
                    dlpack::MAJOR_VERSION
                ),
            ));
        }
        consume(&capsule, c"used_dltensor_versioned")?;
        let lent = Lent::holding(Keep::DLPackVersioned(managed));
        // SAFETY: the producer keeps the tensor valid until we call its deleter (in `Lent::drop`).
        let m = unsafe { &*managed.as_ptr() };
        (lent, &m.dl_tensor, m.flags)
    } else {
        let _ = PyErr::take(py);
        // SAFETY: as above, for the unversioned name.
        let raw = unsafe { ffi::PyCapsule_GetPointer(capsule.as_ptr(), PLAIN.as_ptr()) };
        let Some(managed) = NonNull::new(raw.cast::<dlpack::ManagedTensor>()) else {
            let _ = PyErr::take(py);
            return Err(invalid(what, "__dlpack__() did not return a \"dltensor\" capsule"));
        };
        consume(&capsule, c"used_dltensor")?;
        let lent = Lent::holding(Keep::DLPack(managed));
        // SAFETY: as above.
        (lent, unsafe { &(*managed.as_ptr()).dl_tensor }, 0)
    };
    let mut lent = fill_from_dlpack(lent, t, flags, access, what)?;
    match (cuda, t.device.device_type) {
        (Some(d), dlpack::DEVICE_CUDA) if d.ordinal() == t.device.device_id => {
            // The producer has ordered the ingress stream after its work: mark that point.
            let ready = d.mark_ingress().map_err(|e| {
                UnsupportedError::new_err(format!("{what}: the tensor is on cuda:{}: {e}", d.ordinal()))
            })?;
            lent.cuda = Some(OnCuda { device: d.ordinal(), stream: d.ingress(), ready });
        }
        (None, dlpack::DEVICE_CPU) => {}
        (cuda, _) => {
            let said = cuda.map_or("the CPU".to_string(), |d| format!("cuda:{}", d.ordinal()));
            let (ty, id) = (t.device.device_type, t.device.device_id);
            return Err(invalid(what, format!("__dlpack_device__ said {said}, but __dlpack__ gave device {ty}:{id}")));
        }
    }
    Ok(lent)
}

/// The CUDA device `obj` says it lies on; `None` for the CPU.
fn cuda_device(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Option<Arc<ferrovod::cuda::Device>>> {
    if !obj.hasattr("__dlpack_device__")? {
        return Ok(None);
    }
    let (ty, id): (i32, i32) = obj
        .call_method0("__dlpack_device__")
        .and_then(|d| d.extract())
        .map_err(|e| invalid(what, format!("__dlpack_device__() failed: {e}")))?;
    match ty {
        dlpack::DEVICE_CPU => Ok(None),
        dlpack::DEVICE_CUDA => {
            let device = obj.py().detach(|| ferrovod::cuda::Device::get(id));
            let device = device.map_err(|e| {
                UnsupportedError::new_err(format!(
                    "{what}: the tensor is on cuda:{id}, and ferrovod cannot use CUDA: {e}"
                ))
            })?;
            Ok(Some(device))
        }
        d => Err(invalid(what, format!("the tensor is on DLPack device type {d}; ferrovod takes CPU and CUDA memory"))),
    }
}

/// Renames a capsule so that its destructor leaves the tensor to us.
fn consume(capsule: &Bound<'_, PyAny>, used: &CStr) -> PyResult<()> {
    // SAFETY: a valid capsule; the name is a static string.
    if unsafe { ffi::PyCapsule_SetName(capsule.as_ptr(), used.as_ptr()) } != 0 {
        return Err(PyErr::fetch(capsule.py()));
    }
    Ok(())
}

/// Checks a consumed DLPack tensor and fills in where `lent` points. `t` lives as long as
/// `lent` keeps the capsule's tensor.
fn fill_from_dlpack(mut lent: Lent, t: &dlpack::Tensor, flags: u64, access: Access, what: &str) -> PyResult<Lent> {
    match t.device.device_type {
        dlpack::DEVICE_CPU | dlpack::DEVICE_CUDA => {}
        d => {
            return Err(invalid(
                what,
                format!("the tensor is on DLPack device type {d}; ferrovod takes CPU and CUDA memory"),
            ));
        }
    }
    let dtype = DType::from_dlpack(t.dtype.code, t.dtype.bits, t.dtype.lanes).ok_or_else(|| {
        let dlpack::DataType { code, bits, lanes } = t.dtype;
        invalid(
            what,
            format!(
                "unsupported element type (DLPack code {code} with {bits} bits, {lanes} lanes); ferrovod takes {}",
                DType::supported()
            ),
        )
    })?;
    let ndim = usize::try_from(t.ndim).map_err(|_| invalid(what, "negative ndim"))?;
    // SAFETY: DLPack gives `ndim` dims, and `ndim` strides unless null.
    let shape: Vec<usize> = if ndim == 0 {
        Vec::new()
    } else {
        unsafe { std::slice::from_raw_parts(t.shape, ndim) }.iter().map(|&d| d as usize).collect()
    };
    let itemsize = dtype.size() as i64;
    if !t.strides.is_null() && ndim > 0 {
        // SAFETY: as above.
        let strides: Vec<i64> =
            unsafe { std::slice::from_raw_parts(t.strides, ndim) }.iter().map(|&s| s * itemsize).collect();
        if !row_major(&shape, &strides, itemsize) {
            let elems: Vec<i64> = strides.iter().map(|s| s / itemsize).collect();
            return Err(invalid(
                what,
                format!("the tensor is not contiguous (shape {shape:?}, strides {elems:?}); call .contiguous() first"),
            ));
        }
    }
    if access == Access::Write && flags & dlpack::FLAG_READ_ONLY != 0 {
        return Err(invalid(what, READ_ONLY));
    }
    lent.len = shape.iter().product::<usize>() * dtype.size();
    // SAFETY: data + byte_offset is where the tensor's first element lies.
    let first = unsafe { t.data.cast::<u8>().add(t.byte_offset as usize) };
    lent.ptr = NonNull::new(first).unwrap_or(NonNull::dangling());
    lent.dtype = dtype;
    lent.shape = shape;
    Ok(lent)
}

/// `[(name, long_name, itemsize), ...]`: every dtype ferrovod carries, from `DType::TABLE`, in
/// wire order. Python derives its numpy and torch maps from it (by `long_name`).
#[pyfunction]
pub(crate) fn dtypes() -> Vec<(&'static str, &'static str, usize)> {
    DType::TABLE.iter().map(|d| (d.name, d.long_name, d.size)).collect()
}

/// Whether `strides` (in bytes) lay `shape` out densely in row-major order. Dimensions of one
/// element may have any stride; an empty array is trivially dense.
fn row_major(shape: &[usize], strides: &[i64], itemsize: i64) -> bool {
    if shape.contains(&0) {
        return true;
    }
    let mut want = itemsize;
    for (&d, &s) in shape.iter().zip(strides).rev() {
        if d != 1 && s != want {
            return false;
        }
        want *= d as i64;
    }
    true
}

fn cstr(p: *const c_char) -> String {
    // SAFETY: callers pass a NUL-terminated string owned by a live buffer view.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        assert!(row_major(&[2, 3], &[12, 4], 4));
        assert!(!row_major(&[2, 3], &[4, 8], 4));
        assert!(row_major(&[1, 3], &[999, 4], 4));
        assert!(row_major(&[0, 3], &[4, 8], 4));
        assert!(!row_major(&[3], &[8], 4));
    }
}
