"""Row differences with 95% intervals (results.stats): known differences on synthetic result.json files."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from scipy import stats

from unrealnas.results.collect import collect_results
from unrealnas.results.stats import LEGEND, difference
from unrealnas.results.tables import build_table, render

CONTROL = ("darts", "digits", "true", 10)
RLRN = ("darts", "rlrn", "random", 10)
RANDOM = ("random", "-", "-", None)
BASE = [10.0, 12.0, 9.0, 11.0, 13.0]  # control error per seed
NOISE = [0.3, -0.2, 0.1, -0.4, 0.2]


def _write(runs, cell, seed, err, train_seed=None):
    method, data, label, classes = cell
    name = f"{method}-{data}-s{seed}-r{train_seed}"
    folder = runs / "train" / name
    folder.mkdir(parents=True)
    folder.joinpath("result.json").write_text(json.dumps({
        "kind": "train", "status": "completed", "method": method, "search_data": None if data == "-" else data,
        "search_label": None if label == "-" else label, "num_classes": classes, "seed": seed,
        "train_seed": train_seed, "target": "digits", "metrics": {"top1_err": err}}))


def _csv_rows(table):
    return {(r["method"], r["search_data"]): r for r in csv.DictReader(io.StringIO(render(table, "csv")))}


def test_paired_seeds_give_the_paired_t_interval_of_the_known_difference(tmp_path):
    runs = tmp_path / "runs"
    for s, (c, e) in enumerate(zip(BASE, NOISE, strict=True)):
        _write(runs, CONTROL, s, c)
        _write(runs, RLRN, s, c + 2.0 + e)  # 2 points worse than the control, plus known noise
        _write(runs, RANDOM, s, c + 5.0)  # the random cell: 5 points worse, no noise
    table = build_table(collect_results(runs))
    comp = table.comparisons[(RLRN, "digits", "top1_err")]
    expected = stats.ttest_1samp(2.0 + np.array(NOISE), 0.0).confidence_interval(0.95)
    assert comp.control.method == "t" and comp.control.n == 5
    assert comp.control.mean == pytest.approx(2.0 + np.mean(NOISE))
    assert (comp.control.low, comp.control.high) == pytest.approx((expected.low, expected.high))
    assert comp.random.mean == pytest.approx(-3.0 + np.mean(NOISE))
    assert comp.random.high < 0 < comp.control.low  # both differences are real at this noise
    ctrl = table.comparisons[(CONTROL, "digits", "top1_err")]
    assert ctrl.is_control and ctrl.control is None and ctrl.random.mean == pytest.approx(-5.0)
    assert (ctrl.random.low, ctrl.random.high) == pytest.approx((-5.0, -5.0))  # a constant difference
    rows = _csv_rows(table)
    assert rows[("darts", "rlrn")]["vs_control_ci"] == "t"
    assert float(rows[("darts", "rlrn")]["vs_control"]) == pytest.approx(2.0 + np.mean(NOISE))
    assert rows[("darts", "digits")]["vs_control_ci"] == "ref" and rows[("random", "-")]["vs_random_ci"] == "ref"
    md = render(table, "markdown")
    assert LEGEND in md and "| UnrealNAS-DARTS-RLRN (10 classes) | digits top-1 err (%) | +2.00 [" in md


def test_unpaired_seeds_use_a_seeded_bootstrap_with_the_same_bytes_each_time(tmp_path):
    runs = tmp_path / "runs"
    for s, c in enumerate(BASE):
        _write(runs, CONTROL, s, c)
        _write(runs, RLRN, s + 10, c - 1.0)  # other seeds: nothing pairs up
    first = build_table(collect_results(runs))
    diff = first.comparisons[(RLRN, "digits", "top1_err")].control
    assert diff.method == "boot" and diff.mean == pytest.approx(-1.0)
    assert diff.low < -1.0 < diff.high
    assert render(first, "csv") == render(build_table(collect_results(runs)), "csv")
    assert render(first, "markdown") == render(build_table(collect_results(runs)), "markdown")


def test_retrains_of_one_search_are_averaged_before_the_interval(tmp_path):
    runs = tmp_path / "runs"
    for s, c in enumerate(BASE[:3]):
        for r, jitter in ((0, -1.0), (1, 1.0)):  # two retrain seeds per search, mean = c + 3
            _write(runs, CONTROL, s, c, train_seed=r)
            _write(runs, RLRN, s, c + 3.0 + jitter, train_seed=r)
    diff = build_table(collect_results(runs)).comparisons[(RLRN, "digits", "top1_err")].control
    assert (diff.method, diff.n) == ("t", 3)  # 3 search seeds, not 6 runs
    assert (diff.mean, diff.low, diff.high) == pytest.approx((3.0, 3.0, 3.0))


def test_no_reference_rows_means_no_comparison_section(tmp_path):
    runs = tmp_path / "runs"
    for s, c in enumerate(BASE):
        _write(runs, RLRN, s, c)
    table = build_table(collect_results(runs))
    assert table.comparisons == {} and "Δ" not in render(table, "markdown")
    assert difference({0: 1.0}, {0: 2.0}).low is None  # one seed: a difference, no interval
