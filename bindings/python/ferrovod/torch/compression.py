"""Gradient compression: what a tensor is turned into for the wire, and back.

A compressor is an object with ``compress(tensor) -> (tensor, ctx)`` and
``decompress(tensor, ctx) -> tensor``; ``ctx`` is whatever ``decompress`` needs to undo
``compress``. Reductions run on the compressed tensor, so a compressor must be one that sums
meaningfully (a cast does; a sparsifier would not).
"""

from __future__ import annotations

from typing import Any

import torch


class Compressor:
    """The interface, and the identity: the tensor travels as it is."""

    @staticmethod
    def compress(tensor: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return tensor, None

    @staticmethod
    def decompress(tensor: torch.Tensor, ctx: Any) -> torch.Tensor:
        return tensor


class NoneCompressor(Compressor):
    """No compression."""


class FP16Compressor(Compressor):
    """Floating tensors travel as float16 (half the bytes of float32) and come back in their own
    dtype; other tensors travel as they are. A float16 tensor is returned unchanged, so in-place
    collectives on it stay in place."""

    @staticmethod
    def compress(tensor: torch.Tensor) -> tuple[torch.Tensor, Any]:
        if not tensor.dtype.is_floating_point:
            return tensor, None
        return tensor.to(torch.float16), tensor.dtype

    @staticmethod
    def decompress(tensor: torch.Tensor, ctx: Any) -> torch.Tensor:
        return tensor if ctx is None else tensor.to(ctx)


class Compression:
    """The compressors by name: ``Compression.none``, ``Compression.fp16``."""

    none = NoneCompressor
    fp16 = FP16Compressor
