"""The op registry: order, lookup errors, shapes and structure of every candidate op."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from unrealnas.errors import ConfigError
from unrealnas.nas.ops import (
    NONE_INDEX,
    OPS,
    PRIMITIVES,
    DilConv,
    FactorizedReduce,
    Identity,
    SepConv,
    Zero,
    get_op,
    register_op,
)
from unrealnas.nas.supernet import MixedOp

torch.set_num_threads(1)

PROTOCOL_ORDER = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
                  "dil_conv_3x3", "dil_conv_5x5")


def test_primitives_come_from_the_registry_in_protocol_order():
    assert PRIMITIVES == PROTOCOL_ORDER
    assert tuple(OPS) == PRIMITIVES
    assert NONE_INDEX == 0


def test_unknown_op_is_a_config_error_listing_valid_names():
    with pytest.raises(ConfigError) as e:
        get_op("sep_conv_7x7", 4, 1, True)
    msg = str(e.value)
    assert "sep_conv_7x7" in msg and "\n" not in msg
    for name in PRIMITIVES:
        assert name in msg


def test_registering_a_name_twice_fails():
    with pytest.raises(ValueError):
        register_op("none")(lambda C, stride, affine: Zero(stride))
    assert tuple(OPS) == PROTOCOL_ORDER


@pytest.mark.parametrize("name", PROTOCOL_ORDER)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [8, 7])
def test_every_op_keeps_or_halves_spatial_size(name, stride, hw):
    op = get_op(name, 4, stride, affine=False)
    out = op(torch.randn(2, 4, hw, hw))
    expected = hw if stride == 1 else (hw + 1) // 2
    assert out.shape == (2, 4, expected, expected)


def test_op_structure():
    assert isinstance(get_op("skip_connect", 4, 1, True), Identity)
    assert isinstance(get_op("skip_connect", 4, 2, True), FactorizedReduce)
    sep = get_op("sep_conv_5x5", 4, 2, True)
    assert isinstance(sep, SepConv)
    depthwise = [m for m in sep.modules() if isinstance(m, nn.Conv2d) and m.groups == 4]
    assert [m.kernel_size for m in depthwise] == [(5, 5), (5, 5)]
    assert [m.stride for m in depthwise] == [(2, 2), (1, 1)]  # only the first half strides
    dil = get_op("dil_conv_3x3", 4, 1, True)
    assert isinstance(dil, DilConv)
    (dw,) = [m for m in dil.modules() if isinstance(m, nn.Conv2d) and m.groups == 4]
    assert dw.dilation == (2, 2)
    none = get_op("none", 4, 2, True)
    assert isinstance(none, Zero)
    assert torch.count_nonzero(none(torch.randn(2, 4, 8, 8))) == 0


@pytest.mark.parametrize("affine", [True, False])
def test_affine_flag_reaches_every_bn(affine):
    for name in PRIMITIVES:
        for stride in (1, 2):
            for m in get_op(name, 4, stride, affine).modules():
                if isinstance(m, nn.BatchNorm2d):
                    assert m.affine == affine, name


def test_mixed_op_adds_non_affine_bn_to_pooling_only():
    mixed = MixedOp(4, 1)
    for name, op in zip(PRIMITIVES, mixed.ops, strict=True):
        bns = [m for m in op.modules() if isinstance(m, nn.BatchNorm2d)]
        assert all(not bn.affine for bn in bns)
        if "pool" in name:
            assert isinstance(op, nn.Sequential) and isinstance(op[-1], nn.BatchNorm2d)
        else:
            assert not isinstance(op, nn.Sequential), name  # no extra BN on the other ops
