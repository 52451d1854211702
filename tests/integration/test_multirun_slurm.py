"""``unrealnas <verb> -m`` on a real one-node SLURM cluster: ONE array per sweep, GPU requests checked first.

Reuses the ``cluster`` fixture of tests/integration/test_slurm_cluster.py (a GPU-less node).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import smoke_overrides
from tests.integration.test_slurm_cluster import cluster  # noqa: F401  (the fixture)
from tests.unit.search.test_search_run import TINY
from unrealnas.cli import main as cli
from unrealnas.launch import status
from unrealnas.launch.records import RECORD_FILE

pytestmark = pytest.mark.slurm
SLURM = ["launcher=slurm", "launcher.cpus_per_task=1", "launcher.time_min=10"]


def _wait(runs: Path, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        states = [t.state for t in status(runs).tasks]
        if states and all(s in ("done", "failed") for s in states):
            return
        time.sleep(2)


def test_a_sweep_is_one_array_and_a_gpu_request_the_node_lacks_is_refused(cluster, tmp_path, capsys):  # noqa: F811
    args = ["generate", "-m", "seed=0,1", "data=rlrn,rlgd", *smoke_overrides(tmp_path, *TINY), *SLURM]
    # The node has no GPU GRES: asking for one (the default gpus_per_node=1) submits nothing.
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "launcher.gpus_per_node=1" in err and err.count("\n") == 1
    assert not (tmp_path / "runs" / "slurm").exists()

    assert cli.main([*args, "launcher.gpus_per_node=0"]) == 0
    (record,) = (tmp_path / "runs" / "slurm" / "generate").glob(f"*/{RECORD_FILE}")
    tasks = json.loads(record.read_text())["tasks"]
    assert len(tasks) == 4 and len({t["job_id"].split("_")[0] for t in tasks}) == 1  # ONE array of 4
    _wait(tmp_path / "runs")
    assert [t.state for t in status(tmp_path / "runs").tasks] == ["done"] * 4
    assert cli.main([*args, "launcher.gpus_per_node=0"]) == 0
    assert "nothing to submit" in capsys.readouterr().err
