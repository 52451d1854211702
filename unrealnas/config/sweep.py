"""Hydra multirun sweeps: command-line overrides -> one override list per task.

Hydra's own override grammar (its public ``OverridesParser``) parses the command line (comma lists, ``range()``, ``choice()``,
``glob()`` over a group's options), and the combinations follow Hydra's BasicSweeper: one axis
per key (a later override of the same key replaces an earlier one), the cartesian product in
command-line order. A fixed override keeps the user's exact text (BasicSweeper would rewrite
``~key`` as ``~key=null``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from unrealnas.config.compose import conf_dir
from unrealnas.config.overrides import override_key, refuse_hydra_overrides
from unrealnas.errors import UserError


def _group_options(group: str) -> list[str]:
    """The options of config group ``group`` (what ``glob()`` filters): ``conf/<group>/*.yaml`` names."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def parse_overrides(overrides: Sequence[str]) -> list[Any]:
    """Hydra ``Override`` objects of ``overrides``; a syntax error is one UserError line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    refuse_hydra_overrides(overrides)
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:
        raise UserError(f"bad override in {' '.join(overrides)}: {str(e).strip().splitlines()[0]}") from e


def sweep_keys(overrides: Sequence[str]) -> list[str]:
    """The keys that ``overrides`` sweep over (``seed=0,1`` -> ``seed``), in command-line order."""
    return [override_key(o.get_key_element()) for o in parse_overrides(overrides) if o.is_sweep_override()]


def expand_sweep(overrides: Sequence[str]) -> list[list[str]]:
    """One override list per combination of the sweeps in ``overrides`` (BasicSweeper's product)."""
    from hydra.core.override_parser.types import Glob
    from hydra.errors import HydraException

    axes: dict[str, list[str]] = {}
    for item in parse_overrides(overrides):
        key = item.get_key_element()
        if not item.is_sweep_override():
            axes[key] = [item.input_line]
            continue
        if not item.is_discrete_sweep():
            raise UserError(f"{item.input_line!r}: an interval sweep needs an optimizing sweeper; "
                            "give the values as a list (a,b,c) or range(start,stop,step)")
        try:
            if isinstance(item.value(), Glob):  # Hydra's public parser leaves glob() to the caller's group list
                values = [f"{key}={v}" for v in item.value().filter(_group_options(item.key_or_group))]
            else:
                values = [f"{key}={v}" for v in item.sweep_string_iterator()]
        except HydraException as e:
            raise UserError(f"{item.input_line!r}: {str(e).strip().splitlines()[0]}") from e
        if not values:
            raise UserError(f"sweep {item.input_line!r} is empty; give at least one value")
        axes[key] = values
    return [list(combo) for combo in itertools.product(*axes.values())]
