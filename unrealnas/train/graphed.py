"""``train.cuda_graph``: the retraining step (forward, backward, clip, SGD) replayed as one CUDA graph.

The step is captured once per (epoch, batch shape): the learning rate and the drop-path
probability are constants within an epoch, so a new epoch recaptures (two eager warm-up steps
and a capture, about three steps' cost, against ~260 replays of a paper epoch). The capture is
:class:`unrealnas.cuda_graph.GraphedStep` around the loop's own ``train_step``. Drop-path masks
are drawn by the CUDA generator inside the graph (torch.cuda.graph advances its offset per
replay): seeded per epoch as the eager loop is, but not the same masks as eager, so the capture's
self-check (graph replay vs eager, :mod:`unrealnas.cuda_graph`) runs only with train.drop_path=0;
with drop path the capture is only guarded (a failure falls back to eager with one line).

Not captured (auto falls back to eager, ``on`` refuses): CPU, Adam (its step count would need
``capturable``), fp16 (the grad scaler syncs with the host), DDP (the all-reduce hooks). Unmeasured:
no GPU was available when this was written; ``tools/gpu_check.py`` runs it.
"""

from __future__ import annotations

import torch

from unrealnas.config.schema import Switch
from unrealnas.errors import ConfigError


def train_cuda_graph_off(setting: str, device: torch.device, optimizer: str, amp: str | None,
                         distributed: bool) -> str | None:
    """Why ``train.cuda_graph`` does not capture (for result.json), or None when it does.

    ``on`` with a blocker and an unknown value raise :class:`ConfigError`.
    """
    if setting not in tuple(Switch):  # the schema's choices (a bench passes plain strings)
        raise ConfigError(f"train.cuda_graph={setting!r} is invalid: choose one of {', '.join(Switch)}")
    blockers = [why for bad, why in ((device.type != "cuda", f"a CUDA device (this run is on {device})"),
                                     (optimizer != "sgd", "train.optimizer=sgd"),
                                     (amp == "fp16", "train.amp other than fp16"),
                                     (distributed, "a single process (no DDP)")) if bad]
    if setting == "on" and blockers:
        raise ConfigError(f"train.cuda_graph=on needs {blockers[0]}; use auto or off")
    if setting == "off":
        return "train.cuda_graph=off"
    return f"train.cuda_graph=auto: capturing needs {blockers[0]}" if blockers else None


def use_train_cuda_graph(setting: str, device: torch.device, optimizer: str, amp: str | None,
                         distributed: bool) -> bool:
    """Whether ``train.cuda_graph`` captures the step: auto = on CUDA when nothing above rules it out."""
    return train_cuda_graph_off(setting, device, optimizer, amp, distributed) is None
