//! What a caller submits ([`Submission`]), what ranks must agree on ([`Meta`]), and what a
//! completed request hands back ([`Output`]).

use std::ptr::NonNull;

use serde::{Deserialize, Serialize};

pub use crate::collective::Collective;
use crate::dtype::{DType, Element};
use crate::error::Operation;
use crate::error::{Error, Result};
use crate::memory::{DevicePtr, Memory, MemoryRef, Owned, Place};

/// One tensor handed to the engine. The engine owns (or, see [`Submission::borrowed`], has the
/// sole use of) the data until the handle completes.
#[derive(Debug)]
pub struct Submission {
    pub(crate) name: String,
    pub(crate) collective: Collective,
    pub(crate) dtype: DType,
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Buffer,
    pub(crate) splits: Option<Vec<usize>>,
}

/// A submission's memory: a vector the engine owns, host memory the caller lends it, or
/// device memory the caller lends it.
#[derive(Debug)]
pub(crate) enum Buffer {
    Owned(Vec<u8>),
    /// See [`Submission::borrowed`] for the contract that makes using it sound.
    Borrowed {
        ptr: NonNull<u8>,
        len: usize,
    },
    /// See [`Submission::device`].
    Device(DevicePtr),
}

// SAFETY: a borrowed buffer is used by one thread at a time (the engine's), and its lender
// promised not to touch it meanwhile (see `Submission::borrowed`).
unsafe impl Send for Buffer {}

impl Default for Buffer {
    fn default() -> Buffer {
        Buffer::Owned(Vec::new())
    }
}

impl Buffer {
    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        match self {
            Buffer::Owned(v) => v.len(),
            Buffer::Borrowed { len, .. } => *len,
            Buffer::Device(d) => d.len,
        }
    }

    /// Whether it lies in device memory.
    pub(crate) fn is_device(&self) -> bool {
        matches!(self, Buffer::Device(_))
    }

    /// Where it lies.
    pub(crate) fn place(&self) -> Place {
        match self {
            Buffer::Device(d) => Place::Device(d.device),
            _ => Place::Host,
        }
    }

    /// The bytes, when they lie in host memory.
    pub(crate) fn host(&self) -> Option<&[u8]> {
        match self {
            Buffer::Owned(v) => Some(v),
            // SAFETY: valid for `len` bytes and unaliased until the handle completes (the contract).
            Buffer::Borrowed { ptr, len } => Some(unsafe { std::slice::from_raw_parts(ptr.as_ptr(), *len) }),
            Buffer::Device(_) => None,
        }
    }

    /// The memory, for a collective or a memory operation to write.
    pub(crate) fn memory(&mut self) -> Memory<'_> {
        match self {
            Buffer::Owned(v) => Memory::Host(v),
            // SAFETY: as above; writable by the contract.
            Buffer::Borrowed { ptr, len } => {
                Memory::Host(unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), *len) })
            }
            // SAFETY: the lender keeps it allocated and unused until the handle completes.
            Buffer::Device(d) => unsafe { Memory::device(*d) },
        }
    }

    /// The memory, read-only.
    pub(crate) fn memory_ref(&self) -> MemoryRef<'_> {
        match self {
            Buffer::Device(d) => MemoryRef::Device(*d, std::marker::PhantomData),
            host => MemoryRef::Host(host.host().unwrap_or_default()),
        }
    }

    /// The result of an in-place collective: the vector, or nothing when it was written into
    /// the lender's memory.
    pub(crate) fn into_result(self) -> (Owned, bool) {
        match self {
            Buffer::Owned(v) => (Owned::Host(v), false),
            Buffer::Borrowed { .. } | Buffer::Device(_) => (Owned::default(), true),
        }
    }
}

impl Submission {
    /// `data` (raw bytes of `dtype`, `shape` in row-major order) under `name`. The name is what
    /// matches this tensor with the other ranks' submissions.
    pub fn new(name: impl Into<String>, collective: Collective, dtype: DType, shape: &[usize], data: Vec<u8>) -> Self {
        Submission {
            name: name.into(),
            collective,
            dtype,
            shape: shape.to_vec(),
            data: Buffer::Owned(data),
            splits: None,
        }
    }

    /// `len` bytes at `ptr`, used where they lie: an allreduce or broadcast writes its result
    /// there (the handle's [`Output::data`] is then empty and [`Output::in_place`] set); the
    /// other collectives only read them. This is how a binding avoids copying its arrays.
    ///
    /// # Safety
    /// From this call until the returned submission is dropped unsubmitted, or its handle has
    /// completed (`wait` or `poll` reported a result, or the engine was dropped), the `len`
    /// bytes at `ptr` must stay allocated and nothing else may read or write them. They must
    /// be writable if the collective is an allreduce or a broadcast.
    pub unsafe fn borrowed(
        name: impl Into<String>,
        collective: Collective,
        dtype: DType,
        shape: &[usize],
        ptr: NonNull<u8>,
        len: usize,
    ) -> Self {
        let data = Buffer::Borrowed { ptr, len };
        Submission { name: name.into(), collective, dtype, shape: shape.to_vec(), data, splits: None }
    }

