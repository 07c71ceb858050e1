"""Replay a function of fixed-shape CUDA tensors as one captured CUDA graph.

Stepping 1000 quadrotors or updating a small SAC agent is a few hundred tiny kernels per call. On
a GPU, launching them costs far more than running them: the shared RAPTOR teacher kept an H100
15% busy, its one CPU core launching kernels. A captured graph launches them all at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class GraphedFunction:
    """``fn(*args)``, captured as a CUDA graph per input signature and replayed after that.

    The first call with a new signature (the shapes, dtypes and devices of ``args``, ``None``
    allowed) runs ``fn`` eagerly on a side stream: the warm-up that capture needs, so that lazy
    state (optimizer moments, cuBLAS workspaces) exists. The second captures ``fn`` on copies of
    its inputs; that call and every later one copies the inputs in, replays the graph and returns
    clones of its outputs, so a caller may keep what it gets.

    ``fn`` must only launch kernels: no host synchronisation (``.item()``, ``bool(tensor)``, data
    dependent shapes) and no CPU tensors. Tensors it reads other than its arguments (weights,
    cached constants) are captured by address, and Python values it reads (flags, sizes) by
    value: update tensors in place, or call :meth:`reset` after replacing them or changing such
    a value. Random draws from the default CUDA generator differ on every replay.
    Off CUDA, calls run ``fn`` eagerly.

    Args:
        fn: Takes tensors (or ``None``), returns a tensor or a tuple or dict of tensors.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.reset()

    def reset(self) -> None:
        """Forget every captured graph (the next calls warm up and capture again)."""
        self._warm: set[tuple] = set()
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, tuple, Any]] = {}

    def __call__(self, *args: torch.Tensor | None) -> Any:
        if not any(a is not None and a.is_cuda for a in args):
            return self.fn(*args)
        key = tuple(None if a is None else (a.shape, a.dtype, a.device) for a in args)
        if key not in self._graphs:
            if key not in self._warm:
                self._warm.add(key)
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    outputs = self.fn(*args)
                torch.cuda.current_stream().wait_stream(side)
                return outputs
            inputs = tuple(None if a is None else a.clone() for a in args)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outputs = self.fn(*inputs)
            self._graphs[key] = (graph, inputs, outputs)
        graph, inputs, outputs = self._graphs[key]
        for static, a in zip(inputs, args):
            if static is not None:
                static.copy_(a)
        graph.replay()
        return _clone(outputs)


def _clone(outputs: Any) -> Any:
    if isinstance(outputs, torch.Tensor):
        return outputs.clone()
    if isinstance(outputs, dict):
        return {k: v.clone() for k, v in outputs.items()}
    return tuple(v.clone() for v in outputs)
