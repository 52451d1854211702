"""Packed seeds: S searches in one process equal S single runs, resume exactly, and refuse bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import smoke_overrides
from unrealnas.config import compose_config
from unrealnas.errors import ConfigError
from unrealnas.io import read_jsonl
from unrealnas.nas.supernet import SuperNet
from unrealnas.search.packed import run_packed, seed_config
from unrealnas.search.packed_net import PackedSuperNet, packed_losses, seed_slice
from unrealnas.search.run import FAULT_ENV, run_search, search_run_dir

TINY = ["search.layers=3", "search.init_channels=2", "search.resolution=8", "search.batch_size=8",
        "data.num_images=64", "data.num_classes=10", "search.warmup_epochs=1", "search.epochs=2",
        # 1e-3 randn alphas (the reference's init): zero-init alphas after 8 tiny steps hold argmax
        # ties at the 1e-6 level, where fp32 rounding of grouped kernels may pick either op
        "search.alpha_init=randn"]
SGAS = ["search=sgas_c2", "search.epochs=3", "search.sgas.warmup_dec_epoch=1", "search.sgas.decision_freq=1"]


def _overrides(tmp_path, *extra):
    return smoke_overrides(tmp_path, *TINY, *extra)


def _result(run_dir):
    return json.loads((run_dir / "result.json").read_text())


def test_packed_net_matches_each_supernet():
    """Logits, losses and every weight and alpha gradient of each seed equal its own SuperNet's."""
    nets = []
    for s in range(3):
        torch.manual_seed(s)
        nets.append(SuperNet(2, 10, 3, alpha_init="randn"))
    packed = PackedSuperNet(nets)
    x, y = torch.randn(8, 3, 3, 9, 9), torch.randint(0, 10, (8, 3))
    alphas = [torch.stack([getattr(n, a).detach() for n in nets]).requires_grad_() for a in ("alpha_normal", "alpha_reduce")]
    loss = packed_losses(packed(x.view(8, 9, 9, 9), tuple(torch.softmax(a, -1) for a in alphas)), y)
    names = [n for n, _ in packed.named_parameters()]
    grads = torch.autograd.grad(loss.sum(), [*packed.parameters(), *alphas])
    for s, net in enumerate(nets):
        ref = net.loss(x[:, s], y[:, s])
        params = dict(net.named_parameters())
        ref_grads = torch.autograd.grad(ref, [params[n] for n in names] + net.arch_parameters())
        assert float(loss[s].detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
        for g, r in zip(grads[:-2], ref_grads[:-2], strict=True):
            torch.testing.assert_close(seed_slice(g, 3, s, r.shape), r, rtol=1e-4, atol=1e-6)
        for i in range(2):
            torch.testing.assert_close(grads[-2 + i][s], ref_grads[-2 + i], rtol=1e-4, atol=1e-7)


def test_fused_packed_net_equals_per_edge_packed_net_in_train_and_eval():
    """The fused packed cells (seed axis in the edge blocks) compute the per-edge packed network's math:
    logits and every gradient, the BN running statistics a training forward writes, eval-mode logits."""
    nets = []
    for s in range(2):
        torch.manual_seed(10 + s)
        nets.append(SuperNet(2, 10, 3, alpha_init="randn"))
    fused, ref = PackedSuperNet(nets), PackedSuperNet(nets, fused=False)
    assert fused.fused and not ref.fused
    x = torch.randn(4, 6, 9, 9)  # odd side: FactorizedReduce pads
    w = tuple(torch.softmax(torch.randn(2, 14, 8), -1).requires_grad_() for _ in range(2))
    w[0].data[1, 3] = torch.nn.functional.one_hot(torch.tensor(2), 8).float()  # a decided edge's row
    outs, grads = [], []
    for net in (fused, ref):
        out = net(x, w)
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), [*net.parameters(), *w]))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-6)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    ref_buffers = dict(ref.named_buffers())
    for name, b in fused.named_buffers():
        torch.testing.assert_close(b, ref_buffers[name], rtol=1e-5, atol=1e-6, msg=name)
    fused.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x, w), ref(x, w), rtol=1e-4, atol=1e-6)


def test_packed_five_seeds_on_paper_supernet_dispatch_at_most_1_2x_one_fused_single():
    """Paper supernet (8 cells, 16 channels): a first-order packed S=5 iteration <= 7,500 ops, 1.2x fused S=1."""
    from unrealnas.benchmarks.opcount import count_ops
    from unrealnas.benchmarks.packed import packed_iteration
    from unrealnas.benchmarks.search import build_search_bench, search_iteration

    cfg = compose_config(["preset=paper", "device=cpu"])
    device = torch.device("cpu")
    step, pack = packed_iteration(cfg, 5, device, 2)
    assert pack.net.fused and len(pack.net.cells) == 8 and pack.net.cell_channels[0] == 16
    step()  # lazy state (plans, index tensors, momentum buffers)
    packed = count_ops(step).total
    b = build_search_bench(cfg.search, int(cfg.data.num_classes), 3, 32, device, "baseline", seed=0, batch_size=2)
    search_iteration(b, device)
    single = count_ops(lambda: search_iteration(b, device)).total
    assert b.model.fused and packed <= 7_500 and packed <= 1.2 * single, (packed, single)


