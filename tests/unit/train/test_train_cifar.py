"""Retraining on CIFAR: smoke run, resume equals uninterrupted, checkpoint errors, schedules, augmentation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import smoke_overrides

from unrealnas.cli.main import main
from unrealnas.config import compose_config
from unrealnas.errors import CheckpointError
from unrealnas.nas.genotype import KNOWN_GENOTYPES
from unrealnas.train.loop import LoopOptions, lr_factor
from unrealnas.train.retrain import run_retrain
from unrealnas.train.targets.cifar import augment_batch

TINY = ("train.layers=3", "train.init_channels=4", "train.batch_size=8", "train.max_images=24",
        "train.max_eval_images=16", "device=cpu")


def _cfg(tmp_path, cifar_root, *extra):
    return compose_config(smoke_overrides(tmp_path, f"data.root={cifar_root}", "genotype=DARTS_V2", *TINY, *extra))


def _weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def test_smoke_retrain_writes_result(tmp_path, cifar_root, capsys):
    rc = main(["retrain", *smoke_overrides(tmp_path, f"data.root={cifar_root}", "genotype=DARTS_V2", *TINY)])
    assert rc == 0
    captured = capsys.readouterr()
    run_dir = tmp_path / "runs" / "train" / captured.out.strip().split("/")[-1]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["kind"] == "train" and result["status"] == "completed" and result["target"] == "cifar10"
    assert 0 <= result["metrics"]["top1_err"] <= 100 and "top5_err" in result["metrics"]
    assert result["params_m"] > 0 and result["cpu_hours"] > 0 and result["wall_s"] > 0
    assert result["precision"] == "fp32"  # train.amp=auto: bf16 on CUDA only
    # the fixture's files are not the official ones: recorded and warned
    assert result["data_files_official"] is False and "do not match the official md5s" in captured.err
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0]["drop_path"] == 0.0 and rows[1]["drop_path"] == pytest.approx(0.1)
    assert (run_dir / "config.yaml").is_file()
    mtime = (run_dir / "result.json").stat().st_mtime_ns
    assert main(["retrain", *smoke_overrides(tmp_path, f"data.root={cifar_root}", "genotype=DARTS_V2", *TINY)]) == 0
    assert (run_dir / "result.json").stat().st_mtime_ns == mtime  # a finished run is a no-op


def test_resume_ends_with_same_weights(tmp_path, cifar_root):
    straight = run_retrain(_cfg(tmp_path, cifar_root, "train.run_id=straight"))
    cfg = _cfg(tmp_path, cifar_root, "train.run_id=killed")
    killed = run_retrain(cfg, stop_after=1)  # the "kill": stop after one epoch, no result.json
    assert not (killed / "result.json").exists()
    assert json.loads((killed / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 1
    # A row appended after the checkpoint by a killed writer is dropped on resume.
    with open(killed / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "torn": true}\n')
    run_retrain(cfg)
    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and "torn" not in rows[1]


def test_checkpoint_of_another_genotype_is_refused(tmp_path, cifar_root, capsys):
    run_dir = run_retrain(_cfg(tmp_path, cifar_root, "train.run_id=shared"), stop_after=1)
    before = (run_dir / "checkpoint.pt").read_bytes()
    path = tmp_path / "v1.json"
    KNOWN_GENOTYPES["DARTS_V1"].save(path)
    with pytest.raises(CheckpointError, match="another genotype"):
        run_retrain(compose_config(smoke_overrides(tmp_path, f"data.root={cifar_root}", f"genotype={path}",
                                                   *TINY, "train.run_id=shared")))
    assert (run_dir / "checkpoint.pt").read_bytes() == before
    (run_dir / "checkpoint.pt").write_bytes(before[: len(before) // 2])  # truncated by a crash of the disk
    rc = main(["retrain", *smoke_overrides(tmp_path, f"data.root={cifar_root}", "genotype=DARTS_V2", *TINY,
                                           "train.run_id=shared")])
    # the fixture's CIFAR files are not the official ones: their md5 warning may come first
    err = [line for line in capsys.readouterr().err.strip().splitlines() if " WARNING " not in line]
    assert rc == 2 and len(err) == 1 and "corrupt" in err[0]


def test_bad_inputs_are_one_line(tmp_path, cifar_root, capsys):
    for extra in (["genotype=nope.json"], ["genotype=DARTS_V2", "train.schedule=step"],
                  ["genotype=DARTS_V2", "train.root=/nonexistent"], ["genotype=DARTS_V2", "train.batch_size=0"]):
        assert main(["retrain", *smoke_overrides(tmp_path, *extra)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:"), err


def test_lr_schedules():
    cos = LoopOptions(epochs=10, lr=0.1, lr_min=0.01)
    assert lr_factor(0, cos) == 1.0 and lr_factor(10, cos) == pytest.approx(0.1)
    assert lr_factor(5, cos) == pytest.approx(0.1 + 0.9 * 0.5)
    exp = LoopOptions(epochs=10, lr=0.5, schedule="exp", lr_gamma=0.97, warmup_epochs=2)
    assert [lr_factor(e, exp) for e in range(4)] == pytest.approx([0.5, 1.0, 1.0, 0.97])
    assert lr_factor(9, exp) == pytest.approx(0.97 ** 7)
    assert math.isclose(lr_factor(3, LoopOptions(epochs=5, lr=1, schedule="constant")), 1.0)


def test_augment_batch_crop_flip_cutout():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).remainder(256).to(torch.uint8).view(2, 3, 8, 8)
    zero, one = torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.bool)
    mean, std = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    # Offset (pad, pad) with no flip and no cutout is the identity.
    same = augment_batch(x, zero + 4, zero + 4, ~one, zero, zero, mean, std, cutout=0)
    assert torch.equal(same, x.float() / 255)
    flipped = augment_batch(x, zero + 4, zero + 4, one, zero, zero, mean, std, cutout=0)
    assert torch.equal(flipped, (x.float() / 255).flip(3))
    shifted = augment_batch(x, zero, zero, ~one, zero, zero, mean, std, cutout=0)
    assert torch.all(shifted[:, :, :4, :] == 0) and torch.equal(shifted[:, :, 4:, 4:], x[:, :, :4, :4].float() / 255)
    cut = augment_batch(x.clamp(max=254) + 1, zero + 4, zero + 4, ~one, zero + 4, zero + 4, mean, std, cutout=4)
    assert torch.all(cut[:, :, 2:6, 2:6] == 0) and int((cut == 0).sum()) == 2 * 3 * 16


def test_evaluate_run_dir(tmp_path, cifar_root, capsys):
    run_dir = run_retrain(_cfg(tmp_path, cifar_root))
    result = json.loads((run_dir / "result.json").read_text())
    assert main(["evaluate", str(run_dir)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["epoch"] == 2 and out["top1_err"] == pytest.approx(result["metrics"]["top1_err"])
    assert main(["evaluate", str(tmp_path)]) == 2


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_matches(tmp_path, cifar_root):
    """A real kill: SIGKILL the CLI during epoch 2 (after checkpoint 1), re-run, compare with a straight run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [sys.executable, "-m", "unrealnas", "retrain",
            *smoke_overrides(tmp_path, f"data.root={cifar_root}", "genotype=DARTS_V2", *TINY,
                             "train.max_images=96", "train.epochs=3")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = subprocess.run([*args, "train.run_id=straight"], env=env, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    run_dir = tmp_path / "runs" / "train" / "killed"
    p = subprocess.Popen([*args, "train.run_id=killed"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while not (run_dir / "checkpoint.pt").exists():
        assert p.poll() is None
        time.sleep(0.05)
    time.sleep(0.3)  # inside epoch 2
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not (run_dir / "result.json").exists()
    again = subprocess.run([*args, "train.run_id=killed"], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    a, b = _weights(tmp_path / "runs" / "train" / "straight"), _weights(run_dir)
    for k in a:
        assert torch.equal(a[k], b[k]), k
