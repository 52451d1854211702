"""``search=random``: the random-architecture baseline as an ordinary search run directory.

No data and no training: the genotype is sampled uniformly from the DARTS space with the run's
seed (:func:`unrealnas.nas.genotype.sample_genotype`, on a seed stream of its own), and the run
directory holds what a finished search holds (``config.yaml``, ``provenance.json``,
``genotype.json``, ``genotype.png``, ``result.json``), so retrains, tables and figures treat it like
any searched cell. result.json has no search data, label or class count (``null``, shown as "-",
like a published genotype) and zero search cost.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from unrealnas.atomic import write_bytes_atomic, write_json_atomic
from unrealnas.config.compose import to_yaml
from unrealnas.config.methods import SAMPLED_METHODS
from unrealnas.nas.genotype import RANDOM_SEARCH_STREAM, count_skips, sample_genotype
from unrealnas.rundir import CONFIG_FILE, GENOTYPE_FILE, PROVENANCE_FILE, RESULT_FILE
from unrealnas.runtime import provenance


def is_sampled(method: str) -> bool:
    """True for a method that samples its cell (no dataset to generate, one run per seed)."""
    return str(method) in SAMPLED_METHODS


def sampled_run_id(cfg: DictConfig) -> str:
    """``random-s<seed>-<hash>``: only the seed and the cell size decide the cell, not the dataset."""
    key = json.dumps([cfg.search.method, int(cfg.search.nodes), int(cfg.seed), RANDOM_SEARCH_STREAM])
    return f"{cfg.search.method}-s{int(cfg.seed)}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def run_sampled(cfg: DictConfig, run_dir: Path, progress: Callable[[str], None]) -> Path:
    """Sample the cell of ``cfg.seed`` and write the finished search run directory."""
    from unrealnas.nas.draw import draw_genotype

    started = time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(run_dir / CONFIG_FILE, to_yaml(cfg).encode())
    write_json_atomic(run_dir / PROVENANCE_FILE, provenance())
    genotype = sample_genotype(int(cfg.seed), nodes=int(cfg.search.nodes), stream=RANDOM_SEARCH_STREAM)
    genotype.save(run_dir / GENOTYPE_FILE)
    try:
        draw_genotype(genotype, run_dir / "genotype.png")
    except Exception as e:  # a drawing failure must not lose the run
        progress(f"warning: could not draw the genotype ({e})")
    skip_normal, skip_reduce = count_skips(genotype)
    result = {
        "kind": "search", "status": "completed", "method": str(cfg.search.method), "search_data": None,
        "search_label": None, "num_classes": None, "seed": int(cfg.seed), "target": None, "dataset": None,
        "preset": cfg.preset, "metrics": {"skip_normal": skip_normal, "skip_reduce": skip_reduce, "arch_steps": 0},
        "params_m": None, "gpu_hours": 0.0, "cpu_hours": 0.0, "wall_s": time.time() - started, "compute_s": 0.0,
        "epochs": 0, "genotype": GENOTYPE_FILE, "genotype_json": genotype.to_json(),
        "sampler": {"stream": RANDOM_SEARCH_STREAM, "nodes": int(cfg.search.nodes)},
    }
    write_json_atomic(run_dir / RESULT_FILE, result)  # last: it marks the run complete
    progress(f"{run_dir}: random cell sampled; genotype {json.dumps(genotype.to_json())}")
    return run_dir
