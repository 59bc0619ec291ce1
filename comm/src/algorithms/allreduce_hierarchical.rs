//! Hierarchical allreduce, for a job of H hosts with L ranks each (n = L·H): the ranks of a
//! host share memory, and only the step between hosts goes over the network.
//!
//! 1. Within each host, a reduce-scatter over the shared stage: local rank i ends with block i
//!    (of L even blocks) reduced over its host.
//! 2. Between hosts, the L ranks with local rank i (one per host) allreduce block i among
//!    themselves, over the job's links, with whatever flat algorithm suits m/L bytes on H ranks.
//!    The L such allreduces of a host run at once and share its network link.
//! 3. Within each host, an allgather over the stage.
//!
//! Every block is reduced by one rank per host and the step between hosts leaves identical
//! copies, so every rank of the job ends with the same bits.
//!
//! Cost: 2·α_shm + 2(L-1)/L·m·β_shm, plus the flat allreduce of m/L bytes on H ranks whose
//! per-byte cost is L times a lone rank's (L of them share a link): far fewer network
//! messages than a flat algorithm on n ranks (2(H-1) against 2(n-1) for the ring), and no
//! loopback TCP within a host; but the same bytes through each host's link as the flat ring,
//! plus the shared-memory steps. So it wins small and medium messages everywhere, and large
//! ones unless shared memory is slow next to the network ([`pays`] weighs the two).

use std::ops::Range;

use super::{Params, allgather_stage, even_blocks, reducescatter_stage};
use crate::config::AllreduceAlgorithm;
use crate::dtype::ReduceOp;
use crate::transport::subset::renumbered;
use crate::transport::{Error, Stage};

/// Allreduce in place (`Average` is left as a sum; the caller divides). `local` is the stage
/// of this host's ranks, whose rank i is the job's rank `ranks[i]` (errors name the job's
/// ranks); `between` allreduces this rank's block with the other hosts' same block.
pub fn allreduce_hierarchical(
    local: &mut dyn Stage,
    ranks: &[usize],
    local_rank: usize,
    p: &Params,
    buf: &mut [u8],
    op: ReduceOp,
    between: impl FnOnce(&mut [u8]) -> Result<(), Error>,
) -> Result<(), Error> {
    let blocks: Vec<Range<usize>> = even_blocks(buf.len() / p.dtype.size(), ranks.len(), p.dtype.size());
    let job = |e| renumbered(e, ranks);
    reducescatter_stage(local, p, local_rank, buf, &blocks, op).map_err(job)?;
    between(&mut buf[blocks[local_rank].clone()])?;
    allgather_stage(local, p, local_rank, buf, &blocks).map_err(job)
}

/// Per-message and per-byte cost (seconds, seconds per byte) of one link.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    /// α.
    pub alpha: f64,
    /// β.
    pub beta: f64,
}

/// TCP between two ranks of this project's 2-core VM, and its shared memory: the N = 2
/// exchange probes of `ferrovod-bench --model` on a quiet host (benches/RESULTS.md).
pub const TCP: Link = Link { alpha: 6e-6, beta: 0.24e-9 };
/// See [`TCP`].
pub const SHM: Link = Link { alpha: 0.5e-6, beta: 0.07e-9 };

/// Predicted seconds of the flat `algorithm` on `bytes` over n = `local`·`hosts` ranks placed
/// host by host, each host's ranks sharing one link of cost `net`: a step whose partner is on
/// another host sends the bytes of every rank of the host through that link (the ring's
/// crossing steps carry one rank's segment, since only one ring link leaves each host).
pub fn flat_cost(algorithm: AllreduceAlgorithm, bytes: usize, local: usize, hosts: usize, net: Link) -> f64 {
    let (n, m) = (local * hosts, bytes as f64);
    let step = |distance: usize, each: f64| {
        let sharing = if distance >= local { local as f64 } else { 1.0 };
        net.alpha + each * sharing * net.beta
    };
    let p = 1usize << (usize::BITS - 1 - n.leading_zeros());
    let fold = if p < n { 2.0 * step(1, m) } else { 0.0 };
    let levels = p.trailing_zeros() as usize;
    match algorithm {
        AllreduceAlgorithm::RecursiveDoubling => fold + (0..levels).map(|k| step(1 << k, m)).sum::<f64>(),
        AllreduceAlgorithm::HalvingDoubling => {
            fold + 2.0 * (0..levels).map(|k| step(p >> (k + 1), m / (2u64 << k) as f64)).sum::<f64>()
        }
        _ => 2.0 * (n - 1) as f64 * (net.alpha + m / n as f64 * net.beta),
    }
}

