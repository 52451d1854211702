"""The search run: smoke searches, exact resume after SIGKILL, no-op reruns, bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import smoke_overrides
from unrealnas.atomic import read_jsonl
from unrealnas.config import compose_config
from unrealnas.data.generators import generate_dataset
from unrealnas.errors import CheckpointError, DataError
from unrealnas.nas.genotype import Genotype
from unrealnas.search.run import run_search
from unrealnas.search.state import FAULT_ENV, search_run_dir

# a search small enough to run many times: 3 cells, 2 channels, 8 px images
TINY = ["search.layers=3", "search.init_channels=2", "search.resolution=8", "search.batch_size=8",
        "data.num_images=64", "data.num_classes=10", "search.warmup_epochs=1", "search.epochs=2"]


def _cfg(tmp_path, *extra):
    return compose_config(smoke_overrides(tmp_path, *TINY, *extra))


def _valid(run_dir):
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed" and result["kind"] == "search"
    g = Genotype.load(run_dir)
    assert len(g.normal) == 8 and len(g.reduce) == 8 and all(op != "none" for op, _ in g.normal + g.reduce)
    return result, g


@pytest.mark.parametrize("data", ["rlrn", "rlgd"])
def test_smoke_search_on_unreal_data(tmp_path, data):
    """The shipped smoke preset itself, on each generated unreal dataset (minutes on 2 cores)."""
    run_dir = run_search(compose_config(smoke_overrides(tmp_path, f"data={data}")))
    result, _ = _valid(run_dir)
    assert result["search_label"] == "random" and result["num_classes"] == 5000
    assert len(result["alphas"]["normal"]) == 14 and len(result["alphas"]["normal"][0]) == 8
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == list(range(3))
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "alphas_softmax", "genotype",
                "skip_normal", "skip_reduce", "seconds", "images_per_s"):
        assert key in rows[-1]
    assert rows[0]["phase"] == "warmup" and rows[-1]["phase"] == "search"
    assert (run_dir / "genotype.png").stat().st_size > 1000 and (run_dir / "config.yaml").exists()


def test_smoke_search_on_rlrd(tmp_path, cifar_root):
    run_dir = run_search(compose_config(smoke_overrides(tmp_path, "data=rlrd", f"data.root={cifar_root}",
                                                        "data.num_images=null")))
    result, _ = _valid(run_dir)
    assert result["search_data"] == "rlrd" and result["num_classes"] == 1000


def test_warmup_freezes_alphas_and_search_moves_them(tmp_path):
    run_dir = run_search(_cfg(tmp_path, "search.warmup_epochs=1", "search.epochs=1"))
    rows = read_jsonl(run_dir / "metrics.jsonl")
    uniform = [[0.125] * 8] * 14
    assert torch.allclose(torch.tensor(rows[0]["alphas_softmax"]["normal"]), torch.tensor(uniform))
    assert not torch.allclose(torch.tensor(rows[1]["alphas_softmax"]["normal"]), torch.tensor(uniform))


def test_true_labels_use_real_data_defaults(tmp_path, cifar_root):
    run_dir = run_search(_cfg(tmp_path, "data=cifar10", f"data.root={cifar_root}", "data.num_images=null"))
    result = json.loads((run_dir / "result.json").read_text())
    assert result["search_label"] == "true"
    assert result["precision"] == "fp32" and json.loads((run_dir / "provenance.json").read_text())["precision"] == "fp32"
    assert result["hparams"] == {"weight_decay": 3e-4, "arch_weight_decay": 1e-3, "split": "other_half"}


def test_finished_run_is_a_noop(tmp_path):
    cfg = _cfg(tmp_path)
    run_dir = run_search(cfg)
    stamp = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    assert run_search(cfg) == run_dir
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == stamp


@pytest.mark.parametrize("method", ["darts", pytest.param("darts2", marks=pytest.mark.slow), "sgas_c2"])
def test_sigkill_mid_epoch_resumes_to_identical_alphas(tmp_path, method):
    """A search SIGKILLed mid-epoch and re-run ends exactly where an uninterrupted run ends."""
    extra = [f"search={method}", "search.warmup_epochs=1", "search.epochs=3", "search.checkpoint_every=2",
             "search.sgas.warmup_dec_epoch=1", "search.sgas.decision_freq=1"]
    straight = run_search(_cfg(tmp_path / "a", *extra))
    overrides = smoke_overrides(tmp_path / "b", *TINY, *extra)
    cmd = [sys.executable, "-m", "unrealnas", "search", *overrides]
    # 4 batches per epoch: 11 steps = mid-epoch 3, after a checkpoint at step 10 (batch 2)
    killed = subprocess.run(cmd, env={**os.environ, FAULT_ENV: "11"}, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    run_dir = search_run_dir(compose_config(overrides))
    assert not (run_dir / "result.json").exists() and (run_dir / "checkpoint.pt").exists()
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # darts: 4 batches per epoch, killed after step 11 = mid-epoch 3, checkpoint at its batch 2;
    # sgas grows the batch after each decision, so its epochs get shorter
    assert ("resuming at epoch 2 batch 2" if method.startswith("darts") else "resuming at epoch") in resumed.stderr
    a = json.loads((straight / "result.json").read_text())
    b = json.loads((run_dir / "result.json").read_text())
    assert a["alphas"] == b["alphas"] and a["genotype_json"] == b["genotype_json"]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]  # no duplicate rows after the resume
    ref = read_jsonl(straight / "metrics.jsonl")
    assert [r["train_loss"] for r in rows] == pytest.approx([r["train_loss"] for r in ref], rel=1e-6)
    if method.startswith("sgas"):
        assert a["sgas"]["edge_ops"] == b["sgas"]["edge_ops"] and a["sgas"]["num_decisions"] >= 2


def test_dataset_failing_verification_is_refused(tmp_path):
    cfg = _cfg(tmp_path)
    folder = generate_dataset(cfg)
    shard = sorted(folder.glob("train-*.h5"))[0]
    data = bytearray(shard.read_bytes())
    data[-64] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="sha256"):
        run_search(cfg)
    assert not (search_run_dir(cfg) / "checkpoint.pt").exists()


def test_corrupt_or_foreign_checkpoint_is_refused_and_kept(tmp_path):
    cfg = _cfg(tmp_path)
    run_dir = search_run_dir(cfg)
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        run_search(cfg)
    assert (run_dir / "checkpoint.pt").read_bytes() == b"garbage"  # nothing overwritten
    # a checkpoint of another run (other seed) copied into this run directory
    other = run_search(_cfg(tmp_path, "seed=1"))
    (run_dir / "checkpoint.pt").write_bytes((other / "checkpoint.pt").read_bytes())
    with pytest.raises(CheckpointError, match="another"):
        run_search(cfg)


def test_cli_errors_are_one_line(tmp_path):
    base = [sys.executable, "-m", "unrealnas"]
    cases = [
        (["search", "search.method=enas"], "darts, darts2, sgas_c1, sgas_c2, pcdarts, rlnas, random"),
        (["search", "search=enas"], "available: darts, darts2, pcdarts, random, rlnas, sgas_c1, sgas_c2"),
        (["verify", str(tmp_path / "missing")], "does not exist"),
        (["generate", "data=rlrd", "preset=smoke", f"paths.data={tmp_path}", f"data.root={tmp_path}"],
         "cifar-10-batches-py"),
        (["generate", "data.num_classes=1"], "from 2 to"),
        (["nosuchverb"], "unknown verb"),
    ]
    for args, needle in cases:
        out = subprocess.run(base + args, capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 2, (args, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], (args, out.stderr)
