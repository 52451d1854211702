"""Evaluation metrics: top-k error for single-label targets, AUROC for multi-label (CheXpert)."""

from __future__ import annotations

import math

import numpy as np
import torch


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """Number of samples whose label is among the top-k logits, for each k (k capped at the class count)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top.eq(labels.view(-1, 1))
    return [int(hit[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


def auroc_per_class(scores: np.ndarray, labels: np.ndarray) -> list[float]:
    """ROC AUC per column (scikit-learn); labels < 0 are masked; NaN where a column has one class only."""
    from sklearn.metrics import roc_auc_score

    out = []
    for j in range(labels.shape[1]):
        keep = labels[:, j] >= 0
        y = labels[keep, j]
        if y.size == 0 or np.unique(y).size < 2:
            out.append(float("nan"))
            continue
        out.append(float(roc_auc_score(y, scores[keep, j])))
    return out


def auroc_metrics(scores: np.ndarray, labels: np.ndarray, names: tuple[str, ...]) -> dict[str, float | None]:
    """``auroc`` (mean over defined columns) and ``auroc_<name>`` per column, in percent (None if undefined)."""
    per = auroc_per_class(scores, labels)
    defined = [a for a in per if not math.isnan(a)]
    out: dict[str, float | None] = {"auroc": 100.0 * float(np.mean(defined)) if defined else None}
    for name, a in zip(names, per, strict=True):
        out[f"auroc_{name.lower().replace(' ', '_')}"] = None if math.isnan(a) else 100.0 * a
    return out


def study_max(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-study scores and labels: the max probability over a study's views (the CheXpert benchmark's rule).

    A study's label is the max over its views (they agree in CheXpert's valid.csv); masked (-1)
    only when every view is masked.
    """
    study, inverse = np.unique(groups, return_inverse=True)
    s = np.full((len(study), scores.shape[1]), -np.inf)
    y = np.full((len(study), labels.shape[1]), -np.inf)
    np.maximum.at(s, inverse, scores)
    np.maximum.at(y, inverse, labels)
    return s, y


def chexpert_metrics(scores: np.ndarray, labels: np.ndarray, names: tuple[str, ...],
                     groups: np.ndarray | None) -> dict[str, float | None]:
    """``auroc`` per study (per image when there are no study ids), ``auroc_image`` per image beside it."""
    per_image = auroc_metrics(scores, labels, names)
    if groups is None:
        return {**per_image, "auroc_image": per_image["auroc"]}
    return {**auroc_metrics(*study_max(scores, labels, groups), names), "auroc_image": per_image["auroc"]}


def best_on_valid(history: list[dict], key: str = "auroc") -> tuple[int | None, float | None]:
    """(epoch, value) of the best ``key`` over the evaluated epochs of a fit's history (ties: the first)."""
    rows = [r for r in history if r.get(key) is not None]
    if not rows:
        return None, None
    best = max(rows, key=lambda r: r[key])
    return int(best["epoch"]), float(best[key])
