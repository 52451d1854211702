"""Packed-seed rows of ``unrealnas bench search``: one search vs S searches packed in one network.

For each row, the same first-order DARTS iteration the search loop runs, on the supernet of the
composed config with synthetic device-resident data (N(0,1) images, random labels, one stream per
seed, the ``same_flipped`` split):

- ``single``: today's engine, one seed (``SearchRun``'s loop body, ``search_iteration``);
- ``packed S=n``: :class:`~unrealnas.search.packed.PackedSearch` over n seeds (one seed-stacked
  network); on CUDA also ``packed S=n graph`` (``search.cuda_graph``: the iteration replayed as one
  CUDA graph).

``ops_per_iter`` is the number of aten ops one iteration dispatches (counted with
:func:`~unrealnas.benchmarks.opcount.count_ops` on the last warm-up iteration; for a graph row it is
the eager count, a replay being one launch); ``kernel_ops`` leaves out the view/alias ops that
launch nothing. ``images_per_s`` counts the training images of all packed seeds;
``paper_seeds_h`` projects the hours of all ``S`` paper searches at that cost (55 epochs x 390
iterations, the 5 weight-only warm-up epochs counted at full cost: an upper bound; per-image scaled
when the batch differs from the paper's 64).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from unrealnas.benchmarks.opcount import count_ops
from unrealnas.data.loaders import SplitData, search_loaders
from unrealnas.nas.darts import Architect
from unrealnas.nas.supernet import SuperNet
from unrealnas.search.packed import PackedSearch
from unrealnas.search.run import ValStream

PACKED_COLUMNS = ("engine", "seeds", "device", "batch", "steps", "ops_per_iter", "kernel_ops", "ops_vs_single",
                  "s_per_iter", "images_per_s", "paper_seeds_h", "note")


def _cycle(loader) -> Any:
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


def _seed_run(cfg: DictConfig, seed: int, device: torch.device, batch: int) -> SimpleNamespace:
    """What PackedSearch reads of a SearchRun, for one seed, on synthetic data."""
    s = cfg.search
    side = int(s.resolution or cfg.data.resolution)
    classes, channels = int(cfg.data.num_classes), int(cfg.data.channels)
    g = torch.Generator().manual_seed(seed)
    n = 8 * batch  # enough that the streams cross epoch boundaries, as a real run does
    images = torch.randn(n, channels, side, side, generator=g).to(torch.float16)
    data = SplitData(images.to(device), torch.randint(0, classes, (n,), generator=g).to(device), {"normalization": None})
    train, val = search_loaders(data, batch, seed, "same_flipped", 0.5)
    torch.manual_seed(seed)
    model = SuperNet(s.init_channels, classes, s.layers, s.nodes, s.stem_multiplier, s.alpha_init,
                     in_channels=channels).to(device)
    optimizer = torch.optim.SGD(model.weight_parameters(), lr=s.lr, momentum=s.momentum, weight_decay=0.0)
    architect = Architect(model, lr=s.arch_lr, betas=tuple(s.arch_betas), weight_decay=0.0)
    run_cfg = OmegaConf.merge(cfg, {"search": {"method": "darts", "amp": "off", "channels_last": "off"}})
    return SimpleNamespace(cfg=run_cfg, device=device, say=lambda _m: None, model=model, optimizer=optimizer,
                           architect=architect, channels_last=False, train=_cycle(train), val=ValStream(val))


def packed_iteration(cfg: DictConfig, seeds: int, device: torch.device, batch: int,
                     cuda_graph: bool = False) -> tuple[Callable[[], None], PackedSearch]:
    """(a closure running one packed search iteration of ``seeds`` seeds, the pack), fresh networks.

    Seed s starts, and is fed, exactly as ``benchmarks.search.build_search_bench(..., seed=s)``.
    """
    cfg = OmegaConf.merge(cfg, {"search": {"cuda_graph": "on" if cuda_graph else "off"}})
    runs = [_seed_run(cfg, s, device, batch) for s in range(seeds)]
    pack = PackedSearch(runs)  # type: ignore[arg-type]

    def step() -> None:
        x, y = pack._stack([next(r.train) for r in runs])
        xv, yv = pack._stack([next(r.val) for r in runs])
        if pack.graphed is not None:
            pack.graphed((False, batch), x, y, xv, yv)
        else:
            pack.iteration(x, y, xv, yv)

    return step, pack


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(step: Callable[[], None], device: torch.device, steps: int, warmup: int) -> dict[str, float]:
    """ops of the last warm-up iteration, then seconds per iteration over ``steps`` timed ones."""
    for _ in range(max(warmup, 1) - 1):
        step()
    ops = count_ops(step)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return {"ops": ops.total, "kernel_ops": ops.total - ops.metadata, "s_per_iter": (time.perf_counter() - t0) / steps}


def packed_rows(cfg: DictConfig, device: torch.device, seed_counts: list[int], steps: int, warmup: int,
                batch_size: int | None = None, say: Callable[[str], None] = lambda _m: None) -> list[dict[str, Any]]:
    """Rows: today's single-seed engine, then packed S=n for each n (and its CUDA graph on CUDA)."""
    from unrealnas.benchmarks.search import build_search_bench, paper_schedule, search_iteration

    s = cfg.search.copy()
    s.method = "darts"
    batch = int(batch_size or s.batch_size)
    side = int(s.resolution or cfg.data.resolution)
    paper_batch = paper_schedule()["batch_size"]
    note = f"batch {batch}: projection scaled per image to batch {paper_batch}" if batch != paper_batch else ""
    rows: list[dict[str, Any]] = []

    def row(engine: str, n: int, t: dict[str, float], extra: str = "") -> None:
        base = rows[0]["ops_per_iter"] if rows else t["ops"]
        rows.append({"engine": engine, "seeds": n, "device": str(device), "batch": batch, "steps": steps,
                     "ops_per_iter": t["ops"], "kernel_ops": t["kernel_ops"], "ops_vs_single": t["ops"] / base,
                     "s_per_iter": t["s_per_iter"], "images_per_s": n * batch / t["s_per_iter"],
                     "paper_seeds_h": paper_hours(t["s_per_iter"], batch),
                     "note": "; ".join(x for x in (note, extra) if x)})

    say(f"bench search: single engine on {device} (batch {batch})")
    single = build_search_bench(s, int(cfg.data.num_classes), int(cfg.data.channels), side, device, "baseline",
                                int(cfg.seed), batch)
    row("single", 1, measure(lambda: search_iteration(single, device), device, steps, warmup),
        "today's engine, fp32 eager")
    for n in seed_counts:
        say(f"bench search: packed S={n} on {device} (batch {batch} per seed)")
        row("packed", n, measure(packed_iteration(cfg, n, device, batch)[0], device, steps, warmup), "fp32 eager")
        if device.type == "cuda":
            step, _ = packed_iteration(cfg, n, device, batch, cuda_graph=True)
            t = measure(step, device, steps, max(warmup, 4))  # warm-up + capture happen in the first calls
            row("packed graph", n, t, "CUDA graph replay: ops_per_iter = host-dispatched ops of a replay")
            torch.cuda.empty_cache()
    return rows


