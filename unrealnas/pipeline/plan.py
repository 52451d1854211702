"""Planning a paper experiment: every task of the sweep, stage by stage, and what the table reads."""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from unrealnas.config.compose import available_experiments, group_choices
from unrealnas.config.data_folders import check_search_data, check_target_data
from unrealnas.config.methods import SAMPLED_METHODS
from unrealnas.config.overrides import override_key
from unrealnas.errors import ConfigError, UserError
from unrealnas.launch.packing import pack_search_tasks, pack_seeds_choice
from unrealnas.launch.stages import Stage, quote_override, task_overrides
from unrealnas.launch.task import Task
from unrealnas.pipeline.tables import TABLE_VERB
from unrealnas.results.collect import MISSING
from unrealnas.rundir import PLAN_FILE, TABLES, TRAIN, run_path

# Keys the pipeline sets per task from the experiment; a command-line value would be ambiguous.
AXIS_KEYS = ("data", "data.name", "data.num_classes", "search", "search.method", "train", "train.target", "seed",
             "seeds", "genotype", "train.run_id", "train.pretrained")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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


def _check_experiment(exp: DictConfig, name: str) -> None:
    """Choices and cross-references the schema's types cannot express, one ConfigError line each."""
    def fail(key: str, why: str) -> None:
        raise ConfigError(f"config: experiment.{key} is invalid ({name}): {why}")

    methods, datasets, targets = group_choices("search"), group_choices("data"), group_choices("train")
    if not exp.methods or any(m not in methods for m in exp.methods):
        fail("methods", f"{list(exp.methods)}; choose from {', '.join(methods)}")
    if not exp.datasets or any(d not in datasets for d in exp.datasets):
        fail("datasets", f"{list(exp.datasets)}; choose from {', '.join(datasets)}")
    for cell in exp.cells:
        m, _, d = str(cell).partition("/")
        if m not in exp.methods or d not in exp.datasets:
            fail("cells", f"{cell!r}; give method/dataset pairs of experiment.methods and experiment.datasets")
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


def plan_pipeline(cfg: DictConfig, overrides: Sequence[str]) -> Plan:
    """Every task of the experiment in ``cfg`` (composed from ``overrides``), stage by stage."""
    from unrealnas.config import compose_config
    from unrealnas.data.generators import ROTATIONS, dataset_dir
    from unrealnas.search.state import search_run_dir

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
            if exp.cells and not sampled and f"{method}/{dataset}" not in exp.cells:
                continue  # not a row of this experiment (experiment.cells lists them)
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
                    if label == "rotation":  # the searches' result.json: 4 rotation classes, not data.num_classes
                        n_cls = ROTATIONS
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
                            tdir = run_path(runs_dir, TRAIN, rid)
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

    tables_dir = run_path(runs_dir, TABLES, name)
    table_task = Task(TABLE_VERB, [f"plan={quote_override(tables_dir / PLAN_FILE)}"], run_dir=tables_dir, stage="table",
                      group=name)
    ordered = [stages["generate"], stages["search"], *(s for k, s in stages.items() if k not in ("generate", "search"))]
    table = Stage("table", [table_task], _launcher_for(cfg, "table"), tuple(s.name for s in ordered), "afterany")
    launcher_folder = Path(str(cfg.launcher.folder)).expanduser().absolute()
    return Plan(name, str(exp.description), [*ordered, table], runs_dir, tables_dir, launcher_folder,
                len(seeds) * max(1, len(retrain_seeds)),
                expected, run_dirs, int(cfg.seed), notes, bool(exp.plots),
                bool(exp.cost_column))
