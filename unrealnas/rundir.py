"""The run directory: where a stage's run lives, the files it writes, and when it is complete.

Every stage writes one folder ``<paths.runs>/<stage>/<run-id>/`` (a dataset writes
``<paths.data>/<name>/``). A run is complete when its ``result.json`` says ``"status":
"completed"`` (a dataset folder: when its ``manifest.json`` exists, written last). This module is
the one owner of those names: change how a run directory is named or laid out here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"  # written last, atomically: the run's outcome
CONFIG_FILE = "config.yaml"  # the composed config the run used
PROVENANCE_FILE = "provenance.json"  # code, versions, host, device
METRICS_FILE = "metrics.jsonl"  # one line per epoch
CHECKPOINT_FILE = "checkpoint.pt"  # the resumable state
GENOTYPE_FILE = "genotype.json"  # a search's (or sampled cell's) architecture
MANIFEST_FILE = "manifest.json"  # a dataset folder is complete once its manifest exists
PLAN_FILE = "plan.json"  # what a table or report stage reads: the runs it was planned over

# The folders under paths.runs, one per stage kind.
SEARCH, TRAIN, TABLES, ANALYSIS = "search", "train", "tables", "analysis"


def run_path(runs: str | Path, stage: str, run_id: str) -> Path:
    """``<runs>/<stage>/<run_id>``: the folder of one run of a stage."""
    return Path(runs) / stage / run_id


def read_result(folder: str | Path) -> dict[str, Any] | None:
    """The run's result.json as a dict, None when absent; raises ValueError when malformed."""
    path = Path(folder) / RESULT_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: malformed JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def is_complete(folder: str | Path | None) -> bool:
    """True when ``folder`` holds a completed result.json (or, for a dataset folder, its manifest)."""
    if folder is None:
        return False
    folder = Path(folder)
    if (folder / MANIFEST_FILE).is_file():
        return True
    try:
        result = read_result(folder)
    except (OSError, ValueError):
        return False
    return result is not None and result.get("status") == "completed"
