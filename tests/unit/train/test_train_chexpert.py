"""CheXpert: label policies, CSV errors, AUROC vs scikit-learn, smoke run with ImageNet initialisation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import smoke_overrides
from PIL import Image

from unrealnas.cli.main import main
from unrealnas.config import compose_config
from unrealnas.errors import DataError
from unrealnas.train.loop import compute_loss
from unrealnas.train.metrics import auroc_metrics, auroc_per_class
from unrealnas.train.retrain import run_retrain
from unrealnas.train.targets.chexpert import (
    META_COLUMNS,
    OBSERVATIONS,
    PATHOLOGIES,
    map_label,
    read_chexpert_csv,
)

TINY = ("train=chexpert", "train.layers=3", "train.init_channels=4", "train.batch_size=4", "train.resolution=16",
        "genotype=DARTS_V2", "device=cpu", "train.epochs=1")
# Rows cycle through these cells so every pathology column sees 1, 0, -1 and empty.
CELLS = ("1", "0", "-1", "", "1.0", "0.0")


def make_chexpert(root: Path, n_train: int = 8, n_valid: int = 6) -> Path:
    """A CheXpert-v1.0-small folder: train.csv/valid.csv with official columns and small PNG radiographs."""
    ds = root / "CheXpert-v1.0-small"
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("valid", n_valid)):
        rows = []
        for i in range(n):
            rel = f"CheXpert-v1.0-small/{split}/patient{i:05d}/study1/view1_{'frontal' if i % 3 else 'lateral'}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (24, 20), dtype=np.uint8), mode="L").save(root / rel)
            obs = {o: CELLS[(i + j) % len(CELLS)] for j, o in enumerate(OBSERVATIONS)}
            if split == "valid":  # radiologist consensus: 0/1 only, both classes present per column
                obs = {o: str((i + j) % 2) for j, o in enumerate(OBSERVATIONS)}
            rows.append({"Path": rel, "Sex": "Female", "Age": "60",
                         "Frontal/Lateral": "Frontal" if i % 3 else "Lateral", "AP/PA": "AP", **obs})
        with open(ds / f"{split}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[*META_COLUMNS, *OBSERVATIONS])
            w.writeheader()
            w.writerows(rows)
    return ds


@pytest.fixture(scope="module")
def chexpert_root(tmp_path_factory) -> Path:
    return make_chexpert(tmp_path_factory.mktemp("chexpert"))


def test_uncertainty_policies():
    assert [map_label(v, "u_ones") for v in ("1", "0", "-1", "", "-1.0")] == [1, 0, 1, 0, 1]
    assert [map_label(v, "u_zeros") for v in ("1", "0", "-1", "", "1.0")] == [1, 0, 0, 0, 1]
    assert [map_label(v, "ignore") for v in ("1", "0", "-1", "")] == [1, 0, -1, 0]
    with pytest.raises(DataError):
        map_label("2", "u_ones", "x.csv:3")


def test_csv_policies_and_frontal_only(chexpert_root):
    _, ones = read_chexpert_csv(chexpert_root / "train.csv", "u_ones")
    _, zeros = read_chexpert_csv(chexpert_root / "train.csv", "u_zeros")
    paths, ignore = read_chexpert_csv(chexpert_root / "train.csv", "ignore")
    assert ones.shape == (8, len(PATHOLOGIES))
    uncertain = ignore == -1
    assert uncertain.any() and np.all(ones[uncertain] == 1) and np.all(zeros[uncertain] == 0)
    assert np.array_equal(ones[~uncertain], zeros[~uncertain])
    frontal, _ = read_chexpert_csv(chexpert_root / "train.csv", "u_ones", frontal_only=True)
    assert len(frontal) == sum(1 for i in range(8) if i % 3) and all("frontal" in p for p in frontal)


def test_missing_columns_is_one_line(tmp_path, capsys):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.csv").write_text("Path,Sex,Age,Cardiomegaly\nx.png,Male,40,1\n")
    (tmp_path / "ds" / "valid.csv").write_text("Path,Sex,Age,Cardiomegaly\nx.png,Male,40,1\n")
    rc = main(["retrain", *smoke_overrides(tmp_path, *TINY, f"train.root={tmp_path / 'ds'}")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "lacks column(s)" in err[0] and "Frontal/Lateral" in err[0]


def test_auroc_matches_sklearn_hand_made():
    # Column 0: positives 0.9, 0.4 vs negatives 0.3, 0.5 -> 3 of 4 pairs ranked right -> 0.75.
    scores = np.array([[0.9, 0.2], [0.4, 0.8], [0.3, 0.7], [0.5, 0.1]])
    labels = np.array([[1, 0], [1, 1], [0, -1], [0, 0]], dtype=np.float32)
    per = auroc_per_class(scores, labels)
    assert per[0] == pytest.approx(0.75)
    assert per[1] == pytest.approx(1.0)  # the masked row (-1) is left out: 0.8 vs 0.2 and 0.1
    from sklearn.metrics import roc_auc_score

    assert per[0] == pytest.approx(roc_auc_score(labels[:, 0], scores[:, 0]))
    m = auroc_metrics(scores, labels, ("A", "B c"))
    assert m["auroc"] == pytest.approx(87.5) and m["auroc_b_c"] == pytest.approx(100.0)


def test_masked_bce_ignores_uncertain_entries():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    y = torch.tensor([[1.0, -1.0], [0.0, 1.0]])
    loss, _ = compute_loss(logits, y, multilabel=True, aux_weight=0.0, label_smoothing=0.0)
    keep = torch.tensor([[True, False], [True, True]])
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits[keep], y.clamp(min=0)[keep])
    assert torch.allclose(loss, ref)


def test_smoke_run_with_imagenet_init(tmp_path, chexpert_root):
    from test_train_imagenet import make_image_folder

    imagenet = make_image_folder(tmp_path / "imagenet")
    common = ("train.layers=3", "train.init_channels=4", "train.batch_size=4", "train.resolution=16",
              "genotype=DARTS_V2", "device=cpu", "train.epochs=1")
    pre = run_retrain(compose_config(smoke_overrides(tmp_path, "train=imagenet", *common, f"train.root={imagenet}")))
    run_dir = run_retrain(compose_config(smoke_overrides(
        tmp_path, *TINY, f"train.root={chexpert_root}", "train.uncertainty=ignore", f"train.pretrained={pre}")))
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed" and result["target"] == "chexpert"
    per_class = {f"auroc_{p.lower().replace(' ', '_')}" for p in PATHOLOGIES}
    assert set(result["metrics"]) == {"auroc", "auroc_image", "auroc_last", "auroc_best_valid", "best_valid_epoch",
                                      *per_class}
    m = result["metrics"]
    assert 0 <= m["auroc"] <= 100 and m["auroc_last"] == m["auroc"] and m["best_valid_epoch"] == 1
    assert "per study" in result["metric_notes"]["auroc"]


def test_per_study_auroc_takes_the_max_over_views():
    from unrealnas.train.metrics import auroc_per_class, best_on_valid, chexpert_metrics, study_max

    # 4 studies, 2 views each; per image the lateral views (low scores) spoil the ranking
    scores = np.array([[0.9], [0.1], [0.8], [0.2], [0.3], [0.35], [0.4], [0.1]])
    labels = np.array([[1.0], [1.0], [1.0], [1.0], [0.0], [0.0], [0.0], [0.0]])
    groups = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    s, y = study_max(scores, labels, groups)
    assert s[:, 0].tolist() == [0.9, 0.8, 0.35, 0.4] and y[:, 0].tolist() == [1, 1, 0, 0]
    m = chexpert_metrics(scores, labels, ("Edema",), groups)
    assert m["auroc"] == 100.0 and m["auroc_image"] == 100.0 * auroc_per_class(scores, labels)[0] < 100.0
    assert chexpert_metrics(scores, labels, ("Edema",), None)["auroc"] == m["auroc_image"]
    assert best_on_valid([{"epoch": 1, "auroc": 70.0}, {"epoch": 2, "auroc": 75.0}, {"epoch": 3, "auroc": 72.0}]) \
        == (2, 75.0)


def test_chexpert_defaults_follow_the_baseline():
    from unrealnas.config import compose_config

    t = compose_config(["train=chexpert"]).train
    assert (t.resolution, t.uncertainty, t.auxiliary_weight, t.grad_clip) == (320, "u_ones", 0.0, 0.0)


def test_pretrained_of_another_genotype_is_refused(tmp_path):
    from test_train_imagenet import make_image_folder

    from unrealnas.errors import CheckpointError
    from unrealnas.models import build_network
    from unrealnas.nas.genotype import KNOWN_GENOTYPES
    from unrealnas.train.retrain import fingerprint_of, load_pretrained

    imagenet = make_image_folder(tmp_path / "imagenet")
    common = ("train.layers=3", "train.init_channels=4", "train.batch_size=4", "train.resolution=16", "device=cpu",
              "train.epochs=1")
    pre = run_retrain(compose_config(smoke_overrides(tmp_path, "train=imagenet", "genotype=DARTS_V2", *common,
                                                     f"train.root={imagenet}")))
    cfg = compose_config(smoke_overrides(tmp_path, "train=chexpert", *common))
    v2 = build_network("imagenet", KNOWN_GENOTYPES["DARTS_V2"], 4, 5, 3)
    load_pretrained(v2, str(pre), fingerprint_of(cfg, KNOWN_GENOTYPES["DARTS_V2"], 5))
    saved = torch.load(pre / "checkpoint.pt", weights_only=True)["model"]
    assert torch.equal(v2.state_dict()["stem0.0.weight"], saved["stem0.0.weight"])
    v1 = build_network("imagenet", KNOWN_GENOTYPES["DARTS_V1"], 4, 5, 3)
    with pytest.raises(CheckpointError, match="another genotype"):
        load_pretrained(v1, str(pre), fingerprint_of(cfg, KNOWN_GENOTYPES["DARTS_V1"], 5))
