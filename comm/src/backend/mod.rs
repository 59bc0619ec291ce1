//! Backends run whole collectives. They form an ordered list, built in one place
//! ([`registry`]); the first that accepts a request runs it: the staged path
//! ([`staged::OnDevices`]) for GPU memory, then [`host::HostBackend`] (algorithms over the host
//! transport, host memory). NCCL, when built, comes before the staged path.
//!
//! Backends own no transport: the communicator owns the [`Links`] and lends them to the
//! backend that runs a request, so that two backends (host and staged) can share one.

pub mod host;
pub mod nccl;
pub mod staged;

use std::ops::Range;

use crate::collective::Call;
use crate::config::GpuBackend;
use crate::memory::{Memory, MemoryRef};
use crate::transport;
pub use crate::world::Links;
use crate::world::World;

/// The buffers of one collective, already validated by the communicator. What to do with
/// them is the request's [`Call::collective`].
#[derive(Debug)]
pub enum Work<'a> {
    /// Allreduce and broadcast: `buf` in place. Barrier: an empty `buf`.
    InPlace {
        /// The data.
        buf: Memory<'a>,
    },
    /// Allgather (fill every block from its owner; this rank's block is filled) and
    /// reduce-scatter (this rank's block ends reduced; the rest is scratch).
    Blocks {
        /// The data.
        buf: Memory<'a>,
        /// Byte range of each rank's block.
        blocks: &'a [Range<usize>],
    },
    /// Alltoall: send `send[send_blocks[i]]` to rank i, receive into `recv[recv_blocks[i]]`.
    Exchange {
        /// Input.
        send: MemoryRef<'a>,
        /// Per-destination byte ranges of `send`.
        send_blocks: &'a [Range<usize>],
        /// Output.
        recv: Memory<'a>,
        /// Per-source byte ranges of `recv`.
        recv_blocks: &'a [Range<usize>],
    },
}

impl Work<'_> {
    /// Whether every buffer lies in host memory.
    pub fn is_host(&self) -> bool {
        match self {
            Work::InPlace { buf } | Work::Blocks { buf, .. } => buf.is_host(),
            Work::Exchange { send, recv, .. } => send.is_host() && recv.is_host(),
        }
    }
}

/// One collective call.
#[derive(Debug)]
pub struct Request<'a> {
    /// What every rank agreed to run; its tag goes on every message.
    pub call: Call,
    /// Buffers.
    pub work: Work<'a>,
}

/// Why a backend could not run a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A link failed: a peer died, went silent or disagreed.
    #[error(transparent)]
    Transport(#[from] transport::Error),
    /// The request does not fit this backend (a work shape its collective does not take).
    #[error("{backend} backend: {detail}")]
    Invalid {
        /// The backend.
        backend: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// Device memory work failed (copies, kernels, the device library).
    #[error("{backend} backend: {detail}")]
    Device {
        /// The backend.
        backend: &'static str,
        /// What failed.
        detail: String,
    },
}

/// Something that runs collectives.
pub trait Backend: Send {
    /// Short name for logs and errors.
    fn name(&self) -> &'static str;

    /// Whether this backend runs `req`.
    fn accepts(&self, req: &Request<'_>) -> bool;

    /// Runs `req` to completion over `links`; returns the name of the algorithm that ran.
    fn run(&mut self, req: Request<'_>, links: &mut Links) -> Result<&'static str, Error>;
}

/// The backends of a communicator, in the order they are asked: the one place a backend
/// registers. GPU memory goes to NCCL, or to the staged path where NCCL cannot run (see
/// [`nccl::backend`]; `FERROVOD_GPU_BACKEND=staged` skips NCCL); host memory to the host
/// backend.
pub fn registry(world: &World) -> Vec<Box<dyn Backend>> {
    let tuning = world.tuning().clone();
    let make: staged::MakeCopies = Box::new(|d, tuning| {
        Ok(Box::new(crate::cuda::copies::CudaCopies::new(d, tuning)?) as Box<dyn staged::device::DeviceCopies>)
    });
    let staged = staged::OnDevices::new(make, tuning.clone());
    let gpu: Box<dyn Backend> = match tuning.gpu_backend {
        GpuBackend::Staged => Box::new(staged),
        mode => Box::new(nccl::backend::NcclBackend::new(mode, tuning.clone(), staged, world.abort_bell())),
    };
    vec![gpu, Box::new(host::HostBackend::new(tuning))]
}
