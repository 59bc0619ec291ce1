//! Memory a collective reads or writes: host bytes, or an allocation on an accelerator.
//!
//! | type | what it is |
//! |---|---|
//! | [`Memory`] | writable: `&mut [u8]` on the host, or a [`DevicePtr`] |
//! | [`MemoryRef`] | read-only: `&[u8]` on the host, or a [`DevicePtr`] |
//! | [`DevicePtr`] | an address on a device, its length, the device and the stream that orders it |
//! | [`Owned`] | memory [`Ops::alloc`] made: a host vector, or a device allocation freed on drop |
//! | [`Ops`] | the allocations, copies, fills and scalings the engine does on memory; [`HostOps`] for the host |
//!
//! Backends say which memory they accept: the host backend takes host memory only, so device
//! memory reaches the backends that come before it in the list (NCCL, the staged path) or an
//! error that says no backend takes it. The engine allocates its fusion buffer and the results
//! of allgather, reducescatter and alltoall, and does its copies, identity fills and averaging,
//! through [`Ops`], never by touching bytes itself, so a device version slots in beside
//! [`HostOps`].

use std::fmt;
use std::marker::PhantomData;

use crate::dtype::{DType, ReduceOp};
use crate::reduce::{divide, fill_identity};

/// A region of device memory. Ferrovod never dereferences it on the host; a device backend
/// or a device [`Ops`] does, on `stream`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevicePtr {
    /// The device address (`CUdeviceptr`).
    pub ptr: u64,
    /// Length in bytes.
    pub len: usize,
    /// The device ordinal.
    pub device: i32,
    /// The stream whose work produced the data and that must order work on it (0: the
    /// default stream).
    pub stream: u64,
    /// An event (`CUevent`) recorded after the work that produced the data, or 0. When set,
    /// it orders the collective instead of `stream`: only that work, and nothing queued on the
    /// stream after it, comes first.
    pub ready: u64,
}

impl DevicePtr {
    /// The bytes `range` of this region (checked: a range past the end is clamped to empty).
    pub fn slice(&self, start: usize, end: usize) -> DevicePtr {
        let (start, end) = (start.min(self.len), end.min(self.len).max(start.min(self.len)));
        DevicePtr { ptr: self.ptr + start as u64, len: end - start, ..*self }
    }
}

/// Where memory lies, as far as the engine must know: ranks agree on it per tensor, and the
/// fusion never mixes the two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Place {
    /// Host memory.
    Host,
    /// Memory on this device (an ordinal of this process).
    Device(i32),
}

impl Place {
    /// Whether it is on a device.
    pub fn is_device(self) -> bool {
        matches!(self, Place::Device(_))
    }
}

/// An allocation on a device, made by a device [`Ops`]; dropping it frees it.
pub trait DeviceAllocation: Send + fmt::Debug {
    /// The memory.
    fn ptr(&self) -> DevicePtr;
}

/// Memory that [`Ops::alloc`] made, owned by whoever holds it.
#[derive(Debug)]
pub enum Owned {
    /// A host vector.
    Host(Vec<u8>),
    /// A device allocation.
    Device(Box<dyn DeviceAllocation>),
}

impl Default for Owned {
    fn default() -> Owned {
        Owned::Host(Vec::new())
    }
}

impl Owned {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Owned::Host(v) => v.len(),
            Owned::Device(d) => d.ptr().len,
        }
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where it lies.
    pub fn place(&self) -> Place {
        match self {
            Owned::Host(_) => Place::Host,
            Owned::Device(d) => Place::Device(d.ptr().device),
        }
    }

    /// The memory, to write.
    pub fn memory(&mut self) -> Memory<'_> {
        match self {
            Owned::Host(v) => Memory::Host(v),
            // SAFETY: the allocation lives as long as `self`, and `&mut self` is the only use.
            Owned::Device(d) => unsafe { Memory::device(d.ptr()) },
        }
    }

    /// The memory, to read.
    pub fn memory_ref(&self) -> MemoryRef<'_> {
        match self {
            Owned::Host(v) => MemoryRef::Host(v),
            Owned::Device(d) => MemoryRef::Device(d.ptr(), PhantomData),
        }
    }

    /// The host vector, if it is one.
    pub fn into_host(self) -> Option<Vec<u8>> {
        match self {
            Owned::Host(v) => Some(v),
            Owned::Device(_) => None,
        }
    }
}

