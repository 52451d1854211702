"""ImageNet retraining: ImageFolder smoke run, empty ImageFolder error, LR scaling, DDP (gloo) equivalence."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import smoke_overrides
from PIL import Image

from unrealnas.cli.main import main
from unrealnas.config import compose_config
from unrealnas.dist import DistEnv, detect_env, expand_nodelist
from unrealnas.train.retrain import loop_options, run_retrain
from unrealnas.train.targets.registry import build_target

TINY = ("train=imagenet", "train.layers=3", "train.init_channels=4", "train.batch_size=4", "train.resolution=16",
        "genotype=DARTS_V2", "device=cpu")


def make_image_folder(root: Path, classes: int = 2, per_class: int = 4, side: int = 20) -> Path:
    """A train/ and val/ ImageFolder tree of random JPEGs."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for c in range(classes):
            d = root / split / f"n0000{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (side, side + 3, 3), dtype=np.uint8)).save(d / f"{i}.JPEG")
    return root


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("imagenet"))


def test_imagefolder_smoke_retrain(tmp_path, imagenet_root):
    cfg = compose_config(smoke_overrides(tmp_path, *TINY, f"train.root={imagenet_root}"))
    run_dir = run_retrain(cfg)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed" and result["target"] == "imagenet"
    assert set(result["metrics"]) == {"top1_err", "top5_err"}
    # Linear scaling: 0.5 at a global batch of 1024 -> 0.5 * 4 / 1024.
    assert result["lr"] == pytest.approx(0.5 * 4 / 1024) and result["global_batch"] == 4


def test_empty_image_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "empty" / "train" / "n01").mkdir(parents=True)
    (tmp_path / "empty" / "val" / "n01").mkdir(parents=True)
    rc = main(["retrain", *smoke_overrides(tmp_path, *TINY, f"train.root={tmp_path / 'empty'}")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "ImageFolder" in err[0]


def test_lr_scales_with_actual_global_batch(tmp_path, imagenet_root):
    cfg = compose_config(smoke_overrides(tmp_path, *TINY, f"train.root={imagenet_root}"))
    env = DistEnv(rank=1, world_size=2)
    from unrealnas.train.retrain import target_spec

    target = build_target("imagenet", target_spec(cfg, torch.device("cpu"), env))
    assert target.per_rank_batch == 2
    assert loop_options(cfg, torch.device("cpu"), target, env).lr == pytest.approx(0.5 * 4 / 1024)


def test_detect_env_sources():
    assert detect_env({}) == DistEnv()
    tr = detect_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1234"})
    assert (tr.rank, tr.world_size, tr.local_rank, tr.master_addr, tr.master_port, tr.source) == (3, 8, 1, "h", 1234,
                                                                                                  "torchrun")
    slurm = {"SLURM_PROCID": "9", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "16", "SLURM_LOCALID": "1",
             "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "123"}
    s = detect_env(slurm)
    assert (s.rank, s.world_size, s.local_rank, s.master_addr, s.master_port) == (9, 16, 1, "gpu07", 15123)
    # In the batch script itself (no srun step) a single process runs.
    assert detect_env({**slurm, "SLURM_STEP_ID": "batch"}).world_size == 1
    assert detect_env({"RANK": "0", "WORLD_SIZE": "2", "UNREALNAS_DIST": "off"}).world_size == 1
    assert expand_nodelist("a[01-03,7],b1") == ["a01", "a02", "a03", "a7", "b1"]


# ------------------------------------------------------------------ DDP: two gloo ranks == one process
# BN layers are put in eval mode (running statistics) so each sample's output does not depend on the
# other samples of its batch: then the mean loss over two equal halves, averaged by DDP's all-reduce,
# has exactly the gradient of the mean loss over the concatenated batch, and one SGD step (momentum,
# weight decay, grad clip after the all-reduce) must give the same parameters up to float rounding.
# Drop path is 0; the auxiliary head is on (its loss is part of both sides).

DDP_SCRIPT = r"""
import sys, torch
from unrealnas import dist
from unrealnas.models import build_network
from unrealnas.nas.genotype import KNOWN_GENOTYPES
from unrealnas.train.loop import LoopOptions, build_optimizer, train_step

out = sys.argv[1]
env = dist.init_distributed(torch.device("cpu"))
torch.manual_seed(0)
x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
model = build_network("cifar", KNOWN_GENOTYPES["DARTS_V2"], 4, 5, 3)
model.train()
for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        m.eval()
opts = LoopOptions(epochs=1, lr=0.1, weight_decay=3e-4, grad_clip=5.0, aux_weight=0.4)
if env.distributed:
    half = len(x) // env.world_size
    x, y = x[env.rank * half:(env.rank + 1) * half], y[env.rank * half:(env.rank + 1) * half]
    model = torch.nn.parallel.DistributedDataParallel(model)
opt = build_optimizer(model, opts)
for _ in range(2):
    train_step(model, opt, x, y, opts)
net = model.module if env.distributed else model
if env.rank == 0:
    torch.save(net.state_dict(), out)
dist.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_equals_one_process(tmp_path):
    script = tmp_path / "ddp_step.py"
    script.write_text(DDP_SCRIPT)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    base["OMP_NUM_THREADS"] = "1"
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "one.pt")], env=base, capture_output=True,
                            text=True, timeout=120)
    assert single.returncode == 0, single.stderr
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "two.pt")],
                              env={**base, "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    a = torch.load(tmp_path / "one.pt", weights_only=True)
    b = torch.load(tmp_path / "two.pt", weights_only=True)
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), k


@pytest.mark.ffcv
def test_ffcv_imagenet_smoke_retrain(tmp_path, imagenet_root):
    """train.loader=ffcv writes the .beton files once and trains from them (own process: FFCV forks)."""
    pytest.importorskip("ffcv")
    import shutil

    root = tmp_path / "imagenet"
    shutil.copytree(imagenet_root, root)
    args = [sys.executable, "-m", "unrealnas", "retrain", *smoke_overrides(tmp_path, *TINY, f"train.root={root}",
                                                                          "train.loader=ffcv", "train.num_workers=1")]
    out = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    run_dir = Path(out.stdout.strip().splitlines()[-1])
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed" and set(result["metrics"]) == {"top1_err", "top5_err"}
    meta = json.loads((root / "ffcv" / "train_256.beton.json").read_text())
    assert meta["num_images"] == 8 and meta["bytes"] == (root / "ffcv" / "train_256.beton").stat().st_size
