//! The DLPack C ABI (version 0.8, what `__dlpack__()` returns when asked for no version): just
//! the structs a consumer reads. Device codes from `dlpack.h`; its dtype codes are
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
