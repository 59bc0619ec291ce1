"""``DistributedOptimizer``: averages gradients over ranks while backward is still running.

Each parameter gets a hook that runs once its gradient is fully accumulated; on the
``backward_passes_per_step``-th backward pass the hook starts that gradient's allreduce, in
place, so communication overlaps with the rest of backward. A second hook, run before a
gradient is added into ``p.grad``, refuses to add into one that is being reduced. ``step()``
starts whatever did not start (parameters unused in this pass get a zero gradient, so every
rank submits the same names), waits for everything, and then runs the wrapped optimizer's step.

The returned object's class is a subclass of the wrapped optimizer's class made on the fly, so
``isinstance`` checks and learning-rate schedulers keep working; it starts with the wrapped
optimizer's attributes (the same ``param_groups`` and ``state`` objects).
"""

from __future__ import annotations

import collections
import contextlib
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

import ferrovod as _core
from ferrovod import Average, ReduceOp, Sum
from ferrovod._process_sets import ProcessSet, global_process_set

from .compression import Compression, Compressor
from .ops import sparse_allreduce_async, staged


def DistributedOptimizer(
    optimizer: torch.optim.Optimizer,
    named_parameters: Iterable[tuple[str, torch.Tensor]] | None = None,
    compression: type[Compressor] | Compressor = Compression.none,
    backward_passes_per_step: int = 1,
    op: ReduceOp = Average,
    gradient_predivide_factor: float = 1.0,
    num_groups: int = 0,
    groups: int | list[list[torch.Tensor]] | None = None,
    sparse_as_dense: bool = False,
    process_set: ProcessSet = global_process_set,
) -> torch.optim.Optimizer:
    """Wraps ``optimizer`` so that ``step()`` uses gradients reduced over every rank with ``op``.

    ``named_parameters`` (e.g. ``model.named_parameters()``) names each gradient's allreduce, so
    ranks match them by name; without it they are named by their order in the optimizer.
    ``backward_passes_per_step=k`` accumulates k backward passes locally and reduces the sum.
    ``gradient_predivide_factor=f`` (``Average`` only) divides by f before the sum and by
    size/f after, to keep float16 sums in range. ``groups`` (a count, or lists of parameters)
    reduces each group's gradients together, as one fused request; ``num_groups`` is a count.
    Sparse gradients are allgathered, or reduced as dense ones with ``sparse_as_dense``.
    ``process_set`` reduces over its ranks only; on a rank outside it the optimizer steps on
    its own gradients, as Horovod's does.
    """
    if process_set.process_set_id is None:  # refused here, not at the first backward
        raise ValueError(f"{process_set} is not added: call add_process_set first")
    if backward_passes_per_step < 1:
        raise ValueError(f"backward_passes_per_step must be at least 1, not {backward_passes_per_step}")
    if gradient_predivide_factor != 1.0 and op != Average:
        raise ValueError(f"gradient_predivide_factor applies to op=Average only, not {op!r}")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    names = _names(params, named_parameters)
    trainable = [p for p in params if p.requires_grad]
    if isinstance(groups, int) or num_groups:
        count = groups if isinstance(groups, int) else num_groups
        if count < 0:
            raise ValueError(f"groups must not be negative, not {count}")
        grouped = _split(trainable, count) if count else []
    else:
        grouped = _checked_groups(groups or [], trainable, names)

    cls = _distributed_class(type(optimizer))
    dist = object.__new__(cls)  # not __init__: it starts from the wrapped optimizer's attributes
    dist.__dict__.update(optimizer.__dict__)
    dist._fv_setup(
        trainable, names, grouped, compression, backward_passes_per_step, op, gradient_predivide_factor, sparse_as_dense,
        process_set,
    )
    return dist