def paper_hours(s_per_iter: float, batch: int) -> float:
    """Hours of a paper search schedule at ``s_per_iter`` (warm-up epochs at full cost; per-image scaled)."""
    from unrealnas.benchmarks.search import paper_schedule

    p = paper_schedule()
    iters = p["iters_per_epoch"] * (p["warmup_epochs"] + p["search_epochs"])
    return iters * s_per_iter * p["batch_size"] / batch / 3600.0


def report_packed(cfg: DictConfig, device: torch.device, seeds: str, steps: int, warmup: int, batch: int | None,
                  json_path: str | None, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """``bench search`` packed rows (``packed=1,5``; ``packed=none`` skips them): print, and write JSON."""
    from unrealnas.benchmarks.table import report

    counts = [int(x) for x in seeds.split(",") if x.strip()]
    rows = packed_rows(cfg, device, counts, steps, warmup, batch, say)
    notes = ["ops_per_iter: aten ops dispatched by one first-order iteration (device-independent); "
             "kernel_ops: without view/alias ops; ops_vs_single: / the single row's ops_per_iter",
             "images_per_s: training images of all packed seeds per second; paper_seeds_h: all seeds' paper searches"]
    path = None if not json_path else str(json_path).removesuffix(".json") + "-packed.json"
    report("search (packed seeds)", rows, PACKED_COLUMNS, path, notes, meta={"steps": steps, "warmup": warmup})
    return rows
