"""The search engine: one iteration equals the readable per-edge oracle, packed seeds equal separate runs."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import smoke_overrides
from tests.darts_reference import Architect
from unrealnas.atomic import read_jsonl
from unrealnas.config import compose_config
from unrealnas.errors import ConfigError
from unrealnas.nas.genotype import UNDECIDED
from unrealnas.nas.supernet import SuperNet, seed_slice
from unrealnas.search.engine import SearchEngine, SeedState, StepSettings, run_seeds, seed_config
from unrealnas.search.run import run_search
from unrealnas.search.state import FAULT_ENV, search_run_dir

torch.set_num_threads(1)

TINY = ["search.layers=3", "search.init_channels=2", "search.resolution=8", "search.batch_size=8",
        "data.num_images=64", "data.num_classes=10", "search.warmup_epochs=1", "search.epochs=2",
        # 1e-3 randn alphas (the reference's init): zero-init alphas after 8 tiny steps hold argmax
        # ties at the 1e-6 level, where fp32 rounding of grouped kernels may pick either op
        "search.alpha_init=randn"]
SGAS = ["search=sgas_c2", "search.epochs=3", "search.sgas.warmup_dec_epoch=1", "search.sgas.decision_freq=1"]
# SGAS state of a 4-node cell: decided edges (one op), pruned edges (0 = none), undecided (-1)
DECIDED_NORMAL = [UNDECIDED, 5, 0, 3, 4, UNDECIDED, 2, 1, UNDECIDED, UNDECIDED, 7, UNDECIDED, 2, 6]
DECIDED_REDUCE = [3, UNDECIDED, 4, UNDECIDED, UNDECIDED, 6, UNDECIDED, UNDECIDED, 0, 3, UNDECIDED, UNDECIDED,
                  UNDECIDED, 1]
LR, MOMENTUM, WD, ARCH_LR, CLIP = 0.05, 0.9, 3e-4, 0.01, 5.0


def _overrides(tmp_path, *extra):
    return smoke_overrides(tmp_path, *TINY, *extra)


def _result(run_dir):
    return json.loads((run_dir / "result.json").read_text())


def seed_net(seed: int, fused: bool = True, decided: bool = False) -> SuperNet:
    torch.manual_seed(seed)
    net = SuperNet(2, 10, 3, alpha_init="randn", fused=fused)
    with torch.no_grad():  # alphas far from uniform so that gradients are not degenerate
        for a in net.arch_parameters():
            a.normal_(0, 0.5)
    if decided and seed % 2:  # odd seeds decided, even ones not: a pack mixes both
        net.set_edge_ops(DECIDED_NORMAL, DECIDED_REDUCE)
    return net


def batches(seeds: int, step: int, n: int = 4, hw: int = 9):
    g = torch.Generator().manual_seed(100 + step)
    return [(torch.randn(n, 3, hw, hw, generator=g), torch.randint(0, 10, (n,), generator=g)) for _ in range(seeds)]


def test_packed_net_matches_each_per_edge_supernet():
    """Logits, losses, every weight and alpha gradient, BN statistics and eval logits of each packed seed
    equal its own per-edge (reference) supernet's."""
    nets = [seed_net(s) for s in range(3)]
    refs = [SuperNet(2, 10, 3, fused=False) for _ in nets]
    for r, n in zip(refs, nets, strict=True):
        r.load_state_dict(n.state_dict())
    packed = SuperNet.pack(nets)
    assert packed.stacked and packed.seeds == 3
    x, y = torch.randn(8, 3, 3, 9, 9), torch.randint(0, 10, (8, 3))  # odd side: FactorizedReduce pads
    w = tuple(torch.softmax(a, -1) for a in packed.arch_parameters())
    logits = packed(x.view(8, 9, 9, 9), w)
    assert logits.shape == (8, 3, 10)
    loss = F.cross_entropy(logits.permute(0, 2, 1), y, reduction="none").mean(0)
    names = [n for n, _ in packed.named_parameters()]
    grads = torch.autograd.grad(loss.sum(), list(packed.parameters()))
    buffers = dict(packed.named_buffers())
    for s, ref in enumerate(refs):
        out = ref(x[:, s])
        torch.testing.assert_close(logits[:, s], out, rtol=1e-4, atol=1e-6)
        params = dict(ref.named_parameters())
        ref_grads = torch.autograd.grad(ref.criterion(out, y[:, s]), [params[n] for n in names])
        for name, g, r in zip(names, grads, ref_grads, strict=True):
            torch.testing.assert_close(seed_slice(g, 3, s, r.shape), r, rtol=1e-4, atol=1e-6, msg=name)
        for name, b in ref.named_buffers():
            if b.is_floating_point():
                torch.testing.assert_close(seed_slice(buffers[name], 3, s, b.shape), b, rtol=1e-5, atol=1e-6,
                                           msg=name)
    packed.eval()
    with torch.no_grad():
        out = packed(x.view(8, 9, 9, 9), w)
    for s, ref in enumerate(refs):
        ref.eval()
        torch.testing.assert_close(out[:, s], ref(x[:, s]), rtol=1e-4, atol=1e-6)


