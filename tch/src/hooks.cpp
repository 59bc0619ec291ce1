// Autograd's "gradient accumulated" hook for tch variables: tch has no binding for it, and a
// DistributedOptimizer needs it to hand each gradient to the engine while backward goes on
// (what Horovod's torch optimizer does with its grad-accumulator hooks).
//
// C interface, no exception crosses it: 0 on success, else 1 with a message in `err`.

#include <cstdio>
#include <memory>

#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

extern "C" {
typedef void (*ferrovod_ready_fn)(const void* ctx, size_t index);
typedef int (*ferrovod_busy_fn)(const void* ctx, size_t index);
}

namespace {

// Called by AccumulateGrad once `var.grad` holds this backward pass's contribution.
struct Ready final : torch::autograd::PostAccumulateGradHook {
  Ready(ferrovod_ready_fn ready, const void* ctx, size_t index) : ready_(ready), ctx_(ctx), index_(index) {}
  void operator()(const torch::autograd::Variable& /*var*/) override { ready_(ctx_, index_); }

 private:
  ferrovod_ready_fn ready_;
  const void* ctx_;
  size_t index_;
};

void describe(const char* what, char* err, size_t err_len) {
  if (err_len > 0) std::snprintf(err, err_len, "%s", what);
}

}  // namespace

extern "C" {

// Sets `var`'s post-accumulate hook to call `ready(ctx, index)`, and a gradient hook that fails
// the backward pass, before anything is accumulated, while `busy(ctx, index)` says the gradient
// is in the engine. Refuses a variable that is not a leaf requiring grad, or that already has a
// post-accumulate hook (one slot per variable). `*pre` gets the gradient hook's handle.
int ferrovod_tch_set_ready_hook(const at::Tensor* var, ferrovod_ready_fn ready, ferrovod_busy_fn busy,
                                const void* ctx, size_t index, unsigned* pre, char* err, size_t err_len) {
  try {
    if (!var->defined() || !var->requires_grad() || !var->is_leaf()) {
      describe("not a leaf variable that requires grad", err, err_len);
      return 1;
    }
    auto& slot = torch::autograd::impl::post_acc_grad_hooks(*var);
    if (slot) {
      describe("it already has a post-accumulate-grad hook (another DistributedOptimizer?)", err, err_len);
      return 1;
    }
    torch::autograd::impl::set_post_acc_grad_hooks(*var, std::make_unique<Ready>(ready, ctx, index));
    *pre = var->register_hook([busy, ctx, index](const at::Tensor& /*grad*/) {
      TORCH_CHECK(!busy(ctx, index),
                  "ferrovod: this variable's gradient is being reduced by the engine: call step() (or "
                  "synchronize()) before another backward pass, or raise backward_passes_per_step");
    });
    return 0;
  } catch (const std::exception& e) {
    describe(e.what(), err, err_len);
    return 1;
  }
}

// Removes the hooks set above (after it, `ctx` is never called again for this variable).
void ferrovod_tch_clear_ready_hook(const at::Tensor* var, unsigned pre) {
  try {
    var->remove_hook(pre);
    torch::autograd::impl::set_post_acc_grad_hooks(*var, nullptr);
  } catch (...) {
  }
}
}
