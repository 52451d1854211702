"""The verbs ``table`` and ``plot``: read a runs folder, print or write tables and figures."""

from __future__ import annotations

from pathlib import Path

from unrealnas.errors import UserError
from unrealnas.observe import say as _say  # timestamped, on the unrealnas logger
from unrealnas.results.tables import FORMATS

TABLE_USAGE = ("usage: unrealnas table [runs dir] [--format markdown|latex|csv|cost] [repeats=N] [out=<file>] "
               "[launcher.folder=<dir>]")
PLOT_USAGE = "usage: unrealnas plot [runs dir] [out=<dir>] [formats=png,pdf] [cells=true|false]"



def _parse(args: list[str], allowed: set[str], usage: str) -> tuple[Path, dict[str, str]]:
    """(runs dir, options) from ``[runs dir] [--key value | --key=value | key=value ...]``."""
    positional: list[str] = []
    options: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if not eq:
                if i + 1 >= len(args):
                    raise UserError(f"{arg} needs a value; {usage}")
                value, i = args[i + 1], i + 1
            options[key] = value
        elif arg == "-f":
            if i + 1 >= len(args):
                raise UserError(f"-f needs a value; {usage}")
            options["format"], i = args[i + 1], i + 1
        elif "=" in arg:
            key, _, value = arg.partition("=")
            options[key] = value
        else:
            positional.append(arg)
        i += 1
    unknown = sorted(set(options) - allowed)
    if unknown or len(positional) > 1:
        what = f"unknown option {unknown[0]!r}" if unknown else f"one runs folder, got {' '.join(positional)}"
        raise UserError(f"{what}; {usage}")
    runs_dir = Path(positional[0] if positional else options.get("paths.runs", "./runs"))
    if not runs_dir.is_dir():
        raise UserError(f"runs folder {runs_dir} does not exist")
    return runs_dir, options


def _positive_int(options: dict[str, str], key: str) -> int | None:
    if key not in options:
        return None
    try:
        value = int(options[key])
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{key}={options[key]!r} is invalid: use a positive integer")
    return value


def cmd_table(args: list[str]) -> int:
    """Print (or write) the results table of a runs folder; malformed result files are named on stderr."""
    from unrealnas.atomic import write_bytes_atomic
    from unrealnas.launch.status import launch_failures
    from unrealnas.results.collect import collect_results
    from unrealnas.results.tables import build_table, render

    runs_dir, options = _parse(args, {"format", "repeats", "out", "launcher.folder", "paths.runs"}, TABLE_USAGE)
    fmt = options.get("format", "markdown")
    if fmt not in FORMATS:
        raise UserError(f"format={fmt!r} is invalid: choose one of {', '.join(FORMATS)}")
    repeats = _positive_int(options, "repeats")
    collection = collect_results(runs_dir)
    failures, warnings = launch_failures(runs_dir, options.get("launcher.folder"))
    table = build_table(collection, repeats=repeats, failures=failures)
    for problem in collection.problems:
        _say(f"warning: skipped malformed result {problem}")
    for w in warnings:
        _say(f"warning: {w}")
    if not table.rows:
        _say(f"no completed result.json under {runs_dir}")
    text = render(table, fmt)
    if "out" in options:
        write_bytes_atomic(options["out"], text.encode())
        print(options["out"])
    else:
        print(text, end="")
    return 0


def cmd_plot(args: list[str]) -> int:
    """Draw the figures (Fig. 1, 5, 6 and the cells) of a runs folder; prints the output folder."""
    from unrealnas.results.figures import FORMATS as FIGURE_FORMATS
    from unrealnas.results.figures import plot_all

    runs_dir, options = _parse(args, {"out", "formats", "cells", "paths.runs"}, PLOT_USAGE)
    formats = [f.strip() for f in options.get("formats", ",".join(FIGURE_FORMATS)).split(",") if f.strip()]
    bad = [f for f in formats if f not in ("png", "pdf", "svg")]
    if bad or not formats:
        raise UserError(f"formats={options.get('formats')!r} is invalid: choose from png, pdf, svg")
    cells = options.get("cells", "true").lower()
    if cells not in ("true", "false", "1", "0", "yes", "no"):
        raise UserError(f"cells={options['cells']!r} is invalid: choose true or false")
    out = Path(options.get("out", runs_dir / "figures"))
    report = plot_all(runs_dir, out, formats, cells=cells in ("true", "1", "yes"), progress=_say)
    for why in report.skipped:
        _say(f"skipped {why}")
    print(out)
    return 0 if report.files else 1
