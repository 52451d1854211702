"""Submitting a planned experiment: every stage in order, chained by dependencies (SLURM) or run here."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from unrealnas.atomic import write_json_atomic
from unrealnas.launch.stages import Stage, submit_stages
from unrealnas.launch.submit import check_slurm
from unrealnas.pipeline.plan import Plan
from unrealnas.rundir import PLAN_FILE, RESULT_FILE


@dataclass
class PipelineRun:
    """The jobs each stage submitted (empty list: nothing to do) and the plan they came from."""

    plan: Plan
    jobs: dict[str, list[Any]]

    def all_jobs(self) -> list[Any]:
        """Every submitted job, in stage order."""
        return [j for s in self.plan.stages for j in self.jobs.get(s.name, [])]


def _write_plan(plan: Plan) -> bool:
    """Write ``plan.json`` when it changed; True if it did (the table must then be rebuilt)."""
    path = plan.tables_dir / PLAN_FILE
    new = plan.to_json()
    try:
        if json.loads(path.read_text()) == new:
            return False
    except (OSError, ValueError):
        pass
    write_json_atomic(path, new)
    return True


def run_pipeline(plan: Plan, progress: Callable[[str], None] | None = None) -> PipelineRun:
    """Submit (SLURM) or run (local) every stage of ``plan`` in order, chained by dependencies."""
    launcher_name = str(plan.stage("search").launcher.name)
    if launcher_name == "slurm":
        check_slurm()  # before writing anything: no SLURM -> one line that suggests launcher=local

    def before(stage: Stage, jobs: dict[str, list[Any]]) -> None:
        if stage.name == "table":
            changed = _write_plan(plan)
            marker = plan.tables_dir / RESULT_FILE
            if (changed or any(jobs.values())) and marker.exists():
                marker.unlink()  # new runs (or a new plan) make the old table stale

    return PipelineRun(plan, submit_stages(plan.stages, before))
