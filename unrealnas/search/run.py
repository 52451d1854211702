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

from unrealnas.config.methods import method as method_facts
from unrealnas.rundir import is_complete
from unrealnas.runtime import apply_threads, threads_of
from unrealnas.search.engine import packed_seeds, run_seeds
from unrealnas.search.random import is_sampled, run_sampled
from unrealnas.search.state import search_run_dir


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
    return run_search_seeds(cfg, seeds if seeds is not None else [int(cfg.seed)], say)[0]


def run_search_seeds(cfg: DictConfig, seeds: list[int], say: Callable[[str], None]) -> list[Path]:
    """The searches of ``seeds``: packed in one network by the engine, or RLNAS's seeds one after another."""
    if method_facts(cfg.search.method).single_path:  # RLNAS: its own two phases (search/rlnas.py says why)
        from unrealnas.search.rlnas import run_rlnas

        return run_rlnas(cfg, seeds, say)
    return run_seeds(cfg, seeds, say)
