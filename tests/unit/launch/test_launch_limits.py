"""Issue 22 without a cluster: arrays split at the scheduler's limit, and the torch thread count fixed by runtime.threads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unrealnas.cli import main as cli
from unrealnas.config import compose_config
from unrealnas.errors import ConfigError
from unrealnas.launch import Task
from unrealnas.launch import submit as submit_mod
from unrealnas.runtime import apply_threads, threads_of


def _tasks(n: int) -> list[Task]:
    return [Task("tests.unit.launch.test_launch_limits:noop", [f"i={i}"], run_dir=Path(f"/tmp/x/run{i}")) for i in range(n)]


def test_a_stage_above_the_limit_is_split_into_consecutive_arrays_of_at_most_the_limit():
    parts = submit_mod.split_for_arrays(_tasks(250), 100)
    assert [len(p) for p in parts] == [100, 100, 50]
    assert [t for p in parts for t in p] == _tasks(250)  # every task once, in order
    assert [len(p) for p in submit_mod.split_for_arrays(_tasks(100), 100)] == [100]


def test_array_size_is_the_clusters_max_array_size_capped_by_the_launcher_key(monkeypatch):
    monkeypatch.setattr(submit_mod, "_scontrol_config", lambda: {"MaxArraySize": "300", "MaxJobCount": "10000"})
    assert submit_mod.array_size_limit({"max_array_size": None}) == 300
    assert submit_mod.array_size_limit({"max_array_size": 50}) == 50
    assert submit_mod.array_size_limit({"max_array_size": 5000}) == 300  # the cluster's limit wins
    monkeypatch.setattr(submit_mod, "_scontrol_config", dict)  # scontrol missing: SLURM's default
    assert submit_mod.array_size_limit({}) == 1001
    with pytest.raises(ConfigError, match=r"launcher.max_array_size=0 is invalid"):
        submit_mod.array_size_limit({"max_array_size": 0})


def test_the_next_stage_depends_on_every_part():
    class Job:
        def __init__(self, job_id: str) -> None:
            self.job_id = job_id

    jobs = [Job(f"{a}_{i}") for a, n in ((11, 100), (12, 100), (13, 50)) for i in range(n)]
    assert submit_mod.dependency_of(jobs, "afterok").sbatch() == "afterok:11:12:13"


def test_runtime_threads_is_one_by_default_and_zero_follows_the_launcher():
    cfg = compose_config(["preset=smoke"])
    assert threads_of(cfg) == 1
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert apply_threads(0) == 2  # 0: leave what the launcher set
        assert apply_threads(1) == 1 and torch.get_num_threads() == 1
        with pytest.raises(ConfigError, match=r"runtime.threads=-1 is invalid"):
            apply_threads(-1)
    finally:
        torch.set_num_threads(before)


def test_a_search_fixes_and_records_its_thread_count(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # as a launcher giving the task two cores would
        rc = cli.main(["search", "search=random", "preset=smoke", "runtime.threads=1", f"paths.runs={tmp_path}"])
        assert rc == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    (prov,) = (tmp_path / "search").glob("*/provenance.json")
    assert json.loads(prov.read_text())["threads"] == 1


def test_a_bad_thread_count_is_one_line_and_exit_2(tmp_path, capsys):
    rc = cli.main(["search", "search=random", "preset=smoke", "runtime.threads=-2", f"paths.runs={tmp_path}"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("runtime.threads=-2 is invalid" in line for line in err), err