    /// `ptr.len` bytes of device memory, used where they lie like [`Submission::borrowed`].
    /// Only a backend that takes device memory runs it; without one the handle fails with an
    /// error that says so.
    ///
    /// # Safety
    /// As for [`Submission::borrowed`]: the region stays allocated, and nothing else uses it,
    /// until the handle completes; the data is ready once `ptr.stream`'s work so far is done.
    pub unsafe fn device(
        name: impl Into<String>,
        collective: Collective,
        dtype: DType,
        shape: &[usize],
        ptr: DevicePtr,
    ) -> Self {
        Submission {
            name: name.into(),
            collective,
            dtype,
            shape: shape.to_vec(),
            data: Buffer::Device(ptr),
            splits: None,
        }
    }

    /// A barrier under `name`: completes once every rank has submitted one under that name.
    pub fn barrier(name: impl Into<String>) -> Self {
        Submission::new(name, Collective::Barrier, DType::U8, &[0], Vec::new())
    }

    /// A typed tensor, copied.
    pub fn from_slice<T: Element>(
        name: impl Into<String>,
        collective: Collective,
        shape: &[usize],
        data: &[T],
    ) -> Self {
        Submission::new(name, collective, T::DTYPE, shape, bytemuck::cast_slice(data).to_vec())
    }

    /// For an all-to-all: how many rows (first-dimension entries) go to each rank.
    pub fn splits(mut self, splits: Vec<usize>) -> Self {
        self.splits = Some(splits);
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks everything this rank can check alone; `rank` and `size` for the messages.
    pub(crate) fn validate(&self, rank: usize, size: usize) -> Result<()> {
        let bad = |detail: String| Error::InvalidArgument { rank, op: self.collective.into(), detail };
        if self.name.is_empty() || self.name.len() > MAX_NAME {
            return Err(bad(format!("a tensor name must have 1 to {MAX_NAME} bytes, not {}", self.name.len())));
        }
        if let Some(why) = self.collective.refuses(self.dtype) {
            return Err(bad(format!("tensor {:?}: {why}", self.name)));
        }
        let elems = self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let bytes = elems.and_then(|e| e.checked_mul(self.dtype.size()));
        if bytes != Some(self.data.len()) {
            return Err(bad(format!(
                "tensor {:?}: {} bytes do not hold shape {:?} of {}",
                self.name,
                self.data.len(),
                self.shape,
                self.dtype
            )));
        }
        let needs_rows =
            !matches!(self.collective, Collective::Allreduce(_) | Collective::Broadcast(_) | Collective::Barrier);
        if needs_rows && self.shape.is_empty() {
            return Err(bad(format!("tensor {:?}: a scalar has no first dimension to split or join", self.name)));
        }
        if let Collective::Broadcast(root) = self.collective
            && root as usize >= size
        {
            return Err(bad(format!("tensor {:?}: root {root} is not a rank of this world of {size}", self.name)));
        }
        match (&self.splits, self.collective) {
            (Some(s), Collective::Alltoall) if s.len() != size || s.iter().sum::<usize>() != self.shape[0] => {
                Err(bad(format!(
                    "tensor {:?}: splits {s:?} must have {size} entries summing to the first dimension {}",
                    self.name, self.shape[0]
                )))
            }
            (Some(_), c) if c != Collective::Alltoall => {
                Err(bad(format!("tensor {:?}: splits are for alltoall only", self.name)))
            }
            _ => Ok(()),
        }
    }

    /// What every rank must agree on.
    pub(crate) fn meta(&self, group: Option<GroupKey>) -> Meta {
        let mut shape: Vec<u64> = self.shape.iter().map(|&d| d as u64).collect();
        if self.collective.ragged() {
            shape[0] = 0;
        }
        Meta { collective: self.collective, dtype: self.dtype, shape, group, device: self.data.is_device() }
    }
}

/// Longest tensor name, in bytes.
pub const MAX_NAME: usize = 4096;

/// Identifies a group on every rank: a hash of its sorted member names and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupKey {
    /// FNV-1a of the sorted names.
    pub hash: u64,
    /// Members.
    pub size: u32,
}

