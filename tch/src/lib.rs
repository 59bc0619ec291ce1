//! ferrovod for tch: data-parallel training of libtorch models from Rust.
//!
//! One process per rank (`ferrovod-run -np N -- your-binary` starts them); in each:
//!
//! 1. Start the engine: `let engine = Arc::new(Engine::from_env()?);`.
//! 2. Build the model in a `VarStore`, then give every rank rank 0's parameters:
//!    [`broadcast_parameters`].
//! 3. Wrap the optimizer: [`DistributedOptimizer::new`]. During `backward` every gradient goes
//!    to the engine, named by its variable's path, as soon as autograd has accumulated it; the
//!    engine fuses and averages them while backward goes on; `step` waits for them and steps.
//! 4. Feed each rank its own shard of the data. Errors are [`ferrovod::Error`]s that name the
//!    rank and the tensor: a variable whose shape differs between ranks fails on every rank.
//!
//! ```
//! use std::sync::Arc;
//! use ferrovod::Engine;
//! use ferrovod_tch::{DistributedOptimizer, broadcast_parameters};
//! use tch::nn::{self, Module, OptimizerConfig};
//! use tch::{Device, Kind, Tensor};
//!
//! // Without a launcher's environment this is rank 0 of a one-rank job.
//! let engine = Arc::new(Engine::from_env()?);
//! let vs = nn::VarStore::new(Device::Cpu);
//! let model = nn::linear(vs.root() / "fc", 4, 1, Default::default());
//! broadcast_parameters(&engine, &vs, 0)?;
//!
//! let sgd = nn::Sgd::default().build(&vs, 0.1).unwrap();
//! let mut opt = DistributedOptimizer::new(sgd, &vs, engine.clone())?;
//! let x = Tensor::ones([8, 4], (Kind::Float, Device::Cpu));
//! for _ in 0..3 {
//!     let loss = model.forward(&x).square().mean(Kind::Float);
//!     opt.backward_step(&loss)?;
//! }
//! # Ok::<(), ferrovod::Error>(())
//! ```
//!
//! Single tensors: [`allreduce`], [`broadcast`] and [`allgather`] block on a
//! [`ferrovod::Communicator`]; [`allreduce_async`] and friends submit to the [`ferrovod::Engine`]
//! under a name and return a [`TensorHandle`]. A contiguous CPU tensor is reduced where it lies,
//! with no copy. CUDA tensors are refused with an error until ferrovod has a GPU backend.
//!
//! Why a crate of its own and not a feature of `ferrovod`: building tch needs libtorch (the
//! project venv's pip torch); the core crate and its users should not.
#![warn(missing_docs)]

mod collectives;
mod hooks;
mod lend;
mod optimizer;

pub use collectives::{
    TensorHandle, allgather, allgather_async, allreduce, allreduce_async, broadcast, broadcast_async,
};
pub use lend::{dtype_of, kind_of};
pub use optimizer::{Compression, DistributedOptimizer, broadcast_parameters, variables};
