"""CUDA correctness checks of the search on a lent GPU; one PASS/FAIL line per check and a JSON summary.

Run by ``tools/gpu_check.sh`` (``python3 tools/gpu_check.py [--cpu-dry-run] [--out DIR]``). Checks:

1. ``forward_backward_cuda_vs_cpu``: a supernet (same seed) gives the same logits, loss, weight and
   alpha gradients on CUDA and CPU in fp32 (TF32 off for the comparison): relative L2 error < 1e-3.
2. ``bf16_autocast_loss``: the loss under bf16 autocast is within 2% of the fp32 loss (relative);
   the cosine similarity of the bf16 and fp32 alpha gradients is reported.
3. ``first_order_alpha_grad_cuda_vs_cpu``: ``first_order_alpha_grads`` on CUDA vs CPU, fp32: < 1e-3.
4. ``second_order_fp32_under_autocast``: the unrolled (darts2) hypergradient computed inside a bf16
   autocast region is fp32 and equals the one computed without autocast (deterministic cuDNN,
   relative error < 1e-5); it is also within 1e-2 of the CPU one; an ``Architect.step`` under
   autocast moves the alphas and keeps them finite. For contrast, the error of the same
   hypergradient with ``hypergrad_amp=True`` (bf16) is reported.
5. ``device_loader_cuda_vs_cpu``: ``DeviceLoader`` batches (crop+flip, flip_all, none; normalised
   uint8 and float16 data; 2 epochs) on CUDA equal those on CPU for the same seed (labels exact,
   images to 1e-6).
6. ``tiny_search_cuda``: a 2-epoch search (smoke preset: 1 warm-up + 1 search epoch) on CUDA
   completes with a valid ``genotype.json`` and finite alphas in ``result.json``.
7. ``fused_vs_per_edge``: on the device, the fused supernet (``search.supernet=fused``) and the
   per-edge reference with the same state and SGAS decisions give the same logits and weight/alpha
   gradients in fp32 (relative L2 < 1e-4), and the same alphas after 20 first-order search
   iterations (Architect + SGD): max |difference| < 1e-4, or at most 10x the noise floor (per_edge
   against itself with weights perturbed by 1e-7: tiny supernets amplify rounding, and Adam's
   normalised step turns rounding of near-zero alpha gradients into whole steps); the bf16 +
   channels_last loss difference between the engines (limit 2e-2).
8. ``packed_vs_separate``: 3 seeds packed in one network (``seeds=[...]``'s engine) vs 3 separate
   eager searches, same data: alphas after 5 first-order iterations within 1e-4 (fp32, TF32 off);
   the difference after 20 is reported (rounding grows through max-pool near-ties and Adam).
9. ``search_cuda_graph_vs_eager``: the packed iteration replayed as a CUDA graph
   (``search.cuda_graph``) vs eager: alphas within 1e-4 after 5 iterations, after 20 reported
   against the 1e-4 target (limit 1e-2; atomics in backward kernels), one capture (skipped on CPU).
10. ``train_cuda_graph_vs_eager``: 10 retrain steps (``train.cuda_graph``, drop path off) replayed
   vs eager: weights within 1e-3 relative L2 (skipped on CPU).
11. ``bf16_vs_fp32_genotype``: the same small search (smoke preset, 1 + 4 epochs, one seed) with
   ``search.amp=off`` (fp32+TF32, the default) and ``search.amp=bf16``; reports how many of the 16
   genotype entries agree and the relative L2 distance of the final alphas. Passes when both
   complete with their precision recorded; the agreement is a measurement (the paper preset needs
   a longer run before ``search.amp`` may default to bf16).

``--cpu-dry-run`` runs everything on CPU at tiny sizes ("CUDA" is then the CPU too), to test the
plumbing on a machine without a GPU. Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Sizes:
    """Supernet and batch sizes of the checks."""

    C: int
    layers: int
    batch: int
    hw: int
    classes: int


GPU_SIZES = Sizes(C=8, layers=5, batch=32, hw=32, classes=10)
DRY_SIZES = Sizes(C=4, layers=3, batch=8, hw=16, classes=5)


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


def make_net(s: Sizes, seed: int = 0):
    """A supernet with non-uniform alphas (uniform ones give degenerate alpha gradients)."""
    from unrealnas.nas.supernet import SuperNet

    torch.manual_seed(seed)
    net = SuperNet(s.C, s.classes, s.layers)
    with torch.no_grad():
        for a in net.arch_parameters():
            a.normal_(0, 0.5)
    return net


def make_batch(s: Sizes, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A CPU batch of N(0,1) images and labels."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(s.batch, 3, s.hw, s.hw, generator=g), torch.randint(0, s.classes, (s.batch,), generator=g)


def _grads(net) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    weights = [p.grad if p.grad is not None else torch.zeros_like(p) for p in net.weight_parameters()]
    return weights, [a.grad for a in net.arch_parameters()]


# ---------------------------------------------------------------------- checks


def check_forward_backward(dev: torch.device, s: Sizes, work: Path) -> tuple[bool, str]:
    """Supernet forward/backward on ``dev`` vs CPU in fp32."""
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
    (w_cpu, a_cpu), (w_dev, a_dev) = _grads(net_cpu), _grads(net_dev)
    errs = {"logits": rel_err(out_dev, out_cpu), "loss": rel_err(loss_dev, loss_cpu),
            "weight_grads": rel_err(w_dev, w_cpu), "alpha_grads": rel_err(a_dev, a_cpu)}
    ok = all(e < 1e-3 for e in errs.values())
    return ok, "relative L2 errors " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()) + " (limit 1e-3)"


def check_bf16_loss(dev: torch.device, s: Sizes, work: Path) -> tuple[bool, str]:
    """Loss under bf16 autocast close to fp32 on ``dev``."""
    from unrealnas.nas.darts import first_order_alpha_grads
    from unrealnas.runtime import autocast_for

    net = make_net(s).to(dev)
    x, y = (t.to(dev) for t in make_batch(s))
    loss32, g32 = first_order_alpha_grads(net, x, y)
    with autocast_for(dev, "bf16"):
        loss16, g16 = first_order_alpha_grads(net, x, y)
    err = abs(float(loss16) - float(loss32)) / abs(float(loss32))
    return err < 2e-2, (f"fp32 loss {float(loss32):.5f}, bf16 {float(loss16):.5f}, relative diff {err:.1e} (limit 2e-2); "
                        f"alpha-gradient cosine bf16 vs fp32 {cosine(g16, g32):.4f}")


def check_first_order_alpha_grad(dev: torch.device, s: Sizes, work: Path) -> tuple[bool, str]:
    """First-order alpha gradients on ``dev`` vs CPU, fp32."""
    from unrealnas.nas.darts import first_order_alpha_grads

    net_cpu = make_net(s)
    net_dev = copy.deepcopy(net_cpu).to(dev)
    x, y = make_batch(s, seed=2)
    with exact_fp32():
        l_cpu, g_cpu = first_order_alpha_grads(net_cpu, x, y)
        l_dev, g_dev = first_order_alpha_grads(net_dev, x.to(dev), y.to(dev))
    err = rel_err(g_dev, g_cpu)
    return err < 1e-3, f"relative L2 error {err:.1e} (limit 1e-3); val loss {float(l_dev):.5f} vs {float(l_cpu):.5f}"


def _second_order_setup(net, s: Sizes, dev: torch.device):
    """SGD with momentum buffers (one weight step taken) and two batches, as a search has mid-run."""
    opt = torch.optim.SGD(net.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    x, y = (t.to(dev) for t in make_batch(s, seed=3))
    xv, yv = (t.to(dev) for t in make_batch(s, seed=4))
    net.loss(x, y).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt, x, y, xv, yv


def check_second_order(dev: torch.device, s: Sizes, work: Path) -> tuple[bool, str]:
    """The darts2 hypergradient under bf16 autocast stays fp32, equals the plain fp32 one and the CPU one."""
    from unrealnas.nas.darts import Architect
    from unrealnas.runtime import autocast_for

    base = make_net(s)
    results = {}
    with exact_fp32():
        for name, where in (("cpu", torch.device("cpu")), ("dev", dev)):
            net = copy.deepcopy(base).to(where)
            opt, x, y, xv, yv = _second_order_setup(net, s, where)
            arch = Architect(net, unrolled=True)
            _, plain = arch.alpha_grads(xv, yv, x, y, opt)
            if name == "dev":
                with autocast_for(dev, "bf16"):
                    _, under_amp = arch.alpha_grads(xv, yv, x, y, opt)
                    _, bf16 = Architect(net, unrolled=True, hypergrad_amp=True).alpha_grads(xv, yv, x, y, opt)
                    before = [a.detach().clone() for a in net.arch_parameters()]
                    arch.step(xv, yv, x, y, opt)
                after = net.arch_parameters()
                moved = any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
                finite = all(bool(torch.isfinite(a).all()) for a in after)
                results.update(under_amp=under_amp, bf16=bf16, moved=moved, finite=finite)
            results[name] = plain
    dtypes = {str(g.dtype) for g in results["under_amp"]}
    e_amp = rel_err(results["under_amp"], results["dev"])
    e_cpu = rel_err(results["dev"], results["cpu"])
    e_bf16 = rel_err(results["bf16"], results["dev"])
    ok = dtypes == {"torch.float32"} and e_amp < 1e-5 and e_cpu < 1e-2 and results["moved"] and results["finite"]
    return ok, (f"dtype {','.join(sorted(dtypes))}; under autocast vs fp32 {e_amp:.1e} (limit 1e-5); {dev.type} vs cpu "
                f"{e_cpu:.1e} (limit 1e-2); step moved alphas {results['moved']}, finite {results['finite']}; "
                f"for contrast, hypergradient in bf16 differs by {e_bf16:.1e}")


def check_device_loader(dev: torch.device, s: Sizes, work: Path) -> tuple[bool, str]:
    """DeviceLoader on ``dev`` gives the same batches as on CPU for the same seed."""
    from unrealnas.data.cifar import CIFAR10_MEAN, CIFAR10_STD
    from unrealnas.data.loaders import DeviceLoader

    g = torch.Generator().manual_seed(5)
    n = 4 * s.batch + 3
    u8 = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    f16 = torch.randn(n, 3, 32, 32, generator=g).to(torch.float16)
    labels = torch.randint(0, s.classes, (n,), generator=g)
    norm = {"mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD)}
    cases = [("uint8", u8, "crop_flip", norm), ("uint8", u8, "flip_all", norm), ("uint8", u8, "none", norm),
             ("float16", f16, "crop_flip", None), ("float16", f16, "flip", None)]
    worst, batches, labels_ok = 0.0, 0, True
    for _, images, augment, nrm in cases:
        loaders = [DeviceLoader(images.to(d), labels.to(d), s.batch, seed=7, augment=augment, normalization=nrm)
                   for d in (torch.device("cpu"), dev)]
        for epoch in (0, 1):
            for (xa, ya), (xb, yb) in zip(loaders[0].epoch(epoch), loaders[1].epoch(epoch), strict=True):
                labels_ok &= torch.equal(ya, yb.cpu())
                worst = max(worst, float((xa - xb.cpu()).abs().max()))
                batches += 1
    ok = labels_ok and worst <= 1e-6
    return ok, f"{batches} batches over {len(cases)} cases x 2 epochs: labels equal {labels_ok}, max |dx| {worst:.1e}"


def check_tiny_search(dev: torch.device, s: Sizes, work: Path) -> tuple[bool, str]:
    """A 2-epoch smoke search on ``dev`` completes with a valid genotype."""
    from unrealnas.config import compose_config
    from unrealnas.nas.genotype import Genotype
    from unrealnas.search.run import run_search

    cfg = compose_config(["preset=smoke", f"device={dev.type}", f"paths.data={work / 'datasets'}",
                          f"paths.runs={work / 'runs'}", "search.warmup_epochs=1", "search.epochs=1",
                          "data.num_classes=10"])
    t0 = time.perf_counter()
    run_dir = run_search(cfg)
    seconds = time.perf_counter() - t0
    result = json.loads((run_dir / "result.json").read_text())
    genotype = Genotype.load(run_dir / "genotype.json")  # validates the DARTS Genotype shape
    alphas = torch.tensor(result["alphas"]["normal"] + result["alphas"]["reduce"])
    ok = (result["status"] == "completed" and result["device"].startswith(dev.type) and result["epochs"] == 2
          and bool(torch.isfinite(alphas).all()))
    return ok, (f"{result['epochs']} epochs on {result['device']} in {seconds:.1f} s; normal "
                f"{[op for op, _ in genotype.normal]}; skips {result['metrics']['skip_normal']}/"
                f"{result['metrics']['skip_reduce']}")


def _search_alphas(net, s: Sizes, dev: torch.device, steps: int) -> list[torch.Tensor]:
    """The alphas after ``steps`` first-order search iterations (Architect, then SGD with clipping)."""
    from unrealnas.nas.darts import Architect

    net.zero_grad(set_to_none=True)
    opt = torch.optim.SGD(net.weight_parameters(), lr=0.025, momentum=0.9, foreach=True)
    arch = Architect(net, lr=3e-4, betas=(0.5, 0.999))
    for i in range(steps):
        xt, yt = (t.to(dev) for t in make_batch(s, seed=10 + i))
        xv, yv = (t.to(dev) for t in make_batch(s, seed=100 + i))
        arch.step(xv, yv)
        opt.zero_grad(set_to_none=True)
        net.loss(xt, yt).backward()
        torch.nn.utils.clip_grad_norm_(net.weight_parameters(), 5.0)
        opt.step()
    return [a.detach().cpu() for a in net.arch_parameters()]


def check_fused_vs_per_edge(dev: torch.device, s: Sizes, work: Path) -> tuple[bool, str]:
    """The fused supernet equals the per-edge one on ``dev``: fp32 gradients, alphas after 20 iterations."""
    from unrealnas.nas.supernet import SuperNet
    from unrealnas.runtime import autocast_for

    def pair_of_nets():
        ref = SuperNet(s.C, s.classes, s.layers, fused=False)
        ref.load_state_dict(make_net(s).state_dict())
        codes = [-1] * len(ref.edge_ops("normal"))  # a mid-SGAS state: two decided edges, one pruned
        codes[0], codes[3], codes[2] = 5, 4, 0
        ref.set_edge_ops(codes, codes)
        fused = SuperNet(s.C, s.classes, s.layers, fused=True)
        fused.load_state_dict(ref.state_dict())
        return ref.to(dev), fused.to(dev)

    ref, fused = pair_of_nets()
    x, y = (t.to(dev) for t in make_batch(s))
    steps = 20 if dev.type == "cuda" else 3
    with exact_fp32():
        out = [net(x) for net in (ref, fused)]
        for net, o in zip((ref, fused), out, strict=True):
            net.criterion(o, y).backward()
        (w_r, a_r), (w_f, a_f) = _grads(ref), _grads(fused)
        errs = {"logits": rel_err(out[1], out[0]), "weight_grads": rel_err(w_f, w_r), "alpha_grads": rel_err(a_f, a_r)}
        ref, fused = pair_of_nets()
        noisy, _ = pair_of_nets()
        with torch.no_grad():  # the noise floor: the reference itself, weights perturbed by 1e-7 (relative)
            for p in noisy.weight_parameters():
                p.mul_(1 + 1e-7 * torch.randn_like(p))
        a_ref, a_fused, a_noisy = (_search_alphas(net, s, dev, steps) for net in (ref, fused, noisy))
    diff = max(float((a - b).abs().max()) for a, b in zip(a_fused, a_ref, strict=True))
    floor = max(float((a - b).abs().max()) for a, b in zip(a_noisy, a_ref, strict=True))
    ok = all(e < 1e-4 for e in errs.values()) and diff <= max(1e-4, 10 * floor)
    for net in (ref, fused):
        net.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast_for(dev, "bf16"):
        losses = [float(net.criterion(net(xc).float(), y)) for net in (ref, fused)]
    bf16 = abs(losses[1] - losses[0]) / abs(losses[0])
    ok = ok and bf16 < 2e-2
    return ok, ("relative L2 errors " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()) + " (limit 1e-4); "
                f"alphas after {steps} iterations: max |fused - per_edge| {diff:.1e} (limit max(1e-4, 10 x "
                f"the per_edge noise floor {floor:.1e})); bf16 channels_last loss per_edge {losses[0]:.5f} "
                f"fused {losses[1]:.5f} ({bf16:.1e}, limit 2e-2)")


def _search_cfg(s: Sizes):
    from unrealnas.config import compose_config

    return compose_config(["preset=smoke", "device=cpu", f"search.layers={s.layers}", f"search.init_channels={s.C}",
                           f"search.resolution={s.hw}", f"data.num_classes={s.classes}"])


def _alpha_err(packs: Sequence[Any], others: Sequence[Sequence[torch.Tensor]]) -> float:
    """Largest |alpha| difference of a pack (stacked alphas) against per-seed alpha lists."""
    worst = 0.0
    for i, alphas in enumerate(others):
        for t, a in enumerate(alphas):
            worst = max(worst, float((packs.alphas[t][i].detach().cpu() - a.detach().cpu()).abs().max()))
    return worst


def check_packed_vs_separate(dev: torch.device, s: Sizes, work: Path) -> tuple[bool, str]:
    """3 packed seeds vs 3 separate searches: alphas after 20 iterations."""
    from unrealnas.benchmarks.packed import packed_iteration
    from unrealnas.benchmarks.search import build_search_bench, search_iteration

    cfg, seeds, errs = _search_cfg(s), 3, {}
    with exact_fp32():
        step, pack = packed_iteration(cfg, seeds, dev, s.batch)
        separate = [build_search_bench(cfg.search, s.classes, 3, s.hw, dev, "baseline", seed, s.batch)
                    for seed in range(seeds)]
        for it in range(1, 21):
            step()
            for b in separate:
                search_iteration(b, dev)
            if it in (5, 20):
                errs[it] = _alpha_err(pack, [b.model.arch_parameters() for b in separate])
    moved = float(pack.alphas[0].detach().abs().max())
    # Grouped and per-seed kernels sum in different orders; a near-tie in a max-pool window or a
    # near-zero Adam moment then and again turns that 1e-7 into an O(lr) alpha change, so the limit
    # is on the first 5 iterations; the 20-iteration figure is reported (1e-3 seen on CPU).
    return errs[5] < 1e-4 and moved > 0, (f"max |alpha diff| {errs[5]:.1e} after 5 iterations (limit 1e-4), "
                                          f"{errs[20]:.1e} after 20; max |alpha| {moved:.1e}")


def check_search_cuda_graph(dev: torch.device, s: Sizes, work: Path) -> tuple[bool, str]:
    """The packed iteration as a replayed CUDA graph vs eager: alphas after 20 iterations."""
    if dev.type != "cuda":
        return True, "skipped: CUDA graphs need a GPU"
    from unrealnas.benchmarks.packed import packed_iteration

    cfg, errs = _search_cfg(s), {}
    with exact_fp32():
        eager, pe = packed_iteration(cfg, 2, dev, s.batch)
        graph, pg = packed_iteration(cfg, 2, dev, s.batch, cuda_graph=True)
        for it in range(1, 21):
            eager()
            graph()
            if it in (5, 20):
                torch.cuda.synchronize()
                errs[it] = _alpha_err(pg, [[a[i] for a in pe.alphas] for i in range(2)])
    captures = pg.graphed.captures if pg.graphed is not None and not pg.graphed.fell_back else 0  # fell back: eager
    # the same kernels replayed: equal up to the atomics of max-pool and index_add backward, which
    # the chaos of a search can grow (see packed_vs_separate): 1e-4 at 20 iterations is the target,
    # the 5-iteration limit the one that tells a graph bug (stale lr, masks, buffers) from rounding
    ok = errs[5] < 1e-4 and errs[20] < 1e-2 and captures == 1
    return ok, (f"max |alpha diff| {errs[5]:.1e} after 5 iterations (limit 1e-4), {errs[20]:.1e} after 20 "
                f"(target 1e-4, limit 1e-2); {captures} capture(s)")


def check_train_cuda_graph(dev: torch.device, s: Sizes, work: Path) -> tuple[bool, str]:
    """10 retrain steps replayed as a CUDA graph vs eager (drop path off): weights."""
    if dev.type != "cuda":
        return True, "skipped: CUDA graphs need a GPU"
    from unrealnas.cuda_graph import GraphedStep
    from unrealnas.models import build_network
    from unrealnas.nas.genotype import KNOWN_GENOTYPES
    from unrealnas.train.loop import LoopOptions, build_optimizer, train_step

    nets, outs = [], []
    for graphed in (False, True):
        torch.manual_seed(0)
        net = build_network("cifar", KNOWN_GENOTYPES["DARTS_V2"], 8, 10, 5, auxiliary=True).to(dev)
        opts = LoopOptions(epochs=1, lr=0.025, aux_weight=0.4, grad_clip=5.0, cuda_graph=graphed)
        opt = build_optimizer(net, opts)
        net.train()
        x, y = (t.to(dev) for t in make_batch(Sizes(s.C, s.layers, 16, 32, 10)))
        # strict: a capture that fell back to eager would compare eager with eager and pass
        step = GraphedStep(lambda a, b, n=net, o=opt, op=opts: train_step(n, o, a, b, op), device=dev,
                           setting_name="train.cuda_graph", strict=True) if graphed else None
        with exact_fp32():
            for _ in range(10):
                out = step(0, x, y) if step is not None else train_step(net, opt, x, y, opts)
        nets.append(net)
        outs.append(float(out[0]))
    err = rel_err(list(nets[1].parameters()), list(nets[0].parameters()))
    return err < 1e-3, f"weights relative L2 {err:.1e} after 10 steps (limit 1e-3); last loss eager {outs[0]:.4f} graph {outs[1]:.4f}"


def check_bf16_vs_fp32_genotype(dev: torch.device, s: Sizes, work: Path) -> tuple[bool, str]:
    """The same small search in fp32 and in bf16 autocast: genotype agreement and alpha distance."""
    from unrealnas.config import compose_config
    from unrealnas.search.run import run_search

    results = {}
    for amp in ("off", "bf16"):
        cfg = compose_config(["preset=smoke", f"device={dev.type}", f"paths.data={work / 'datasets'}",
                              f"paths.runs={work / ('runs-' + amp)}", "search.warmup_epochs=1", "search.epochs=4",
                              "data.num_classes=10", f"search.amp={amp}"])
        results[amp] = json.loads((run_search(cfg) / "result.json").read_text())
    a, b = results["off"], results["bf16"]
    ga, gb = a["genotype_json"], b["genotype_json"]
    same = sum(x == y for cell in ("normal", "reduce") for x, y in zip(ga[cell], gb[cell], strict=True))
    alphas = {k: torch.tensor(r["alphas"]["normal"] + r["alphas"]["reduce"]) for k, r in results.items()}
    err = rel_err(alphas["bf16"], alphas["off"])
    ok = a["status"] == b["status"] == "completed" and b["precision"] == "bf16-autocast" and \
        a["precision"].startswith("fp32")
    return ok, (f"genotype entries equal {same}/16 (identical: {ga == gb}); alpha rel L2 {err:.2e}; "
                f"precisions {a['precision']} vs {b['precision']}")


CHECKS: list[tuple[str, Callable[[torch.device, Sizes, Path], tuple[bool, str]]]] = [
    ("forward_backward_cuda_vs_cpu", check_forward_backward),
    ("bf16_autocast_loss", check_bf16_loss),
    ("first_order_alpha_grad_cuda_vs_cpu", check_first_order_alpha_grad),
    ("second_order_fp32_under_autocast", check_second_order),
    ("device_loader_cuda_vs_cpu", check_device_loader),
    ("tiny_search_cuda", check_tiny_search),
    ("fused_vs_per_edge", check_fused_vs_per_edge),
    ("packed_vs_separate", check_packed_vs_separate),
    ("search_cuda_graph_vs_eager", check_search_cuda_graph),
    ("train_cuda_graph_vs_eager", check_train_cuda_graph),
    ("bf16_vs_fp32_genotype", check_bf16_vs_fp32_genotype),
]


def run_checks(dev: torch.device, sizes: Sizes, work: Path, only: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Run every check (or those in ``only``); one result dict each, printed as it finishes."""
    results = []
    for name, fn in CHECKS:
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        try:
            ok, detail = fn(dev, sizes, work)
        except Exception as e:  # a crash is a failed check, and the others still run
            ok, detail = False, f"{type(e).__name__}: {e}"
            traceback.print_exc()
        seconds = time.perf_counter() - t0
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail} [{seconds:.1f} s]", flush=True)
        results.append({"check": name, "passed": bool(ok), "detail": detail, "seconds": round(seconds, 2)})
    return results


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the checks, write ``<out>/gpu_check_correctness.json``; 0 if all pass."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-dry-run", action="store_true", help="run on CPU at tiny sizes (tests the plumbing)")
    ap.add_argument("--out", default="/tmp/gpu_check", help="folder for the JSON summary")
    ap.add_argument("--only", nargs="*", default=[], help="run only these checks")
    args = ap.parse_args(argv)
    if args.cpu_dry_run:
        dev, sizes = torch.device("cpu"), DRY_SIZES
        torch.set_num_threads(1)  # tiny sizes: threads only add overhead on a shared CPU
    else:
        if not torch.cuda.is_available():
            print("FAIL cuda_available: torch.cuda.is_available() is False (torch "
                  f"{torch.__version__}); use --cpu-dry-run to test the plumbing", flush=True)
            return 1
        dev, sizes = torch.device("cuda"), GPU_SIZES
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = {"device": str(dev), "dry_run": args.cpu_dry_run, "torch": torch.__version__, "sizes": sizes.__dict__,
            "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None}
    print(f"gpu_check: {json.dumps(info)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check_work-") as work:
        results = run_checks(dev, sizes, Path(work), args.only)
    passed = sum(r["passed"] for r in results)
    summary = {**info, "passed": passed, "failed": len(results) - passed, "checks": results}
    (out / "gpu_check_correctness.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'PASS' if passed == len(results) else 'FAIL'} correctness: {passed}/{len(results)} checks passed",
          flush=True)
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
