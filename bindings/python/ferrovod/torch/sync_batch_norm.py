"""``SyncBatchNorm``: batch normalisation with the statistics of the whole batch, every rank's
part of it, as ``hvd.SyncBatchNorm`` is in Horovod.

In training, the forward pass allreduces each channel's sum, sum of squares and count (one
float64 allreduce), normalises with the global mean and variance, and updates the running
statistics with them (the variance unbiased over the global count). The backward pass
allreduces each channel's sum of the output gradient and of the gradient times the centred
input, so every rank's input gradient is the slice of the whole batch's. The weight and bias
gradients stay this rank's own, as the optimizer averages (or sums) them over the ranks like
any other gradient. In evaluation, or with one rank, it is a plain batch norm.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

import ferrovod as _core
from ferrovod import Sum


class SyncBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """Batch normalisation over the ranks' whole batch. Inputs are ``(N, C, ...)``."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"SyncBatchNorm expects an input of at least 2 dimensions (N, C, ...), got {input.dim()}")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if input.shape[1] != self.num_features:
            raise ValueError(f"SyncBatchNorm of {self.num_features} features got {input.shape[1]} channels")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        batch_stats = self.training or not self.track_running_stats
        if not batch_stats or _core.size() == 1:
            return F.batch_norm(
                input, self.running_mean, self.running_var, self.weight, self.bias, batch_stats, factor, self.eps
            )
        running = (self.running_mean, self.running_var) if self.training else (None, None)
        return _SyncBatchNorm.apply(input, self.weight, self.bias, *running, self.eps, factor)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` as (rows, C): every element of a channel in its column."""
    return x.transpose(0, 1).reshape(x.shape[1], -1).t()


def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (C,) vector shaped to broadcast over ``like`` (N, C, ...)."""
    return v.reshape(1, -1, *([1] * (like.dim() - 2)))


class _SyncBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        running_mean: torch.Tensor | None,
        running_var: torch.Tensor | None,
        eps: float,
        momentum: float,
    ) -> torch.Tensor:
        rows = _channels_last(x.detach()).double()
        local = torch.cat([rows.sum(0), (rows * rows).sum(0), torch.tensor([float(rows.shape[0])], dtype=torch.float64)])
        total = _core.allreduce(local, op=Sum)
        c = x.shape[1]
        count = total[2 * c].item()
        if count < 1:
            raise ValueError("SyncBatchNorm: the ranks' batches are all empty")
        mean = total[:c] / count
        var = (total[c : 2 * c] / count - mean * mean).clamp_min(0.0)
        invstd = torch.rsqrt(var + eps)
        if running_mean is not None and running_var is not None:
            unbiased = var * (count / (count - 1)) if count > 1 else var
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        mean, invstd = mean.to(x.dtype), invstd.to(x.dtype)
        y = (x - _per_channel(mean, x)) * _per_channel(invstd, x)
        if weight is not None:
            y = y * _per_channel(weight, x)
        if bias is not None:
            y = y + _per_channel(bias, x)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.count = count
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        xmu = x - _per_channel(mean, x)
        dy_rows, xmu_rows = _channels_last(dy), _channels_last(xmu)
        sum_dy = dy_rows.sum(0)
        sum_dy_xmu = (dy_rows * xmu_rows).sum(0)
        # This rank's weight and bias gradients: the optimizer combines them over the ranks.
        grad_weight = sum_dy_xmu * invstd if weight is not None else None
        grad_bias = sum_dy.clone() if ctx.has_bias else None
        c = x.shape[1]
        total = _core.allreduce(torch.cat([sum_dy, sum_dy_xmu]).double(), op=Sum).to(x.dtype)
        mean_dy, mean_dy_xmu = total[:c] / ctx.count, total[c:] / ctx.count
        scale = invstd if weight is None else invstd * weight
        dx = (dy - _per_channel(mean_dy, x) - xmu * _per_channel(invstd * invstd * mean_dy_xmu, x)) * _per_channel(scale, x)
        return dx, grad_weight, grad_bias, None, None, None, None