def _engine(nets, method: str) -> SearchEngine:
    states = [SeedState(n, torch.optim.SGD(n.weight_parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD),
                        torch.optim.Adam(n.arch_parameters(), lr=ARCH_LR, betas=(0.5, 0.999)))
              for n in nets]
    return SearchEngine(states, StepSettings(method, CLIP, cuda_graph="off"), torch.device("cpu"))


@pytest.mark.parametrize("seeds", [1, 3])
@pytest.mark.parametrize("method", ["darts", "darts2", "sgas"])
def test_engine_iterations_equal_the_per_edge_oracle(method, seeds):
    """Two iterations (architecture step, then SGD with momentum, weight decay and per-seed clipping) of
    every packed seed equal that seed alone on the per-edge supernet with the reference Architect:
    weights, alphas, BN statistics; the weights and statistics of ops an SGAS decision switched off
    are untouched, as a one-seed search never runs them."""
    decided = method == "sgas"
    nets = [seed_net(s, decided=decided) for s in range(seeds)]
    refs = [seed_net(s, fused=False, decided=decided) for s in range(seeds)]
    before = [copy.deepcopy(r.state_dict()) for r in refs]
    engine = _engine(nets, "darts2" if method == "darts2" else "darts")
    oracles = []
    for r in refs:
        opt = torch.optim.SGD(r.weight_parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
        oracles.append((opt, Architect(r, lr=ARCH_LR, betas=(0.5, 0.999), unrolled=method == "darts2")))
    for step in range(2):
        train, val = batches(seeds, step), batches(seeds, 10 + step)
        x, y = engine.stack(train)
        xv, yv = engine.stack(val)
        losses, _ = engine.step(x, y, xv, yv)
        for s, (r, (opt, arch)) in enumerate(zip(refs, oracles, strict=True)):
            arch.step(*val[s], *train[s], opt)
            opt.zero_grad(set_to_none=True)
            loss = r.loss(*train[s])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(r.weight_parameters(), CLIP)
            opt.step()
            assert float(losses[s]) == pytest.approx(float(loss.detach()), rel=1e-5)
    engine.to_runs()
    for s, (net, ref) in enumerate(zip(nets, refs, strict=True)):
        got, want = net.state_dict(), ref.state_dict()
        for name, t in want.items():
            if t.is_floating_point():
                torch.testing.assert_close(got[name], t, rtol=1e-4, atol=2e-6, msg=f"seed {s} {name}")
            else:
                assert torch.equal(got[name], t), f"seed {s} {name}"
        if decided and s % 2:  # switched-off ops: the per-edge oracle never ran them, the engine restored them
            sep3 = f"cells.0.edges.1.ops.{1 + 3}.op.0.op.1.weight"  # edge 1 is decided to op 5
            assert torch.equal(got[sep3], before[s][sep3])
    # the seeds' optimizer states are ordinary per-seed ones (what a checkpoint stores)
    opt_state = engine.seeds_state[0].optimizer.state
    assert all("momentum_buffer" in opt_state[p] for p in nets[0].weight_parameters())


def test_bad_settings_and_seed_lists_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="distinct"):
        run_search(compose_config(_overrides(tmp_path, "seeds=[1,1]")))
    with pytest.raises(ConfigError, match="per_edge runs one seed"):
        run_search(compose_config(_overrides(tmp_path, "search.supernet=per_edge", "seeds=[0,1]")))
    base = [sys.executable, "-m", "unrealnas", "search", *_overrides(tmp_path)]
    cases = ((["seeds=[0,1]", "seed=3"], "either the list or one seed"), (["seeds=[2,2]"], "distinct"),
             (["search.cuda_graph=on"], "needs a CUDA device"), (["search.cuda_graph=yes"], "choose one of auto, on, off"))
    for args, needle in cases:
        out = subprocess.run(base + args, capture_output=True, text=True)
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], out.stderr
    assert not (tmp_path / "runs").exists()


