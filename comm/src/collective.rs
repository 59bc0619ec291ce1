//! What a collective is, one type from the bindings to the backends:
//!
//! - [`Collective`]: the kind, with its reduction or root. What a caller asks for (the engine's
//!   [`Submission`](crate::Submission)), what ranks agree on, what a backend runs; barrier
//!   included.
//! - [`Call`]: one call of a collective on a communicator: the collective, its dtype, its
//!   element count and its sequence number, packed into the 128-bit tag every message carries.
//!   Two ranks that disagree on any of these see different tags, and the receiver's error can
//!   say what each side called.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::dtype::{DType, ReduceOp};
use crate::transport::Tag;

/// A collective, with the argument that every rank must pass alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Collective {
    /// Reduce over all ranks; every rank gets the result.
    Allreduce(ReduceOp),
    /// Concatenate every rank's tensor along the first dimension (which may differ by rank).
    Allgather,
    /// Copy the root's tensor to every rank.
    Broadcast(u32),
    /// Reduce over all ranks; rank i gets the i-th share of the first dimension (the first
    /// ranks one row more when it does not divide).
    Reducescatter(ReduceOp),
    /// Rank i sends `splits[j]` consecutive rows to rank j.
    Alltoall,
    /// Wait until every rank has called it; no data.
    Barrier,
}

impl Collective {
    /// The user-facing name.
    pub fn name(self) -> &'static str {
        match self {
            Collective::Allreduce(_) => "allreduce",
            Collective::Allgather => "allgather",
            Collective::Broadcast(_) => "broadcast",
            Collective::Reducescatter(_) => "reducescatter",
            Collective::Alltoall => "alltoall",
            Collective::Barrier => "barrier",
        }
    }

    /// The reduction, for the reducing collectives.
    pub fn reduction(self) -> Option<ReduceOp> {
        match self {
            Collective::Allreduce(op) | Collective::Reducescatter(op) => Some(op),
            _ => None,
        }
    }

    /// The root, for broadcast.
    pub fn root(self) -> Option<usize> {
        match self {
            Collective::Broadcast(root) => Some(root as usize),
            _ => None,
        }
    }

    /// Why this collective cannot run on `dtype`, if it cannot: a boolean has no average.
    pub fn refuses(self, dtype: DType) -> Option<&'static str> {
        match (self.reduction(), dtype) {
            (Some(ReduceOp::Average), DType::Bool) => Some(
                "bool tensors have no average (sum and max reduce them with a logical or, min and product with a logical and)",
            ),
            _ => None,
        }
    }

    /// Whether the first dimension may differ between ranks.
    pub(crate) fn ragged(self) -> bool {
        matches!(self, Collective::Allgather | Collective::Alltoall)
    }
}

/// Which part of a collective a call is: its data, or the exchange of per-rank counts that
/// allgather and alltoall of unequal sizes run first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The data.
    Data,
    /// The per-rank element counts.
    Counts,
}

/// One call of a collective as every rank must agree on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    /// Per-communicator call counter (wraps at 2^32).
    pub seq: u32,
    /// The collective.
    pub collective: Collective,
    /// Data or counts.
    pub phase: Phase,
    /// Element type (`U8` for a barrier).
    pub dtype: DType,
    /// Elements (per rank where the kind says so; 48 bits on the wire; 0 where it varies).
    pub count: u64,
}

const COUNT_BITS: u32 = 48;
const ROOT_BITS: u32 = 24;

/// The wire byte of a collective and phase (0 is never used).
fn kind_byte(c: Collective, phase: Phase) -> u8 {
    match (c, phase) {
        (Collective::Allreduce(_), _) => 1,
        (Collective::Broadcast(_), _) => 2,
        (Collective::Allgather, Phase::Data) => 3,
        (Collective::Allgather, Phase::Counts) => 4,
        (Collective::Reducescatter(_), _) => 5,
        (Collective::Alltoall, Phase::Data) => 6,
        (Collective::Alltoall, Phase::Counts) => 7,
        (Collective::Barrier, _) => 8,
    }
}

