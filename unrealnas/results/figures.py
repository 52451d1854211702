"""The paper's figures from run files only (metrics.jsonl, result.json, genotype.json).

Fig. 5: skip connections in the normal cell vs search epoch; Fig. 6: test accuracy vs number of
random classes (log x axis); Fig. 1: learning curves of the retrains; and one drawing per searched
genotype. Figures are drawn on matplotlib ``Figure`` objects with the Agg canvas (no pyplot, no
GUI, no global state) and written atomically as PNG and PDF.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from unrealnas.atomic import atomic_path, read_jsonl
from unrealnas.results.collect import MISSING, Collection, Setting, collect_results
from unrealnas.results.tables import PAPER_METRICS, TARGET_NAMES, lower_is_better, summarize
from unrealnas.rundir import GENOTYPE_FILE, METRICS_FILE

FORMATS = ("png", "pdf")


@dataclass
class PlotReport:
    """The files written and the figures skipped (with the reason)."""

    files: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _label(setting: Setting) -> str:
    method, data, label, classes = setting
    if data == MISSING:
        return method  # a cell without search data: the random baseline or a published genotype
    tail = f" c{classes}" if label == "random" and classes is not None else f" ({label} labels)"
    return f"{method} {data}{tail}"


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def seed_marker(seed: int | None) -> str:
    """The marker that tells a seed apart in every figure (the same seed, the same marker)."""
    return MARKERS[(seed or 0) % len(MARKERS)]


def offsets(n: int, step: float) -> list[float]:
    """``n`` offsets centred on 0, ``step`` apart: overlapping series are shifted so each stays visible."""
    return [(i - (n - 1) / 2) * step for i in range(n)]


def _seed_legend(ax: Any, seeds: Sequence[int | None], loc: str = "lower right") -> None:
    """A second legend on ``ax``: one black marker per seed (the colours are the first legend's)."""
    handles = [Line2D([], [], color="0.2", marker=seed_marker(s), ls="none", ms=5, label=f"seed {s}")
               for s in sorted({s for s in seeds if s is not None})]
    if handles:
        first = ax.get_legend()
        ax.legend(handles=handles, fontsize=6, loc=loc, title="markers", title_fontsize=6)
        if first is not None:
            ax.add_artist(first)


def save_figure(fig: Figure, stem: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``fig`` as ``stem.<fmt>`` for each format, each atomically (temp file + rename)."""
    FigureCanvasAgg(fig)  # the Agg canvas renders PNG and hands PDF to its own backend
    out = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150)
        out.append(path)
    return out


def _run_dirs(runs_dir: Path, stage: str) -> list[Path]:
    folder = runs_dir / stage
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def plot_skip_connections(collection: Collection, runs_dir: Path, stem: Path,
                          formats: Sequence[str] = FORMATS) -> list[Path]:
    """Fig. 5: skip_connect count of the derived normal cell vs search epoch; mean per cell, runs faint."""
    info = {r.run_dir.resolve(): r for r in collection.runs if r.kind == "search"}
    curves: dict[Setting, list[tuple[int | None, list[int], list[float]]]] = defaultdict(list)
    for run_dir in _run_dirs(runs_dir, "search"):
        rows = [r for r in read_jsonl(run_dir / METRICS_FILE) if "skip_normal" in r and "epoch" in r]
        if rows:
            r = info.get(run_dir.resolve())
            setting = r.setting if r is not None else ("?", run_dir.name, "?", None)
            seed = r.seed if r is not None else None
            curves[setting].append((seed, [int(x["epoch"]) + 1 for x in rows], [float(x["skip_normal"]) for x in rows]))
    if not curves:
        return []
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    cells = sorted(curves.items(), key=lambda kv: str(kv[0]))
    # Counts are integers: the cells would lie on top of each other, so each is shifted a little.
    shift = offsets(len(cells), 0.12 if len(cells) > 1 else 0.0)
    for i, (setting, runs) in enumerate(cells):
        color = f"C{i % 10}"
        for seed, x, y in runs:
            ax.plot(x, [v + shift[i] for v in y], color=color, alpha=0.35, lw=0.8, marker=seed_marker(seed), ms=3)
        # Mean over the repeats at each epoch that every run reached.
        length = min(len(x) for _, x, _ in runs)
        xs = runs[0][1][:length]
        mean = [sum(y[k] for _, _, y in runs) / len(runs) + shift[i] for k in range(length)]
        ax.plot(xs, mean, color=color, lw=2, label=f"{_label(setting)} (mean of n={len(runs)})")
    ax.set_xlabel("search epoch (count, warm-up included)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("skip connections in the normal cell (count of 8 edges)")
    ax.set_ylim(-0.5, 8.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    _seed_legend(ax, [seed for _, runs in cells for seed, _, _ in runs], loc="upper right")
    if len(cells) > 1:
        ax.text(0.99, 0.01, f"series offset by up to +-{abs(shift[0]):.2f} so equal counts stay visible",
                transform=ax.transAxes, ha="right", va="bottom", fontsize=6, color="0.4")
    ax.set_title("Skip connections during the search (Fig. 5)")
    fig.tight_layout()
    return save_figure(fig, stem, formats)


def plot_accuracy_vs_classes(collection: Collection, stem: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Fig. 6: retrain accuracy vs number of random classes (log x), mean +- sample std; true labels dashed."""
    points: dict[tuple[str, str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    controls: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in collection.completed("train"):
        target = str(r.target)
        metric = PAPER_METRICS.get(target.removesuffix("_pt"), ("top1_err",))[0]
        if metric not in r.metrics:
            continue
        value = 100.0 - r.metrics[metric] if lower_is_better(metric) else r.metrics[metric]
        if r.search_label == "random" and r.num_classes is not None:
            points[(r.method, r.search_data, target)][r.num_classes].append(value)
        elif r.search_label == "true":
            controls[(r.method, target)].append(value)
    if not any(len(by_classes) > 1 for by_classes in points.values()):
        return []  # one class count is a point, not a trend: the table already holds it
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    # Series share their class counts: each is shifted sideways by a few percent on the log axis.
    shift = offsets(len(points), 0.02 if len(points) > 1 else 0.0)
    for i, (key, by_classes) in enumerate(sorted(points.items())):
        xs = sorted(by_classes)
        stats = [summarize(by_classes[x], "acc") for x in xs]
        ys = [s[1] for s in stats]
        errs = [0.0 if s[2] is None else s[2] for s in stats]
        method, data, target = key
        ax.errorbar([x * 10 ** shift[i] for x in xs], ys, yerr=errs, marker=MARKERS[i % len(MARKERS)], capsize=3,
                    color=f"C{i % 10}", label=f"{method} {data} -> {TARGET_NAMES.get(target, target)}")
    for j, ((method, target), values) in enumerate(sorted(controls.items())):
        mean = sum(values) / len(values)
        ax.axhline(mean, ls="--", color=f"C{(len(points) + j) % 10}",
                   label=f"{method} real data, true labels -> {TARGET_NAMES.get(target, target)}")
    ax.set_xscale("log")
    ax.set_xlabel("random classes in the search data (count, log scale)")
    ax.set_ylabel("test accuracy (%), mean +- sample std")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    if len(points) > 1:
        pct = (10 ** abs(shift[0]) - 1) * 100
        ax.text(0.99, 0.01, f"series shifted sideways by up to {pct:.0f}% so error bars stay visible",
                transform=ax.transAxes, ha="right", va="bottom", fontsize=6, color="0.4")
    ax.set_title("Accuracy vs number of classes (Fig. 6)")
    fig.tight_layout()
    return save_figure(fig, stem, formats)


def _metric_axis_label(metric: str) -> str:
    return {"top1_err": "test top-1 error (%)", "top5_err": "test top-5 error (%)", "auroc": "test mean AUROC (%)",
            "val_acc": "validation accuracy (%)"}.get(metric, f"test {metric}")


def plot_learning_curves(collection: Collection, runs_dir: Path, stem: Path,
                         formats: Sequence[str] = FORMATS) -> list[Path]:
    """Fig. 1: per retrain target, training loss and test error (or AUROC) vs epoch; one line per run."""
    info = {r.run_dir.resolve(): r for r in collection.runs if r.kind == "train"}
    by_target: dict[str, list[tuple[Setting, int | None, list[dict]]]] = defaultdict(list)
    for run_dir in _run_dirs(runs_dir, "train"):
        rows = [r for r in read_jsonl(run_dir / METRICS_FILE) if "epoch" in r]
        r = info.get(run_dir.resolve())
        if rows and r is not None:
            by_target[str(r.target)].append((r.setting, r.seed, rows))
    if not by_target:
        return []
    targets = sorted(by_target)
    fig = Figure(figsize=(10.0, 3.8 * len(targets)))
    axes = fig.subplots(len(targets), 2, squeeze=False)
    for row_axes, target in zip(axes, targets, strict=True):
        metric = PAPER_METRICS.get(target.removesuffix("_pt"), ("top1_err",))[0]
        colors: dict[Setting, str] = {}
        order = list(dict.fromkeys(setting for setting, _, _ in by_target[target]))
        # Cells that learn alike would hide each other: each is dodged sideways by a few hundredths of an epoch.
        dodge = dict(zip(order, offsets(len(order), 0.05), strict=True))
        for setting, seed, rows in by_target[target]:
            color = colors.setdefault(setting, f"C{len(colors) % 10}")
            style = {"color": color, "lw": 1, "marker": seed_marker(seed), "ms": 3}
            dx = dodge[setting]
            loss = [(r["epoch"] + dx, r["train_loss"]) for r in rows if _finite(r.get("train_loss"))]
            test = [(r["epoch"] + dx, r[metric]) for r in rows if _finite(r.get(metric))]
            if loss:
                row_axes[0].plot(*zip(*loss, strict=True), **style)
            if test:
                row_axes[1].plot(*zip(*test, strict=True), **style)
        name = TARGET_NAMES.get(target, target)
        row_axes[0].set_title(f"{name}: training loss")
        row_axes[1].set_title(f"{name}: {_metric_axis_label(metric).split(' (')[0]}")
        row_axes[0].set_ylabel("training loss (cross-entropy, nats)")
        row_axes[1].set_ylabel(_metric_axis_label(metric))
        seeds = [seed for _, seed, _ in by_target[target]]
        for ax in row_axes:
            ax.set_xlabel("retrain epoch (count)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            # One entry per cell (its colour, no marker); the markers are the seeds' legend.
            ax.legend(handles=[Line2D([], [], color=c, lw=1.5, label=_label(setting)) for setting, c in colors.items()],
                      fontsize=7, loc="upper right")
            _seed_legend(ax, seeds, loc="lower left")
    fig.suptitle("Learning curves of the retrained cells (Fig. 1)")
    fig.tight_layout()
    return save_figure(fig, stem, formats)


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def draw_cells(collection: Collection, out_dir: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """One drawing per completed search's genotype (skipped when up to date with its genotype.json)."""
    from unrealnas.nas.draw import draw_genotype
    from unrealnas.nas.genotype import Genotype

    written = []
    for r in collection.completed("search"):
        source = r.run_dir / GENOTYPE_FILE
        if not source.is_file():
            continue
        genotype = None
        for fmt in formats:
            path = out_dir / f"{r.run_dir.name}.{fmt}"
            if path.is_file() and path.stat().st_mtime >= source.stat().st_mtime:
                written.append(path)
                continue
            genotype = genotype or Genotype.load(source)
            written.append(draw_genotype(genotype, path, title=f"{_label(r.setting)} seed {r.seed}"))
    return written


def plot_all(runs_dir: str | Path, out_dir: str | Path, formats: Sequence[str] = FORMATS, cells: bool = True,
             collection: Collection | None = None, progress: Callable[[str], None] | None = None) -> PlotReport:
    """Every figure the runs allow, under ``out_dir``; figures without data are skipped and listed."""
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    collection = collection or collect_results(runs_dir)
    report = PlotReport()
    jobs: list[tuple[str, Callable[[], list[Path]]]] = [
        ("skip connections vs epoch (Fig. 5): no search metrics.jsonl with skip_normal",
         lambda: plot_skip_connections(collection, runs_dir, out_dir / "fig5_skip_connections", formats)),
        ("accuracy vs number of classes (Fig. 6): no random-label search data retrained at two or more class counts",
         lambda: plot_accuracy_vs_classes(collection, out_dir / "fig6_accuracy_vs_classes", formats)),
        ("learning curves (Fig. 1): no retrain metrics.jsonl",
         lambda: plot_learning_curves(collection, runs_dir, out_dir / "fig1_learning_curves", formats)),
    ]
    if cells:
        jobs.append(("cell drawings: no completed search with a genotype.json",
                     lambda: draw_cells(collection, out_dir / "cells", formats)))
    for why, job in jobs:
        files = job()
        if files:
            report.files += files
            if progress:
                progress(f"wrote {files[0].parent / files[0].stem}.{{{','.join(formats)}}}"
                         if len(files) == len(formats) else f"wrote {len(files)} files in {files[0].parent}")
        else:
            report.skipped.append(why)
    return report
