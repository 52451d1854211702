"""The analyses (paper Fig. 1): their numbers on known input, and both commands end to end (local)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import smoke_overrides
from unrealnas.analysis.metrics import (
    accuracy_curve,
    convergence_epoch,
    dataset_silhouette,
    rank_correlation,
    target_score,
)
from unrealnas.analysis.report import write_report
from unrealnas.cli import main as cli
from unrealnas.nas.genotype import sample_genotype
from unrealnas.nas.ops import PRIMITIVES

# A tiny probe net on 64-image datasets, two epochs: seconds per training on 2 CPU cores.
TINY = ["train.layers=3", "train.init_channels=4", "train.batch_size=16", "train.max_images=64",
        "train.max_eval_images=32", "data.num_images=64", "device=cpu", "analysis.silhouette_samples=64"]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


# ---- the numbers ----------------------------------------------------------------------------------------


def test_sampled_architectures_are_valid_seeded_and_varied():
    g = sample_genotype(3)
    assert g == sample_genotype(3) and g != sample_genotype(4)
    for cell in (g.normal, g.reduce):
        assert len(cell) == 8 and all(op in PRIMITIVES and op != "none" for op, _ in cell)
        for node in range(4):
            (_, a), (_, b) = cell[2 * node: 2 * node + 2]
            assert a != b and 0 <= a < node + 2 and 0 <= b < node + 2
    ops = {op for k in range(30) for op, _ in sample_genotype(k).normal}
    assert ops == set(PRIMITIVES) - {"none"}  # every candidate op turns up


def test_kendall_tau_of_known_rankings():
    tau, p = rank_correlation([1, 2, 3, 4, 5], [10, 20, 30, 50, 40])  # one discordant pair of 10
    assert tau == pytest.approx(0.8) and 0 < p < 1
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1])[0] == pytest.approx(-1.0)
    assert math.isnan(rank_correlation([1.0], [2.0])[0])
    with pytest.raises(ValueError, match="paired"):
        rank_correlation([1, 2], [1])


def test_convergence_epoch_on_synthetic_curves():
    t = np.arange(1, 101)
    curve = 100 * (1 - np.exp(-t / 10))
    # 1 - exp(-t/10) >= 0.95 (1 - exp(-10))  <=>  t >= -10 ln(1 - 0.95 (1 - e^-10))
    expected = math.ceil(-10 * math.log(1 - 0.95 * (1 - math.exp(-10))))
    assert convergence_epoch(curve.tolist(), 0.95) == expected == 30
    assert convergence_epoch(curve.tolist(), 0.5) == math.ceil(-10 * math.log(0.5 * (1 + math.exp(-10))))
    # An early spike does not count: accuracy must stay above the line.
    assert convergence_epoch([10, 90, 20, 85, 88, 90], 0.95) == 5
    assert convergence_epoch([50, 50, 50], 0.95) == 1
    assert convergence_epoch([10, 60, 30], 0.95) is None  # ends below the line: not converged
    assert convergence_epoch([], 0.95) is None and convergence_epoch([0.0, 0.0], 0.95) is None


def test_silhouette_is_high_for_separable_labels_and_near_zero_for_random_ones():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 100)
    centres = rng.integers(30, 226, size=(4, 1, 8, 8, 3))
    images = np.clip(centres[labels][:, 0] + rng.normal(0, 12, size=(400, 8, 8, 3)), 0, 255).astype(np.uint8)
    separable, note = dataset_silhouette(images, labels, samples=300, dims=10, seed=0)
    shuffled, _ = dataset_silhouette(images, rng.permutation(labels), samples=300, dims=10, seed=0)
    assert separable > 0.5 and abs(shuffled) < 0.05 and "300 images" in note
    assert dataset_silhouette(images, np.zeros(400, int), samples=50)[0] is None  # one label: undefined


def test_curves_and_scores_read_from_run_files(tmp_path):
    rows = [{"epoch": 1, "train_top1_err": 80.0}, {"epoch": 2, "train_top1_err": 60.0, "top1_err": 55.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert accuracy_curve(tmp_path) == [20.0, 45.0]  # the evaluated accuracy where the epoch has one
    assert target_score({"metrics": {"top1_err": 12.5}}) == 87.5
    assert target_score({"metrics": {"auroc": 81.0}}) == 81.0 and target_score({}) is None


# ---- the reports on synthetic run directories -------------------------------------------------------------


def _fake_fit(run_dir: Path, curve: list[float]) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"epoch": i + 1, "top1_err": 100 - a}) + "\n"
                                                   for i, a in enumerate(curve)))
    (run_dir / "result.json").write_text(json.dumps({"kind": "train", "status": "completed"}))


def test_distinguishability_report_ranks_architectures(tmp_path):
    out = tmp_path / "analysis"
    scores = [70.0, 90.0, 80.0, 60.0, 85.0]  # real-task accuracy of arch 0..4
    plan = {"kind": "distinguishability", "name": "t", "dir": str(out), "seed": 0, "arch_seed": 0,
            "archs": [str(out / f"a{k}") for k in range(5)], "target": "digits", "epochs": 4, "probe_epoch": 3,
            "datasets": [{"name": "agree", "label": "random", "num_classes": 10, "folder": "-"},
                         {"name": "reverse", "label": "random", "num_classes": 10, "folder": "-"}],
            "fits": {}, "targets": {}}
    for k, s in enumerate(scores):
        t = out / "train" / f"digits-arch{k:02d}"
        t.mkdir(parents=True)
        (t / "result.json").write_text(json.dumps({"status": "completed", "metrics": {"top1_err": 100 - s}}))
        plan["targets"][str(t)] = k
        for d, probe in (("agree", s / 2), ("reverse", 100 - s)):
            run = out / "train" / f"{d}-arch{k:02d}"
            _fake_fit(run, [5.0, 10.0, probe, 99.0])  # only epoch 3 (the probe) carries the ranking
            plan["fits"][str(run)] = [k, d]
    shutil_missing = out / "train" / "agree-arch04"  # a failed fit leaves out one pair, not the dataset
    (shutil_missing / "metrics.jsonl").write_text("")
    write_report(plan)
    rows = {r["Dataset"]: r for r in _read_csv(out / "report.csv")}
    assert float(rows["reverse"]["Kendall tau"]) == pytest.approx(-1.0)
    assert float(rows["agree"]["Kendall tau"]) == pytest.approx(1.0) and rows["agree"]["Architectures"] == "4"
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "completed" and result["kind"] == "analysis"
    best = {r["dataset"]: (r["best_arch"], r["worst_arch"]) for r in result["rows"]}
    assert best["reverse"] == ("arch-01", "arch-03")
    assert (out / "figures" / "fig1bd_best_vs_worst.png").stat().st_size > 0
    assert (out / "figures" / "fig1_rank_scatter.pdf").stat().st_size > 0
    assert "| arch-01 | 90.00 |" in (out / "report.md").read_text()


def test_difficulty_report_from_synthetic_curves(tmp_path):
    out = tmp_path / "analysis"
    curves = {"fast": [50.0, 96.0, 98.0, 99.0, 99.0, 99.0], "rising": [5.0, 10.0, 20.0, 40.0, 60.0, 90.0],
              "dipping": [10.0, 50.0, 60.0, 62.0, 61.0, 40.0]}
    plan = {"kind": "difficulty", "name": "t", "dir": str(out), "seed": 0, "arch_seed": 0, "archs": ["probe"],
            "epochs": 6, "convergence_fraction": 0.95, "silhouette_samples": 50, "silhouette_dims": 5,
            "datasets": [{"name": d, "label": "random", "num_classes": 10, "folder": str(tmp_path / "none")}
                         for d in curves], "fits": {}}
    for d, curve in curves.items():
        _fake_fit(out / "train" / f"{d}-arch00", curve)
        plan["fits"][str(out / "train" / f"{d}-arch00")] = [0, d]
    write_report(plan)
    rows = {r["Dataset"]: r for r in _read_csv(out / "report.csv")}
    assert rows["fast"]["Epochs to convergence"] == "2"
    assert rows["rising"]["Epochs to convergence"] == "6 (still rising)"
    assert rows["dipping"]["Epochs to convergence"] == "not converged"
    assert float(rows["fast"]["Best train acc (%)"]) == 99.0 and float(rows["dipping"]["Final train acc (%)"]) == 40.0
    result = json.loads((out / "result.json").read_text())
    assert all(r["silhouette"] is None and r["silhouette_note"].startswith("unavailable") for r in result["rows"])
    assert (out / "figures" / "fig1a_difficulty.png").is_file()


# ---- end to end ----------------------------------------------------------------------------------------------


def test_difficulty_runs_end_to_end_and_resumes(tmp_path, capsys):
    args = ["analyze", "difficulty", *smoke_overrides(tmp_path, *TINY, "analysis.epochs=2")]
    assert cli.main(args) == 0
    out = tmp_path / "runs" / "analysis" / "difficulty-default"
    assert capsys.readouterr().out.strip().endswith(str(out / "report.md"))
    rows = {r["Dataset"]: r for r in _read_csv(out / "report.csv")}
    assert set(rows) == {"digits", "rlrn", "rlgd"}
    assert all(r["Status"] == "completed" and r["Epochs trained"] == "2" for r in rows.values())
    assert float(rows["digits"]["Silhouette"]) > float(rows["rlrn"]["Silhouette"])  # true labels have structure
    assert (out / "figures" / "fig1a_difficulty.png").is_file()
    probe = json.loads((out / "archs" / "arch-00" / "genotype.json").read_text())
    assert probe == sample_genotype(0).to_json()
    before = (out / "report.md").read_bytes()
    assert cli.main(args) == 0  # everything complete: nothing is trained again
    err = capsys.readouterr().err
    assert "generate: nothing to submit" in err and "fit: nothing to submit" in err
    assert (out / "report.md").read_bytes() == before


def test_distinguishability_runs_end_to_end(tmp_path):
    args = ["analyze", "distinguishability",
            *smoke_overrides(tmp_path, *TINY, "analysis.num_archs=3", "analysis.epochs=2", "analysis.probe_epoch=2",
                             "analysis.datasets=[rlrn]", "analysis.target_overrides=['train.epochs=1']")]
    assert cli.main(args) == 0
    out = tmp_path / "runs" / "analysis" / "distinguishability-default"
    result = json.loads((out / "result.json").read_text())
    (row,) = result["rows"]
    assert row["dataset"] == "rlrn" and row["n"] == 3 and -1.0 <= row["tau"] <= 1.0
    archs = result["architectures"]
    assert [a["arch"] for a in archs] == ["arch-00", "arch-01", "arch-02"]
    assert all(a["target_score"] is not None and a["rlrn_probe_acc"] is not None for a in archs)
    for k in range(3):  # every training is an ordinary retrain run, kept out of runs/train
        assert json.loads((out / "train" / f"digits-arch{k:02d}" / "result.json").read_text())["epochs"] == 1
        assert json.loads((out / "train" / f"rlrn-arch{k:02d}" / "result.json").read_text())["epochs"] == 2
    assert not (tmp_path / "runs" / "train").exists()


@pytest.mark.parametrize("extra, message", [
    (["analysis.datasets=[nope]"], "analysis.datasets"),
    (["analysis.num_archs=1"], "analysis.num_archs"),
    (["analysis.probe_epoch=9", "analysis.epochs=3"], "analysis.probe_epoch"),
    (["analysis.target=dataset"], "analysis.target"),
    (["data=rlrn"], "drop 'data=rlrn'"),
    (["analysis.datasets=[rlrd]", "data.root=/no/such/folder"], "data.root"),
])
def test_bad_analysis_settings_fail_on_one_line(tmp_path, capsys, extra, message):
    rc = cli.main(["analyze", "distinguishability", *smoke_overrides(tmp_path, *extra)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # nothing written


def test_analyze_needs_one_kind(capsys):
    assert cli.main(["analyze", "speed"]) == 2
    assert "usage: unrealnas analyze difficulty|distinguishability" in capsys.readouterr().err
