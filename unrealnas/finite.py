"""Results are finite or flagged: the one check of a result.json's numbers that every reader applies."""

from __future__ import annotations

import math
from typing import Any

NONFINITE = "failed (non-finite metric)"
# Numbers outside ``metrics`` that also reach tables (cost) and so must be finite too.
COST_KEYS = ("params_m", "gpu_hours", "cpu_hours", "compute_s", "wall_s")


def nonfinite_fields(result: dict[str, Any]) -> list[str]:
    """``["metrics.top1_err=nan", ...]``: every NaN or infinite number of a result.json's metrics and cost."""
    bad = []
    metrics = result.get("metrics")
    items = [(f"metrics.{k}", v) for k, v in metrics.items()] if isinstance(metrics, dict) else []
    items += [(k, result.get(k)) for k in COST_KEYS]
    for key, value in items:
        if isinstance(value, float) and not math.isfinite(value):
            bad.append(f"{key}={value}")
    return bad


def nonfinite_note(result: dict[str, Any]) -> str | None:
    """``"failed (non-finite metric): metrics.x=nan"`` for a completed result with such numbers, else None."""
    bad = nonfinite_fields(result)
    return f"{NONFINITE}: {', '.join(bad)}" if bad else None
