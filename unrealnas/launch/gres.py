"""Check that every array's GPU request fits its partition (``sinfo`` GRES) before anything is submitted.

sbatch rejects an array whose ``--gpus-per-node`` the partition cannot satisfy ("Invalid generic
resource"); by then the earlier stages of a pipeline would already be queued. Checking every
stage first means a request that cannot fit is one line and nothing is half-submitted.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from typing import Any

from unrealnas.errors import UserError


def gpus_in_gres(gres: str) -> int:
    """GPUs one node offers from its sinfo GRES string (``gpu:a100:4(S:0-1),gpu:v100:2`` -> 6)."""
    total = 0
    for item in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = item.strip().split(":")
        if parts[0] == "gpu" and len(parts) > 1 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def partition_gpus(partition: str | None) -> tuple[str, int] | None:
    """``(partition, most GPUs on one of its nodes)``; the default partition when None; None if sinfo cannot tell."""
    cmd = ["sinfo", "--noheader", "--format=%P|%G", *(["--partition", partition] if partition else [])]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows = [ln.split("|", 1) for ln in proc.stdout.splitlines() if "|" in ln]
    if proc.returncode != 0 or not rows:
        return None
    if partition is None:
        rows = [r for r in rows if r[0].endswith("*")]  # sinfo marks the default partition with *
        if not rows:
            return None
    name = rows[0][0].rstrip("*")
    return name, max(gpus_in_gres(gres) for _, gres in rows)


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def check_gpu_requests(arrays: Sequence[tuple[str, Any]]) -> None:
    """UserError naming launcher.gpus_per_node for the first SLURM array whose partition lacks the GPUs."""
    seen: dict[str | None, tuple[str, int] | None] = {}
    for name, launcher in arrays:
        gpus = int(_get(launcher, "gpus_per_node", 0) or 0)
        if str(_get(launcher, "name", "local")) != "slurm" or gpus <= 0:
            continue
        partition = _get(launcher, "partition")
        partition = None if partition is None else str(partition)
        if partition not in seen:
            seen[partition] = partition_gpus(partition)
        info = seen[partition]
        if info is None:  # sinfo cannot tell: sbatch will judge the request itself
            continue
        where, have = info
        if gpus > have:
            offer = f"{have} GPU(s) per node" if have else "no GPUs (GRES)"
            raise UserError(f"array {name!r}: launcher.gpus_per_node={gpus} but partition {where} has {offer}; "
                            f"set launcher.gpus_per_node={have} or a GPU partition with launcher.partition "
                            "(nothing was submitted)")
