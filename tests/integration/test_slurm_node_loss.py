"""A node lost mid-search on the two-node test cluster (issue 22, item 3): ``pytest -m slurm tests/test_slurm_node_loss.py``.

The node running a search task loses power after the search has checkpointed: every process of its
network namespace (its slurmd, the job step, the task) is SIGKILLed at once, and the node is set DOWN
(``scontrol update NodeName=... State=DOWN``), as an operator or the controller's health check would.
SLURM requeues the job (batch jobs are requeueable, JobRequeue=1), it starts again on the other node,
resumes from the run directory's checkpoint and ends with the alphas of an uninterrupted search. The
node's slurmd is started again (start.sh) and the node resumed afterwards.

Setting a node DOWN while its slurmd lives is not a node loss: with ReturnToService=2 the slurmd
re-registers at once and the requeued job can be placed beside its still-running first copy.
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

# In CI's SLURM stage: about 45 s (the two-node start, an uninterrupted search and the requeued one).
pytestmark = [pytest.mark.slurm]
KIT = Path(__file__).resolve().parents[2] / "slurm" / "test-cluster"

TINY = ["preset=smoke", "search.layers=3", "search.init_channels=2", "search.resolution=8", "search.batch_size=8",
        "data.num_images=64", "data.num_classes=10", "search.warmup_epochs=1", "search.epochs=9",
        "search.checkpoint_every=1", "device=cpu"]


def _squeue(job_id: str) -> tuple[str, str]:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T|%N"], capture_output=True, text=True).stdout
    state, _, node = out.strip().partition("|")
    return state, node


def _lose_power(node: str) -> None:
    """Every process of ``node`` (its network namespace: slurmd, the job step, the task) dies at once."""
    pids = subprocess.run(["ip", "netns", "pids", node], capture_output=True, text=True, check=True).stdout.split()
    assert pids, f"nothing runs in {node}'s namespace"
    subprocess.run(["kill", "-KILL", *pids], check=False)


def test_a_node_lost_mid_search_requeues_the_task_which_resumes_on_the_other_node(two_nodes, tmp_path):  # noqa: F811
    from unrealnas.config import compose_config
    from unrealnas.search.run import run_search
    from unrealnas.search.state import search_run_dir

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
        _lose_power(node)
        subprocess.run(["scontrol", "update", f"NodeName={node}", "State=DOWN", "Reason=issue22-node-lost"],
                       check=True)
        seen = set()
        while not (run_dir / "result.json").exists():
            assert time.time() < deadline + 300, f"not finished after the node loss; status states seen: {seen}"
            seen |= {t.state for t in status(tmp_path / "b").tasks}
            time.sleep(0.5)
    finally:  # the node comes back: its slurmd started again, then resumed
        subprocess.run([str(KIT / "start.sh"), "--nodes", "2", "--dbd"], capture_output=True, timeout=300)
        subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], check=False)
    assert "failed" not in seen, seen  # while requeued, status shows it pending/running, never failed
    prov = json.loads((run_dir / "provenance.json").read_text())
    other = next(n for n in NODES if n != node)
    assert prov["slurm"]["SLURM_JOB_NODELIST"] == other and int(prov["slurm"]["SLURM_RESTART_COUNT"]) >= 1, prov
    a = json.loads((straight / "result.json").read_text())
    b = json.loads((run_dir / "result.json").read_text())
    assert a["alphas"] == b["alphas"] and a["genotype_json"] == b["genotype_json"]
    assert "resuming at epoch" in Path(job.paths.stderr).read_text()
