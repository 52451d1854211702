"""Differences between table rows with 95% confidence intervals: each row against two references.

The references of a row are the **true-label control** (the row searched on the target's own labels,
``search_label == "true"``, same target and metric; the one of the same method when several) and
the **random baseline** (``method == "random"``, same target and metric). The unit is a search
seed: the retrains of one search (``experiment.retrain_seeds``) are averaged first, so retrain noise
does not count as independent evidence about the architecture.

- When both rows hold the same seeds (two or more), the seeds pair up: the interval is the paired
  t interval of the per-seed differences (scipy's t quantile, n - 1 degrees of freedom).
- Otherwise it is a percentile bootstrap of the difference of the two means (``scipy.stats.bootstrap``,
  independent resampling of each row, 9,999 resamples, seeded), so the same runs give the same bytes.

A row with fewer than two seeds (or a reference with fewer than two) gets no interval.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from unrealnas.config.methods import RANDOM_METHOD
from unrealnas.results.collect import Collection, RunResult, Setting, architecture_name

TRUE_LABEL = "true"
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0
LEGEND = ("Δ = mean of the row minus mean of the reference (true-label control / random cell; for an error, "
          "negative is better), same target "
          "and metric, over search seeds (retrains of one search averaged first); [95% CI]: paired t over "
          "shared seeds (t), else percentile bootstrap of the difference of means (boot, 9,999 resamples, "
          "seed 0); ref: the row is that reference.")


@dataclass(frozen=True)
class Difference:
    """Mean difference of a row to one reference row, with its 95% interval (None when n < 2)."""

    mean: float
    low: float | None
    high: float | None
    n: int  # paired: seeds shared; bootstrap: seeds of the row
    n_ref: int
    method: str  # "t" (paired t) | "boot" (percentile bootstrap) | "-" (no interval)

    def text(self, digits: int = 2) -> str:
        """``+1.23 [-0.40, 2.86] t n=5`` (the markdown cell)."""
        ci = "" if self.low is None else f" [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"
        return f"{self.mean:+.{digits}f}{ci} {self.method} n={self.n}"


@dataclass(frozen=True)
class Comparison:
    """One row's differences to its two references (None: no such reference, or the row is it)."""

    control: Difference | None
    random: Difference | None
    is_control: bool = False
    is_random: bool = False


def per_seed(runs: Sequence[RunResult], metric: str) -> dict[object, float]:
    """Mean of ``metric`` per search seed (runs without a seed each count as their own unit)."""
    by_seed: dict[object, list[float]] = defaultdict(list)
    for k, r in enumerate(runs):
        if metric in r.metrics and math.isfinite(r.metrics[metric]):
            by_seed[r.seed if r.seed is not None else ("run", k)].append(r.metrics[metric])
    return {s: math.fsum(v) / len(v) for s, v in by_seed.items()}


def _mean_diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def difference(row: Mapping[object, float], ref: Mapping[object, float]) -> Difference | None:
    """The difference ``row - ref`` of two rows' per-seed values, with its 95% interval."""
    from scipy import stats

    if not row or not ref:
        return None
    a = np.array([row[s] for s in sorted(row, key=str)], dtype=np.float64)
    b = np.array([ref[s] for s in sorted(ref, key=str)], dtype=np.float64)
    mean = float(a.mean() - b.mean())
    if set(row) == set(ref) and len(row) >= 2:
        d = a - b  # both sorted by the same seeds
        half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
        return Difference(float(d.mean()), float(d.mean()) - half, float(d.mean()) + half, len(d), len(d), "t")
    if len(a) < 2 or len(b) < 2:
        return Difference(mean, None, None, len(a), len(b), "-")
    res = stats.bootstrap((a, b), _mean_diff, vectorized=True, paired=False, n_resamples=BOOTSTRAP_RESAMPLES,
                          confidence_level=CONFIDENCE, method="percentile", rng=np.random.default_rng(BOOTSTRAP_SEED))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return Difference(mean, low, high, len(a), len(b), "boot")


def _control_of(setting: Setting, controls: list[Setting]) -> Setting | None:
    """The true-label control of a row: the one of the same method, else the only one."""
    same = [c for c in controls if c[0] == setting[0]]
    if len(same) == 1:
        return same[0]
    return controls[0] if len(controls) == 1 else None


