"""ImageNet through FFCV: an ImageFolder tree is written once to ``.beton`` files, then read by
FFCV loaders (JPEG decode + RandomResizedCrop + flip fused in FFCV's JIT pipeline), then
ColorJitter(0.4, 0.4, 0.4, 0.2) per image on the device (FFCV has no hue jitter), as the torchvision path.

The ``.beton`` files live in ``<train.root>/ffcv/`` (``train_<maxres>.beton``, ``val_<maxres>.beton``)
beside a JSON sidecar with their size; they are written atomically by rank 0 while the others
wait, and BEFORE any FFCV Loader exists in the process (FFCV's writer forks, and forking while a
Loader's threads hold numba's compiler lock deadlocks). Order: FFCV's RANDOM order seeded with
the master seed; the epoch is set explicitly, so a resumed run replays the same permutation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from unrealnas import dist
from unrealnas.atomic import atomic_path, sha256_file, write_json_atomic
from unrealnas.data.ffcv_store import _require_ffcv, check_beton, remove_stale_temps, supervised_writer
from unrealnas.errors import DataError
from unrealnas.train.targets.base import Batch, Target, TargetSpec, derive_seed, per_rank_batch
from unrealnas.train.targets.color_jitter import imagenet_color_jitter, jitter_batch
from unrealnas.train.targets.imagenet import IMAGENET_MEAN, IMAGENET_STD, load_image_folder


def write_imagefolder_beton(folder: Path, out: Path, max_resolution: int, num_workers: int = 4) -> Path:
    """Write an ImageFolder split to ``out`` (JPEG field, longest side <= max_resolution); no-op if done."""
    _require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    meta = out.with_suffix(".beton.json")
    if out.exists() and meta.exists() and json.loads(meta.read_text()).get("bytes") == out.stat().st_size:
        return out
    ds = load_image_folder(folder, None)
    if len(ds) == 0:
        raise DataError(f"ImageFolder {folder} holds no images; train.root must hold train/ and val/ class folders")
    fields = {"image": RGBImageField(write_mode="jpg", max_resolution=max_resolution, jpeg_quality=90),
              "label": IntField()}
    remove_stale_temps(out)
    with atomic_path(out) as tmp, supervised_writer(out):
        DatasetWriter(str(tmp), fields, num_workers=max(1, num_workers)).from_indexed_dataset(ds)
    write_json_atomic(meta, {"source": str(folder), "bytes": out.stat().st_size, "num_images": len(ds),
                             "classes": ds.classes, "max_resolution": max_resolution, "sha256": sha256_file(out)})
    return out


def _subset(n: int, keep: int | None, seed: int) -> list[int] | None:
    if keep is None or keep >= n:
        return None
    g = torch.Generator().manual_seed(derive_seed(seed, "subset"))
    return sorted(torch.randperm(n, generator=g)[:keep].tolist())


class FFCVImageNetTarget(Target):
    """ImageNet (any ImageFolder tree) read through FFCV loaders, one DDP rank."""

    name = "imagenet"
    net = "imagenet"

    def __init__(self, spec: TargetSpec) -> None:
        _require_ffcv()
        if spec.root is None:
            raise DataError("imagenet: no data root; set train.root to the folder holding train/ and val/")
        root = Path(spec.root).expanduser()
        self.spec, self.env = spec, spec.env
        out = root / "ffcv"
        self.paths = {s: out / f"{s}_{spec.ffcv_max_resolution}.beton" for s in ("train", "val")}
        if self.env.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            for split, path in self.paths.items():
                write_imagefolder_beton(root / split, path, spec.ffcv_max_resolution, spec.num_workers)
        dist.barrier()  # the other ranks wait for rank 0's files
        metas = {s: json.loads(p.with_suffix(".beton.json").read_text()) for s, p in self.paths.items()}
        for split, path in self.paths.items():
            check_beton(path, metas[split].get("sha256"))
        if metas["train"]["classes"] != metas["val"]["classes"]:
            raise DataError(f"imagenet: {root}/train and {root}/val have different class folders")
        self.num_classes = len(metas["train"]["classes"])
        # a fixed seeded subset (smoke runs, benchmarks), as the ImageFolder path does
        self.indices = {"train": _subset(metas["train"]["num_images"], spec.max_images, spec.seed),
                        "val": _subset(metas["val"]["num_images"], spec.max_eval_images, spec.seed)}
        self.num_train = len(self.indices["train"]) if self.indices["train"] is not None else metas["train"]["num_images"]
        self.num_eval = len(self.indices["val"]) if self.indices["val"] is not None else metas["val"]["num_images"]
        self.input_size = spec.resolution
        self.per_rank_batch = per_rank_batch(spec.batch_size, self.env)
        dev = spec.device
        self.mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1) * 255
        self._jitter = imagenet_color_jitter()
        self._train = self._make_loader("train")
        self._val = None

    def _make_loader(self, split: str):
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage

        r, dev = self.spec.resolution, self.spec.device
        if split == "train":
            image = [RandomResizedCropRGBImageDecoder((r, r)), RandomHorizontalFlip()]
        else:
            image = [CenterCropRGBImageDecoder((r, r), ratio=224 / 256)]
        image += [ToTensor(), ToDevice(dev, non_blocking=True), ToTorchImage()]
        label = [IntDecoder(), ToTensor(), Squeeze(), ToDevice(dev, non_blocking=True)]
        distributed = self.env.world_size > 1
        return Loader(str(self.paths[split]), batch_size=self.per_rank_batch, num_workers=max(1, self.spec.num_workers),
                      order=OrderOption.RANDOM if split == "train" else OrderOption.SEQUENTIAL, seed=self.spec.seed,
                      drop_last=split == "train", distributed=distributed and split == "train",
                      pipelines={"image": image, "label": label}, os_cache=True, indices=self.indices[split])

    def steps_per_epoch(self) -> int:
        """Steps per epoch on this rank."""
        return len(self._train)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """This rank's batches of ``epoch`` (FFCV's order for (seed, epoch))."""
        self._train.next_epoch = epoch  # FFCV derives the permutation from seed + epoch
        for x, y in self._train:
            yield self._normalise(jitter_batch(x, self._jitter)), y.long()

    def eval_batches(self) -> Iterator[Batch]:
        """This rank's disjoint share of the validation images (rank-strided over batches)."""
        if self._val is None:
            self._val = self._make_loader("val")
        for i, (x, y) in enumerate(self._val):
            if i % self.env.world_size == self.env.rank:
                yield self._normalise(x), y.long()

