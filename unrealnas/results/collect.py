"""Collect the ``result.json`` files of a runs folder, with the schema checks of DESIGN.md "Contracts".

A malformed file (bad JSON, wrong kind/status, a field of the wrong type) is named in
``Collection.problems``, skipped, and never fatal: one broken run must not hide the others.
Failed runs come from two places: a result.json with ``status: failed`` (the stage caught its
own error) and the launcher's records (a job that died without writing one), each with the log
to read first.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unrealnas.config.methods import (  # sampled cells: no search data, label or classes (MISSING)
    METHODS,
    SAMPLED_METHODS,
)
from unrealnas.finite import nonfinite_note
from unrealnas.rundir import CONFIG_FILE, RESULT_FILE

STAGE_DIRS = ("search", "train")  # <runs>/<stage>/<run-id>/result.json
KINDS = ("search", "train")
STATUSES = ("completed", "failed")
LABELS = ("random", "true")
MISSING = "-"  # provenance of a published genotype (DARTS_V2): no search data or label
PRETRAINED_SUFFIX = "_pt"  # table target of a retrain initialised from other weights: chexpert_pt

# The search setting of a run: (method, search_data, search_label, num_classes); a table row groups by it.
Setting = tuple[str, str, str, "int | None"]

_PRETRAINED_LINE = re.compile(r"^\s+pretrained:[ \t]*(.*)$", re.MULTILINE)


class Malformed(ValueError):
    """A result.json that does not follow the contract."""


@dataclass
class RunResult:
    """One run's result.json, checked and normalised."""

    run_dir: Path
    kind: str  # search | train
    status: str  # completed | failed
    method: str
    search_data: str
    search_label: str
    num_classes: int | None
    seed: int | None
    target: str | None  # table target (retrains): cifar10, imagenet, chexpert, chexpert_pt, ...
    metrics: dict[str, float] = field(default_factory=dict)
    params_m: float | None = None
    gpu_hours: float | None = None
    cpu_hours: float | None = None
    error: str | None = None

    @property
    def setting(self) -> Setting:
        """The search setting: (method, search_data, search_label, num_classes)."""
        return (self.method, self.search_data, self.search_label, self.num_classes)


@dataclass
class Failure:
    """A failed run or task, with the file to read first."""

    stage: str  # search | train | generate | table
    run_dir: str | None
    log: str | None
    note: str
    setting: Setting | None = None  # which table row it affects (None: unattributed)
    target: str | None = None  # for retrains: the table target


