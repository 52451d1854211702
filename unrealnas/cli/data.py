"""The dataset verbs: ``config``, ``generate``, ``verify``, ``inspect``, ``export-ffcv``."""

from __future__ import annotations

import json
import time
from pathlib import Path

from unrealnas.config import compose_config
from unrealnas.config.compose import to_yaml
from unrealnas.config.overrides import split_args
from unrealnas.errors import UserError
from unrealnas.observe import say as _say  # timestamped, on the unrealnas logger


def cmd_config(args: list[str]) -> int:
    """Print the composed config."""
    _, overrides = split_args(args)
    print(to_yaml(compose_config(overrides)), end="")
    return 0


def cmd_generate(args: list[str]) -> int:
    """Generate the dataset the config describes and print its folder; ``--repair [folder]`` fixes bad shards."""
    from unrealnas.data.generators import generate_dataset, repair_dataset

    positional, overrides = split_args(args)
    if "--repair" in positional:
        rest = [p for p in positional if p != "--repair"]
        if len(rest) > 1 or any(p.startswith("-") for p in rest):
            raise UserError("usage: unrealnas generate --repair [<dataset folder>] [key=value overrides...]")
        # A folder alone: its manifest's recipe says how it was made; overrides: the config says so.
        cfg = compose_config(overrides) if overrides or not rest else None
        folder, repaired = repair_dataset(cfg, Path(rest[0]) if rest else None, progress=_say)
        _say(f"{folder}: re-wrote {len(repaired)} shard(s) {' '.join(repaired)}".rstrip() if repaired
             else f"{folder}: every shard matches its sha256, nothing to repair")
        print(folder)
        return 0
    if positional:
        raise UserError(f"generate takes only key=value overrides (or --repair), got {' '.join(positional)}")
    cfg = compose_config(overrides)
    t0 = time.perf_counter()
    folder = generate_dataset(cfg, progress=_say)
    _say(f"dataset ready in {time.perf_counter() - t0:.1f}s")
    print(folder)
    return 0


def _one_folder(verb: str, args: list[str]) -> tuple[Path, list[str]]:
    positional, overrides = split_args(args)
    if len(positional) != 1:
        raise UserError(f"usage: unrealnas {verb} <dataset folder> [key=value...]")
    return Path(positional[0]), overrides


def cmd_verify(args: list[str]) -> int:
    """Verify every shard of a dataset folder (size, sha256, HDF5 structure)."""
    from unrealnas.data.store import verify_dataset

    folder, _ = _one_folder("verify", args)
    manifest = verify_dataset(folder)
    shards = sum(len(s["shards"]) for s in manifest["splits"].values())
    images = sum(s["num_images"] for s in manifest["splits"].values())
    print(f"ok: {folder} ({manifest['kind']}, {images} images in {shards} shards, all sha256 match)")
    return 0


def cmd_inspect(args: list[str]) -> int:
    """Summarise a dataset: kind, sizes, label histogram statistics."""
    import numpy as np

    from unrealnas.data.store import read_split

    folder, _ = _one_folder("inspect", args)
    arrays = read_split(folder, "train")
    from unrealnas.data.store import load_manifest

    manifest = load_manifest(folder)
    counts = np.bincount(arrays["labels"], minlength=manifest["num_classes"])
    x = arrays["images"].astype(np.float64)
    summary = {"name": manifest["name"], "kind": manifest["kind"], "label": manifest["label"],
               "num_classes": manifest["num_classes"], "seed": manifest["seed"], "images": int(len(x)),
               "shape": manifest["shape"], "dtype": manifest["dtype"], "pixel_mean": float(x.mean()),
               "pixel_std": float(x.std()), "labels_min_count": int(counts.min()), "labels_max_count": int(counts.max())}
    print(json.dumps(summary, indent=2))
    return 0


def cmd_export_ffcv(args: list[str]) -> int:
    """Write an FFCV .beton file beside the shards of a dataset."""
    from unrealnas.data.ffcv_store import export_ffcv

    folder, _ = _one_folder("export-ffcv", args)
    path = export_ffcv(folder, progress=_say)
    print(path)
    return 0
