//! The staged path's copies on a CUDA device: two pinned host buffers, copies queued on
//! ferrovod's stream of the device, and one event per buffer that says when its copies are
//! done.

use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::result;

use super::{Device, Event, failed};
use crate::backend::staged::device::DeviceCopies;
use crate::config::Tuning;
use crate::memory::DevicePtr;

/// Page-locked host memory from `cuMemHostAlloc`, freed on drop.
struct Pinned {
    ptr: *mut u8,
    len: usize,
}

impl Pinned {
    const EMPTY: Pinned = Pinned { ptr: std::ptr::null_mut(), len: 0 };

    fn bytes(&mut self, len: usize) -> &mut [u8] {
        if len == 0 {
            return &mut [];
        }
        // SAFETY: `len` ≤ `self.len` (callers check), and the allocation is ours alone.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len) }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: allocated by `cuMemHostAlloc`, freed once, with no copy queued on it
            // (`CudaCopies::drop` waits for them first).
            let _ = unsafe { result::free_host(self.ptr.cast()) };
        }
    }
}

/// [`DeviceCopies`] on a CUDA device.
pub struct CudaCopies {
    dev: Arc<Device>,
    bufs: [Pinned; 2],
    /// Recorded after the last copy queued on each buffer.
    done: [Event; 2],
    /// For ordering ferrovod's stream after a producer's.
    order: Event,
    timeout: Duration,
    spin: Duration,
}

// SAFETY: the pinned buffers are owned by this value alone; the handles are thread-safe (see
// `Device`).
unsafe impl Send for CudaCopies {}

impl CudaCopies {
    /// Copies for device `ordinal`, waiting at most `tuning.timeout` for any one of them.
    pub fn new(ordinal: i32, tuning: &Tuning) -> Result<CudaCopies, String> {
        let dev = Device::get(ordinal)?;
        let done = [dev.event()?, dev.event()?];
        let order = dev.event()?;
        Ok(CudaCopies {
            dev,
            bufs: [Pinned::EMPTY, Pinned::EMPTY],
            done,
            order,
            timeout: tuning.timeout,
            spin: tuning.spin,
        })
    }

    fn check(&self, slot: usize, len: usize, ptr: DevicePtr) -> Result<(), String> {
        if ptr.device != self.dev.ordinal() {
            return Err(format!("memory of cuda:{} reached the copies of cuda:{}", ptr.device, self.dev.ordinal()));
        }
        match self.bufs.get(slot) {
            Some(b) if b.len >= len => Ok(()),
            Some(b) => Err(format!("host buffer {slot} holds {} bytes, {len} asked (size it first)", b.len)),
            None => Err(format!("no host buffer {slot}")),
        }
    }
}

impl DeviceCopies for CudaCopies {
    fn device(&self) -> i32 {
        self.dev.ordinal()
    }

    fn buffers(&mut self, lens: [usize; 2]) -> Result<[&mut [u8]; 2], String> {
        for (slot, &len) in lens.iter().enumerate() {
            if self.bufs[slot].len < len {
                // A copy may still be queued on the old buffer (the trait says not to grow one
                // then, but a failed collective may have left one): wait before freeing it.
                self.wait(slot)?;
                let _in = self.dev.enter()?;
                self.bufs[slot] = Pinned::EMPTY;
                // Grown to a power of two: a job's sizes vary a little from step to step.
                let want = len.next_power_of_two();
                // Flags 0: plain page-locked memory, which the host backend reads and writes at
                // full speed (the write-combined kind, which a flag asks for, reads slowly).
                // SAFETY: a plain allocation; freed by `Pinned::drop`.
                let ptr = unsafe { result::malloc_host(want, 0) }.map_err(|e| failed("cuMemHostAlloc", e))?;
                self.bufs[slot] = Pinned { ptr: ptr.cast(), len: want };
            }
        }
        let [a, b] = &mut self.bufs;
        Ok([a.bytes(lens[0]), b.bytes(lens[1])])
    }

    fn download(&mut self, src: DevicePtr, slot: usize) -> Result<(), String> {
        self.check(slot, src.len, src)?;
        let _in = self.dev.enter()?;
        self.dev.after(&src, &self.order)?;
        if src.len > 0 {
            let dst = self.bufs[slot].bytes(src.len);
            // SAFETY: `dst` is pinned memory of `src.len` bytes that nothing touches until
            // `wait(slot)` (the trait's contract); `src` is live device memory (DevicePtr's).
            unsafe { result::memcpy_dtoh_async(dst, src.ptr, self.dev.stream as _) }
                .map_err(|e| failed("cuMemcpyDtoHAsync", e))?;
        }
        self.dev.mark(&self.done[slot])
    }

    fn upload(&mut self, slot: usize, dst: DevicePtr) -> Result<(), String> {
        self.check(slot, dst.len, dst)?;
        let _in = self.dev.enter()?;
        // Whatever the destination's stream still does with it comes first.
        self.dev.after(&dst, &self.order)?;
        if dst.len > 0 {
            let src = self.bufs[slot].bytes(dst.len);
            // SAFETY: as in `download`, the other way.
            unsafe { result::memcpy_htod_async(dst.ptr, &*src, self.dev.stream as _) }
                .map_err(|e| failed("cuMemcpyHtoDAsync", e))?;
        }
        self.dev.mark(&self.done[slot])
    }

    fn wait(&mut self, slot: usize) -> Result<(), String> {
        let event = self.done.get(slot).ok_or_else(|| format!("no host buffer {slot}"))?;
        let _in = self.dev.enter()?;
        self.dev.wait(event, self.timeout, self.spin, "a staged copy")
    }
}

impl Drop for CudaCopies {
    fn drop(&mut self) {
        // A collective that failed half-way may leave copies queued on the buffers: they must
        // end before the memory is freed. Bounded (at most 10 s each: this runs at shutdown);
        // on failure the buffers are leaked rather than freed under a copy.
        let entered = self.dev.enter();
        let limit = self.timeout.min(Duration::from_secs(10));
        let quiet =
            entered.is_ok() && self.done.iter().all(|e| self.dev.wait(e, limit, self.spin, "a staged copy").is_ok());
        for b in &mut self.bufs {
            let b = std::mem::replace(b, Pinned::EMPTY);
            if quiet {
                drop(b); // freed while the context is current
            } else {
                std::mem::forget(b);
            }
        }
        drop(entered);
    }
}
