"""Device-resident loader, search splits, shard streaming and the FFCV path."""

import subprocess
import sys

import pytest
import torch

from tests.conftest import smoke_overrides
from unrealnas.config import compose_config
from unrealnas.data.generators import generate_dataset
from unrealnas.data.loaders import (
    DeviceLoader,
    ShardStreamDataset,
    load_split_to_device,
    random_crop,
    search_loaders,
    stream_loader,
)
from unrealnas.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def rlrd(tmp_path_factory, cifar_root):
    tmp = tmp_path_factory.mktemp("rlrd")
    return generate_dataset(compose_config(smoke_overrides(tmp, "data=rlrd", f"data.root={cifar_root}",
                                                           "data.num_images=null", "data.shard_size=64")))


def test_order_is_a_function_of_seed_and_epoch():
    x = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 2, 2).contiguous()
    y = torch.arange(100)
    a = DeviceLoader(x, y, 10, seed=1)
    b = DeviceLoader(x.clone(), y.clone(), 10, seed=1)
    ya = torch.cat([yb for _, yb in a.epoch(0)])
    assert torch.equal(ya, torch.cat([yb for _, yb in b.epoch(0)]))
    assert sorted(ya.tolist()) == list(range(100)) and not torch.equal(ya, y)
    assert not torch.equal(ya, torch.cat([yb for _, yb in a.epoch(1)]))
    assert not torch.equal(ya, torch.cat([yb for _, yb in DeviceLoader(x, y, 10, seed=2).epoch(0)]))
    # resuming at batch 4 yields exactly the tail of the same epoch
    assert torch.equal(torch.cat([yb for _, yb in a.epoch(0, start_batch=4)]), ya[40:])


def test_same_flipped_split(rlrd):
    data = load_split_to_device(rlrd)
    train, val = search_loaders(data, 20, seed=0, split="same_flipped")
    assert train.num_images == val.num_images == 100
    assert torch.equal(train.images, val.images)  # the same 25k (here 100) images
    xt, yt = next(train.epoch(0))
    # the architecture step sees the same images mirrored, labels unchanged
    order_v = val._plan(0)[0][:20]
    xv, yv = next(val.epoch(0))
    ref = train._to_float(data.images[:100].index_select(0, order_v)).flip(3)
    assert torch.allclose(xv, ref) and torch.equal(yv, data.labels[order_v])
    # normalisation only: CIFAR mean/std applied
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    order_t = train._plan(0)[0][:20]
    raw = data.images.index_select(0, order_t).float() / 255
    assert torch.allclose(xt, (raw - mean) / std, atol=1e-3)


def test_other_half_split(rlrd):
    data = load_split_to_device(rlrd)
    train, val = search_loaders(data, 10, seed=0, split="other_half")
    assert train.augment == "crop_flip" and val.augment == "none"
    assert torch.equal(val.images, data.images[100:]) and torch.equal(train.images, data.images[:100])


def test_random_crop_is_a_shifted_window():
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5)
    out = random_crop(x, torch.tensor([[2, 2], [0, 4]]), pad=2)
    assert torch.equal(out[0], x[0])  # offset == pad: identity
    assert torch.equal(out[1, 0, 2:, :3], x[1, 0, :3, 2:]) and (out[1, 0, :2] == 0).all()


def test_flip_augmentation_is_half_the_images():
    x = torch.zeros(2000, 1, 2, 2, dtype=torch.uint8)
    x[:, :, :, 0] = 255
    loader = DeviceLoader(x, torch.zeros(2000, dtype=torch.long), 2000, seed=0, augment="flip")
    xb, _ = next(loader.epoch(0))
    flipped = (xb[:, 0, 0, 1] > 0.5).float().mean().item()
    assert 0.45 < flipped < 0.55


