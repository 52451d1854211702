"""Real multi-node DDP on a two-node test cluster (``start.sh --nodes 2``): ``pytest -m slurm``.

Each node is a slurmd in its own network namespace with its own address and hostname, so the
rendezvous, MASTER_ADDR resolution and per-node ranks meet a second host. Needs root (namespaces).
Run inside ``flock /tmp/slurm-cluster.lock``: the module reconfigures the one test cluster and
puts it back (one node) or stops it afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import squeue_ok

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
KIT = REPO / "slurm" / "test-cluster"
SCRIPT = REPO / "slurm" / "retrain_multinode.sbatch"
NODES = ("unas-n1", "unas-n2")  # common.sh: NET_PREFIX-n<i>
RETRAIN = ["train=digits", "preset=smoke", "genotype=DARTS_V2", "device=cpu", "train.epochs=5"]


@pytest.fixture(scope="module")
def two_nodes():
    """The kit's cluster with two namespaced nodes; afterwards back to one node (if it ran) or stopped."""
    if shutil.which("sbatch") is None:
        pytest.skip("sbatch is not installed (see slurm/test-cluster/README.md)")
    if os.geteuid() != 0 or shutil.which("nsenter") is None or shutil.which("ip") is None:
        pytest.skip("a two-node test cluster needs root, ip and nsenter (network namespaces)")
    was_up = squeue_ok()
    proc = subprocess.run([str(KIT / "start.sh"), "--nodes", "2", "--dbd"], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"start.sh --nodes 2 failed:\n{proc.stdout}\n{proc.stderr}")
    cluster_dir = Path(os.environ.get("CLUSTER_DIR", "/tmp/unrealnas-slurm"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(cluster_dir / "etc" / "slurm.conf"))
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
        mp.setenv("UNREALNAS", str(REPO / ".venv" / "bin" / "unrealnas"))
        mp.setenv("OMP_NUM_THREADS", "1")
        yield cluster_dir
    if was_up:  # the one-node cluster the other slurm tests expect
        subprocess.run([str(KIT / "start.sh"), "--dbd"], capture_output=True, timeout=300)
    else:
        subprocess.run([str(KIT / "stop.sh")], capture_output=True, timeout=120)


def _sbatch(tmp_path: Path, run_id: str) -> str:
    cmd = ["sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1",
           "--time=10", "--open-mode=append", f"--output={tmp_path}/job-%j.out", str(SCRIPT), *RETRAIN,
           f"train.run_id={run_id}", f"paths.runs={tmp_path / 'runs'}", f"paths.data={tmp_path / 'data'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def _wait_gone(job_id: str, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    while subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout.strip():
        assert time.time() < deadline, f"job {job_id} still queued after {timeout_s}s"
        time.sleep(1)


def _job_field(job_id: str, key: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return next((w.split("=", 1)[1] for w in out.split() if w.startswith(f"{key}=")), "")


def _result(tmp_path: Path, run_id: str) -> dict:
    return json.loads((tmp_path / "runs" / "train" / run_id / "result.json").read_text())


@pytest.fixture(scope="module")
def straight(two_nodes, tmp_path_factory):
    """One uninterrupted two-node retrain: (folder, job id)."""
    root = tmp_path_factory.mktemp("straight")
    job = _sbatch(root, "straight")
    _wait_gone(job)
    return root, job


def test_two_node_sbatch_is_one_ddp_run_across_both_hosts(straight):
    root, job = straight
    log = (root / f"job-{job}.out").read_text()
    result = _result(root, "straight")
    assert result["status"] == "completed", log[-3000:]
    assert result["world_size"] == 2 and result["hosts"] == list(NODES)  # rank 0 on n1, rank 1 on n2
    assert result["host"] == NODES[0] and result["slurm_job_id"] == job
    assert "2 node(s) unas-n[1-2], 2 task(s)" in log and log.count("2 rank(s) on cpu") == 2
    assert (root / "runs" / "train").iterdir() and len(list((root / "runs" / "train").iterdir())) == 1


def test_killed_node_task_requeues_the_job_and_it_resumes_from_its_checkpoint(straight, tmp_path):
    job = _sbatch(tmp_path, "killed")
    run_dir = tmp_path / "runs" / "train" / "killed"
    deadline = time.time() + 240
    while True:  # wait for the first epoch checkpoint, then kill rank 1 on the second host
        assert time.time() < deadline, "the retrain never checkpointed"
        ckpt = run_dir / "checkpoint.pt"
        if ckpt.is_file():
            try:
                if torch.load(ckpt, weights_only=True)["epoch"] >= 1:
                    break
            except Exception:  # being replaced right now
                pass
        time.sleep(0.3)
    assert not (run_dir / "result.json").exists(), "the retrain finished before it could be killed"
    pids = subprocess.run(["ip", "netns", "pids", NODES[1]], capture_output=True, text=True).stdout.split()
    victims = [int(p) for p in pids if b"retrain" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert victims, f"no retrain task found on {NODES[1]}"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    _wait_gone(job)
    log = (tmp_path / f"job-{job}.out").read_text()
    assert f"job {job}: a task died" in log and "requeueing (restart 1)" in log, log[-3000:]
    assert "resuming at epoch" in log and _job_field(job, "Restarts") == "1"
    result = _result(tmp_path, "killed")
    assert result["status"] == "completed" and result["world_size"] == 2 and result["hosts"] == list(NODES)
    # The data order and every epoch's seed are functions of (seed, epoch, rank): same end as the straight run.
    assert result["metrics"] == _result(straight[0], "straight")["metrics"]