impl GroupKey {
    /// The key of a group of tensors with these names.
    pub(crate) fn of<'a>(names: impl Iterator<Item = &'a str>) -> GroupKey {
        let mut names: Vec<&str> = names.collect();
        names.sort_unstable();
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for n in &names {
            for b in n.bytes().chain([0]) {
                hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        GroupKey { hash, size: names.len() as u32 }
    }
}

/// A tensor's arguments as every rank must agree on them. For allgather and alltoall the first
/// dimension is per rank and not part of it (kept as 0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The collective, with its op or root.
    pub collective: Collective,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<u64>,
    /// The group it was submitted in.
    pub group: Option<GroupKey>,
    /// Whether it lies in device memory: ranks must agree (as Horovod's do on CPU or GPU), and
    /// the fusion never packs host and device tensors together.
    pub device: bool,
}

impl Meta {
    /// The fields ranks must agree on, in the order they are compared.
    pub const FIELDS: [&'static str; 6] = ["op", "root", "dtype", "shape", "group", "memory"];

    /// One field's value, as an error message shows it.
    pub fn field(&self, field: &str) -> String {
        match field {
            "op" => match self.collective {
                Collective::Allreduce(op) | Collective::Reducescatter(op) => {
                    format!("{} {}", self.collective.name(), format!("{op:?}").to_lowercase())
                }
                c => c.name().to_string(),
            },
            "root" => match self.collective {
                Collective::Broadcast(root) => root.to_string(),
                _ => "none".to_string(),
            },
            "dtype" => self.dtype.to_string(),
            "shape" => {
                let dims: Vec<String> = self.shape.iter().map(u64::to_string).collect();
                match dims.split_first() {
                    Some((_, rest)) if self.collective.ragged() => {
                        format!("[*{}]", rest.iter().map(|d| format!(", {d}")).collect::<String>())
                    }
                    _ => format!("[{}]", dims.join(", ")),
                }
            }
            "memory" => if self.device { "device memory" } else { "host memory" }.to_string(),
            _ => self.group.map_or("no group".into(), |g| format!("a group of {} ({:#x})", g.size, g.hash)),
        }
    }

    /// The first field in which `self` and `other` differ.
    pub fn first_difference(&self, other: &Meta) -> Option<&'static str> {
        // Equal metadata has equal fields: the common case, on every announcement, formats nothing.
        if self == other {
            return None;
        }
        Meta::FIELDS.into_iter().find(|f| self.field(f) != other.field(f))
    }

    /// Elements per row (the product of every dimension after the first).
    pub(crate) fn row_elems(&self) -> usize {
        self.shape.iter().skip(1).map(|&d| d as usize).product()
    }

    /// Whether the whole tensor and one row of it fit in memory: [`Meta::bytes`] and
    /// [`Meta::row_elems`] cannot overflow. A peer's announcement is checked with this before
    /// anything is sized by it.
    pub(crate) fn fits(&self) -> bool {
        let bytes = |dims: &[u64]| {
            dims.iter()
                .try_fold(self.dtype.size(), |a, &d| a.checked_mul(usize::try_from(d).ok()?))
                .filter(|&b| b <= isize::MAX as usize)
        };
        bytes(&self.shape).is_some() && bytes(self.shape.get(1..).unwrap_or_default()).is_some()
    }

    /// Bytes of the whole tensor (not for ragged collectives).
    pub(crate) fn bytes(&self) -> usize {
        self.shape.iter().map(|&d| d as usize).product::<usize>() * self.dtype.size()
    }
}

/// A completed request's result.
#[derive(Debug)]
pub struct Output {
    /// Raw bytes of `dtype` (on the device for a device tensor's allgather, reducescatter or
    /// alltoall); empty when the result was written in place (see `in_place`).
    pub data: Owned,
    /// Element type.
    pub dtype: DType,
    /// Shape of the result (for allgather and alltoall, the first dimension is the total).
    pub shape: Vec<usize>,
    /// Alltoall: rows received from each rank. Allgather: rows contributed by each rank.
    pub splits: Option<Vec<usize>>,
    /// The result is in the memory lent with [`Submission::borrowed`], not in `data`.
    pub in_place: bool,
}

impl Output {
    /// A result held in `data`.
    pub(crate) fn owned(data: Owned, dtype: DType, shape: Vec<usize>, splits: Option<Vec<usize>>) -> Output {
        Output { data, dtype, shape, splits, in_place: false }
    }

    /// The data as typed elements; fails if `T` is not the dtype.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype {
            return Err(Error::InvalidArgument {
                rank: 0,
                op: Operation::Output,
                detail: format!("the output holds {}, not {}", self.dtype, T::DTYPE),
            });
        }
        let Owned::Host(data) = &self.data else {
            return Err(Error::InvalidArgument {
                rank: 0,
                op: Operation::Output,
                detail: "the output lies in device memory".into(),
            });
        };
        Ok(data.chunks_exact(size_of::<T>()).map(bytemuck::pod_read_unaligned).collect())
    }
}
