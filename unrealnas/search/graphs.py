"""CUDA-graph replay of a whole search iteration (``search.cuda_graph``): capture once, replay per batch.

A search iteration on a GPU is launch-bound (thousands of small kernels), so the packed engine's
iteration (architecture step, weight step, clipping, both optimizer steps) is captured into one
CUDA graph and replayed: one launch per iteration. The captured function is the very same one the
eager path calls (``PackedSearch.iteration``); this module only adds static input buffers, the
warm-up, the capture and the replay. What must hold for that (and does in the packed engine):
no host sync inside the iteration, the learning rate a device tensor (filled outside the graph),
Adam with ``capturable=True``, fixed shapes. A new ``key`` (warm-up vs search phase, batch size,
SGAS decisions) recaptures; the previous graph is released first.

The capture is guarded and self-checked (:mod:`unrealnas.cuda_graph`): a failed capture or a
replay that differs from eager falls back to eager with one line (``on``: an error). Unmeasured: no
GPU was available when this was written; ``tests/gpu/test_gpu.py`` (run by ``tools/gpu_check.sh``)
compares graph and eager searches on the first GPU run.
"""

from __future__ import annotations

import torch

from unrealnas.config.methods import method as method_facts
from unrealnas.config.schema import Switch
from unrealnas.cuda_graph import GraphedStep
from unrealnas.errors import ConfigError

__all__ = ["GraphedStep", "graph_off_reason", "use_cuda_graph"]


def use_cuda_graph(setting: str, device: torch.device, method: str) -> bool:
    """Whether ``search.cuda_graph`` turns graph replay on: auto = on CUDA for first-order methods."""
    if setting not in tuple(Switch):  # the schema's choices (a bench passes plain strings)
        raise ConfigError(f"search.cuda_graph={setting!r} is invalid: choose one of {', '.join(Switch)}")
    if setting == "on" and device.type != "cuda":
        raise ConfigError(f"search.cuda_graph=on needs a CUDA device, this run is on {device}; use auto or off")
    if setting == "on" and not method_facts(method).graphable:
        raise ConfigError(f"search.cuda_graph=on does not capture second-order DARTS ({method}); use auto or off for it")
    return graph_off_reason(setting, device, method) is None


def graph_off_reason(setting: str, device: torch.device, method: str) -> str | None:
    """Why a search runs eagerly (result.json's ``cuda_graph.reason``), or None when it replays a graph."""
    if setting == "off":
        return "search.cuda_graph=off"
    if device.type != "cuda":
        return f"no CUDA device ({device})"
    if not method_facts(method).graphable:
        return f"{method}: second-order DARTS is not captured"
    return None
