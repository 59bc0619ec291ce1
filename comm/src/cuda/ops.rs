//! The engine's memory operations on host memory and on CUDA devices: the default [`Ops`] of
//! every engine. Host memory goes to [`HostOps`] untouched; a device is reached only when its
//! memory first arrives, so a job that never gives GPU memory never loads CUDA.
//!
//! Device work is queued on ferrovod's stream of the device and waited for once per fused
//! response, in [`Ops::finish`], before the engine completes any handle of it. Fills and the
//! division of an average go through host memory for now (no kernels of our own are built):
//! correct, and costs two copies of the tensor.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::result;

use super::{Device, Entered, Event, failed};
use crate::config::Tuning;
use crate::dtype::{DType, ReduceOp};
use crate::memory::{DeviceAllocation, DevicePtr, HostOps, Memory, MemoryRef, Ops, OpsError, Owned, Place};
use crate::reduce::{divide, fill_identity};

/// [`Ops`] on host memory and on every CUDA device of the process.
pub struct MemoryOps {
    host: HostOps,
    devices: HashMap<i32, DeviceOps>,
    timeout: Duration,
    spin: Duration,
}

/// What the operations keep per device.
struct DeviceOps {
    dev: Arc<Device>,
    /// Recorded by `finish` after the work queued since the last one.
    done: Event,
    /// For ordering ferrovod's stream after a producer's.
    order: Event,
    /// Whether work was queued since the last `finish`.
    queued: bool,
    /// Host bytes for fills and divisions.
    scratch: Vec<u8>,
}

impl MemoryOps {
    /// Operations whose device waits give up after `tuning.timeout`.
    pub fn new(tuning: &Tuning) -> MemoryOps {
        MemoryOps { host: HostOps, devices: HashMap::new(), timeout: tuning.timeout, spin: tuning.spin }
    }

    /// The device's operations, its context current until the guard is dropped.
    fn device(&mut self, op: &'static str, ordinal: i32) -> Result<(&mut DeviceOps, Entered), OpsError> {
        let fail = |detail: String| OpsError { op, what: format!("cuda:{ordinal}"), detail };
        let d = match self.devices.entry(ordinal) {
            Entry::Occupied(d) => d.into_mut(),
            Entry::Vacant(v) => {
                let dev = Device::get(ordinal).map_err(fail)?;
                let (done, order) = (dev.event().map_err(fail)?, dev.event().map_err(fail)?);
                v.insert(DeviceOps { dev, done, order, queued: false, scratch: Vec::new() })
            }
        };
        let entered = d.dev.enter().map_err(fail)?;
        Ok((d, entered))
    }
}

fn error(op: &'static str, ptr: &DevicePtr) -> impl Fn(String) -> OpsError {
    let what = format!("cuda:{}", ptr.device);
    move |detail| OpsError { op, what: what.clone(), detail }
}

/// Device memory allocated on ferrovod's stream, freed on it when dropped.
#[derive(Debug)]
struct CudaAllocation {
    ptr: DevicePtr,
    dev: Arc<Device>,
}

impl DeviceAllocation for CudaAllocation {
    fn ptr(&self) -> DevicePtr {
        self.ptr
    }
}

impl Drop for CudaAllocation {
    fn drop(&mut self) {
        if self.ptr.len > 0
            && let Ok(_in) = self.dev.enter()
        {
            // SAFETY: allocated on this stream by `alloc` and freed once, in stream order: after
            // every use queued on it (all of which are on this stream).
            let _ = unsafe { result::free_async(self.ptr.ptr, self.dev.stream as _) };
        }
    }
}

impl DeviceOps {
    /// Queues a copy of `len` bytes between two regions of this device.
    fn dtod(&mut self, dst: &DevicePtr, src: &DevicePtr) -> Result<(), String> {
        self.dev.after(src, &self.order)?;
        self.dev.after(dst, &self.order)?;
        if dst.len > 0 {
            // SAFETY: both live device memory of `dst.len` bytes (DevicePtr's contract).
            unsafe { result::memcpy_dtod_async(dst.ptr, src.ptr, dst.len, self.dev.stream as _) }
                .map_err(|e| failed("cuMemcpyDtoDAsync", e))?;
        }
        self.queued = true;
        Ok(())
    }

