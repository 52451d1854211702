"""The ``pipeline`` verb: plan a paper experiment, submit (SLURM) or run (local) its stages, print the table's path."""

from __future__ import annotations

import os

from unrealnas.config import compose_config
from unrealnas.config.compose import available_experiments
from unrealnas.config.overrides import override_key, split_args
from unrealnas.errors import UserError
from unrealnas.launch.stages import format_stages
from unrealnas.launch.status import format_status, status
from unrealnas.launch.submit import wait_all
from unrealnas.observe import say as _say  # timestamped, on the unrealnas logger
from unrealnas.pipeline.plan import plan_pipeline
from unrealnas.pipeline.submit import run_pipeline


def cmd_pipeline(args: list[str]) -> int:
    """``unrealnas pipeline +experiment=<name> launcher=slurm|local [--dry-run] [--wait] [overrides]``."""
    positional, overrides = split_args(args)
    flags = {"--dry-run", "--wait"}
    unknown = [p for p in positional if p not in flags]
    if unknown:
        raise UserError(f"pipeline takes --dry-run, --wait and key=value overrides, got {' '.join(unknown)}")
    bare = next((o for o in overrides if o.startswith("experiment=") and "." not in o), None)
    if bare is not None:
        raise UserError(f"write +{bare} (the + adds the overlay to the config)")
    if not any(override_key(o) == "experiment" for o in overrides):
        raise UserError("pipeline needs an experiment: +experiment=<name>; choose one of: "
                        f"{', '.join(available_experiments())}")
    cfg = compose_config(overrides)
    plan = plan_pipeline(cfg, overrides)
    if "--dry-run" in positional:
        print(format_stages(f"experiment {plan.experiment}: {plan.description}", plan.stages))
        return 0
    run = run_pipeline(plan, progress=_say)
    table_md = plan.tables_dir / "table.md"
    local = str(cfg.launcher.name) == "local"
    if not local:
        submitted = [f"{s.name} {str(run.jobs[s.name][0].job_id).split('_')[0]} ({len(run.jobs[s.name])})"
                     for s in plan.stages if run.jobs.get(s.name)]
        if not submitted:
            _say("every task of this experiment is complete: nothing submitted")
        else:
            _say("submitted arrays: " + ", ".join(submitted))
        _say(f"follow with: unrealnas status {plan.runs_dir}; the table will be {table_md}")
        if "--wait" not in positional or not submitted:
            print(table_md)
            return 0
        wait_all(run.all_jobs())
    report = status(plan.runs_dir, plan.launcher_folder)
    mine = {os.path.realpath(d) for d in [*plan.run_dirs, plan.tables_dir]}
    failed = [t for t in report.failures() if t.run_dir is not None and os.path.realpath(t.run_dir) in mine]
    if failed:
        _say(format_status(report))
    print(table_md)
    return 1 if failed else 0
