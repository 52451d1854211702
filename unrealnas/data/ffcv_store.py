"""FFCV export of a dataset folder and a loader over it (optional extra: ``pip install .[ffcv]``).

FFCV's writer forks worker processes; forking while a Loader's threads hold numba's compiler
lock deadlocks (../shared/notes/ffcv-on-cpu.md), so write ``.beton`` files before any Loader
exists in the process (the CLI's ``export-ffcv`` runs in its own process).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from unrealnas.data.store import load_manifest, verify_dataset
from unrealnas.errors import DataError
from unrealnas.io import atomic_path, sha256_file, write_json_atomic


def _require_ffcv():
    try:
        import ffcv  # noqa: F401
    except ImportError as e:
        raise DataError("FFCV is not installed: install the ffcv extra (pip install 'unrealnas[ffcv]', or tools/setup.sh "
                        "without UNREALNAS_SKIP_APT), or use the torch loader") from e


class _ShardRows:
    """Rows (image, label, index) of a split for FFCV's writer; shards opened lazily per worker."""

    def __init__(self, folder: Path, manifest: dict, split: str):
        self.folder, self.shards = folder, manifest["splits"][split]["shards"]
        self.starts = np.array([s["start"] for s in self.shards])
        self.n = manifest["splits"][split]["num_images"]
        self._cache: tuple[int, dict] | None = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        import h5py

        k = int(np.searchsorted(self.starts, i, side="right") - 1)
        if self._cache is None or self._cache[0] != k:
            with h5py.File(self.folder / self.shards[k]["file"], "r") as f:
                self._cache = (k, {"images": f["images"][()], "labels": f["labels"][()]})
        arrays = self._cache[1]
        j = i - self.shards[k]["start"]
        image = arrays["images"][j]
        if image.dtype == np.float16:
            image = image.astype(np.float32)
        return image, int(arrays["labels"][j]), int(i)


def beton_path(folder: str | Path, split: str = "train") -> Path:
    """Path of the FFCV file of ``split`` in a dataset folder."""
    return Path(folder) / f"{split}.beton"


def export_ffcv(folder: str | Path, split: str = "train", num_workers: int = 2,
                progress: Callable[[str], None] | None = None) -> Path:
    """Write ``<split>.beton`` (raw images, labels, index) beside the shards; a finished export is a no-op."""
    _require_ffcv()
    from ffcv.fields import IntField, NDArrayField, RGBImageField
    from ffcv.writer import DatasetWriter

    folder = Path(folder)
    manifest = verify_dataset(folder, [split])
    out, meta_path = beton_path(folder, split), beton_path(folder, split).with_suffix(".beton.json")
    if out.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("dataset") == manifest["name"] and meta.get("bytes") == out.stat().st_size:
            if progress:
                progress(f"{out}: already exported")
            return out
    h, w, c = manifest["shape"]
    if manifest["dtype"] == "uint8" and c == 3:
        image_field = RGBImageField(write_mode="raw", max_resolution=max(h, w))
    else:
        # numba (FFCV's JIT) has no float16: half-precision noise is widened to float32, losslessly
        image_field = NDArrayField(dtype=np.dtype("float32"), shape=(h, w, c))
    fields = {"image": image_field, "label": IntField(), "index": IntField()}
    with atomic_path(out) as tmp:
        DatasetWriter(str(tmp), fields, num_workers=num_workers).from_indexed_dataset(_ShardRows(folder, manifest, split))
    write_json_atomic(meta_path, {"dataset": manifest["name"], "split": split, "bytes": out.stat().st_size,
                                  "sha256": sha256_file(out), "num_images": manifest["splits"][split]["num_images"]})
    if progress:
        progress(f"{out}: {out.stat().st_size / 2**20:.1f} MiB")
    return out


def ffcv_loader(folder: str | Path, batch_size: int, seed: int, split: str = "train", shuffle: bool = True,
                flip: bool = False, device: str | torch.device = "cpu", num_workers: int = 2,
                drop_last: bool = True):
    """An FFCV Loader over ``<split>.beton`` yielding (uint8 or float NCHW images, labels, indices)."""
    _require_ffcv()
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.decoders import NDArrayDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage

    folder = Path(folder)
    manifest = load_manifest(folder)
    path = beton_path(folder, split)
    if not path.exists():
        raise DataError(f"{path} does not exist; run 'unrealnas export-ffcv {folder}' first")
    meta = json.loads(path.with_suffix(".beton.json").read_text())
    if meta.get("bytes") != path.stat().st_size:
        raise DataError(f"{path} has {path.stat().st_size} bytes, expected {meta.get('bytes')}; re-run export-ffcv")
    device = torch.device(device)
    rgb = manifest["dtype"] == "uint8" and manifest["shape"][2] == 3
    image_pipe = [SimpleRGBImageDecoder()] if rgb else [NDArrayDecoder()]
    if flip:
        image_pipe.append(RandomHorizontalFlip())
    image_pipe += [ToTensor(), ToDevice(device, non_blocking=True), ToTorchImage(channels_last=False)]
    if not rgb:
        image_pipe = image_pipe[:-1]  # NDArray rows stay NHWC; the caller permutes
    int_pipe = [IntDecoder(), ToTensor(), Squeeze(), ToDevice(device, non_blocking=True)]
    return Loader(str(path), batch_size=batch_size, num_workers=num_workers, seed=seed,
                  order=OrderOption.RANDOM if shuffle else OrderOption.SEQUENTIAL, drop_last=drop_last,
                  pipelines={"image": image_pipe, "label": int_pipe, "index": list(int_pipe)},
                  os_cache=True)
