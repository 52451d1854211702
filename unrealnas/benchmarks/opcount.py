"""Count the aten ops a piece of code dispatches: the device-independent cost of a training step.

Every dispatched op is at least one kernel launch plus Python and dispatcher overhead on a GPU,
so the count bounds the launch-bound time of a step on any device and can be measured on a CPU.
``TorchDispatchMode`` sees the ops below autograd, so the backward pass is counted too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

# Ops that only describe a tensor (no kernel on any device); counted separately, not as launches.
_METADATA_OPS = frozenset({
    "aten.detach.default", "aten.view.default", "aten._unsafe_view.default", "aten.t.default",
    "aten.expand.default", "aten.alias.default", "aten.as_strided.default", "aten.unsqueeze.default",
    "aten.squeeze.dim", "aten.squeeze.dims", "aten.permute.default", "aten.transpose.int",
    "aten.slice.Tensor", "aten.select.int", "aten.unbind.int", "aten.split.Tensor",
    "aten.split_with_sizes.default", "aten.chunk.default", "aten.reshape.default",
    "aten.lift_fresh.default", "aten.empty_like.default",
})


class OpCounter(TorchDispatchMode):
    """A dispatch mode that counts every aten op by name; ``total`` is the number dispatched."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105 - torch protocol
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        """All dispatched aten ops."""
        return sum(self.counts.values())

    @property
    def metadata(self) -> int:
        """Dispatched ops that only make views or aliases (no kernel launch on a GPU)."""
        return sum(n for name, n in self.counts.items() if name in _METADATA_OPS)


def count_ops(fn: Callable[[], Any]) -> OpCounter:
    """Run ``fn()`` once under an ``OpCounter`` and return the counter."""
    counter = OpCounter()
    with counter:
        fn()
    return counter


def ops_per_call(fn: Callable[[], Any], warmup: int = 1) -> int:
    """Aten ops one call of ``fn`` dispatches, after ``warmup`` uncounted calls (lazy state built)."""
    for _ in range(warmup):
        fn()
    return count_ops(fn).total
