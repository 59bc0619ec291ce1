//! Element types and reduction operations, as they travel on the wire and through the API.

use std::fmt;

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

/// The element type of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum DType {
    /// Unsigned 8-bit integer.
    U8 = 1,
    /// Signed 8-bit integer.
    I8 = 2,
    /// Signed 32-bit integer.
    I32 = 3,
    /// Signed 64-bit integer.
    I64 = 4,
    /// IEEE 754 half precision.
    F16 = 5,
    /// bfloat16.
    BF16 = 6,
    /// IEEE 754 single precision.
    F32 = 7,
    /// IEEE 754 double precision.
    F64 = 8,
    /// Signed 16-bit integer.
    I16 = 9,
    /// Boolean, one byte (0 or 1). Reduced as logic: sum and max are "or", product and min
    /// "and"; average is refused.
    Bool = 10,
}

/// DLPack's type codes (`DLDataTypeCode` in `dlpack.h`), as [`DTypeInfo::dlpack`] uses them.
pub mod dlpack_code {
    /// `kDLInt`: signed integer.
    pub const INT: u8 = 0;
    /// `kDLUInt`: unsigned integer.
    pub const UINT: u8 = 1;
    /// `kDLFloat`: IEEE 754 float.
    pub const FLOAT: u8 = 2;
    /// `kDLBfloat`: bfloat16.
    pub const BFLOAT: u8 = 4;
    /// `kDLBool`: boolean.
    pub const BOOL: u8 = 6;
}

/// Everything ferrovod knows about one dtype, in one row of [`DType::TABLE`]: the bindings read
/// their buffer-protocol and DLPack conversions from it, and Python its numpy and torch maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DTypeInfo {
    /// The dtype this row describes.
    pub dtype: DType,
    /// The short name used on the wire, in messages and by the API (`f32`, `bf16`, ...).
    pub name: &'static str,
    /// The name numpy and torch give it (`float32`, `bfloat16`, ...).
    pub long_name: &'static str,
    /// Size of one element in bytes.
    pub size: usize,
    /// DLPack `(code, bits)` with one lane; codes in [`dlpack_code`].
    pub dlpack: (u8, u8),
    /// Python struct-module format characters that mean it when the buffer's item size is
    /// [`size`](Self::size) (`l` is 4 or 8 bytes depending on the platform). Empty when the
    /// buffer protocol has no character for it (bfloat16).
    pub formats: &'static [&'static str],
}

