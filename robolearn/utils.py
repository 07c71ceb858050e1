"""Small shared utilities: device selection, seeding, progress bars, a side process."""

from __future__ import annotations

import multiprocessing
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
from tqdm.auto import tqdm


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` picks CUDA when present, else CPU; other values are checked and returned."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not index.isdigit()):
        raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA is not available on this machine")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise ValueError(f"this machine has {torch.cuda.device_count()} CUDA devices")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError("MPS is not available on this machine")
    return device


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, numpy and torch; return a numpy Generator for the caller's own sampling."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party code draws from the global RNG
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def progress_bar(total: int, desc: str, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar that redraws rarely when stderr is a log file rather than a terminal."""
    interval = 0.1 if sys.stderr.isatty() else 15.0
    return tqdm(
        total=total,
        desc=desc,
        disable=not enabled,
        leave=False,
        mininterval=interval,
        dynamic_ncols=True,
        **kwargs,
    )


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def side_process() -> ProcessPoolExecutor:
    """One worker process (spawned, with this process's torch thread count) for work that can
    run beside a training loop, such as evaluating a snapshot of the weights.

    Python threads barely overlap loops of small torch ops, which hold the GIL between kernels;
    a process gets a core of its own. Its functions must be importable and their arguments and
    results picklable. As with any spawned process, a script that starts one needs an
    ``if __name__ == "__main__":`` guard.
    """
    import torch

    return ProcessPoolExecutor(
        1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_set_torch_threads,
        initargs=(torch.get_num_threads(),),
    )
