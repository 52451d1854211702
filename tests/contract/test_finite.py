"""Results are finite or flagged; torn metric lines are skipped, not a reason to drop later rows (item 3)."""

from __future__ import annotations

import importlib
import json
import math

from tests.conftest import smoke_overrides
from unrealnas.atomic import read_jsonl
from unrealnas.cli import main as cli
from unrealnas.config import compose_config
from unrealnas.results.collect import collect_results
from unrealnas.results.tables import build_table, render
from unrealnas.search.state import _trim_metrics, search_run_dir

status_mod = importlib.import_module("unrealnas.launch.status")
TINY = ["search.layers=3", "search.init_channels=2", "search.resolution=8", "search.batch_size=8",
        "data.num_images=64", "data.num_classes=10", "search.warmup_epochs=1", "search.epochs=1"]


def _train(runs, name, err, seed):
    run = runs / "train" / name
    run.mkdir(parents=True)
    # json.dumps writes NaN / Infinity, as Python's json does for a float('nan') metric.
    run.joinpath("result.json").write_text(json.dumps({
        "kind": "train", "status": "completed", "method": "darts", "search_data": "rlrn", "search_label": "random",
        "num_classes": 10, "seed": seed, "target": "cifar10", "metrics": {"top1_err": err}, "cpu_hours": 0.1}))


def test_nonfinite_metrics_fail_the_run_and_stay_out_of_every_mean(tmp_path, capsys):
    runs = tmp_path / "runs"
    _train(runs, "a", 10.0, 0)
    _train(runs, "b", 20.0, 1)
    _train(runs, "c", float("nan"), 2)
    _train(runs, "d", float("-inf"), 3)
    collection = collect_results(runs)
    assert sorted(r.run_dir.name for r in collection.completed("train")) == ["a", "b"]
    failed = {r.run_dir.name: r.error for r in collection.failed()}
    assert failed == {"c": "failed (non-finite metric): metrics.top1_err=nan",
                      "d": "failed (non-finite metric): metrics.top1_err=-inf"}
    table = build_table(collection)
    [row] = table.rows
    assert (row.n, row.best, row.mean) == (2, 10.0, 15.0) and math.isfinite(row.std)
    text = render(table, "markdown")
    table_lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert "non-finite metric" in text and not any("nan" in ln or "inf" in ln for ln in table_lines)
    assert "10.00 (15.00" in table_lines[-1] and "n=2" in table_lines[-1]
    report = status_mod.status(runs)
    states = {t.name: (t.state, t.note) for t in report.tasks}
    assert states["a"] == ("done", "") and states["c"][0] == "failed" and "non-finite" in states["c"][1]
    assert cli.main(["status", str(runs)]) == 1
    assert "failed (non-finite metric): metrics.top1_err=-inf" in capsys.readouterr().out


def test_torn_middle_line_is_skipped_with_a_warning_and_later_rows_kept(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"epoch": e, "loss": 1.0}) for e in range(4)]
    path.write_bytes(("\n".join(rows[:2]) + '\n{"epoch": 2, "lo\n\x80\x81garbage\n' + rows[3] + "\n").encode("latin1"))
    assert [r["epoch"] for r in read_jsonl(path)] == [0, 1, 3]
    err = capsys.readouterr().err
    assert f"warning: {path} line 3 is torn" in err and "line 4" in err
    _trim_metrics(path, 4)  # a resumed search at epoch 4 keeps every whole row and drops only the torn ones
    assert [json.loads(ln)["epoch"] for ln in path.read_text().splitlines()] == [0, 1, 3]
    capsys.readouterr()
    assert read_jsonl(path) == [json.loads(r) for r in (rows[0], rows[1], rows[3])]
    assert capsys.readouterr().err == ""


def test_diverging_search_stops_with_one_line_and_a_failed_result(tmp_path, capsys):
    overrides = smoke_overrides(tmp_path, *TINY, "search.lr=1e30", "search.grad_clip=1e30")
    assert cli.main(["search", *overrides]) == 2
    err = capsys.readouterr().err
    line = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "search loss became" in line[0] and "lower search.lr" in line[0]
    run_dir = search_run_dir(compose_config(overrides))
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "failed" and "diverged" in result["error"]
    assert [r.error for r in collect_results(tmp_path / "runs").failed()] == [result["error"]]
