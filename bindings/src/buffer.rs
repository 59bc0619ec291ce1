//! `Buffer`: bytes ferrovod allocated (an allgather's result, say), handed to Python through the
//! buffer protocol so that `numpy.frombuffer` and `torch.frombuffer` wrap them without a copy.

use std::ffi::c_int;
use std::ptr::NonNull;

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;

/// A writable, flat block of bytes owned by ferrovod.
#[pyclass(module = "ferrovod._ferrovod", name = "Buffer")]
pub(crate) struct OutBuffer {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the block is owned by this object alone; Python reaches it only through buffer views,
// which keep the object alive, and Rust never forms references to it after construction.
unsafe impl Send for OutBuffer {}
unsafe impl Sync for OutBuffer {}

impl OutBuffer {
    pub(crate) fn new(data: Vec<u8>) -> OutBuffer {
        let len = data.len();
        let raw = Box::into_raw(data.into_boxed_slice());
        // A boxed slice's pointer is never null (dangling but aligned when empty).
        let ptr = NonNull::new(raw.cast::<u8>()).unwrap_or(NonNull::dangling());
        OutBuffer { ptr, len }
    }
}

impl Drop for OutBuffer {
    fn drop(&mut self) {
        // SAFETY: built by `Box::into_raw` of a boxed slice of `len` bytes, freed once.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len)) });
    }
}

#[pymethods]
impl OutBuffer {
    fn __len__(&self) -> usize {
        self.len
    }

    /// # Safety
    /// Called by Python with a valid `view`.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        let (ptr, len) = {
            let b = slf.borrow();
            (b.ptr, b.len)
        };
        // SAFETY: `view` is valid; PyBuffer_FillInfo takes a reference to `slf`, which keeps the
        // block alive for as long as the view exists.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(view, slf.as_ptr(), ptr.as_ptr().cast(), len as ffi::Py_ssize_t, 0, flags)
        };
        if rc != 0 {
            return Err(PyErr::take(slf.py()).unwrap_or_else(|| PyBufferError::new_err("cannot export the buffer")));
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}
}
