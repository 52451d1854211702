"""What the mini reproduction needs: alpha entropy and architecture steps per search, retrain seeds, its plan."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import smoke_overrides
from unrealnas.atomic import read_jsonl
from unrealnas.config import compose_config
from unrealnas.errors import ConfigError
from unrealnas.pipeline.plan import plan_pipeline
from unrealnas.results.collect import collect_results
from unrealnas.results.stats import search_notes
from unrealnas.search.run import run_search

TINY_SEARCH = ["search.layers=3", "search.init_channels=2", "search.resolution=8", "search.batch_size=8",
               "data.num_images=64", "data.num_classes=10", "search.warmup_epochs=1", "search.epochs=2",
               "search.arch_lr=0.05"]


def test_search_records_alpha_entropy_and_architecture_steps(tmp_path):
    run_dir = run_search(compose_config(smoke_overrides(tmp_path, *TINY_SEARCH)))
    result = json.loads((run_dir / "result.json").read_text())
    m = result["metrics"]
    assert m["alpha_entropy_start"] == pytest.approx(math.log(8))  # zero-initialised alphas: uniform
    assert m["alpha_entropy_end"] < m["alpha_entropy_start"] - 1e-3  # the alphas moved
    rows = read_jsonl(run_dir / "metrics.jsonl")
    # 64 images, half for the weights, batch 8: 4 steps per epoch, none in the warm-up epoch.
    assert [r["arch_steps"] for r in rows] == [0, 4, 4] and m["arch_steps"] == 8
    assert rows[0]["alpha_entropy"] == pytest.approx(math.log(8)) and rows[-1]["alpha_entropy"] == m["alpha_entropy_end"]
    notes = search_notes(collect_results(tmp_path / "runs"))
    assert len(notes) == 1 and "2.0794 -> " in notes[0] and "8 architecture steps" in notes[0]


def _plan(tmp_path, *extra):
    ovs = ["+experiment=smoke", f"paths.runs={tmp_path / 'runs'}", f"paths.data={tmp_path / 'data'}", *extra]
    return plan_pipeline(compose_config(ovs), ovs)


def test_retrain_seeds_retrain_each_search_several_times(tmp_path):
    plan = _plan(tmp_path, "experiment.retrain_seeds=[0,1,2]")
    searches, retrains = plan.stage("search").tasks, plan.stage("retrain").tasks
    assert len(retrains) == 3 * len(searches) and len({t.run_dir for t in retrains}) == len(retrains)
    assert plan.repeats == 2 * 3  # 2 search seeds x 3 retrain seeds per table group
    first = [t for t in retrains if str(searches[0].run_dir) in " ".join(t.overrides)]
    assert sorted(o for t in first for o in t.overrides if o.startswith("seed=")) == ["seed=0", "seed=1", "seed=2"]
    assert {t.run_dir.name.rsplit("-", 1)[1] for t in first} == {"r0", "r1", "r2"}
    with pytest.raises(ConfigError, match="retrain_seeds"):
        _plan(tmp_path, "experiment.retrain_seeds=[1,1]")


def test_mini_distinguishability_plans_twenty_architectures_on_the_searches_datasets(tmp_path):
    from unrealnas.analysis.plan import plan_analysis

    ovs = ["+experiment=mini", f"paths.runs={tmp_path / 'runs'}", f"paths.data={tmp_path / 'data'}"]
    cfg = compose_config(ovs)
    plan = plan_analysis("distinguishability", cfg, ovs)
    assert len(plan.archs) >= 20 and plan.spec["target"] == "digits"
    fit = plan.stages[1]
    assert len(fit.tasks) == 20 * (3 + 1)  # each architecture on RLRN, RLGD, RLRD, and trained on the digits
    # The analysis fits the searches' own seed-0 datasets: the pipeline has generated them already.
    pipeline = plan_pipeline(cfg, ovs)
    searched = {t.run_dir for t in pipeline.stage("generate").tasks}
    assert {t.run_dir for t in plan.stages[0].tasks} <= searched