impl DType {
    /// The one table of dtypes, in wire order (`TABLE[i].dtype as u8 == i + 1`, checked at
    /// compile time).
    #[rustfmt::skip]
    pub const TABLE: &'static [DTypeInfo] = {
        use dlpack_code::{BFLOAT, BOOL, FLOAT, INT, UINT};
        const INTS: &[&str] = &["i", "l", "q", "n"];
        &[
            DTypeInfo { dtype: DType::U8,   name: "u8",   long_name: "uint8",    size: 1, dlpack: (UINT, 8),    formats: &["B"] },
            DTypeInfo { dtype: DType::I8,   name: "i8",   long_name: "int8",     size: 1, dlpack: (INT, 8),     formats: &["b"] },
            DTypeInfo { dtype: DType::I32,  name: "i32",  long_name: "int32",    size: 4, dlpack: (INT, 32),    formats: INTS },
            DTypeInfo { dtype: DType::I64,  name: "i64",  long_name: "int64",    size: 8, dlpack: (INT, 64),    formats: INTS },
            DTypeInfo { dtype: DType::F16,  name: "f16",  long_name: "float16",  size: 2, dlpack: (FLOAT, 16),  formats: &["e"] },
            DTypeInfo { dtype: DType::BF16, name: "bf16", long_name: "bfloat16", size: 2, dlpack: (BFLOAT, 16), formats: &[] },
            DTypeInfo { dtype: DType::F32,  name: "f32",  long_name: "float32",  size: 4, dlpack: (FLOAT, 32),  formats: &["f"] },
            DTypeInfo { dtype: DType::F64,  name: "f64",  long_name: "float64",  size: 8, dlpack: (FLOAT, 64),  formats: &["d"] },
            DTypeInfo { dtype: DType::I16,  name: "i16",  long_name: "int16",    size: 2, dlpack: (INT, 16),    formats: &["h"] },
            DTypeInfo { dtype: DType::Bool, name: "bool", long_name: "bool",     size: 1, dlpack: (BOOL, 8),    formats: &["?"] },
        ]
    };

    /// Every dtype, in wire order.
    pub const ALL: [DType; DType::TABLE.len()] = {
        let mut all = [DType::U8; DType::TABLE.len()];
        let mut i = 0;
        while i < all.len() {
            all[i] = DType::TABLE[i].dtype;
            i += 1;
        }
        all
    };

    /// This dtype's row of [`DType::TABLE`].
    pub const fn info(self) -> &'static DTypeInfo {
        &DType::TABLE[self as usize - 1]
    }

    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        self.info().size
    }

    /// The short lowercase name (`f32`, `bf16`, ...).
    pub const fn name(self) -> &'static str {
        self.info().name
    }

    /// Parses a name as printed by [`DType::name`].
    pub fn from_name(name: &str) -> Option<DType> {
        DType::TABLE.iter().find(|d| d.name == name).map(|d| d.dtype)
    }

    /// The dtype of a DLPack `(code, bits, lanes)`; `None` for one ferrovod does not carry.
    pub fn from_dlpack(code: u8, bits: u8, lanes: u16) -> Option<DType> {
        if lanes != 1 {
            return None;
        }
        DType::TABLE.iter().find(|d| d.dlpack == (code, bits)).map(|d| d.dtype)
    }

    /// The dtype of a Python buffer's format string and item size: one struct-module character,
    /// optionally after a native (`@`, `=`) or, on little-endian machines, a `<` prefix. `None`
    /// for anything else (big-endian data, unsigned 16-bit, complex, structs).
    pub fn from_buffer_format(format: &str, itemsize: usize) -> Option<DType> {
        if cfg!(target_endian = "big") && format.starts_with('<') {
            return None;
        }
        let code = format.strip_prefix(['@', '=', '<']).unwrap_or(format);
        DType::TABLE.iter().find(|d| d.size == itemsize && d.formats.contains(&code)).map(|d| d.dtype)
    }

    /// The names numpy and torch give the dtypes ferrovod carries, for messages:
    /// `"uint8, int8, ..., float32 and float64"`.
    pub fn supported() -> String {
        let names: Vec<&str> = DType::TABLE.iter().map(|d| d.long_name).collect();
        match names.split_last() {
            Some((last, [])) => (*last).to_string(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
            None => String::new(),
        }
    }

    pub(crate) fn from_u8(v: u8) -> Option<DType> {
        DType::TABLE.iter().find(|d| d.dtype as u8 == v).map(|d| d.dtype)
    }
}

// Row i of the table describes the dtype whose wire value is i + 1 (what `info` relies on).
const _: () = {
    let mut i = 0;
    while i < DType::TABLE.len() {
        assert!(DType::TABLE[i].dtype as usize == i + 1, "DType::TABLE is out of wire order");
        i += 1;
    }
};

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An element-wise reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum ReduceOp {
    /// Sum (integers wrap on overflow).
    Sum = 1,
    /// Sum divided by the number of ranks (integers: truncated toward zero).
    Average = 2,
    /// Minimum.
    Min = 3,
    /// Maximum.
    Max = 4,
    /// Product (integers wrap on overflow).
    Product = 5,
}

impl ReduceOp {
    /// Every op, in wire order.
    pub const ALL: [ReduceOp; 5] = [ReduceOp::Sum, ReduceOp::Average, ReduceOp::Min, ReduceOp::Max, ReduceOp::Product];

