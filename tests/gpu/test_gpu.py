"""CUDA correctness of the search and retrain (the ``gpu`` marker), each test parametrised over the device.

The ``cuda`` variants skip without a GPU; ``tools/gpu_check.sh`` runs them on a lent GPU with
``pytest -m gpu -k cuda``. A ``cpu`` variant runs where it means something on the CPU and is quick
(it is then in the default selection); where it is meaningful but slow it is marked ``slow`` too;
where it only compares the CUDA result with the CPU one, or needs CUDA graphs, it is skipped.

Only stable entry points are used (the search engine's internals are being rewritten):
``compose_config``, ``run_search`` and the ``result.json`` of its run directories, ``SuperNet``
forward/backward, ``DeviceLoader``, ``run_retrain`` and its ``checkpoint.pt``, and the config keys
``search.cuda_graph``, ``search.supernet``, ``search.amp``, ``train.cuda_graph``, ``seeds``, ``device``.

Limits (from the former ``tools/gpu_check.py``):

- supernet forward/backward, CUDA vs CPU in fp32 (TF32 off): logits, loss, weight and alpha gradients
  (the alpha gradients are DARTS' first-order hypergradient), relative L2 < 1e-3;
- loss under bf16 autocast within 2% of fp32; alpha-gradient cosine reported;
- fused vs per-edge supernet, fp32: logits and gradients relative L2 < 1e-4; bf16 channels_last loss 2e-2;
- DeviceLoader on CUDA vs CPU, same seed: labels equal, images to 1e-6;
- searches compared after 5 first-order iterations (one epoch of 80 images, batch 16, no warm-up):
  packed seeds vs separate searches, CUDA graph vs eager, fused vs per-edge engine. The old
  synthetic loop kept max |alpha difference| < 1e-4; through ``run_search`` (real data, zero-initialised
  alphas) some alpha gradients are near zero, and Adam's normalised step turns a rounding difference
  in one of them into up to a whole step of +-arch_lr: on CPU in plain fp32, packed vs separate
  measured max 1e-5, 3.6e-5 and, for seed 1, 1.9e-4 with 9 of 224 entries above 1e-4 and a median of
  2.6e-5 (seeds 0 and 2: 1e-6, 7e-6; fused vs per edge: max 3.4e-7). On CUDA an fp32
  search also runs with TF32 (``search.amp=off`` allows it; the config cannot switch it off), so
  different kernels round more. A comparison therefore passes when max |difference| < 1e-4, or when
  the entries agree but a few: median |difference| <= arch_lr / 3 (1e-4), at most 25% of the entries above 1e-4
  (5% where the same kernels run: graph vs eager) and none above 2 x arch_lr x iterations. A wrong
  seed, data order or learning rate moves most entries by about arch_lr per iteration (Adam), and
  fails the median. The 1e-4 of the old check would have failed packed seed 1 on CPU: worth a look
  by the packed engine's owners, but within what rounding through Adam can do;
- retrain, 10 steps replayed as a CUDA graph vs eager (drop path off, fp32): weights relative L2 < 1e-3;
- second order (darts2) under bf16 autocast completes with finite alphas (its distance to the fp32
  search is reported); bf16 vs fp32 genotype of one small search is a measurement (both complete).
Measured numbers go to the junit XML as properties (``record_property``) and are printed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import smoke_overrides

from unrealnas.config import compose_config

pytestmark = pytest.mark.gpu

NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def devices(cpu: str = "run") -> list[Any]:
    """The ``device`` parameters: ``cpu`` is run, ``slow`` (marked slow) or a skip reason; ``cuda`` needs a GPU."""
    if cpu == "run":
        cpu_param = pytest.param("cpu", id="cpu")
    elif cpu == "slow":
        cpu_param = pytest.param("cpu", id="cpu", marks=pytest.mark.slow)
    else:
        cpu_param = pytest.param("cpu", id="cpu", marks=pytest.mark.skip(reason=cpu))
    return [cpu_param, pytest.param("cuda", id="cuda", marks=NO_CUDA)]


VS_CPU = "compares CUDA with the CPU"
NEEDS_GRAPHS = "CUDA graphs need a GPU"


@dataclass(frozen=True)
class Sizes:
    """Supernet and batch sizes of the unit checks."""

    C: int
    layers: int
    batch: int
    hw: int
    classes: int


SIZES = {"cuda": Sizes(C=8, layers=5, batch=32, hw=32, classes=10),
         "cpu": Sizes(C=4, layers=3, batch=8, hw=16, classes=5)}

# 5 first-order iterations: one search epoch of 80 images (batch 16), no warm-up epoch
FIVE_ITERATIONS = ("search.warmup_epochs=0", "search.epochs=1", "search.num_train=80", "data.num_classes=10")


def report(record_property, **values: Any) -> None:
    """Keep measured values in the junit XML and print them (``-rA`` / ``-s`` show them)."""
    for k, v in values.items():
        record_property(k, v)
    print(" ".join(f"{k}={v}" for k, v in values.items()))


def rel_err(a: torch.Tensor | Sequence[torch.Tensor], b: torch.Tensor | Sequence[torch.Tensor]) -> float:
    """||a - b|| / ||b|| over all tensors (on the CPU, in float64)."""
    if isinstance(a, torch.Tensor):
        a, b = [a], [b]
    a_flat = torch.cat([t.detach().double().cpu().flatten() for t in a])
    b_flat = torch.cat([t.detach().double().cpu().flatten() for t in b])
    return float((a_flat - b_flat).norm() / b_flat.norm().clamp_min(1e-30))


def cosine(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """Cosine similarity of two lists of tensors, flattened together."""
    a_flat = torch.cat([t.detach().double().cpu().flatten() for t in a])
    b_flat = torch.cat([t.detach().double().cpu().flatten() for t in b])
    return float(torch.nn.functional.cosine_similarity(a_flat, b_flat, dim=0))


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """TF32 off and deterministic cuDNN while comparing fp32 results (restored afterwards)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = saved


