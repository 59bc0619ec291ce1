//! ferrovod: collective communication for data-parallel training.
//!
//! | layer | module | what it does |
//! |---|---|---|
//! | engine | [`Engine`] | named, asynchronous collectives: matched across ranks, fused, watched for stalls |
//! | API | [`Communicator`] | rank, size, placement; allreduce, broadcast, allgather, reducescatter, alltoall, barrier |
//! | joining | [`world`] | store, rendezvous of opaque transport addresses, links, the first-failure record |
//! | backends | [`backend`] | run whole collectives; the first that accepts a request runs it |
//! | memory | [`memory`] | host or device memory, and the engine's copies, fills and scalings on it |
//! | CUDA | [`cuda`] | devices, streams, pinned memory and copies, the driver loaded at run time |
//! | algorithms | [`algorithms`] | ring, recursive doubling, binomial tree, chain, pairwise, dissemination |
//! | kernels | [`reduce`] | element-wise reductions per dtype and op |
//! | transports | [`transport`] | bytes between ranks: TCP, in-process |
//! | bootstrap | [`bootstrap`] | authenticated store, rendezvous, host topology |
//! | knobs | [`config`] | every `FERROVOD_*` variable |
//!
//! Usage:
//! 1. Start N processes with the `FERROVOD_*` environment (`ferrovod-run -np N -- prog` does).
//! 2. In each, `let mut comm = ferrovod::Communicator::from_env()?;`.
//! 3. Call collectives in the same order on every rank: `comm.allreduce(&mut grads, ReduceOp::Average)?`.
//! 4. Handle errors: a dead or mismatched peer is an error on every rank, naming it.
//!
//! ```
//! use ferrovod::{Communicator, ReduceOp};
//! // Without a launcher's environment this is rank 0 of a one-rank job.
//! let mut comm = Communicator::builder().build()?;
//! let mut grads = vec![1.0f32, 2.0, 3.0];
//! comm.allreduce(&mut grads, ReduceOp::Average)?;
//! assert_eq!(grads, [1.0, 2.0, 3.0]);
//! # Ok::<(), ferrovod::Error>(())
//! ```
#![warn(missing_docs)]

pub mod algorithms;
pub mod backend;
pub mod bootstrap;
pub mod collective;
mod communicator;
pub mod config;
pub mod cuda;
pub mod dtype;
pub mod engine;
pub mod error;
pub mod failure;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod memory;
pub mod os;
pub mod reduce;
pub mod transport;
pub mod world;

pub use collective::Collective;
pub use communicator::{Builder, Communicator};
pub use dtype::{DType, DTypeInfo, Element, ReduceOp};
pub use engine::{Engine, Handle, Output, Submission};
pub use error::{Error, Result};
pub use half::{bf16, f16};
pub use memory::{DevicePtr, Memory, MemoryRef};
pub use world::World;
