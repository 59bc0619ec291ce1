"""Making every rank start from the root's model and optimizer.

Optimizer state is a tree of dicts (with int keys), lists, tuples (Adam's ``betas``), numbers,
strings and tensors. Nothing is pickled: the tree travels as JSON in which every dict and tuple
is tagged, so int keys and tuples come back as they left, and each tensor is replaced by its
index; the tensors then travel as tensors, each broadcast into one of the root's dtype and shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

import ferrovod as _core
from ferrovod import _arrays

from .ops import staged
from .optimizer import _DistributedMixin


def broadcast_parameters(params: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]], root_rank: int) -> None:
    """Copies ``root_rank``'s tensors into every rank's, in place. ``params`` is a
    ``state_dict()`` or ``named_parameters()``; tensors are matched across ranks by name, all
    travel at once, and this returns when every one has arrived."""
    items = list(params.items()) if isinstance(params, Mapping) else list(params)
    pending, seen = [], set()
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], torch.Tensor)):
            raise TypeError(f"broadcast_parameters takes a state_dict or named_parameters: (name, tensor) pairs, not {item!r:.80}")
        name, tensor = item
        # Tied weights appear under several names; broadcasting the same memory twice at once
        # would race with itself.
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        if tensor.numel() == 0 or key in seen:
            continue
        seen.add(key)
        pending.append(_broadcast_into(tensor, root_rank, f"broadcast_parameters.{name}"))
    for finish in pending:
        finish()


def broadcast_optimizer_state(optimizer: torch.optim.Optimizer, root_rank: int, model: torch.nn.Module | None = None) -> None:
    """Makes every rank's optimizer state (per-parameter state and ``param_groups``: learning
    rates, betas, step counts) equal to ``root_rank``'s, also where the others have none yet.

    As Horovod's: an optimizer with no state yet first takes a step with zero gradients to
    create it, on every rank where it has none, and parameters that train keep those zero
    ``.grad``s (``model`` names the sparse embeddings, whose gradients SGD takes sparse). Unlike
    Horovod's, that step leaves the parameters as they were, so a weight decay does not move
    them on some ranks only."""
    _create_state(optimizer, model)
    is_root = _core.rank() == root_rank
    message = None
    if is_root:
        tensors: list[torch.Tensor] = []
        tree = _encode(optimizer.state_dict(), tensors, "state_dict")
        message = {"tree": tree, "tensors": [[str(t.dtype).removeprefix("torch."), list(t.shape)] for t in tensors]}
    message = _core.broadcast_object(message, root_rank, name="broadcast_optimizer_state")
    if is_root:
        targets = tensors
    else:
        targets = [torch.empty(shape, dtype=_dtype(name)) for name, shape in message["tensors"]]
    pending = [_broadcast_into(t, root_rank, f"broadcast_optimizer_state.{i}") for i, t in enumerate(targets) if t.numel()]
    for finish in pending:
        finish()
    if not is_root:
        optimizer.load_state_dict(_decode(message["tree"], targets))


def _create_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module | None) -> None:
    """Horovod's step with zero gradients, for an optimizer that has no state yet, without
    moving the parameters. Local: a ``DistributedOptimizer`` steps as its wrapped class, since
    its own step would wait for every rank's gradients."""
    if optimizer.state_dict()["state"] or isinstance(optimizer, torch.optim.LBFGS):  # LBFGS steps only with a closure
        return
    sparse = set()
    if model is not None:
        sparse = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse for p in m.parameters()}
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    for p in params:
        grad = torch.zeros_like(p)
        take_sparse = isinstance(optimizer, torch.optim.SparseAdam) or (isinstance(optimizer, torch.optim.SGD) and id(p) in sparse)
        p.grad = grad.to_sparse() if take_sparse else grad
    if isinstance(optimizer, _DistributedMixin):
        super(_DistributedMixin, optimizer).step()
    else:
        optimizer.step()
    with torch.no_grad():
        for p, before in zip(params, saved):
            p.copy_(before)


def _broadcast_into(tensor: torch.Tensor, root_rank: int, name: str) -> Any:
    """Starts broadcasting into ``tensor``; the returned function waits and copies the result in
    if it travelled through a staging copy."""
    _arrays.refuse_read_only(tensor, "broadcast", name)  # the copy back would write into it
    buf = staged(tensor)
    handle = _core.broadcast_async_(buf, root_rank, name=name)

    def finish() -> None:
        handle.wait()
        if buf is not tensor:
            with torch.no_grad():
                tensor.copy_(buf)

    return finish


def _encode(obj: Any, tensors: list[torch.Tensor], path: str) -> Any:
    """``obj`` as JSON-able values: dicts as ``{"__dict__": [[key, value], ...]}``, tuples as
    ``{"__tuple__": [...]}``, tensors as ``{"__tensor__": index into tensors}``."""
    if isinstance(obj, torch.Tensor):
        tensors.append(obj)
        return {"__tensor__": len(tensors) - 1}
    if isinstance(obj, Mapping):
        return {"__dict__": [[_encode(k, tensors, path), _encode(v, tensors, f"{path}[{k!r}]")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"broadcast_optimizer_state cannot send {path}: a {type(obj).__name__} (it sends tensors, numbers, strings, None, and dicts, lists and tuples of them)")


def _decode(obj: Any, tensors: list[torch.Tensor]) -> Any:
    """The inverse of ``_encode``, with ``tensors`` for the placeholders."""
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__dict__"]}
    return obj


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"the root sent an unknown dtype {name!r}")
    return dtype
