"""A task = a stage (or a ``module:function``) with its Hydra overrides, and the run directory it produces.

This module never imports torch or submitit at import time: the submitting process builds and
filters tasks cheaply, and the stage code is imported only inside :func:`run_task`, in the job.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unrealnas.errors import UserError
from unrealnas.observe import say as _say  # timestamped, on the unrealnas logger
from unrealnas.rundir import SEARCH, TRAIN, is_complete, run_path

# verb -> stage name used by `status` (the folder under paths.runs for search and train).
STAGE_OF_VERB = {"generate": "generate", "search": SEARCH, "retrain": TRAIN}

# Verbs that run a resumable stage: (module, function) with the contract f(cfg, progress=...) -> Path.
# Called directly (not through the CLI wrapper) so that the job returns the run directory.
STAGE_RUNNERS: dict[str, tuple[str, str]] = {
    "generate": ("unrealnas.data.generators", "generate_dataset"),
    "search": ("unrealnas.search.run", "run_search"),
    "retrain": ("unrealnas.train.retrain", "run_retrain"),
}


@dataclass(frozen=True)
class Task:
    """One unit of work: ``unrealnas <verb> <overrides...>`` producing ``run_dir``.

    ``verb`` is a resumable stage (``generate``, ``search``, ``retrain``) or ``package.module:function``
    (a function taking the argument list: a CLI verb's function handed over by the caller, a plugin,
    a test); a function that returns a non-zero int fails the task, as an exit status would.
    ``run_dir`` (optional) is where the task leaves its result: a task whose run_dir is complete is
    skipped at submission and in the job. ``group`` labels the sweep cell for ``status`` (e.g. ``darts/rlrn/random/c10``).
    ``more_run_dirs``: the other run directories of a task that writes several (packed seeds,
    ``seeds=[...]``); the task is complete when all are.
    """

    verb: str
    overrides: tuple[str, ...] = ()
    run_dir: Path | None = None
    stage: str = ""
    group: str = ""
    more_run_dirs: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        # Frozen dataclass: normalise through object.__setattr__ so tasks pickle and compare cleanly.
        object.__setattr__(self, "overrides", tuple(str(o) for o in self.overrides))
        if self.run_dir is not None:
            # Absolute, because the job may resolve relative paths from another working directory.
            object.__setattr__(self, "run_dir", Path(self.run_dir).expanduser().absolute())
        object.__setattr__(self, "more_run_dirs", tuple(Path(p).expanduser().absolute() for p in self.more_run_dirs))
        if not self.stage:
            object.__setattr__(self, "stage", STAGE_OF_VERB.get(self.verb, self.verb.rsplit(":", 1)[-1]))

    def is_complete(self) -> bool:
        """Whether the task's run directory (and each of ``more_run_dirs``) already holds a completed result."""
        return is_complete(self.run_dir) and all(is_complete(p) for p in self.more_run_dirs)

    def argv(self) -> list[str]:
        """The equivalent command line: ``[verb, *overrides]``."""
        return [self.verb, *self.overrides]

    def describe(self) -> str:
        """One line for logs: ``unrealnas <verb> <overrides>`` (or ``module:function <overrides>``)."""
        return ("" if ":" in self.verb else "unrealnas ") + " ".join(self.argv())


def _import_callable(spec: str) -> Callable[[list[str]], Any]:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"task verb {spec!r}: cannot import {module_name} ({e})") from e
    func = getattr(module, attr, None)
    if not callable(func):
        raise UserError(f"task verb {spec!r}: {module_name} has no function {attr!r}")
    return func



