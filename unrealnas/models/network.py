"""Discrete networks built from a genotype: the DARTS evaluation family (CIFAR and ImageNet stems).

A network is a stem followed by ``layers`` cells; the cells at ``layers // 3`` and
``2 * layers // 3`` are reduction cells (stride 2, channels doubled), every other cell is a
normal cell. An auxiliary classifier reads the output of cell ``2 * layers // 3`` during
training. Drop path zeroes whole op outputs per sample with probability ``drop_path_prob``,
which the training loop ramps linearly from 0 over the run.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from unrealnas.nas.genotype import Genotype
from unrealnas.nas.ops import FactorizedReduce, Identity, ReLUConvBN, get_op


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero each sample's tensor with probability ``drop_prob``; rescale survivors by 1/keep."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    # One Bernoulli draw per sample, broadcast over C, H, W; the global torch RNG is reseeded
    # per epoch by the loop, so the masks are a function of (seed, epoch) and survive a resume.
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * mask / keep


class Cell(nn.Module):
    """One discrete cell: two preprocessed inputs, two ops per node, concat of chosen nodes."""

    def __init__(self, genotype: Genotype, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool) -> None:
        super().__init__()
        self.reduction = reduction
        # After a reduction cell, s0 is twice the size of s1: halve it so both match.
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        pairs = genotype.reduce if reduction else genotype.normal
        self.concat = tuple(genotype.reduce_concat if reduction else genotype.normal_concat)
        self.multiplier = len(self.concat)
        self.nodes = len(pairs) // 2
        self.inputs = tuple(i for _, i in pairs)
        # Only edges leaving the two cell inputs stride in a reduction cell.
        self.ops = nn.ModuleList(
            get_op(name, C, 2 if reduction and idx < 2 else 1, True) for name, idx in pairs
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        """Compute the cell output from the two previous cell outputs."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in range(self.nodes):
            total = None
            for k in (2 * node, 2 * node + 1):
                op = self.ops[k]
                h = op(states[self.inputs[k]])
                # Identity edges are never dropped: dropping a skip would cut the gradient highway.
                if self.training and drop_prob > 0.0 and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                total = h if total is None else total + h
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """Auxiliary classifier on the 2/3-depth feature map (8x8 on CIFAR-32, 7x7 on ImageNet-224).

    ``pool_stride`` is 3 for CIFAR (8x8 -> 2x2) and 2 for ImageNet (7x7 -> 2x2); the 2x2 conv
    then leaves 1x1. Inputs smaller than the 5x5 pooling window (tiny smoke images) fall back
    to an adaptive 2x2 pool so the same weights apply at any resolution.
    """

    def __init__(self, C: int, num_classes: int, pool_stride: int, bn_after_2x2: bool) -> None:
        super().__init__()
        self.pool_stride = pool_stride
        self.conv1 = nn.Sequential(nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True))
        # The ImageNet variant of the published net has no BN after the 2x2 conv; kept for parity.
        layers: list[nn.Module] = [nn.Conv2d(128, 768, 2, bias=False)]
        if bn_after_2x2:
            layers.append(nn.BatchNorm2d(768))
        layers.append(nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(*layers)
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the auxiliary classifier."""
        x = F.relu(x)
        if (min(x.shape[-2:]) - 5) // self.pool_stride + 1 >= 2:  # the published pool leaves >= 2x2
            x = F.avg_pool2d(x, 5, stride=self.pool_stride, padding=0, count_include_pad=False)
        else:
            x = F.adaptive_avg_pool2d(x, 2)
        x = self.conv2(self.conv1(x))
        if x.shape[-1] != 1 or x.shape[-2] != 1:
            x = F.adaptive_avg_pool2d(x, 1)
        return self.classifier(x.flatten(1))


class _Network(nn.Module):
    """Cells, pooling and classifier shared by the CIFAR and ImageNet variants."""

    stem_reduces = False  # whether the stem output s0 is larger than s1 (ImageNet stems)

    def _build_cells(self, genotype: Genotype, layers: int, C: int, C_prev_prev: int, C_prev: int,
                     num_classes: int, auxiliary: bool, aux_pool_stride: int, aux_bn: bool) -> None:
        if layers < 3:
            raise ValueError(f"a network needs at least 3 cells (two are reductions), got {layers}")
        self.layers = layers
        self.aux_index = 2 * layers // 3
        reductions = {layers // 3, 2 * layers // 3}
        self.cells = nn.ModuleList()
        reduction_prev = self.stem_reduces
        C_curr = C
        C_aux = C_prev
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                C_curr *= 2
            cell = Cell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == self.aux_index:
                C_aux = C_prev
        self.auxiliary_head = AuxiliaryHead(C_aux, num_classes, aux_pool_stride, aux_bn) if auxiliary else None
        self.classifier = nn.Linear(C_prev, num_classes)
        self.drop_path_prob = 0.0

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits; in training mode with an auxiliary head, ``(logits, aux_logits)``."""
        s0, s1 = self._stem(x)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        out = F.adaptive_avg_pool2d(s1, 1).flatten(1)
        logits = self.classifier(out)
        return (logits, aux) if aux is not None else logits


class NetworkCIFAR(_Network):
    """The CIFAR-style network: one 3x3 conv stem with ``stem_multiplier * C`` channels."""

    def __init__(self, genotype: Genotype, C: int, num_classes: int, layers: int, auxiliary: bool = True,
                 in_channels: int = 3, stem_multiplier: int = 3) -> None:
        super().__init__()
        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))
        self._build_cells(genotype, layers, C, C_stem, C_stem, num_classes, auxiliary, aux_pool_stride=3, aux_bn=True)

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.stem(x)
        return s, s


class NetworkImageNet(_Network):
    """The ImageNet-style network: three stride-2 3x3 convs (224 -> 28) before the cells."""

    stem_reduces = True

    def __init__(self, genotype: Genotype, C: int, num_classes: int, layers: int, auxiliary: bool = True,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=True), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C),
        )
        self._build_cells(genotype, layers, C, C, C, num_classes, auxiliary, aux_pool_stride=2, aux_bn=False)

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


NETWORKS: dict[str, type[_Network]] = {"cifar": NetworkCIFAR, "imagenet": NetworkImageNet}


def build_network(kind: str, genotype: Genotype, C: int, num_classes: int, layers: int,
                  auxiliary: bool = True, in_channels: int = 3) -> nn.Module:
    """Build the ``kind`` ("cifar" | "imagenet") network of ``genotype``."""
    from unrealnas.errors import ConfigError

    if kind not in NETWORKS:
        raise ConfigError(f"unknown network kind {kind!r}; choose one of {', '.join(NETWORKS)}")
    if C < 2 or C % 2:
        raise ConfigError(f"train.init_channels={C} is invalid: use an even channel count >= 2")
    if layers < 3:
        raise ConfigError(f"train.layers={layers} is invalid: use at least 3 cells (two are reductions)")
    return NETWORKS[kind](genotype, C, num_classes, layers, auxiliary=auxiliary, in_channels=in_channels)