/// Predicted seconds of the hierarchical allreduce of `bytes` on `hosts` hosts of `local`
/// ranks, the step between hosts running `between` (see the module docs).
pub fn hierarchical_cost(
    between: AllreduceAlgorithm,
    bytes: usize,
    local: usize,
    hosts: usize,
    net: Link,
    shm: Link,
) -> f64 {
    let within = 2.0 * (shm.alpha + (local - 1) as f64 / local as f64 * bytes as f64 * shm.beta);
    // The L allreduces between hosts share each host's link: L times a lone rank's bytes.
    let shared = Link { alpha: net.alpha, beta: net.beta * local as f64 };
    within + flat_cost(between, bytes.div_ceil(local), 1, hosts, shared)
}

/// Whether the hierarchical allreduce is predicted to beat the flat `flat` one on `bytes`,
/// `between` being the algorithm its step between hosts would run.
pub fn pays(flat: AllreduceAlgorithm, between: AllreduceAlgorithm, bytes: usize, local: usize, hosts: usize) -> bool {
    hierarchical_cost(between, bytes, local, hosts, TCP, SHM) < flat_cost(flat, bytes, local, hosts, TCP)
}

#[cfg(test)]
mod tests {
    use super::*;
    use AllreduceAlgorithm::{HalvingDoubling, RecursiveDoubling, Ring};

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
    }

    #[test]
    fn the_costs_are_the_hand_computed_ones() {
        let net = Link { alpha: 10e-6, beta: 1e-9 };
        let shm = Link { alpha: 1e-6, beta: 0.1e-9 };
        // Flat ring, 2 hosts × 2: 6 steps of α + m/4 β.
        assert!(close(flat_cost(Ring, 4000, 2, 2, net), 6.0 * (10e-6 + 1000e-9)));
        // Recursive doubling, 2 × 2: distance 1 within the host (alone), distance 2 across
        // (both ranks of a host through its link).
        assert!(close(flat_cost(RecursiveDoubling, 4000, 2, 2, net), (10e-6 + 4000e-9) + (10e-6 + 8000e-9)));
        // Halving-doubling, 1 rank per host on 4 hosts: m/2 then m/4, twice.
        assert!(close(flat_cost(HalvingDoubling, 4000, 1, 4, net), 2.0 * ((10e-6 + 2000e-9) + (10e-6 + 1000e-9))));
        // 3 ranks: a fold out and back of the whole buffer, then one level.
        assert!(close(flat_cost(RecursiveDoubling, 100, 1, 3, net), 3.0 * (10e-6 + 100e-9)));
        // Hierarchical, 2 × 2, a ring between hosts on 2000 bytes whose link carries 2 ranks'.
        let within = 2.0 * (1e-6 + 0.5 * 4000.0 * 0.1e-9);
        let between = 2.0 * (10e-6 + 1000.0 * 2e-9);
        assert!(close(hierarchical_cost(Ring, 4000, 2, 2, net, shm), within + between));
    }

    #[test]
    fn it_pays_for_small_messages_and_when_memory_is_much_faster_than_the_network() {
        assert!(pays(RecursiveDoubling, RecursiveDoubling, 4096, 2, 2));
        assert!(pays(Ring, Ring, 64 << 20, 2, 2));
        // Many hosts and large messages: the flat ring sends hardly more through each link,
        // while the hierarchical one adds its shared-memory steps.
        assert!(!pays(Ring, Ring, 256 << 20, 8, 64));
    }
}
