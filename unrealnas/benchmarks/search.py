"""Speed of the search loop: images/s of DARTS iterations and projected hours of a full paper search.

``unrealnas bench search [preset=paper] [steps=N] [warmup=N] [methods=darts,darts2] [compile=true]
[supernet=per_edge,fused] [quick=true] [threads=N] [json=path] [device=...] [search.*=...]``

What is timed: ``steps`` search iterations after ``warmup`` untimed ones, on the supernet of the
composed config (paper: 8 cells, 16 channels, batch 64, 32x32 inputs, ``data.num_classes`` outputs)
on ``device``. One iteration is what ``SearchRun.run`` does for one training batch after the warm-up
epochs, with the same calls in the same order (``search_iteration`` mirrors its loop body): fetch a
weight-step batch from a ``DeviceLoader`` and an architecture-step batch from the persistent
validation stream (``same_flipped`` split over N(0,1) images held on the device), one
``Architect.step`` (first order for ``darts``, the unrolled second-order step for ``darts2``), then
one SGD weight step (forward, cross-entropy, backward, gradient clipping, ``optimizer.step``).
Variants, each with a fresh supernet from the same seed:

- ``baseline``: plain eager fp32: no channels_last, no autocast, no compile;
- ``optimised``: channels_last and bf16 autocast as ``search.channels_last`` / ``search.amp`` select
  (``auto``: both on CUDA, neither on CPU, so on CPU it is the baseline and is not re-measured;
  the second-order hypergradient stays in fp32 either way, as ``Architect`` does by default);
- ``compile`` (``compile=true``): the optimised variant with the weight-step forward
  ``torch.compile``d, as ``search.compile=true`` does in ``SearchRun``.

Each variant is measured for every supernet engine of ``supernet=`` (default ``search.supernet``);
``supernet=per_edge,fused`` prints both side by side, with the fused/per-edge ratios of time and of
``ops_per_iter``: the aten ops one more (uncounted in the timing) iteration dispatches, the
device-independent cost (``benchmarks.opcount``); ``kernel_ops`` leaves out view/alias ops.

Timing: wall clock over the timed iterations; on CUDA with CUDA events recorded between the phases
(no host sync inside the loop) and one synchronize at the end. The architecture phase includes
fetching both batches. ``images_per_s`` counts training-split images, as ``SearchRun`` logs it
(each iteration also reads one validation batch). The projection is for a full paper search with
the paper's schedule: 5 warm-up epochs (weight step only) + 50 search epochs, each of
floor(25,000 / 64) iterations; when the measured batch differs from the paper's 64 (``quick`` on
CPU) the per-image cost is scaled and the row says so. ``quick=true`` on CPU measures the paper
supernet at batch 8 with 1 warm-up and 1 timed iteration (a paper iteration at batch 64 takes
20-40 s on 2 cores and ~9 GB of memory, and much more on a loaded machine).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from unrealnas.benchmarks.opcount import count_ops
from unrealnas.benchmarks.table import pop_options, report, set_threads
from unrealnas.config import compose_config
from unrealnas.config.schema import DataConfig, SearchConfig
from unrealnas.data.loaders import SplitData, search_loaders
from unrealnas.errors import ConfigError
from unrealnas.nas.darts import Architect
from unrealnas.nas.supernet import SuperNet
from unrealnas.runtime import autocast_for, resolve_device, use_channels_last
from unrealnas.search.run import ValStream

VARIANTS = ("baseline", "optimised", "compile")
METHODS = ("darts", "darts2")
SUPERNETS = ("per_edge", "fused")
QUICK_CPU_BATCH = 8
OPTIONS: dict[str, tuple[type, Any]] = {
    "quick": (bool, False), "steps": (int, None), "warmup": (int, None), "methods": (str, "darts,darts2"),
    "compile": (bool, False), "json": (str, None), "threads": (int, None), "supernet": (str, None),
    "packed": (str, "1,5")}  # packed-seed rows (unrealnas.benchmarks.packed); packed=null skips them


@dataclass
class SearchBench:
    """One supernet with its optimizers and data streams, set up as ``SearchRun`` sets it up."""

    model: SuperNet
    forward: Callable[[torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    architect: Architect
    train_batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    val: ValStream
    amp: str
    channels_last: bool
    grad_clip: float


def _cycle_epochs(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


def build_search_bench(s: DictConfig | SearchConfig, num_classes: int, in_channels: int, resolution: int,
                       device: torch.device, variant: str, seed: int = 0, batch_size: int | None = None) -> SearchBench:
    """A fresh supernet (seeded), SGD + Architect and device-resident batches for one timing variant."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    batch = int(batch_size or s.batch_size)
    # enough N(0,1) images (RLRN-like) that the streams cross epoch boundaries as a real run does
    n = 8 * batch
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, in_channels, resolution, resolution, generator=g).to(torch.float16)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    data = SplitData(images.to(device), labels.to(device), {"normalization": None})
    train_loader, val_loader = search_loaders(data, batch, seed, "same_flipped", 0.5)
    torch.manual_seed(seed)
    model = SuperNet(s.init_channels, num_classes, s.layers, s.nodes, s.stem_multiplier, s.alpha_init,
                     in_channels=in_channels, fused=s.supernet == "fused").to(device)
    optimised = variant != "baseline"
    channels_last = optimised and use_channels_last(device, s.channels_last)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.weight_parameters(), lr=s.lr, momentum=s.momentum, weight_decay=0.0,
                                foreach=True)
    architect = Architect(model, lr=s.arch_lr, betas=tuple(s.arch_betas), weight_decay=0.0,
                          unrolled=s.method == "darts2")
    forward = torch.compile(model) if variant == "compile" else model
    return SearchBench(model, forward, optimizer, architect, _cycle_epochs(train_loader), ValStream(val_loader),
                       s.amp if optimised else "off", channels_last, float(s.grad_clip))


