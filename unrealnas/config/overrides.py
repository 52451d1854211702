"""Command-line arguments as Hydra overrides: the key an override sets, positional vs overrides."""

from __future__ import annotations

from collections.abc import Sequence

from unrealnas.errors import UserError


def override_key(override: str) -> str:
    """The key an override sets: ``+a.b=1`` -> ``a.b``, ``~a`` -> ``a``."""
    return override.lstrip("+~").split("=", 1)[0]


def split_args(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Positional arguments vs Hydra overrides (``key=value``, ``+key=value``, ``~key``)."""
    positional = [a for a in args if "=" not in a and not a.startswith(("~", "+"))]
    overrides = [a for a in args if a not in positional]
    return positional, overrides


def refuse_hydra_overrides(overrides: Sequence[str]) -> None:
    """UserError for ``hydra.*`` overrides: unrealnas composes its config without Hydra's app runner."""
    for o in overrides:
        key = override_key(o)
        if key == "hydra" or key.startswith("hydra."):
            raise UserError(f"{o!r}: hydra.* settings are not used here (no Hydra app runner: runs go to "
                            "paths.runs, sweeps are -m, logs follow log_level); drop it")