    /// The lowercase name (`sum`, `average`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Average => "average",
            ReduceOp::Min => "min",
            ReduceOp::Max => "max",
            ReduceOp::Product => "product",
        }
    }

    /// Parses a name as printed by [`ReduceOp::name`].
    pub fn from_name(name: &str) -> Option<ReduceOp> {
        ReduceOp::ALL.into_iter().find(|o| o.name() == name)
    }

    pub(crate) fn from_u8(v: u8) -> Option<ReduceOp> {
        ReduceOp::ALL.into_iter().find(|o| *o as u8 == v)
    }
}

impl fmt::Display for ReduceOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust type that can be sent through a collective.
pub trait Element: bytemuck::Pod + Send + Sync {
    /// The wire dtype of `Self`.
    const DTYPE: DType;
}

macro_rules! element {
    ($($t:ty => $d:ident),*) => { $(impl Element for $t { const DTYPE: DType = DType::$d; })* };
}
element!(u8 => U8, i8 => I8, i16 => I16, i32 => I32, i64 => I64, f16 => F16, bf16 => BF16, f32 => F32, f64 => F64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_round_trips() {
        for info in DType::TABLE {
            let d = info.dtype;
            assert_eq!(d.info(), info);
            assert_eq!(DType::from_u8(d as u8), Some(d));
            assert_eq!(DType::from_name(d.name()), Some(d));
            assert_eq!(d.to_string(), info.name);
            assert_eq!(DType::from_dlpack(info.dlpack.0, info.dlpack.1, 1), Some(d));
            assert_eq!(DType::from_dlpack(info.dlpack.0, info.dlpack.1, 4), None, "{d}: vectors are refused");
            assert_eq!(usize::from(info.dlpack.1), 8 * info.size, "{d}: DLPack bits against size");
            for f in info.formats {
                for prefix in ["", "@", "=", "<"] {
                    assert_eq!(DType::from_buffer_format(&format!("{prefix}{f}"), info.size), Some(d), "{prefix}{f}");
                }
            }
        }
        assert_eq!(DType::ALL.len(), DType::TABLE.len());
        assert_eq!(DType::from_u8(0), None);
        assert_eq!(DType::from_u8(DType::TABLE.len() as u8 + 1), None);
        assert_eq!(DType::from_name("f128"), None);
    }

    #[test]
    fn buffer_formats() {
        assert_eq!(DType::from_buffer_format("<f", 4), Some(DType::F32));
        assert_eq!(DType::from_buffer_format("l", 8), Some(DType::I64));
        assert_eq!(DType::from_buffer_format("l", 4), Some(DType::I32));
        assert_eq!(DType::from_buffer_format("q", 8), Some(DType::I64));
        assert_eq!(DType::from_buffer_format("B", 1), Some(DType::U8));
        assert_eq!(DType::from_buffer_format("b", 1), Some(DType::I8));
        assert_eq!(DType::from_buffer_format(">f", 4), None);
        assert_eq!(DType::from_buffer_format("f", 8), None);
        assert_eq!(DType::from_buffer_format("?", 1), Some(DType::Bool));
        assert_eq!(DType::from_buffer_format("h", 2), Some(DType::I16));
        assert_eq!(DType::from_buffer_format("H", 2), None);
        assert_eq!(DType::from_buffer_format("Zf", 8), None);
        assert_eq!(DType::from_buffer_format("", 1), None);
    }

    #[test]
    fn dlpack_codes() {
        assert_eq!(DType::from_dlpack(dlpack_code::BFLOAT, 16, 1), Some(DType::BF16));
        assert_eq!(DType::from_dlpack(dlpack_code::FLOAT, 16, 1), Some(DType::F16));
        assert_eq!(DType::from_dlpack(dlpack_code::UINT, 16, 1), None);
        assert_eq!(DType::from_dlpack(6, 8, 1), Some(DType::Bool), "kDLBool");
        assert_eq!(DType::from_dlpack(5, 64, 1), None, "kDLComplex");
    }

    #[test]
    fn supported_lists_every_dtype_by_its_numpy_name() {
        assert_eq!(
            DType::supported(),
            "uint8, int8, int32, int64, float16, bfloat16, float32, float64, int16 and bool"
        );
    }
}
