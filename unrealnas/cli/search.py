"""The ``search`` verb: one search, or ``seeds=[...]`` packed in one process, or a sampled cell."""

from __future__ import annotations

from unrealnas.config import compose_config
from unrealnas.config.overrides import split_args
from unrealnas.errors import UserError
from unrealnas.observe import say as _say  # timestamped, on the unrealnas logger


def cmd_search(args: list[str]) -> int:
    """Run (or resume) one architecture search."""
    from unrealnas.search.run import run_search

    positional, overrides = split_args(args)
    if positional:
        raise UserError(f"search takes only key=value overrides, got {' '.join(positional)}")
    cfg = compose_config(overrides)
    if cfg.get("seeds") is not None:
        from unrealnas.search.engine import check_seed_overrides, packed_seeds, run_seeds

        check_seed_overrides(overrides)
        for run_dir in run_seeds(cfg, packed_seeds(cfg) or [], _say):
            print(run_dir)
        return 0
    run_dir = run_search(cfg, progress=_say)
    print(run_dir)
    return 0
