"""The DARTS candidate operations: one registry, name -> constructor(C, stride, affine).

The candidate list ``PRIMITIVES`` is read from the registry (in registration order), so there is
never a second list to keep in sync. Every op maps (N, C, H, W) to (N, C, H', W') with
H' = ceil(H / stride): stride 1 keeps the size, stride 2 halves it (odd sizes round up).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from unrealnas.errors import ConfigError

OpFactory = Callable[[int, int, bool], nn.Module]

OPS: dict[str, OpFactory] = {}


def register_op(name: str) -> Callable[[OpFactory], OpFactory]:
    """Decorator adding ``factory(C, stride, affine) -> nn.Module`` to ``OPS`` under ``name``."""

    def deco(factory: OpFactory) -> OpFactory:
        if name in OPS:
            raise ValueError(f"op {name!r} is registered twice")
        OPS[name] = factory
        return factory

    return deco


def get_op(name: str, C: int, stride: int, affine: bool) -> nn.Module:
    """Build op ``name`` with ``C`` channels in and out; unknown names raise ConfigError."""
    try:
        factory = OPS[name]
    except KeyError:
        raise ConfigError(f"unknown op {name!r}; valid ops: {', '.join(OPS)}") from None
    return factory(C, stride, affine)


# ----------------------------------------------------------------------------- building blocks


class ReLUConvBN(nn.Module):
    """ReLU -> conv (no bias) -> BN: the cell-input preprocessing and the stem of conv ops."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 affine: bool = True) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ReLU, conv and BN."""
        return self.op(x)


class DilConv(nn.Module):
    """ReLU -> depthwise dilated kxk -> pointwise 1x1 -> BN."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 dilation: int, affine: bool = True) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, dilation=dilation,
                      groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the dilated separable conv."""
        return self.op(x)


class SepConv(nn.Module):
    """Two stacked (ReLU, depthwise kxk, pointwise 1x1, BN); only the first one strides."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 affine: bool = True) -> None:
        super().__init__()
        self.op = nn.Sequential(
            DilConv(C_in, C_in, kernel_size, stride, padding, dilation=1, affine=affine),
            DilConv(C_in, C_out, kernel_size, 1, padding, dilation=1, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply both separable convs."""
        return self.op(x)


class Identity(nn.Module):
    """Return the input unchanged (skip_connect with stride 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x``."""
        return x


class Zero(nn.Module):
    """The ``none`` op: zeros of the output shape (strided like the other ops)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return zeros shaped like the op's output (kept in the graph so gradients are defined)."""
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve the spatial size with two offset 1x1 stride-2 convs, concatenated, then BN."""

    def __init__(self, C_in: int, C_out: int, affine: bool = True) -> None:
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even C_out, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate the even-pixel and odd-pixel 1x1 convs and normalise."""
        x = self.relu(x)
        shifted = x
        # Odd sizes: pad one row/column so both branches give ceil(H/2) (the reference crashed);
        # shapes are static, so this branch costs no host sync. Even sizes are untouched.
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            shifted = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        out = torch.cat([self.conv_1(x), self.conv_2(shifted[:, :, 1:, 1:])], dim=1)
        return self.bn(out)


# ----------------------------------------------------------------------------- the registry
# Registration order IS the PROTOCOL order of the search space (index 0 must stay ``none``).


@register_op("none")
def _none(C: int, stride: int, affine: bool) -> nn.Module:
    return Zero(stride)


@register_op("max_pool_3x3")
def _max_pool_3x3(C: int, stride: int, affine: bool) -> nn.Module:
    return nn.MaxPool2d(3, stride=stride, padding=1)


@register_op("avg_pool_3x3")
def _avg_pool_3x3(C: int, stride: int, affine: bool) -> nn.Module:
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


@register_op("skip_connect")
def _skip_connect(C: int, stride: int, affine: bool) -> nn.Module:
    return Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine)


@register_op("sep_conv_3x3")
def _sep_conv_3x3(C: int, stride: int, affine: bool) -> nn.Module:
    return SepConv(C, C, 3, stride, 1, affine=affine)


@register_op("sep_conv_5x5")
def _sep_conv_5x5(C: int, stride: int, affine: bool) -> nn.Module:
    return SepConv(C, C, 5, stride, 2, affine=affine)


@register_op("dil_conv_3x3")
def _dil_conv_3x3(C: int, stride: int, affine: bool) -> nn.Module:
    return DilConv(C, C, 3, stride, 2, 2, affine=affine)


@register_op("dil_conv_5x5")
def _dil_conv_5x5(C: int, stride: int, affine: bool) -> nn.Module:
    return DilConv(C, C, 5, stride, 4, 2, affine=affine)


PRIMITIVES: tuple[str, ...] = tuple(OPS)
"""The candidate op names in search-space order (alpha column k is ``PRIMITIVES[k]``).

Taken from the registry once, at import: alpha shapes and saved alphas depend on it, so the search
space is the ops registered in this module (``register_op`` elsewhere only adds retrain-time ops).
"""

NONE_INDEX: int = PRIMITIVES.index("none")
POOLING_OPS: frozenset[str] = frozenset({"max_pool_3x3", "avg_pool_3x3"})
"""Ops that get an extra non-affine BN inside the search MixedOp (they have no BN of their own)."""
