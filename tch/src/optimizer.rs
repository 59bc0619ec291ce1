//! [`DistributedOptimizer`]: a `tch::nn::Optimizer` whose gradients are reduced over all ranks
//! between `backward` and `step`, as Horovod's `DistributedOptimizer` does for torch.

use std::ffi::c_void;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ferrovod::engine::Collective;
use ferrovod::error::Operation;
use ferrovod::{Engine, Error, Handle, ReduceOp, Result, Submission};
use tch::nn::{Optimizer, VarStore};
use tch::{Kind, Tensor};

use crate::hooks::Hooks;
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

/// Wraps an optimizer so that every trainable variable's gradient is averaged over all ranks
/// before `step` applies it, as Horovod's `DistributedOptimizer` does for torch.
///
/// Each gradient goes to the engine, named by its variable's `VarStore` path, as soon as autograd
/// has accumulated it (an autograd hook on every variable): the engine fuses and reduces the
/// gradients of the last layers while backward still computes the first ones.
/// [`DistributedOptimizer::step`] waits for them and steps. Over `backward_passes_per_step`
/// passes they add up locally first, as in a plain torch loop.
///
/// Call [`DistributedOptimizer::backward`] (or `loss.backward()`: the hooks see it alike) and
/// [`DistributedOptimizer::step`]. Between a gradient's submission and `step` the engine owns
/// its memory: `backward` and `zero_grad` refuse to run then, and nothing else should read or
/// write the gradients.
pub struct DistributedOptimizer {
    /// Held for its drop, which comes first: after it no hook reaches the reducer.
    _hooks: Hooks,
    reducer: Arc<Mutex<Reducer>>,
    opt: Optimizer,
    rank: usize,
    /// `synchronize` has run since the last step: `step` does not reduce again.
    synchronized: bool,
}

/// What the hooks and the optimizer share: the variables and their gradients in flight.
struct Reducer {
    engine: Arc<Engine>,
    /// Trainable variables, sorted by path (the hooks know them by index).
    vars: Vec<(String, Tensor)>,
    op: ReduceOp,
    compression: Compression,
    backward_passes_per_step: usize,
    /// Per variable: backward passes accumulated into its gradient since the last step.
    passes: Vec<usize>,
    /// Per variable: its gradient is in the engine.
    submitted: Vec<bool>,
    /// `backward` calls since the last step.
    backward_calls: usize,
    in_flight: Vec<Reduction>,
    /// The first failure in a hook (which cannot return one), for the next call to report.
    failed: Option<Error>,
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
    /// variable added later is not reduced). Fails if a variable already has a
    /// gradient-accumulated hook (another `DistributedOptimizer` on the same variables).
    pub fn new(opt: Optimizer, vars: &VarStore, engine: Arc<Engine>) -> Result<DistributedOptimizer> {
        let named: Vec<(String, Tensor)> = variables(vars).into_iter().filter(|(_, t)| t.requires_grad()).collect();
        let rank = engine.rank();
        let n = named.len();
        let reducer = Arc::new(Mutex::new(Reducer {
            engine,
            vars: named,
            op: ReduceOp::Average,
            compression: Compression::None,
            backward_passes_per_step: 1,
            passes: vec![0; n],
            submitted: vec![false; n],
            backward_calls: 0,
            in_flight: Vec::new(),
            failed: None,
        }));
        let mut hooks = Hooks::new();
        let ctx = Arc::as_ptr(&reducer).cast::<c_void>();
        let vars: Vec<(String, Tensor)> =
            lock(&reducer).vars.iter().map(|(name, var)| (name.clone(), var.shallow_clone())).collect();
        for (index, (name, var)) in vars.iter().enumerate() {
            // SAFETY: `ctx` points into `reducer`, which the optimizer keeps until its `hooks`
            // (declared first, so dropped first) have removed every hook.
            unsafe { hooks.set(var, ready, busy, ctx, index) }.map_err(|why| Error::InvalidArgument {
                rank,
                op: Operation::Collective(Collective::Allreduce(ReduceOp::Average)),
                detail: format!("variable {name:?}: {why}"),
            })?;
        }
        Ok(DistributedOptimizer { _hooks: hooks, reducer, opt, rank, synchronized: false })
    }