def run_task(task: Task, progress: Callable[[str], None] | None = None) -> Path | None:
    """Run (or resume, or skip when complete) one task in this process; return its run directory."""
    say = progress or _say
    from unrealnas.observe import log_level_of, set_log_level

    if log_level_of(task.overrides):  # in a job there is no CLI to set it
        set_log_level(log_level_of(task.overrides))
    if task.is_complete():
        say(f"{task.run_dir} already complete; nothing to do")
        return task.run_dir
    say(f"running: {task.describe()}")
    overrides = list(task.overrides)
    if ":" in task.verb:
        out = _import_callable(task.verb)(overrides)
        # A CLI-style verb function returns its exit status: non-zero must mark the job failed.
        if isinstance(out, int) and not isinstance(out, bool) and out != 0:
            raise RuntimeError(f"{task.describe()} exited with status {out}")
        return Path(out) if isinstance(out, (str, Path)) else task.run_dir
    if task.verb in STAGE_RUNNERS:
        from unrealnas.config import compose_config

        positional = [a for a in overrides if "=" not in a and not a.startswith(("~", "+"))]
        if positional:
            raise UserError(f"{task.verb} takes only key=value overrides, got {' '.join(positional)}")
        module, func = STAGE_RUNNERS[task.verb]
        runner = getattr(importlib.import_module(module), func)
        return Path(runner(compose_config(overrides), progress=say))
    # The caller names what to run; this layer does not know the command line's verb table.
    raise UserError(f"task verb {task.verb!r} is neither a stage ({', '.join(STAGE_RUNNERS)}) "
                    "nor package.module:function")


def planned_run_dir(verb: str, overrides: Sequence[str]) -> Path | None:
    """The run directory a ``generate``/``search``/``retrain`` task will write, None if not knowable yet.

    Imports the stage module (and so torch). A retrain whose genotype does not exist yet (its search
    has not run) gives None unless ``train.run_id`` names the run.
    """
    from unrealnas.config import compose_config

    return run_dir_of(verb, compose_config(list(overrides)))


def run_dir_of(verb: str, cfg: Any) -> Path | None:
    """:func:`planned_run_dir` from an already composed config."""
    try:
        if verb == "generate":
            from unrealnas.data.generators import dataset_dir

            return dataset_dir(cfg).absolute()
        if verb == "search":
            from unrealnas.search.engine import packed_seeds, seed_config
            from unrealnas.search.state import search_run_dir

            seeds = packed_seeds(cfg)  # packed seeds: the first seed's run (the one run_search returns)
            return search_run_dir(seed_config(cfg, seeds[0]) if seeds else cfg).absolute()
        if verb == "retrain":
            if cfg.train.run_id:
                return run_path(cfg.paths.runs, TRAIN, str(cfg.train.run_id)).absolute()
            from unrealnas.train.retrain import resolve_genotype, run_id_for

            run_id = run_id_for(cfg, resolve_genotype(cfg.genotype))
            return run_path(cfg.paths.runs, TRAIN, run_id).absolute()
    except (ImportError, AttributeError, UserError):
        return None
    return None


def write_task_file(tasks: Sequence[Task], path: str | Path) -> int:
    """Write the unfinished tasks, one ``verb overrides...`` line each, for ``slurm/sweep_array.sbatch``.

    Returns the number of lines (submit with ``sbatch --array=0-<n-1>``). The script splits lines
    on whitespace and runs ``unrealnas``, so only CLI verbs and space-free arguments are accepted.
    """
    lines = []
    for t in tasks:
        if ":" in t.verb:
            raise UserError(f"{t.verb}: a task file holds CLI verbs only (sbatch runs `unrealnas <verb>`)")
        bad = [a for a in t.argv() if not a or any(c.isspace() for c in a)]
        if bad:
            raise UserError(f"{t.describe()}: argument {bad[0]!r} is empty or holds whitespace; "
                            "the task file splits on spaces")
        if not t.is_complete():
            lines.append(" ".join(t.argv()))
    from unrealnas.atomic import write_bytes_atomic

    header = "# one task per line for slurm/sweep_array.sbatch: unrealnas <verb> <overrides...>\n"
    write_bytes_atomic(path, (header + "".join(f"{ln}\n" for ln in lines)).encode())
    return len(lines)
