"""Loaders.

``DeviceLoader`` keeps a whole CIFAR-size split on the target device (uint8 or float16) and
does shuffles, flips and crops as batched tensor ops (the airbench recipe): no workers, no host
round trip per batch. Every random draw (order, crop offsets, flips) is made on the CPU from a
generator seeded by (seed, epoch, stream), so the data order is a pure function of those numbers,
identical on CPU and GPU, and a resumed run can restart mid-epoch at any batch.

``ShardStreamDataset`` streams shards with h5py (opened lazily in each worker) for data that
does not fit in memory; ``ffcv_store`` has the FFCV path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unrealnas.data.generators import ROTATIONS
from unrealnas.data.store import load_manifest, read_split, verify_dataset
from unrealnas.errors import ConfigError, DataError

AUGMENTATIONS = ("none", "flip", "flip_all", "crop_flip")
ORDER_STREAM = 11
AUG_STREAM = 12


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU torch generator seeded by (seed, epoch, stream) through numpy's SeedSequence."""
    state = np.random.SeedSequence([seed, stream, epoch]).generate_state(2, dtype=np.uint32)
    g = torch.Generator()
    g.manual_seed(int(state[0]) << 32 | int(state[1]))
    return g


class DeviceLoader:
    """Batches from a split held on one device; order and augmentation are functions of (seed, epoch)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int,
                 augment: str = "none", normalization: dict | None = None, shuffle: bool = True,
                 drop_last: bool = True, pad: int = 4, stream: int = 0, out_dtype: torch.dtype = torch.float32):
        if augment not in AUGMENTATIONS:
            raise ConfigError(f"unknown augmentation {augment!r}; choose one of {', '.join(AUGMENTATIONS)}")
        if images.ndim != 4 or len(images) != len(labels):
            raise DataError(f"loader needs NCHW images and one label each, got {tuple(images.shape)} / {len(labels)}")
        self.images, self.labels = images, labels  # NCHW, on the target device
        self.batch_size, self.seed, self.augment = int(batch_size), int(seed), augment
        self.shuffle, self.drop_last, self.pad, self.stream = shuffle, drop_last, pad, stream
        self.out_dtype = out_dtype
        device = images.device
        if normalization and images.dtype == torch.uint8:
            mean = torch.tensor(normalization["mean"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
            std = torch.tensor(normalization["std"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
            # x/255 then (x - mean)/std folded into one multiply-add
            self._scale, self._shift = 1.0 / (255.0 * std), -mean / std
        elif images.dtype == torch.uint8:
            self._scale, self._shift = 1.0 / 255.0, 0.0
        else:
            self._scale, self._shift = None, None

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_images(self) -> int:
        """Images in the split."""
        return len(self.labels)

    def set_batch_size(self, batch_size: int) -> None:
        """Change the batch size (SGAS grows it after each decision); takes effect at the next epoch."""
        self.batch_size = int(batch_size)

    def _plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        n = len(self.labels)
        g = epoch_generator(self.seed, epoch, ORDER_STREAM + 100 * self.stream)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        ga = epoch_generator(self.seed, epoch, AUG_STREAM + 100 * self.stream)
        flips = offsets = None
        if self.augment in ("flip", "crop_flip"):
            flips = torch.rand(n, generator=ga) < 0.5
        if self.augment == "crop_flip":
            offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=ga)
        return order, flips, offsets

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (images, labels) batches of ``epoch`` starting at batch ``start_batch``."""
        order, flips, offsets = self._plan(epoch)
        device = self.images.device
        # one transfer per epoch; the step loop then only indexes device tensors
        order = order.to(device, non_blocking=True)
        flips = flips.to(device, non_blocking=True) if flips is not None else None
        offsets = offsets.to(device, non_blocking=True) if offsets is not None else None
        for b in range(start_batch, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.images.index_select(0, idx)
            if offsets is not None:
                x = random_crop(x, offsets.index_select(0, idx), self.pad)
            x = self._to_float(x)
            if self.augment == "flip_all":
                x = x.flip(3)
            elif flips is not None:
                f = flips.index_select(0, idx).view(-1, 1, 1, 1)
                x = torch.where(f, x.flip(3), x)
            yield x, self.labels.index_select(0, idx)

    def _to_float(self, x: torch.Tensor) -> torch.Tensor:
        if self._scale is None:
            return x.to(self.out_dtype)
        return (x.to(torch.float32) * self._scale + self._shift).to(self.out_dtype)


def random_crop(x: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad by ``pad`` and crop back to size at per-image (dy, dx) offsets, as one gather."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = (offsets[:, 0:1] + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(b, c, h, w + 2 * pad)
    x = padded.gather(2, rows)
    cols = (offsets[:, 1:2] + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(b, c, h, w)
    return x.gather(3, cols)


def rotation_batch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of B square NCHW images as 4B images at 0/90/180/270 degrees (counter-clockwise) and their labels 0..3.

    Rotation-major: images [kB, (k+1)B) are the batch rotated by k quarter turns, so the labels are
    ``arange(4).repeat_interleave(B)``; ``torch.rot90`` over (H, W) turns the same way as UnNAS's
    ``np.rot90(im, k, (1, 2))`` on CHW images.
    """
    if x.shape[-1] != x.shape[-2]:
        raise DataError(f"rotation labels need square images, got {x.shape[-2]}x{x.shape[-1]}")
    images = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(ROTATIONS)])
    labels = torch.arange(ROTATIONS, device=x.device).repeat_interleave(len(x))
    return images, labels


class RotationLoader:
    """A loader whose batches are the wrapped loader's images at the four rotations, labelled by rotation.

    The stored labels are dropped; order, augmentation and resume position are the wrapped loader's
    (a function of (seed, epoch)), so the stream is seeded and resumable like every other one and the
    split is never stored four times: the rotations are made per batch on the device.
    """

    def __init__(self, loader: DeviceLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def batch_size(self) -> int:
        """Images drawn per batch (each becomes 4 rotated images)."""
        return self.loader.batch_size

    @property
    def num_images(self) -> int:
        """Images in the split (before rotation)."""
        return self.loader.num_images

    def set_batch_size(self, batch_size: int) -> None:
        """Change the number of source images per batch (SGAS grows it); takes effect at the next epoch."""
        self.loader.set_batch_size(batch_size)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (4B rotated images, rotation labels) batches of ``epoch`` from batch ``start_batch``."""
        for x, _ in self.loader.epoch(epoch, start_batch):
            yield rotation_batch(x)


@dataclass
class SplitData:
    """A dataset split loaded for training: NCHW tensors plus the manifest."""

    images: torch.Tensor
    labels: torch.Tensor
    manifest: dict


def load_split_to_device(folder: str | Path, device: torch.device | str = "cpu", verify: bool = True,
                         split: str = "train") -> SplitData:
    """Read a whole split (verified), convert to NCHW, and place it on ``device`` once."""
    arrays = read_split(folder, split, verify=verify)
    manifest = load_manifest(folder)
    images = torch.from_numpy(arrays["images"]).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(arrays["labels"].astype(np.int64))
    return SplitData(images.to(device), labels.to(device), manifest)


def weight_step_images(n: int, train_portion: float, num_train: int = 0) -> int:
    """Images of the weight step: ``num_train`` (the paper's 25k for every dataset), or 0 = ``train_portion`` x n."""
    if num_train:
        if num_train > n:
            raise ConfigError(f"search.num_train={num_train} exceeds the {n} images of the dataset; "
                              f"lower it or set search.num_train=0 to use search.train_portion")
        return int(num_train)
    n_train = int(np.floor(train_portion * n))
    if n_train < 1:
        raise ConfigError(f"search.train_portion={train_portion} leaves no training image of {n}")
    return n_train


def search_loaders(data: SplitData, batch_size: int, seed: int, split: str, train_portion: float = 0.5,
                   out_dtype: torch.dtype = torch.float32, num_train: int = 0,
                   rotation: bool = False) -> tuple[DeviceLoader | RotationLoader, DeviceLoader | RotationLoader]:
    """The weight-step and architecture-step loaders of a search (PROTOCOL section 1).

    The weight step takes the first ``num_train`` images (0: the first ``train_portion``).
    ``same_flipped`` (unreal data): the weight step sees normalisation only, the architecture
    step the same images flipped. ``other_half`` (real labels): the weight step gets crop+flip,
    the architecture step the rest of the split with normalisation only (the DARTS split).
    ``rotation``: both loaders yield every image at the four rotations, labelled by rotation (UnNAS).
    """
    if rotation:
        train, val = search_loaders(data, batch_size, seed, split, train_portion, out_dtype, num_train)
        return RotationLoader(train), RotationLoader(val)  # type: ignore[arg-type]
    n = len(data.labels)
    n_train = weight_step_images(n, train_portion, num_train)
    norm = data.manifest.get("normalization")
    kw = dict(normalization=norm, seed=seed, out_dtype=out_dtype)
    if split == "same_flipped":
        x, y = data.images[:n_train], data.labels[:n_train]
        return (DeviceLoader(x, y, batch_size, augment="none", stream=0, **kw),
                DeviceLoader(x, y, batch_size, augment="flip_all", stream=1, **kw))
    if split == "other_half":
        if n_train >= n:
            raise ConfigError("search.split=other_half needs images left for the architecture step: "
                              "lower search.num_train (or search.train_portion when it is 0)")
        return (DeviceLoader(data.images[:n_train], data.labels[:n_train], batch_size, augment="crop_flip", stream=0, **kw),
                DeviceLoader(data.images[n_train:], data.labels[n_train:], batch_size, augment="none", stream=1, **kw))
    raise ConfigError(f"unknown search split {split!r}; choose same_flipped or other_half")


class ShardStreamDataset(torch.utils.data.Dataset):
    """Map-style dataset over HDF5 shards for data that does not fit in memory.

    Shards are opened lazily in each worker process (h5py handles must not cross a fork).
    """

    def __init__(self, folder: str | Path, split: str = "train", verify: bool = True, transform=None):
        self.folder = Path(folder)
        manifest = verify_dataset(self.folder, [split]) if verify else load_manifest(self.folder)
        if split not in manifest["splits"]:
            raise DataError(f"dataset {self.folder} has no split {split!r}")
        self.shards = manifest["splits"][split]["shards"]
        self.starts = np.array([s["start"] for s in self.shards])
        self.length = manifest["splits"][split]["num_images"]
        self.transform = transform
        self._files: dict[int, object] = {}

    def __len__(self) -> int:
        return self.length

    def _file(self, k: int):
        import h5py

        if k not in self._files:
            self._files[k] = h5py.File(self.folder / self.shards[k]["file"], "r")
        return self._files[k]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        k = int(np.searchsorted(self.starts, i, side="right") - 1)
        f = self._file(k)
        j = i - self.shards[k]["start"]
        x = torch.from_numpy(np.ascontiguousarray(f["images"][j])).permute(2, 0, 1)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(f["labels"][j])

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_files"] = {}  # never pickle open h5py handles into workers
        return state


def stream_loader(dataset: ShardStreamDataset, batch_size: int, seed: int, epoch: int, num_workers: int = 2,
                  shuffle: bool = True) -> torch.utils.data.DataLoader:
    """A DataLoader whose order is a function of (seed, epoch), independent of ``num_workers``."""
    g = epoch_generator(seed, epoch, ORDER_STREAM)
    sampler = torch.randperm(len(dataset), generator=g).tolist() if shuffle else range(len(dataset))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                       persistent_workers=False, pin_memory=torch.cuda.is_available())
