"""The ``status`` verb: done / running / pending / failed per stage and group of a runs folder."""

from __future__ import annotations

import json
from pathlib import Path

from unrealnas.errors import UserError
from unrealnas.launch.status import format_status, status


def cmd_status(args: list[str]) -> int:
    """``unrealnas status [runs dir] [launcher.folder=...] [format=text|json]``; exit 1 if a task failed."""
    args = list(args)
    if "--format" in args:  # `--format json` as `table` takes it, beside format=json
        at = args.index("--format")
        if at + 1 >= len(args):
            raise UserError("status: --format needs a value: text or json")
        args[at:at + 2] = [f"format={args[at + 1]}"]
    args = [a[2:] if a.startswith("--format=") else a for a in args]
    positional = [a for a in args if "=" not in a]
    options = dict(a.split("=", 1) for a in args if "=" in a)
    unknown = sorted(set(options) - {"launcher.folder", "format", "paths.runs"})
    if len(positional) > 1 or unknown:
        raise UserError("usage: unrealnas status [runs dir] [launcher.folder=<dir>] [format=text|json | --format json]")
    runs_dir = Path(positional[0] if positional else options.get("paths.runs", "./runs"))
    if not runs_dir.is_dir():
        raise UserError(f"runs folder {runs_dir} does not exist")
    fmt = options.get("format", "text")
    if fmt not in ("text", "json"):
        raise UserError(f"format={fmt!r} is invalid: choose text or json")
    report = status(runs_dir, options.get("launcher.folder"))
    print(json.dumps(report.to_json(), indent=2) if fmt == "json" else format_status(report))
    return 1 if report.failures() else 0
