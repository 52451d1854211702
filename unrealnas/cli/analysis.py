"""``unrealnas analyze difficulty|distinguishability [--dry-run] [--wait] [overrides]``."""

from __future__ import annotations

import os

from unrealnas.analysis.plan import KINDS, plan_analysis, run_analysis
from unrealnas.config.overrides import split_args
from unrealnas.errors import UserError
from unrealnas.observe import say as _say  # timestamped, on the unrealnas logger


def cmd_analyze(args: list[str]) -> int:
    """Run (local) or submit (SLURM) one of the paper's Fig. 1 analyses; print where its report is."""
    from unrealnas.config import compose_config
    from unrealnas.launch import format_status, status, wait_all

    positional, overrides = split_args(args)
    kinds = [p for p in positional if p in KINDS]
    flags = {"--dry-run", "--wait"}
    unknown = [p for p in positional if p not in flags and p not in KINDS]
    if len(kinds) != 1 or unknown:
        raise UserError(f"usage: unrealnas analyze {'|'.join(KINDS)} [--dry-run] [--wait] [key=value overrides]")
    cfg = compose_config(overrides)
    plan = plan_analysis(kinds[0], cfg, overrides)
    if "--dry-run" in positional:
        print(plan.describe())
        return 0
    jobs = run_analysis(plan)
    report = plan.out_dir / "report.md"
    if str(cfg.launcher.name) != "local":
        submitted = [f"{s.name} {str(jobs[s.name][0].job_id).split('_')[0]} ({len(jobs[s.name])})"
                     for s in plan.stages if jobs.get(s.name)]
        _say("submitted arrays: " + ", ".join(submitted) if submitted
             else "every task of this analysis is complete: nothing submitted")
        _say(f"follow with: unrealnas status {cfg.paths.runs}; the report will be {report}")
        if "--wait" not in positional or not submitted:
            print(report)
            return 0
        wait_all([j for s in plan.stages for j in jobs.get(s.name, [])])
    mine = {os.path.realpath(t.run_dir) for s in plan.stages for t in s.tasks if t.run_dir is not None}
    state = status(cfg.paths.runs, plan.spec["launcher_folder"])
    failed = [t for t in state.failures() if t.run_dir is not None and os.path.realpath(t.run_dir) in mine]
    if failed:
        _say(format_status(state))
    print(report)
    return 1 if failed else 0
