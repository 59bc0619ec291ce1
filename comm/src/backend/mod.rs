//! Backends run whole collectives. They form an ordered list; the first that accepts a request
//! runs it. Today there is one, [`host::HostBackend`] (algorithms over a transport, host
//! memory); NCCL for device memory and a staged path slot in before it.

pub mod host;

use std::ops::Range;
use std::time::Duration;

use crate::dtype::{DType, ReduceOp};
use crate::op::OpDesc;
use crate::os::Doorbell;
use crate::transport;

/// The buffers and arguments of one collective, already validated by the communicator.
#[derive(Debug)]
pub enum Work<'a> {
    /// Reduce `buf` over all ranks, in place. `Average` arrives as such; the backend divides.
    Allreduce {
        /// The data.
        buf: &'a mut [u8],
        /// The reduction.
        op: ReduceOp,
    },
    /// Copy `buf` from `root` to all ranks.
    Broadcast {
        /// The data.
        buf: &'a mut [u8],
        /// Source rank.
        root: usize,
    },
    /// Fill every block of `buf` from its owner; this rank's block is already filled.
    Allgather {
        /// Output buffer.
        buf: &'a mut [u8],
        /// Byte range of each rank's block.
        blocks: &'a [Range<usize>],
    },
    /// Reduce `buf` over all ranks, leaving this rank's block reduced (the rest is scratch).
    Reducescatter {
        /// Input, overwritten.
        buf: &'a mut [u8],
        /// Byte range of each rank's block.
        blocks: &'a [Range<usize>],
        /// The reduction.
        op: ReduceOp,
    },
    /// Send `send[send_blocks[i]]` to rank i, receive into `recv[recv_blocks[i]]`.
    Alltoall {
        /// Input.
        send: &'a [u8],
        /// Per-destination byte ranges of `send`.
        send_blocks: &'a [Range<usize>],
        /// Output.
        recv: &'a mut [u8],
        /// Per-source byte ranges of `recv`.
        recv_blocks: &'a [Range<usize>],
    },
    /// Wait for every rank.
    Barrier,
}

/// One collective call.
#[derive(Debug)]
pub struct Request<'a> {
    /// What every rank agreed to run; its tag goes on every message.
    pub desc: OpDesc,
    /// Element type of the buffers (`U8` for a barrier).
    pub dtype: DType,
    /// Buffers and arguments.
    pub work: Work<'a>,
}

/// Something that runs collectives.
pub trait Backend: Send {
    /// Short name for logs and errors.
    fn name(&self) -> &'static str;

    /// Whether this backend runs `req`.
    fn accepts(&self, req: &Request<'_>) -> bool;

    /// Runs `req` to completion.
    fn run(&mut self, req: Request<'_>) -> Result<(), transport::Error>;

    /// See [`transport::Transport::wait_incoming`].
    fn wait_incoming(&mut self, wake: &Doorbell, timeout: Duration) -> Result<bool, transport::Error>;

    /// Closes every link so that peers waiting on this rank fail at once.
    fn close(&mut self);
}