@pytest.mark.parametrize("method", ["darts", "sgas_c2"])
def test_packed_equals_single_runs(tmp_path, method):
    """seeds=[0,1] writes the run dirs of seed=0 and seed=1 with the same alphas, genotypes and metrics."""
    # 2 decision epochs: later SGAS decisions at this size are near ties that fp32 rounding can flip
    extra = [*SGAS, "search.epochs=2"] if method.startswith("sgas") else []
    cfg = compose_config(_overrides(tmp_path / "p", *extra, "seeds=[0,1]"))
    dirs = run_packed(cfg, [0, 1])
    for seed, d in zip([0, 1], dirs, strict=True):
        single = run_search(compose_config(_overrides(tmp_path / "s", *extra, f"seed={seed}")))
        assert d.name == single.name
        a, b = _result(d), _result(single)
        assert a["genotype_json"] == b["genotype_json"]
        for t in ("normal", "reduce"):
            torch.testing.assert_close(torch.tensor(a["alphas"][t]), torch.tensor(b["alphas"][t]), rtol=0, atol=1e-4)
        if method.startswith("sgas"):
            assert a["sgas"]["edge_ops"] == b["sgas"]["edge_ops"] and a["sgas"]["num_decisions"] >= 2
        ra, rb = read_jsonl(d / "metrics.jsonl"), read_jsonl(single / "metrics.jsonl")
        assert [r["epoch"] for r in ra] == [r["epoch"] for r in rb]
        assert [r["train_loss"] for r in ra] == pytest.approx([r["train_loss"] for r in rb], rel=1e-4)
        assert [r["val_acc"] for r in ra] == pytest.approx([r["val_acc"] for r in rb], abs=1e-6)
        # the per-seed checkpoint is an ordinary one: its weights within rounding (12 SGD steps amplify it)
        ca = torch.load(d / "checkpoint.pt", weights_only=True)["model"]
        cb = torch.load(single / "checkpoint.pt", weights_only=True)["model"]
        for k, v in cb.items():  # ops switched off by SGAS included: left alone as in the single run
            if v.is_floating_point():
                torch.testing.assert_close(ca[k], v, rtol=1e-3, atol=1e-3)
            else:
                assert torch.equal(ca[k], v), k


@pytest.mark.slow  # ~30 s on 2 cores: two packed searches and a killed subprocess
def test_packed_sigkill_resumes_like_uninterrupted(tmp_path):
    extra = [*SGAS, "search.checkpoint_every=2"]
    straight = run_packed(compose_config(_overrides(tmp_path / "a", *extra, "seeds=[0,1]")), [0, 1])
    overrides = _overrides(tmp_path / "b", *extra, "seeds=[0,1]")
    cmd = [sys.executable, "-m", "unrealnas", "search", *overrides]
    killed = subprocess.run(cmd, env={**os.environ, FAULT_ENV: "7"}, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming at epoch" in resumed.stderr and "packing 2 seeds" in resumed.stderr
    cfg = compose_config(overrides)
    for seed, ref in zip([0, 1], straight, strict=True):
        run_dir = search_run_dir(seed_config(cfg, seed))
        a, b = _result(ref), _result(run_dir)
        assert a["alphas"] == b["alphas"] and a["genotype_json"] == b["genotype_json"]
        assert a["sgas"]["edge_ops"] == b["sgas"]["edge_ops"]
        rows = read_jsonl(run_dir / "metrics.jsonl")
        assert [r["epoch"] for r in rows] == list(range(4))
        assert [r["train_loss"] for r in rows] == pytest.approx([r["train_loss"] for r in read_jsonl(ref / "metrics.jsonl")],
                                                                rel=1e-6)


def test_bad_seed_lists_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="distinct"):
        run_search(compose_config(_overrides(tmp_path, "seeds=[1,1]")))
    with pytest.raises(ConfigError, match="darts2"):
        run_search(compose_config(_overrides(tmp_path, "search=darts2", "seeds=[0,1]")))
    base = [sys.executable, "-m", "unrealnas", "search", *_overrides(tmp_path)]
    cases = ((["seeds=[0,1]", "seed=3"], "either the list or one seed"), (["seeds=[2,2]"], "distinct"),
             (["search.cuda_graph=on"], "needs a CUDA device"), (["search.cuda_graph=yes"], "auto, on or off"))
    for args, needle in cases:
        out = subprocess.run(base + args, capture_output=True, text=True)
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], out.stderr
    assert not (tmp_path / "runs").exists()