class _DistributedMixin:
    """The methods a distributed optimizer adds to or overrides in its wrapped class."""

    def _fv_setup(
        self,
        trainable: list[torch.Tensor],
        names: dict[torch.Tensor, str],
        grouped: list[list[torch.Tensor]],
        compression: Any,
        passes: int,
        op: ReduceOp,
        predivide: float,
        sparse_as_dense: bool,
        process_set: ProcessSet,
    ) -> None:
        self._fv_params = trainable
        self._fv_names = names
        self._parameter_names = names  # Horovod's name for it, which scripts and tests read
        self._fv_groups = grouped
        self._fv_group_of = {p: i for i, group in enumerate(grouped) for p in group}
        self._fv_compression = compression
        self._fv_passes_per_step = passes
        self._fv_sparse_as_dense = sparse_as_dense
        self._fv_set = process_set
        self._fv_size = (process_set.size() or 1) if process_set.included() else 1
        self._fv_user_op = op
        # Average with a predivide factor f: the sum of g/f, times f/size.
        if predivide != 1.0:
            self._fv_op, self._fv_pre, self._fv_post = Sum, 1.0 / predivide, predivide / self._fv_size
        else:
            self._fv_op, self._fv_pre, self._fv_post = op, 1.0, 1.0
        self._fv_passes: dict[torch.Tensor, int] = {}
        self._fv_ready: dict[int, set[torch.Tensor]] = {}
        self._fv_submitted: set[torch.Tensor] = set()
        self._fv_inflight: list[Callable[[], None]] = []
        self._fv_skip = False
        # An explicit synchronize() since the last step: step() then warns, as Horovod does.
        self._fv_synchronized = False
        self._fv_hooks = []
        if self._fv_size > 1:
            # The hooks hold the optimizer weakly: parameters outlive a discarded optimizer.
            ref = weakref.ref(self)

            def before(p: torch.Tensor) -> Callable[[torch.Tensor], None]:
                def hook(grad: torch.Tensor) -> None:
                    opt = ref()
                    if opt is not None:
                        opt._fv_before_grad(p)

                return hook

            def after(p: torch.Tensor) -> None:
                opt = ref()
                if opt is not None:
                    opt._fv_after_grad(p)

            for p in trainable:
                self._fv_hooks += [p.register_hook(before(p)), p.register_post_accumulate_grad_hook(after)]

    # --- the hooks and submission --------------------------------------------------------------

    def _fv_before_grad(self, p: torch.Tensor) -> None:
        """Runs before a gradient is added into ``p.grad``: refuses once ``p.grad`` is being
        reduced, since adding into it then would corrupt the reduction on this rank only."""
        if p in self._fv_submitted:
            raise RuntimeError(
                f"the gradient of {self._fv_names[p]!r} was computed again after its allreduce "
                f"started: more than backward_passes_per_step={self._fv_passes_per_step} backward "
                "passes, or one after synchronize(), before step(); raise backward_passes_per_step "
                "to accumulate more passes locally"
            )

    def _fv_after_grad(self, p: torch.Tensor) -> None:
        """Runs once ``p.grad`` holds this pass's gradient: counts the pass and, on the last one,
        starts its allreduce (or its group's, once the group is complete)."""
        n = self._fv_passes[p] = self._fv_passes.get(p, 0) + 1
        if n < self._fv_passes_per_step:
            return
        group = self._fv_group_of.get(p)
        if group is None:
            self._fv_submit([p], self._fv_names[p])
            return
        ready = self._fv_ready.setdefault(group, set())
        ready.add(p)
        if len(ready) == len(self._fv_groups[group]):
            self._fv_submit(self._fv_groups[group], f"group.{group}")

    def _fv_submit(self, params: list[torch.Tensor], name: str) -> None:
        """Starts reducing the gradients of ``params`` (one request, or one group of them)."""
        self._fv_submitted.update(params)
        entries = []
        densified = []  # sparse gradients reduced as dense ones: sparse again for the step
        for p in params:
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            if grad.is_sparse:
                if not self._fv_sparse_as_dense:
                    if len(params) > 1:
                        raise RuntimeError(f"{self._fv_names[p]!r} has a sparse gradient and cannot be in a group; pass sparse_as_dense=True")
                    self._fv_submit_sparse(p, grad, name)
                    return
                grad = grad.to_dense()
                densified.append(p)
            p.grad = grad
            compressed, ctx = self._fv_compression.compress(grad)
            buf = staged(compressed)
            if self._fv_pre != 1.0:
                buf.mul_(self._fv_pre)
            entries.append((grad, buf, ctx))
        bufs = [buf for _, buf, _ in entries]
        if len(bufs) == 1:
            handle = _core.allreduce_async_(bufs[0], name=f"allreduce.{name}", op=self._fv_op, process_set=self._fv_set)
        else:
            handle = _core.grouped_allreduce_async_(
                bufs, name=f"allreduce.{name}", op=self._fv_op, process_set=self._fv_set
            )

        def finish() -> None:
            handle.wait()
            for grad, buf, ctx in entries:
                if self._fv_post != 1.0:
                    buf.mul_(self._fv_post)
                out = self._fv_compression.decompress(buf, ctx)
                if out is not grad:
                    grad.copy_(out)
            for p in densified:  # an optimizer that takes sparse gradients only (SparseAdam)
                p.grad = p.grad.to_sparse()

        self._fv_inflight.append(finish)

    def _fv_submit_sparse(self, p: torch.Tensor, grad: torch.Tensor, name: str) -> None:
        """A sparse gradient: every rank's (indices, values) are gathered and summed, which
        costs what the nonzeros cost rather than the dense size."""
        if self._fv_user_op not in (Sum, Average):
            raise RuntimeError(f"sparse gradients reduce with Sum or Average, not {self._fv_user_op!r}; pass sparse_as_dense=True")
        wait = sparse_allreduce_async(grad, f"allreduce.{name}", self._fv_user_op, self._fv_set)

        def finish() -> None:
            p.grad = wait()

        self._fv_inflight.append(finish)

    # --- the optimizer interface ---------------------------------------------------------------

    def synchronize(self) -> None:
        """Starts the allreduces that have not started, and waits for all of them: afterwards
        ``p.grad`` holds the reduced gradient. ``step()`` calls it; call it yourself to look at
        or clip the reduced gradients, then step inside ``skip_synchronize()``."""
        self._fv_synchronized = True
        if self._fv_size == 1:
            return
        for p in self._fv_params:
            if p in self._fv_submitted:
                continue
            group = self._fv_group_of.get(p)
            if group is None:
                self._fv_submit([p], self._fv_names[p])
            else:
                self._fv_submit(self._fv_groups[group], f"group.{group}")
        inflight, self._fv_inflight = self._fv_inflight, []
        for finish in inflight:
            finish()

    def set_backward_passes_per_step(self, passes: int) -> None:
        """Changes how many backward passes are accumulated before the allreduce, from the next
        pass on (call it between steps)."""
        if passes < 1:
            raise ValueError(f"backward_passes_per_step must be at least 1, not {passes}")
        self._fv_passes_per_step = passes

    @contextlib.contextmanager
    def skip_synchronize(self) -> Iterator[None]:
        """Inside it, ``step()`` does not synchronize: for after an explicit ``synchronize()``."""
        self._fv_skip = True
        try:
            yield
        finally:
            self._fv_skip = False

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluates ``closure`` (if given), synchronizes the gradients (unless inside
        ``skip_synchronize()``), and takes the wrapped optimizer's step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._fv_skip:
            if self._fv_inflight:
                raise RuntimeError("step() inside skip_synchronize() with allreduces still running; call synchronize() first")
        else:
            if self._fv_synchronized:
                warnings.warn(
                    "optimizer.step() called without optimizer.skip_synchronize() after an explicit "
                    "optimizer.synchronize(): the step synchronizes again; wrap it in "
                    "`with optimizer.skip_synchronize():` to skip that",
                    UserWarning,
                    stacklevel=2,
                )
            self.synchronize()
        self._fv_synchronized = False
        super().step()  # type: ignore[misc]
        self._fv_passes.clear()
        self._fv_ready.clear()
        self._fv_submitted.clear()
        return loss

    # Optimizer.__init__ and load_state_dict wrap a class's step to run step hooks; the wrapped
    # class's step already does, so this one must not be wrapped again.
    step.hooked = True  # type: ignore[attr-defined]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Refuses while allreduces are writing into the gradients."""
        if self._fv_inflight:
            raise RuntimeError(
                "zero_grad() while gradient allreduces are running (after backward, before "
                "step() or synchronize()) would race with them"
            )
        super().zero_grad(set_to_none)  # type: ignore[misc]


