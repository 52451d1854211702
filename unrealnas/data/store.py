"""HDF5 shard store: ``<split>-<NNNNN>.h5`` shards plus ``manifest.json`` (DESIGN.md "Contracts").

A dataset is complete only when its manifest exists; the manifest is written last. Each shard
is written to a temp file and renamed, and a ``.progress.json`` file lists finished shards so
that an interrupted generation resumes where it stopped. Shards are written with
``track_times=False`` so that the same data gives the same bytes (and the same sha256).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from unrealnas import __version__
from unrealnas.atomic import atomic_path, sha256_file, write_json_atomic
from unrealnas.errors import DataError
from unrealnas.lock import folder_lock
from unrealnas.observe import bar
from unrealnas.rundir import MANIFEST_FILE

PROGRESS = ".progress.json"
FORMAT = "unrealnas-dataset/1"
REQUIRED_KEYS = ("format", "name", "kind", "seed", "num_classes", "shape", "dtype", "splits", "params")


def shard_name(split: str, index: int) -> str:
    """File name of shard ``index`` of ``split``."""
    return f"{split}-{index:05d}.h5"


def shard_ranges(num_images: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) image ranges of consecutive shards."""
    return [(s, min(s + shard_size, num_images)) for s in range(0, num_images, shard_size)]


def write_shard(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Write one shard atomically; returns its manifest entry (file, bytes, sha256)."""
    n = len(arrays["labels"])
    if any(len(a) != n for a in arrays.values()):
        raise ValueError("all arrays of a shard need the same length")
    with atomic_path(path, size_hint=sum(a.nbytes for a in arrays.values())) as tmp:
        with h5py.File(tmp, "w") as f:
            for key, value in arrays.items():
                f.create_dataset(key, data=value, track_times=False)
    return {"file": path.name, "num_images": n, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


@dataclass
class SplitPlan:
    """What to write for one split: its size and a function producing the arrays of [start, stop)."""

    name: str
    num_images: int
    make_block: Callable[[int, int], dict[str, np.ndarray]]


def write_dataset(folder: Path, header: dict[str, Any], splits: list[SplitPlan], shard_size: int,
                  progress: Callable[[str], None] | None = None, wait: bool = True,
                  recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write (or resume writing) a dataset folder and return its manifest; a finished folder is a no-op.

    ``header`` holds the manifest fields that describe the data (kind, params, seed, ...). A folder
    that already holds a different dataset is refused, never overwritten. One writer at a time: a
    second one waits (``wait=True``) or raises :class:`~unrealnas.lock.AlreadyRunning`.
    """
    folder = Path(folder)
    say = progress or (lambda _msg: None)
    if (folder / MANIFEST_FILE).exists():  # complete: no lock, so read-only shared dataset folders work
        manifest = load_manifest(folder)
        _check_same(folder, manifest, header)
        say(f"{folder}: already complete, nothing to do")
        return manifest
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(folder_lock(folder, wait=wait, progress=say))
        except OSError as e:  # a read-only folder, or a file where a folder should be
            raise DataError(f"cannot write dataset folder {folder} ({e.strerror}); "
                            "set paths.data to a writable folder") from e
        return _write_locked(folder, header, splits, shard_size, say, recipe)


def _write_locked(folder: Path, header: dict[str, Any], splits: list[SplitPlan], shard_size: int,
                  say: Callable[[str], None], recipe: dict[str, Any] | None) -> dict[str, Any]:
    if (folder / MANIFEST_FILE).exists():  # the writer we waited for finished it
        manifest = load_manifest(folder)
        _check_same(folder, manifest, header)
        say(f"{folder}: already complete, nothing to do")
        return manifest
    done = _load_progress(folder, header)
    split_entries: dict[str, Any] = {}
    for plan in splits:
        shards = []
        ranges = shard_ranges(plan.num_images, shard_size)
        for index, (start, stop) in enumerate(bar(ranges, len(ranges), desc=f"{plan.name} shards", unit="shard")):
            path = folder / shard_name(plan.name, index)
            entry = done.get(path.name)
            if entry and entry.get("start") == start and entry.get("stop") == stop and _shard_ok(path, entry):
                shards.append(entry)
                continue
            entry = write_shard(path, plan.make_block(start, stop)) | {"start": start, "stop": stop}
            shards.append(entry)
            done[path.name] = entry
            write_json_atomic(folder / PROGRESS, {"header": header, "shards": done})
            say(f"{path.name}: {stop}/{plan.num_images} images")
        split_entries[plan.name] = {"num_images": plan.num_images, "shards": shards}
    manifest = {"format": FORMAT, **header, "splits": split_entries, "library_version": __version__}
    if recipe is not None:  # not part of the header: paths such as data.root may differ between users
        manifest["recipe"] = recipe
    write_json_atomic(folder / MANIFEST_FILE, manifest)
    (folder / PROGRESS).unlink(missing_ok=True)
    _remove_stray_shards(folder, manifest)
    return manifest


def repair_shards(folder: Path, header: dict[str, Any], splits: list[SplitPlan],
                  say: Callable[[str], None]) -> list[str]:
    """Re-write the shards of a complete dataset that fail their size/sha256 check; return their names."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    _check_same(folder, manifest, header)
    plans = {p.name: p for p in splits}
    repaired: list[str] = []
    with folder_lock(folder):
        for split, info in manifest["splits"].items():
            for entry in info["shards"]:
                path = folder / entry["file"]
                if _shard_ok(path, entry):
                    continue
                if split not in plans or "start" not in entry:
                    raise DataError(f"shard {path} cannot be rebuilt (the manifest lacks its range); "
                                    f"delete {folder} and re-run generate")
                say(f"{path.name}: fails its check, re-writing images {entry['start']}-{entry['stop']}")
                new = write_shard(path, plans[split].make_block(entry["start"], entry["stop"]))
                if new["sha256"] != entry["sha256"]:
                    raise DataError(f"shard {path} re-generated with another sha256 than the manifest's (another "
                                    f"library version?); delete {folder} and re-run generate")
                repaired.append(path.name)
    return repaired


def _repair_hint(folder: Path) -> str:
    return f"repair it with 'unrealnas generate --repair {folder}'"


def _check_same(folder: Path, manifest: dict, header: dict) -> None:
    for key, value in header.items():
        if json.loads(json.dumps(manifest.get(key))) != json.loads(json.dumps(value)):
            raise DataError(
                f"{folder} already holds a different dataset ({key} differs); choose another data.id "
                f"or paths.data, or delete that folder"
            )


def _load_progress(folder: Path, header: dict) -> dict[str, Any]:
    path = folder / PROGRESS
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # a torn progress file only costs regenerating the shards
    if json.loads(json.dumps(header)) != record.get("header"):
        return {}  # different parameters: every shard is rewritten (same names, new content)
    return dict(record.get("shards", {}))


def _shard_ok(path: Path, entry: dict) -> bool:
    return path.is_file() and path.stat().st_size == entry.get("bytes") and sha256_file(path) == entry.get("sha256")


def _remove_stray_shards(folder: Path, manifest: dict) -> None:
    listed = {s["file"] for split in manifest["splits"].values() for s in split["shards"]}
    for path in folder.glob("*-[0-9][0-9][0-9][0-9][0-9].h5"):
        if path.name not in listed:
            path.unlink()
    for path in folder.glob(".*.tmp"):
        path.unlink()


def load_manifest(folder: str | Path) -> dict[str, Any]:
    """Read and check a dataset's manifest; a missing or malformed one raises DataError."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} does not exist; generate it with 'unrealnas generate data=...'")
    if not path.is_file():
        hint = "generation was interrupted: re-run the same 'unrealnas generate' command to resume" if (
            folder / PROGRESS).exists() else "it is not a dataset folder written by 'unrealnas generate'"
        raise DataError(f"dataset {folder} has no {MANIFEST_FILE}: {hint}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}); regenerate the dataset") from e
    missing = [k for k in REQUIRED_KEYS if not isinstance(manifest, dict) or k not in manifest]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}; it was not written by 'unrealnas generate'")
    if manifest["format"] != FORMAT:
        raise DataError(f"{path} has format {manifest['format']!r}, expected {FORMAT!r}; regenerate the dataset")
    return manifest


