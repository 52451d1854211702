"""GPU requests that fit: every array is checked against its partition's GRES before anything is submitted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.unit.pipeline.test_pipeline import _smoke
from unrealnas.cli import main as cli
from unrealnas.errors import UserError
from unrealnas.launch.gres import check_gpu_requests, gpus_in_gres, partition_gpus


def _fake_slurm(tmp_path: Path, monkeypatch, gres: str) -> Path:
    """sinfo answers with ``gres`` for a default partition 'debug'; sbatch records every call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch-calls"
    scripts = {
        "sinfo": f"#!/bin/sh\necho 'debug*|{gres}'\n",
        "squeue": "#!/bin/sh\nexit 0\n",
        "srun": "#!/bin/sh\nexit 0\n",
        "sbatch": f"#!/bin/sh\necho \"$@\" >> {calls}\necho 'Submitted batch job 1'\n",
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        os.chmod(bin_dir / name, 0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return calls


def test_gres_strings():
    assert gpus_in_gres("(null)") == 0
    assert gpus_in_gres("gpu:a100:4(S:0-1)") == 4
    assert gpus_in_gres("gpu:a100:4(S:0-1),gpu:v100:2,shard:8") == 6
    assert gpus_in_gres("gpu:8") == 8


def test_a_request_the_partition_cannot_meet_is_one_line(tmp_path, monkeypatch):
    _fake_slurm(tmp_path, monkeypatch, "(null)")
    assert partition_gpus(None) == ("debug", 0)
    cpu = {"name": "slurm", "gpus_per_node": 0, "partition": None}
    check_gpu_requests([("generate", cpu)])  # no GPU asked: fine
    with pytest.raises(UserError, match=r"array 'search': launcher.gpus_per_node=1 but partition debug has no GPUs"):
        check_gpu_requests([("generate", cpu), ("search", {**cpu, "gpus_per_node": 1})])
    check_gpu_requests([("search", {**cpu, "name": "local", "gpus_per_node": 8})])  # local: not SLURM's business


def test_pipeline_refuses_before_submitting_any_array(tmp_path, monkeypatch, capsys):
    calls = _fake_slurm(tmp_path, monkeypatch, "gpu:a100:2(S:0)")
    base = [o for o in _smoke(tmp_path) if o != "launcher=local"]
    rc = cli.main(["pipeline", *base, "launcher=slurm", "launcher.gpus_per_node=4"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "launcher.gpus_per_node=4" in err and "2 GPU(s)" in err
    assert not calls.exists()  # not even the generate array went out


def test_smoke_experiment_asks_for_no_gpu(tmp_path):
    from unrealnas.config import compose_config
    from unrealnas.pipeline.plan import plan_pipeline

    overrides = [o for o in _smoke(tmp_path) if o != "launcher=local"] + ["launcher=slurm"]
    plan = plan_pipeline(compose_config(overrides), overrides)
    assert {s.name: int(s.launcher.gpus_per_node) for s in plan.stages} == dict.fromkeys(
        ["generate", "search", "retrain", "table"], 0)
