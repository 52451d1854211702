"""Reader for the official CIFAR-10/100 python-pickle folders (torchvision's on-disk convention).

torchvision's CIFAR classes refuse any folder whose files differ from the official md5s, so
they cannot read test fixtures or a re-packed copy; this reader follows the documented pickle
format instead and only *reports* whether the files are the official ones.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unrealnas.errors import DataError

# Official file lists and md5s (https://www.cs.toronto.edu/~kriz/cifar.html).
CIFAR_LAYOUT = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "label_key": "labels",
        "num_classes": 10,
        "train": [
            ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
            ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
            ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
            ("data_batch_4", "634d18415352ddfa80567beed471001a"),
            ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
        ],
        "test": [("test_batch", "40351d587109b95175f43aff81a1287e")],
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "label_key": "fine_labels",
        "num_classes": 100,
        "train": [("train", "16019d7e3df5f24257cddd939b257f8d")],
        "test": [("test", "f0ef6b0ae62326f3e7ffdfab6717acfc")],
    },
}

# Per-channel statistics of the CIFAR-10 train set, on [0, 1] pixels (the DARTS convention).
CIFAR10_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR10_STD = (0.24703233, 0.24348505, 0.26158768)
CIFAR100_MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
CIFAR100_STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)


@dataclass
class CifarSplit:
    """One split of a CIFAR dataset in memory."""

    images: np.ndarray  # (N, 32, 32, 3) uint8, NHWC
    labels: np.ndarray  # (N,) int64
    num_classes: int
    official: bool  # every file matched its official md5


def cifar_folder(root: str | Path | None, name: str) -> Path:
    """The pickle folder of ``name`` under ``root`` (or ``root`` itself if it is that folder)."""
    if name not in CIFAR_LAYOUT:
        raise DataError(f"unknown CIFAR dataset {name!r}; choose cifar10 or cifar100")
    sub = CIFAR_LAYOUT[name]["folder"]
    if root is None:
        raise DataError(f"{name}: no data root given; set data.root to the folder that holds {sub}/")
    root = Path(root).expanduser()
    folder = root if root.name == sub else root / sub
    if not folder.is_dir():
        raise DataError(
            f"{name}: folder {folder} does not exist; set data.root to the folder that holds {sub}/ "
            f"(the official python version, extracted)"
        )
    return folder


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _load_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"CIFAR file {path} is missing; the folder must hold the official python-pickle batches")
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as e:  # pickle raises many types on garbage input
        raise DataError(f"CIFAR file {path} is not a python pickle ({type(e).__name__}); re-extract the archive") from e
    if isinstance(entry, dict):  # python-2 pickles load with str keys, re-packs may use bytes keys
        entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise DataError(f"CIFAR file {path} lacks 'data'/'{label_key}' (has {keys}); is it the right dataset?")
    data = np.asarray(entry["data"])
    labels = np.asarray(entry[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(
            f"CIFAR file {path}: expected uint8 data of shape (N, 3072) and N labels, "
            f"got {data.dtype} {data.shape} and {len(labels)} labels"
        )
    # rows are 1024 red, 1024 green, 1024 blue values, row-major 32x32
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def read_cifar(root: str | Path | None, name: str = "cifar10", split: str = "train", check_md5: bool = True) -> CifarSplit:
    """Read a CIFAR split from the official python-pickle folder layout."""
    layout = CIFAR_LAYOUT.get(name)
    if layout is None:
        raise DataError(f"unknown CIFAR dataset {name!r}; choose cifar10 or cifar100")
    if split not in ("train", "test"):
        raise DataError(f"unknown CIFAR split {split!r}; choose train or test")
    folder = cifar_folder(root, name)
    images, labels, official = [], [], True
    for fname, md5 in layout[split]:
        path = folder / fname
        x, y = _load_batch(path, layout["label_key"])
        images.append(x)
        labels.append(y)
        # Only full-size files can be the official ones; fixtures and re-packs are accepted as they are.
        if check_md5:
            official = official and _md5(path) == md5
    y = np.concatenate(labels)
    n_cls = layout["num_classes"]
    if y.size and (y.min() < 0 or y.max() >= n_cls):
        raise DataError(f"{name} {split}: labels outside 0..{n_cls - 1} in {folder}; is it the right dataset?")
    return CifarSplit(np.concatenate(images), y, n_cls, official and check_md5)


def write_cifar(root: str | Path, name: str, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> Path:
    """Write NHWC uint8 images and labels in the official pickle layout (for tests and re-packing)."""
    layout = CIFAR_LAYOUT[name]
    folder = Path(root) / layout["folder"]
    folder.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in (("train", train), ("test", test)):
        files = layout[split]
        chunks = np.array_split(np.arange(len(x)), len(files))
        for (fname, _), idx in zip(files, chunks, strict=True):
            data = x[idx].transpose(0, 3, 1, 2).reshape(len(idx), -1).astype(np.uint8)
            entry = {"batch_label": f"{split} batch", "data": data, layout["label_key"]: [int(v) for v in y[idx]],
                     "filenames": [f"img_{i}.png" for i in idx]}
            if name == "cifar100":
                entry["coarse_labels"] = [int(v) // 5 for v in y[idx]]
            with open(folder / fname, "wb") as f:
                pickle.dump(entry, f, protocol=2)
    meta = "batches.meta" if name == "cifar10" else "meta"
    with open(folder / meta, "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(layout["num_classes"])]}, f, protocol=2)
    return folder