def verify_dataset(folder: str | Path, splits: list[str] | None = None, hashes: bool = True) -> dict[str, Any]:
    """Check every shard's size, sha256 and HDF5 structure against the manifest; raise DataError on the first fault."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    shape = tuple(manifest["shape"])
    for split, info in manifest["splits"].items():
        if splits is not None and split not in splits:
            continue
        total = 0
        for entry in info["shards"]:
            path = folder / entry["file"]
            if not path.is_file():
                raise DataError(f"shard {path} is missing; {_repair_hint(folder)}")
            size = path.stat().st_size
            if size != entry["bytes"]:
                raise DataError(f"shard {path} has {size} bytes, manifest says {entry['bytes']} (truncated or altered); "
                                f"{_repair_hint(folder)}")
            if hashes and sha256_file(path) != entry["sha256"]:
                raise DataError(f"shard {path} fails its sha256 check (corrupt or altered); {_repair_hint(folder)}")
            _check_shard_structure(path, entry, shape, manifest)
            total += entry["num_images"]
        if total != info["num_images"]:
            raise DataError(f"{folder}: split {split} has {total} images in shards, manifest says {info['num_images']}")
    return manifest


def _check_shard_structure(path: Path, entry: dict, shape: tuple, manifest: dict) -> None:
    try:
        with h5py.File(path, "r") as f:
            images, labels = f["images"], f["labels"]
            n = entry["num_images"]
            if images.shape != (n, *shape) or str(images.dtype) != manifest["dtype"]:
                raise DataError(f"shard {path}: images are {images.dtype}{images.shape}, expected "
                                f"{manifest['dtype']}{(n, *shape)}; {_repair_hint(path.parent)}")
            if labels.shape != (n,) or labels.dtype != np.int64:
                raise DataError(f"shard {path}: labels are {labels.dtype}{labels.shape}, expected int64({n},)")
    except (OSError, KeyError) as e:
        raise DataError(f"shard {path} is not a readable HDF5 shard ({e}); {_repair_hint(path.parent)}") from e


def read_split(folder: str | Path, split: str = "train", verify: bool = True) -> dict[str, np.ndarray]:
    """Load a whole split into memory (images NHWC, labels, extras); verifies the shards first by default."""
    folder = Path(folder)
    manifest = verify_dataset(folder, [split], hashes=True) if verify else load_manifest(folder)
    if split not in manifest["splits"]:
        raise DataError(f"dataset {folder} has no split {split!r} (has {', '.join(manifest['splits'])})")
    parts: dict[str, list[np.ndarray]] = {}
    for entry in manifest["splits"][split]["shards"]:
        try:
            with h5py.File(folder / entry["file"], "r") as f:
                for key in f:
                    parts.setdefault(key, []).append(f[key][()])
        except OSError as e:
            raise DataError(f"shard {folder / entry['file']} is unreadable ({e}); run 'unrealnas verify {folder}'") from e
    return {key: np.concatenate(chunks) for key, chunks in parts.items()}
