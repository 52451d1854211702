"""What the training loop needs from a target task, and the registry of targets."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from unrealnas.dist import DistEnv
from unrealnas.errors import ConfigError

Batch = tuple[torch.Tensor, torch.Tensor]
# small-image tasks that use the CIFAR stem
CIFAR_SIZE_TARGETS = ("cifar10", "cifar100", "digits", "dataset")
FIXED_32PX_TARGETS = ("cifar10", "cifar100")  # the others take train.resolution


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from the master seed and labels (stable across runs, processes and platforms)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class TargetSpec:
    """Explicit arguments for building a target (the config is turned into these at the edge)."""

    root: str | None
    seed: int
    device: torch.device
    env: DistEnv
    batch_size: int  # global batch
    resolution: int
    cutout: int = 0
    max_images: int | None = None
    max_eval_images: int | None = None
    num_workers: int = 0
    uncertainty: str = "u_ones"
    frontal_only: bool = False
    loader: str = "torch"  # imagenet: torch | ffcv
    ffcv_max_resolution: int = 256


class Target:
    """A task: its data in a (seed, epoch)-determined order, its output size and metric kind.

    ``train_batches(epoch)`` yields this rank's batches on ``device``; the order and the
    augmentation draws are functions of (seed, epoch) only, so a resumed run sees the same
    data as an uninterrupted one.
    """

    name: str = ""
    net: str = "cifar"  # default stem: cifar | imagenet
    num_classes: int = 0
    multilabel: bool = False
    label_names: tuple[str, ...] = ()
    in_channels: int = 3
    input_size: int = 32
    num_train: int = 0
    num_eval: int = 0
    per_rank_batch: int = 0
    files_official: bool | None = None  # CIFAR: every file matched its official md5 (None: not checked)
    eval_groups: Any = None  # CheXpert: study id of every evaluation image (dataset order), or None

    def eval_indices(self) -> Any:
        """Dataset positions of this rank's evaluation images, in eval_batches order (None: not tracked)."""
        return None

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """This rank's training batches of ``epoch``."""
        raise NotImplementedError

    def eval_batches(self) -> Iterator[Batch]:
        """This rank's share of the evaluation split (every image seen by exactly one rank)."""
        raise NotImplementedError

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch on this rank."""
        raise NotImplementedError


def per_rank_batch(batch_size: int, env: DistEnv) -> int:
    """Split the global batch over ranks; ConfigError unless it divides evenly."""
    if batch_size < env.world_size or batch_size % env.world_size:
        raise ConfigError(
            f"train.batch_size={batch_size} (global) must be a multiple of the {env.world_size} ranks"
        )
    return batch_size // env.world_size
