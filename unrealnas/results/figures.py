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

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from unrealnas.io import atomic_path, read_jsonl
from unrealnas.results.collect import MISSING, Cell, Collection, collect_results
from unrealnas.results.tables import PAPER_METRICS, TARGET_NAMES, lower_is_better, summarize

FORMATS = ("png", "pdf")
METRICS_FILE = "metrics.jsonl"


@dataclass
class PlotReport:
    """The files written and the figures skipped (with the reason)."""

    files: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _label(cell: Cell) -> str:
    method, data, label, classes = cell
    if data == MISSING:
        return method  # a cell without search data: the random baseline or a published genotype
    tail = f" c{classes}" if label == "random" and classes is not None else f" ({label} labels)"
    return f"{method} {data}{tail}"


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
    cells = {r.run_dir.resolve(): r.cell for r in collection.runs if r.kind == "search"}
    curves: dict[Cell, list[tuple[list[int], list[float]]]] = defaultdict(list)
    for run_dir in _run_dirs(runs_dir, "search"):
        rows = [r for r in read_jsonl(run_dir / METRICS_FILE) if "skip_normal" in r and "epoch" in r]
        if rows:
            cell = cells.get(run_dir.resolve(), ("?", run_dir.name, "?", None))
            curves[cell].append(([int(r["epoch"]) + 1 for r in rows], [float(r["skip_normal"]) for r in rows]))
    if not curves:
        return []
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for i, (cell, runs) in enumerate(sorted(curves.items(), key=lambda kv: str(kv[0]))):
        color = f"C{i % 10}"
        for x, y in runs:
            ax.plot(x, y, color=color, alpha=0.25, lw=0.8)
        # Mean over the repeats at each epoch that every run reached.
        length = min(len(x) for x, _ in runs)
        xs = runs[0][0][:length]
        mean = [sum(y[k] for _, y in runs) / len(runs) for k in range(length)]
        ax.plot(xs, mean, color=color, lw=2, label=f"{_label(cell)} (n={len(runs)})")
    ax.set_xlabel("search epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("skip connections in the normal cell")
    ax.set_ylim(-0.2, 8.2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
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
    if not points:
        return []
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for i, (key, by_classes) in enumerate(sorted(points.items())):
        xs = sorted(by_classes)
        stats = [summarize(by_classes[x], "acc") for x in xs]
        ys = [s[1] for s in stats]
        errs = [0.0 if s[2] is None else s[2] for s in stats]
        method, data, target = key
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, color=f"C{i % 10}",
                    label=f"{method} {data} -> {TARGET_NAMES.get(target, target)}")
    for j, ((method, target), values) in enumerate(sorted(controls.items())):
        mean = sum(values) / len(values)
        ax.axhline(mean, ls="--", color=f"C{(len(points) + j) % 10}",
                   label=f"{method} real data, true labels -> {TARGET_NAMES.get(target, target)}")
    ax.set_xscale("log")
    ax.set_xlabel("number of random classes in the search data")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    ax.set_title("Accuracy vs number of classes (Fig. 6)")
    fig.tight_layout()
    return save_figure(fig, stem, formats)


def plot_learning_curves(collection: Collection, runs_dir: Path, stem: Path,
                         formats: Sequence[str] = FORMATS) -> list[Path]:
    """Fig. 1: per retrain target, training loss and test error (or AUROC) vs epoch; one line per run."""
    info = {r.run_dir.resolve(): r for r in collection.runs if r.kind == "train"}
    by_target: dict[str, list[tuple[Cell, list[dict]]]] = defaultdict(list)
    for run_dir in _run_dirs(runs_dir, "train"):
        rows = [r for r in read_jsonl(run_dir / METRICS_FILE) if "epoch" in r]
        r = info.get(run_dir.resolve())
        if rows and r is not None:
            by_target[str(r.target)].append((r.cell, rows))
    if not by_target:
        return []
    targets = sorted(by_target)
    fig = Figure(figsize=(9.0, 3.4 * len(targets)))
    axes = fig.subplots(len(targets), 2, squeeze=False)
    for row_axes, target in zip(axes, targets, strict=True):
        metric = PAPER_METRICS.get(target.removesuffix("_pt"), ("top1_err",))[0]
        colors: dict[Cell, str] = {}
        for cell, rows in by_target[target]:
            label = None if cell in colors else _label(cell)  # one legend entry per cell, not per run
            color = colors.setdefault(cell, f"C{len(colors) % 10}")
            loss = [(r["epoch"], r["train_loss"]) for r in rows if _finite(r.get("train_loss"))]
            test = [(r["epoch"], r[metric]) for r in rows if _finite(r.get(metric))]
            if loss:
                row_axes[0].plot(*zip(*loss, strict=True), color=color, lw=1, label=label)
            if test:
                row_axes[1].plot(*zip(*test, strict=True), color=color, lw=1, marker=".", label=label)
        name = TARGET_NAMES.get(target, target)
        row_axes[0].set_title(f"{name}: training loss")
        row_axes[1].set_title(f"{name}: test {metric}")
        for ax in row_axes:
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        row_axes[0].legend(fontsize=7)
    fig.suptitle("Learning curves of the retrained cells (Fig. 1)")
    fig.tight_layout()
    return save_figure(fig, stem, formats)


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def draw_cells(collection: Collection, out_dir: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """One drawing per completed search's genotype (skipped when up to date with its genotype.json)."""
    from unrealnas.nas.draw import draw_genotype
    from unrealnas.nas.genotype import GENOTYPE_FILE, Genotype

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
            written.append(draw_genotype(genotype, path, title=f"{_label(r.cell)} seed {r.seed}"))
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
        ("accuracy vs number of classes (Fig. 6): no completed retrain of a random-label search",
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