def _pipeline_plan(tmp_path, *extra):
    from unrealnas.pipeline import plan_pipeline

    ovs = ["+experiment=smoke", "launcher=local", f"paths.runs={tmp_path / 'runs'}", f"paths.data={tmp_path / 'data'}",
           *[o for o in TINY if not o.startswith("data.num_classes")], "experiment.datasets=[rlrn]",
           "experiment.seeds=[0,1,2]", *extra]
    if not any(o.startswith("experiment.methods=") for o in extra):
        ovs.append("experiment.methods=[darts]")  # the smoke overlay also has random cells (never packed)
    return plan_pipeline(compose_config(ovs), ovs)


def test_pipeline_packs_the_seeds_of_a_cell(tmp_path):
    """pack_seeds=2 over seeds 0,1,2: tasks seeds=[0,1] and seed=2, writing the same run dirs as unpacked."""
    from unrealnas.launch.task import planned_run_dir, run_task

    single = _pipeline_plan(tmp_path, "launcher.pack_seeds=1").stage("search").tasks
    packed = _pipeline_plan(tmp_path, "launcher.pack_seeds=2").stage("search").tasks
    assert [t.overrides[-1] for t in single] == ["seed=0", "seed=1", "seed=2"]
    assert [t.overrides[-1] for t in packed] == ["seeds=[0,1]", "seed=2"]
    assert [packed[0].run_dir, *packed[0].more_run_dirs, packed[1].run_dir] == [t.run_dir for t in single]
    assert planned_run_dir("search", packed[0].overrides) == packed[0].run_dir
    assert not packed[0].is_complete()
    run_task(packed[0])
    assert packed[0].is_complete() and single[0].is_complete() and single[1].is_complete()
    assert not single[2].is_complete()
    # darts2 cannot be packed: its cells keep one task per seed
    d2 = _pipeline_plan(tmp_path, "launcher.pack_seeds=2", "experiment.methods=[darts2]").stage("search").tasks
    assert [t.overrides[-1] for t in d2] == ["seed=0", "seed=1", "seed=2"]


def test_pack_seeds_default_and_bad_value(tmp_path):
    from unrealnas.launch.packing import resolve_pack_seeds

    assert resolve_pack_seeds(compose_config(["device=cpu"])) == 1
    assert resolve_pack_seeds(compose_config(["device=cuda"])) == 5
    assert resolve_pack_seeds(compose_config(["launcher=slurm", "launcher.gpus_per_node=0"])) == 1
    with pytest.raises(ConfigError, match="pack_seeds=0"):
        _pipeline_plan(tmp_path, "launcher.pack_seeds=0")


def test_bench_rows_five_packed_seeds_dispatch_about_the_ops_of_one():
    from unrealnas.benchmarks.packed import packed_rows

    cfg = compose_config(["preset=smoke", "device=cpu", *TINY[:3], "data.num_classes=10"])
    rows = packed_rows(cfg, torch.device("cpu"), [1, 5], steps=1, warmup=2, batch_size=2)
    assert [(r["engine"], r["seeds"]) for r in rows] == [("single", 1), ("packed", 1), ("packed", 5)]
    assert rows[2]["ops_per_iter"] <= 1.2 * rows[1]["ops_per_iter"]
    assert rows[2]["ops_per_iter"] <= 1.2 * rows[0]["ops_per_iter"]  # five packed seeds: the ops of one fused single
    assert all(r["kernel_ops"] < r["ops_per_iter"] and r["images_per_s"] > 0 for r in rows)


def test_packed_checkpoint_resumes_as_a_single_run(tmp_path, monkeypatch):
    """Each seed's checkpoint is an ordinary one: a pack stopped after epoch 1, each seed finished by
    `seed=N` alone, ends like a single run of that seed."""
    from unrealnas.search.packed import PackedSearch

    real_run = PackedSearch.run

    def stop_after_first_epoch(self):
        for r in self.runs:
            r.total_epochs = 1
        real_run(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(PackedSearch, "run", stop_after_first_epoch)
    cfg = compose_config(_overrides(tmp_path / "p", "seeds=[0,1]"))
    with pytest.raises(KeyboardInterrupt):
        run_packed(cfg, [0, 1])
    monkeypatch.setattr(PackedSearch, "run", real_run)
    for seed in (0, 1):
        said = []
        resumed = run_search(seed_config(cfg, seed), said.append)
        assert any("resuming at epoch 1 batch 0" in m for m in said), said
        single = run_search(compose_config(_overrides(tmp_path / "s", f"seed={seed}")))
        a, b = _result(resumed), _result(single)
        assert a["genotype_json"] == b["genotype_json"]
        for t in ("normal", "reduce"):
            torch.testing.assert_close(torch.tensor(a["alphas"][t]), torch.tensor(b["alphas"][t]), rtol=0, atol=1e-4)
        assert [r["epoch"] for r in read_jsonl(resumed / "metrics.jsonl")] == [0, 1, 2]
