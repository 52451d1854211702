"""``launcher.pack_seeds``: the seeds of one (method, dataset, classes) search cell as packed tasks.

A packed task runs ``unrealnas search 'seeds=[a,b,...]'`` (:mod:`unrealnas.search.engine`): one
process and one seed-stacked network for up to ``pack_seeds`` seeds, writing the same run
directories as the per-seed tasks would (so status and tables still see one run per seed).

Default (``launcher.pack_seeds=null``): 5 where the search jobs get a GPU, 1 on CPU. On a GPU an
iteration is launch-bound, so S packed seeds cost about one seed's kernel launches (the 5 seeds of
a paper cell in about the time of one); on a CPU the work is compute-bound, packing saves nothing
and a pack would hold S seeds in one process that ``launcher.local_workers`` could run in parallel.
The random baseline is never packed.

``launcher.pack_seeds=auto`` sizes the pack by memory: one seed's need at the configured search
(``unrealnas.search.memory.seed_memory``: the pass peak and the optimizer state, measured on the
CPU and extrapolated to the batch) against the card's memory (``launcher.gpu_mem_gb``, or the free
memory of the GPU visible here), less a margin; on CPU it is 1 as the default. Where the card's
memory is known, an explicit pack that does not fit is refused in one line with the memory it needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from unrealnas.config.methods import method as method_facts
from unrealnas.errors import ConfigError
from unrealnas.launch.task import Task

if TYPE_CHECKING:
    from unrealnas.search.memory import SeedMemory

GPU_PACK = 5


def resolve_pack_seeds(cfg: DictConfig, launcher: DictConfig | None = None) -> int:
    """Seeds per search task: ``launcher.pack_seeds``, or the per-device default (see the module docstring)."""
    return pack_seeds_choice(cfg, launcher)[0]


def pack_seeds_choice(cfg: DictConfig, launcher: DictConfig | None = None) -> tuple[int, str]:
    """Seeds per search task and why, in one line (see the module docstring)."""
    launcher = launcher if launcher is not None else cfg.launcher
    value = launcher.get("pack_seeds")
    if value is None:
        n = _default_pack(cfg, launcher)
        return n, f"launcher.pack_seeds=null: {n} ({'a GPU' if n > 1 else 'CPU'} default)"
    if str(value) == "auto":
        if _default_pack(cfg, launcher) == 1:
            return 1, "launcher.pack_seeds=auto: 1 on CPU (compute-bound: packing saves nothing)"
        from unrealnas.search.memory import fit_seeds  # torch and the model: only when sizing a pack

        free = _card_bytes(launcher, required=True)
        per_seed = seed_memory_of(cfg)
        n, why = fit_seeds(per_seed, free, AUTO_MOST)
        if n < 1:
            raise ConfigError(f"launcher.pack_seeds=auto: one seed needs {why}; use search.recompute=cell "
                              "or a smaller search.batch_size, or a larger card")
        return n, f"launcher.pack_seeds=auto: {n} seeds, {why}"
    try:
        n = int(str(value))
    except ValueError:
        raise ConfigError(f"launcher.pack_seeds={value}: give auto, null or a seed count (1 = no packing)") from None
    if n < 1:
        raise ConfigError(f"launcher.pack_seeds={value}: give 1 (no packing) or more seeds per search task")
    free = _card_bytes(launcher, required=False) if n > 1 and _default_pack(cfg, launcher) > 1 else None
    if free is not None:  # the card is known: refuse a pack that cannot fit now, not in a queued job
        from unrealnas.search.memory import fit_seeds

        per_seed = seed_memory_of(cfg)
        fits, why = fit_seeds(per_seed, free, n)
        if fits < n:
            raise ConfigError(f"launcher.pack_seeds={n} needs {n} x {per_seed.need / 2**30:.2f} GiB: {why}; "
                              f"use launcher.pack_seeds=auto (fits {fits}) or search.recompute=cell")
    return n, f"launcher.pack_seeds={n}"


AUTO_MOST = 16  # auto never packs more (the op count per seed has long stopped falling by then)


def seed_memory_of(cfg: DictConfig) -> SeedMemory:
    """One seed's memory in the search of ``cfg`` (``unrealnas.search.memory.seed_memory``)."""
    from unrealnas.search.memory import seed_memory

    side = int(cfg.search.resolution or cfg.data.resolution)
    return seed_memory(cfg.search, int(cfg.data.num_classes), int(cfg.data.channels), side)


def _card_bytes(launcher: DictConfig, required: bool) -> int | None:
    # launcher.gpu_mem_gb, else the free memory of the GPU this process sees
    gb = launcher.get("gpu_mem_gb")
    if gb is not None:
        if float(gb) <= 0:
            raise ConfigError(f"launcher.gpu_mem_gb={gb}: give the search card's memory in GB, e.g. 80")
        return int(float(gb) * 1e9)
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.mem_get_info()[0])
    if required:
        raise ConfigError("launcher.pack_seeds=auto: no GPU visible here to size the pack; set "
                          "launcher.gpu_mem_gb=<GB of the search jobs' card> (e.g. 80) or a seed count")
    return None


def _default_pack(cfg: DictConfig, launcher: DictConfig) -> int:
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
