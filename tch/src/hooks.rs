//! Autograd's "gradient accumulated" hook on tch variables (src/hooks.cpp): the call that lets
//! a gradient go to the engine while backward still computes the others.

use std::ffi::{c_char, c_int, c_void};

use tch::Tensor;

/// What the hook calls: `ready(ctx, index)`, on the thread that runs backward.
pub(crate) type ReadyFn = extern "C" fn(ctx: *const c_void, index: usize);
/// Asked before a gradient is accumulated: non-zero fails the backward pass.
pub(crate) type BusyFn = extern "C" fn(ctx: *const c_void, index: usize) -> c_int;

unsafe extern "C" {
    fn ferrovod_tch_set_ready_hook(
        var: *const c_void,
        ready: ReadyFn,
        busy: BusyFn,
        ctx: *const c_void,
        index: usize,
        pre: *mut u32,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn ferrovod_tch_clear_ready_hook(var: *const c_void, pre: u32);
}

/// Hooks set on variables (with their gradient hook's handle); dropping this removes them.
pub(crate) struct Hooks {
    vars: Vec<(Tensor, u32)>,
}

impl Hooks {
    pub(crate) fn new() -> Hooks {
        Hooks { vars: Vec::new() }
    }

    /// Makes autograd call `ready(ctx, index)` each time it has accumulated `var`'s gradient,
    /// and fail a backward pass that would accumulate into it while `busy(ctx, index)`.
    ///
    /// # Safety
    /// `ctx` must stay valid for `ready` and `busy` until this `Hooks` is dropped.
    pub(crate) unsafe fn set(
        &mut self,
        var: &Tensor,
        ready: ReadyFn,
        busy: BusyFn,
        ctx: *const c_void,
        index: usize,
    ) -> Result<(), String> {
        let mut err = [0u8; 256];
        let mut pre = 0u32;
        // SAFETY: `var.as_ptr()` is the `at::Tensor*` tch keeps for the tensor's life, and the
        // shim writes at most `err.len()` bytes, NUL included.
        let rc = unsafe {
            ferrovod_tch_set_ready_hook(
                var.as_ptr().cast(),
                ready,
                busy,
                ctx,
                index,
                &mut pre,
                err.as_mut_ptr().cast(),
                err.len(),
            )
        };
        if rc != 0 {
            let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
            return Err(String::from_utf8_lossy(&err[..end]).into_owned());
        }
        self.vars.push((var.shallow_clone(), pre));
        Ok(())
    }
}

impl Drop for Hooks {
    fn drop(&mut self) {
        for (var, pre) in &self.vars {
            // SAFETY: as in `set`; the hooks this removes are ours.
            unsafe { ferrovod_tch_clear_ready_hook(var.as_ptr().cast(), *pre) };
        }
    }
}