def make_net(s: Sizes, seed: int = 0, fused: bool = True):
    """A supernet with non-uniform alphas (uniform ones give degenerate alpha gradients)."""
    from unrealnas.nas.supernet import SuperNet

    torch.manual_seed(seed)
    net = SuperNet(s.C, s.classes, s.layers, fused=fused)
    with torch.no_grad():
        for a in net.arch_parameters():
            a.normal_(0, 0.5)
    return net


def make_batch(s: Sizes, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A CPU batch of N(0,1) images and labels."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(s.batch, 3, s.hw, s.hw, generator=g), torch.randint(0, s.classes, (s.batch,), generator=g)


def grads(net) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(weight gradients, alpha gradients) after a backward pass; a weight without one counts as zero."""
    alphas = {id(a) for a in net.arch_parameters()}
    weights = [p.grad if p.grad is not None else torch.zeros_like(p) for p in net.parameters() if id(p) not in alphas]
    return weights, [a.grad for a in net.arch_parameters()]


def alphas_of(result: dict) -> torch.Tensor:
    """The final alphas of a search's result.json (normal and reduce cells stacked)."""
    return torch.tensor(result["alphas"]["normal"] + result["alphas"]["reduce"], dtype=torch.float64)


def alpha_agreement(a: dict, b: dict, same_kernels: bool) -> tuple[bool, dict[str, Any]]:
    """Do two searches' final alphas agree (limits in the module docstring)?"""
    diff = (alphas_of(a) - alphas_of(b)).abs()
    steps = int(a["metrics"]["arch_steps"])
    arch_lr = float(compose_config(["preset=smoke"]).search.arch_lr)  # the searches here keep the preset's
    off = int((diff > 1e-4).sum())
    median, worst = float(diff.median()), float(diff.max())
    facts = {"max_alpha_diff": f"{worst:.2e}", "median_alpha_diff": f"{median:.1e}",
             "entries_over_1e-4": f"{off}/{diff.numel()}", "arch_steps": steps, "precision": a["precision"]}
    if worst < 1e-4:
        return True, facts
    share = 0.05 if same_kernels else 0.25
    ok = median <= arch_lr / 3 and off <= share * diff.numel() and worst <= 2 * arch_lr * steps + 1e-6
    return ok, facts


@pytest.fixture(scope="session")
def searches(tmp_path_factory):
    """``searches(device, *overrides)`` -> {seed: result.json}: smoke-preset searches, each run once per session."""
    from unrealnas.search.run import run_search

    root = tmp_path_factory.mktemp("gpu_searches")
    cache: dict[tuple[str, tuple[str, ...]], dict[int, dict]] = {}

    def run(device: str, *overrides: str) -> dict[int, dict]:
        key = (device, overrides)
        if key not in cache:
            runs = root / f"runs-{len(cache)}"
            cfg = compose_config(["preset=smoke", f"device={device}", f"paths.data={root / 'datasets'}",
                                  f"paths.runs={runs}", *overrides])
            t0 = time.perf_counter()
            run_search(cfg)
            print(f"search {device} {' '.join(overrides)}: {time.perf_counter() - t0:.1f} s")
            results = (json.loads(p.read_text()) for p in runs.glob("search/*/result.json"))
            cache[key] = {int(r["seed"]): r for r in results}
        return cache[key]

    return run


# ---------------------------------------------------------------------- supernet


@pytest.mark.parametrize("device", devices(cpu=VS_CPU))
def test_supernet_forward_backward_matches_cpu(device, record_property):
    s, dev = SIZES[device], torch.device(device)
    net_cpu = make_net(s)
    net_dev = copy.deepcopy(net_cpu).to(dev)
    x, y = make_batch(s)
    with exact_fp32():
        out_cpu = net_cpu(x)
        loss_cpu = net_cpu.criterion(out_cpu, y)
        loss_cpu.backward()
        out_dev = net_dev(x.to(dev))
        loss_dev = net_dev.criterion(out_dev, y.to(dev))
        loss_dev.backward()
    (w_cpu, a_cpu), (w_dev, a_dev) = grads(net_cpu), grads(net_dev)
    errs = {"logits": rel_err(out_dev, out_cpu), "loss": rel_err(loss_dev, loss_cpu),
            "weight_grads": rel_err(w_dev, w_cpu), "alpha_grads": rel_err(a_dev, a_cpu)}
    report(record_property, **{k: f"{v:.1e}" for k, v in errs.items()})
    assert all(e < 1e-3 for e in errs.values()), errs


@pytest.mark.parametrize("device", devices())
def test_bf16_autocast_loss(device, record_property):
    s, dev = SIZES[device], torch.device(device)
    net = make_net(s).to(dev)
    x, y = (t.to(dev) for t in make_batch(s))

    def loss_and_alpha_grads():
        loss = net.criterion(net(x).float(), y)
        return loss.detach(), torch.autograd.grad(loss, net.arch_parameters())

    loss32, g32 = loss_and_alpha_grads()
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
        loss16, g16 = loss_and_alpha_grads()
    err = abs(float(loss16) - float(loss32)) / abs(float(loss32))
    report(record_property, loss_fp32=f"{float(loss32):.5f}", loss_bf16=f"{float(loss16):.5f}",
           rel_diff=f"{err:.1e}", alpha_grad_cosine=f"{cosine(g16, g32):.4f}")
    assert err < 2e-2


@pytest.mark.parametrize("device", devices())
def test_fused_supernet_matches_per_edge(device, record_property):
    s, dev = SIZES[device], torch.device(device)
    nets = [make_net(s, fused=fused).to(dev) for fused in (False, True)]
    nets[1].load_state_dict(nets[0].state_dict())
    # a mid-SGAS state (two decided edges, one pruned) where the supernet offers it
    sgas = all(hasattr(n, "set_edge_ops") and hasattr(n, "edge_ops") for n in nets)
    if sgas:
        codes = [-1] * len(nets[0].edge_ops("normal"))
        codes[0], codes[3], codes[2] = 5, 4, 0
        for n in nets:
            n.set_edge_ops(codes, codes)
    x, y = (t.to(dev) for t in make_batch(s))
    with exact_fp32():
        out = [n(x) for n in nets]
        for n, o in zip(nets, out, strict=True):
            n.criterion(o, y).backward()
    (w_r, a_r), (w_f, a_f) = grads(nets[0]), grads(nets[1])
    errs = {"logits": rel_err(out[1], out[0]), "weight_grads": rel_err(w_f, w_r), "alpha_grads": rel_err(a_f, a_r)}
    for n in nets:
        n.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
        losses = [float(n.criterion(n(xc).float(), y)) for n in nets]
    bf16 = abs(losses[1] - losses[0]) / abs(losses[0])
    report(record_property, sgas_state=sgas, bf16_channels_last_rel_diff=f"{bf16:.1e}",
           **{k: f"{v:.1e}" for k, v in errs.items()})
    assert all(e < 1e-4 for e in errs.values()), errs
    assert bf16 < 2e-2


# ---------------------------------------------------------------------- data


@pytest.mark.parametrize("device", devices())
def test_device_loader_matches_cpu(device, record_property):
    """On ``cuda``: the same batches as on the CPU; on ``cpu``: the same batches from a second loader (seeded)."""
    from unrealnas.data.cifar import CIFAR10_MEAN, CIFAR10_STD
    from unrealnas.data.loaders import DeviceLoader

    s, dev = SIZES[device], torch.device(device)
    g = torch.Generator().manual_seed(5)
    n = 4 * s.batch + 3
    u8 = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    f16 = torch.randn(n, 3, 32, 32, generator=g).to(torch.float16)
    labels = torch.randint(0, s.classes, (n,), generator=g)
    norm = {"mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD)}
    cases = [(u8, "crop_flip", norm), (u8, "flip_all", norm), (u8, "none", norm), (f16, "crop_flip", None),
             (f16, "flip", None)]
    worst, batches, labels_ok = 0.0, 0, True
    for images, augment, nrm in cases:
        loaders = [DeviceLoader(images.to(d), labels.to(d), s.batch, seed=7, augment=augment, normalization=nrm)
                   for d in (torch.device("cpu"), dev)]
        for epoch in (0, 1):
            for (xa, ya), (xb, yb) in zip(loaders[0].epoch(epoch), loaders[1].epoch(epoch), strict=True):
                labels_ok &= torch.equal(ya, yb.cpu())
                worst = max(worst, float((xa - xb.cpu()).abs().max()))
                batches += 1
    report(record_property, batches=batches, labels_equal=labels_ok, max_abs_dx=f"{worst:.1e}")
    assert labels_ok and worst <= 1e-6 and batches > 0


# ---------------------------------------------------------------------- searches


@pytest.mark.parametrize("device", devices())
def test_tiny_search(device, searches, record_property):
    """A 2-epoch smoke search (1 warm-up + 1 search epoch of 5 iterations, search.cuda_graph=auto) completes."""
    from unrealnas.nas.genotype import Genotype

    result = searches(device, "search.warmup_epochs=1", "search.epochs=1", "search.num_train=80",
                      "data.num_classes=10")[0]
    genotype = Genotype.from_json(result["genotype_json"])  # validates the DARTS genotype shape
    report(record_property, epochs=result["epochs"], device_used=result["device"], precision=result["precision"],
           wall_s=round(float(result["wall_s"]), 1), skips=f"{result['metrics']['skip_normal']}/"
           f"{result['metrics']['skip_reduce']}", normal=str([op for op, _ in genotype.normal]))
    assert result["status"] == "completed" and result["epochs"] == 2
    assert result["device"].startswith(device)
    assert bool(torch.isfinite(alphas_of(result)).all())


@pytest.mark.parametrize("device", devices(cpu="slow"))
def test_packed_seeds_match_separate(device, searches, record_property):
    """``seeds=[0,1,2]`` in one network vs three separate eager searches, 5 iterations."""
    packed = searches(device, *FIVE_ITERATIONS, "seeds=[0,1,2]", "search.cuda_graph=off")
    assert sorted(packed) == [0, 1, 2]
    verdicts = []
    for seed in (0, 1, 2):
        alone = searches(device, *FIVE_ITERATIONS, f"seed={seed}", "search.cuda_graph=off")[seed]
        ok, facts = alpha_agreement(packed[seed], alone, same_kernels=False)
        report(record_property, **{f"seed{seed}_{k}": v for k, v in facts.items()})
        verdicts.append(ok)
        assert alone["metrics"]["arch_steps"] == 5
    assert all(verdicts)
    assert max(float(alphas_of(packed[s]).abs().max()) for s in packed) > 0  # the alphas moved


@pytest.mark.parametrize("device", devices(cpu=NEEDS_GRAPHS))
def test_search_graph_matches_eager(device, searches, record_property):
    """Packed seeds replayed as one CUDA graph (search.cuda_graph=on) vs eager: same kernels, 1e-4 after 5 iterations."""
    eager = searches(device, *FIVE_ITERATIONS, "seeds=[0,1,2]", "search.cuda_graph=off")
    graph = searches(device, *FIVE_ITERATIONS, "seeds=[0,1,2]", "search.cuda_graph=on")
    verdicts = []
    for seed in (0, 1, 2):
        ok, facts = alpha_agreement(graph[seed], eager[seed], same_kernels=True)
        report(record_property, **{f"seed{seed}_{k}": v for k, v in facts.items()})
        verdicts.append(ok)
    assert all(verdicts)


@pytest.mark.parametrize("device", devices(cpu="slow"))
def test_fused_search_matches_per_edge(device, searches, record_property):
    """search.supernet=fused vs per_edge, one eager search, 5 iterations."""
    fused = searches(device, *FIVE_ITERATIONS, "seed=0", "search.cuda_graph=off")[0]
    per_edge = searches(device, *FIVE_ITERATIONS, "seed=0", "search.cuda_graph=off", "search.supernet=per_edge")[0]
    ok, facts = alpha_agreement(fused, per_edge, same_kernels=False)
    report(record_property, **facts)
    assert ok


@pytest.mark.parametrize("device", devices(cpu="slow"))
def test_second_order_search_bf16(device, searches, record_property):
    """darts2 under bf16 autocast: completes, alphas finite and moved; distance to the fp32 search reported."""
    bf16 = searches(device, *FIVE_ITERATIONS, "search=darts2", "search.amp=bf16")[0]
    fp32 = searches(device, *FIVE_ITERATIONS, "search=darts2", "search.amp=off")[0]
    a = alphas_of(bf16)
    report(record_property, precision=bf16["precision"], arch_steps=bf16["metrics"]["arch_steps"],
           alpha_rel_l2_vs_fp32=f"{rel_err(a, alphas_of(fp32)):.2e}", max_abs_alpha=f"{float(a.abs().max()):.2e}")
    assert bf16["status"] == fp32["status"] == "completed"
    assert bf16["precision"] == "bf16-autocast" and bf16["method"] == "darts2"
    assert bool(torch.isfinite(a).all()) and float(a.abs().max()) > 0


@pytest.mark.parametrize("device", devices(cpu="slow"))
def test_bf16_vs_fp32_genotype(device, searches, record_property):
    """The same small search (1 + 4 epochs) in fp32 and bf16: genotype agreement is a measurement."""
    common = ("search.warmup_epochs=1", "search.epochs=4", "data.num_classes=10")
    a = searches(device, *common, "search.amp=off")[0]
    b = searches(device, *common, "search.amp=bf16")[0]
    ga, gb = a["genotype_json"], b["genotype_json"]
    same = sum(x == y for cell in ("normal", "reduce") for x, y in zip(ga[cell], gb[cell], strict=True))
    total = sum(len(ga[cell]) for cell in ("normal", "reduce"))
    report(record_property, genotype_entries_equal=f"{same}/{total}", identical=ga == gb,
           alpha_rel_l2=f"{rel_err(alphas_of(b), alphas_of(a)):.2e}", precisions=f"{a['precision']} vs {b['precision']}")
    assert a["status"] == b["status"] == "completed"
    assert b["precision"] == "bf16-autocast" and a["precision"].startswith("fp32")


# ---------------------------------------------------------------------- retrain


@pytest.mark.parametrize("device", devices(cpu=NEEDS_GRAPHS))
def test_retrain_graph_matches_eager(device, tmp_path, cifar_root, record_property):
    """10 retrain steps with train.cuda_graph=on vs off (drop path off, fp32): weights within 1e-3."""
    from unrealnas.train.retrain import run_retrain

    weights = {}
    for mode in ("off", "on"):
        cfg = compose_config(smoke_overrides(
            tmp_path / mode, f"data.root={cifar_root}", "genotype=DARTS_V2", f"device={device}", "train.layers=5",
            "train.init_channels=8", "train.batch_size=16", "train.max_images=160", "train.max_eval_images=16",
            "train.epochs=1", "train.drop_path=0", "train.amp=off", f"train.cuda_graph={mode}"))
        run_dir = run_retrain(cfg)
        state = torch.load(Path(run_dir) / "checkpoint.pt", weights_only=True)["model"]
        weights[mode] = {k: v for k, v in state.items() if v.is_floating_point()}
        result = json.loads((Path(run_dir) / "result.json").read_text())
        assert result["status"] == "completed"
    names = sorted(weights["off"])
    err = rel_err([weights["on"][k] for k in names], [weights["off"][k] for k in names])
    report(record_property, weights_rel_l2=f"{err:.1e}")
    assert math.isfinite(err) and err < 1e-3
