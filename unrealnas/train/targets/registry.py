"""The training targets by name (``train.target``): the one place that knows every target module.

The target modules subclass :class:`unrealnas.train.targets.base.Target`; they are imported when their
target is built (ImageNet's FFCV loader needs the optional ``ffcv`` package).
"""

from __future__ import annotations

from collections.abc import Callable

from unrealnas.errors import ConfigError
from unrealnas.train.targets.base import Target, TargetSpec


def _cifar(spec: TargetSpec, name: str) -> Target:
    from unrealnas.train.targets.cifar import CifarTarget

    return CifarTarget(spec, name)


def _digits(spec: TargetSpec, name: str) -> Target:
    from unrealnas.train.targets.cifar import DigitsTarget

    return DigitsTarget(spec, name)


def _imagenet(spec: TargetSpec, name: str) -> Target:
    if spec.loader == "ffcv":
        from unrealnas.train.targets.imagenet_ffcv import FFCVImageNetTarget

        return FFCVImageNetTarget(spec)
    from unrealnas.train.targets.imagenet import ImageFolderTarget

    return ImageFolderTarget(spec)


def _chexpert(spec: TargetSpec, name: str) -> Target:
    from unrealnas.train.targets.chexpert import CheXpertTarget

    return CheXpertTarget(spec)


def _dataset(spec: TargetSpec, name: str) -> Target:
    from unrealnas.train.targets.stored import StoredTarget

    return StoredTarget(spec, name)


TARGETS: dict[str, Callable[[TargetSpec, str], Target]] = {
    "cifar10": _cifar,
    "cifar100": _cifar,
    "digits": _digits,
    "imagenet": _imagenet,
    "chexpert": _chexpert,
    "dataset": _dataset,  # a generated dataset folder (train.root), fitted and measured on its train split
}


def build_target(name: str, spec: TargetSpec) -> Target:
    """Build target ``name``; unknown names raise ConfigError listing the valid ones."""
    if name not in TARGETS:
        raise ConfigError(f"unknown train.target {name!r}; choose one of {', '.join(TARGETS)}")
    return TARGETS[name](spec, name)
