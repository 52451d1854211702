"""``train.target=dataset``: fit a network to a generated dataset folder (the paper's Fig. 1 probes).

Unreal datasets have no test split and no meaning beyond their training images, so this target
trains on the folder's train split and its evaluation is the accuracy on (the first
``train.max_eval_images`` of) those same training images, without augmentation: the "training
accuracy" whose rise the paper reads as dataset difficulty and whose value at a probe epoch it
correlates with the architectures' real accuracy. Images stay on the device (``DeviceLoader``),
with the dataset's own normalisation; no augmentation, so fitting speed is measured, not
robustness. With several ranks each rank fits its interleaved share of the images.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from unrealnas.data.loaders import DeviceLoader, load_split_to_device
from unrealnas.errors import DataError
from unrealnas.search.state import resize_images
from unrealnas.train.targets.base import Batch, Target, TargetSpec, derive_seed, per_rank_batch

EVAL_BATCH = 256


class StoredTarget(Target):
    """A dataset folder written by ``unrealnas generate`` (HDF5 shards and manifest.json)."""

    net = "cifar"

    def __init__(self, spec: TargetSpec, name: str) -> None:
        self.name, self.spec = name, spec
        if spec.root is None:
            raise DataError("train.target=dataset needs a dataset folder: set train.root=<folder written by "
                            "unrealnas generate> (or leave it unset to use the dataset that data.* describes)")
        folder = Path(spec.root)
        data = load_split_to_device(folder, spec.device, verify=True)
        images, labels = data.images, data.labels
        if spec.max_images is not None:
            images, labels = images[: spec.max_images], labels[: spec.max_images]
        if spec.resolution != images.shape[-1]:
            images = resize_images(images, spec.resolution)
        env = spec.env
        if len(labels) < env.world_size:
            raise DataError(f"{folder}: {len(labels)} training images cannot feed {env.world_size} ranks")
        self.per_rank_batch = per_rank_batch(spec.batch_size, env)
        norm = data.manifest.get("normalization")
        seed = derive_seed(spec.seed, "dataset-target")
        # Interleaved shares, all the same size (DDP needs equal step counts on every rank).
        n = len(labels) // env.world_size * env.world_size
        self.loader = DeviceLoader(images[env.rank:n:env.world_size], labels[env.rank:n:env.world_size],
                                   self.per_rank_batch, seed, normalization=norm, drop_last=False)
        n_eval = len(labels) if spec.max_eval_images is None else min(len(labels), spec.max_eval_images)
        self.eval_loader = DeviceLoader(images[env.rank:n_eval:env.world_size],
                                        labels[env.rank:n_eval:env.world_size], EVAL_BATCH, seed,
                                        normalization=norm, shuffle=False, drop_last=False)
        self.num_classes = int(data.manifest["num_classes"])
        self.in_channels = int(images.shape[1])
        self.input_size = int(images.shape[-1])
        self.num_train, self.num_eval = n, n_eval

    def steps_per_epoch(self) -> int:
        """Steps per epoch on this rank (last partial batch included)."""
        return len(self.loader)

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """This rank's batches of ``epoch``, in the (seed, epoch) order."""
        return self.loader.epoch(epoch)

    def eval_batches(self) -> Iterator[Batch]:
        """The first ``max_eval_images`` training images (this rank's share), unaugmented."""
        return self.eval_loader.epoch(0)
