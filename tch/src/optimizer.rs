//! [`DistributedOptimizer`]: a `tch::nn::Optimizer` whose gradients are reduced over all ranks
//! between `backward` and `step`, as Horovod's `DistributedOptimizer` does for torch.

use std::sync::Arc;

use ferrovod::engine::Collective;
use ferrovod::error::Operation;
use ferrovod::{Engine, Error, Handle, ReduceOp, Result, Submission};
use tch::nn::{Optimizer, VarStore};
use tch::{Kind, Tensor};

use crate::lend::{lend, torch_failed};

/// How gradients travel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// In their own dtype.
    #[default]
    None,
    /// Floating-point gradients as IEEE half precision, reduced in it and widened back: half the
    /// bytes, about three decimal digits.
    Fp16,
}

/// Wraps an optimizer: [`DistributedOptimizer::backward`] submits every trainable variable's
/// gradient to the engine as soon as autograd is done, named by its `VarStore` path, so the
/// engine fuses and reduces them while the caller goes on; [`DistributedOptimizer::step`] waits
/// for them and steps.
///
/// Gradients are averaged over ranks by default ([`DistributedOptimizer::op`]); over
/// `backward_passes_per_step` passes they add up locally first, as in a plain torch loop.
///
/// Between the submission and `step` the engine owns the gradients' memory: `backward` and
/// `zero_grad` refuse to run then, and nothing else should read or write the gradients.
pub struct DistributedOptimizer {
    opt: Optimizer,
    engine: Arc<Engine>,
    /// Trainable variables, sorted by path (every rank submits in the same order).
    vars: Vec<(String, Tensor)>,
    op: ReduceOp,
    compression: Compression,
    backward_passes_per_step: usize,
    /// Backward passes since the last step.
    passes: usize,
    in_flight: Vec<Reduction>,
    /// `synchronize` has run since the last step: `step` does not reduce again.
    synchronized: bool,
}

/// One gradient in the engine.
struct Reduction {
    handle: Handle,
    /// The variable's gradient (undefined if autograd gave it none: zeros were sent).
    grad: Tensor,
    /// The memory the engine reduces: the gradient itself, or a copy (half precision, or
    /// contiguous) to copy back.
    wire: Tensor,
}

impl DistributedOptimizer {
    /// Wraps `opt`, built on `vars`' trainable variables; build the model before this call (a
    /// variable added later is not reduced).
    pub fn new(opt: Optimizer, vars: &VarStore, engine: Arc<Engine>) -> DistributedOptimizer {
        let mut named: Vec<(String, Tensor)> =
            vars.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        DistributedOptimizer {
            opt,
            engine,
            vars: named,
            op: ReduceOp::Average,
            compression: Compression::None,
            backward_passes_per_step: 1,
            passes: 0,
            in_flight: Vec::new(),
            synchronized: false,
        }
    }

    /// How gradients combine over ranks: [`ReduceOp::Average`] (the default) or
    /// [`ReduceOp::Sum`].
    pub fn op(mut self, op: ReduceOp) -> Result<DistributedOptimizer> {
        if !matches!(op, ReduceOp::Average | ReduceOp::Sum) {
            return Err(self.invalid(format!("gradients are averaged or summed, not combined by {op:?}")));
        }
        self.op = op;
        Ok(self)
    }

    /// How gradients travel (default: uncompressed).
    pub fn compression(mut self, compression: Compression) -> DistributedOptimizer {
        self.compression = compression;
        self
    }

    /// Backward passes whose gradients add up before they are reduced and applied (default 1).
    pub fn backward_passes_per_step(mut self, passes: usize) -> Result<DistributedOptimizer> {
        if passes == 0 {
            return Err(self.invalid("backward_passes_per_step must be at least 1".into()));
        }
        self.backward_passes_per_step = passes;
        Ok(self)
    }

    /// The wrapped optimizer (learning rate, momentum, ...).
    pub fn optimizer_mut(&mut self) -> &mut Optimizer {
        &mut self.opt
    }

    /// Sets the learning rate.
    pub fn set_lr(&mut self, lr: f64) {
        self.opt.set_lr(lr);
    }

    /// Zeroes the gradients. Refused while they are being reduced (call `step` first).
    pub fn zero_grad(&mut self) -> Result<()> {
        self.idle("zero_grad")?;
        self.opt.zero_grad();
        Ok(())
    }

    /// Runs autograd from `loss`; on the `backward_passes_per_step`-th pass since the last step,
    /// submits every gradient.
    pub fn backward(&mut self, loss: &Tensor) -> Result<()> {
        self.idle("backward")?;
        loss.f_backward().map_err(|e| torch_failed(self.engine.rank(), self.operation(), e))?;
        self.passes += 1;
        if self.passes == self.backward_passes_per_step {
            self.submit()?;
        }
        Ok(())
    }

