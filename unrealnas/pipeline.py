"""``unrealnas pipeline +experiment=<name> launcher=slurm|local``: a paper experiment end to end.

An experiment overlay (``conf/experiment/<name>.yaml``, schema :mod:`unrealnas.config.experiment`)
defines a sweep: methods x datasets x class counts x seeds, each search retrained on one or more
targets. The pipeline turns it into four kinds of stages, ONE job array each, chained by
dependencies::

    generate (one task per distinct dataset)
      -afterok->  search (one task per method, dataset, class count, seed)
      -afterany-> retrain (one task per search and retrain entry; train.run_id fixed, so reruns skip)
      [-afterany-> finetune (retrains that start from another retrain's weights, e.g. CheXpert)]
      -afterany-> table (tables and figures of exactly this sweep's runs)

``afterany`` after the searches and retrains: one failed run must be reported in the table, not
block it. With ``launcher=local`` the same stages run here, one after another. Finished tasks are
skipped (their run directory is complete), so resubmitting a finished sweep submits nothing.

The table stage writes ``<paths.runs>/tables/<experiment>/table.{md,tex,csv}`` and ``figures/``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from unrealnas.config.methods import SAMPLED_METHODS
from unrealnas.config.overrides import override_key, split_args
from unrealnas.errors import ConfigError, UserError
from unrealnas.launch import Task, dependency_of, submit_array, wait_all
from unrealnas.launch.packing import pack_search_tasks, pack_seeds_choice
from unrealnas.observe import say as _say  # timestamped, on the unrealnas logger
from unrealnas.results.collect import MISSING

# Keys the pipeline sets per task from the experiment; a command-line value would be ambiguous.
AXIS_KEYS = ("data", "data.name", "data.num_classes", "search", "search.method", "train", "train.target", "seed",
             "seeds", "genotype", "train.run_id", "train.pretrained")
CIFAR_NAMES = ("cifar10", "cifar100")
OFFLINE_TARGETS = ("digits",)  # targets that need no data folder (scikit-learn ships them)


def _search_source(data: DictConfig) -> str | None:
    """The CIFAR name a search dataset is read from (None: generated, or shipped with a package)."""
    if data.name == "rlrd":
        return None if data.source in OFFLINE_TARGETS else str(data.source)
    return str(data.name) if data.name in CIFAR_NAMES else None


TABLE_VERB = "unrealnas.pipeline:table_stage"
PLAN_FILE = "plan.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PLAIN = re.compile(r"^[A-Za-z0-9_./+:@-]+$")



def quote_override(value: str | Path) -> str:
    """A Hydra override value: bare when plain, else single-quoted (paths with commas or spaces)."""
    text = str(value)
    if _PLAIN.match(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class Stage:
    """One job array: its tasks, launcher settings and the earlier arrays it waits for."""

    name: str
    tasks: list[Task]
    launcher: DictConfig
    after: tuple[str, ...] = ()
    kind: str = "afterok"  # dependency kind on the arrays in ``after``


@dataclass
class Plan:
    """Every task of an experiment, per stage, and what the table stage needs to know."""

    experiment: str
    description: str
    stages: list[Stage]
    runs_dir: Path
    tables_dir: Path
    launcher_folder: Path
    repeats: int
    expected: list[list[Any]]  # [method, search_data, search_label, num_classes, target] per table group
    run_dirs: dict[str, list[Any]]  # run dir -> [stage, method, search_data, search_label, num_classes, target]
    seed: int = 0
    notes: list[str] = field(default_factory=list)
    plots: bool = True
    cost_column: bool = True

    def stage(self, name: str) -> Stage:
        """The stage called ``name``."""
        return next(s for s in self.stages if s.name == name)

    def to_json(self) -> dict[str, Any]:
        """What the table stage reads (``plan.json``)."""
        return {"experiment": self.experiment, "description": self.description, "runs_dir": str(self.runs_dir),
                "tables_dir": str(self.tables_dir), "launcher_folder": str(self.launcher_folder),
                "repeats": self.repeats, "expected": self.expected, "run_dirs": self.run_dirs,
                "notes": self.notes, "plots": self.plots, "cost_column": self.cost_column}


@dataclass
class PipelineRun:
    """The jobs each stage submitted (empty list: nothing to do) and the plan they came from."""

    plan: Plan
    jobs: dict[str, list[Any]]

    def all_jobs(self) -> list[Any]:
        """Every submitted job, in stage order."""
        return [j for s in self.plan.stages for j in self.jobs.get(s.name, [])]


# ---- planning ----------------------------------------------------------------------------------------------


def available_experiments() -> list[str]:
    """The overlay names under ``conf/experiment/``."""
    from unrealnas.config.compose import conf_dir

    return sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))


def task_overrides(overrides: Sequence[str]) -> list[str]:
    """The command line's overrides that every task of a sweep inherits.

    Launcher choices are the submitting command's business (a task runs wherever it is put), and
    ``paths.*`` are given back to each task as absolute paths by the caller.
    """
    return [o for o in overrides
            if not override_key(o).startswith("launcher") and override_key(o) not in ("paths.runs", "paths.data")]


def group_choices(group: str) -> list[str]:
    """The option names of a config group (``conf/<group>/*.yaml``)."""
    from unrealnas.config.compose import conf_dir

    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def _check_experiment(exp: DictConfig, name: str) -> None:
    """Choices and cross-references the schema's types cannot express, one ConfigError line each."""
    def fail(key: str, why: str) -> None:
        raise ConfigError(f"config: experiment.{key} is invalid ({name}): {why}")

    methods, datasets, targets = group_choices("search"), group_choices("data"), group_choices("train")
    if not exp.methods or any(m not in methods for m in exp.methods):
        fail("methods", f"{list(exp.methods)}; choose from {', '.join(methods)}")
    if not exp.datasets or any(d not in datasets for d in exp.datasets):
        fail("datasets", f"{list(exp.datasets)}; choose from {', '.join(datasets)}")
    # Class counts of datasets not in experiment.datasets are unused, so that a command line can
    # narrow the sweep with experiment.datasets=[rlrn] alone.
    for d, counts in exp.num_classes.items():
        if not counts or any(int(c) < 2 for c in counts) or len(set(counts)) != len(counts):
            fail(f"num_classes.{d}", f"{list(counts)}; give distinct class counts >= 2")
    if not exp.seeds or len(set(exp.seeds)) != len(exp.seeds):
        fail("seeds", f"{list(exp.seeds)}; give one or more distinct seeds")
    if len(set(exp.retrain_seeds)) != len(exp.retrain_seeds):
        fail("retrain_seeds", f"{list(exp.retrain_seeds)}; give distinct seeds, or [] for the search's seed")
    for entry, spec in exp.retrain.items():
        if not _NAME.match(entry):
            fail(f"retrain.{entry}", "use a plain name (letters, digits, _ . -)")
        if spec.target not in targets:
            fail(f"retrain.{entry}.target", f"{spec.target!r}; choose from {', '.join(targets)}")
        if spec.pretrained_from is not None and (spec.pretrained_from not in exp.retrain
                                                 or spec.pretrained_from == entry):
            fail(f"retrain.{entry}.pretrained_from", f"{spec.pretrained_from!r} is not another retrain entry")
        if spec.stage is not None and (not _NAME.match(spec.stage) or spec.stage in ("generate", "search", "table")):
            fail(f"retrain.{entry}.stage", f"{spec.stage!r}; use a new plain name such as retrain_imagenet")


def _retrain_order(exp: DictConfig) -> list[str]:
    """Retrain entries with each source before the entries that start from its weights."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(entry: str) -> None:
        if entry in order:
            return
        if entry in visiting:
            raise ConfigError(f"config: experiment.retrain.{entry}.pretrained_from forms a cycle")
        visiting.add(entry)
        source = exp.retrain[entry].pretrained_from
        if source is not None:
            visit(source)
        order.append(entry)

    for entry in exp.retrain:
        visit(entry)
    return order


def _launcher_for(cfg: DictConfig, stage: str, extra: dict[str, Any] | None = None) -> DictConfig:
    """cfg.launcher with the experiment's settings for this array (e.g. no GPU for generate)."""
    layers: list[Any] = [cfg.launcher, cfg.experiment.stage_launcher.get(stage) or {}]
    if extra:
        layers.append(extra)
    try:
        return OmegaConf.merge(*layers)
    except Exception as e:  # OmegaConf raises several types for unknown keys / wrong types
        raise ConfigError(f"config: launcher settings of stage {stage!r}: {str(e).splitlines()[0]}") from e


def _check_folder(path: Any, what: str, fix: str) -> None:
    if path is None or not Path(str(path)).expanduser().is_dir():
        where = "is not set" if path is None else f"{path} does not exist"
        raise ConfigError(f"config: {what} {where}; {fix}")


def check_target_data(rcfg: DictConfig, what: str, root_key: str = "train.root") -> None:
    """ConfigError unless the data folder of the retrain target in ``rcfg`` exists (offline targets need none)."""
    target = str(rcfg.train.target)
    if target in OFFLINE_TARGETS or target == "dataset":
        return  # ships with a package, or is generated by the same sweep
    root = rcfg.train.root or (rcfg.data.root if target in CIFAR_NAMES else None)
    fix = (f"set data.root=<folder holding the {target} python version>" if target in CIFAR_NAMES else
           f"set {root_key}=<{target} folder>")
    _check_folder(root, f"{what} ({target}): its data folder", fix)


def check_search_data(dcfg: DictConfig, dataset: str) -> None:
    """ConfigError unless the CIFAR folder a dataset is built from exists (generated data needs none)."""
    source = _search_source(dcfg.data)
    if source is not None:
        _check_folder(dcfg.data.root, f"search data {dataset}: data.root",
                      f"set data.root=<folder holding the {source} python version>")


def plan_pipeline(cfg: DictConfig, overrides: Sequence[str]) -> Plan:
    """Every task of the experiment in ``cfg`` (composed from ``overrides``), stage by stage."""
    from unrealnas.config import compose_config
    from unrealnas.data.generators import dataset_dir
    from unrealnas.search.run import search_run_dir

    exp = cfg.experiment
    chosen = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("experiment=")), "")
    if exp is None:
        raise UserError("pipeline needs an experiment: +experiment=<name>; choose one of: "
                        f"{', '.join(available_experiments())}")
    name = str(exp.name or chosen)
    if not _NAME.match(name):
        raise ConfigError(f"config: experiment.name={name!r} is invalid: use a plain name")
    _check_experiment(exp, name)
    clash = [o for o in overrides if override_key(o) in AXIS_KEYS]
    if clash:
        raise UserError(f"pipeline sets {override_key(clash[0])} per task from the experiment; drop {clash[0]!r} and change "
                        "experiment.methods / datasets / num_classes / seeds / retrain instead")
    base = task_overrides(overrides)
    runs_dir = Path(cfg.paths.runs).expanduser().absolute()
    data_dir = Path(cfg.paths.data).expanduser().absolute()
    # Absolute paths: a job may start in another working directory than this command.
    paths = [f"paths.runs={quote_override(runs_dir)}", f"paths.data={quote_override(data_dir)}"]
    notes: list[str] = []
    seeds = [int(s) for s in exp.seeds]
    pack, pack_why = pack_seeds_choice(cfg, _launcher_for(cfg, "search"))
    if pack > 1:
        notes.append(f"search tasks pack up to {pack} seeds each (launcher.pack_seeds; one process per pack)")
    if pack_why.startswith("launcher.pack_seeds=auto"):  # the choice and why (memory per seed, the card's)
        notes.append(pack_why)
    retrain_seeds = [int(s) for s in exp.retrain_seeds]
    order = _retrain_order(exp)
    stage_of = {e: exp.retrain[e].stage or ("finetune" if exp.retrain[e].pretrained_from else "retrain")
                for e in order}

    # One config per retrain entry, to fail here (not in 100 queued jobs) when its data is missing.
    retrain_base: dict[str, list[str]] = {}
    for entry in order:
        spec = exp.retrain[entry]
        ovs = [*base, f"train={spec.target}", *spec.overrides, *paths]
        if spec.root is not None:
            ovs.append(f"train.root={quote_override(Path(str(spec.root)).expanduser().absolute())}")
        check_target_data(compose_config(ovs), f"retrain {entry!r}", f"experiment.retrain.{entry}.root")
        retrain_base[entry] = ovs

    stages: dict[str, Stage] = {
        "generate": Stage("generate", [], _launcher_for(cfg, "generate")),
        "search": Stage("search", [], _launcher_for(cfg, "search"), ("generate",), "afterok"),
    }
    for entry in order:
        spec, stage = exp.retrain[entry], stage_of[entry]
        launcher = _launcher_for(cfg, stage, OmegaConf.to_container(spec.launcher) or None)
        if stage in stages:
            if stages[stage].launcher != launcher:
                raise ConfigError(f"config: experiment.retrain.{entry}.launcher differs from the other entries of "
                                  f"stage {stage!r}; give it its own experiment.retrain.{entry}.stage")
        else:
            after = ("search",) if spec.pretrained_from is None else ("search", stage_of[spec.pretrained_from])
            if stage in after:
                raise ConfigError(f"config: experiment.retrain.{entry} starts from {spec.pretrained_from!r} in the same "
                                  f"stage {stage!r}; set experiment.retrain.{entry}.stage to another name")
            stages[stage] = Stage(stage, [], launcher, after, "afterany")
        if spec.pretrained_from is not None:
            deps = set(stages[stage].after) | {stage_of[spec.pretrained_from]}
            stages[stage].after = tuple(s for s in stages if s in deps)

    expected: list[list[Any]] = []
    run_dirs: dict[str, list[Any]] = {}
    seen_data: set[Path] = set()
    for method in exp.methods:
        # A sampled method (the random baseline) has one cell per seed whatever the datasets.
        sampled = str(method) in SAMPLED_METHODS
        for dataset in [None] if sampled else exp.datasets:
            for classes in [None] if sampled else list(exp.num_classes.get(dataset) or [None]):
                cell_ovs = [*base, f"search={method}", *([f"data={dataset}"] if dataset is not None else []),
                            *([f"data.num_classes={int(classes)}"] if classes is not None else []),
                            *exp.search_overrides, *paths]
                cfg0 = compose_config([*cell_ovs, f"seed={seeds[0]}"])
                if sampled:
                    cell = [str(method), MISSING, MISSING, None]
                    group = "/".join(cell[:3])
                else:
                    check_search_data(cfg0, dataset)
                    label, n_cls = str(cfg0.data.label), int(cfg0.data.num_classes)
                    cell = [str(method), str(cfg0.data.name), label, n_cls]
                    group = "/".join([*cell[:3], f"c{n_cls}"])
                for t_entry in order:
                    table_target = exp.retrain[t_entry].target + ("_pt" if exp.retrain[t_entry].pretrained_from else "")
                    if [*cell, table_target] not in expected:
                        expected.append([*cell, table_target])
                cell_dirs: list[Path] = []
                for seed in seeds:
                    # The run ids depend on the seed only through cfg.seed: set it on a copy instead of
                    # composing the config again (Hydra takes ~0.1 s per composition).
                    scfg = copy.deepcopy(cfg0)
                    scfg.seed = seed
                    ovs = [*cell_ovs, f"seed={seed}"]
                    ddir = None if sampled else dataset_dir(scfg).absolute()
                    if ddir is not None and ddir not in seen_data:
                        seen_data.add(ddir)
                        stages["generate"].tasks.append(Task("generate", ovs, run_dir=ddir, stage="generate",
                                                             group=f"{dataset}/{label}/c{n_cls}"))
                    sdir = search_run_dir(scfg).absolute()
                    cell_dirs.append(sdir)
                    run_dirs[str(sdir)] = ["search", *cell, None]
                    # Several retrain seeds per search separate retrain noise from the architecture's effect.
                    for t_seed in retrain_seeds or [seed]:
                        train_dirs: dict[str, Path] = {}
                        for t_entry in order:
                            spec = exp.retrain[t_entry]
                            rid = f"{t_entry}-{sdir.name}" + (f"-r{t_seed}" if retrain_seeds else "")
                            tdir = runs_dir / "train" / rid
                            train_dirs[t_entry] = tdir
                            t_ovs = [*retrain_base[t_entry], f"genotype={quote_override(sdir)}", f"seed={t_seed}",
                                     f"train.run_id={rid}"]
                            if spec.pretrained_from is not None:
                                t_ovs.append(f"train.pretrained={quote_override(train_dirs[spec.pretrained_from])}")
                            table_target = spec.target + ("_pt" if spec.pretrained_from else "")
                            stages[stage_of[t_entry]].tasks.append(Task(
                                "retrain", t_ovs, run_dir=tdir, stage="train", group=f"{table_target}/{group}"))
                            run_dirs[str(tdir)] = ["train", *cell, table_target]
                # launcher.pack_seeds: the cell's seeds in packed search tasks (unrealnas.launch.packing)
                stages["search"].tasks += pack_search_tasks(cell_ovs, seeds, cell_dirs, group, pack, str(cfg0.search.method))

    tables_dir = runs_dir / "tables" / name
    table_task = Task(TABLE_VERB, [f"plan={quote_override(tables_dir / PLAN_FILE)}"], run_dir=tables_dir, stage="table",
                      group=name)
    ordered = [stages["generate"], stages["search"], *(s for k, s in stages.items() if k not in ("generate", "search"))]
    table = Stage("table", [table_task], _launcher_for(cfg, "table"), tuple(s.name for s in ordered), "afterany")
    launcher_folder = Path(str(cfg.launcher.folder)).expanduser().absolute()
    return Plan(name, str(exp.description), [*ordered, table], runs_dir, tables_dir, launcher_folder,
                len(seeds) * max(1, len(retrain_seeds)),
                expected, run_dirs, int(cfg.seed), notes, bool(exp.plots),
                bool(exp.cost_column))


# ---- running ------------------------------------------------------------------------------------------------


def _write_plan(plan: Plan) -> bool:
    """Write ``plan.json`` when it changed; True if it did (the table must then be rebuilt)."""
    from unrealnas.io import write_json_atomic

    path = plan.tables_dir / PLAN_FILE
    new = plan.to_json()
    try:
        if json.loads(path.read_text()) == new:
            return False
    except (OSError, ValueError):
        pass
    write_json_atomic(path, new)
    return True


def run_pipeline(plan: Plan, progress: Callable[[str], None] | None = None) -> PipelineRun:
    """Submit (SLURM) or run (local) every stage of ``plan`` in order, chained by dependencies."""
    from unrealnas.launch import check_slurm

    launcher_name = str(plan.stage("search").launcher.name)
    if launcher_name == "slurm":
        check_slurm()  # before writing anything: no SLURM -> one line that suggests launcher=local

    def before(stage: Stage, jobs: dict[str, list[Any]]) -> None:
        if stage.name == "table":
            changed = _write_plan(plan)
            marker = plan.tables_dir / "result.json"
            if (changed or any(jobs.values())) and marker.exists():
                marker.unlink()  # new runs (or a new plan) make the old table stale

    return PipelineRun(plan, submit_stages(plan.stages, before))


def submit_stages(stages: Sequence[Stage],
                  before: Callable[[Stage, dict[str, list[Any]]], None] | None = None) -> dict[str, list[Any]]:
    """Submit (SLURM) or run (local) each stage in order, each waiting for the jobs of its ``after`` stages.

    ``before(stage, jobs so far)`` runs just before a stage is submitted (e.g. to mark a report stale).
    """
    from unrealnas.launch.gres import check_gpu_requests

    # Every array's GPU request first: a stage that cannot fit must not leave earlier ones queued.
    check_gpu_requests([(s.name, s.launcher) for s in stages if s.tasks])
    jobs: dict[str, list[Any]] = {}
    for stage in stages:
        if before is not None:
            before(stage, jobs)
        deps = [j for name in stage.after for j in jobs.get(name, [])]
        dependency = dependency_of(deps, stage.kind) if deps else None
        jobs[stage.name] = submit_array(stage.tasks, stage.launcher, stage.name, dependency=dependency)
    return jobs


def format_stages(title: str, stages: Sequence[Stage]) -> str:
    """``title``, then each stage's task count, pending count, dependency and tasks (``--dry-run``)."""
    from unrealnas.launch import pending_tasks

    lines = [title]
    for s in stages:
        after = f" ({s.kind} {', '.join(s.after)})" if s.after else ""
        lines.append(f"{s.name}: {len(s.tasks)} task(s), {len(pending_tasks(s.tasks))} to run{after}")
        lines += [f"  {t.describe()}" for t in s.tasks]
    return "\n".join(lines)


# ---- the table stage --------------------------------------------------------------------------------------------


def write_tables(plan: dict[str, Any], progress: Callable[[str], None] | None = None) -> Path:
    """Build the tables (and figures) of one planned sweep from its run directories; return the folder."""
    from unrealnas.io import write_bytes_atomic, write_json_atomic
    from unrealnas.results.collect import collect_results, launch_failures
    from unrealnas.results.stats import search_notes
    from unrealnas.results.tables import SUFFIXES, build_table, render, render_cost_csv, render_cost_markdown

    say = progress or _say
    runs_dir, out = Path(plan["runs_dir"]), Path(plan["tables_dir"])
    planned = {os.path.realpath(k): v for k, v in plan["run_dirs"].items()}
    collection = collect_results(runs_dir, only=plan["run_dirs"])
    failures, warnings = launch_failures(runs_dir, plan.get("launcher_folder"), only=plan["run_dirs"])
    for f in failures:
        # A task that died before writing result.json: its cell comes from the plan.
        where = planned.get(os.path.realpath(f.run_dir)) if f.run_dir else None
        if where is not None:
            f.cell = (where[1], where[2], where[3], where[4])
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
    write_json_atomic(out / "result.json", {
        "kind": "table", "status": "completed", "experiment": plan["experiment"], "groups": len(table.rows),
        "flagged": flagged, "failures": len(table.failures), "problems": problems, "files": files,
        "finished_at": time.time()})
    print(render(table, "markdown"), end="", flush=True)
    return out


def read_plan_arg(args: list[str], verb: str) -> dict[str, Any]:
    """The plan.json named by the ``plan=<path>`` argument of a final-stage task (``verb`` for errors)."""
    options = dict(a.split("=", 1) for a in args if "=" in a)
    if "plan" not in options:
        raise UserError(f"{verb}: usage: {verb} plan=<plan.json>")
    path = Path(options["plan"].strip("'"))
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{verb}: cannot read {path} ({e})") from e


def table_stage(args: list[str]) -> Path:
    """The table task's callable (``unrealnas.pipeline:table_stage plan=<plan.json>``)."""
    return write_tables(read_plan_arg(args, TABLE_VERB))


# ---- the CLI verb ---------------------------------------------------------------------------------------------------


def cmd_pipeline(args: list[str]) -> int:
    """``unrealnas pipeline +experiment=<name> launcher=slurm|local [--dry-run] [--wait] [overrides]``."""
    from unrealnas.config import compose_config
    from unrealnas.launch import format_status, status

    positional, overrides = split_args(args)
    flags = {"--dry-run", "--wait"}
    unknown = [p for p in positional if p not in flags]
    if unknown:
        raise UserError(f"pipeline takes --dry-run, --wait and key=value overrides, got {' '.join(unknown)}")
    bare = next((o for o in overrides if o.startswith("experiment=") and "." not in o), None)
    if bare is not None:
        raise UserError(f"write +{bare} (the + adds the overlay to the config)")
    if not any(override_key(o) == "experiment" for o in overrides):
        raise UserError("pipeline needs an experiment: +experiment=<name>; choose one of: "
                        f"{', '.join(available_experiments())}")
    cfg = compose_config(overrides)
    plan = plan_pipeline(cfg, overrides)
    if "--dry-run" in positional:
        print(format_stages(f"experiment {plan.experiment}: {plan.description}", plan.stages))
        return 0
    run = run_pipeline(plan, progress=_say)
    table_md = plan.tables_dir / "table.md"
    local = str(cfg.launcher.name) == "local"
    if not local:
        submitted = [f"{s.name} {str(run.jobs[s.name][0].job_id).split('_')[0]} ({len(run.jobs[s.name])})"
                     for s in plan.stages if run.jobs.get(s.name)]
        if not submitted:
            _say("every task of this experiment is complete: nothing submitted")
        else:
            _say("submitted arrays: " + ", ".join(submitted))
        _say(f"follow with: unrealnas status {plan.runs_dir}; the table will be {table_md}")
        if "--wait" not in positional or not submitted:
            print(table_md)
            return 0
        wait_all(run.all_jobs())
    report = status(plan.runs_dir, plan.launcher_folder)
    mine = {os.path.realpath(d) for d in [*plan.run_dirs, plan.tables_dir]}
    failed = [t for t in report.failures() if t.run_dir is not None and os.path.realpath(t.run_dir) in mine]
    if failed:
        _say(format_status(report))
    print(table_md)
    return 1 if failed else 0
