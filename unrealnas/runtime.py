"""Device, precision and run-provenance helpers shared by search and retraining."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from unrealnas.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unavailable CUDA request is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is available here; use device=cpu or device=auto")
    return torch.device(name)


def autocast_dtype(device: torch.device, amp: str | None) -> str | None:
    """A run's ``amp`` setting resolved for ``device``: "bf16" / "fp16", or None (fp32); auto = bf16 on CUDA."""
    if amp in ("bf16", "fp16"):
        return amp
    return "bf16" if amp == "auto" and device.type == "cuda" else None


def autocast(device: torch.device, dtype: str | None, cache: bool = True) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved dtype (:func:`autocast_dtype`); a no-op context for fp32.

    ``cache=False`` for a step captured as a CUDA graph: autocast's weight cache must not outlive the
    capture (torch.cuda.graph docs)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16, cache_enabled=cache)


def allow_tf32(device: torch.device) -> None:
    """On CUDA, let fp32 matmuls and convolutions use TF32 tensor cores (fp32 storage, 10-bit mantissa products)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def precision_name(device: torch.device, autocast_dtype: str | None) -> str:
    """The precision that runs: ``bf16-autocast`` / ``fp16-autocast``, else ``fp32`` (``fp32+tf32`` when CUDA allows TF32)."""
    if autocast_dtype in ("bf16", "fp16"):
        return f"{autocast_dtype}-autocast"
    if device.type == "cuda" and (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32):
        return "fp32+tf32"
    return "fp32"


def use_channels_last(device: torch.device, setting: str) -> bool:
    """Whether to run convolutions in channels_last memory format (NHWC kernels on GPUs)."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def apply_threads(threads: int) -> int:
    """Fix torch's intra-op thread count (``runtime.threads``; 0 keeps the launcher's); return the count in use."""
    if threads < 0:
        raise ConfigError(f"config: runtime.threads={threads} is invalid: use 1 or more (0 = follow the launcher)")
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def threads_of(cfg: Any) -> int:
    """``cfg.runtime.threads`` (1 where a config predates the key)."""
    runtime = cfg.get("runtime") if hasattr(cfg, "get") else None
    return 1 if runtime is None else int(runtime.get("threads", 1))


def git_sha() -> str | None:
    """The code version: the git commit of the package's checkout, if it is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(precision: str | None = None) -> dict:
    """What a run directory records about how it was made: command, code version, SLURM ids, precision, threads."""
    slurm = {k: os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                                       "SLURM_RESTART_COUNT", "SLURM_JOB_NODELIST") if k in os.environ}
    return {"command": shlex.join(sys.argv), "git_sha": git_sha(), "slurm": slurm or None,
            "torch": torch.__version__, "host": os.uname().nodename, "precision": precision,
            "threads": torch.get_num_threads()}
