"""Replay a training iteration as one CUDA graph: capture once per key, then one launch per step.

A step of these small-kernel networks is launch-bound on a GPU; capturing the whole step (forward,
backward, clipping, optimizer) and replaying it removes the per-kernel launch cost. The captured
function is the same one the eager path calls; this module only adds static input buffers, the
eager warm-up (real steps, on a side stream, as ``torch.cuda.graph`` requires), the capture and
the replay. The caller guarantees what capture needs: no host sync inside the step, fixed shapes
per key, Adam with ``capturable=True``. A new key recaptures (the old graph is released first).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch

WARMUP_ITERATIONS = 2  # eager iterations (real steps, on a side stream) before each capture


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
