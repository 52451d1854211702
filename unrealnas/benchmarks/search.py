"""Speed of the search engine: ops, seconds and images per iteration, and projected hours of a paper search.

``unrealnas bench search [preset=paper] [steps=N] [warmup=N] [methods=darts,darts2]
[supernet=per_edge,fused] [packed=1,5] [precision=fp32,bf16] [graph=eager,graph] [compile=true]
[recompute=none,cell] [quick=true] [threads=N] [json=path] [format=table|json] [device=...] [search.*=...]``

Every row times the engine's own iteration (:meth:`unrealnas.search.engine.SearchEngine.step`, the
call the search loop makes per training batch after the warm-up epochs: architecture step, then
weight step with clipping and SGD, for every packed seed) on the supernet of the composed config
(paper: 8 cells, 16 channels, batch 64, 32x32 inputs) with synthetic device-resident data (N(0,1)
images and random labels per seed, the ``same_flipped`` split: one training and one architecture
batch per iteration). Rows, side by side:

- ``supernet``: ``per_edge`` (the readable reference forward, one kernel per op per edge, inside the
  same iteration: the plain baseline) and ``fused`` (the engine);
- ``seeds``: the engine with S seeds packed (``packed=1,5``; per_edge runs one seed);
- ``precision``: ``fp32`` (the default search) and ``bf16`` autocast (with channels_last on CUDA),
  labelled as they run; bf16 rows only on CUDA unless asked for;
- ``graph``: ``eager`` or ``graph`` (the iteration replayed as a CUDA graph; CUDA, first order only);
- ``compile=true`` adds a fused S=1 row with the forward ``torch.compile``d;
- ``recompute``: ``search.recompute`` of the fused rows (``recompute=none,cell``: both, side by side);
- ``methods=darts,pcdarts``: PC-DARTS (``search.pc_k``) beside DARTS at the same sizes and batch (fused
  rows only: the per-edge reference is DARTS's).

``saved_mib_per_seed`` is the memory of activations: the bytes one training forward leaves alive for
its backward (:func:`unrealnas.search.memory.retained_bytes`), per seed, at the row's batch; ``peak_mib`` (CUDA) the
allocator's peak over the timed iterations.

``ops_per_iter`` is the number of aten ops one more (untimed, eager) iteration dispatches, counted
with a ``TorchDispatchMode`` (:mod:`unrealnas.benchmarks.opcount`): the device-independent cost, one
kernel launch or more each on a GPU; ``kernel_ops`` leaves out view/alias ops. A graph row's count
is the eager iteration's (a replay is one launch). Ratios: ``vs_per_edge`` (time, and
``ops_vs_per_edge``) against the per_edge row of the same method and precision; ``ops_vs_S1`` and
``per_seed_vs_S1`` (time per seed) against the fused one-seed row. ``paper_search_h`` projects one
paper search (``paper_seeds_h``: all S) at that cost: 5 warm-up + 50 search epochs x 390
iterations, warm-up iterations counted at full cost (an upper bound), per-image scaled when the
batch differs from the paper's 64 (``quick=true`` on CPU times batch 8: a paper iteration at batch
64 takes tens of seconds on 2 cores). Timing is wall clock over ``steps`` iterations after
``warmup`` untimed ones, with a device synchronize at both ends; measure alone on the machine.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from unrealnas.atomic import write_json_atomic
from unrealnas.benchmarks.opcount import count_ops
from unrealnas.benchmarks.table import machine_info, pop_options, report, set_threads
from unrealnas.config import compose_config
from unrealnas.config.methods import ITERATIVE_METHODS
from unrealnas.config.methods import method as method_facts
from unrealnas.config.schema import RECOMPUTE, DataConfig, SearchConfig
from unrealnas.data.loaders import SplitData, search_loaders
from unrealnas.errors import ConfigError
from unrealnas.nas.supernet import SuperNet
from unrealnas.runtime import resolve_device, use_channels_last
from unrealnas.search.engine import SearchEngine, SeedState, StepSettings
from unrealnas.search.memory import MIB, retained_bytes
from unrealnas.search.state import ValStream

METHODS = ITERATIVE_METHODS  # what can be timed: the supernet searches
SUPERNETS = ("per_edge", "fused")
PRECISIONS = ("fp32", "bf16")
GRAPHS = ("eager", "graph")
QUICK_CPU_BATCH = 8
OPTIONS: dict[str, tuple[type, Any]] = {
    "quick": (bool, False), "steps": (int, None), "warmup": (int, None), "methods": (str, "darts,darts2"),
    "compile": (bool, False), "json": (str, None), "threads": (int, None), "supernet": (str, "per_edge,fused"),
    "packed": (str, "1,5"), "precision": (str, None), "graph": (str, None), "format": (str, "table"),
    "recompute": (str, "none")}


@dataclass
class EngineBench:
    """An engine over fresh seeded supernets, with endless synthetic batch streams per seed."""

    engine: SearchEngine
    train: list[Iterator[tuple[torch.Tensor, torch.Tensor]]]
    val: list[ValStream]

    def step(self) -> None:
        """One search iteration (search epochs: architecture step, then weight step)."""
        e = self.engine
        x, y = e.stack([next(t) for t in self.train])
        xv, yv = e.stack([next(v) for v in self.val])
        e.step(x, y, xv, yv)


def _cycle_epochs(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


def build_engine_bench(cfg: DictConfig, method: str, seeds: int, device: torch.device, batch: int | None = None,
                       supernet: str = "fused", precision: str = "fp32", graph: bool = False,
                       compile_: bool = False, recompute: str = "none") -> EngineBench:
    """The engine of ``cfg.search`` for ``seeds`` fresh supernets (seed s initialised and fed as seed=s would be)."""
    s = cfg.search
    batch = int(batch or s.batch_size)
    side = int(s.resolution or cfg.data.resolution)
    classes, channels = int(cfg.data.num_classes), int(cfg.data.channels)
    states, trains, vals = [], [], []
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        n = 8 * batch  # enough that the streams cross epoch boundaries, as a real run does
        images = torch.randn(n, channels, side, side, generator=g).to(torch.float16)
        data = SplitData(images.to(device), torch.randint(0, classes, (n,), generator=g).to(device),
                         {"normalization": None})
        train, val = search_loaders(data, batch, seed, "same_flipped", 0.5)
        trains.append(_cycle_epochs(train))
        vals.append(ValStream(val))
        torch.manual_seed(seed)
        model = SuperNet(s.init_channels, classes, s.layers, s.nodes, s.stem_multiplier, s.alpha_init,
                         in_channels=channels, fused=supernet == "fused",
                         partial_channels=int(s.pc_k) if method_facts(method).partial_channels else None).to(device)
        states.append(SeedState(model, torch.optim.SGD(model.weight_parameters(), lr=s.lr, momentum=s.momentum),
                                torch.optim.Adam(model.arch_parameters(), lr=s.arch_lr, betas=tuple(s.arch_betas))))
    bf16 = precision == "bf16"
    settings = StepSettings(method, float(s.grad_clip), "bf16" if bf16 else "off",
                            bf16 and use_channels_last(device, "auto"), "on" if graph else "off", compile_, supernet,
                            recompute)
    return EngineBench(SearchEngine(states, settings, device), trains, vals)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(b: EngineBench, device: torch.device, steps: int, warmup: int, count: bool = True) -> dict[str, Any]:
    """Seconds per iteration over ``steps`` after ``warmup`` untimed ones; ops of one more eager iteration."""
    if steps < 1:
        raise ConfigError(f"steps={steps}: time at least one iteration")
    for _ in range(warmup):
        b.step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        b.step()
    _sync(device)
    out: dict[str, Any] = {"s_per_iter": (time.perf_counter() - t0) / steps}
    # the peak of the timed iterations (every pass of the method, all packed seeds): what a card must hold
    out["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    out["ops_per_iter"] = out["kernel_ops"] = None
    if count:
        graphed, b.engine.graphed = b.engine.graphed, None  # count the eager iteration the graph replays
        try:
            ops = count_ops(b.step)
        finally:
            b.engine.graphed = graphed
        out["ops_per_iter"], out["kernel_ops"] = ops.total, ops.total - ops.metadata
    out["saved_mib_per_seed"] = forward_retained_mib(b) if count else None  # compiled: not visible to a mode
    return out


def forward_retained_mib(b: EngineBench) -> float:
    """MiB one training forward of the engine's network keeps for its backward, per packed seed."""
    e = b.engine
    x, y = e.stack([next(t) for t in b.train])
    with torch.enable_grad():
        return retained_bytes(lambda: e._losses(x, y)[0]) / e.S / MIB