    /// Queues a copy of host bytes into device memory. The bytes may be reused once it
    /// returns: for pageable memory the driver has taken its own copy by then.
    fn htod(&mut self, dst: &DevicePtr, src: &[u8]) -> Result<(), String> {
        self.dev.after(dst, &self.order)?;
        if !src.is_empty() {
            // SAFETY: `dst` is live device memory of `src.len()` bytes.
            unsafe { result::memcpy_htod_async(dst.ptr, src, self.dev.stream as _) }
                .map_err(|e| failed("cuMemcpyHtoDAsync", e))?;
        }
        self.queued = true;
        Ok(())
    }

    /// Copies device memory into host bytes, waiting until they are there.
    fn dtoh(&mut self, dst: &mut [u8], src: &DevicePtr, timeout: Duration, spin: Duration) -> Result<(), String> {
        self.dev.after(src, &self.order)?;
        if !dst.is_empty() {
            // SAFETY: `src` is live device memory of `dst.len()` bytes.
            unsafe { result::memcpy_dtoh_async(dst, src.ptr, self.dev.stream as _) }
                .map_err(|e| failed("cuMemcpyDtoHAsync", e))?;
        }
        self.dev.mark(&self.done)?;
        self.dev.wait(&self.done, timeout, spin, "a copy to the host")?;
        self.queued = false;
        Ok(())
    }
}

fn mismatch(op: &'static str, what: String, dst: usize, src: usize) -> OpsError {
    OpsError { op, what, detail: format!("{src} bytes into {dst} bytes") }
}

impl Ops for MemoryOps {
    fn takes_device_memory(&self) -> bool {
        true
    }

    fn alloc(&mut self, place: Place, len: usize) -> Result<Owned, OpsError> {
        let Place::Device(ordinal) = place else { return self.host.alloc(place, len) };
        let (d, _in) = self.device("alloc", ordinal)?;
        let stream = d.dev.stream();
        let ptr = if len == 0 {
            0
        } else {
            let fail = |call| {
                let what = format!("cuda:{ordinal}");
                move |e| OpsError { op: "alloc", what, detail: failed(call, e) }
            };
            // SAFETY: stream-ordered allocation and zeroing on ferrovod's live stream.
            let ptr = unsafe { result::malloc_async(d.dev.stream, len) }.map_err(fail("cuMemAllocAsync"))?;
            // SAFETY: the allocation just made, `len` bytes.
            unsafe { result::memset_d8_async(ptr, 0, len, d.dev.stream) }.map_err(fail("cuMemsetD8Async"))?;
            d.queued = true;
            ptr
        };
        let ptr = DevicePtr { ptr, len, device: ordinal, stream, ready: 0 };
        Ok(Owned::Device(Box::new(CudaAllocation { ptr, dev: d.dev.clone() })))
    }

    fn copy(&mut self, dst: Memory<'_>, src: MemoryRef<'_>) -> Result<(), OpsError> {
        let (timeout, spin) = (self.timeout, self.spin);
        match (dst, src) {
            (dst @ Memory::Host(_), src @ MemoryRef::Host(_)) => self.host.copy(dst, src),
            (Memory::Device(d, _), MemoryRef::Device(s, _)) => {
                if d.len != s.len {
                    return Err(mismatch("copy", format!("cuda:{}", d.device), d.len, s.len));
                }
                if d.device != s.device {
                    let detail = format!("from cuda:{} to cuda:{} (one device per engine)", s.device, d.device);
                    return Err(OpsError { op: "copy", what: format!("cuda:{}", d.device), detail });
                }
                {
                    let (ops, _in) = self.device("copy", d.device)?;
                    ops.dtod(&d, &s).map_err(error("copy", &d))
                }
            }
            (Memory::Device(d, _), MemoryRef::Host(s)) => {
                if d.len != s.len() {
                    return Err(mismatch("copy", format!("cuda:{}", d.device), d.len, s.len()));
                }
                {
                    let (ops, _in) = self.device("copy", d.device)?;
                    ops.htod(&d, s).map_err(error("copy", &d))
                }
            }
            (Memory::Host(h), MemoryRef::Device(s, _)) => {
                if h.len() != s.len {
                    return Err(mismatch("copy", format!("cuda:{}", s.device), h.len(), s.len));
                }
                {
                    let (ops, _in) = self.device("copy", s.device)?;
                    ops.dtoh(h, &s, timeout, spin).map_err(error("copy", &s))
                }
            }
        }
    }

