"""CIFAR-10/100 held on the device; crop, flip and cutout as batched tensor ops.

The whole split (50k x 3 x 32 x 32 uint8 = 150 MB) lives on the device, so an epoch is a
permutation plus a few indexing kernels per batch: no loader workers, no host round trips.
All random draws of an epoch (order, crop offsets, flips, cutout centres) come from one CPU
generator seeded by (seed, epoch), drawn for the whole epoch at once, so they do not depend on
the number of ranks and a resumed run replays them exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from unrealnas.data.cifar import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    CifarSplit,
    read_cifar,
)
from unrealnas.errors import DataError
from unrealnas.train.targets.base import Batch, Target, TargetSpec, derive_seed, per_rank_batch

PAD = 4  # random-crop padding (px), the standard CIFAR augmentation


def augment_batch(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
                  cy: torch.Tensor, cx: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                  cutout: int, pad: int = PAD) -> torch.Tensor:
    """Pad-and-crop, horizontal flip, normalise, then cutout, for a uint8 NCHW batch (all on one device)."""
    B, _, H, W = x.shape
    xp = F.pad(x.float().div_(255.0), (pad, pad, pad, pad))  # zero (black) padding, as torchvision's RandomCrop
    rows = dy.view(B, 1) + torch.arange(H, device=x.device).view(1, H)
    cols = dx.view(B, 1) + torch.arange(W, device=x.device).view(1, W)
    # Advanced indexing on dims 0, 2, 3 gathers one HxW window per image: result (B, H, W, C).
    out = xp[torch.arange(B, device=x.device).view(B, 1, 1), :, rows.view(B, H, 1), cols.view(B, 1, W)]
    out = out.permute(0, 3, 1, 2)
    out = torch.where(flip.view(B, 1, 1, 1), out.flip(3), out)
    out = (out - mean) / std
    if cutout > 0:
        # Cutout after normalisation (zeros = the mean colour): a square centred anywhere, clipped.
        half = cutout // 2
        ar_h = torch.arange(H, device=x.device).view(1, H)
        ar_w = torch.arange(W, device=x.device).view(1, W)
        in_r = (ar_h >= (cy.view(B, 1) - half)) & (ar_h < (cy.view(B, 1) + half))
        in_c = (ar_w >= (cx.view(B, 1) - half)) & (ar_w < (cx.view(B, 1) + half))
        box = in_r.view(B, 1, H, 1) & in_c.view(B, 1, 1, W)
        out = out.masked_fill(box, 0.0)
    return out.contiguous()


class CifarTarget(Target):
    """CIFAR-10 or CIFAR-100 from the official pickle folders, resident on the device."""

    net = "cifar"

    def __init__(self, spec: TargetSpec, name: str) -> None:
        self.name = name
        self.spec = spec
        train, test, (mean, std) = self.read_splits(spec, name)
        self.files_official = bool(train.official and test.official)
        if len(train.labels) == 0 or len(test.labels) == 0:
            raise DataError(f"{name}: the train or test split under {spec.root} holds no images")
        tx, ty = train.images, train.labels
        if spec.max_images is not None:
            tx, ty = tx[: spec.max_images], ty[: spec.max_images]
        vx, vy = test.images, test.labels
        if spec.max_eval_images is not None:
            vx, vy = vx[: spec.max_eval_images], vy[: spec.max_eval_images]
        dev = spec.device
        self.train_x = torch.from_numpy(np.ascontiguousarray(tx.transpose(0, 3, 1, 2))).to(dev)
        self.train_y = torch.from_numpy(ty).to(dev)
        self.eval_x = torch.from_numpy(np.ascontiguousarray(vx.transpose(0, 3, 1, 2))).to(dev)
        self.eval_y = torch.from_numpy(vy).to(dev)
        self.mean = torch.tensor(mean, device=dev).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=dev).view(1, 3, 1, 1)
        self.num_classes = train.num_classes
        self.num_train, self.num_eval = len(ty), len(vy)
        self.input_size = int(self.train_x.shape[-1])
        self.per_rank_batch = per_rank_batch(spec.batch_size, spec.env)
        world = spec.env.world_size
        if self.num_train < world:
            raise DataError(f"{name}: {self.num_train} training images cannot feed {world} ranks")

    def read_splits(self, spec: TargetSpec, name: str) -> tuple[CifarSplit, CifarSplit, tuple]:
        """(train split, test split, (mean, std)) of the task, from the official pickle folders."""
        if spec.resolution != 32:
            raise DataError(f"{name} images are 32x32; set train.resolution=32 (got {spec.resolution})")
        stats = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
        return read_cifar(spec.root, name, "train"), read_cifar(spec.root, name, "test"), stats

    def _rank_positions(self) -> torch.Tensor:
        # Ranks take interleaved positions of the epoch order, all the same count (DDP needs
        # equal step counts); up to world-1 images per epoch are left out, different ones each epoch.
        env = self.spec.env
        n = self.num_train // env.world_size * env.world_size
        return torch.arange(env.rank, n, env.world_size)

    def steps_per_epoch(self) -> int:
        """Steps per epoch on this rank (last partial batch included)."""
        n = self.num_train // self.spec.env.world_size
        return -(-n // self.per_rank_batch)

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """Augmented batches of ``epoch`` for this rank, in the (seed, epoch) order."""
        g = torch.Generator().manual_seed(derive_seed(self.spec.seed, "cifar-epoch", epoch))
        n, H = self.num_train, self.input_size
        order = torch.randperm(n, generator=g)
        dy = torch.randint(0, 2 * PAD + 1, (n,), generator=g)
        dx = torch.randint(0, 2 * PAD + 1, (n,), generator=g)
        flip = torch.rand(n, generator=g) < 0.5
        cy = torch.randint(0, H, (n,), generator=g)
        cx = torch.randint(0, H, (n,), generator=g)
        pos = self._rank_positions()
        dev = self.spec.device
        for start in range(0, len(pos), self.per_rank_batch):
            p = pos[start: start + self.per_rank_batch]
            idx = order[p].to(dev)
            x = augment_batch(self.train_x[idx], dy[p].to(dev), dx[p].to(dev), flip[p].to(dev), cy[p].to(dev),
                              cx[p].to(dev), self.mean, self.std, self.spec.cutout)
            yield x, self.train_y[idx]

    def eval_batches(self) -> Iterator[Batch]:
        """Normalised test images, this rank's interleaved share."""
        env = self.spec.env
        idx_all = torch.arange(env.rank, self.num_eval, env.world_size, device=self.spec.device)
        bs = max(self.per_rank_batch, 256)
        for start in range(0, len(idx_all), bs):
            idx = idx_all[start: start + bs]
            x = (self.eval_x[idx].float().div_(255.0) - self.mean) / self.std
            yield x, self.eval_y[idx]


class DigitsTarget(CifarTarget):
    """scikit-learn's digits upsampled to 32x32x3 (or train.resolution): a real task that needs no download."""

    def read_splits(self, spec: TargetSpec, name: str) -> tuple[CifarSplit, CifarSplit, tuple]:
        """The fixed stratified train/test split of the bundled digits, upsampled to ``train.resolution``."""
        from unrealnas.data.digits import DIGITS_MEAN, DIGITS_STD, read_digits

        # The originals are 8x8, so 16 px keeps every detail at a quarter of the 32 px compute.
        if not 8 <= spec.resolution <= 32:
            raise DataError(f"digits images are upsampled from 8x8 to at most 32x32; set train.resolution "
                            f"between 8 and 32 (got {spec.resolution})")
        size = spec.resolution
        return read_digits("train", size), read_digits("test", size), (DIGITS_MEAN, DIGITS_STD)