    /// How gradients combine over ranks: [`ReduceOp::Average`] (the default) or
    /// [`ReduceOp::Sum`].
    pub fn op(self, op: ReduceOp) -> Result<DistributedOptimizer> {
        if !matches!(op, ReduceOp::Average | ReduceOp::Sum) {
            return Err(self.invalid(format!("gradients are averaged or summed, not combined by {op:?}")));
        }
        self.reducer().op = op;
        Ok(self)
    }

    /// How gradients travel (default: uncompressed).
    pub fn compression(self, compression: Compression) -> DistributedOptimizer {
        self.reducer().compression = compression;
        self
    }

    /// Backward passes whose gradients add up before they are reduced and applied (default 1).
    pub fn backward_passes_per_step(self, passes: usize) -> Result<DistributedOptimizer> {
        if passes == 0 {
            return Err(self.invalid("backward_passes_per_step must be at least 1".into()));
        }
        self.reducer().backward_passes_per_step = passes;
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

    /// Zeroes the gradients where they lie (torch's `set_to_none=False`): their memory stays
    /// allocated from step to step, so no step pays for fresh pages (a freed multi-megabyte
    /// gradient goes back to the kernel, and the next backward faults it in again). Refused
    /// while they are being reduced (call `step` first).
    pub fn zero_grad(&mut self) -> Result<()> {
        let r = self.reducer();
        r.idle("zero_grad")?;
        for (_, var) in &r.vars {
            let mut grad = var.grad();
            if grad.defined() {
                let _zeroed = grad.f_zero_().map_err(|e| torch_failed(self.rank, r.operation(), e))?;
            }
        }
        Ok(())
    }

    /// Runs autograd from `loss`. Gradients go to the engine as they are accumulated, on the
    /// `backward_passes_per_step`-th pass since the last step; after that pass, so do those of
    /// the variables this rank's loss did not reach (as zeros).
    pub fn backward(&mut self, loss: &Tensor) -> Result<()> {
        self.reducer().idle("backward")?;
        // Not under the lock: the hooks take it.
        loss.f_backward().map_err(|e| torch_failed(self.rank, self.operation(), e))?;
        let mut r = self.reducer();
        r.backward_calls += 1;
        if r.backward_calls >= r.backward_passes_per_step {
            r.submit_rest();
        }
        r.failed.clone().map_or(Ok(()), Err)
    }

    /// Waits for the reduced gradients (submitting first those not yet submitted: fewer than
    /// `backward_passes_per_step` passes ran, or autograd never reached the variable), without
    /// stepping: for clipping or inspecting them. The next `step` does not reduce again.
    pub fn synchronize(&mut self) -> Result<()> {
        let mut r = self.reducer();
        if r.backward_calls > 0 || r.passes.iter().any(|&p| p > 0) {
            r.submit_rest();
        }
        let result = r.wait_all();
        drop(r);
        self.synchronized = true;
        result
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

    fn reducer(&self) -> MutexGuard<'_, Reducer> {
        lock(&self.reducer)
    }

    fn operation(&self) -> Operation {
        self.reducer().operation()
    }

    fn invalid(&self, detail: String) -> Error {
        Error::InvalidArgument { rank: self.rank, op: self.operation(), detail }
    }
}

/// The reducer, also after a panic elsewhere (its state stays consistent: every change is one
/// assignment or push).
fn lock(reducer: &Mutex<Reducer>) -> MutexGuard<'_, Reducer> {
    reducer.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The hook: autograd has accumulated variable `index`'s gradient.
extern "C" fn ready(ctx: *const c_void, index: usize) {
    // SAFETY: `ctx` is the optimizer's `Mutex<Reducer>`, alive while the hook is set.
    let reducer = unsafe { &*ctx.cast::<Mutex<Reducer>>() };
    // A panic must not unwind into libtorch.
    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| lock(reducer).ready(index)));
}

