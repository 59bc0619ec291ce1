//! The host backend: host memory, algorithms over a byte transport, picked by message size.

use std::time::Duration;

use super::{Backend, Request, Work};
use crate::algorithms as alg;
use crate::config::{AllreduceAlgorithm, Tuning};
use crate::dtype::ReduceOp;
use crate::os::Doorbell;
use crate::reduce::divide;
use crate::transport::{self, Transport};

/// Runs every collective on host memory over `transport`.
pub struct HostBackend {
    transport: Box<dyn Transport>,
    tuning: Tuning,
    ws: alg::Workspace,
}

impl HostBackend {
    /// A backend over `transport`.
    pub fn new(transport: Box<dyn Transport>, tuning: Tuning) -> HostBackend {
        HostBackend { transport, tuning, ws: alg::Workspace::default() }
    }
}

impl Backend for HostBackend {
    fn name(&self) -> &'static str {
        "host"
    }

    fn accepts(&self, _req: &Request<'_>) -> bool {
        true
    }

    fn run(&mut self, req: Request<'_>) -> Result<(), transport::Error> {
        let t = self.transport.as_mut();
        let tag = req.desc.tag();
        let n = t.size();
        let dtype = req.dtype;
        match req.work {
            Work::Allreduce { buf, op } => {
                let (tu, ws) = (&self.tuning, &mut self.ws);
                match allreduce_algorithm(tu, buf.len(), n) {
                    AllreduceAlgorithm::RecursiveDoubling => {
                        alg::allreduce_recursive_doubling(t, tag, buf, dtype, op, ws)?
                    }
                    AllreduceAlgorithm::HalvingDoubling => {
                        alg::allreduce_halving_doubling(t, tag, buf, dtype, op, tu.segment, tu.ring_chunk, ws)?
                    }
                    _ => alg::allreduce_ring(t, tag, buf, dtype, op, tu.segment, tu.ring_chunk, ws)?,
                }
                if op == ReduceOp::Average {
                    divide(dtype, buf, n);
                }
            }
            Work::Broadcast { buf, root } => {
                if buf.len() <= self.tuning.small_broadcast {
                    alg::broadcast_binomial(t, tag, buf, root)?;
                } else {
                    alg::broadcast_chain(t, tag, buf, root, self.tuning.broadcast_segment)?;
                }
            }
            Work::Allgather { buf, blocks } => alg::allgather_ring(t, tag, buf, blocks, self.tuning.segment)?,
            Work::Reducescatter { buf, blocks, op } => {
                alg::reducescatter_ring(t, tag, buf, blocks, dtype, op, self.tuning.segment, &mut self.ws)?;
                if op == ReduceOp::Average {
                    divide(dtype, &mut buf[blocks[t.rank()].clone()], n);
                }
            }
            Work::Alltoall { send, send_blocks, recv, recv_blocks } => {
                alg::alltoall_pairwise(t, tag, send, send_blocks, recv, recv_blocks)?;
            }
            Work::Barrier => alg::barrier_dissemination(t, tag)?,
        }
        Ok(())
    }

    fn wait_incoming(&mut self, wake: &Doorbell, timeout: Duration) -> Result<bool, transport::Error> {
        self.transport.wait_incoming(wake, timeout)
    }

    fn close(&mut self) {
        self.transport.close();
    }
}

/// The allreduce algorithm for `bytes` on `n` ranks: recursive doubling up to
/// `small_allreduce` bytes (latency), halving-doubling above it when n is a power of two of at
/// least 4 (fewer steps than the ring for the same bytes), the ring otherwise (no fold).
fn allreduce_algorithm(tuning: &Tuning, bytes: usize, n: usize) -> AllreduceAlgorithm {
    match tuning.allreduce {
        AllreduceAlgorithm::Auto if bytes <= tuning.small_allreduce => AllreduceAlgorithm::RecursiveDoubling,
        AllreduceAlgorithm::Auto if n >= 4 && n.is_power_of_two() => AllreduceAlgorithm::HalvingDoubling,
        AllreduceAlgorithm::Auto => AllreduceAlgorithm::Ring,
        chosen => chosen,
    }
}
