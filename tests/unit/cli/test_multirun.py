"""Hydra multirun on the CLI: sweep expansion, one task per combination, skipping, one-line refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import unrealnas
from tests.conftest import smoke_overrides
from tests.unit.search.test_search_run import TINY
from unrealnas.cli.main import main
from unrealnas.cli.multirun import plan_multirun
from unrealnas.config.sweep import expand_sweep
from unrealnas.errors import UserError


def test_expand_sweep_follows_hydra_grammar_and_basic_sweeper():
    combos = expand_sweep(["seed=0,1", "data.num_classes=10,100", "preset=smoke"])
    assert combos == [[f"seed={s}", f"data.num_classes={c}", "preset=smoke"] for s in (0, 1) for c in (10, 100)]
    assert [c[0] for c in expand_sweep(["seed=range(2,8,2)"])] == ["seed=2", "seed=4", "seed=6"]
    # glob() sees the options of the config group, as Hydra's sweeper does
    assert expand_sweep(["search=glob(sgas*)"]) == [["search=sgas_c1"], ["search=sgas_c2"]]
    # a later override of the same key replaces the earlier one; a fixed override keeps its text
    assert expand_sweep(["seed=0,1", "seed=5", "~genotype"]) == [["seed=5", "~genotype"]]
    with pytest.raises(UserError, match="empty"):
        expand_sweep(["seed=range(0)"])
    with pytest.raises(UserError, match="interval"):
        expand_sweep(["search.lr=interval(0.1,0.2)"])
    with pytest.raises(UserError, match="bad override"):
        expand_sweep(["seed=[0,1"])
    with pytest.raises(UserError, match="hydra"):
        expand_sweep(["hydra.job.chdir=true"])


@pytest.mark.parametrize("args, message", [
    (["search", "-m", "foo=1,2"], "unknown sweep key 'foo'"),
    (["search", "-m", "seed=range(0)"], "is empty"),
    (["search", "-m", "train.epochs=1,2"], "search does not read train.epochs"),
    (["generate", "-m", "search=darts,sgas_c1"], "generate does not read search"),
    (["search", "-m", "launcher.time_min=1,2"], "one launcher"),
    (["search", "-m", "search=darts,nope"], "available: darts"),
    (["search", "-m", "search.nope=1,2"], "search.nope"),
    (["pipeline", "-m", "seed=0,1"], "experiment.methods"),
    (["search", "seed=0,1"], "add -m"),
    (["search", "-m", "seed=0,1", "hydra.run.dir=x"], "hydra.* settings"),
    (["config", "hydra.verbose=true"], "hydra.* settings"),
])
def test_bad_sweeps_are_one_line_and_submit_nothing(tmp_path, capsys, args, message):
    rc = main([*args, *smoke_overrides(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # no record, no run directory: nothing was submitted


def test_config_multirun_runs_every_combination_locally(tmp_path, capsys):
    assert main(["config", "-m", "seed=3,4", *smoke_overrides(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "seed: 3" in out and "seed: 4" in out
    (record,) = (tmp_path / "runs" / "slurm" / "config").glob("*/tasks.json")
    tasks = json.loads(record.read_text())["tasks"]
    # The launch layer was handed the verb's function, not a CLI verb name.
    assert [t["verb"] for t in tasks] == ["unrealnas.cli.data:cmd_config"] * 2
    assert [t["stage"] for t in tasks] == ["config", "config"]


def test_plan_gives_absolute_paths_and_drops_launcher_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tasks, launcher = plan_multirun("search", "x:y", ["search=darts,sgas_c2", "seed=0,1", "preset=smoke",
                                                      "launcher=local", "launcher.local_workers=2"])
    assert launcher.local_workers == 2 and len(tasks) == 4
    assert all(not o.startswith("launcher") for t in tasks for o in t.overrides)
    assert f"paths.runs={tmp_path / 'runs'}" in tasks[0].overrides
    assert len({t.run_dir for t in tasks}) == 4 and all(t.run_dir.is_absolute() for t in tasks)
    assert {t.group for t in tasks} == {"search=darts", "search=sgas_c2"}  # seeds are repeats of a cell


def test_generate_multirun_runs_then_skips_complete_tasks(tmp_path, capsys):
    args = ["generate", "-m", "seed=0,1", "data=rlrn,rlgd", *smoke_overrides(tmp_path, *TINY)]
    assert main(args) == 0
    folders = capsys.readouterr().out.split()
    assert len(folders) == 4 and all(Path(f, "manifest.json").is_file() for f in folders)
    assert main([*args, "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert "4 task(s), 0 to run" in listing and listing.count("[done]") == 4
    assert main(args) == 0
    assert "nothing to submit" in capsys.readouterr().err
    assert main([*args[:2], "seed=0,1,2", *args[3:], "--dry-run"]) == 0
    assert "6 task(s), 2 to run" in capsys.readouterr().out  # only the new seed is left


def test_bench_comma_options_are_not_sweeps():
    """`bench search methods=darts,darts2` is the bench's own list option, not a Hydra sweep."""
    out = subprocess.run([sys.executable, "-m", "unrealnas", "bench", "search", "preset=smoke", "methods=darts,nope"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "'nope' is not one of" in out.stderr and "sweep" not in out.stderr, out.stderr


def test_no_private_hydra_api():
    """Sweep parsing uses Hydra's public parser only: ``hydra._internal`` changes between releases."""
    package = Path(unrealnas.__file__).parent
    users = [str(p.relative_to(package)) for p in package.rglob("*.py") if "hydra._internal" in p.read_text()]
    assert users == []