/// The gradient hook: may autograd accumulate into variable `index`'s gradient now?
extern "C" fn busy(ctx: *const c_void, index: usize) -> std::ffi::c_int {
    // SAFETY: as in `ready`.
    let reducer = unsafe { &*ctx.cast::<Mutex<Reducer>>() };
    let submitted = std::panic::catch_unwind(AssertUnwindSafe(|| lock(reducer).submitted.get(index) == Some(&true)));
    submitted.unwrap_or(true).into()
}

impl Reducer {
    fn ready(&mut self, index: usize) {
        if index >= self.vars.len() {
            return;
        }
        // Never for a submitted gradient: the gradient hook (`busy`) fails such a pass first.
        self.passes[index] += 1;
        if !self.submitted[index] && self.passes[index] >= self.backward_passes_per_step {
            self.submit(index);
        }
    }

    /// Submits every gradient not yet submitted.
    fn submit_rest(&mut self) {
        for index in 0..self.vars.len() {
            if !self.submitted[index] {
                self.submit(index);
            }
        }
    }

    /// Hands variable `index`'s gradient to the engine; a failure is kept for the caller.
    fn submit(&mut self, index: usize) {
        self.submitted[index] = true;
        if let Err(e) = self.try_submit(index) {
            self.failed.get_or_insert(e);
        }
    }

    fn try_submit(&mut self, index: usize) -> Result<()> {
        let rank = self.engine.rank();
        let collective = Collective::Allreduce(self.op);
        let op = Operation::Collective(collective);
        let (name, var) = &self.vars[index];
        let grad = var.grad();
        let wire = self.wire(&grad, var).map_err(|e| torch_failed(rank, op.clone(), e))?;
        let lent = lend(&wire, rank, op)?;
        // SAFETY: `wire` (kept in the reduction with the handle) holds the lent storage; the
        // handle is waited for before it is dropped, and `backward`/`zero_grad` refuse to
        // touch gradients meanwhile.
        let sub = unsafe { Submission::borrowed(name, collective, lent.dtype, &lent.shape, lent.ptr, lent.len) };
        let handle = self.engine.submit(sub)?;
        self.in_flight.push(Reduction { handle, grad, wire });
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

    /// Waits for every gradient in flight, copies results back where they were reduced in a
    /// copy, and starts the next step's count. Returns the first failure, a hook's included.
    fn wait_all(&mut self) -> Result<()> {
        let rank = self.engine.rank();
        let op = Operation::Collective(Collective::Allreduce(self.op));
        let mut first_error = self.failed.take();
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
        self.passes.iter_mut().for_each(|p| *p = 0);
        self.submitted.iter_mut().for_each(|s| *s = false);
        self.backward_calls = 0;
        first_error.map_or(Ok(()), Err)
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

    fn invalid(&self, detail: String) -> Error {
        Error::InvalidArgument { rank: self.engine.rank(), op: self.operation(), detail }
    }

    fn operation(&self) -> Operation {
        Operation::Collective(Collective::Allreduce(self.op))
    }
}

impl Drop for Reducer {
    fn drop(&mut self) {
        // The engine may still write into the gradients: wait until it is done with them.
        for r in self.in_flight.drain(..) {
            let _ = r.handle.wait();
        }
    }
}

impl std::fmt::Debug for DistributedOptimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.reducer();
        f.debug_struct("DistributedOptimizer")
            .field("variables", &r.vars.len())
            .field("op", &r.op)
            .field("compression", &r.compression)
            .field("backward_passes_per_step", &r.backward_passes_per_step)
            .field("in_flight", &r.in_flight.len())
            .finish()
    }
}

/// Every variable of `vars` with its path, sorted by path: the same order on every rank.
pub fn variables(vars: &VarStore) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> = vars.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// Copies `root`'s value of every variable of `vars` (trainable or not) into every rank's: call
/// it once after building the model so that every rank starts from the same parameters.
pub fn broadcast_parameters(engine: &Engine, vars: &VarStore, root: usize) -> Result<()> {
    let named = variables(vars);
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
    for h in in_flight {
        if let Err(e) = h.wait() {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}
