"""Schema of the experiment overlays (``conf/experiment/*.yaml``, selected with ``+experiment=<name>``).

An experiment is a sweep for ``unrealnas pipeline``: methods x datasets x class counts x seeds
(the searches), each search retrained on one or more targets, and a table at the end. The overlay
files use ``# @package _global_`` and set the ``experiment:`` block below (plus, where needed, a
preset through ``defaults: [override /preset: ...]``). The root schema mounts this dataclass under
the key ``experiment`` (null when no overlay is chosen).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class RetrainSpec:
    target: str = "cifar10"  # train group: cifar10 | cifar100 | imagenet | chexpert
    root: Optional[str] = None  # the target's data folder (train.root of these retrains); null = train.root/data.root
    overrides: list[str] = field(default_factory=list)  # extra Hydra overrides of these retrains only
    pretrained_from: Optional[str] = None  # another retrain entry (same search) whose run initialises this one
    stage: Optional[str] = None  # job array name; null = "retrain", or "finetune" when pretrained_from is set
    launcher: dict[str, Any] = field(default_factory=dict)  # launcher keys of this array (e.g. gpus_per_node: 8)


def default_stage_launchers() -> dict[str, dict[str, Any]]:
    # Generating data and building tables need no GPU; asking for one would only queue them longer.
    return {"generate": {"gpus_per_node": 0}, "table": {"gpus_per_node": 0, "cpus_per_task": 1, "time_min": 60}}


@dataclass
class ExperimentConfig:
    name: str = ""  # the overlay's name (file stem under conf/experiment); names the tables folder
    description: str = ""  # one line: which paper table or figure this reproduces
    methods: list[str] = field(default_factory=lambda: ["darts"])  # search group names (darts, darts2, sgas_c1, sgas_c2)
    datasets: list[str] = field(default_factory=lambda: ["rlrn"])  # data group names (rlrd, rlgd, rlrn, cifar10, ...)
    num_classes: dict[str, list[int]] = field(default_factory=dict)  # per dataset; absent = the data group's default
    cells: list[str] = field(default_factory=list)  # "method/dataset" rows searched (e.g. rlnas/rlrd); empty = every method x dataset
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # repeats: one search per seed and cell
    retrain: dict[str, RetrainSpec] = field(default_factory=dict)  # name -> retrain of every search; empty = none
    retrain_seeds: list[int] = field(default_factory=list)  # seeds of each search's retrains; empty = the search's seed
    search_overrides: list[str] = field(default_factory=list)  # extra Hydra overrides of every generate/search task
    stage_launcher: dict[str, dict[str, Any]] = field(default_factory=default_stage_launchers)  # per array name
    plots: bool = True  # the table stage also draws the figures
    # The tables carry the measured search cost (the paper's layout). It is measured time, so false keeps it
    # to cost.md and the same command gives the same table bytes; cost.md/cost.csv are written either way.
    cost_column: bool = True


def register_experiment_schema() -> None:
    """Register the experiment schema in Hydra's ConfigStore (idempotent; not a selectable option)."""
    ConfigStore.instance().store(name="experiment_schema", node=ExperimentConfig)
