"""scikit-learn's bundled handwritten digits (1797 8x8 grayscale, 10 classes) as a CIFAR-size task.

It ships with scikit-learn, so it is a real dataset that needs no download: the suite's
offline target for smoke pipelines and the miniature reproduction. Images are upsampled to
32x32x3 uint8 (bilinear, gray replicated to 3 channels) and split once, with a fixed stratified
split that does not depend on the run's seed (every run sees the same test set).
"""

from __future__ import annotations

import numpy as np
import torch

from unrealnas.data.cifar import CifarSplit

TEST_FRACTION = 0.2
SPLIT_SEED = 0  # fixed: the train/test split is part of the dataset, not of a run
# Per-channel statistics of the upsampled train split on [0, 1] pixels (computed once, see tests).
DIGITS_MEAN = (0.3054, 0.3054, 0.3054)
DIGITS_STD = (0.3237, 0.3237, 0.3237)


def _upsample(images: np.ndarray, size: int) -> np.ndarray:
    x = torch.from_numpy(images.astype(np.float32) / 16.0).unsqueeze(1)  # pixel values are 0..16
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255.0).round().to(torch.uint8).repeat(1, 3, 1, 1)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def read_digits(split: str = "train", size: int = 32) -> CifarSplit:
    """The train or test split of the digits task as NHWC uint8 images and int64 labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    idx = np.arange(len(digits.target))
    train_idx, test_idx = train_test_split(idx, test_size=TEST_FRACTION, random_state=SPLIT_SEED,
                                           stratify=digits.target)
    pick = np.sort(train_idx if split == "train" else test_idx)
    return CifarSplit(_upsample(digits.images[pick], size), digits.target[pick].astype(np.int64), 10, True)
