"""The pipeline verb with the local launcher: plans of every overlay, a tiny end-to-end run, failures, bad input."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from unrealnas.cli import main as cli
from unrealnas.config import compose_config
from unrealnas.config.compose import available_experiments
from unrealnas.launch import status
from unrealnas.launch.records import RECORD_FILE
from unrealnas.pipeline.plan import plan_pipeline
from unrealnas.pipeline.submit import run_pipeline

# Far below the smoke preset: a 3-cell 2-channel supernet on 8 px images for one epoch, and a 3-cell
# network retrained for one epoch on 24 images; the whole pipeline takes seconds per task.
TINY = ["search.layers=3", "search.init_channels=2", "search.resolution=8", "search.batch_size=8",
        "data.num_images=64", "search.warmup_epochs=0", "search.epochs=1", "train.layers=3",
        "train.init_channels=4", "train.batch_size=8", "train.max_images=24", "train.max_eval_images=16",
        "train.epochs=1", "device=cpu", "experiment.datasets=[rlrn]",
        "experiment.plots=false"]


@pytest.fixture(autouse=True)
def pipeline_verb(monkeypatch):
    """Route ``unrealnas pipeline`` (the CLI table gets the line in its own change)."""
    monkeypatch.setitem(cli.VERBS, "pipeline", ("unrealnas.cli.pipeline", "cmd_pipeline", "run an experiment"))


def _smoke(tmp_path: Path, *extra: str) -> list[str]:
    return ["+experiment=smoke", "launcher=local", f"paths.runs={tmp_path / 'runs'}",
            f"paths.data={tmp_path / 'data'}", *TINY, *extra]


def _records(runs: Path) -> dict[str, int]:
    """Number of submitted arrays per stage."""
    out: dict[str, int] = {}
    for path in (runs / "slurm").glob(f"*/*/{RECORD_FILE}"):
        out[path.parent.parent.name] = out.get(path.parent.parent.name, 0) + 1
    return out


def _csv(runs: Path) -> list[dict[str, str]]:
    with open(runs / "tables" / "smoke" / "table.csv") as f:
        return list(csv.DictReader(f))


def _plan(overrides: list[str]):
    return plan_pipeline(compose_config(overrides), overrides)


def test_local_pipeline_runs_every_stage_then_resubmits_nothing(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert cli.main(["pipeline", *_smoke(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert str(runs / "tables" / "smoke" / "table.md") in out
    assert _records(runs) == {"generate": 1, "search": 1, "retrain": 1, "table": 1}  # one array per stage
    rows = _csv(runs)
    assert {(r["method"], r["search_data"], r["num_classes"], r["target"]) for r in rows} == {
        ("darts", "rlrn", "10", "digits"), ("random", "-", "", "digits")}  # the random cells are a row of their own
    assert all(r["n"] == "2" and r["flags"] == "" for r in rows), rows  # n = the 2 seeds of the smoke overlay
    assert all(t.state == "done" for t in status(runs).tasks)
    results = [json.loads(p.read_text()) for p in (runs / "train").glob("*/result.json")]
    assert sorted((r["method"], r["seed"], r["search_data"]) for r in results) == [
        ("darts", 0, "rlrn"), ("darts", 1, "rlrn"), ("random", 0, None), ("random", 1, None)]
    assert all(r["vs_random_ci"] in ("t", "ref") for r in rows)  # each row against the random cells
    tables = runs / "tables" / "smoke"
    # The smoke tables carry no measured time (experiment.cost_column: false); cost.md does.
    assert "Search cost" not in (tables / "table.md").read_text()
    assert "| Random cell | 0 | 2 | - | - |" in (tables / "cost.md").read_text()
    assert (tables / "cost.csv").read_text().startswith("method,search_data,search_label,num_classes,cost,unit,n\n")

    # Resubmitting the finished sweep submits nothing, not even the table.
    run = run_pipeline(_plan(_smoke(tmp_path)))
    assert all(jobs == [] for jobs in run.jobs.values()), run.jobs
    assert _records(runs) == {"generate": 1, "search": 1, "retrain": 1, "table": 1}


def test_failed_tasks_are_reported_in_status_and_table(tmp_path, capsys):
    runs = tmp_path / "runs"
    overrides = _smoke(tmp_path, "experiment.methods=[darts]")  # a random cell reads no checkpoint
    plan = _plan(overrides)
    for task in plan.stage("search").tasks:
        # A corrupt checkpoint: the search refuses to resume from it and fails at once.
        task.run_dir.mkdir(parents=True)
        (task.run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert cli.main(["pipeline", *overrides]) == 1
    capsys.readouterr()
    failed = {t.name: t for t in status(runs).failures()}
    searches = {t.run_dir.name for t in plan.stage("search").tasks}
    assert searches <= set(failed)
    for name in searches:
        assert "CheckpointError" in Path(failed[name].log).read_text()
    rows = _csv(runs)
    assert rows and all(r["n"] == "0" for r in rows)
    flags = rows[0]["flags"]
    assert "incomplete: n=0 of 2" in flags and all(failed[name].log in flags for name in searches)
    md = (runs / "tables" / "smoke" / "table.md").read_text()
    assert "failed search run" in md and "failed train run" in md


@pytest.mark.parametrize("name, stages", [
    ("smoke", {"generate": 4, "search": 6, "retrain": 6, "table": 1}),
    ("table2", {"generate": 20, "search": 20, "retrain": 40, "table": 1}),
    ("table3", {"generate": 20, "search": 20, "retrain_imagenet": 20, "table": 1}),
    ("table4", {"generate": 20, "search": 20, "retrain_imagenet": 20, "retrain": 20, "finetune": 20, "table": 1}),
    ("table5", {"generate": 15, "search": 30, "retrain": 30, "table": 1}),
    ("classes", {"generate": 110, "search": 110, "retrain": 110, "table": 1}),
    ("mini", {"generate": 20, "search": 25, "retrain": 50, "table": 1}),  # 5 seeds x 2 retrain seeds
    ("skips", {"generate": 20, "search": 20, "table": 1}),
])
def test_every_overlay_plans_one_array_per_stage(tmp_path, cifar_root, name, stages):
    roots = []
    for target in ("imagenet", "chexpert", "chexpert_pt"):
        (tmp_path / target).mkdir()
        roots.append(f"experiment.retrain.{target}.root={tmp_path / target}")
    extra = roots[:1] if name == "table3" else roots if name == "table4" else []
    plan = _plan([f"+experiment={name}", f"paths.runs={tmp_path / 'runs'}", f"data.root={cifar_root}", *extra])
    assert {s.name: len(s.tasks) for s in plan.stages} == stages
    assert plan.repeats == {"smoke": 2, "mini": 10}.get(name, 5)
    assert plan.stage("search").kind == "afterok" and plan.stage("search").after == ("generate",)
    assert plan.stage("table").kind == "afterany"
    search_dirs = {t.run_dir for t in plan.stage("search").tasks}
    for stage in plan.stages[2:-1]:
        assert stage.kind == "afterany"
        for task in stage.tasks:
            genotype = next(o for o in task.overrides if o.startswith("genotype="))
            assert Path(genotype.split("=", 1)[1]) in search_dirs
            assert any(o.startswith("train.run_id=") for o in task.overrides)  # fixed: reruns are skipped
    if name == "table3":
        assert plan.stage("retrain_imagenet").launcher.gpus_per_node == 8
    if name == "table4":
        finetune = plan.stage("finetune")
        assert finetune.after == ("search", "retrain_imagenet")
        pre = next(o for o in finetune.tasks[0].overrides if o.startswith("train.pretrained="))
        assert Path(pre.split("=", 1)[1]) == plan.stage("retrain_imagenet").tasks[0].run_dir
    assert plan.stage("generate").launcher.gpus_per_node == 0


def test_mini_needs_no_data_folder_and_searches_rlrd_on_the_digits(tmp_path):
    plan = _plan(["+experiment=mini", f"paths.runs={tmp_path / 'runs'}"])  # no data.root: everything ships offline
    groups = {t.group for t in plan.stage("search").tasks}
    assert groups == {"darts/rlrn/random/c10", "darts/rlgd/random/c10", "darts/rlrd/random/c10",
                      "darts/digits/true/c10", "random/-/-"}
    cfg = compose_config([*plan.stage("search").tasks[0].overrides])
    assert cfg.data.source == "digits" and cfg.launcher.local_workers == 2 and cfg.train.target == "cifar10"
    retrain = compose_config([*plan.stage("retrain").tasks[0].overrides])
    assert retrain.train.target == "digits" and retrain.train.resolution == 16


def test_table2_and_table3_share_their_searches(tmp_path, cifar_root):
    common = [f"paths.runs={tmp_path / 'runs'}", f"data.root={cifar_root}"]
    (tmp_path / "imagenet").mkdir()
    t2 = _plan(["+experiment=table2", *common])
    t3 = _plan(["+experiment=table3", *common, f"experiment.retrain.imagenet.root={tmp_path}"])
    assert [t.run_dir for t in t2.stage("search").tasks] == [t.run_dir for t in t3.stage("search").tasks]


def test_unknown_experiment_is_one_line_listing_the_valid_ones(tmp_path, capsys):
    assert cli.main(["pipeline", "+experiment=nope", f"paths.runs={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "experiment/nope" in err
    for name in ("classes", "smoke", "table2", "table3", "table4", "table5"):
        assert name in err
    assert cli.main(["pipeline", "launcher=local"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "+experiment=<name>" in err and ", ".join(available_experiments()) in err
    assert cli.main(["pipeline", "experiment=smoke"]) == 2
    assert "+experiment=smoke" in capsys.readouterr().err


def test_axis_overrides_and_missing_data_are_refused(tmp_path, capsys):
    assert cli.main(["pipeline", *_smoke(tmp_path), "seed=3"]) == 2
    assert "experiment.methods / datasets / num_classes / seeds" in capsys.readouterr().err
    assert cli.main(["pipeline", "+experiment=table2", f"paths.runs={tmp_path}", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.root" in err
    assert cli.main(["pipeline", *_smoke(tmp_path), "experiment.methods=[dartz]"]) == 2
    assert "experiment.methods" in capsys.readouterr().err


def test_slurm_launcher_without_slurm_says_so_and_suggests_local(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    overrides = [o for o in _smoke(tmp_path) if o != "launcher=local"]
    assert cli.main(["pipeline", *overrides, "launcher=slurm"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SLURM is not available" in err and "launcher=local" in err
    assert not (tmp_path / "runs").exists()  # nothing written before the check
    for cmd in ("sbatch", "srun"):
        (empty / cmd).write_text("#!/bin/sh\nexit 0\n")
    (empty / "squeue").write_text("#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm controller' >&2\n"
                                  "exit 1\n")
    for p in empty.iterdir():
        os.chmod(p, 0o755)
    assert cli.main(["pipeline", *overrides, "launcher=slurm"]) == 2
    err = capsys.readouterr().err
    assert "not reachable" in err and "launcher=local" in err


def test_dry_run_lists_the_tasks_and_runs_nothing(tmp_path, capsys):
    assert cli.main(["pipeline", *_smoke(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "search: 4 task(s), 4 to run (afterok generate)" in out  # 2 DARTS searches, 2 random cells
    assert "unrealnas retrain" in out and not (tmp_path / "runs").exists()
