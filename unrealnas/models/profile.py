"""Model size the way NAS papers report it: parameters without the auxiliary head, FLOPs as multiply-adds.

FLOPs here are multiply-accumulates (MACs) of the convolution and linear layers for one image
in eval mode (so the auxiliary head, used only in training, is not counted), counted with
forward hooks: a conv contributes ``H_out * W_out * C_out * (C_in / groups) * kH * kW``, a linear
layer ``in * out``. BN, ReLU, pooling and additions are ignored. This is the "multiply-adds"
convention of the DARTS family. Measured here for DARTS-V2: 528M at CIFAR-32 / 20 cells / 36
channels (the figure later papers quote), 530M at ImageNet-224 / 14 cells / 48 channels (the DARTS
paper prints 574M for the latter; its counting script was never published).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def count_params(model: nn.Module, exclude_auxiliary: bool = True) -> int:
    """Number of parameters, without those of ``auxiliary_head`` by default (the paper's count)."""
    total = 0
    for name, p in model.named_parameters():
        if exclude_auxiliary and (name.startswith("auxiliary_head.") or ".auxiliary_head." in name):
            continue
        total += p.numel()
    return total


def count_params_m(model: nn.Module) -> float:
    """Parameters in millions, auxiliary head excluded."""
    return count_params(model) / 1e6


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of conv and linear layers for one (C, H, W) input in eval mode."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() // out.shape[0] * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() // out.shape[0] * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        model(torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


def count_flops_m(model: nn.Module, input_shape: tuple[int, int, int]) -> float:
    """Multiply-adds in millions for one image (see the module docstring for the convention)."""
    return count_macs(model, input_shape) / 1e6
