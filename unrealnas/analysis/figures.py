"""Fig. 1 of the paper from the analyses' numbers: difficulty curves, best-vs-worst curves, rank scatter."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from unrealnas.results.figures import FORMATS, save_figure


def _epochs(curve: Sequence[float]) -> list[int]:
    return list(range(1, len(curve) + 1))


def plot_difficulty(rows: list[dict[str, Any]], stem: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Fig. 1a: the probe net's training accuracy vs epoch on each dataset, epochs to convergence marked."""
    drawn = [r for r in rows if r["curve"]]
    if not drawn:
        return []
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for i, r in enumerate(drawn):
        color = f"C{i % 10}"
        ax.plot(_epochs(r["curve"]), r["curve"], color=color, lw=1.6,
                label=f"{r['dataset']} ({r['label']} labels): {r['convergence']}")
        e = r["convergence_epoch"]
        if e is not None:
            ax.plot([e], [r["curve"][e - 1]], "o", color=color, ms=5)
    ax.set_xlabel("epoch (count)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("training accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="dataset: epochs to convergence", title_fontsize=7)
    ax.set_title("Difficulty: the probe net fitting each dataset (Fig. 1a)")
    fig.tight_layout()
    return save_figure(fig, stem, formats)


def plot_best_vs_worst(per_dataset: list[dict[str, Any]], probe_epoch: int, stem: Path,
                       formats: Sequence[str] = FORMATS) -> list[Path]:
    """Fig. 1b-d: per dataset, the training curves of the best and the worst architecture on the real task."""
    panels = [d for d in per_dataset if d.get("best_curve") or d.get("worst_curve")]
    if not panels:
        return []
    fig = Figure(figsize=(max(6.4, 3.6 * len(panels)), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, d in zip(axes, panels, strict=False):
        for key, color in (("best", "C2"), ("worst", "C3")):
            curve = d.get(f"{key}_curve") or []
            if curve:
                ax.plot(_epochs(curve), curve, color=color, lw=1.6, label=f"{key} ({d[f'{key}_arch']})")
        ax.axvline(probe_epoch, color="0.5", ls=":", lw=1)
        tau = d["tau"]
        ax.set_title(f"{d['dataset']}: tau={tau:.2f}" if tau is not None and not math.isnan(tau) else d["dataset"],
                     fontsize=9)
        ax.set_xlabel("epoch (count)")
        ax.set_ylabel("training accuracy (%)")  # every panel: they may be read (or cropped) alone
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Distinguishability: best vs worst architecture of the real task (Fig. 1b-d)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, stem, formats)


def plot_rank_scatter(per_dataset: list[dict[str, Any]], target: str, probe_epoch: int, stem: Path,
                      formats: Sequence[str] = FORMATS) -> list[Path]:
    """Real-task score vs training accuracy at the probe epoch, one point per architecture, per dataset."""
    panels = [d for d in per_dataset if d["pairs"]]
    if not panels:
        return []
    fig = Figure(figsize=(max(4.0, 3.4 * len(panels)), 3.4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, d in zip(axes, panels, strict=False):
        xs, ys = zip(*d["pairs"], strict=True)
        ax.scatter(xs, ys, s=14, color="C0")
        tau, p = d["tau"], d["p_value"]
        title = d["dataset"] if tau is None or math.isnan(tau) else f"{d['dataset']}: tau={tau:.2f} (p={p:.2g})"
        ax.set_title(title, fontsize=9)
        unit = "mean AUROC (%)" if target == "chexpert" else "top-1 accuracy (%)"
        ax.set_xlabel(f"{target} score: {unit}")
        ax.set_ylabel(f"training accuracy at epoch {probe_epoch} (%)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, stem, formats)
