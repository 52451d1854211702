"""``launcher.pack_seeds``: the seeds of one (method, dataset, classes) search cell as packed tasks.

A packed task runs ``unrealnas search 'seeds=[a,b,...]'`` (:mod:`unrealnas.search.engine`): one
process and one seed-stacked network for up to ``pack_seeds`` seeds, writing the same run
directories as the per-seed tasks would (so status and tables still see one run per seed).

Default (``launcher.pack_seeds=null``): 5 where the search jobs get a GPU, 1 on CPU. On a GPU an
iteration is launch-bound, so S packed seeds cost about one seed's kernel launches (the 5 seeds of
a paper cell in about the time of one); on a CPU the work is compute-bound, packing saves nothing
and a pack would hold S seeds in one process that ``launcher.local_workers`` could run in parallel.
Second-order DARTS and the random baseline are never packed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from unrealnas.config.methods import method as method_facts
from unrealnas.errors import ConfigError
from unrealnas.launch.task import Task

GPU_PACK = 5


def resolve_pack_seeds(cfg: DictConfig, launcher: DictConfig | None = None) -> int:
    """Seeds per search task: ``launcher.pack_seeds``, or the per-device default (see the module docstring)."""
    launcher = launcher if launcher is not None else cfg.launcher
    value = launcher.get("pack_seeds")
    if value is not None:
        if int(value) < 1:
            raise ConfigError(f"launcher.pack_seeds={value}: give 1 (no packing) or more seeds per search task")
        return int(value)
    device = str(cfg.device)
    if device == "cpu":
        return 1
    if device.startswith("cuda"):
        return GPU_PACK
    if str(launcher.name) == "slurm":
        return GPU_PACK if int(launcher.gpus_per_node) >= 1 else 1
    import torch

    return GPU_PACK if torch.cuda.is_available() else 1


def pack_search_tasks(cell_overrides: Sequence[str], seeds: Sequence[int], run_dirs: Sequence[Path], group: str,
                      pack: int, method: str) -> list[Task]:
    """The search tasks of one cell: chunks of ``pack`` seeds (``seeds=[...]``), single seeds as ``seed=N``."""
    if not method_facts(method).packable:  # a sampled cell has no iterations to share
        pack = 1
    tasks = []
    for i in range(0, len(seeds), pack):
        chunk, dirs = list(seeds[i:i + pack]), list(run_dirs[i:i + pack])
        if len(chunk) == 1:
            tasks.append(Task("search", [*cell_overrides, f"seed={chunk[0]}"], run_dir=dirs[0], stage="search",
                              group=group))
        else:
            tasks.append(Task("search", [*cell_overrides, f"seeds=[{','.join(str(s) for s in chunk)}]"],
                              run_dir=dirs[0], more_run_dirs=tuple(dirs[1:]), stage="search", group=group))
    return tasks
