"""``train=dataset`` (fit a generated dataset, measured on its training images) and digits at other sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import smoke_overrides

from unrealnas.cli.main import main
from unrealnas.config import compose_config
from unrealnas.data.generators import dataset_dir, generate_dataset
from unrealnas.data.store import load_manifest, read_split
from unrealnas.dist import DistEnv
from unrealnas.errors import DataError
from unrealnas.train.retrain import target_spec
from unrealnas.train.targets.registry import build_target

TINY = ("train.layers=3", "train.init_channels=4", "train.batch_size=16", "data.num_images=40",
        "genotype=DARTS_V2", "device=cpu")


def _target(tmp_path, *extra):
    cfg = compose_config(smoke_overrides(tmp_path, "train=dataset", *TINY, *extra))
    generate_dataset(cfg)
    return cfg, build_target("dataset", target_spec(cfg, torch.device("cpu"), DistEnv()))


@pytest.mark.parametrize("data", ["rlrn", "rlgd"])
def test_dataset_target_serves_the_stored_images_and_evaluates_on_them(tmp_path, data):
    cfg, target = _target(tmp_path, f"data={data}", "data.num_classes=7", "train.max_eval_images=24")
    stored = read_split(dataset_dir(cfg))
    assert target.num_classes == 7 and target.num_train == 40 and target.num_eval == 24
    assert target.steps_per_epoch() == 3  # 16 + 16 + 8: the last partial batch is kept
    batches = list(target.train_batches(0))
    labels = torch.cat([y for _, y in batches])
    assert sorted(labels.tolist()) == sorted(stored["labels"].tolist())  # every image once per epoch
    assert [y.tolist() for _, y in target.train_batches(0)] == [y.tolist() for _, y in batches]  # (seed, epoch)
    assert [y.tolist() for _, y in target.train_batches(1)] != [y.tolist() for _, y in batches]
    x_eval, y_eval = next(iter(target.eval_batches()))
    assert y_eval.tolist() == stored["labels"][:24].tolist()  # the first training images, in order
    assert x_eval.dtype == torch.float32 and x_eval.shape == (24, 3, 32, 32)
    if data == "rlrn":  # noise is stored already standardised: served as is
        assert torch.allclose(x_eval, torch.from_numpy(stored["images"][:24].astype(np.float32)).permute(0, 3, 1, 2))
    else:  # uint8 fractals: CIFAR-normalised (RLGD is mostly black since the 362 px renders: no bound on the mean)
        norm = load_manifest(dataset_dir(cfg))["normalization"]
        raw = torch.from_numpy(stored["images"][:24].astype(np.float32)).permute(0, 3, 1, 2) / 255
        want = (raw - torch.tensor(norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(norm["std"]).view(1, 3, 1, 1)
        assert torch.allclose(x_eval, want, atol=1e-5) and x_eval.std() > 0.1


def test_dataset_target_resizes_to_train_resolution(tmp_path):
    _, target = _target(tmp_path, "data=rlrn", "data.num_classes=5", "train.resolution=16")
    x, _ = next(iter(target.train_batches(0)))
    assert x.shape[-2:] == (16, 16) and target.input_size == 16


def test_retrain_on_a_dataset_folder_and_missing_folder_error(tmp_path, capsys):
    cfg, _ = _target(tmp_path, "data=rlrn", "data.num_classes=5")
    args = ["retrain", *smoke_overrides(tmp_path, "train=dataset", *TINY, "data=rlrn", "data.num_classes=5",
                                        "train.epochs=2", "train.run_id=fit")]
    assert main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "runs" / "train" / "fit" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all("top1_err" in r for r in rows)
    capsys.readouterr()
    assert main(["retrain", *smoke_overrides(tmp_path, "train=dataset", *TINY, "train.root=/no/such/dataset")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/no/such/dataset" in err[0]


def test_digits_take_train_resolution_but_cifar_stays_at_32(tmp_path, cifar_root):
    cfg = compose_config(smoke_overrides(tmp_path, "train=digits", "train.resolution=16", "device=cpu"))
    target = build_target("digits", target_spec(cfg, torch.device("cpu"), DistEnv()))
    x, _ = next(iter(target.train_batches(0)))
    assert x.shape[-2:] == (16, 16) and target.input_size == 16
    cfg = compose_config(smoke_overrides(tmp_path, "train=cifar10", f"data.root={cifar_root}", "train.resolution=16"))
    with pytest.raises(DataError, match="train.resolution=32"):
        build_target("cifar10", target_spec(cfg, torch.device("cpu"), DistEnv()))
