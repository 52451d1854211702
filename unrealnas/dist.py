"""The one place that reads SLURM / torchrun environments and initialises torch.distributed.

The same entry point runs everywhere: under ``srun`` (one task per GPU, any number of nodes),
under ``torchrun``, under submitit (which sets the SLURM variables), or as a single process.
Rank, world size and local rank come from, in this order:

1. torchrun: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``;
2. an srun step: ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` (or ``SLURM_NTASKS``),
   ``SLURM_LOCALID``; master address = first host of ``SLURM_STEP_NODELIST`` /
   ``SLURM_JOB_NODELIST``; port = ``MASTER_PORT`` or 15000 + job id mod 20000, so concurrent
   jobs sharing a node do not collide. Only a real step counts (``SLURM_STEP_ID`` set and not
   the batch script), so ``unrealnas retrain`` typed in an sbatch script without srun runs
   as one process instead of waiting for ranks that never start;
3. otherwise a single process.

``UNREALNAS_DIST=off`` forces a single process. The backend is NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist

from unrealnas.errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"  # single | torchrun | slurm

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the rank that writes files)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM host list such as ``gpu[01-03,07],login1`` into host names."""
    hosts: list[str] = []
    # Split on commas that are not inside brackets.
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", nodelist):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(","):
            if "-" in r:
                lo, hi = r.split("-", 1)
                hosts += [f"{prefix}{i:0{len(lo)}d}{suffix}" for i in range(int(lo), int(hi) + 1)]
            else:
                hosts.append(f"{prefix}{r}{suffix}")
    return hosts


def _int_env(env: dict[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise ConfigError(f"environment variable {key}={env[key]!r} is not an integer") from None


def detect_env(environ: dict[str, str] | None = None) -> DistEnv:
    """Work out rank / world size / master from torchrun, an srun step, or a single process."""
    env = dict(os.environ if environ is None else environ)
    if env.get("UNREALNAS_DIST", "").lower() == "off":
        return DistEnv()
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=_int_env(env, "RANK"), world_size=_int_env(env, "WORLD_SIZE"),
            local_rank=_int_env(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=_int_env(env, "MASTER_PORT") if "MASTER_PORT" in env else 29500, source="torchrun",
        )
    step = env.get("SLURM_STEP_ID", "")
    if "SLURM_PROCID" in env and step.isdigit():
        ntasks_key = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
        world = _int_env(env, ntasks_key) if ntasks_key in env else 1
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
        hosts = expand_nodelist(nodelist) if nodelist else []
        if "MASTER_PORT" in env:
            port = _int_env(env, "MASTER_PORT")
        else:
            job = env.get("SLURM_JOB_ID", "0")
            port = 15000 + (int(job) if job.isdigit() else 0) % 20000
        return DistEnv(
            rank=_int_env(env, "SLURM_PROCID"), world_size=world,
            local_rank=_int_env(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
            master_addr=env.get("MASTER_ADDR") or (hosts[0] if hosts else "127.0.0.1"),
            master_port=port, source="slurm",
        )
    return DistEnv()


def resolve_device(requested: str, env: DistEnv) -> torch.device:
    """The device of this rank: ``auto`` = cuda:<local rank> when CUDA exists, else cpu."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device={requested!r} asked for CUDA but torch sees no GPU; use device=cpu or auto")
    if requested.startswith("cuda:"):
        return torch.device(requested)
    n = torch.cuda.device_count()
    if n == 1:
        return torch.device("cuda", 0)  # SLURM bound one GPU to this task (--gpus-per-task=1)
    if env.local_rank >= n:
        raise ConfigError(f"local rank {env.local_rank} has no GPU (this node has {n}); launch one task per GPU")
    return torch.device("cuda", env.local_rank)


def init_distributed(device: torch.device, env: DistEnv | None = None, timeout_min: int = 30) -> DistEnv:
    """Initialise the default process group when more than one process runs; return the env."""
    env = detect_env() if env is None else env
    if not env.distributed or torch_dist.is_initialized():
        return env
    os.environ["MASTER_ADDR"] = env.master_addr
    os.environ["MASTER_PORT"] = str(env.master_port)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        torch_dist.init_process_group(backend=backend, init_method="env://", rank=env.rank,
                                      world_size=env.world_size, timeout=datetime.timedelta(minutes=timeout_min))
    except (RuntimeError, ValueError) as e:
        raise ConfigError(
            f"torch.distributed init failed on {socket.gethostname()} (rank {env.rank}/{env.world_size}, "
            f"master {env.master_addr}:{env.master_port}, {backend}): {str(e).splitlines()[0]}"
        ) from e
    return env


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if torch_dist.is_initialized():
        torch_dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place and return it (no-op in a single process)."""
    if torch_dist.is_initialized():
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not torch_dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not torch_dist.is_initialized():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=src)
    return box[0]


def shutdown() -> None:
    """Destroy the process group if one exists."""
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()