/// Memory a collective writes (and reads).
#[derive(Debug)]
pub enum Memory<'a> {
    /// Host bytes.
    Host(&'a mut [u8]),
    /// Device bytes, borrowed for `'a`.
    Device(DevicePtr, PhantomData<&'a mut [u8]>),
}

/// Memory a collective only reads.
#[derive(Debug, Clone, Copy)]
pub enum MemoryRef<'a> {
    /// Host bytes.
    Host(&'a [u8]),
    /// Device bytes, borrowed for `'a`.
    Device(DevicePtr, PhantomData<&'a [u8]>),
}

impl<'a> From<&'a mut [u8]> for Memory<'a> {
    fn from(b: &'a mut [u8]) -> Memory<'a> {
        Memory::Host(b)
    }
}

impl<'a, const N: usize> From<&'a mut [u8; N]> for Memory<'a> {
    fn from(b: &'a mut [u8; N]) -> Memory<'a> {
        Memory::Host(b)
    }
}

impl<'a> From<&'a mut Vec<u8>> for Memory<'a> {
    fn from(b: &'a mut Vec<u8>) -> Memory<'a> {
        Memory::Host(b)
    }
}

impl<'a> From<&'a [u8]> for MemoryRef<'a> {
    fn from(b: &'a [u8]) -> MemoryRef<'a> {
        MemoryRef::Host(b)
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for MemoryRef<'a> {
    fn from(b: &'a [u8; N]) -> MemoryRef<'a> {
        MemoryRef::Host(b)
    }
}

impl<'a> From<&'a Vec<u8>> for MemoryRef<'a> {
    fn from(b: &'a Vec<u8>) -> MemoryRef<'a> {
        MemoryRef::Host(b)
    }
}

impl<'a> Memory<'a> {
    /// The host bytes, for the whole borrow, if it is host memory.
    pub fn into_host(self) -> Option<&'a mut [u8]> {
        match self {
            Memory::Host(b) => Some(b),
            Memory::Device(..) => None,
        }
    }

    /// Device memory, borrowed for `'a`.
    ///
    /// # Safety
    /// For `'a`, the region must stay allocated and nothing else may use it.
    pub unsafe fn device(ptr: DevicePtr) -> Memory<'a> {
        Memory::Device(ptr, PhantomData)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Memory::Host(b) => b.len(),
            Memory::Device(d, _) => d.len,
        }
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether it lies in host memory.
    pub fn is_host(&self) -> bool {
        matches!(self, Memory::Host(_))
    }

    /// Where it lies.
    pub fn place(&self) -> Place {
        self.as_ref().place()
    }

    /// The host bytes, if it is host memory.
    pub fn host(&mut self) -> Option<&mut [u8]> {
        match self {
            Memory::Host(b) => Some(b),
            Memory::Device(..) => None,
        }
    }

    /// The device region, if it is device memory.
    pub fn device_ptr(&self) -> Option<DevicePtr> {
        match self {
            Memory::Device(p, _) => Some(*p),
            Memory::Host(_) => None,
        }
    }

    /// Reborrows it, for a shorter use.
    pub fn reborrow(&mut self) -> Memory<'_> {
        match self {
            Memory::Host(b) => Memory::Host(b),
            Memory::Device(d, _) => Memory::Device(*d, PhantomData),
        }
    }

    /// Reborrows bytes `start..end` (which must lie within it).
    pub fn range(&mut self, start: usize, end: usize) -> Memory<'_> {
        match self {
            Memory::Host(b) => Memory::Host(&mut b[start..end]),
            Memory::Device(d, _) => Memory::Device(d.slice(start, end), PhantomData),
        }
    }

    /// Bytes `start..end` (which must lie within it), for as long as the whole.
    pub fn into_range(self, start: usize, end: usize) -> Memory<'a> {
        match self {
            Memory::Host(b) => Memory::Host(&mut b[start..end]),
            Memory::Device(d, _) => Memory::Device(d.slice(start, end), PhantomData),
        }
    }

    /// A read-only view.
    pub fn as_ref(&self) -> MemoryRef<'_> {
        match self {
            Memory::Host(b) => MemoryRef::Host(b),
            Memory::Device(d, _) => MemoryRef::Device(*d, PhantomData),
        }
    }
}

