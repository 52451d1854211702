"""search=pcdarts on the engine: results with betas, exact resume, packed seeds equal single runs, bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import smoke_overrides
from unrealnas.atomic import read_jsonl
from unrealnas.config import compose_config
from unrealnas.nas.genotype import Genotype, derive_genotype
from unrealnas.search.engine import run_seeds
from unrealnas.search.run import run_search
from unrealnas.search.state import FAULT_ENV, search_run_dir

# 3 cells of 2, 4, 8 channels on 8 px images; K = 2 so that the ops see 1, 2, 4 channels
TINY = ["search=pcdarts", "search.pc_k=2", "search.layers=3", "search.init_channels=2", "search.resolution=8",
        "search.batch_size=8", "data.num_images=64", "data.num_classes=10", "search.warmup_epochs=1",
        "search.epochs=2"]


def _overrides(tmp_path, *extra):
    return smoke_overrides(tmp_path, *TINY, *extra)


def _result(run_dir):
    return json.loads((run_dir / "result.json").read_text())


def test_pcdarts_search_writes_betas_and_a_beta_ranked_genotype(tmp_path):
    """result.json carries the betas beside the alphas, the genotype is the one alphas x normalised betas
    select, the checkpoint holds the betas and their Adam state."""
    run_dir = run_search(compose_config(_overrides(tmp_path)))
    result = _result(run_dir)
    assert result["status"] == "completed" and result["method"] == "pcdarts"
    betas = {t: torch.tensor(result["betas"][t]) for t in ("normal", "reduce")}
    alphas = {t: torch.tensor(result["alphas"][t]) for t in ("normal", "reduce")}
    assert all(b.shape == (14,) and b.abs().sum() > 0 for b in betas.values())  # the search moved them
    g = Genotype.load(run_dir)
    assert g == derive_genotype(alphas["normal"], alphas["reduce"], 4, betas=(betas["normal"], betas["reduce"]))
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert torch.equal(ckpt["model"]["beta_normal"], betas["normal"])
    assert len(ckpt["architect"]["optimizer"]["state"]) == 4  # Adam state of 2 alphas + 2 betas
    assert ckpt["model"]["cells.0.edges.0.ops.4.op.0.op.1.weight"].shape[0] == 1  # sep3 on 2 / K = 1 channel
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["phase"] for r in rows] == ["warmup", "search", "search"]
    # the id hashes pc_k for pcdarts only
    other = search_run_dir(compose_config(_overrides(tmp_path, "search.pc_k=1")))
    assert other.name != run_dir.name


@pytest.mark.slow  # two tiny searches and a killed subprocess
def test_pcdarts_sigkill_mid_epoch_resumes_to_identical_alphas_and_betas(tmp_path):
    extra = ["search.epochs=3", "search.checkpoint_every=2"]
    straight = run_search(compose_config(_overrides(tmp_path / "a", *extra)))
    overrides = _overrides(tmp_path / "b", *extra)
    cmd = [sys.executable, "-m", "unrealnas", "search", *overrides]
    killed = subprocess.run(cmd, env={**os.environ, FAULT_ENV: "11"}, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    run_dir = search_run_dir(compose_config(overrides))
    assert not (run_dir / "result.json").exists() and (run_dir / "checkpoint.pt").exists()
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming at epoch 2 batch 2" in resumed.stderr
    a, b = _result(straight), _result(run_dir)
    assert a["alphas"] == b["alphas"] and a["betas"] == b["betas"] and a["genotype_json"] == b["genotype_json"]
    ra, rb = read_jsonl(straight / "metrics.jsonl"), read_jsonl(run_dir / "metrics.jsonl")
    assert [r["train_loss"] for r in rb] == pytest.approx([r["train_loss"] for r in ra], rel=1e-6)


def test_pcdarts_packed_seeds_equal_single_runs(tmp_path):
    """seeds=[0,1] on one engine gives each seed the alphas, betas and genotype of its own run."""
    dirs = run_seeds(compose_config(_overrides(tmp_path / "p", "seeds=[0,1]")), [0, 1], lambda _m: None)
    for seed, d in zip([0, 1], dirs, strict=True):
        single = run_search(compose_config(_overrides(tmp_path / "s", f"seed={seed}")))
        a, b = _result(d), _result(single)
        assert d.name == single.name and (a["seeds_in_process"], b["seeds_in_process"]) == (2, 1)
        assert a["genotype_json"] == b["genotype_json"]
        for key in ("alphas", "betas"):
            for t in ("normal", "reduce"):
                torch.testing.assert_close(torch.tensor(a[key][t]), torch.tensor(b[key][t]), rtol=0, atol=1e-4)


def test_pcdarts_bad_input_is_one_line(tmp_path):
    base = [sys.executable, "-m", "unrealnas", "search", *smoke_overrides(tmp_path), "search=pcdarts"]
    cases = [
        (["search.pc_k=3"], "search.pc_k=3"),  # 4 smoke channels do not split in 3
        (["search.pc_k=0"], "search.pc_k=0"),
        (["+search.unrolled=true"], "first order only"),
        (["search.supernet=per_edge"], "fused supernet"),
    ]
    for args, needle in cases:
        out = subprocess.run(base + args, capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 2, (args, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], (args, out.stderr)


def test_pack_seeds_auto_measures_the_pc_supernet(tmp_path):
    """launcher.pack_seeds=auto sizes a pcdarts search by its own supernet: a third of DARTS's activations
    at the smoke sizes (C/4 channels through the ops), not DARTS's."""
    from unrealnas.search.memory import seed_memory

    kept = {}
    for method in ("darts", "pcdarts"):
        s = compose_config(smoke_overrides(tmp_path, f"search={method}", "search.batch_size=16")).search
        kept[method] = seed_memory(s, 10, 3, 16).retained
    assert kept["pcdarts"] < 0.5 * kept["darts"], kept