    fn fill_identity(&mut self, dst: Memory<'_>, dtype: DType, op: ReduceOp) -> Result<(), OpsError> {
        let d = match dst {
            Memory::Device(d, _) => d,
            host => return self.host.fill_identity(host, dtype, op),
        };
        let (ops, _in) = self.device("fill", d.device)?;
        let mut scratch = std::mem::take(&mut ops.scratch);
        scratch.resize(d.len, 0);
        fill_identity(dtype, op, &mut scratch);
        let r = ops.htod(&d, &scratch).map_err(error("fill", &d));
        ops.scratch = scratch;
        r
    }

    fn divide(&mut self, buf: Memory<'_>, dtype: DType, n: usize) -> Result<(), OpsError> {
        let d = match buf {
            Memory::Device(d, _) => d,
            host => return self.host.divide(host, dtype, n),
        };
        let (timeout, spin) = (self.timeout, self.spin);
        let (ops, _in) = self.device("divide", d.device)?;
        let mut scratch = std::mem::take(&mut ops.scratch);
        scratch.resize(d.len, 0);
        let r = ops.dtoh(&mut scratch, &d, timeout, spin).and_then(|()| {
            divide(dtype, &mut scratch, n);
            ops.htod(&d, &scratch)
        });
        ops.scratch = scratch;
        r.map_err(error("divide", &d))
    }

    fn finish(&mut self) -> Result<(), OpsError> {
        for (&ordinal, d) in self.devices.iter_mut().filter(|(_, d)| d.queued) {
            let fail = |detail| OpsError { op: "finish", what: format!("cuda:{ordinal}"), detail };
            let _in = d.dev.enter().map_err(fail)?;
            d.dev.mark(&d.done).map_err(fail)?;
            d.dev.wait(&d.done, self.timeout, self.spin, "the collective's device work").map_err(fail)?;
            d.queued = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Host memory never needs CUDA; device memory on a machine without it is the documented
    /// error, naming the device and what is missing.
    #[test]
    fn host_memory_works_and_device_memory_says_what_is_missing() {
        let mut ops = MemoryOps::new(&Tuning::default());
        let mut dst = [0u8; 8];
        ops.copy(Memory::Host(&mut dst), MemoryRef::Host(&2.0f32.to_ne_bytes().repeat(2))).unwrap();
        ops.divide(Memory::Host(&mut dst), DType::F32, 4).unwrap();
        assert_eq!(bytemuck::cast_slice::<u8, f32>(&dst), [0.5, 0.5]);
        ops.finish().unwrap();
        // SAFETY: tries to load the library only.
        if unsafe { cudarc::driver::sys::is_culib_present() } {
            eprintln!("SKIPPED (the device half): this machine has CUDA's driver library");
            return;
        }
        let e = ops.alloc(Place::Device(0), 64).unwrap_err().to_string();
        assert!(e.starts_with("alloc on cuda:0: ") && e.contains("libcuda.so.1"), "{e}");
        let dev = DevicePtr { ptr: 0x1000, len: 8, device: 1, stream: 0, ready: 0 };
        // SAFETY: never dereferenced: CUDA cannot load here, so nothing is queued.
        let e = ops.divide(unsafe { Memory::device(dev) }, DType::F32, 2).unwrap_err().to_string();
        assert!(e.starts_with("divide on cuda:1: ") && e.contains("NVIDIA driver"), "{e}");
        let e = ops.copy(Memory::Host(&mut dst), MemoryRef::Device(dev, std::marker::PhantomData)).unwrap_err();
        assert!(e.to_string().contains("libcuda.so.1"), "{e}");
        ops.finish().unwrap();
    }
}