def paper_schedule() -> dict[str, int]:
    """Epochs and iterations of a full paper search, from the schema defaults (the paper preset)."""
    s, d = SearchConfig(), DataConfig()
    n_train = s.num_train or int(s.train_portion * int(d.num_images))
    return {"warmup_epochs": s.warmup_epochs, "search_epochs": s.epochs, "batch_size": s.batch_size,
            "iters_per_epoch": n_train // s.batch_size, "train_images": n_train}


def paper_hours(s_per_iter: float, batch: int) -> float:
    """Hours of one paper search schedule at ``s_per_iter`` (warm-up iterations at full cost; per-image scaled)."""
    p = paper_schedule()
    iters = p["iters_per_epoch"] * (p["warmup_epochs"] + p["search_epochs"])
    return iters * s_per_iter * p["batch_size"] / batch / 3600.0


def plan_rows(methods: list[str], supernets: list[str], seeds: list[int], precisions: list[str], graphs: list[str],
              device: torch.device, compile_: bool, recomputes: tuple[str, ...] = ("none",)) -> list[dict[str, Any]]:
    """The (method, supernet, seeds, precision, graph, compile, recompute) combinations one run measures, in print order."""
    out = []
    for method in methods:
        for precision in precisions:
            for supernet in supernets:
                if supernet == "per_edge" and method_facts(method).partial_channels:
                    continue  # the per-edge reference is DARTS's; PC-DARTS runs in the fused supernet only
                for S in ([1] if supernet == "per_edge" else seeds):
                    for graph in graphs:
                        if graph == "graph" and (device.type != "cuda" or not method_facts(method).graphable
                                                 or supernet == "per_edge"):
                            continue
                        for rec in (["none"] if supernet == "per_edge" else recomputes):  # the reference keeps all
                            out.append({"method": method, "supernet": supernet, "seeds": S, "precision": precision,
                                        "graph": graph, "compile": False, "recompute": rec})
            if compile_:
                out.append({"method": method, "supernet": "fused", "seeds": 1, "precision": precision,
                            "graph": "eager", "compile": True, "recompute": "none"})
    return out


def run_search_benchmark(cfg: DictConfig, methods: list[str], steps: int, warmup: int, batch: int | None = None,
                         supernets: list[str] | None = None, seeds: list[int] | None = None,
                         precisions: list[str] | None = None, graphs: list[str] | None = None, compile_: bool = False,
                         say: Callable[[str], None] = lambda _m: None,
                         recomputes: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of every planned combination measured on ``cfg.device``, with their ratios."""
    device = resolve_device(cfg.device)
    supernets = supernets or list(SUPERNETS)
    seeds = seeds or [1]
    precisions = precisions or (["fp32", "bf16"] if device.type == "cuda" else ["fp32"])
    graphs = graphs or (["eager", "graph"] if device.type == "cuda" else ["eager"])
    recomputes = recomputes or ["none"]
    for name, given, valid in (("methods", methods, METHODS), ("supernet", supernets, SUPERNETS),
                               ("precision", precisions, PRECISIONS), ("graph", graphs, GRAPHS),
                               ("recompute", recomputes, RECOMPUTE)):
        bad = [v for v in given if v not in valid]
        if bad:
            raise ConfigError(f"bench search {name}={','.join(given)}: {bad[0]!r} is not one of {', '.join(valid)}")
    if any(n < 1 for n in seeds):
        raise ConfigError(f"bench search packed={seeds}: seed counts are 1 or more")
    batch = int(batch or cfg.search.batch_size)
    rows: list[dict[str, Any]] = []
    for combo in plan_rows(methods, supernets, seeds, precisions, graphs, device, compile_, tuple(recomputes)):
        say(f"bench search: {combo['method']} {combo['supernet']} S={combo['seeds']} {combo['precision']} "
            f"{combo['graph']}{' compile' if combo['compile'] else ''} recompute={combo['recompute']} on {device} "
            f"(batch {batch} per seed)")
        b = build_engine_bench(cfg, combo["method"], combo["seeds"], device, batch, combo["supernet"],
                               combo["precision"], combo["graph"] == "graph", combo["compile"], combo["recompute"])
        # graph capture (and its self-check) and compilation happen in the first calls: untimed
        t = measure(b, device, steps, max(warmup, 4) if combo["graph"] == "graph" or combo["compile"] else warmup,
                    count=not combo["compile"])  # a dispatch mode does not see inside compiled graphs
        graph_outcome = b.engine.record()["cuda_graph"]
        del b
        _sync(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        S = combo["seeds"]
        rows.append({**combo, "engine": "per_edge" if combo["supernet"] == "per_edge" else "engine",
                     "device": str(device), "batch": batch, "steps": steps, **t,
                     "images_per_s": S * batch / t["s_per_iter"], "paper_search_h": paper_hours(t["s_per_iter"] / S,
                                                                                                 batch),
                     "paper_seeds_h": paper_hours(t["s_per_iter"], batch),
                     "note": _note(combo, batch, graph_outcome)})
    _ratios(rows)
    return [{**{k: r[k] for k in COLUMNS if k in r}, **r} for r in rows]


def _note(combo: dict[str, Any], batch: int, graph: dict[str, Any]) -> str:
    notes = []
    if batch != paper_schedule()["batch_size"]:
        notes.append(f"batch {batch}: projection scaled per image to batch 64")
    if combo["graph"] == "graph" and graph.get("cuda_graph") != "used":
        notes.append(f"graph {graph.get('cuda_graph')}: {graph.get('reason')}")
    if combo["compile"]:
        notes.append("torch.compile'd forward: no op count")
    return "; ".join(notes)


def _ratios(rows: list[dict[str, Any]]) -> None:
    def find(r: dict[str, Any], **want: Any) -> dict[str, Any] | None:
        keys = ("method", "precision")
        return next((o for o in rows if all(o[k] == r[k] for k in keys) and all(o[k] == v for k, v in want.items())),
                    None)

    for r in rows:
        pe = find(r, supernet="per_edge", graph="eager", compile=False)
        one = find(r, supernet="fused", seeds=1, graph="eager", compile=False, recompute=r["recompute"])
        plain = find(r, supernet=r["supernet"], seeds=r["seeds"], graph=r["graph"], compile=r["compile"],
                     recompute="none")
        r["ops_vs_none"] = (r["ops_per_iter"] / plain["ops_per_iter"]
                            if plain and r["recompute"] != "none" and r["ops_per_iter"] and plain["ops_per_iter"]
                            else None)
        r["vs_per_edge"] = pe["s_per_iter"] / r["s_per_iter"] if pe and r["supernet"] != "per_edge" else None
        r["ops_vs_per_edge"] = (pe["ops_per_iter"] / r["ops_per_iter"]
                                if pe and r["supernet"] != "per_edge" and r["ops_per_iter"] else None)
        r["ops_vs_S1"] = (r["ops_per_iter"] / one["ops_per_iter"]
                          if one and r["supernet"] == "fused" and r["ops_per_iter"] else None)
        r["per_seed_vs_S1"] = (one["s_per_iter"] / (r["s_per_iter"] / r["seeds"])
                               if one and r["supernet"] == "fused" else None)


# the print order, and the key order of the JSON rows (reports that show the first columns show these)
COLUMNS = ("method", "engine", "seeds", "precision", "graph", "recompute", "ops_per_iter", "ops_vs_per_edge",
           "ops_vs_S1", "ops_vs_none", "saved_mib_per_seed", "peak_mib", "s_per_iter", "images_per_s", "vs_per_edge", "per_seed_vs_S1", "paper_search_h", "paper_seeds_h",
           "kernel_ops", "device", "batch", "note")


def _list(raw: Any) -> list[str] | None:
    return [v.strip() for v in str(raw).split(",") if v.strip()] if raw not in (None, "", "none", "null") else None


def main(overrides: list[str]) -> int:
    """``unrealnas bench search``: time the engine's iterations and print the table (or JSON rows)."""
    opts, rest = pop_options(overrides, OPTIONS)
    if opts["format"] not in ("table", "json"):
        raise ConfigError(f"bench search format={opts['format']}: choose table or json")
    set_threads(opts["threads"])
    cfg = compose_config(rest)
    device = resolve_device(cfg.device)
    cpu = device.type == "cpu"
    quick = bool(opts["quick"])
    steps = opts["steps"] or (1 if cpu else 5 if quick else 20)
    warmup = opts["warmup"] if opts["warmup"] is not None else (1 if cpu else 2 if quick else 3)
    batch = QUICK_CPU_BATCH if (quick and cpu) else None
    methods = _list(opts["methods"]) or ["darts"]
    seeds = [int(v) for v in (_list(opts["packed"]) or ["1"])]
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    rows = run_search_benchmark(cfg, methods, steps, warmup, batch, _list(opts["supernet"]), seeds,
                                _list(opts["precision"]), _list(opts["graph"]), bool(opts["compile"]), say,
                                _list(opts["recompute"]) or ["none"])
    p = paper_schedule()
    notes = [f"preset={cfg.preset}: supernet {cfg.search.layers} cells, {cfg.search.init_channels} channels, "
             f"{cfg.search.resolution or cfg.data.resolution} px, {cfg.data.num_classes} classes; {warmup} warm-up + "
             f"{steps} timed iterations per row; every row runs SearchEngine.step (the search loop's call)",
             "ops_per_iter: aten ops one eager iteration dispatches (device-independent); kernel_ops: less view/alias "
             "ops; vs_per_edge, ops_vs_per_edge: per_edge / this row; ops_vs_S1: this row / fused S=1; "
             "per_seed_vs_S1: time per seed, fused S=1 / this row; ops_vs_none: this row / its recompute=none row",
             "saved_mib_per_seed: MiB one training forward keeps alive for backward, per seed, at this batch "
             "(device independent; scales with the batch); peak_mib: CUDA max_memory_allocated over the timed "
             "iterations (all seeds, every pass)",
             f"paper_search_h: one search, {p['warmup_epochs']} + {p['search_epochs']} epochs x {p['iters_per_epoch']} "
             "iterations, warm-up at full cost (upper bound); paper_seeds_h: all S packed seeds"]
    if cfg.preset != "paper":
        notes.append(f"preset={cfg.preset}: the projections use this preset's iteration cost, not the paper's")
    meta = {"preset": cfg.preset, "steps": steps, "warmup": warmup, "quick": quick,
            "config": OmegaConf.to_container(cfg.search, resolve=True)}
    if opts["format"] == "json":  # rows only on stdout: for scripts (``| jq``)
        doc = {"benchmark": "search", "meta": {**machine_info(), **meta}, "rows": rows, "notes": notes}
        print(json.dumps(doc, indent=1, default=str))
        if opts["json"]:
            write_json_atomic(Path(opts["json"]), doc)
        return 0
    report("search", rows, COLUMNS, opts["json"], notes, meta=meta)
    return 0
