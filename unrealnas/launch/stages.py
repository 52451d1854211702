"""Stages: job arrays chained by dependencies, the shared machinery of ``pipeline`` and ``analyze``.

A stage is one job array (its tasks and launcher settings) that waits for the arrays of earlier
stages. :func:`submit_stages` submits (SLURM) or runs (local) them in order; :func:`format_stages`
is their ``--dry-run`` listing. The last stage of a pipeline or an analysis reads a ``plan.json``
(:func:`read_plan_arg`) naming exactly the runs it was planned over.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from unrealnas.config.overrides import override_key
from unrealnas.errors import UserError
from unrealnas.launch.gres import check_gpu_requests
from unrealnas.launch.submit import dependency_of, pending_tasks, submit_array
from unrealnas.launch.task import Task

_PLAIN = re.compile(r"^[A-Za-z0-9_./+:@-]+$")


def quote_override(value: str | Path) -> str:
    """A Hydra override value: bare when plain, else single-quoted (paths with commas or spaces)."""
    text = str(value)
    if _PLAIN.match(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def task_overrides(overrides: Sequence[str]) -> list[str]:
    """The command line's overrides that every task of a sweep inherits.

    Launcher choices are the submitting command's business (a task runs wherever it is put), and
    ``paths.*`` are given back to each task as absolute paths by the caller.
    """
    return [o for o in overrides
            if not override_key(o).startswith("launcher") and override_key(o) not in ("paths.runs", "paths.data")]


@dataclass
class Stage:
    """One job array: its tasks, launcher settings and the earlier arrays it waits for."""

    name: str
    tasks: list[Task]
    launcher: DictConfig
    after: tuple[str, ...] = ()
    kind: str = "afterok"  # dependency kind on the arrays in ``after``


def submit_stages(stages: Sequence[Stage],
                  before: Callable[[Stage, dict[str, list[Any]]], None] | None = None) -> dict[str, list[Any]]:
    """Submit (SLURM) or run (local) each stage in order, each waiting for the jobs of its ``after`` stages.

    ``before(stage, jobs so far)`` runs just before a stage is submitted (e.g. to mark a report stale).
    """
    # Every array's GPU request first: a stage that cannot fit must not leave earlier ones queued.
    check_gpu_requests([(s.name, s.launcher) for s in stages if s.tasks])
    jobs: dict[str, list[Any]] = {}
    for stage in stages:
        if before is not None:
            before(stage, jobs)
        deps = [j for name in stage.after for j in jobs.get(name, [])]
        dependency = dependency_of(deps, stage.kind) if deps else None
        jobs[stage.name] = submit_array(stage.tasks, stage.launcher, stage.name, dependency=dependency)
    return jobs


def format_stages(title: str, stages: Sequence[Stage]) -> str:
    """``title``, then each stage's task count, pending count, dependency and tasks (``--dry-run``)."""
    lines = [title]
    for s in stages:
        after = f" ({s.kind} {', '.join(s.after)})" if s.after else ""
        lines.append(f"{s.name}: {len(s.tasks)} task(s), {len(pending_tasks(s.tasks))} to run{after}")
        lines += [f"  {t.describe()}" for t in s.tasks]
    return "\n".join(lines)


def read_plan_arg(args: list[str], verb: str) -> dict[str, Any]:
    """The plan.json named by the ``plan=<path>`` argument of a final-stage task (``verb`` for errors)."""
    options = dict(a.split("=", 1) for a in args if "=" in a)
    if "plan" not in options:
        raise UserError(f"{verb}: usage: {verb} plan=<plan.json>")
    path = Path(options["plan"].strip("'"))
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{verb}: cannot read {path} ({e})") from e
