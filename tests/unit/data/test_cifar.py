"""The CIFAR python-pickle reader on folders written in the official format."""

import pickle

import numpy as np
import pytest

from unrealnas.data.cifar import read_cifar, write_cifar
from unrealnas.errors import DataError


def test_reads_official_layout(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 30)
    write_cifar(tmp_path, "cifar10", (x, y), (x[:5], y[:5]))
    split = read_cifar(tmp_path, "cifar10", "train")
    assert np.array_equal(split.images, x) and np.array_equal(split.labels, y)
    assert split.images.dtype == np.uint8 and split.num_classes == 10 and not split.official
    # the folder itself may be given as root too
    assert len(read_cifar(tmp_path / "cifar-10-batches-py", "cifar10", "test").images) == 5


def test_pixel_layout_is_channel_planes(tmp_path):
    # one image whose red plane is 1, green 2, blue 3: rows of 1024 values per channel
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    row = np.concatenate([np.full(1024, 1), np.full(1024, 2), np.full(1024, 3)]).astype(np.uint8)[None]
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": row, b"labels": [7]}, f)
    split = read_cifar(tmp_path, "cifar10")
    assert split.images.shape == (5, 32, 32, 3)
    assert (split.images[0, 5, 7] == [1, 2, 3]).all() and (split.labels == 7).all()


def test_cifar100_fine_labels(cifar_root):
    split = read_cifar(cifar_root, "cifar100", "train")
    assert split.num_classes == 100 and len(split.images) == 120 and split.labels.max() < 100


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        read_cifar(tmp_path, "cifar10")
    with pytest.raises(DataError, match="data.root"):
        read_cifar(None, "cifar10")


def test_wrong_format(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not a python pickle"):
        read_cifar(tmp_path, "cifar10")
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({"data": np.zeros((2, 10), np.uint8), "labels": [0, 1]}, f)
    with pytest.raises(DataError, match=r"\(N, 3072\)"):
        read_cifar(tmp_path, "cifar10")
