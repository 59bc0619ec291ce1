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