    /// Waits for the reduced gradients (submitting them first if fewer than
    /// `backward_passes_per_step` passes ran), without stepping: for clipping or inspecting
    /// them. The next `step` does not reduce again.
    pub fn synchronize(&mut self) -> Result<()> {
        if self.in_flight.is_empty() && self.passes > 0 {
            self.submit()?;
        }
        let rank = self.engine.rank();
        let op = self.operation();
        let mut first_error = None;
        // Every handle is waited for, even after a failure: the engine owns their memory.
        for r in self.in_flight.drain(..) {
            let done = r.handle.wait().and_then(|_| {
                if r.grad.defined() && r.wire.data_ptr() != r.grad.data_ptr() {
                    let mut grad = r.grad.shallow_clone();
                    grad.f_copy_(&r.wire).map_err(|e| torch_failed(rank, op.clone(), e))?;
                }
                Ok(())
            });
            if let Err(e) = done {
                first_error.get_or_insert(e);
            }
        }
        self.passes = 0;
        self.synchronized = true;
        first_error.map_or(Ok(()), Err)
    }

    /// Waits for the reduced gradients (see [`DistributedOptimizer::synchronize`]) and applies
    /// them.
    pub fn step(&mut self) -> Result<()> {
        if !self.synchronized {
            self.synchronize()?;
        }
        self.synchronized = false;
        self.opt.step();
        Ok(())
    }

    /// `zero_grad`, `backward`, `step`: one training step with `backward_passes_per_step` 1.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        self.zero_grad()?;
        self.backward(loss)?;
        self.step()
    }

    /// Hands every variable's gradient to the engine.
    fn submit(&mut self) -> Result<()> {
        let rank = self.engine.rank();
        let collective = Collective::Allreduce(self.op);
        let op = self.operation();
        for (name, var) in &self.vars {
            let grad = var.grad();
            let wire = self.wire(&grad, var).map_err(|e| torch_failed(rank, op.clone(), e))?;
            let lent = lend(&wire, rank, op.clone())?;
            // SAFETY: `wire` (kept in the reduction with the handle) holds the lent storage; the
            // handle is waited for before it is dropped, and `backward`/`zero_grad` refuse to
            // touch gradients meanwhile.
            let sub = unsafe { Submission::borrowed(name, collective, lent.dtype, &lent.shape, lent.ptr, lent.len) };
            let handle = self.engine.submit(sub)?;
            self.in_flight.push(Reduction { handle, grad, wire });
        }
        Ok(())
    }

    /// What the engine reduces for `grad`: the gradient itself when it can, else a copy.
    fn wire(&self, grad: &Tensor, var: &Tensor) -> std::result::Result<Tensor, tch::TchError> {
        if !grad.defined() {
            // Autograd gave this variable nothing on this rank; the others may have.
            let kind = match self.compression {
                Compression::Fp16 if var.is_floating_point() => Kind::Half,
                _ => var.kind(),
            };
            return Tensor::f_zeros(var.size().as_slice(), (kind, var.device()));
        }
        match self.compression {
            Compression::Fp16 if grad.is_floating_point() && grad.kind() != Kind::Half => grad.f_to_kind(Kind::Half),
            _ if !grad.is_contiguous() => grad.f_contiguous(),
            _ => Ok(grad.shallow_clone()),
        }
    }

    /// Refuses `what` while gradients are in the engine.
    fn idle(&self, what: &str) -> Result<()> {
        if self.in_flight.is_empty() {
            return Ok(());
        }
        Err(self.invalid(format!(
            "{what} was called while {} gradients are being reduced: call step() (or synchronize()) first",
            self.in_flight.len()
        )))
    }

    fn operation(&self) -> Operation {
        Operation::Collective(Collective::Allreduce(self.op))
    }

    fn invalid(&self, detail: String) -> Error {
        Error::InvalidArgument { rank: self.engine.rank(), op: self.operation(), detail }
    }
}

impl Drop for DistributedOptimizer {
    fn drop(&mut self) {
        // The engine may still write into the gradients: wait until it is done with them.
        for r in self.in_flight.drain(..) {
            let _ = r.handle.wait();
        }
    }
}

impl std::fmt::Debug for DistributedOptimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistributedOptimizer")
            .field("variables", &self.vars.len())
            .field("op", &self.op)
            .field("compression", &self.compression)
            .field("backward_passes_per_step", &self.backward_passes_per_step)
            .field("in_flight", &self.in_flight.len())
            .finish()
    }
}

/// Copies `root`'s value of every variable of `vars` (trainable or not) into every rank's: call
/// it once after building the model so that every rank starts from the same parameters.
pub fn broadcast_parameters(engine: &Engine, vars: &VarStore, root: usize) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = vars.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut in_flight = Vec::with_capacity(named.len());
    let mut first_error = None;
    for (name, var) in &named {
        let submitted = crate::collectives::broadcast_async(engine, &format!("broadcast_parameters.{name}"), var, root);
        match submitted {
            Ok(h) => in_flight.push(h),
            Err(e) => {
                first_error = Some(e);
                break;
            }
        }
    }
    // A non-contiguous variable's result is copied into it: a leaf that requires grad takes
    // that only outside autograd.
    tch::no_grad(|| {
        for h in in_flight {
            if let Err(e) = h.wait() {
                first_error.get_or_insert(e);
            }
        }
    });
    first_error.map_or(Ok(()), Err)
}
