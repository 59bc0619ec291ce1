//! How a `tch::Tensor` is handed to ferrovod: its dtype, its shape, and its bytes where they lie.

use std::ptr::NonNull;

use ferrovod::error::Operation;
use ferrovod::{DType, Error, Result};
use tch::{Device, Kind, Tensor};

/// The ferrovod dtype of a tch kind, if ferrovod reduces it.
pub fn dtype_of(kind: Kind) -> Option<DType> {
    Some(match kind {
        Kind::Uint8 => DType::U8,
        Kind::Int8 => DType::I8,
        Kind::Int16 => DType::I16,
        Kind::Int => DType::I32,
        Kind::Int64 => DType::I64,
        Kind::Half => DType::F16,
        Kind::BFloat16 => DType::BF16,
        Kind::Float => DType::F32,
        Kind::Double => DType::F64,
        Kind::Bool => DType::Bool,
        _ => return None,
    })
}

/// The tch kind of a ferrovod dtype.
pub fn kind_of(dtype: DType) -> Kind {
    match dtype {
        DType::U8 => Kind::Uint8,
        DType::I8 => Kind::Int8,
        DType::I16 => Kind::Int16,
        DType::I32 => Kind::Int,
        DType::I64 => Kind::Int64,
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
        DType::F32 => Kind::Float,
        DType::F64 => Kind::Double,
        DType::Bool => Kind::Bool,
    }
}

/// A tensor's host bytes, as the engine or a communicator takes them.
pub(crate) struct Lent {
    pub(crate) ptr: NonNull<u8>,
    pub(crate) len: usize,
    pub(crate) dtype: DType,
    pub(crate) shape: Vec<usize>,
}

/// The tensor's bytes, if it is a defined, contiguous CPU tensor of a reducible kind; otherwise
/// the reason, as an error of `op` on `rank`.
pub(crate) fn lend(tensor: &Tensor, rank: usize, op: Operation) -> Result<Lent> {
    let bad = |detail: String| Error::InvalidArgument { rank, op: op.clone(), detail };
    if !tensor.defined() {
        return Err(bad("the tensor is undefined".into()));
    }
    match tensor.device() {
        Device::Cpu => {}
        other => {
            return Err(bad(format!(
                "the tensor lies on {other:?}; ferrovod-tch moves CPU tensors only until the GPU \
                 backend lands (move it with .to_device(Device::Cpu))"
            )));
        }
    }
    let dtype =
        dtype_of(tensor.kind()).ok_or_else(|| bad(format!("ferrovod does not reduce {:?} tensors", tensor.kind())))?;
    if !tensor.is_contiguous() {
        return Err(bad("the tensor is not contiguous".into()));
    }
    let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
    let len = tensor.numel() * dtype.size();
    // An empty tensor may have no storage; any aligned non-null pointer does for zero bytes.
    let ptr = NonNull::new(tensor.data_ptr().cast::<u8>()).unwrap_or(NonNull::dangling());
    Ok(Lent { ptr, len, dtype, shape })
}

/// A libtorch failure as a ferrovod error of `op` on `rank`: its message, without the C++
/// stack libtorch appends.
pub(crate) fn torch_failed(rank: usize, op: Operation, err: tch::TchError) -> Error {
    let text = err.to_string();
    let detail = text.split("\nException raised from").next().unwrap_or_default().trim_end().to_string();
    Error::Backend { rank, op, backend: "tch", detail }
}