impl<'a> MemoryRef<'a> {
    /// Device memory, borrowed read-only for `'a`.
    ///
    /// # Safety
    /// For `'a`, the region must stay allocated and nothing may write it.
    pub unsafe fn device(ptr: DevicePtr) -> MemoryRef<'a> {
        MemoryRef::Device(ptr, PhantomData)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            MemoryRef::Host(b) => b.len(),
            MemoryRef::Device(d, _) => d.len,
        }
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether it lies in host memory.
    pub fn is_host(&self) -> bool {
        matches!(self, MemoryRef::Host(_))
    }

    /// Where it lies.
    pub fn place(&self) -> Place {
        match self {
            MemoryRef::Host(_) => Place::Host,
            MemoryRef::Device(d, _) => Place::Device(d.device),
        }
    }

    /// The host bytes, if it is host memory.
    pub fn host(&self) -> Option<&'a [u8]> {
        match *self {
            MemoryRef::Host(b) => Some(b),
            MemoryRef::Device(..) => None,
        }
    }

    /// The device region, if it is device memory.
    pub fn device_ptr(&self) -> Option<DevicePtr> {
        match self {
            MemoryRef::Device(p, _) => Some(*p),
            MemoryRef::Host(_) => None,
        }
    }

    /// Bytes `start..end` (which must lie within it).
    pub fn range(&self, start: usize, end: usize) -> MemoryRef<'a> {
        match *self {
            MemoryRef::Host(b) => MemoryRef::Host(&b[start..end]),
            MemoryRef::Device(d, _) => MemoryRef::Device(d.slice(start, end), PhantomData),
        }
    }
}

/// Why a memory operation could not run.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{op} on {what}: {detail}")]
pub struct OpsError {
    /// The operation: alloc, copy, fill, divide.
    pub op: &'static str,
    /// Which memory: host, device N.
    pub what: String,
    /// What went wrong.
    pub detail: String,
}

/// The memory operations the engine does itself (everything else is a collective): the
/// fusion buffer and the results it allocates, copies into and out of them, the identity fill
/// of a joined rank's stand-in, and the division of an average. [`HostOps`] does them on host
/// memory; a device version runs them on the memory's stream. They are called from whichever
/// thread runs the engine's rounds (its own, or a caller waiting for a result), so a device
/// version makes its context current in each call.
pub trait Ops: Send {
    /// Whether these operations reach device memory (the host version does not, and the
    /// engine refuses device tensors without it).
    fn takes_device_memory(&self) -> bool {
        false
    }

