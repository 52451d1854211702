"""Result collection, tables and figures on hand-made run folders (no training)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from unrealnas.cli import main as cli
from unrealnas.cli.results import cmd_plot, cmd_table
from unrealnas.launch import Task, submit_array
from unrealnas.launch.status import launch_failures
from unrealnas.results.collect import collect_results, parse_group
from unrealnas.results.tables import CSV_COLUMNS, build_table, render, summarize

VERB = f"{__name__}:crash"


def crash(overrides: list[str]) -> None:
    """A retrain stand-in that dies before writing result.json (as a killed job would)."""
    raise RuntimeError("boom before any result")


def _write(runs: Path, stage: str, name: str, **fields) -> Path:
    run = runs / stage / name
    run.mkdir(parents=True, exist_ok=True)
    (run / "result.json").write_text(json.dumps(fields))
    return run


def _train(runs: Path, name: str, data: str, seed: int, top1: float, label: str = "random", classes: int = 5000,
           target: str = "cifar10", **extra) -> Path:
    return _write(runs, "train", name, kind="train", status="completed", method="darts", search_data=data,
                  search_label=label, num_classes=classes, seed=seed, target=target,
                  metrics={"top1_err": top1, "top5_err": top1 / 10}, params_m=4.0 + seed / 10, **extra)


def _search(runs: Path, name: str, data: str, seed: int, gpu_hours: float, label: str = "random",
            classes: int = 5000) -> Path:
    return _write(runs, "search", name, kind="search", status="completed", method="darts", search_data=data,
                  search_label=label, num_classes=classes, seed=seed, target=None,
                  metrics={"val_acc": 10.0 + seed, "skip_normal": 1}, gpu_hours=gpu_hours,
                  alphas={"normal": [[0.0] * 8] * 14, "reduce": [[0.0] * 8] * 14})


@pytest.fixture
def runs(tmp_path) -> Path:
    """RLGD: 3 of 5 retrains completed, one failed (result.json says so); CIFAR-10 control: 5 of 5; junk."""
    runs = tmp_path / "runs"
    for s, err in enumerate([2.5, 2.7, 2.6]):
        _train(runs, f"cifar10-rlgd-s{s}", "rlgd", s, err)
    _write(runs, "train", "cifar10-rlgd-s3", kind="train", status="failed", method="darts", search_data="rlgd",
           search_label="random", num_classes=5000, seed=3, target="cifar10", error="RuntimeError: out of memory\nmore")
    for s in range(5):
        _train(runs, f"cifar10-c10-s{s}", "cifar10", s, 3.0 + s / 10, label="true", classes=10)
    _search(runs, "darts-rlgd-s0", "rlgd", 0, 12.0)
    _search(runs, "darts-rlgd-s1", "rlgd", 1, 36.0)
    (runs / "train" / "torn").mkdir()
    (runs / "train" / "torn" / "result.json").write_text('{"kind": "train", "sta')
    _write(runs, "train", "wrong-kind", kind="eval", status="completed")
    _write(runs, "train", "bad-metric", kind="train", status="completed", method="darts", search_data="rlgd",
           search_label="random", num_classes=5000, seed=9, target="cifar10", metrics={"top1_err": "low"})
    return runs


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_summarize_best_mean_sample_std():
    best, mean, std = summarize([2.5, 2.7, 2.6], "top1_err")
    assert best == 2.5 and mean == pytest.approx(2.6) and std == pytest.approx(0.1)  # ddof=1, not 0.0816
    assert summarize([80.0, 90.0], "auroc")[0] == 90.0  # higher is better
    assert summarize([3.0], "top1_err") == (3.0, 3.0, None)
    assert summarize([], "top1_err") == (None, None, None)


def test_collection_checks_the_schema_and_names_malformed_files(runs):
    collection = collect_results(runs)
    assert len(collection.completed("train")) == 8 and len(collection.failed()) == 1
    assert len(collection.completed("search")) == 2
    problems = "\n".join(collection.problems)
    assert len(collection.problems) == 3
    assert str(runs / "train" / "torn" / "result.json") in problems and "malformed JSON" in problems
    assert "wrong-kind" in problems and "kind='eval'" in problems
    assert "bad-metric" in problems and "metrics.top1_err must be a number" in problems


def test_table_math_flags_and_csv_columns(runs):
    table = build_table(collect_results(runs), repeats=5)
    text = render(table, "csv")
    assert text.splitlines()[0] == ",".join(CSV_COLUMNS)
    rows = {(r["search_data"], r["metric"]): r for r in _rows(text)}
    rlgd = rows[("rlgd", "top1_err")]
    assert (rlgd["method"], rlgd["search_label"], rlgd["num_classes"], rlgd["target"]) == (
        "darts", "random", "5000", "cifar10")
    assert int(rlgd["n"]) == 3 and float(rlgd["best"]) == 2.5
    assert float(rlgd["mean"]) == pytest.approx(2.6) and float(rlgd["std"]) == pytest.approx(0.1)
    assert "incomplete: n=3 of 5" in rlgd["flags"]
    assert str(runs / "train" / "cifar10-rlgd-s3") in rlgd["flags"]  # the failed run is named, not averaged
    control = rows[("cifar10", "top1_err")]
    assert int(control["n"]) == 5 and control["flags"] == ""
    assert float(control["std"]) == pytest.approx(math.sqrt(0.025))
    assert table.cost[("darts", "rlgd", "random", 5000)] == (pytest.approx(1.0), "GPU-days")  # mean 24 h


def test_markdown_and_latex_follow_the_paper_layout(runs):
    table = build_table(collect_results(runs), repeats=5, title="Table 2")
    md = render(table, "markdown")
    assert "| Architecture | CIFAR-10 top-1 err (%) | Params (M) | Search cost (GPU-days) |" in md
    assert "UnrealNAS-DARTS-RLGD (5000 classes) | 2.50 (2.60±0.10) n=3 |" in md
    assert "DARTS-CIFAR10 (true labels) | 3.00 (3.20±0.16) n=5 |" in md
    assert "[1] failed train run" in md and "RuntimeError: out of memory (log:" in md
    assert "more" not in md.split("[1]")[1].split("\n")[0]  # notes stay on one line
    assert "skipped malformed result" in md
    tex = render(table, "latex")
    assert r"\begin{tabular}" in tex and r"2.50 (2.60$\pm$0.10) n=3$^{1,*}$" in tex
    assert r"top-1 err (\%)" in tex and r"\bottomrule" in tex


def test_repeats_default_to_the_largest_group(runs):
    rows = {(r.search_data, r.metric): r for r in build_table(collect_results(runs)).rows}
    # the largest group has 5 runs; RLGD attempted 4 (3 completed + 1 failed)
    assert rows[("rlgd", "top1_err")].expected == 5 and rows[("rlgd", "top1_err")].flags


def test_table_verb_formats_and_reports_malformed_on_stderr(runs, capsys):
    assert cmd_table([str(runs), "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == ",".join(CSV_COLUMNS)
    assert err.count("warning: skipped malformed result") == 3 and "torn/result.json" in err
    assert cmd_table([str(runs), "format=latex", "repeats=5"]) == 0
    assert r"\begin{table}" in capsys.readouterr().out
    assert cmd_table([str(runs), "--format=markdown", f"out={runs / 't.md'}"]) == 0
    assert "UnrealNAS-DARTS-RLGD" in (runs / "t.md").read_text()


def test_table_verb_bad_input_is_one_line(tmp_path, runs, monkeypatch, capsys):
    monkeypatch.setitem(cli.VERBS, "table", ("unrealnas.cli.results", "cmd_table", "tables"))
    assert cli.main(["table", str(runs), "--format", "html"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert cli.main(["table", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_task_killed_without_result_is_flagged_with_its_log(runs):
    launcher = {"name": "local", "folder": str(runs / "slurm"), "nodes": 1, "tasks_per_node": 1}
    dead = runs / "train" / "cifar10-rlgd-s4"
    (job,) = submit_array([Task(VERB, [], run_dir=dead, stage="train", group="cifar10/darts/rlgd/random/c5000")],
                          launcher, "retrain")
    assert job.state == "FAILED"
    failures, _ = launch_failures(runs)
    assert [f.run_dir for f in failures] == [str(dead)]
    assert failures[0].setting == ("darts", "rlgd", "random", 5000) and failures[0].target == "cifar10"
    table = build_table(collect_results(runs), repeats=5, failures=failures)
    (row,) = [r for r in table.rows if r.search_data == "rlgd" and r.metric == "top1_err"]
    assert len(row.notes) == 2 and any(str(job.log_path) in f for f in row.flags)
    assert "boom before any result" in render(table, "markdown")


def test_parse_group():
    assert parse_group("search", "darts/rlrn/random/c10") == (("darts", "rlrn", "random", 10), None)
    assert parse_group("train", "cifar100/sgas_c1/cifar10/true/c10") == (("sgas_c1", "cifar10", "true", 10),
                                                                         "cifar100")
    assert parse_group("train", "test/train") == (None, None)


def test_pretrained_retrain_is_its_own_target(tmp_path):
    runs = tmp_path / "runs"
    for s, pre in ((0, None), (1, "/runs/train/imagenet-x")):
        run = _write(runs, "train", f"chexpert-{s}", kind="train", status="completed", method="darts",
                     search_data="rlrn", search_label="random", num_classes=5000, seed=0, target="chexpert",
                     metrics={"auroc": 80.0 + s})
        (run / "config.yaml").write_text(f"train:\n  target: chexpert\n  pretrained: {pre or 'null'}\n")
    targets = {r.target for r in collect_results(runs).runs}
    assert targets == {"chexpert", "chexpert_pt"}
    md = render(build_table(collect_results(runs)), "markdown")
    assert "CheXpert AUROC (%, per study, last epoch)" in md and "CheXpert (pre-trained) AUROC (%, per study, last epoch)" in md


def _figure_runs(tmp_path: Path) -> Path:
    from unrealnas.nas.genotype import KNOWN_GENOTYPES

    runs = tmp_path / "runs"
    for data, classes in (("rlrn", 10), ("rlrn", 100), ("rlgd", 10)):
        for seed in (0, 1):
            s = _search(runs, f"darts-{data}-c{classes}-s{seed}", data, seed, 1.0, classes=classes)
            KNOWN_GENOTYPES["DARTS_V2"].save(s / "genotype.json")
            (s / "metrics.jsonl").write_text("".join(
                json.dumps({"epoch": e, "skip_normal": min(e, 3), "val_acc": 10.0}) + "\n" for e in range(4)))
            t = _train(runs, f"cifar10-{data}-c{classes}-s{seed}", data, seed, 20.0 + seed, classes=classes)
            (t / "metrics.jsonl").write_text("".join(
                json.dumps({"epoch": e, "train_loss": 2.0 / e, "top1_err": 50.0 / e}) + "\n" for e in (1, 2, 3)))
    _train(runs, "cifar10-control", "cifar10", 0, 25.0, label="true", classes=10)
    return runs


def test_plot_writes_nonempty_png_and_pdf(tmp_path, capsys):
    runs = _figure_runs(tmp_path)
    out = tmp_path / "fig"
    assert cmd_plot([str(runs), f"out={out}"]) == 0
    for stem in ("fig5_skip_connections", "fig6_accuracy_vs_classes", "fig1_learning_curves"):
        for ext in ("png", "pdf"):
            assert (out / f"{stem}.{ext}").stat().st_size > 5000, stem
    cells = sorted((out / "cells").glob("*.png"))
    assert len(cells) == 6 and all(p.stat().st_size > 5000 for p in cells)
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temp files
    assert cmd_plot([str(runs), f"out={out}", "formats=png", "cells=false"]) == 0


def test_plot_without_data_says_what_is_missing(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert cmd_plot([str(tmp_path / "runs")]) == 1
    assert "skipped skip connections vs epoch (Fig. 5)" in capsys.readouterr().err


def test_search_cost_column_has_one_unit_in_its_header():
    from unrealnas.results.tables import Table, _cost_text, cost_header

    a, b = ("darts", "rlrn", "random", 10), ("darts", "rlgd", "random", 10)
    cpu = Table([], {a: (0.5, "CPU-hours"), b: (2.0, "CPU-hours")}, [], [], [])
    assert cost_header(cpu) == "Search cost (CPU-hours)" and _cost_text(cpu, a) == "0.5"
    gpu = Table([], {a: (1.5, "GPU-days")}, [], [], [])
    assert cost_header(gpu) == "Search cost (GPU-days)" and _cost_text(gpu, a) == "1.5"
    mixed = Table([], {a: (0.5, "CPU-hours"), b: (1.0, "GPU-days")}, [], [], [])
    assert cost_header(mixed) == "Search cost (hours)"
    assert (_cost_text(mixed, a), _cost_text(mixed, b)) == ("0.5 (CPU)", "24 (GPU)")


def test_a_zero_cost_random_cell_decides_no_unit_and_reads_0():
    from unrealnas.results.tables import Table, _cost_text, cost_header

    darts, rand = ("darts", "rlrn", "random", 10), ("random", "-", "-", None)
    table = Table([], {darts: (0.02, "CPU-hours"), rand: (0.0, "GPU-days")}, [], [], [])
    assert cost_header(table) == "Search cost (CPU-hours)"  # not "hours" with "(GPU)" on a CPU run
    assert (_cost_text(table, darts), _cost_text(table, rand)) == ("0.02", "0")


def test_without_the_cost_column_the_tables_are_the_same_bytes_for_other_timings(tmp_path):
    from unrealnas.results.tables import render_cost_csv, render_cost_markdown

    def tables(hours: float) -> tuple[str, ...]:
        runs = tmp_path / f"runs{hours}"
        for seed in (0, 1):
            _write(runs, "search", f"s{seed}", kind="search", status="completed", method="darts", search_data="rlrn",
                   search_label="random", num_classes=10, seed=seed, target=None, metrics={"val_acc": 10.0},
                   cpu_hours=hours * (seed + 1))
            _train(runs, f"t{seed}", "rlrn", seed, 3.0 + seed, classes=10)
        table = build_table(collect_results(runs), cost_column=False)
        return (render(table, "markdown"), render(table, "latex"), render(table, "csv"), render_cost_markdown(table),
                render_cost_csv(table))

    a, b = tables(0.5), tables(0.25)
    assert a[:3] == b[:3]  # the result tables hold no measured time
    assert "Search cost" not in a[0] + a[1] and "The measured search cost is in cost.md." in a[0]
    assert "| Search cost (CPU-hours) | Searches |" in a[3] and "| 0.75 | 2 |" in a[3]
    assert a[4].splitlines()[1] == "darts,rlrn,random,10,0.75,CPU-hours,2" and a[3] != b[3]


def test_latex_table_carries_the_differences_to_the_control_and_the_random_cell(tmp_path):
    runs = tmp_path / "runs"
    for seed in (0, 1, 2):
        _train(runs, f"u{seed}", "rlgd", seed, 3.0 + seed / 10, classes=10)
        _train(runs, f"c{seed}", "cifar10", seed, 2.8 + seed / 5, label="true", classes=10)
    tex = render(build_table(collect_results(runs)), "latex")
    assert r"Architecture & Column & $\Delta$ vs true-label control [95\% CI] & $\Delta$ vs random cell [95\% CI] \\" in tex
    row = next(ln for ln in tex.splitlines() if ln.startswith("UnrealNAS-DARTS-RLGD (10 classes) & CIFAR-10 top-1"))
    assert "& +0.10 [" in row and " t n=3 & - \\\\" in row  # paired t over 3 seeds; no random row in this sweep
    assert "ref & -" in tex and "Δ" not in tex and "±" not in tex  # math mode, not raw unicode
    assert tex.index(r"\end{tabular}") < tex.index(r"\begin{tabular}{llcc}") < tex.index(r"\end{table}")
