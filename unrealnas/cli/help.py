"""``unrealnas <verb> --help``: the verb's usage, its config groups and choices, its keys and their comments.

The key comments are read from the schema's source (``unrealnas/config/schema.py`` and
``experiment.py``) with :mod:`tokenize`, so the one-line comment beside each field stays the
single place that documents it.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import tokenize
import typing
from functools import cache
from typing import Any

GROUPS = ("data", "search", "train", "launcher", "preset", "experiment")  # conf/<group>/*.yaml


@cache
def field_comments(module: Any) -> dict[str, dict[str, str]]:
    """``{class name: {field: its trailing comment}}`` of every class in ``module``'s source."""
    source = inspect.getsource(module)
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    out: dict[str, dict[str, str]] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            out[node.name] = {stmt.target.id: comments.get(stmt.end_lineno or stmt.lineno, "")
                              for stmt in node.body
                              if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)}
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def schema_keys(cls: type, prefix: str = "") -> list[tuple[str, Any, str]]:
    """``(dotted key, schema default, comment)`` of every leaf key of the dataclass ``cls``."""
    comments = field_comments(inspect.getmodule(cls)).get(cls.__name__, {})
    hints = typing.get_type_hints(cls)
    rows: list[tuple[str, Any, str]] = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        sub = hints.get(f.name)
        if typing.get_origin(sub) is typing.Union:  # Optional[SomeConfig]: the overlay's schema
            sub = next((a for a in typing.get_args(sub) if a is not type(None)), sub)
        if dataclasses.is_dataclass(sub):
            rows += schema_keys(sub, f"{key}.")
        else:
            rows.append((key, _default(f), comments.get(f.name, "")))
    return rows


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if value == "":
        return "''"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict) and value:
        return "{...}"
    return str(value)


def verb_help(verb: str, summary: str, doc: str | None, keys: tuple[str, ...] | None, multirun: bool = True) -> str:
    """The help text of ``verb``; ``keys`` are the top-level config keys it reads (None: all)."""
    from unrealnas.config.compose import conf_dir
    from unrealnas.config.schema import Config

    def reads(top: str) -> bool:
        return keys is None or top in keys

    sweep = " [-m sweep overrides... [--dry-run]]" if multirun else ""
    lines = [f"usage: unrealnas {verb} [args] [key=value overrides...]{sweep}", "", summary]
    first_doc = (doc or "").strip().splitlines()
    if first_doc and first_doc[0] != summary:
        lines.append(first_doc[0])
    groups = [g for g in GROUPS if reads(g) and (conf_dir() / g).is_dir()]
    if groups:
        lines += ["", "config groups (group=choice; +experiment=<name> adds an overlay):"]
        for g in groups:
            choices = sorted(p.stem for p in (conf_dir() / g).glob("*.yaml"))
            lines.append(f"  {g:<12} {', '.join(choices)}")
    rows = [r for r in schema_keys(Config) if reads(r[0].split(".", 1)[0])]
    if rows:
        width = min(34, max(len(k) for k, _, _ in rows))
        lines += ["", "keys (schema default; 'unrealnas config' shows the composed values):"]
        for key, default, comment in rows:
            text = f"  {key:<{width}} = {_show(default)}"
            lines.append(f"{text:<{width + 16}}  # {comment}" if comment else text)
    return "\n".join(lines)
