"""ImageNet training colour jitter, as DARTS' train_imagenet.py: ColorJitter(0.4, 0.4, 0.4, 0.2)."""

from __future__ import annotations

import torch

IMAGENET_JITTER = (0.4, 0.4, 0.4, 0.2)  # brightness, contrast, saturation, hue (DARTS train_imagenet.py)


def imagenet_color_jitter() -> torch.nn.Module:
    """torchvision's ColorJitter with the DARTS ImageNet strengths (new factors for every call)."""
    from torchvision import transforms as T

    return T.ColorJitter(*IMAGENET_JITTER)


def jitter_batch(x: torch.Tensor, jitter: torch.nn.Module) -> torch.Tensor:
    """Apply ``jitter`` to every image of an NCHW batch with its own random factors (as per-image transforms do).

    torchvision's ColorJitter draws one set of factors per call, so a whole-batch call would give
    every image the same jitter; the FFCV path therefore calls it image by image, on the device.
    """
    return torch.stack([jitter(img) for img in x])