    /// `len` zeroed bytes at `place`.
    fn alloc(&mut self, place: Place, len: usize) -> Result<Owned, OpsError>;
    /// Copies `src` into `dst` (equal lengths).
    fn copy(&mut self, dst: Memory<'_>, src: MemoryRef<'_>) -> Result<(), OpsError>;
    /// Fills `dst` with the identity of `op` for `dtype`.
    fn fill_identity(&mut self, dst: Memory<'_>, dtype: DType, op: ReduceOp) -> Result<(), OpsError>;
    /// Divides every element of `buf` by `n`.
    fn divide(&mut self, buf: Memory<'_>, dtype: DType, n: usize) -> Result<(), OpsError>;
    /// Returns once every operation so far is complete: the engine calls it before it
    /// completes the handles of a response (device operations may only be queued until then).
    fn finish(&mut self) -> Result<(), OpsError> {
        Ok(())
    }
}

/// [`Ops`] on host memory: plain copies and the vectorised kernels of [`crate::reduce`].
#[derive(Debug, Default, Clone, Copy)]
pub struct HostOps;

fn no_device(op: &'static str, device: i32) -> OpsError {
    OpsError {
        op,
        what: format!("device {device}"),
        detail: "the host memory operations cannot reach device memory (no device support loaded)".into(),
    }
}

impl Ops for HostOps {
    fn alloc(&mut self, place: Place, len: usize) -> Result<Owned, OpsError> {
        match place {
            Place::Host => Ok(Owned::Host(vec![0; len])),
            Place::Device(device) => Err(no_device("alloc", device)),
        }
    }

    fn copy(&mut self, dst: Memory<'_>, src: MemoryRef<'_>) -> Result<(), OpsError> {
        match (dst, src) {
            (Memory::Host(d), MemoryRef::Host(s)) if d.len() == s.len() => {
                d.copy_from_slice(s);
                Ok(())
            }
            (Memory::Host(d), MemoryRef::Host(s)) => Err(OpsError {
                op: "copy",
                what: "host".into(),
                detail: format!("{} bytes into {} bytes", s.len(), d.len()),
            }),
            (Memory::Device(d, _), _) | (_, MemoryRef::Device(d, _)) => Err(no_device("copy", d.device)),
        }
    }

    fn fill_identity(&mut self, dst: Memory<'_>, dtype: DType, op: ReduceOp) -> Result<(), OpsError> {
        match dst {
            Memory::Host(d) => {
                fill_identity(dtype, op, d);
                Ok(())
            }
            Memory::Device(d, _) => Err(no_device("fill", d.device)),
        }
    }

    fn divide(&mut self, buf: Memory<'_>, dtype: DType, n: usize) -> Result<(), OpsError> {
        match buf {
            Memory::Host(b) => {
                divide(dtype, b, n);
                Ok(())
            }
            Memory::Device(d, _) => Err(no_device("divide", d.device)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ops_copy_fill_divide_and_refuse_device_memory() {
        let mut ops = HostOps;
        let mut dst = [0u8; 8];
        let src = 7.0f32.to_ne_bytes().repeat(2);
        ops.copy(Memory::Host(&mut dst), MemoryRef::Host(&src)).unwrap();
        assert_eq!(dst.as_slice(), src.as_slice());
        ops.divide(Memory::Host(&mut dst), DType::F32, 2).unwrap();
        assert_eq!(bytemuck::cast_slice::<u8, f32>(&dst), [3.5, 3.5]);
        ops.fill_identity(Memory::Host(&mut dst), DType::F32, ReduceOp::Product).unwrap();
        assert_eq!(bytemuck::cast_slice::<u8, f32>(&dst), [1.0, 1.0]);
        let short = [0u8; 4];
        assert!(ops.copy(Memory::Host(&mut dst), MemoryRef::Host(&short)).is_err());
        let dev = DevicePtr { ptr: 0x1000, len: 8, device: 3, stream: 0, ready: 0 };
        // SAFETY: never dereferenced: the host ops refuse device memory.
        let e = ops.divide(unsafe { Memory::device(dev) }, DType::F32, 2).unwrap_err();
        assert!(e.to_string().contains("device 3"), "{e}");
        assert_eq!(ops.alloc(Place::Host, 3).unwrap().into_host(), Some(vec![0; 3]));
        let e = ops.alloc(Place::Device(1), 3).unwrap_err();
        assert!(e.to_string().contains("alloc on device 1"), "{e}");
    }

    #[test]
    fn ranges_of_host_and_device_memory() {
        let mut b = [1u8, 2, 3, 4];
        let mut m = Memory::Host(&mut b);
        assert_eq!(m.range(1, 3).host().unwrap(), &[2, 3]);
        let dev = DevicePtr { ptr: 0x1000, len: 8, device: 0, stream: 9, ready: 0 };
        assert_eq!(dev.slice(2, 6), DevicePtr { ptr: 0x1002, len: 4, device: 0, stream: 9, ready: 0 });
        assert_eq!(dev.slice(6, 100).len, 2);
        assert_eq!(dev.slice(9, 100).len, 0);
    }
}