_CLASSES: dict[type, type[Any]] = {}


def _distributed_class(base: type) -> type[Any]:
    """One subclass per wrapped class, made on first use."""
    if base not in _CLASSES:
        _CLASSES[base] = type(base.__name__, (_DistributedMixin, base), {"__module__": __name__})
    return _CLASSES[base]


def _names(params: list[torch.Tensor], named_parameters: Iterable[tuple[str, torch.Tensor]] | None) -> dict[torch.Tensor, str]:
    """Each parameter's name; refuses what would make ranks mismatch or collide."""
    if named_parameters is None:
        # Not "noname.<i>": unnamed core collectives are named that way, and one may run while
        # gradients are in flight.
        return {p: f"param.{i}" for i, p in enumerate(params)}
    pairs = list(named_parameters)
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], torch.Tensor)):
            raise ValueError(f"named_parameters must be (name, parameter) pairs, as model.named_parameters() gives, not {pair!r:.80}")
    counts = collections.Counter(name for name, _ in pairs)
    duplicates = sorted(name for name, n in counts.items() if n > 1)
    if duplicates:
        raise ValueError(f"named_parameters has duplicate names: {', '.join(duplicates)}")
    names: dict[torch.Tensor, str] = {}
    for name, p in pairs:
        names.setdefault(p, name)
    missing = [i for i, p in enumerate(params) if p not in names]
    if missing:
        raise ValueError(
            f"named_parameters does not name {len(missing)} of the optimizer's {len(params)} "
            f"parameters (positions {missing[:10]}); pass the named_parameters of every parameter the optimizer updates"
        )
    return names


def _split(params: list[torch.Tensor], count: int) -> list[list[torch.Tensor]]:
    """``params`` in ``count`` contiguous groups of nearly equal length (none empty)."""
    count = min(count, len(params))
    size, extra = divmod(len(params), count) if count else (0, 0)
    out, at = [], 0
    for i in range(count):
        n = size + (i < extra)
        out.append(params[at : at + n])
        at += n
    return out


def _checked_groups(groups: list[list[torch.Tensor]], trainable: list[torch.Tensor], names: dict[torch.Tensor, str]) -> list[list[torch.Tensor]]:
    """Explicit groups, in the optimizer's parameter order; each parameter at most once."""
    order = {p: i for i, p in enumerate(trainable)}
    seen: set[torch.Tensor] = set()
    out = []
    for group in groups:
        members = list(group)
        for p in members:
            if p not in order:
                raise ValueError("groups holds a tensor that is not a trainable parameter of the optimizer")
            if p in seen:
                raise ValueError(f"parameter {names[p]!r} is in more than one group")
            seen.add(p)
        if members:
            out.append(sorted(members, key=order.__getitem__))
    return out
