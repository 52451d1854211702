"""Speed of result aggregation: collect N synthetic result.json files and build the tables (target < 5 s for 10,000).

``python -m unrealnas.benchmarks.aggregate [n=10000] [json=<file>] [keep=<dir>]`` (or ``unrealnas bench
aggregate``). Writes a runs folder in a temp dir shaped like a real sweep: one third searches (with
their 2x14x8 alphas and a config.yaml), two thirds retrains (metrics, params, a config.yaml), a few
failed and a few malformed files; then times, separately and in total, the collection
(:func:`collect_results`, schema checks included), the launcher-failure pass, building the table and
rendering it as markdown, LaTeX and CSV. Writing the files is not timed; they are in the page cache
when read, as they are right after a sweep on a login node.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from unrealnas.benchmarks.table import pop_options, report
from unrealnas.rundir import CONFIG_FILE, GENOTYPE_FILE, RESULT_FILE, SEARCH, TRAIN, run_path

TARGET_S = 5.0
METHODS = ("darts", "sgas_c1")
DATASETS = ("rlrd", "rlgd", "rlrn")
CLASSES = (2, 50, 100, 200, 1000, 2000, 5000, 10000)
CONFIG_TEXT = "train:\n  target: {target}\n  layers: 20\n  pretrained: null\n  run_id: {rid}\n"


def write_synthetic_runs(root: Path, n: int, seed: int = 0) -> dict[str, int]:
    """Write ``n`` result.json files (a third searches, the rest retrains) under ``root``; return the counts."""
    rng = random.Random(seed)
    cells = [(m, d, c) for m in METHODS for d in DATASETS for c in CLASSES]
    n_search = max(n // 3, 1)
    counts = {"search": 0, "train": 0, "failed": 0, "malformed": 0}
    searches = []
    for i in range(n_search):
        method, data, classes = cells[i % len(cells)]
        s = i // len(cells)
        rid = f"{method}-{data}-c{classes}-s{s}-{i:08x}"
        run = run_path(root, SEARCH, rid)
        run.mkdir(parents=True)
        alphas = [[round(rng.gauss(0, 0.1), 6) for _ in range(8)] for _ in range(14)]
        result = {"kind": "search", "status": "completed", "method": method, "search_data": data,
                  "search_label": "random", "num_classes": classes, "seed": s, "target": None,
                  "metrics": {"train_acc": rng.uniform(0, 100), "val_acc": rng.uniform(0, 100), "skip_normal": 1,
                              "skip_reduce": 0},
                  "params_m": None, "gpu_hours": rng.uniform(5, 10), "wall_s": 30000.0, "genotype": GENOTYPE_FILE,
                  "alphas": {"normal": alphas, "reduce": alphas}}
        (run / RESULT_FILE).write_text(json.dumps(result, indent=2))
        (run / CONFIG_FILE).write_text("search:\n  method: " + method + "\n")
        searches.append((rid, result))
        counts["search"] += 1
    for j in range(n - n_search):
        rid_s, search = searches[j % len(searches)]
        target = ("cifar10", "cifar100")[(j // len(searches)) % 2]
        rid = f"{target}-{rid_s}-{j}"
        run = run_path(root, TRAIN, rid)
        run.mkdir(parents=True)
        if j % 997 == 0:
            (run / RESULT_FILE).write_text('{"kind": "train", "status": "compl')  # torn file
            counts["malformed"] += 1
            continue
        failed = j % 499 == 0
        result = {"kind": "train", "status": "failed" if failed else "completed",
                  **{k: search[k] for k in ("method", "search_data", "search_label", "num_classes", "seed")},
                  "target": target, "params_m": rng.uniform(3, 4.5), "gpu_hours": rng.uniform(20, 30),
                  "genotype": f"../search/{rid_s}/genotype.json"}
        if failed:
            result["error"] = "RuntimeError: CUDA out of memory"
            counts["failed"] += 1
        else:
            result["metrics"] = {"top1_err": rng.uniform(2, 30), "top5_err": rng.uniform(0.1, 5)}
            counts["train"] += 1
        (run / RESULT_FILE).write_text(json.dumps(result, indent=2))
        (run / CONFIG_FILE).write_text(CONFIG_TEXT.format(target=target, rid=rid))
    return counts


def time_aggregation(runs_dir: Path) -> dict[str, float]:
    """Seconds for each phase of ``unrealnas table`` on ``runs_dir`` (collect, failures, table, render)."""
    from unrealnas.launch.status import launch_failures
    from unrealnas.results.collect import collect_results
    from unrealnas.results.tables import FORMATS, build_table, render

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    collection = collect_results(runs_dir)
    t1 = time.perf_counter()
    failures, _ = launch_failures(runs_dir)
    t2 = time.perf_counter()
    table = build_table(collection, repeats=None, failures=failures)
    t3 = time.perf_counter()
    sizes = [len(render(table, fmt)) for fmt in FORMATS]
    t4 = time.perf_counter()
    times.update(collect_s=t1 - t0, failures_s=t2 - t1, table_s=t3 - t2, render_s=t4 - t3, seconds=t4 - t0,
                 files=len(collection.runs) + len(collection.problems), rows=len(table.rows),
                 problems=len(collection.problems), rendered_chars=sum(sizes))
    return times


def main(args: list[str] | None = None) -> int:
    """Write the synthetic runs, time the aggregation, print the seconds; exit 1 above the 5 s target."""
    options, rest = pop_options(list(sys.argv[1:] if args is None else args),
                                {"n": (int, 10_000), "json": (str, None), "keep": (str, None)})
    if rest:
        from unrealnas.errors import UserError

        raise UserError(f"bench aggregate takes n=N json=<file> keep=<dir>, got {' '.join(rest)}")
    n = int(options["n"] or 10_000)
    with tempfile.TemporaryDirectory(prefix="unrealnas-aggregate-") as tmp:
        root = Path(options["keep"]) if options["keep"] else Path(tmp)
        runs = root / "runs"
        if runs.exists() and any(runs.iterdir()):
            from unrealnas.errors import UserError

            raise UserError(f"{runs} is not empty; keep=<dir> must name a new folder")
        t0 = time.perf_counter()
        counts = write_synthetic_runs(runs, n)
        write_s = time.perf_counter() - t0
        times = time_aggregation(runs)
    row = {"name": f"collect + table ({n:,} result.json)", **times, "write_s": write_s, **counts}
    ok = times["seconds"] < TARGET_S
    notes = [f"aggregation of {n:,} result files: {times['seconds']:.2f} s (target < {TARGET_S:.0f} s: "
             f"{'met' if ok else 'MISSED'}); writing them took {write_s:.1f} s (not timed)",
             f"{counts['malformed']} malformed files were skipped and reported, {counts['failed']} failed runs flagged"]
    report("aggregate", [row], ["name", "seconds", "collect_s", "failures_s", "table_s", "render_s", "files", "rows"],
           options["json"], notes, meta={"pid": os.getpid()})
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
