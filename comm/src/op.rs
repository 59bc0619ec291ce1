//! What a collective call is: kind, dtype, reduction, root, element count and sequence number,
//! packed into the 128-bit tag every message carries. Two ranks that disagree on any of these
//! see different tags, and the receiver's error can say what each side called.

use std::fmt;

use crate::dtype::{DType, ReduceOp};
use crate::transport::Tag;

/// The collective being run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Allreduce.
    Allreduce = 1,
    /// Broadcast.
    Broadcast = 2,
    /// Allgather (data phase).
    Allgather = 3,
    /// Allgather: exchange of per-rank element counts.
    AllgatherCounts = 4,
    /// Reduce-scatter.
    Reducescatter = 5,
    /// All-to-all (data phase).
    Alltoall = 6,
    /// All-to-all: exchange of per-pair element counts.
    AlltoallCounts = 7,
    /// Barrier.
    Barrier = 8,
}

impl Kind {
    const ALL: [Kind; 8] = [
        Kind::Allreduce,
        Kind::Broadcast,
        Kind::Allgather,
        Kind::AllgatherCounts,
        Kind::Reducescatter,
        Kind::Alltoall,
        Kind::AlltoallCounts,
        Kind::Barrier,
    ];

    /// The user-facing name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Allreduce => "allreduce",
            Kind::Broadcast => "broadcast",
            Kind::Allgather | Kind::AllgatherCounts => "allgather",
            Kind::Reducescatter => "reducescatter",
            Kind::Alltoall | Kind::AlltoallCounts => "alltoall",
            Kind::Barrier => "barrier",
        }
    }
}

/// One collective call as every rank must agree on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpDesc {
    /// Per-communicator call counter (wraps at 2^32).
    pub seq: u32,
    /// The collective.
    pub kind: Kind,
    /// Element type, if the call has data.
    pub dtype: Option<DType>,
    /// Reduction, if any.
    pub op: Option<ReduceOp>,
    /// Root rank for broadcast (24 bits on the wire).
    pub root: u32,
    /// Elements (per rank where the kind says so; 48 bits on the wire).
    pub count: u64,
}

const COUNT_BITS: u32 = 48;
const ROOT_BITS: u32 = 24;

impl OpDesc {
    /// The wire tag.
    pub fn tag(&self) -> Tag {
        u128::from(self.seq)
            | u128::from(self.kind as u8) << 32
            | u128::from(self.dtype.map_or(0, |d| d as u8)) << 40
            | u128::from(self.op.map_or(0, |o| o as u8)) << 48
            | u128::from(self.root & ((1 << ROOT_BITS) - 1)) << 56
            | u128::from(self.count & ((1 << COUNT_BITS) - 1)) << 80
    }

    /// Decodes a tag; `None` if it is not one of ours.
    pub fn from_tag(tag: Tag) -> Option<OpDesc> {
        let byte = |shift: u32| (tag >> shift) as u8;
        let kind = Kind::ALL.into_iter().find(|k| *k as u8 == byte(32))?;
        let dtype = match byte(40) {
            0 => None,
            v => Some(DType::from_u8(v)?),
        };
        let op = match byte(48) {
            0 => None,
            v => Some(ReduceOp::from_u8(v)?),
        };
        Some(OpDesc {
            seq: tag as u32,
            kind,
            dtype,
            op,
            root: (tag >> 56) as u32 & ((1 << ROOT_BITS) - 1),
            count: (tag >> 80) as u64 & ((1 << COUNT_BITS) - 1),
        })
    }
}

impl fmt::Display for OpDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} #{}", self.kind.name(), self.seq)?;
        let mut parts: Vec<String> = Vec::new();
        if let Some(d) = self.dtype {
            parts.push(d.to_string());
        }
        if let Some(o) = self.op {
            parts.push(o.to_string());
        }
        match self.kind {
            Kind::Barrier => {}
            Kind::AllgatherCounts | Kind::AlltoallCounts => parts.push("size exchange".into()),
            Kind::Allgather => parts.push(format!("{} elements per rank", self.count)),
            Kind::Alltoall => {}
            _ => parts.push(format!("{} elements", self.count)),
        }
        if self.kind == Kind::Broadcast {
            parts.push(format!("root {}", self.root));
        }
        if !parts.is_empty() {
            write!(f, " ({})", parts.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_round_trips_and_prints() {
        let d = OpDesc {
            seq: 12,
            kind: Kind::Allreduce,
            dtype: Some(DType::BF16),
            op: Some(ReduceOp::Max),
            root: 0,
            count: 1 << 40,
        };
        assert_eq!(OpDesc::from_tag(d.tag()), Some(d));
        assert_eq!(d.to_string(), format!("allreduce #12 (bf16, max, {} elements)", 1u64 << 40));
        let b = OpDesc { seq: 3, kind: Kind::Broadcast, dtype: Some(DType::F32), op: None, root: 5, count: 7 };
        assert_eq!(OpDesc::from_tag(b.tag()), Some(b));
        assert_eq!(b.to_string(), "broadcast #3 (f32, 7 elements, root 5)");
        assert_ne!(b.tag(), OpDesc { root: 4, ..b }.tag());
        assert_eq!(OpDesc::from_tag(0), None);
    }
}
