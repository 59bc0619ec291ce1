"""The models of ``inference_bench.py``: MLPs with random weights in an ``.npz`` file (read with
``allow_pickle=False``), loaded by a ``make_predict_fn`` that Spark's ``predict_batch_udf`` and
ferrovod's both take. Each load appends a line to ``loads``; each model call appends its row
count and its seconds to ``sizes`` (a few bytes per call)."""

from __future__ import annotations

import os
import time

import numpy as np


def write_model(path: str, widths: list[int], seed: int = 0) -> int:
    """Random float32 weights for an MLP of these widths; returns the file's size in bytes."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        arrays[f"w{i}"] = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        arrays[f"b{i}"] = np.zeros(b, np.float32)
    np.savez(path, **arrays)
    return os.path.getsize(path)


def make_mlp(path: str, threads: int, loads: str, sizes: str):
    import torch

    torch.set_num_threads(threads)
    with np.load(path, allow_pickle=False) as f:
        layers = [(torch.from_numpy(f[f"w{i}"]), torch.from_numpy(f[f"b{i}"])) for i in range(len(f.files) // 2)]
    with open(loads, "a") as out:
        out.write(f"{os.getpid()}\n")
    sizes_file = open(sizes, "a", buffering=1)  # noqa: SIM115 (open for the model's life)

    def predict(x: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        with torch.no_grad():
            h = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            for i, (w, b) in enumerate(layers):
                h = h @ w + b
                if i < len(layers) - 1:
                    h = torch.relu(h)
            out = h.numpy()
        sizes_file.write(f"{len(x)} {time.perf_counter() - start:.6f}\n")
        return out

    return predict
