//! The DLPack C ABI: just the structs a consumer reads. `__dlpack__(max_version=(1, 0))` gives a
//! `"dltensor_versioned"` capsule ([`ManagedTensorVersioned`], DLPack 1.x, with flags such as
//! [`FLAG_READ_ONLY`]); a producer older than that only gives `__dlpack__()`, a `"dltensor"`
//! capsule ([`ManagedTensor`], version 0.8). Device codes from `dlpack.h`; its dtype codes are
//! `ferrovod::dtype::dlpack_code`, read through `DType::TABLE`.

use std::ffi::c_void;

/// `kDLCPU`.
pub(crate) const DEVICE_CPU: i32 = 1;
/// `kDLCUDA`.
pub(crate) const DEVICE_CUDA: i32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Device {
    pub device_type: i32,
    pub device_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct DataType {
    pub code: u8,
    pub bits: u8,
    pub lanes: u16,
}

#[repr(C)]
#[derive(Debug)]
pub(crate) struct Tensor {
    pub data: *mut c_void,
    pub device: Device,
    pub ndim: i32,
    pub dtype: DataType,
    pub shape: *const i64,
    /// In elements; null means compact row-major.
    pub strides: *const i64,
    pub byte_offset: u64,
}

#[repr(C)]
#[derive(Debug)]
pub(crate) struct ManagedTensor {
    pub dl_tensor: Tensor,
    pub manager_ctx: *mut c_void,
    pub deleter: Option<unsafe extern "C" fn(*mut ManagedTensor)>,
}

/// `DLPACK_FLAG_BITMASK_READ_ONLY`: the consumer must not write the tensor's memory.
pub(crate) const FLAG_READ_ONLY: u64 = 1 << 0;

/// The major version of the versioned ABI this consumer reads.
pub(crate) const MAJOR_VERSION: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct PackVersion {
    pub major: u32,
    pub minor: u32,
}

#[repr(C)]
#[derive(Debug)]
pub(crate) struct ManagedTensorVersioned {
    pub version: PackVersion,
    pub manager_ctx: *mut c_void,
    pub deleter: Option<unsafe extern "C" fn(*mut ManagedTensorVersioned)>,
    pub flags: u64,
    pub dl_tensor: Tensor,
}
