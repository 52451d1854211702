"""CUDA-graph replay of a whole search iteration (``search.cuda_graph``): capture once, replay per batch.

A search iteration on a GPU is launch-bound (thousands of small kernels), so the packed engine's
iteration (architecture step, weight step, clipping, both optimizer steps) is captured into one
CUDA graph and replayed: one launch per iteration. The captured function is the very same one the
eager path calls (``PackedSearch.iteration``); this module only adds static input buffers, the
warm-up, the capture and the replay. What must hold for that (and does in the packed engine):
no host sync inside the iteration, the learning rate a device tensor (filled outside the graph),
Adam with ``capturable=True``, fixed shapes. A new ``key`` (warm-up vs search phase, batch size,
SGAS decisions) recaptures; the previous graph is released first.

Unmeasured: no GPU was available when this was written; ``tools/gpu_check.py`` compares graph
and eager alphas after 20 iterations (1e-4) on the first GPU run.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch

from unrealnas.errors import ConfigError

CUDA_GRAPH_SETTINGS = ("auto", "on", "off")
WARMUP_ITERATIONS = 2  # eager iterations (real steps, on a side stream) before each capture


def use_cuda_graph(setting: str, device: torch.device, method: str) -> bool:
    """Whether ``search.cuda_graph`` turns graph replay on: auto = on CUDA for first-order methods."""
    if setting not in CUDA_GRAPH_SETTINGS:
        raise ConfigError(f"search.cuda_graph={setting!r}: choose auto, on or off")
    if setting == "on" and device.type != "cuda":
        raise ConfigError(f"search.cuda_graph=on needs a CUDA device, this run is on {device}; use auto or off")
    if setting == "on" and method == "darts2":
        raise ConfigError("search.cuda_graph=on does not capture second-order DARTS; use auto or off for darts2")
    return device.type == "cuda" and method != "darts2" and setting != "off"


class GraphedStep:
    """``step(*tensors)`` eagerly for the first iterations of each key, then as a replayed CUDA graph."""

    def __init__(self, fn: Callable[..., Sequence[torch.Tensor]], warmup: int = WARMUP_ITERATIONS) -> None:
        self.fn, self.warmup = fn, warmup
        self.key: Hashable | None = None
        self.seen = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: list[torch.Tensor | None] = []
        self.outputs: Sequence[torch.Tensor] = ()
        self.captures = 0

    def __call__(self, key: Hashable, *args: torch.Tensor | None) -> Sequence[torch.Tensor]:
        """Run one iteration on ``args`` (None entries allowed: part of the key)."""
        if key != self.key:
            self.key, self.seen, self.graph, self.inputs, self.outputs = key, 0, None, [], ()
        if self.graph is None and self.seen < self.warmup:
            self.seen += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self.fn(*args)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self.graph is None:
            self.inputs = [None if a is None else a.clone() for a in args]
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.outputs = self.fn(*self.inputs)
            self.captures += 1
        else:
            for buf, a in zip(self.inputs, args, strict=True):
                if buf is not None and a is not None:
                    buf.copy_(a)
        # capturing records the kernels without running them: the first replay runs this iteration
        self.graph.replay()
        return self.outputs
