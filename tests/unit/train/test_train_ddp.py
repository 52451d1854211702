"""A whole retrain launched as two SLURM-style tasks (what ``srun -n2`` sets), gloo on CPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import torch
from test_train_imagenet import _free_port

TINY = ("preset=smoke", "genotype=DARTS_V2", "train.layers=3", "train.init_channels=4", "train.batch_size=8",
        "train.max_images=32", "train.max_eval_images=16", "device=cpu", "train.epochs=1")


def test_srun_style_two_tasks_retrain(tmp_path, cifar_root):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    base.update(OMP_NUM_THREADS="1", MASTER_PORT=str(_free_port()))
    args = [sys.executable, "-m", "unrealnas", "retrain", *TINY, f"data.root={cifar_root}",
            f"paths.runs={tmp_path / 'runs'}"]
    procs = [subprocess.Popen(args, env={**base, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r), "SLURM_STEP_ID": "0",
                                         "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "localhost",
                                         "SLURM_JOB_ID": "42"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    run_dir = tmp_path / "runs" / "train" / "cifar10-darts_v2-s0-smoke"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed" and result["world_size"] == 2 and result["global_batch"] == 8
    assert result["hosts"] == [socket.gethostname()] * 2  # one entry per rank, in rank order
    assert "2 rank(s)" in outs[0][1]
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 1
