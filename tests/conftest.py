"""Shared fixtures: tiny datasets in the real on-disk formats, built per test session."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from unrealnas.data.cifar import write_cifar

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """A data root holding tiny cifar-10-batches-py and cifar-100-python folders in the official pickle format."""
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    write_cifar(root, "cifar10", (_images(rng, 200), rng.integers(0, 10, 200)), (_images(rng, 50), rng.integers(0, 10, 50)))
    write_cifar(root, "cifar100", (_images(rng, 120), rng.integers(0, 100, 120)), (_images(rng, 40), rng.integers(0, 100, 40)))
    return root


def smoke_overrides(tmp_path: Path, *extra: str) -> list[str]:
    """Hydra overrides for a tiny run whose data and runs stay under ``tmp_path``."""
    return ["preset=smoke", f"paths.data={tmp_path / 'datasets'}", f"paths.runs={tmp_path / 'runs'}", *extra]


def squeue_ok() -> bool:
    """Whether a SLURM controller answers (``squeue``): the integration tests' cluster fixtures start one if not."""
    try:
        return subprocess.run(["squeue", "--noheader"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
