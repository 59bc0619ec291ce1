//! NCCL's C interface, as `nccl.h` declares it: the types and the signatures of the functions
//! ferrovod resolves at run time. Nothing here is called directly; [`super::library`] loads
//! the symbols.

use std::ffi::{c_char, c_int, c_void};

/// `ncclResult_t`: 0 is success.
pub type NcclResult = c_int;
/// `ncclComm_t`: an opaque communicator.
pub type NcclComm = *mut c_void;
/// `cudaStream_t`.
pub type CudaStream = *mut c_void;
/// `ncclDataType_t`.
pub type NcclDataType = c_int;
/// `ncclRedOp_t`.
pub type NcclRedOp = c_int;

/// `ncclUniqueId`: what rank 0 makes and every rank needs to join one communicator.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NcclUniqueId {
    /// Opaque bytes.
    pub internal: [c_char; 128],
}

/// `ncclSuccess`.
pub const NCCL_SUCCESS: NcclResult = 0;
/// `ncclInProgress`: a non-blocking communicator's call is still running.
pub const NCCL_IN_PROGRESS: NcclResult = 7;

/// `ncclGetVersion`.
pub type GetVersion = unsafe extern "C" fn(*mut c_int) -> NcclResult;
/// `ncclGetErrorString`.
pub type GetErrorString = unsafe extern "C" fn(NcclResult) -> *const c_char;
/// `ncclGetLastError`.
pub type GetLastError = unsafe extern "C" fn(NcclComm) -> *const c_char;
/// `ncclGetUniqueId`.
pub type GetUniqueId = unsafe extern "C" fn(*mut NcclUniqueId) -> NcclResult;
/// `ncclCommInitRankConfig`; the config is `ncclConfig_t *`, whose layout depends on the
/// library's version.
pub type CommInitRankConfig =
    unsafe extern "C" fn(*mut NcclComm, c_int, NcclUniqueId, c_int, *mut c_void) -> NcclResult;
/// `ncclCommFinalize`, `ncclCommDestroy`, `ncclCommAbort`.
pub type CommOp = unsafe extern "C" fn(NcclComm) -> NcclResult;
/// `ncclCommGetAsyncError`.
pub type CommGetAsyncError = unsafe extern "C" fn(NcclComm, *mut NcclResult) -> NcclResult;
/// `ncclCommCount`, `ncclCommCuDevice`, `ncclCommUserRank`.
pub type CommInt = unsafe extern "C" fn(NcclComm, *mut c_int) -> NcclResult;
/// `ncclAllReduce` (and `ncclReduceScatter`).
pub type AllReduce = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    NcclDataType,
    NcclRedOp,
    NcclComm,
    CudaStream,
) -> NcclResult;
/// `ncclBroadcast`.
pub type Broadcast =
    unsafe extern "C" fn(*const c_void, *mut c_void, usize, NcclDataType, c_int, NcclComm, CudaStream) -> NcclResult;
/// `ncclAllGather`.
pub type AllGather =
    unsafe extern "C" fn(*const c_void, *mut c_void, usize, NcclDataType, NcclComm, CudaStream) -> NcclResult;
/// `ncclReduceScatter`.
pub type ReduceScatter = AllReduce;
/// `ncclSend`.
pub type Send = unsafe extern "C" fn(*const c_void, usize, NcclDataType, c_int, NcclComm, CudaStream) -> NcclResult;
/// `ncclRecv`.
pub type Recv = unsafe extern "C" fn(*mut c_void, usize, NcclDataType, c_int, NcclComm, CudaStream) -> NcclResult;
/// `ncclGroupStart`, `ncclGroupEnd`.
pub type Group = unsafe extern "C" fn() -> NcclResult;

/// `ncclConfig_t` as NCCL 2.14 laid it out: the fields up to `blocking`. NCCL reads `size`
/// bytes of it and, for a config of an older `version`, fills every later field with its
/// default, so this prefix works with every newer library.
#[repr(C)]
pub struct NcclConfig {
    /// `sizeof` this struct.
    pub size: usize,
    /// [`CONFIG_MAGIC`].
    pub magic: u32,
    /// The `NCCL_VERSION` code of the layout: [`CONFIG_VERSION`].
    pub version: u32,
    /// 0: calls return at once (`ncclInProgress`), their outcome read with
    /// `ncclCommGetAsyncError`.
    pub blocking: c_int,
}

/// `NCCL_CONFIG_INITIALIZER`'s magic.
pub const CONFIG_MAGIC: u32 = 0xcafe_beef;
/// `NCCL_VERSION(2, 14, 0)`.
pub const CONFIG_VERSION: u32 = 21400;

/// `ncclDataType_t` values.
pub mod dtype {
    use super::NcclDataType;
    /// `ncclInt8`.
    pub const INT8: NcclDataType = 0;
    /// `ncclUint8`.
    pub const UINT8: NcclDataType = 1;
    /// `ncclInt32`.
    pub const INT32: NcclDataType = 2;
    /// `ncclInt64`.
    pub const INT64: NcclDataType = 4;
    /// `ncclFloat16`.
    pub const FLOAT16: NcclDataType = 6;
    /// `ncclFloat32`.
    pub const FLOAT32: NcclDataType = 7;
    /// `ncclFloat64`.
    pub const FLOAT64: NcclDataType = 8;
    /// `ncclBfloat16`.
    pub const BFLOAT16: NcclDataType = 9;
}

/// `ncclRedOp_t` values.
pub mod op {
    use super::NcclRedOp;
    /// `ncclSum`.
    pub const SUM: NcclRedOp = 0;
    /// `ncclProd`.
    pub const PROD: NcclRedOp = 1;
    /// `ncclMax`.
    pub const MAX: NcclRedOp = 2;
    /// `ncclMin`.
    pub const MIN: NcclRedOp = 3;
    /// `ncclAvg` (NCCL 2.10 and later).
    pub const AVG: NcclRedOp = 4;
}