def test_a_foreign_checkpoint_in_a_pack_is_one_line_and_kept(tmp_path):
    """seed 1's run dir holds a checkpoint of another supernet (more cells): exit 2, one line, nothing written."""
    other = compose_config(_overrides(tmp_path / "o", "search.layers=4", "search.epochs=1", "search.warmup_epochs=0"))
    foreign = run_search(other) / "checkpoint.pt"
    overrides = _overrides(tmp_path, "seeds=[0,1]")
    target = search_run_dir(seed_config(compose_config(overrides), 1))
    target.mkdir(parents=True)
    (target / "checkpoint.pt").write_bytes(foreign.read_bytes())
    out = subprocess.run([sys.executable, "-m", "unrealnas", "search", *overrides], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert "checkpoint" in lines[-1] and str(target) in lines[-1], out.stderr[-2000:]
    assert (target / "checkpoint.pt").read_bytes() == foreign.read_bytes()
    assert not (target / "result.json").exists()


@pytest.mark.parametrize("method", ["darts", "darts2", "sgas_c2"])
def test_packed_equals_single_runs(tmp_path, method):
    """seeds=[0,1] writes the run dirs of seed=0 and seed=1 with the same alphas, genotypes and metrics,
    and records the engine that ran."""
    # 2 decision epochs: later SGAS decisions at this size are near ties that fp32 rounding can flip
    extra = {"sgas_c2": [*SGAS, "search.epochs=2"], "darts2": ["search=darts2"], "darts": []}[method]
    cfg = compose_config(_overrides(tmp_path / "p", *extra, "seeds=[0,1]"))
    dirs = run_seeds(cfg, [0, 1], lambda _m: None)
    for seed, d in zip([0, 1], dirs, strict=True):
        single = run_search(compose_config(_overrides(tmp_path / "s", *extra, f"seed={seed}")))
        assert d.name == single.name
        a, b = _result(d), _result(single)
        assert a["genotype_json"] == b["genotype_json"]
        assert (a["engine"], a["seeds_in_process"], b["seeds_in_process"]) == ("fused", 2, 1)
        assert a["cuda_graph"] == {"cuda_graph": "off", "reason": "no CUDA device (cpu)"}
        prov = json.loads((d / "provenance.json").read_text())
        assert prov["engine"] == "fused" and prov["seeds_in_process"] == 2 and "precision" in json.dumps(prov)
        for t in ("normal", "reduce"):
            torch.testing.assert_close(torch.tensor(a["alphas"][t]), torch.tensor(b["alphas"][t]), rtol=0, atol=1e-4)
        if method.startswith("sgas"):
            assert a["sgas"]["edge_ops"] == b["sgas"]["edge_ops"] and a["sgas"]["num_decisions"] >= 2
        ra, rb = read_jsonl(d / "metrics.jsonl"), read_jsonl(single / "metrics.jsonl")
        assert [r["epoch"] for r in ra] == [r["epoch"] for r in rb]
        assert [sorted(r) for r in ra] == [sorted(r) for r in rb]  # every metrics field, packed or not
        assert [r["train_loss"] for r in ra] == pytest.approx([r["train_loss"] for r in rb], rel=1e-4)
        assert [r["val_acc"] for r in ra] == pytest.approx([r["val_acc"] for r in rb], abs=1e-6)
        assert list((d / "tb").glob("events.out.tfevents.*")), "packed runs write TensorBoard events too"
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
    straight = run_seeds(compose_config(_overrides(tmp_path / "a", *extra, "seeds=[0,1]")), [0, 1], lambda _m: None)
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


def _pipeline_plan(tmp_path, *extra):
    from unrealnas.pipeline.plan import plan_pipeline

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
    # second-order DARTS packs too (per-seed finite differences)
    d2 = _pipeline_plan(tmp_path, "launcher.pack_seeds=2", "experiment.methods=[darts2]").stage("search").tasks
    assert [t.overrides[-1] for t in d2] == ["seeds=[0,1]", "seed=2"]


def test_pack_seeds_default_and_bad_value(tmp_path):
    from unrealnas.launch.packing import resolve_pack_seeds

    assert resolve_pack_seeds(compose_config(["device=cpu"])) == 1
    assert resolve_pack_seeds(compose_config(["device=cuda"])) == 5
    assert resolve_pack_seeds(compose_config(["launcher=slurm", "launcher.gpus_per_node=0"])) == 1
    with pytest.raises(ConfigError, match="pack_seeds=0"):
        _pipeline_plan(tmp_path, "launcher.pack_seeds=0")


def test_packed_checkpoint_resumes_as_a_single_run(tmp_path, monkeypatch):
    """Each seed's checkpoint is an ordinary one: a pack stopped after epoch 1, each seed finished by
    `seed=N` alone, ends like a single run of that seed."""
    from unrealnas.search.engine import SearchLoop

    real_run = SearchLoop.run

    def stop_after_first_epoch(self):
        for r in self.runs:
            r.total_epochs = 1
        real_run(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(SearchLoop, "run", stop_after_first_epoch)
    cfg = compose_config(_overrides(tmp_path / "p", "seeds=[0,1]"))
    with pytest.raises(KeyboardInterrupt):
        run_seeds(cfg, [0, 1], lambda _m: None)
    monkeypatch.setattr(SearchLoop, "run", real_run)
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


def test_engine_graph_replays_equal_eager_and_recapture_only_on_a_decision():
    """The engine's iteration through GraphedStep (a fake CUDA backend on CPU, see test_cuda_graph.py):
    captured once, self-checked, replays equal an eager engine's iterations; an unchanged SGAS state
    keeps the graph, a new decision recaptures; result.json's record says the graph was used."""
    from tests.unit.search.test_cuda_graph import FakeBackend
    from unrealnas.cuda_graph import GraphedStep

    eager, graphed = (_engine([seed_net(s) for s in range(2)], "darts") for _ in range(2))
    backend = FakeBackend(graphed.graph_state)
    graphed.graphed = GraphedStep(graphed.iteration, device=torch.device("cpu"), state=graphed.graph_state,
                                  checked=graphed.graph_checked, say=lambda _m: None,
                                  setting_name="search.cuda_graph", backend=backend)
    for step in range(8):  # 2 warm-up iterations per key, then capture + self-check, then replays
        if step == 4:  # seed 1 decides an edge: the network changed, the graph must be recaptured
            for e in (eager, graphed):
                e.seeds_state[1].model.set_edge_ops([4] + [UNDECIDED] * 13, [UNDECIDED] * 14)
        for e in (eager, graphed):
            assert e.refresh_decisions() == (step == 4)
        x, y = eager.stack(batches(2, step))
        xv, yv = eager.stack(batches(2, 10 + step))
        want, got = eager.step(x, y, xv, yv), graphed.step(x, y, xv, yv)
        torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(graphed.flat, eager.flat, rtol=1e-6, atol=1e-7)
    for a, b in zip(graphed.alphas, eager.alphas, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert len(backend.graphs) == 2 and backend.graphs[0].released, graphed.record()  # one capture per network
    record = graphed.record()["cuda_graph"]
    assert record["cuda_graph"] == "used" and record["captures"] == 2 and record["self_checks"] == 2
