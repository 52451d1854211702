"""``unrealnas search``: one architecture search (DARTS first/second order, SGAS, random cells), or several.

A search is a resumable run directory (:mod:`unrealnas.search.state`): re-running the same command
resumes from its checkpoint, a finished run is a no-op. ``seed=N`` runs one seed; ``seeds=[...]``
runs several packed in one network and process, each in the run directory of its ``seed=N``
(:mod:`unrealnas.search.engine`, which runs every search, one seed or many); ``search=random``
samples cells from the same space without a supernet (:mod:`unrealnas.search.random`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from unrealnas.runtime import apply_threads, threads_of
from unrealnas.search.engine import packed_seeds, run_seeds
from unrealnas.search.random import is_sampled, run_sampled
from unrealnas.search.state import (  # noqa: F401 - the run-directory names every stage imports from here
    CHECKPOINT,
    FAULT_ENV,
    _trim_metrics,
    is_complete,
    resize_images,
    search_run_dir,
    search_run_id,
)


def run_search(cfg: DictConfig, progress: Callable[[str], None] | None = None) -> Path:
    """Run (or resume, or skip if finished) the search ``cfg`` describes; returns its run directory
    (with ``seeds=[...]``: the first seed's)."""
    say = progress or (lambda _m: None)
    apply_threads(threads_of(cfg))  # before any tensor work: the reduction order follows the thread count
    if is_sampled(cfg.search.method):  # the random baseline: no dataset, no supernet
        run_dir = search_run_dir(cfg)
        if is_complete(run_dir):
            say(f"{run_dir}: already completed, nothing to do")
            return run_dir
        return run_sampled(cfg, run_dir, say)
    seeds = packed_seeds(cfg)
    return run_seeds(cfg, seeds if seeds is not None else [int(cfg.seed)], say)[0]