def compare_groups(groups: Mapping[tuple[Setting, str], Sequence[RunResult]],
                   metrics: Mapping[tuple[Setting, str], Sequence[str]]) -> dict[tuple[Setting, str, str], Comparison]:
    """Each (cell, target, metric)'s differences to its control and random rows, where either exists."""
    values = {(setting, target, m): per_seed(runs, m) for (setting, target), runs in groups.items()
              for m in metrics.get((setting, target), ())}
    out: dict[tuple[Setting, str, str], Comparison] = {}
    for (setting, target, metric), vals in values.items():
        peers = [c for (c, t, m) in values if t == target and m == metric and values[(c, t, m)]]
        controls = sorted((c for c in peers if c[2] == TRUE_LABEL), key=str)
        randoms = [c for c in peers if c[0] == RANDOM_METHOD]
        control = _control_of(setting, controls)
        rand = randoms[0] if len(randoms) == 1 else None
        if control is None and rand is None:
            continue
        is_control, is_random = setting == control, setting == rand
        out[(setting, target, metric)] = Comparison(
            None if control is None or is_control else difference(vals, values[(control, target, metric)]),
            None if rand is None or is_random else difference(vals, values[(rand, target, metric)]),
            is_control, is_random)
    return out


# ---- rendering (tables.py calls these) ------------------------------------------------------------------------

COMPARISON_COLUMNS = ("vs_control", "vs_control_lo", "vs_control_hi", "vs_control_ci", "vs_random", "vs_random_lo",
                      "vs_random_hi", "vs_random_ci")


def csv_number(v: float | None) -> str:
    """A CSV cell: the value rounded to 6 decimals, empty for None (the tables' CSV files share it)."""
    return "" if v is None else repr(round(v, 6))


def comparison_csv(comp: Comparison | None) -> list[str]:
    """The CSV cells of COMPARISON_COLUMNS (``ref`` in the ci column of the reference row itself)."""
    cells: list[str] = []
    for diff, is_ref in ((None, False), (None, False)) if comp is None else (
            (comp.control, comp.is_control), (comp.random, comp.is_random)):
        if diff is None:
            cells += ["", "", "", "ref" if is_ref else ""]
        else:
            cells += [csv_number(diff.mean), csv_number(diff.low), csv_number(diff.high), diff.method]
    return cells


def comparison_rows(comparisons: Mapping[tuple[Setting, str, str], Comparison], rows: Sequence[tuple[Setting, str]],
                    columns: Sequence[tuple[tuple[str, str], str]]) -> list[tuple[str, str, str, str]]:
    """(architecture, column, Δ vs control, Δ vs random) texts, one per row and shown column with a reference."""
    out = []
    for setting, name in rows:
        for (target, metric), column in columns:
            comp = comparisons.get((setting, target, metric))
            if comp is None:
                continue
            texts = ["ref" if is_ref else "-" if diff is None else diff.text()
                     for diff, is_ref in ((comp.control, comp.is_control), (comp.random, comp.is_random))]
            out.append((name, column, texts[0], texts[1]))
    return out


def render_comparisons(comparisons: Mapping[tuple[Setting, str, str], Comparison], rows: Sequence[tuple[Setting, str]],
                       columns: Sequence[tuple[tuple[str, str], str]]) -> list[str]:
    """Markdown lines: one row per architecture and shown column, Δ to the control and to the random cell."""
    body = comparison_rows(comparisons, rows, columns)
    if not body:
        return []
    lines = ["", "| Architecture | Column | Δ vs true-label control [95% CI] | Δ vs random cell [95% CI] |",
             "|---|---|:-:|:-:|"]
    lines += [f"| {name} | {column} | {control} | {rand} |" for name, column, control, rand in body]
    lines += ["", LEGEND]
    return lines


def search_notes(collection: Collection) -> list[str]:
    """One line per searched cell: mean entropy of softmax(alpha) at the start and end, and architecture steps."""
    by_setting: dict[Setting, list[RunResult]] = defaultdict(list)
    for r in collection.completed("search"):
        if "alpha_entropy_end" in r.metrics:
            by_setting[r.setting].append(r)
    lines = []
    for setting in sorted(by_setting, key=str):
        runs = by_setting[setting]

        def mean(key: str, runs: list[RunResult] = runs) -> float:
            vals = [r.metrics[key] for r in runs if key in r.metrics]
            return math.fsum(vals) / len(vals) if vals else float("nan")

        steps = sorted({int(r.metrics.get("arch_steps", 0)) for r in runs})
        lines.append(f"{architecture_name(setting)}: softmax(alpha) entropy {mean('alpha_entropy_start'):.4f} -> "
                     f"{mean('alpha_entropy_end'):.4f} nats (mean of {len(runs)} searches; uniform over the 8 DARTS ops = "
                     f"{math.log(8):.4f}), {'/'.join(map(str, steps))} architecture steps per search")
    return lines