impl Call {
    /// The wire tag.
    pub fn tag(&self) -> Tag {
        let root = self.collective.root().unwrap_or(0) as u128 & ((1 << ROOT_BITS) - 1);
        u128::from(self.seq)
            | u128::from(kind_byte(self.collective, self.phase)) << 32
            | u128::from(self.dtype as u8) << 40
            | u128::from(self.collective.reduction().map_or(0, |o| o as u8)) << 48
            | root << 56
            | u128::from(self.count & ((1 << COUNT_BITS) - 1)) << 80
    }

    /// Decodes a tag; `None` if it is not one of ours.
    pub fn from_tag(tag: Tag) -> Option<Call> {
        let byte = |shift: u32| (tag >> shift) as u8;
        let op = || ReduceOp::from_u8(byte(48));
        let root = (tag >> 56) as u32 & ((1 << ROOT_BITS) - 1);
        let (collective, phase) = match byte(32) {
            1 => (Collective::Allreduce(op()?), Phase::Data),
            2 => (Collective::Broadcast(root), Phase::Data),
            3 => (Collective::Allgather, Phase::Data),
            4 => (Collective::Allgather, Phase::Counts),
            5 => (Collective::Reducescatter(op()?), Phase::Data),
            6 => (Collective::Alltoall, Phase::Data),
            7 => (Collective::Alltoall, Phase::Counts),
            8 => (Collective::Barrier, Phase::Data),
            _ => return None,
        };
        Some(Call {
            seq: tag as u32,
            collective,
            phase,
            dtype: DType::from_u8(byte(40))?,
            count: (tag >> 80) as u64 & ((1 << COUNT_BITS) - 1),
        })
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} #{}", self.collective.name(), self.seq)?;
        if self.collective == Collective::Barrier {
            return Ok(());
        }
        let mut parts: Vec<String> = vec![self.dtype.to_string()];
        if let Some(o) = self.collective.reduction() {
            parts.push(o.to_string());
        }
        match (self.collective, self.phase) {
            (_, Phase::Counts) => parts.push("size exchange".into()),
            (Collective::Allgather, _) => parts.push(format!("{} elements per rank", self.count)),
            (Collective::Alltoall, _) => {}
            _ => parts.push(format!("{} elements", self.count)),
        }
        if let Some(root) = self.collective.root() {
            parts.push(format!("root {root}"));
        }
        write!(f, " ({})", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_round_trips_and_prints() {
        let d = Call {
            seq: 12,
            collective: Collective::Allreduce(ReduceOp::Max),
            phase: Phase::Data,
            dtype: DType::BF16,
            count: 1 << 40,
        };
        assert_eq!(Call::from_tag(d.tag()), Some(d));
        assert_eq!(d.to_string(), format!("allreduce #12 (bf16, max, {} elements)", 1u64 << 40));
        let b = Call { seq: 3, collective: Collective::Broadcast(5), phase: Phase::Data, dtype: DType::F32, count: 7 };
        assert_eq!(Call::from_tag(b.tag()), Some(b));
        assert_eq!(b.to_string(), "broadcast #3 (f32, 7 elements, root 5)");
        assert_ne!(b.tag(), Call { collective: Collective::Broadcast(4), ..b }.tag());
        let c = Call { seq: 4, collective: Collective::Alltoall, phase: Phase::Counts, dtype: DType::I64, count: 0 };
        assert_eq!(Call::from_tag(c.tag()), Some(c));
        assert_ne!(c.tag(), Call { phase: Phase::Data, ..c }.tag());
        let bar = Call { seq: 9, collective: Collective::Barrier, phase: Phase::Data, dtype: DType::U8, count: 0 };
        assert_eq!(Call::from_tag(bar.tag()), Some(bar));
        assert_eq!(bar.to_string(), "barrier #9");
        assert_eq!(Call::from_tag(0), None);
    }
}
