//! The host backend: host memory, algorithms over a byte transport, picked by message size.

use super::{Backend, Request, Work};
use crate::algorithms as alg;
use crate::config::Tuning;
use crate::dtype::ReduceOp;
use crate::reduce::divide;
use crate::transport::{self, Transport};

/// Runs every collective on host memory over `transport`.
pub struct HostBackend {
    transport: Box<dyn Transport>,
    tuning: Tuning,
}

impl HostBackend {
    /// A backend over `transport`.
    pub fn new(transport: Box<dyn Transport>, tuning: Tuning) -> HostBackend {
        HostBackend { transport, tuning }
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
                if buf.len() <= self.tuning.small_allreduce {
                    alg::allreduce_recursive_doubling(t, tag, buf, dtype, op)?;
                } else {
                    alg::allreduce_ring(t, tag, buf, dtype, op, self.tuning.segment)?;
                }
                if op == ReduceOp::Average {
                    divide(dtype, buf, n);
                }
            }
            Work::Broadcast { buf, root } => {
                if buf.len() <= self.tuning.small_broadcast {
                    alg::broadcast_binomial(t, tag, buf, root)?;
                } else {
                    alg::broadcast_chain(t, tag, buf, root, self.tuning.segment)?;
                }
            }
            Work::Allgather { buf, blocks } => alg::allgather_ring(t, tag, buf, blocks)?,
            Work::Reducescatter { buf, blocks, op } => {
                alg::reducescatter_ring(t, tag, buf, blocks, dtype, op, self.tuning.segment)?;
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

    fn close(&mut self) {
        self.transport.close();
    }
}
