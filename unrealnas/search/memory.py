"""Memory of a search: what a training pass keeps and peaks at, per seed, and how many seeds fit a card.

Two device-independent measures of the fused supernet's training pass (fp32, on the CPU):

- ``retained_bytes``: the bytes a forward leaves alive for its backward (saved activations, stacked
  weights; with ``search.recompute=cell`` the cell inputs that the checkpoints hold);
- ``pass_peak_bytes``: the peak of the process heap (glibc ``mallinfo2``, read after every aten op)
  over a forward and its backward, above the heap at the start: what a card must hold for one
  pass besides the weights and optimizer state (with ``cell``, the kept inputs plus one cell's
  recomputation and the gradients in flight).

Activations are linear in the batch, so ``seed_memory`` measures two small batches of one seed and
extrapolates to the configured batch (SGAS: the batch after its last increase); packed seeds are
S times one seed (every tensor is S seed blocks). ``fit_seeds`` turns that into ``launcher.pack_seeds=auto``.
"""

from __future__ import annotations

import ctypes
import functools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from unrealnas.config.methods import method as method_facts
from unrealnas.nas.supernet import SuperNet

MIB = 2**20
GIB = 2**30
STATE_COPIES = 7  # fp32 copies of the weights an iteration holds: weights, grads, momentum, flat grads, darts2 w0, step, d
MARGIN = 0.10  # of the card kept free (allocator fragmentation, cuDNN workspaces)
RESERVED_GIB = 1.0  # CUDA context and kernels, outside the allocator
MEASURE_BATCHES = (2, 4)  # one seed's pass measured at these batches, extrapolated linearly


class _Allocations(TorchDispatchMode):
    """Weak references to the storage of every tensor an op returns (to see which outlive a forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[StorageWeakRef, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105 - dispatch protocol
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                self.refs.append((StorageWeakRef(st), st.nbytes()))
        return out


def retained_bytes(forward: Callable[[], Any]) -> int:
    """Bytes of the tensors ``forward`` creates that are still alive when it returns (its result held).

    Called on a training forward this is what autograd keeps for the backward, including what
    checkpoints hold (a ``saved_tensors_hooks`` count would miss that: checkpoints hide their
    saves), each storage counted once however many views or saves share it.
    """
    mode = _Allocations()
    with mode:
        result = forward()
    alive = {ref.cdata: n for ref, n in mode.refs if not ref.expired()}
    del result
    return sum(alive.values())


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.cache
def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):  # not glibc >= 2.33
        return None
    fn.restype = _MallInfo2
    return fn


def _heap_in_use() -> int:
    m = _mallinfo2()()  # type: ignore[misc]
    return int(m.uordblks + m.hblkhd)  # small blocks in use + mmapped (large tensors)


class _HeapPeak(TorchDispatchMode):
    """The largest heap in use seen after any aten op (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105 - dispatch protocol
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, _heap_in_use())
        return out


def pass_peak_bytes(training_pass: Callable[[], Any]) -> int | None:
    """Peak CPU heap over ``training_pass`` above the heap at its start; None without glibc's mallinfo2."""
    if _mallinfo2() is None:
        return None
    base = _heap_in_use()
    mode = _HeapPeak()
    with mode:
        training_pass()
    return max(mode.peak - base, 0)


@dataclass(frozen=True)
class SeedMemory:
    """One seed's memory in a search of this config, at the batch it reaches (bytes)."""

    batch: int
    retained: int  # a forward keeps this for backward
    peak: int  # one training pass peaks at this above its start
    state: int  # weights and optimizer state (STATE_COPIES fp32 copies)
    recompute: str

    @property
    def need(self) -> int:
        """Bytes a card must hold per seed: the pass peak and the state."""
        return self.peak + self.state


def peak_batch(s: DictConfig) -> int:
    """The largest batch a search of ``s`` trains on (SGAS grows it after each decision)."""
    batch = int(s.batch_size)
    if method_facts(str(s.method)).sgas:
        g = s.sgas
        decisions = max(0, (int(s.epochs) - int(g.warmup_dec_epoch)) // int(g.decision_freq) + 1)
        batch += int(g.batch_increase) * decisions
    return batch


def seed_memory(s: DictConfig, num_classes: int, channels: int, side: int) -> SeedMemory:
    """One seed's memory for the search config ``s`` (measured on the CPU at two small batches, extrapolated)."""
    key = json.dumps([OmegaConf.to_container(s, resolve=True), num_classes, channels, side], sort_keys=True)
    return SeedMemory(**_seed_memory(key))


@functools.cache
def _seed_memory(key: str) -> dict[str, Any]:
    s, num_classes, channels, side = json.loads(key)
    torch.manual_seed(0)
    pc = method_facts(s.get("method", "darts")).partial_channels  # PC-DARTS: its own, smaller supernet
    net = SuperNet(s["init_channels"], num_classes, s["layers"], s["nodes"], s["stem_multiplier"],
                   in_channels=channels, partial_channels=int(s.get("pc_k", 4)) if pc else None)
    net.recompute = s.get("recompute", "none")
    n_params = sum(p.numel() for p in net.parameters())
    kept, peaks = [], []
    for b in MEASURE_BATCHES:
        g = torch.Generator().manual_seed(b)
        x, y = torch.randn(b, channels, side, side, generator=g), torch.randint(0, num_classes, (b,), generator=g)
        kept.append(retained_bytes(lambda x=x, y=y: net.loss(x, y)))
        peak = pass_peak_bytes(lambda x=x, y=y: torch.autograd.grad(net.loss(x, y), list(net.parameters())))
        # without mallinfo2: twice what the forward keeps (the gradients of as much again in flight)
        peaks.append(peak if peak is not None else 2 * kept[-1])
    b0, b1 = MEASURE_BATCHES
    batch = peak_batch(OmegaConf.create(s))

    def at(v: list[int]) -> int:  # linear in the batch, through the two measures
        return int(v[0] + (v[1] - v[0]) * (batch - b0) / (b1 - b0))

    return {"batch": batch, "retained": at(kept), "peak": max(at(peaks), at(kept)),
            "state": STATE_COPIES * 4 * n_params, "recompute": net.recompute}


def fit_seeds(per_seed: SeedMemory, free_bytes: int, most: int) -> tuple[int, str]:
    """How many seeds (1..``most``) fit ``free_bytes`` of a card with the margin, and the reason in one line."""
    usable = free_bytes * (1.0 - MARGIN) - RESERVED_GIB * GIB
    n = int(usable // per_seed.need) if per_seed.need > 0 else most
    why = (f"{per_seed.need / GIB:.2f} GiB per seed (batch {per_seed.batch}, recompute={per_seed.recompute}: "
           f"pass peak {per_seed.peak / GIB:.2f} GiB + weights and optimizer {per_seed.state / GIB:.2f} GiB) "
           f"in {free_bytes / GIB:.1f} GiB less {MARGIN:.0%} and {RESERVED_GIB:g} GiB reserved")
    return max(0, min(n, most)), why


def describe(per_seed: SeedMemory) -> dict[str, Any]:
    """The measure as a JSON-able record (what a pipeline notes about its choice)."""
    return {**asdict(per_seed), "need": per_seed.need}
