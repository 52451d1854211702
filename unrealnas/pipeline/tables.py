"""The table stage: tables, cost and figures of exactly one planned sweep's runs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unrealnas.atomic import write_bytes_atomic, write_json_atomic
from unrealnas.launch.stages import read_plan_arg
from unrealnas.launch.status import launch_failures
from unrealnas.observe import say as _say  # timestamped, on the unrealnas logger
from unrealnas.results.collect import collect_results
from unrealnas.results.stats import search_notes
from unrealnas.results.tables import SUFFIXES, build_table, render, render_cost_csv, render_cost_markdown
from unrealnas.rundir import RESULT_FILE

TABLE_VERB = "unrealnas.pipeline.tables:table_stage"


def write_tables(plan: dict[str, Any], progress: Callable[[str], None] | None = None) -> Path:
    """Build the tables (and figures) of one planned sweep from its run directories; return the folder."""
    say = progress or _say
    runs_dir, out = Path(plan["runs_dir"]), Path(plan["tables_dir"])
    planned = {os.path.realpath(k): v for k, v in plan["run_dirs"].items()}
    collection = collect_results(runs_dir, only=plan["run_dirs"])
    failures, warnings = launch_failures(runs_dir, plan.get("launcher_folder"), only=plan["run_dirs"])
    for f in failures:
        # A task that died before writing result.json: its cell comes from the plan.
        where = planned.get(os.path.realpath(f.run_dir)) if f.run_dir else None
        if where is not None:
            f.setting = (where[1], where[2], where[3], where[4])
            f.target = where[5]
    expected = [((m, d, lab, c), t) for m, d, lab, c, t in plan["expected"]]
    title = f"{plan['experiment']}: {plan.get('description') or ''}".strip().rstrip(":")
    table = build_table(collection, repeats=int(plan["repeats"]), failures=failures, expected=expected,
                        notes=[*plan.get("notes", []), *search_notes(collection)], title=title,
                        cost_column=bool(plan.get("cost_column", True)))
    files = []
    texts = {f"table{suffix}": render(table, fmt) for fmt, suffix in SUFFIXES.items()}
    texts.update({"cost.md": render_cost_markdown(table), "cost.csv": render_cost_csv(table)})
    for name, text in texts.items():
        write_bytes_atomic(out / name, text.encode())
        files.append(str(out / name))
    problems = list(collection.problems) + warnings
    for p in problems:
        say(f"warning: {p}")
    if plan.get("plots", True):
        try:
            from unrealnas.results.figures import plot_all

            report = plot_all(runs_dir, out / "figures", collection=collection)
            files += [str(p) for p in report.files]
        except Exception as e:  # a figure must not cost the table
            problems.append(f"figures failed: {type(e).__name__}: {e}")
            say(f"warning: figures failed: {type(e).__name__}: {e}")
    flagged = sum(1 for r in table.rows if r.flags)
    write_json_atomic(out / RESULT_FILE, {
        "kind": "table", "status": "completed", "experiment": plan["experiment"], "groups": len(table.rows),
        "flagged": flagged, "failures": len(table.failures), "problems": problems, "files": files,
        "finished_at": time.time()})
    print(render(table, "markdown"), end="", flush=True)
    return out


def table_stage(args: list[str]) -> Path:
    """The table task's callable (``unrealnas.pipeline.tables:table_stage plan=<plan.json>``)."""
    return write_tables(read_plan_arg(args, TABLE_VERB))