def test_stream_loader_matches_device_loader_content(rlrd):
    ds = ShardStreamDataset(rlrd)
    seen = {}
    for workers in (0, 2):
        ys = torch.cat([y for _, y in stream_loader(ds, 32, seed=3, epoch=0, num_workers=workers)])
        seen[workers] = ys
    assert torch.equal(seen[0], seen[2])  # the order does not depend on the number of workers
    data = load_split_to_device(rlrd)
    x0, y0 = ds[150]
    assert torch.equal(x0, data.images[150]) and y0 == int(data.labels[150])


def test_loading_a_corrupt_dataset_fails(rlrd, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(rlrd, copy)
    shard = sorted(copy.glob("train-*.h5"))[0]
    data = bytearray(shard.read_bytes())
    data[-50] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="sha256"):
        load_split_to_device(copy)
    with pytest.raises(DataError, match="sha256"):
        ShardStreamDataset(copy)


FFCV_SCRIPT = r"""
import sys, numpy as np, torch
from unrealnas.data.ffcv_store import export_ffcv, ffcv_loader
from unrealnas.data.store import read_split
folder = sys.argv[1]
export_ffcv(folder, num_workers=1)   # written before any Loader exists in this process
ref = read_split(folder)
seen = np.zeros(len(ref["labels"]), bool)
for x, y, idx in ffcv_loader(folder, batch_size=32, seed=0, num_workers=1, drop_last=False):
    i = idx.numpy()
    img = x.numpy()
    want = ref["images"][i]
    if x.dtype == torch.uint8:
        want = want.transpose(0, 3, 1, 2)  # RGB fields come back NCHW
    want = want.astype(img.dtype)  # float16 noise is widened to float32 losslessly
    assert np.array_equal(img, want), "pixels differ"
    assert np.array_equal(y.numpy(), ref["labels"][i]), "labels differ"
    seen[i] = True
assert seen.all()
print("FFCV-OK")
"""


@pytest.mark.ffcv
@pytest.mark.parametrize("data", ["rlrd", "rlrn"])
def test_ffcv_export_round_trip(data, rlrd, tmp_path):
    pytest.importorskip("ffcv")
    folder = rlrd if data == "rlrd" else generate_dataset(compose_config(smoke_overrides(tmp_path, "data.num_images=100")))
    # FFCV's writer forks: run it in a fresh process (see notes/ffcv-on-cpu.md)
    out = subprocess.run([sys.executable, "-c", FFCV_SCRIPT, str(folder)], capture_output=True, text=True, timeout=300)
    assert "FFCV-OK" in out.stdout, out.stderr[-2000:]
    assert (folder / "train.beton").exists() and (folder / "train.beton.json").exists()


def test_noise_loader_keeps_float_values(tmp_path):
    folder = generate_dataset(compose_config(smoke_overrides(tmp_path, "data.num_images=64")))
    data = load_split_to_device(folder)
    loader = DeviceLoader(data.images, data.labels, 64, seed=0, shuffle=False)
    x, _ = next(loader.epoch(0))
    assert x.dtype == torch.float32 and torch.equal(x, data.images.float())


def test_num_train_fixes_the_weight_step_size(rlrd):
    from unrealnas.data.loaders import weight_step_images

    assert weight_step_images(60_000, 0.5, 25_000) == 25_000  # RLGD: 25k, not 30k
    assert weight_step_images(60_000, 0.5, 0) == 30_000  # 0 = train_portion
    data = load_split_to_device(rlrd)
    train, val = search_loaders(data, 10, seed=0, split="same_flipped", num_train=60)
    assert train.num_images == val.num_images == 60 and torch.equal(val.images, data.images[:60])
    train, val = search_loaders(data, 10, seed=0, split="other_half", num_train=60)
    assert train.num_images == 60 and torch.equal(val.images, data.images[60:])
    with pytest.raises(ConfigError, match="search.num_train=500"):
        search_loaders(data, 10, seed=0, split="same_flipped", num_train=500)


def test_paper_config_uses_25k_weight_step_images():
    assert compose_config([]).search.num_train == 25_000
    assert compose_config(["preset=smoke"]).search.num_train == 0
