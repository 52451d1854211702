"""A node lost mid-search on the two-node test cluster (issue 22, item 3): ``pytest -m slurm tests/test_slurm_node_loss.py``.

The node running a search task is set DOWN (``scontrol update NodeName=... State=DOWN``) after the
search has checkpointed: SLURM kills the job and requeues it (batch jobs are requeueable by default,
JobRequeue=1), it starts again on the other node, resumes from the run directory's checkpoint and ends
with the alphas of an uninterrupted search. The node is resumed afterwards.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.integration.test_slurm_multinode import NODES, two_nodes  # noqa: F401  (the fixture)
from unrealnas.launch import Task, status, submit_array

# Not working yet (2026-12-08): with ReturnToService=2 the DOWN node's live slurmd re-registers at
# once, SLURM gives the requeued job the same node 6 s later while the first copy still runs there,
# the launch fails ("Duplicate jobid"), the node drains and the job stays "launch failed requeued
# held". Slow so that CI's SLURM stage does not wait for it; see docs/reliability.md.
pytestmark = [pytest.mark.slurm, pytest.mark.slow,
              pytest.mark.xfail(reason="node loss not handled yet: requeued job held (issue 22, item 3)",
                                strict=False)]

TINY = ["preset=smoke", "search.layers=3", "search.init_channels=2", "search.resolution=8", "search.batch_size=8",
        "data.num_images=64", "data.num_classes=10", "search.warmup_epochs=1", "search.epochs=9",
        "search.checkpoint_every=1", "device=cpu"]


def _squeue(job_id: str) -> tuple[str, str]:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T|%N"], capture_output=True, text=True).stdout
    state, _, node = out.strip().partition("|")
    return state, node


def test_a_node_set_down_mid_search_requeues_the_task_which_resumes_on_the_other_node(two_nodes, tmp_path):  # noqa: F811
    from unrealnas.config import compose_config
    from unrealnas.search.run import run_search, search_run_dir

    straight = run_search(compose_config([*TINY, f"paths.data={tmp_path / 'a'}", f"paths.runs={tmp_path / 'a'}"]))
    overrides = [*TINY, f"paths.data={tmp_path / 'b'}", f"paths.runs={tmp_path / 'b'}"]
    run_dir = search_run_dir(compose_config(overrides))
    launcher = OmegaConf.create({"name": "slurm", "folder": str(tmp_path / "b" / "slurm"), "time_min": 10,
                                 "nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0, "cpus_per_task": 1,
                                 "array_parallelism": 8, "extra": {}})
    (job,) = submit_array([Task("search", overrides, run_dir=run_dir)], launcher, "search")
    deadline = time.time() + 240
    while not (run_dir / "checkpoint.pt").exists():
        assert time.time() < deadline, "the search never checkpointed"
        time.sleep(0.2)
    assert not (run_dir / "result.json").exists(), "the search finished before its node could be lost"
    state, node = _squeue(str(job.job_id))
    assert state == "RUNNING" and node in NODES, (state, node)
    try:
        subprocess.run(["scontrol", "update", f"NodeName={node}", "State=DOWN", "Reason=issue22-node-lost"],
                       check=True)
        seen = set()
        while not (run_dir / "result.json").exists():
            assert time.time() < deadline + 300, f"not finished after the node loss; status states seen: {seen}"
            seen |= {t.state for t in status(tmp_path / "b").tasks}
            time.sleep(0.5)
    finally:
        subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], check=True)
    assert "failed" not in seen, seen  # while requeued, status shows it pending/running, never failed
    prov = json.loads((run_dir / "provenance.json").read_text())
    other = next(n for n in NODES if n != node)
    assert prov["slurm"]["SLURM_JOB_NODELIST"] == other and int(prov["slurm"]["SLURM_RESTART_COUNT"]) >= 1, prov
    a = json.loads((straight / "result.json").read_text())
    b = json.loads((run_dir / "result.json").read_text())
    assert a["alphas"] == b["alphas"] and a["genotype_json"] == b["genotype_json"]
    assert "resuming at epoch" in Path(job.paths.stderr).read_text()
