"""FFCV export of a dataset folder and a loader over it (optional extra: ``pip install .[ffcv]``).

FFCV's writer forks worker processes; forking while a Loader's threads hold numba's compiler
lock deadlocks (../shared/notes/ffcv-on-cpu.md), so write ``.beton`` files before any Loader
exists in the process (the CLI's ``export-ffcv`` runs in its own process).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from unrealnas.atomic import atomic_path, sha256_file, write_json_atomic
from unrealnas.data.store import load_manifest, verify_dataset
from unrealnas.errors import DataError


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


def remove_stale_temps(out: Path) -> None:
    """Delete temp files a killed export of ``out`` left behind (atomic_path names them ``.<name>.*.tmp``)."""
    for stale in out.parent.glob(f".{out.name}.*.tmp"):
        stale.unlink(missing_ok=True)


@contextlib.contextmanager
def supervised_writer(out: Path, poll_s: float = 0.2) -> Iterator[None]:
    """Run an FFCV write so that an interruption raises here (and atomic_path removes the temp file).

    FFCV's writer waits forever when one of its worker processes dies, and SIGTERM (a job's time
    limit) would skip every ``finally``. A watchdog thread interrupts the main thread when a worker
    exits with an error; SIGTERM becomes an exception; leftover workers are terminated.
    """
    before = set(multiprocessing.active_children())
    failed: list[int] = []
    stop = threading.Event()
    # Every process started inside the block, recorded at start: a worker that dies before the
    # first poll is already gone from active_children(), so polling that alone can miss it.
    started: list[multiprocessing.process.BaseProcess] = []
    real_start = multiprocessing.process.BaseProcess.start

    def recording_start(self: multiprocessing.process.BaseProcess) -> None:
        real_start(self)
        started.append(self)

    def watch() -> None:
        while not stop.wait(poll_s):
            bad = [p.exitcode for p in list(started) if p.exitcode not in (None, 0)]
            if bad:
                failed.extend(bad)
                signal.pthread_kill(main, signal.SIGUSR1)
                return

    def interrupted(signum, _frame):
        raise DataError(f"FFCV export of {out} interrupted ({signal.Signals(signum).name})")

    main = threading.main_thread().ident
    is_main = threading.current_thread() is threading.main_thread()
    old = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGTERM, signal.SIGUSR1)} if is_main else {}
    multiprocessing.process.BaseProcess.start = recording_start
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    except DataError as e:
        if failed:
            raise DataError(f"FFCV export of {out}: a writer worker failed (exit code {failed[0]}); "
                            f"see the traceback above; no partial file was kept") from e
        raise
    finally:
        multiprocessing.process.BaseProcess.start = real_start
        stop.set()
        watcher.join()
        for p in set(multiprocessing.active_children()) - before:
            p.terminate()
            p.join(5)
        for sig, handler in old.items():
            signal.signal(sig, handler)


def check_beton(path: Path, sha256: str | None) -> None:
    """Refuse a ``.beton`` whose sha256 differs from the export's; hashed once per (mtime, size), then cached."""
    if not sha256:
        return
    st = path.stat()
    stamp = {"mtime_ns": st.st_mtime_ns, "bytes": st.st_size, "sha256": sha256}
    cache = path.with_suffix(".beton.verified.json")
    try:
        if json.loads(cache.read_text()) == stamp:
            return
    except (OSError, json.JSONDecodeError):
        pass
    if sha256_file(path) != sha256:
        raise DataError(f"{path} fails its sha256 check (corrupt or altered); delete it and re-run the export")
    with contextlib.suppress(OSError):  # a read-only folder only costs hashing again next time
        write_json_atomic(cache, stamp)


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
    elif manifest["dtype"] == "uint8":
        image_field = NDArrayField(dtype=np.dtype("uint8"), shape=(h, w, c))  # gray (1-channel) images as they are
    else:
        # numba (FFCV's JIT) has no float16: half-precision noise is widened to float32, losslessly
        image_field = NDArrayField(dtype=np.dtype("float32"), shape=(h, w, c))
    fields = {"image": image_field, "label": IntField(), "index": IntField()}
    remove_stale_temps(out)
    with atomic_path(out) as tmp, supervised_writer(out):
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
    check_beton(path, meta.get("sha256"))
    device = torch.device(device)
    rgb = manifest["dtype"] == "uint8" and manifest["shape"][2] == 3
    image_pipe = [SimpleRGBImageDecoder()] if rgb else [NDArrayDecoder()]
    if flip:
        image_pipe.append(RandomHorizontalFlip())
    image_pipe += [ToTensor(), ToDevice(device, non_blocking=True), ToTorchImage(channels_last=False)]
    if manifest["dtype"] != "uint8":
        image_pipe = image_pipe[:-1]  # float NDArray rows stay NHWC; the caller permutes (uint8 ones come NCHW)
    int_pipe = [IntDecoder(), ToTensor(), Squeeze(), ToDevice(device, non_blocking=True)]
    return Loader(str(path), batch_size=batch_size, num_workers=num_workers, seed=seed,
                  order=OrderOption.RANDOM if shuffle else OrderOption.SEQUENTIAL, drop_last=drop_last,
                  pipelines={"image": image_pipe, "label": int_pipe, "index": list(int_pipe)},
                  os_cache=True)
