"""``unrealnas <verb> -m <overrides>``: one task per sweep combination, submitted as ONE job array.

The CLI side of a sweep: it expands the overrides (:mod:`unrealnas.config.sweep`), composes and
validates every combination before anything runs, and hands the launch layer plain
:class:`~unrealnas.launch.Task` s that name what to run (a resumable stage, or the verb's
``module:function``), so that the launch layer never imports the CLI. ``launcher=slurm``
submits one array; ``launcher=local`` runs the same tasks here (``launcher.local_workers`` at a
time). Tasks whose run directory is complete are skipped, as in the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from unrealnas.config.overrides import override_key
from unrealnas.config.sweep import expand_sweep, sweep_keys
from unrealnas.errors import UserError
from unrealnas.observe import say as _say  # timestamped, on the unrealnas logger

MULTIRUN_FLAGS = ("-m", "--multirun")

# The top-level config keys each verb reads (None: all of them). A sweep over any other key would
# run the same task several times, so it is refused.
_STAGE_KEYS = ("preset", "seed", "device", "paths", "data", "experiment", "log_level")
VERB_KEYS: dict[str, tuple[str, ...] | None] = {
    "config": None,
    "bench": None,
    "generate": ("preset", "seed", "paths", "data", "experiment", "log_level"),
    "search": (*_STAGE_KEYS, "search"),
    "retrain": (*_STAGE_KEYS, "train", "genotype"),
    "describe": ("preset", "data", "train", "genotype", "format", "experiment", "log_level"),
    "evaluate": ("preset", "device", "paths", "data", "train", "format", "log_level"),
    "verify": ("log_level",),
    "inspect": ("log_level",),
    "export-ffcv": ("log_level",),
    "table": ("paths", "format", "log_level"),
    "plot": ("paths", "format", "log_level"),
    "status": ("paths", "format", "log_level"),
}
# Verbs that plan job arrays themselves: an array of them would nest arrays inside array tasks.
NO_MULTIRUN = {
    "pipeline": "pipeline is already a sweep: list the values in experiment.methods/datasets/num_classes/seeds",
    "analyze": "analyze plans its own arrays: list the datasets in analysis.datasets",
}
STAGE_VERBS = ("generate", "search", "retrain")  # resumable stages with a known run directory
# Verbs that read a folder given on the command line and take only a few options (no paths.*).
FOLDER_VERBS = ("verify", "inspect", "export-ffcv", "table", "plot", "status")



def _split(args: Sequence[str]) -> tuple[list[str], list[str]]:
    positional = [a for a in args if "=" not in a and not a.startswith(("~", "+"))]
    return positional, [a for a in args if a not in positional]


def check_sweep_keys(verb: str, overrides: Sequence[str]) -> list[str]:
    """The swept keys; UserError for a key the schema lacks, a launcher key, or a key ``verb`` does not read."""
    from unrealnas.config.schema import Config

    known = {f.name for f in fields(Config)}
    keys = sweep_keys(overrides)
    allowed = VERB_KEYS.get(verb)
    for key in keys:
        top = key.split(".", 1)[0]
        if top not in known:
            raise UserError(f"unknown sweep key {key!r}; run 'unrealnas config' to see every key")
        if top == "launcher":
            raise UserError(f"cannot sweep over {key}: a sweep is one job array with one launcher; "
                            "run one command per launcher setting")
        if allowed is not None and top not in allowed:
            raise UserError(f"{verb} does not read {key}: the sweep would run the same task "
                            f"several times; sweep over {', '.join(allowed) or 'nothing'} instead")
    return keys


def plan_multirun(verb: str, spec: str, args: Sequence[str]) -> tuple[list[Any], Any]:
    """The tasks of ``unrealnas <verb> -m <args>`` and the launcher config that runs them."""
    from unrealnas.config.compose import compose_configs
    from unrealnas.launch import Task
    from unrealnas.launch.stages import quote_override, task_overrides
    from unrealnas.launch.task import run_dir_of

    if verb in NO_MULTIRUN:
        raise UserError(f"{verb} -m is not supported: {NO_MULTIRUN[verb]}")
    positional, overrides = _split(args)
    swept = set(check_sweep_keys(verb, overrides))
    combos = expand_sweep(overrides)
    tasks, launcher = [], None
    # every combination, before anything is submitted (as BasicSweeper does); one Hydra composition per
    # set of group choices, so a sweep of 10,000 seeds composes once
    for combo, cfg in zip(combos, compose_configs(combos), strict=True):
        if launcher is None:
            launcher = cfg.launcher
        # Absolute paths: an array task may start in another working directory than this command.
        paths = [f"paths.runs={quote_override(Path(cfg.paths.runs).expanduser().absolute())}",
                 f"paths.data={quote_override(Path(cfg.paths.data).expanduser().absolute())}"]
        ovs = [*task_overrides(combo), *([] if verb in FOLDER_VERBS else paths)]
        # Seeds are repeats of one cell; status counts them together.
        group = ",".join(o for o in combo if override_key(o) in swept and override_key(o) != "seed")
        if verb in STAGE_VERBS:
            tasks.append(Task(verb, ovs, run_dir=run_dir_of(verb, cfg), stage="", group=group))
        else:
            tasks.append(Task(spec, [*positional, *ovs], stage=verb, group=group))
    return tasks, launcher


def format_tasks(verb: str, tasks: Sequence[Any], launcher: Any) -> str:
    """``--dry-run``: the task count, what is left to run, and one line per task."""
    todo = sum(1 for t in tasks if not t.is_complete())
    lines = [f"{verb}: {len(tasks)} task(s), {todo} to run, launcher={launcher.name}"]
    lines += [f"  [{'done' if t.is_complete() else 'todo'}] {t.describe()}" for t in tasks]
    return "\n".join(lines)


def run_multirun(verb: str, spec: str, args: Sequence[str]) -> int:
    """``unrealnas <verb> -m [--dry-run] <overrides>``: 0 when every task completed (or was submitted)."""
    from unrealnas.launch import submit_array

    dry_run = "--dry-run" in args
    rest = [a for a in args if a not in (*MULTIRUN_FLAGS, "--dry-run")]
    tasks, launcher = plan_multirun(verb, spec, rest)
    if dry_run:
        print(format_tasks(verb, tasks, launcher))
        return 0
    jobs = submit_array(tasks, launcher, verb)
    if str(launcher.name) != "local":
        for job in jobs:
            print(job.job_id)
        return 0
    failed = [j for j in jobs if j.state != "COMPLETED"]
    for job in jobs:
        if job.state == "COMPLETED" and job.value is not None:
            print(job.value)
    for job in failed:
        _say(f"{verb}: {job.state.lower()}: {job.task.describe()}: {job.error} (log: {job.log_path})")
    return 1 if failed else 0