def search_iteration(b: SearchBench, device: torch.device, mark: Callable[[], None] = lambda: None) -> None:
    """One search iteration exactly as ``SearchRun.run``'s loop body (search epochs); ``mark`` splits the phases."""
    x, y = next(b.train_batches)
    if b.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xv, yv = next(b.val)
    if b.channels_last:
        xv = xv.contiguous(memory_format=torch.channels_last)
    with autocast_for(device, b.amp):
        b.architect.step(xv, yv, x, y, b.optimizer)
    mark()
    b.optimizer.zero_grad(set_to_none=True)
    with autocast_for(device, b.amp):
        logits = b.forward(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(b.model.weight_parameters(), b.grad_clip)
    b.optimizer.step()


class PhaseTimer:
    """Per-phase times of a run of iterations: CUDA events on a GPU (no host sync), perf_counter on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        """Record a time point."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        """Seconds between consecutive marks (synchronizes once on CUDA)."""
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000.0 for a, b in zip(self.marks, self.marks[1:], strict=False)]
        return [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]


def time_search_iterations(b: SearchBench, device: torch.device, steps: int, warmup: int) -> dict[str, float]:
    """Seconds per iteration (total, architecture phase, weight phase) over ``steps`` timed iterations."""
    if steps < 1:
        raise ConfigError(f"steps={steps}: time at least one iteration")
    for _ in range(warmup):
        search_iteration(b, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    timer = PhaseTimer(device)
    timer.mark()
    wall = time.perf_counter()
    for _ in range(steps):
        search_iteration(b, device, timer.mark)
        timer.mark()
    gaps = timer.seconds()
    wall = time.perf_counter() - wall
    arch, weight = sum(gaps[0::2]), sum(gaps[1::2])
    return {"s_per_iter": (arch + weight) / steps, "arch_s": arch / steps, "weight_s": weight / steps,
            "wall_s": wall}


def paper_schedule() -> dict[str, int]:
    """Epochs and iterations of a full paper search, from the schema defaults (the paper preset)."""
    s, d = SearchConfig(), DataConfig()
    n_train = s.num_train or int(s.train_portion * int(d.num_images))
    return {"warmup_epochs": s.warmup_epochs, "search_epochs": s.epochs, "batch_size": s.batch_size,
            "iters_per_epoch": n_train // s.batch_size, "train_images": n_train}


def project_paper_hours(arch_s: float, weight_s: float, batch_size: int) -> float:
    """Hours of a full paper search at these per-iteration costs (scaled per image if the batch differs)."""
    p = paper_schedule()
    scale = p["batch_size"] / batch_size
    per_search_iter, per_warmup_iter = (arch_s + weight_s) * scale, weight_s * scale
    seconds = p["iters_per_epoch"] * (p["search_epochs"] * per_search_iter + p["warmup_epochs"] * per_warmup_iter)
    return seconds / 3600.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def count_iteration_ops(b: SearchBench, device: torch.device) -> tuple[int, int]:
    """(aten ops dispatched, kernel ops = those less view/alias ops) by one more search iteration."""
    counter = count_ops(lambda: search_iteration(b, device))
    return counter.total, counter.total - counter.metadata


def bench_method(cfg: DictConfig, method: str, device: torch.device, steps: int, warmup: int, compile_: bool,
                 batch_size: int | None = None, say: Callable[[str], None] = lambda _m: None,
                 supernets: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows for one method: baseline, optimised (re-measured only where it differs), compile if asked,
    each for every supernet engine in ``supernets`` (default: ``search.supernet``)."""
    s = cfg.search.copy()
    s.method = method
    resolution = int(cfg.search.resolution or cfg.data.resolution)
    batch = int(batch_size or s.batch_size)
    optimised_differs = use_channels_last(device, s.channels_last) or amp_enabled(device, s.amp)
    variants = ["baseline", "optimised"] + (["compile"] if compile_ else [])
    engines = supernets or [str(s.supernet)]
    rows: list[dict[str, Any]] = []
    base: dict[str, dict[str, float]] = {}
    per_edge: dict[str, dict[str, float]] = {}
    for variant in variants:
        for engine in engines:
            rows.append(_bench_row(cfg, s, method, variant, engine, device, steps, warmup, batch, resolution,
                                   optimised_differs, base, per_edge, say))
    return rows


def _bench_row(cfg: DictConfig, s: DictConfig, method: str, variant: str, engine: str, device: torch.device,
               steps: int, warmup: int, batch: int, resolution: int, optimised_differs: bool,
               base: dict[str, dict[str, float]], per_edge: dict[str, dict[str, float]],
               say: Callable[[str], None]) -> dict[str, Any]:
    # base: the baseline timing per engine; per_edge: the per_edge timing per variant (for the ratios)
    note = ""
    if variant == "optimised" and not optimised_differs:
        t = dict(base.get(engine, {}))
        note = f"= baseline, not re-measured: amp={s.amp}, channels_last={s.channels_last} are off on {device.type}"
    else:
        say(f"bench search: {method} {variant} {engine} on {device} (batch {batch}, {warmup} warm-up + {steps} steps)")
        s.supernet = engine
        b = build_search_bench(s, int(cfg.data.num_classes), int(cfg.data.channels), resolution, device, variant,
                               int(cfg.seed), batch)
        # compiling happens in the first calls: give it at least two untimed iterations
        t = time_search_iterations(b, device, steps, max(warmup, 2) if variant == "compile" else warmup)
        # a dispatch mode does not see inside compiled graphs: no count for the compile variant
        t["ops_per_iter"], t["kernel_ops"] = count_iteration_ops(b, device) if variant != "compile" else (None, None)
        del b
        _sync(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if variant == "baseline":
        base[engine] = t
    if engine == "per_edge":
        per_edge[variant] = t
    ref = per_edge.get(variant)
    if batch != paper_schedule()["batch_size"]:
        note = (note + "; " if note else "") + f"batch {batch}: projection scaled per image to batch 64"
    b0 = base.get(engine)
    return {
        "method": method, "variant": variant, "supernet": engine, "device": str(device), "batch": batch,
        "steps": steps, "s_per_iter": t["s_per_iter"], "arch_s": t["arch_s"], "weight_s": t["weight_s"],
        "images_per_s": batch / t["s_per_iter"],
        "ops_per_iter": t.get("ops_per_iter"), "kernel_ops": t.get("kernel_ops"),
        "vs_baseline": (b0["s_per_iter"] / t["s_per_iter"]) if b0 else None,
        "vs_per_edge": (ref["s_per_iter"] / t["s_per_iter"]) if ref and engine != "per_edge" else None,
        "ops_vs_per_edge": (ref["ops_per_iter"] / t["ops_per_iter"])
        if ref and engine != "per_edge" and ref.get("ops_per_iter") and t.get("ops_per_iter") else None,
        "paper_search_h": project_paper_hours(t["arch_s"], t["weight_s"], batch),
        "amp": "bf16" if variant != "baseline" and amp_enabled(device, s.amp) else "off",
        "channels_last": variant != "baseline" and use_channels_last(device, s.channels_last),
        "note": note,
    }


def amp_enabled(device: torch.device, amp: str) -> bool:
    """Whether ``search.amp`` turns bf16 autocast on for ``device`` (the rule of ``runtime.autocast_for``)."""
    return not isinstance(autocast_for(device, amp), contextlib.nullcontext)


def run_search_benchmark(cfg: DictConfig, methods: list[str], steps: int, warmup: int, compile_: bool = False,
                         batch_size: int | None = None, say: Callable[[str], None] = lambda _m: None,
                         supernets: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of every (method, variant, supernet engine) measured on ``cfg.device``."""
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r} for bench search; choose from {', '.join(METHODS)}")
    for e in supernets or []:
        if e not in SUPERNETS:
            raise ConfigError(f"unknown supernet {e!r} for bench search; choose from {', '.join(SUPERNETS)}")
    device = resolve_device(cfg.device)
    rows = []
    for method in methods:
        rows += bench_method(cfg, method, device, steps, warmup, compile_, batch_size, say, supernets)
    return rows


COLUMNS = ("method", "variant", "supernet", "amp", "channels_last", "device", "batch", "steps", "ops_per_iter",
           "kernel_ops", "ops_vs_per_edge", "s_per_iter", "arch_s", "weight_s", "images_per_s", "vs_baseline",
           "vs_per_edge", "paper_search_h", "note")


def main(overrides: list[str]) -> int:
    """``unrealnas bench search``: time the search iterations and print the table."""
    import sys

    opts, rest = pop_options(overrides, OPTIONS)
    set_threads(opts["threads"])
    cfg = compose_config(rest)
    device = resolve_device(cfg.device)
    cpu = device.type == "cpu"
    quick = bool(opts["quick"])
    steps = opts["steps"] or (1 if cpu else 5 if quick else 20)
    warmup = opts["warmup"] if opts["warmup"] is not None else (1 if cpu else 2 if quick else 3)
    batch = QUICK_CPU_BATCH if (quick and cpu) else None
    methods = [m.strip() for m in str(opts["methods"]).split(",") if m.strip()]
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    supernets = [e.strip() for e in str(opts["supernet"]).split(",") if e.strip()] if opts["supernet"] else None
    rows = run_search_benchmark(cfg, methods, steps, warmup, opts["compile"], batch, say, supernets)
    p = paper_schedule()
    notes = [f"preset={cfg.preset}: supernet {cfg.search.layers} cells, {cfg.search.init_channels} channels, "
             f"{cfg.search.resolution or cfg.data.resolution}x{cfg.search.resolution or cfg.data.resolution}, "
             f"{cfg.data.num_classes} classes; {warmup} warm-up + {steps} timed iterations per row",
             "images_per_s: training-split images per second (each iteration also reads one validation batch)",
             "ops_per_iter: aten ops one iteration dispatches (each at least one kernel launch on a GPU); "
             "kernel_ops: those less view/alias ops; ops_vs_per_edge, vs_per_edge: per_edge / this row",
             f"paper_search_h: {p['warmup_epochs']} warm-up epochs (weight step only) + {p['search_epochs']} search "
             f"epochs x {p['iters_per_epoch']} iterations (25k train images, batch {p['batch_size']})"]
    if cfg.preset != "paper":
        notes.append(f"preset={cfg.preset}: paper_search_h uses this preset's iteration cost, not the paper supernet's")
    report("search", rows, COLUMNS, opts["json"], notes,
           meta={"preset": cfg.preset, "steps": steps, "warmup": warmup, "quick": quick})
    if opts["packed"]:
        from unrealnas.benchmarks.packed import report_packed

        report_packed(cfg, device, str(opts["packed"]), steps, warmup, batch, opts["json"], say)
    return 0
