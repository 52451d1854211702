"""Shared output of the benchmarks: rows (dicts) -> an aligned text table, and an optional JSON file.

Rows stay plain dicts so that the JSON file holds every measured field (``images_per_s``,
``seconds``, extras such as ``cpu_seconds``); the text table shows only the columns asked for.
Benchmark-only options (``quick=true``, ``json=path``, ``steps=N``) are not config keys: ``pop_options``
takes them out of the argument list before the rest is composed as Hydra overrides.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unrealnas.atomic import write_json_atomic
from unrealnas.errors import ConfigError


def format_value(value: Any) -> str:
    """A cell of the table: large numbers with thousands separators, small ones with 3 significant digits."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if value == 0:
            return "0"
        return f"{value:.3g}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> str:
    """Rows as an aligned text table of ``columns`` (numbers right-aligned, text left-aligned)."""
    cells = [[format_value(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), int | float) or r.get(c) is None for r in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        out = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(out).rstrip()

    lines = [title] if title else []
    lines += [line(list(columns)), line(["-" * w for w in widths])]
    lines += [line(row) for row in cells]
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    """Where the numbers were measured: host, CPU count, torch version and accelerator."""
    info: dict[str, Any] = {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                            # a shared machine's load changes CPU timings a lot: record it beside them
                            "load_avg_1m": round(os.getloadavg()[0], 2)}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    except ImportError:  # the table printer itself needs no torch
        pass
    return info


def report(name: str, rows: Sequence[dict[str, Any]], columns: Sequence[str], json_path: str | None = None,
           notes: Sequence[str] = (), meta: dict[str, Any] | None = None) -> str:
    """Print the table and notes; write ``{benchmark, meta, rows, notes}`` to ``json_path`` if given."""
    meta = {**machine_info(), **(meta or {})}
    where = ", ".join(f"{k} {meta[k]}" for k in ("host", "cpus", "torch_threads", "load_avg_1m", "gpu", "torch")
                      if k in meta)
    text = format_table(rows, columns, title=f"unrealnas bench {name} ({where})")
    if notes:
        text += "\n" + "\n".join(f"  {n}" for n in notes)
    print(text, flush=True)
    if json_path:
        write_json_atomic(Path(json_path), {"benchmark": name, "meta": meta, "rows": list(rows), "notes": list(notes)})
        print(f"wrote {json_path}", flush=True)
    return text


def set_threads(threads: int | None) -> None:
    """Pin torch's intra-op threads (``threads=N``); on an oversubscribed machine 1 thread is far steadier."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def _parse(key: str, raw: str, kind: type) -> Any:
    if kind is bool:
        if raw.lower() in ("true", "1", "yes", "on"):
            return True
        if raw.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}={raw}: expected true or false")
    if kind is int:
        try:
            return int(raw)
        except ValueError as e:
            raise ConfigError(f"{key}={raw}: expected an integer") from e
    return raw


def pop_options(args: Sequence[str], spec: dict[str, tuple[type, Any]]) -> tuple[dict[str, Any], list[str]]:
    """Split ``key=value`` args into benchmark options (``spec``: key -> (type, default)) and the rest.

    ``key=null`` gives None (the benchmark then picks its own default).
    """
    options = {k: default for k, (_, default) in spec.items()}
    rest = []
    for arg in args:
        key, sep, raw = arg.partition("=")
        if sep and key in spec:
            options[key] = None if raw.lower() in ("null", "none") else _parse(key, raw, spec[key][0])
        else:
            rest.append(arg)
    return options, rest
