"""Command line: ``unrealnas <verb> [hydra overrides...]``.

Every verb composes the same Hydra config (``conf/``) and calls one library function; user
errors print one line and exit 2 (``UNREALNAS_DEBUG=1`` shows the traceback); a run directory or
dataset folder that another process is writing prints "skipped: running elsewhere" and exits 75.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

from unrealnas.errors import UserError

# verb -> (module, function, one-line help). Modules are imported lazily so that
# `unrealnas --help` and config errors do not pay for importing torch.
VERBS: dict[str, tuple[str, str, str]] = {
    "config": ("unrealnas.cli.data", "cmd_config", "print the composed config (every key and its value)"),
    "generate": ("unrealnas.cli.data", "cmd_generate", "generate an unreal dataset: data=rlrn|rlgd|rlrd|cifar10 seed=N"),
    "verify": ("unrealnas.cli.data", "cmd_verify", "verify every shard of a dataset folder: verify <folder>"),
    "export-ffcv": ("unrealnas.cli.data", "cmd_export_ffcv", "write an FFCV .beton beside a dataset: export-ffcv <folder>"),
    "inspect": ("unrealnas.cli.data", "cmd_inspect", "print a dataset's manifest summary and label histogram"),
    "search": ("unrealnas.cli.search", "cmd_search", "run a DARTS/SGAS search (or sample a random cell): search=darts|darts2|sgas_c1|sgas_c2|random"),
    "retrain": ("unrealnas.cli.train", "cmd_retrain", "retrain a found cell: train=cifar10|cifar100|imagenet|chexpert genotype=<path>"),
    "evaluate": ("unrealnas.cli.train", "cmd_evaluate", "evaluate a retrain run directory: evaluate <run dir>"),
    "describe": ("unrealnas.cli.train", "cmd_describe", "params (M) and FLOPs (M) of a genotype's network: genotype=<path> train=<target>"),
    "pipeline": ("unrealnas.cli.pipeline", "cmd_pipeline", "run a paper experiment end to end: +experiment=<name> launcher=slurm|local"),
    "analyze": ("unrealnas.cli.analysis", "cmd_analyze", "the paper's Fig. 1 analyses: analyze difficulty|distinguishability"),
    "table": ("unrealnas.cli.results", "cmd_table", "results table of a runs folder: table <runs dir> --format markdown|latex|csv|cost"),
    "plot": ("unrealnas.cli.results", "cmd_plot", "figures (Fig. 1, 5, 6, cells) of a runs folder: plot <runs dir> [out=<dir>]"),
    "status": ("unrealnas.cli.status", "cmd_status", "done/running/pending/failed per stage and group: status [runs dir]"),
    "bench": ("unrealnas.cli.bench", "cmd_bench", "benchmarks: bench data | bench search"),
}


def _usage() -> str:
    lines = ["usage: unrealnas <verb> [args] [key=value overrides...]", "", "verbs:"]
    lines += [f"  {v:<12} {h}" for v, (_, _, h) in VERBS.items()]
    lines += ["", "examples:", "  unrealnas generate data=rlgd data.num_classes=5000 seed=0",
              "  unrealnas search search=darts data=rlrn seed=3 preset=smoke",
              "  unrealnas search -m search=darts,sgas_c2 seed=range(3) preset=smoke launcher=local",
              "", "-m/--multirun: one task per combination of the sweeps (Hydra's syntax: a,b  range(n)",
              "  glob(*)  choice(a,b)), submitted as ONE job array (launcher=slurm) or run here",
              "  (launcher=local launcher.local_workers=N); --dry-run lists the tasks"]
    return "\n".join(lines)


def _resolve(verb: str) -> Callable[[list[str]], int]:
    module, func, _ = VERBS[verb]
    return getattr(importlib.import_module(module), func)


def _verb_help(verb: str) -> str:
    from unrealnas.cli.help import verb_help
    from unrealnas.cli.multirun import NO_MULTIRUN, VERB_KEYS

    module, func, summary = VERBS[verb]
    # The verb function's docstring without importing its module (and torch) just for help.
    doc = getattr(importlib.import_module(module), func).__doc__ if module in LIGHT_MODULES else None
    return verb_help(verb, summary, doc, VERB_KEYS.get(verb), multirun=verb not in NO_MULTIRUN)


# Verb modules cheap to import (no torch at import time): their docstrings go into --help.
LIGHT_MODULES = frozenset({"unrealnas.cli.data", "unrealnas.cli.search", "unrealnas.cli.bench"})

# Verbs whose own options take comma lists (``bench search methods=darts,darts2 supernet=per_edge,fused``):
# a comma there is not a sweep.
OWN_LIST_OPTIONS = frozenset({"bench"})


def _refuse_sweeps(args: list[str]) -> None:
    """Without -m, sweep syntax (``seed=0,1``, ``range(3)``) is a mistake: say how to run it."""
    overrides = [a for a in args if "=" in a or a.startswith(("~", "+"))]
    if not overrides:
        return
    from unrealnas.config.sweep import sweep_keys

    keys = sweep_keys(overrides)
    if keys:
        raise UserError(f"{keys[0]} is a sweep; add -m (--multirun) to run one task per combination")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``unrealnas`` console command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    verb, args = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"error: unknown verb {verb!r}; choose one of: {', '.join(VERBS)}", file=sys.stderr)
        return 2
    from unrealnas.lock import AlreadyRunning

    try:
        from unrealnas.observe import log_level_of, set_log_level

        set_log_level(log_level_of(args) or "INFO")
        if any(a in ("-h", "--help") for a in args):
            print(_verb_help(verb))
            return 0
        if any(a in ("-m", "--multirun") for a in args):
            from unrealnas.cli.multirun import run_multirun

            module, func, _ = VERBS[verb]
            return int(run_multirun(verb, f"{module}:{func}", args) or 0)
        if verb not in OWN_LIST_OPTIONS:
            _refuse_sweeps(args)
        rc = _resolve(verb)(args)
        return int(rc or 0)
    except AlreadyRunning as e:  # not a failure: another process is doing this very work
        print(f"skipped: running elsewhere: {e}", file=sys.stderr)
        return e.exit_code
    except UserError as e:
        if os.environ.get("UNREALNAS_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`unrealnas status | head`): stop quietly, as a shell tool does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
        return 141  # 128 + SIGPIPE
    except OSError as e:  # disk full, quota, permissions, a file where a folder should be, ...
        if os.environ.get("UNREALNAS_DEBUG"):
            raise
        from unrealnas.fserrors import explain

        print(f"error: {explain(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume from disk", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
