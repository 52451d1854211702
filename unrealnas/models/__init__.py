"""Discrete networks built from a genotype (CIFAR and ImageNet variants) and their size."""

from unrealnas.models.network import (
    NETWORKS,
    AuxiliaryHead,
    Cell,
    NetworkCIFAR,
    NetworkImageNet,
    build_network,
    drop_path,
)
from unrealnas.models.profile import count_flops_m, count_macs, count_params, count_params_m

__all__ = [
    "NETWORKS",
    "AuxiliaryHead",
    "Cell",
    "NetworkCIFAR",
    "NetworkImageNet",
    "build_network",
    "count_flops_m",
    "count_macs",
    "count_params",
    "count_params_m",
    "drop_path",
]
