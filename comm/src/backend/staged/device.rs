//! What the staged path needs from a device: two host bounce buffers (pinned, for a GPU) and
//! copies between them and device memory, queued in order and waited for per buffer. The CUDA
//! version implements it with a stream, pinned memory and events; [`HostStandIn`] implements
//! it over host memory, so that the staged path's logic runs and is tested on machines
//! without a GPU.

use crate::memory::DevicePtr;

/// Copies between device memory and this copier's two host buffers (`slot` 0 and 1).
///
/// Copies run in the order they are queued, after the work on the device pointer's stream
/// that came before; [`DeviceCopies::wait`] returns once every copy queued on a buffer so far
/// is complete (and, the queue being in order, every copy queued before it). A buffer must
/// not be read or written on the host while a copy on it is queued and not waited for.
pub trait DeviceCopies: Send {
    /// The device (ordinal) whose memory this copier reaches.
    fn device(&self) -> i32;

    /// The two host buffers, the first `lens[i]` bytes of each. A buffer shorter than asked
    /// grows (its contents are then undefined), which must not happen while a copy on it is
    /// queued; callers size both before they queue.
    fn buffers(&mut self, lens: [usize; 2]) -> Result<[&mut [u8]; 2], String>;

    /// Queues a copy of `src` into the first `src.len` bytes of buffer `slot`.
    fn download(&mut self, src: DevicePtr, slot: usize) -> Result<(), String>;

    /// Queues a copy of the first `dst.len` bytes of buffer `slot` into `dst`.
    fn upload(&mut self, slot: usize, dst: DevicePtr) -> Result<(), String>;

    /// Waits until every copy queued on buffer `slot` so far is complete.
    fn wait(&mut self, slot: usize) -> Result<(), String>;
}

/// A [`DeviceCopies`] over host memory: a "device pointer" is a host address. For tests of
/// the staged path on machines without a GPU; the copies happen when queued.
pub struct HostStandIn {
    device: i32,
    buffers: [Vec<u8>; 2],
}

impl HostStandIn {
    /// A stand-in for device `device`.
    ///
    /// # Safety
    /// Every [`DevicePtr`] given to it must be the address and length of host memory that is
    /// valid, and used by nothing else, while the collective that passes it runs.
    pub unsafe fn new(device: i32) -> HostStandIn {
        HostStandIn { device, buffers: [Vec::new(), Vec::new()] }
    }

    fn slot(&mut self, slot: usize, len: usize) -> Result<&mut Vec<u8>, String> {
        let b = self.buffers.get_mut(slot).ok_or_else(|| format!("no host buffer {slot}"))?;
        if b.len() < len {
            b.resize(len, 0);
        }
        Ok(b)
    }
}

impl DeviceCopies for HostStandIn {
    fn device(&self) -> i32 {
        self.device
    }

    fn buffers(&mut self, lens: [usize; 2]) -> Result<[&mut [u8]; 2], String> {
        for (b, &len) in self.buffers.iter_mut().zip(&lens) {
            if b.len() < len {
                b.resize(len, 0);
            }
        }
        let [a, b] = &mut self.buffers;
        Ok([&mut a[..lens[0]], &mut b[..lens[1]]])
    }

    fn download(&mut self, src: DevicePtr, slot: usize) -> Result<(), String> {
        let dst = self.slot(slot, src.len)?;
        // SAFETY: `new`'s contract: `src` is valid host memory of `src.len` bytes, unaliased.
        let src = unsafe { std::slice::from_raw_parts(src.ptr as *const u8, src.len) };
        dst[..src.len()].copy_from_slice(src);
        Ok(())
    }

    fn upload(&mut self, slot: usize, dst: DevicePtr) -> Result<(), String> {
        let src = self.slot(slot, dst.len)?;
        // SAFETY: as in `download`.
        let out = unsafe { std::slice::from_raw_parts_mut(dst.ptr as *mut u8, dst.len) };
        out.copy_from_slice(&src[..dst.len]);
        Ok(())
    }

    fn wait(&mut self, _slot: usize) -> Result<(), String> {
        Ok(())
    }
}
