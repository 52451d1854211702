"""The dispatched-op counter sees forward and backward ops, and counts what it is given."""

from __future__ import annotations

import torch

from unrealnas.benchmarks.opcount import count_ops, ops_per_call


def test_counts_forward_and_backward_ops():
    x = torch.randn(4, 3, requires_grad=True)
    fwd = count_ops(lambda: (x * 2).sum())
    assert fwd.counts["aten.mul.Tensor"] == 1 and fwd.counts["aten.sum.default"] == 1
    both = count_ops(lambda: (x * 2).sum().backward())
    assert both.total > fwd.total  # the backward's ops are dispatched under the mode too


def test_ops_per_call_scales_with_work():
    x = torch.randn(8)
    one = ops_per_call(lambda: x + 1)
    ten = ops_per_call(lambda: [x + 1 for _ in range(10)])
    assert one == 1 and ten == 10
