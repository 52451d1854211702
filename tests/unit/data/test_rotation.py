"""Rotation labels (UnNAS's pretext task): exact batches, resume, the run id, result.json, tables, bad input."""

import json

import pytest
import torch

from tests.conftest import smoke_overrides
from unrealnas.config import compose_config
from unrealnas.data.generators import dataset_dir
from unrealnas.data.loaders import DeviceLoader, RotationLoader, SplitData, rotation_batch, search_loaders
from unrealnas.errors import ConfigError
from unrealnas.results.collect import architecture_name
from unrealnas.search.run import run_search
from unrealnas.search.state import search_run_id

TINY = ["search.layers=3", "search.init_channels=2", "search.resolution=8", "search.batch_size=8",
        "data.num_images=64", "search.warmup_epochs=0", "search.epochs=1"]


def test_quarter_turn_is_counter_clockwise_and_labels_follow_the_rotation():
    x = torch.tensor([[1, 2], [3, 4]]).view(1, 1, 2, 2)
    images, labels = rotation_batch(x)
    assert labels.tolist() == [0, 1, 2, 3]
    assert images[0, 0].tolist() == [[1, 2], [3, 4]]
    assert images[1, 0].tolist() == [[2, 4], [1, 3]]  # 90 degrees counter-clockwise (np.rot90, as UnNAS)
    assert images[2, 0].tolist() == [[4, 3], [2, 1]]
    assert images[3, 0].tolist() == [[3, 1], [4, 2]]


def _loader(seed: int = 3) -> DeviceLoader:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (20, 3, 6, 6), dtype=torch.uint8, generator=g)
    return DeviceLoader(images, torch.arange(20), batch_size=4, seed=seed, augment="crop_flip", pad=1)


def test_seeded_batch_images_and_labels_exact():
    """Every batch is the wrapped loader's (seeded) batch at k quarter turns in block k, labelled k."""
    plain, rotated = _loader(), RotationLoader(_loader())
    assert len(rotated) == len(plain) == 5
    for (x, _), (xr, yr) in zip(plain.epoch(2), rotated.epoch(2), strict=True):
        b = len(x)
        assert xr.shape == (4 * b, 3, 6, 6)
        assert yr.tolist() == [k for k in range(4) for _ in range(b)]
        for k in range(4):
            assert torch.equal(xr[k * b:(k + 1) * b], torch.rot90(x, k, dims=(2, 3)))
    # the stored labels are dropped: the same images with other labels give the same rotated batch
    other = DeviceLoader(_loader().images, torch.zeros(20, dtype=torch.long), 4, seed=3, augment="crop_flip", pad=1)
    for (xa, ya), (xb, yb) in zip(RotationLoader(other).epoch(0), rotated.epoch(0), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_resume_mid_epoch_gives_the_same_batches():
    full = list(RotationLoader(_loader()).epoch(1))
    tail = list(RotationLoader(_loader()).epoch(1, start_batch=3))
    assert len(tail) == 2
    for (xa, ya), (xb, yb) in zip(full[3:], tail, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other_seed = next(RotationLoader(_loader(seed=4)).epoch(1))[0]
    assert not torch.equal(full[0][0], other_seed)


def test_search_loaders_rotate_both_splits():
    data = SplitData(_loader().images, torch.arange(20), {"normalization": None})
    train, val = search_loaders(data, 4, seed=0, split="other_half", num_train=12, rotation=True)
    (xt, yt), (xv, yv) = next(train.epoch(0)), next(val.epoch(0))
    assert xt.shape[0] == yt.shape[0] == 16 and xv.shape[0] == yv.shape[0] == 16
    assert set(yt.tolist()) == set(yv.tolist()) == {0, 1, 2, 3}


def test_rotation_refused_for_noise_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="data.label.*rotation.*rlrn is noise.*data=digits") as e:
        compose_config(smoke_overrides(tmp_path, "data=rlrn", "data.label=rotation"))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="data.label.*rotation"):
        compose_config(smoke_overrides(tmp_path, "data=digits", "data.label=rotate"))


@pytest.mark.parametrize("data", ["digits", "rlgd"])
def test_rotation_reads_the_sources_own_dataset_and_names_its_run(tmp_path, data):
    own = compose_config(smoke_overrides(tmp_path, f"data={data}"))
    rot = compose_config(smoke_overrides(tmp_path, f"data={data}", "data.label=rotation"))
    assert dataset_dir(rot) == dataset_dir(own)  # no second copy of the images, no 4x storage
    assert search_run_id(rot).startswith(f"darts-{data}-rot-s0-") and search_run_id(rot) != search_run_id(own)
    assert architecture_name(("darts", data, "rotation", 4)) == f"UnNAS-DARTS-{data.upper()} (rotation labels)"


@pytest.mark.parametrize("method", ["darts", "darts2", "sgas_c1"])
def test_rotation_search_end_to_end(tmp_path, method):
    """A search on the digits' rotations: 4 classes, result.json names the label, true-label defaults."""
    extra = [f"search={method}", *TINY, *(["search.sgas.warmup_dec_epoch=0"] if method.startswith("sgas") else [])]
    run_dir = run_search(compose_config(smoke_overrides(tmp_path, "data=digits", "data.label=rotation", *extra)))
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed" and result["search_label"] == "rotation"
    assert result["num_classes"] == 4 and len(result["alphas"]["normal"]) == 14
    assert result["hparams"] == {"weight_decay": 3e-4, "arch_weight_decay": 1e-3, "split": "other_half"}
    assert 0.0 <= result["metrics"]["train_acc"] <= 100.0  # counted over the 4 rotated copies
    assert result["method"] == method and run_dir.name.startswith(f"{method}-digits-rot-s0-")
    if method.startswith("sgas"):
        assert result["sgas"]["num_decisions"] >= 1  # the decision grew the rotated loaders' batch too
    assert run_search(compose_config(smoke_overrides(tmp_path, "data=digits", "data.label=rotation", *extra))) == run_dir


def test_rotation_seeds_pack_into_one_network(tmp_path):
    """seeds=[0,1] runs both rotation searches in one process, each in the run directory of its seed=N."""
    from unrealnas.search.run import run_search_seeds

    cfg = compose_config(smoke_overrides(tmp_path, "data=digits", "data.label=rotation", *TINY, "seeds=[0,1]"))
    dirs = run_search_seeds(cfg, [0, 1], lambda _m: None)
    assert [d.name for d in dirs] == [search_run_id(compose_config(smoke_overrides(
        tmp_path, "data=digits", "data.label=rotation", *TINY, f"seed={s}"))) for s in (0, 1)]
    for d in dirs:
        result = json.loads((d / "result.json").read_text())
        assert result["search_label"] == "rotation" and result["num_classes"] == 4 and result["seeds_in_process"] == 2
