"""Submission records: what each submitted array holds, so that ``status`` can find every task.

One ``tasks.json`` per array (SLURM) or local batch, beside its logs:
``<launcher.folder>/<name>/<array job id | local-...>/tasks.json``. It lists, per task, the verb,
overrides, run directory, stage, group, job id and log paths. Written atomically.

Paths inside the runs folder (the launcher folder's parent, ``paths.runs`` by default) are stored
relative to the record's own folder, so that a runs folder that is moved or copied still points
at its own runs and logs; :func:`read_records` gives them back absolute.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from unrealnas.atomic import write_json_atomic

RECORD_FILE = "tasks.json"
OUTCOME_SUFFIX = "_outcome.json"
OUTCOMES = ("completed", "failed", "running_elsewhere")
RECORD_VERSION = 2  # 2: paths inside the runs folder are relative to the record's folder
PATH_KEYS = ("run_dir", "stdout", "stderr", "outcome")


def task_entry(index: int, task: Any, job_id: str, stdout: Path | None, stderr: Path | None,
               outcome: Path | None = None) -> dict[str, Any]:
    """The record of one task (``task`` is a :class:`~unrealnas.launch.task.Task`)."""
    return {
        "index": index,
        "job_id": job_id,
        "verb": task.verb,
        "overrides": list(task.overrides),
        "run_dir": None if task.run_dir is None else str(task.run_dir),
        "stage": task.stage,
        "group": task.group,
        "stdout": None if stdout is None else str(stdout),
        "stderr": None if stderr is None else str(stderr),
        # A JSON file the job writes when it ends; readers never touch submitit's pickles.
        "outcome": None if outcome is None else str(outcome),
    }


def outcome_path(folder: str | Path, job_id: str) -> Path:
    """Where the job ``job_id`` of an array folder writes how it ended (beside its logs)."""
    return Path(folder) / f"{job_id}{OUTCOME_SUFFIX}"


def write_outcome(path: str | Path, state: str, error: str = "") -> None:
    """Record how a task ended: ``completed``, ``failed`` (with one line) or ``running_elsewhere``."""
    import socket
    import time

    write_json_atomic(path, {"state": state, "error": error, "host": socket.gethostname(), "pid": os.getpid(),
                             "ended_at": time.time()})


def read_outcome(path: str | Path | None) -> tuple[str, str] | None:
    """(state, error) from an outcome file; None when absent or not an outcome (it is data, never code)."""
    if not path:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("state") not in OUTCOMES:
        return None
    return str(data["state"]), str(data.get("error") or "")


def _relative(value: str | None, folder: Path, root: Path) -> str | None:
    """``value`` relative to ``folder`` when it lies inside ``root``, else as given."""
    if not value:
        return value
    path = Path(os.path.abspath(value))
    if not path.is_relative_to(root):
        return value
    return os.path.relpath(path, folder)


def write_record(folder: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as ``folder/tasks.json`` (atomically) and return the path."""
    folder = Path(os.path.abspath(folder))
    root = folder.parents[2] if len(folder.parents) > 2 else folder  # <runs>/<slurm>/<name>/<batch>
    tasks = [{**e, **{k: _relative(e.get(k), folder, root) for k in PATH_KEYS if k in e}}
             for e in record.get("tasks", [])]
    record = {"version": RECORD_VERSION, **record, "tasks": tasks}
    path = folder / RECORD_FILE
    write_json_atomic(path, record)
    return path


def read_records(launcher_folder: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """All records under ``launcher_folder``, oldest first, plus one warning per unreadable record."""
    records: list[dict[str, Any]] = []
    warnings: list[str] = []
    root = Path(launcher_folder)
    if not root.is_dir():
        return records, warnings
    for path in sorted(root.glob(f"*/*/{RECORD_FILE}")):
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
                raise ValueError("not a submission record")
        except (OSError, ValueError) as e:
            warnings.append(f"skipped {path}: {e}")
            continue
        data["_path"] = str(path)
        for entry in data["tasks"]:
            for key in PATH_KEYS:
                value = entry.get(key) if isinstance(entry, dict) else None
                if value and not os.path.isabs(value):
                    entry[key] = os.path.normpath(path.parent / value)
        records.append(data)
    records.sort(key=lambda r: float(r.get("submitted_at", 0.0)))
    return records, warnings
