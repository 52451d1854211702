"""The ``bench`` verb: ``bench data|search|retrain|aggregate`` with the benchmark's own options."""

from __future__ import annotations

from unrealnas.config.overrides import split_args
from unrealnas.errors import UserError


def cmd_bench(args: list[str]) -> int:
    """Run a benchmark: ``bench data|search|retrain|aggregate``."""
    positional, overrides = split_args(args)
    what = positional[0] if positional else "data"
    if what == "data":
        from unrealnas.benchmarks.data import main as bench_main
    elif what == "search":
        from unrealnas.benchmarks.search import main as bench_main
    elif what == "aggregate":
        from unrealnas.benchmarks.aggregate import main as bench_main
    elif what == "retrain":
        from unrealnas.benchmarks.retrain import main as bench_main
    else:
        raise UserError(f"unknown benchmark {what!r}; choose data, search, retrain or aggregate")
    return bench_main(overrides)
