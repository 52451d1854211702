"""The analyses' numbers: accuracy curves, epochs to convergence, rank correlation, silhouettes.

Pure functions of arrays and run files, so that every criterion is testable on synthetic input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unrealnas.atomic import read_jsonl
from unrealnas.rundir import METRICS_FILE


def accuracy_curve(run_dir: str | Path) -> list[float]:
    """Top-1 accuracy (%) per epoch of a training run, from its metrics.jsonl.

    The evaluation accuracy of the epoch (for ``train.target=dataset``: on the training images,
    unaugmented) where the epoch was evaluated, else the running accuracy of its training batches.
    """
    curve = []
    for row in read_jsonl(Path(run_dir) / METRICS_FILE):
        err = row.get("top1_err", row.get("train_top1_err"))
        curve.append(math.nan if err is None else 100.0 - float(err))
    return curve


def convergence_epoch(curve: Sequence[float], fraction: float = 0.95) -> int | None:
    """Epochs to convergence: the first epoch (1-based) from which accuracy stays >= ``fraction`` x its best.

    "Stays" makes a lucky early spike not count; the best is taken over the whole budget, so a
    curve still rising at the end converges late (and a longer budget can only move it later).
    None for an empty curve, for one that never rose above 0 (nothing was fitted), and for one whose
    last epoch is below the line (not converged within the budget).
    """
    acc = np.asarray([a for a in curve if not math.isnan(a)], dtype=np.float64)
    if acc.size == 0 or acc.max() <= 0:
        return None
    below = np.nonzero(acc < fraction * acc.max())[0]
    if below.size and below[-1] == acc.size - 1:
        return None  # it ends below the line: not converged within the budget
    return 1 if below.size == 0 else int(below[-1]) + 2


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Kendall tau-b between two score lists and its two-sided p-value (scipy); nan when undefined."""
    from scipy.stats import kendalltau

    if len(x) != len(y):
        raise ValueError(f"rank_correlation needs paired scores, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return math.nan, math.nan
    res = kendalltau(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    return float(res.statistic), float(res.pvalue)


def silhouette_features(images: np.ndarray, dims: int, seed: int) -> np.ndarray:
    """The silhouette's feature space: pixels in [0, 1] (uint8) or as stored (noise), flattened, standardised
    per pixel, projected on their first ``dims`` principal components (scikit-learn PCA)."""
    from sklearn.decomposition import PCA

    x = images.reshape(len(images), -1).astype(np.float64)
    if images.dtype == np.uint8:
        x /= 255.0
    x -= x.mean(axis=0)
    std = x.std(axis=0)
    x /= np.where(std > 0, std, 1.0)
    k = max(1, min(dims, x.shape[0] - 1, x.shape[1]))
    return PCA(n_components=k, random_state=seed).fit_transform(x)


def dataset_silhouette(images: np.ndarray, labels: np.ndarray, samples: int = 2000, dims: int = 50,
                       seed: int = 0) -> tuple[float | None, str]:
    """Silhouette score (scikit-learn, Euclidean) of a dataset's labels in :func:`silhouette_features` space.

    Uses a seeded sample of ``samples`` images. Returns (score, note); the score is None, with the
    reason in the note, when fewer than 2 or more than n-1 distinct labels fall in the sample.
    """
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(seed)
    n = len(labels)
    idx = np.sort(rng.choice(n, size=min(samples, n), replace=False))
    y = np.asarray(labels)[idx]
    k = len(np.unique(y))
    if k < 2 or k > len(idx) - 1:
        return None, f"undefined: {k} distinct labels among {len(idx)} sampled images"
    feats = silhouette_features(np.asarray(images)[idx], dims, seed)
    score = float(silhouette_score(feats, y, metric="euclidean"))
    return score, f"{len(idx)} images, {feats.shape[1]} principal components, {k} labels"


def target_score(result: dict[str, Any]) -> float | None:
    """The real-task score that ranks architectures: top-1 accuracy (%), or mean AUROC for CheXpert."""
    metrics = result.get("metrics") or {}
    if isinstance(metrics.get("top1_err"), (int, float)):
        return 100.0 - float(metrics["top1_err"])
    auroc = metrics.get("auroc")
    return float(auroc) if isinstance(auroc, (int, float)) else None
