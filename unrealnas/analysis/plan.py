"""Planning and launching the analyses: which datasets to generate and which trainings to run.

``unrealnas analyze difficulty|distinguishability`` turns ``cfg.analysis`` into three job arrays
chained through the launch layer, like ``pipeline``::

    generate (one task per dataset) -afterok-> fit (every training) -afterany-> report

Everything lives under ``<paths.runs>/analysis/<kind>-<name>/``: ``plan.json`` (what the report
reads), ``archs/arch-NN/genotype.json`` (the sampled architectures), ``train/<run-id>/`` (the
trainings, ordinary retrain run directories, so they resume and are skipped when complete) and
the report (``report.md``, ``report.csv``, ``result.json``, ``figures/``). Datasets are shared with
the searches under ``paths.data``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from unrealnas.config.compose import group_choices
from unrealnas.config.data_folders import check_search_data, check_target_data
from unrealnas.config.experiment import default_stage_launchers
from unrealnas.config.overrides import override_key
from unrealnas.errors import ConfigError, UserError
from unrealnas.launch import Task
from unrealnas.launch.stages import Stage, format_stages, quote_override, submit_stages, task_overrides
from unrealnas.rundir import ANALYSIS, GENOTYPE_FILE, PLAN_FILE, RESULT_FILE, TRAIN, run_path

KINDS = ("difficulty", "distinguishability")
REPORT_VERB = "unrealnas.analysis.report:report_stage"
# Set per task from cfg.analysis: a command-line value would be ambiguous.
AXIS_KEYS = ("data", "data.name", "data.num_classes", "train", "train.target", "train.root", "train.run_id",
             "train.epochs", "genotype", "train.pretrained")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class AnalysisPlan:
    """The stages of one analysis and the ``plan.json`` its report stage reads."""

    kind: str
    out_dir: Path
    stages: list[Stage]
    spec: dict[str, Any]
    archs: dict[str, Any]  # genotype.json path -> Genotype, written before submission

    def describe(self) -> str:
        """Stages and tasks, one line each (``--dry-run``)."""
        return format_stages(f"analysis {self.kind} -> {self.out_dir}", self.stages)


def _check_analysis(a: DictConfig, kind: str) -> None:
    def fail(key: str, why: str) -> None:
        raise ConfigError(f"config: analysis.{key} is invalid: {why}")

    datasets, targets = group_choices("data"), [t for t in group_choices("train") if t != "dataset"]
    if not _NAME.match(str(a.name)):
        fail("name", f"{a.name!r}; use a plain name (letters, digits, _ . -)")
    if not a.datasets or any(d not in datasets for d in a.datasets) or len(set(a.datasets)) != len(a.datasets):
        fail("datasets", f"{list(a.datasets)}; give distinct names from {', '.join(datasets)}")
    for d, n in a.num_classes.items():
        if int(n) < 2:
            fail(f"num_classes.{d}", f"{n}; use a class count >= 2")
    if a.epochs < 1:
        fail("epochs", f"{a.epochs}; use at least 1 epoch")
    if not 0.0 < a.convergence_fraction <= 1.0:
        fail("convergence_fraction", f"{a.convergence_fraction}; use a fraction in (0, 1]")
    if a.silhouette_samples < 3 or a.silhouette_dims < 1:
        fail("silhouette_samples", "use at least 3 samples and 1 dimension")
    if kind == "distinguishability":
        if a.num_archs < 2:
            fail("num_archs", f"{a.num_archs}; a rank correlation needs at least 2 architectures")
        if not 1 <= a.probe_epoch <= a.epochs:
            fail("probe_epoch", f"{a.probe_epoch}; use an epoch from 1 to analysis.epochs={a.epochs}")
        if a.target not in targets:
            fail("target", f"{a.target!r}; choose one of {', '.join(targets)}")


def plan_analysis(kind: str, cfg: DictConfig, overrides: Sequence[str]) -> AnalysisPlan:
    """The generate, fit and report stages of analysis ``kind`` for ``cfg`` (composed from ``overrides``)."""
    from unrealnas.config import compose_config
    from unrealnas.data.generators import dataset_dir
    from unrealnas.nas.genotype import sample_genotype

    if kind not in KINDS:
        raise UserError(f"analyze: unknown analysis {kind!r}; choose one of {', '.join(KINDS)}")
    a = cfg.analysis
    _check_analysis(a, kind)
    clash = [o for o in overrides if override_key(o) in AXIS_KEYS]
    if clash:
        raise UserError(f"analyze sets {override_key(clash[0])} per task; drop {clash[0]!r} and use analysis.datasets / "
                        "analysis.num_classes / analysis.target / analysis.epochs instead")
    runs_dir = Path(cfg.paths.runs).expanduser().absolute()
    data_dir = Path(cfg.paths.data).expanduser().absolute()
    out_dir = run_path(runs_dir, ANALYSIS, f"{kind}-{a.name}")
    base = task_overrides(overrides)
    data_path = f"paths.data={quote_override(data_dir)}"
    # The trainings are retrain runs whose paths.runs is the analysis folder: their run directories
    # stay out of <paths.runs>/train, where the result tables of the searches look.
    fit_paths = [data_path, f"paths.runs={quote_override(out_dir)}"]

    num_archs = 1 if kind == "difficulty" else int(a.num_archs)
    archs: dict[str, Any] = {}
    for k in range(num_archs):
        path = out_dir / "archs" / f"arch-{k:02d}" / GENOTYPE_FILE
        archs[str(path)] = sample_genotype(int(a.arch_seed) + k)

    launchers = default_stage_launchers()
    generate = Stage("generate", [], OmegaConf.merge(cfg.launcher, launchers["generate"]))
    fit = Stage("fit", [], cfg.launcher, ("generate",), "afterok")
    datasets: list[dict[str, Any]] = []
    fits: dict[str, list[Any]] = {}
    for d in a.datasets:
        data_ovs = [*base, f"data={d}", *([f"data.num_classes={int(a.num_classes[d])}"] if d in a.num_classes else [])]
        dcfg = compose_config([*data_ovs, data_path])
        check_search_data(dcfg, d)
        folder = dataset_dir(dcfg).absolute()
        generate.tasks.append(Task("generate", [*data_ovs, data_path], run_dir=folder, stage="generate",
                                   group=f"{kind}/{d}"))
        label = str(dcfg.data.label)
        datasets.append({"name": d, "label": label, "num_classes": int(dcfg.data.num_classes), "folder": str(folder)})
        for k, path in enumerate(archs):
            rid = f"{d}-arch{k:02d}"
            ovs = [*data_ovs, "train=dataset", f"train.epochs={int(a.epochs)}", *a.dataset_overrides,
                   f"genotype={quote_override(path)}", f"train.run_id={rid}", *fit_paths]
            run_dir = run_path(out_dir, TRAIN, rid)
            fit.tasks.append(Task("retrain", ovs, run_dir=run_dir, stage="train", group=f"{kind}/{d}"))
            fits[str(run_dir)] = [k, d]
    targets: dict[str, int] = {}
    if kind == "distinguishability":
        t_ovs = [*base, f"train={a.target}", *a.target_overrides]
        check_target_data(compose_config([*t_ovs, data_path]), f"analysis.target {a.target!r}")
        for k, path in enumerate(archs):
            rid = f"{a.target}-arch{k:02d}"
            run_dir = run_path(out_dir, TRAIN, rid)
            fit.tasks.append(Task("retrain", [*t_ovs, f"genotype={quote_override(path)}", f"train.run_id={rid}", *fit_paths],
                                  run_dir=run_dir, stage="train", group=f"{kind}/{a.target}"))
            targets[str(run_dir)] = k
    report = Stage("report", [Task(REPORT_VERB, [f"plan={quote_override(out_dir / PLAN_FILE)}"], run_dir=out_dir,
                                   stage="report", group=f"{kind}-{a.name}")],
                   OmegaConf.merge(cfg.launcher, launchers["table"]), ("generate", "fit"), "afterany")
    spec = {"kind": kind, "name": str(a.name), "dir": str(out_dir), "seed": int(cfg.seed), "arch_seed": int(a.arch_seed),
            "datasets": datasets,
            "archs": list(archs), "fits": fits, "targets": targets, "target": str(a.target),
            "epochs": int(a.epochs), "probe_epoch": int(a.probe_epoch),
            "convergence_fraction": float(a.convergence_fraction), "silhouette_samples": int(a.silhouette_samples),
            "silhouette_dims": int(a.silhouette_dims),
            "launcher_folder": str(Path(str(cfg.launcher.folder)).expanduser().absolute())}
    return AnalysisPlan(kind, out_dir, [generate, fit, report], spec, archs)


def run_analysis(plan: AnalysisPlan) -> dict[str, list[Any]]:
    """Write the architectures and plan.json, then submit (SLURM) or run (local) the three stages."""
    from unrealnas.atomic import write_json_atomic
    from unrealnas.launch import check_slurm
    from unrealnas.nas.genotype import Genotype

    if str(plan.stages[1].launcher.name) == "slurm":
        check_slurm()  # before writing anything
    for path, genotype in plan.archs.items():
        if Path(path).is_file():
            if Genotype.load(path) != genotype:
                raise UserError(f"{path} holds another architecture than analysis.arch_seed now samples; keep the "
                                f"old seed or give the analysis a new name (analysis.name=...)")
        else:
            genotype.save(path)
    plan_path = plan.out_dir / PLAN_FILE
    try:
        changed = json.loads(plan_path.read_text()) != plan.spec
    except (OSError, ValueError):
        changed = True
    if changed:
        write_json_atomic(plan_path, plan.spec)

    def before(stage: Stage, jobs: dict[str, list[Any]]) -> None:
        marker = plan.out_dir / RESULT_FILE
        if stage.name == "report" and (changed or any(jobs.values())) and marker.exists():
            marker.unlink()  # new trainings (or a new plan) make the old report stale

    return submit_stages(plan.stages, before)
