"""Retrain throughput per target: images/s and ops per step of :func:`train_step`, synthetic inputs.

``ops_per_step``: aten ops one step dispatches (``benchmarks.opcount``; ``kernel_ops`` without
views); with ``train.cuda_graph=auto|on`` on CUDA also ``graph_images_per_s`` (the step replayed as
one CUDA graph).

Measures the model side only (forward, backward, clip, SGD/Adam step), at the sizes the
composed config gives (``preset=paper`` or ``smoke``); data loading is excluded because the CIFAR
loader is on-device and ImageNet/CheXpert loaders scale with ``train.num_workers``.
Usage: ``unrealnas bench retrain [key=value ...] [steps=N] [targets=cifar10,imagenet] [json=path]``
(or ``python -m unrealnas.benchmarks.retrain ...``): one JSON line per target on stdout; ``json=`` also
writes ``{"benchmark": "retrain", "meta": ..., "rows": [...]}``, rewritten after every target so a
run cut short keeps the targets it finished (tools/gpu_check.sh relies on that).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch

from unrealnas.benchmarks.opcount import count_ops
from unrealnas.config import compose_config
from unrealnas.cuda_graph import GraphedStep
from unrealnas.dist import DistEnv, resolve_device
from unrealnas.errors import UserError
from unrealnas.models import build_network, count_params_m
from unrealnas.nas.genotype import KNOWN_GENOTYPES
from unrealnas.train.graphed import use_train_cuda_graph
from unrealnas.train.loop import LoopOptions, build_optimizer, train_state, train_step
from unrealnas.train.retrain import network_kind
from unrealnas.train.targets.base import FIXED_32PX_TARGETS

CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000, "chexpert": 5}


def bench_target(target: str, overrides: list[str], steps: int) -> dict:
    """Images/s of ``steps`` train steps (after 2 warm-up steps) for one target."""
    cfg = compose_config([f"train={target}", *overrides])
    t = cfg.train
    device = resolve_device(str(cfg.device), DistEnv())
    kind = network_kind(cfg, target)
    side = 32 if target in FIXED_32PX_TARGETS else int(t.resolution)
    torch.manual_seed(0)
    model = build_network(kind, KNOWN_GENOTYPES["DARTS_V2"], int(t.init_channels), CLASSES[target], int(t.layers),
                          auxiliary=t.auxiliary_weight > 0).to(device)
    model.drop_path_prob = float(t.drop_path) / 2
    amp = {"auto": "bf16" if device.type == "cuda" else None, "off": None}.get(t.amp, t.amp)
    cl = device.type == "cuda" and t.channels_last != "off"
    if cl:
        model.to(memory_format=torch.channels_last)
    opts = LoopOptions(epochs=1, lr=float(t.lr), optimizer=str(t.optimizer), aux_weight=float(t.auxiliary_weight),
                       grad_clip=float(t.grad_clip), amp=amp, channels_last=cl)
    opt = build_optimizer(model, opts)
    bs = int(t.batch_size)
    x = torch.randn(bs, 3, side, side, device=device)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    multilabel = target == "chexpert"
    y = (torch.randint(0, 2, (bs, 5), device=device).float() if multilabel
         else torch.randint(0, CLASSES[target], (bs,), device=device))
    model.train()
    for _ in range(2):
        train_step(model, opt, x, y, opts, multilabel)
    # aten ops one step dispatches (device-independent; each is >= 1 kernel launch on a GPU)
    ops = count_ops(lambda: train_step(model, opt, x, y, opts, multilabel))
    row = {"target": target, "device": str(device), "preset": cfg.preset, "layers": int(t.layers),
           "init_channels": int(t.init_channels), "resolution": side, "batch": bs,
           "params_m": round(count_params_m(model), 3), "ops_per_step": ops.total,
           "kernel_ops": ops.total - ops.metadata,
           "images_per_s": round(bs * steps / _time_steps(lambda: train_step(model, opt, x, y, opts, multilabel),
                                                          steps, device), 1)}
    if use_train_cuda_graph(str(t.cuda_graph), device, opts.optimizer, amp, False):
        # train.cuda_graph: the same step replayed as one CUDA graph (warm-up and capture untimed)
        opts.cuda_graph = True
        graphed = GraphedStep(lambda a, b: train_step(model, opt, a, b, opts, multilabel), device=device,
                              state=lambda: train_state(model, opt),
                              # drop path draws other masks inside the graph than eager: guard only, no compare
                              checked=(lambda: dict(model.named_parameters())) if model.drop_path_prob == 0 else None,
                              setting_name="train.cuda_graph", strict=str(t.cuda_graph) == "on")
        for _ in range(4):
            graphed(0, x, y)
        if graphed.fell_back:  # timing the eager fallback as "graph" would mislead
            row["graph_fell_back"] = graphed.reason
        else:
            row["graph_images_per_s"] = round(bs * steps / _time_steps(lambda: graphed(0, x, y), steps, device), 1)
    return row


def _time_steps(step, steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    """Print one JSON line per target (and write them to ``json=`` after each)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    steps, targets, out = 5, list(CLASSES), None
    overrides = []
    for a in argv:
        if a.startswith("steps="):
            steps = int(a.split("=", 1)[1])
        elif a.startswith("targets="):
            targets = [t for t in a.split("=", 1)[1].split(",") if t]
            unknown = sorted(set(targets) - set(CLASSES))
            if unknown:
                raise UserError(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(CLASSES)}")
        elif a.startswith("json="):
            out = Path(a.split("=", 1)[1])
        else:
            overrides.append(a)
    meta = {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "steps": steps, "overrides": overrides,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    rows = []
    for target in targets:
        rows.append(bench_target(target, overrides, steps))
        print(json.dumps(rows[-1]), flush=True)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"benchmark": "retrain", "meta": meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
