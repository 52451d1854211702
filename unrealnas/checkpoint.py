"""Full-state checkpoints: written atomically, read without executing code, checked against the run."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unrealnas.atomic import write_bytes_atomic
from unrealnas.errors import CheckpointError
from unrealnas.rundir import CHECKPOINT_FILE

FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """Every RNG this process draws from, in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plus the format version) to ``path`` atomically: a crash or a full disk leaves the old file."""
    # Serialised in memory first: the size is known for a disk-full message, and torch's own
    # writer reports a full disk as a RuntimeError without errno.
    buf = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, **state}, buf)
    write_bytes_atomic(path, buf.getbuffer())


def load_checkpoint(path: str | Path, fingerprint: dict[str, Any] | None = None,
                    keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Read a checkpoint; CheckpointError if it is corrupt or its fingerprint differs from ``fingerprint``.

    ``keys`` restricts the comparison to those fingerprint entries (e.g. only the genotype and
    network shape when initialising from another target's weights).
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types on truncated or foreign files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is corrupt or not a checkpoint ({msg[:160]}); delete it to restart the run") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION or "model" not in state:
        raise CheckpointError(f"{path} is not an unrealnas checkpoint (format {FORMAT_VERSION})")
    if fingerprint is not None:
        theirs = state.get("fingerprint", {})
        for k in keys or tuple(fingerprint):
            if theirs.get(k) != fingerprint.get(k):
                what = "genotype" if k == "genotype" else f"{k} ({theirs.get(k)!r} there, {fingerprint.get(k)!r} here)"
                raise CheckpointError(
                    f"{path} was written for another {what}; use another run (train.run_id=...) or delete it"
                )
    return state