@dataclass
class Collection:
    """Every readable result plus one line per skipped (malformed) file."""

    runs: list[RunResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def completed(self, kind: str) -> list[RunResult]:
        """The completed runs of ``kind`` (search | train)."""
        return [r for r in self.runs if r.kind == kind and r.status == "completed"]

    def failed(self) -> list[RunResult]:
        """Runs whose result.json says failed."""
        return [r for r in self.runs if r.status == "failed"]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _opt_number(data: dict[str, Any], key: str) -> float | None:
    v = data.get(key)
    if v is None:
        return None
    if not _is_number(v):
        raise Malformed(f"{key} must be a number, got {v!r:.40}")
    return float(v)


def _opt_int(data: dict[str, Any], key: str) -> int | None:
    v = data.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise Malformed(f"{key} must be an integer, got {v!r:.40}")
    return v


def _opt_str(data: dict[str, Any], key: str, choices: tuple[str, ...] | None = None) -> str | None:
    v = data.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        raise Malformed(f"{key} must be a non-empty string, got {v!r:.40}")
    if choices and v not in choices:
        raise Malformed(f"{key}={v!r} is not one of {', '.join(choices)}")
    return v


def _pretrained(run_dir: Path, data: dict[str, Any]) -> bool:
    """Whether a retrain started from other weights: result.json's ``pretrained``, else its config.yaml."""
    if "pretrained" in data:
        return bool(data["pretrained"])
    try:
        text = (run_dir / CONFIG_FILE).read_text()
    except OSError:
        return False
    # A line scan instead of a YAML parse: tables over thousands of runs stay fast; `pretrained`
    # is a key of the train group only.
    m = _PRETRAINED_LINE.search(text)
    return bool(m) and m.group(1).strip() not in ("", "null", "None", "~", "''", '""')


def parse_result(run_dir: Path, data: Any) -> RunResult:
    """Check a loaded result.json against the contract; raise Malformed naming the first problem."""
    if not isinstance(data, dict):
        raise Malformed(f"expected a JSON object, got {type(data).__name__}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise Malformed(f"kind={kind!r} is not one of {', '.join(KINDS)}")
    status = data.get("status")
    if status not in STATUSES:
        raise Malformed(f"status={status!r} is not one of {', '.join(STATUSES)}")
    method = _opt_str(data, "method")
    search_data = _opt_str(data, "search_data")
    search_label = _opt_str(data, "search_label", LABELS)
    num_classes = _opt_int(data, "num_classes")
    seed = _opt_int(data, "seed")
    target = _opt_str(data, "target")
    raw_metrics = data.get("metrics", {}) if status == "completed" else (data.get("metrics") or {})
    if not isinstance(raw_metrics, dict):
        raise Malformed(f"metrics must be an object, got {type(raw_metrics).__name__}")
    metrics: dict[str, float] = {}
    for k, v in raw_metrics.items():
        if v is None:
            continue  # e.g. an AUROC undefined for a column without positives
        if not _is_number(v):
            raise Malformed(f"metrics.{k} must be a number, got {v!r:.40}")
        metrics[str(k)] = float(v)
    if status == "completed":
        if method is None:
            raise Malformed("a completed run needs its method")
        if kind == "search":
            # A sampled cell (random) has no search data, label or class count, like a published genotype.
            for key, value in (("search_data", search_data), ("search_label", search_label),
                               ("num_classes", num_classes)):
                if value is None and method not in SAMPLED_METHODS:
                    raise Malformed(f"a completed search needs {key}")
        else:
            if target is None:
                raise Malformed("a completed retrain needs its target")
            if not metrics:
                raise Malformed("a completed retrain needs at least one numeric metric")
    if kind == "train" and target is not None and _pretrained(run_dir, data):
        target += PRETRAINED_SUFFIX
    error = data.get("error")
    bad = nonfinite_note(data) if status == "completed" else None
    if bad:  # a NaN or inf must never enter a mean or a best: the run counts as failed, with the reason
        status, error = "failed", bad
    return RunResult(
        run_dir=run_dir, kind=kind, status=status, method=method or MISSING, search_data=search_data or MISSING,
        search_label=search_label or MISSING, num_classes=num_classes, seed=seed,
        target=target if kind == "train" else None, metrics=metrics, params_m=_opt_number(data, "params_m"),
        gpu_hours=_opt_number(data, "gpu_hours"), cpu_hours=_opt_number(data, "cpu_hours"),
        error=None if error is None else str(error),
    )


def _result_files(runs_dir: Path) -> list[Path]:
    """``<runs>/{search,train}/*/result.json``; a folder without those sub-folders is searched recursively."""
    files: list[Path] = []
    stage_dirs = [runs_dir / s for s in STAGE_DIRS if (runs_dir / s).is_dir()]
    if not stage_dirs:
        return sorted(runs_dir.rglob(RESULT_FILE))
    for stage_dir in stage_dirs:
        # os.scandir: one directory listing instead of a stat per run (10,000 runs in well under a second).
        with os.scandir(stage_dir) as it:
            for entry in it:
                if entry.is_dir():
                    path = Path(entry.path) / RESULT_FILE
                    if os.path.isfile(path):
                        files.append(path)
    return sorted(files)


def collect_results(runs_dir: str | Path, only: Iterable[str | Path] | None = None) -> Collection:
    """Read every result.json under ``runs_dir`` (or only those of the run dirs in ``only``)."""
    runs_dir = Path(runs_dir)
    out = Collection()
    files = _result_files(runs_dir)
    if only is not None:
        keep = {os.path.realpath(p) for p in only}
        files = [f for f in files if os.path.realpath(f.parent) in keep]
    for path in files:
        try:
            data = json.loads(path.read_bytes())
            out.runs.append(parse_result(path.parent, data))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            out.problems.append(f"{path}: malformed JSON ({e})")
        except Malformed as e:
            out.problems.append(f"{path}: {e}")
        except OSError as e:
            out.problems.append(f"{path}: unreadable ({e.strerror or e})")
    return out


def parse_group(stage: str, group: str) -> tuple[Setting | None, str | None]:
    """(cell, target) from a launcher group label: ``method/data/label/cN`` or ``target/method/data/label/cN``."""
    parts = group.split("/")
    target = None
    if stage == "train":
        if len(parts) < 4:
            return None, None
        target, parts = parts[0], parts[1:]
    if len(parts) not in (3, 4) or parts[2] not in (*LABELS, MISSING):
        return None, target
    classes = None
    if len(parts) == 4:
        if not (parts[3].startswith("c") and parts[3][1:].isdigit()):
            return None, target
        classes = int(parts[3][1:])
    return (parts[0], parts[1], parts[2], classes), target


def architecture_name(setting: Setting) -> str:
    """The row label in the paper's style: UnrealNAS-DARTS-RLGD (5000 classes), DARTS-CIFAR10 (true labels)."""
    method, data, label, classes = setting
    m = METHODS[method].display if method in METHODS else method
    if data == MISSING:
        return m
    if label == "random":
        suffix = f" ({classes} classes)" if classes is not None else ""
        return f"UnrealNAS-{m}-{data.upper()}{suffix}"
    return f"{m}-{data.upper()} (true labels)"
