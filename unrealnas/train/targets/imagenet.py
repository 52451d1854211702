"""ImageNet from an ImageFolder tree (``<root>/train/<class>/*.JPEG``, ``<root>/val/<class>/*.JPEG``).

Training: RandomResizedCrop(resolution), horizontal flip, ColorJitter(0.4, 0.4, 0.4, 0.2) (DARTS), normalise; validation: resize to
resolution * 256/224 then centre crop. A DistributedSampler seeded with the master seed and
``set_epoch(epoch)`` gives every rank its share of the same (seed, epoch) permutation; the
loader's worker seeds come from a generator seeded by (seed, epoch, rank), so the augmentation
draws also replay exactly after a resume. Validation is split into disjoint interleaved
shares (no padding duplicates), so every image is counted once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from unrealnas.errors import DataError
from unrealnas.train.targets.base import Batch, Target, TargetSpec, derive_seed, per_rank_batch
from unrealnas.train.targets.color_jitter import imagenet_color_jitter

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_image_folder(folder: Path, transform) -> Dataset:
    """A torchvision ImageFolder; DataError (one line) when it is missing or holds no images."""
    from torchvision.datasets import ImageFolder

    if not folder.is_dir():
        raise DataError(f"ImageFolder {folder} does not exist; train.root must hold train/ and val/ class folders")
    try:
        return ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"ImageFolder {folder}: {str(e).splitlines()[0]}") from e


def first_n(ds: Dataset, n: int | None, seed: int) -> Dataset:
    """A fixed random subset of ``n`` items (seeded, so every class can appear), or ``ds`` itself."""
    if n is None or n >= len(ds):
        return ds
    g = torch.Generator().manual_seed(derive_seed(seed, "subset"))
    return Subset(ds, torch.randperm(len(ds), generator=g)[:n].tolist())


def train_transform(resolution: int):
    """The ImageNet training transform of DARTS' train_imagenet.py: crop, flip, colour jitter, normalise."""
    from torchvision import transforms as T

    return T.Compose([T.RandomResizedCrop(resolution), T.RandomHorizontalFlip(), imagenet_color_jitter(),
                      T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class SampledTarget(Target):
    """A target fed by a torch DataLoader over ``train_ds``/``val_ds`` with a seeded DistributedSampler.

    Subclasses set ``spec``, ``train_ds``, ``val_ds``, ``sampler``, ``per_rank_batch``, ``num_eval``;
    worker seeds come from (seed, name, epoch, rank), so augmentation replays after a resume.
    """

    def _setup_sampler(self) -> None:
        """Per-rank batch and the seeded DistributedSampler over ``train_ds``."""
        spec, env = self.spec, self.spec.env
        self.num_train, self.num_eval = len(self.train_ds), len(self.val_ds)
        self.per_rank_batch = per_rank_batch(spec.batch_size, env)
        if self.num_train < env.world_size:
            raise DataError(f"{self.name}: {self.num_train} training images cannot feed {env.world_size} ranks")
        # drop_last=True gives every rank the same number of images (DDP needs equal step counts).
        self.sampler = DistributedSampler(self.train_ds, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                          seed=spec.seed, drop_last=True)

    def steps_per_epoch(self) -> int:
        """Steps per epoch on this rank (last partial batch included)."""
        return -(-len(self.sampler) // self.per_rank_batch)

    def _loader(self, ds: Dataset, sampler, generator: torch.Generator | None) -> DataLoader:
        w = self.spec.num_workers
        return DataLoader(ds, batch_size=self.per_rank_batch, sampler=sampler, num_workers=w,
                          pin_memory=self.spec.device.type == "cuda", generator=generator,
                          persistent_workers=False, prefetch_factor=4 if w else None)

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """This rank's augmented batches of ``epoch``."""
        self.sampler.set_epoch(epoch)
        g = torch.Generator().manual_seed(derive_seed(self.spec.seed, f"{self.name}-workers", epoch, self.spec.env.rank))
        dev = self.spec.device
        for x, y in self._loader(self.train_ds, self.sampler, g):
            yield x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)

    def eval_indices(self) -> np.ndarray:
        """This rank's validation positions (rank-strided), in eval_batches order."""
        env = self.spec.env
        return np.arange(env.rank, self.num_eval, env.world_size)

    def eval_batches(self) -> Iterator[Batch]:
        """This rank's disjoint share of the validation images."""
        env = self.spec.env
        share = Subset(self.val_ds, list(range(env.rank, self.num_eval, env.world_size)))
        dev = self.spec.device
        for x, y in self._loader(share, None, None):
            yield x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)


class ImageFolderTarget(SampledTarget):
    """ImageNet (or any ImageFolder tree) with the standard augmentation, for one DDP rank."""

    name = "imagenet"
    net = "imagenet"

    def __init__(self, spec: TargetSpec) -> None:
        from torchvision import transforms as T

        if spec.root is None:
            raise DataError("imagenet: no data root; set train.root to the folder holding train/ and val/")
        root = Path(spec.root).expanduser()
        self.spec = spec
        r = spec.resolution
        norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        train_tf = train_transform(r)
        val_tf = T.Compose([T.Resize(round(r * 256 / 224)), T.CenterCrop(r), T.ToTensor(), norm])
        train = load_image_folder(root / "train", train_tf)
        val = load_image_folder(root / "val", val_tf)
        if train.classes != val.classes:
            raise DataError(f"imagenet: {root}/train and {root}/val have different class folders")
        self.num_classes = len(train.classes)
        self.train_ds = first_n(train, spec.max_images, spec.seed)
        self.val_ds = first_n(val, spec.max_eval_images, spec.seed)
        self.input_size = r
        self._setup_sampler()
