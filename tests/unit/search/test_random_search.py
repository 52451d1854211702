"""search=random: the random-architecture baseline as an ordinary search run, in the pipeline and the table."""

from __future__ import annotations

import json

from tests.conftest import smoke_overrides
from unrealnas.cli import main as cli
from unrealnas.config import compose_config
from unrealnas.nas.genotype import RANDOM_SEARCH_STREAM, Genotype, sample_genotype
from unrealnas.pipeline.plan import plan_pipeline
from unrealnas.results.collect import architecture_name, collect_results, parse_group, parse_result
from unrealnas.results.figures import _label as figure_label
from unrealnas.results.tables import build_table, render
from unrealnas.search.state import search_run_dir


def test_random_search_writes_a_complete_run_without_data(tmp_path, capsys):
    ovs = smoke_overrides(tmp_path, "search=random", "seed=3")
    assert cli.main(["search", *ovs]) == 0
    run_dir = search_run_dir(compose_config(ovs))
    assert run_dir.name.startswith("random-s3-")
    for name in ("config.yaml", "provenance.json", "genotype.json", "genotype.png", "result.json"):
        assert (run_dir / name).is_file(), name
    assert not (tmp_path / "datasets").exists()  # no dataset generated or needed
    result = json.loads((run_dir / "result.json").read_text())
    assert result["method"] == "random" and result["status"] == "completed"
    assert result["gpu_hours"] == 0.0 and result["cpu_hours"] == 0.0 and result["metrics"]["arch_steps"] == 0
    g = Genotype.load(run_dir)
    assert g == sample_genotype(3, stream=RANDOM_SEARCH_STREAM)
    assert g != sample_genotype(3)  # not the analyses' probe architecture of the same seed
    assert g != sample_genotype(4, stream=RANDOM_SEARCH_STREAM)
    r = parse_result(run_dir, result)
    assert r.setting == ("random", "-", "-", None) and architecture_name(r.setting) == "Random cell"
    # A finished run is a no-op; the run id does not depend on the (unused) dataset.
    assert cli.main(["search", *ovs, "data=rlgd", "data.num_classes=7"]) == 0
    assert search_run_dir(compose_config([*ovs, "data=rlgd"])) == run_dir
    assert "already completed" in capsys.readouterr().err


def test_pipeline_adds_one_random_search_per_seed_and_its_retrains(tmp_path):
    ovs = ["+experiment=smoke", f"paths.runs={tmp_path / 'runs'}", f"paths.data={tmp_path / 'data'}",
           "experiment.methods=[darts,random]", "experiment.datasets=[rlrn,rlgd]", "experiment.seeds=[0,1,2]"]
    plan = plan_pipeline(compose_config(ovs), ovs)
    searches = plan.stage("search").tasks
    random = [t for t in searches if "search=random" in t.overrides]
    assert len(searches) == 2 * 3 + 3 and len(random) == 3  # one per seed, not one per dataset
    assert len({t.run_dir for t in random}) == 3 and all(t.group == "random/-/-" for t in random)
    assert len(plan.stage("generate").tasks) == 6  # none for the random cells
    retrains = [t for t in plan.stage("retrain").tasks if any(str(r.run_dir) in o for r in random for o in t.overrides)]
    assert len(retrains) == 3
    assert ["random", "-", "-", None, "digits"] in plan.expected
    # A failed random task is attributed to its row from its launcher group.
    assert parse_group("train", retrains[0].group) == (("random", "-", "-", None), "digits")


def _result(path, **fields):
    path.mkdir(parents=True)
    (path / "result.json").write_text(json.dumps({"status": "completed", **fields}))


def test_random_rows_are_ordinary_table_rows(tmp_path):
    runs = tmp_path / "runs"
    for seed, err in ((0, 20.0), (1, 22.0)):
        _result(runs / "search" / f"random-s{seed}", kind="search", method="random", search_data=None,
                search_label=None, num_classes=None, seed=seed, gpu_hours=0.0, metrics={"skip_normal": 1})
        _result(runs / "train" / f"digits-random-s{seed}", kind="train", method="random", search_data=None,
                search_label=None, num_classes=None, seed=seed, target="digits", metrics={"top1_err": err})
        _result(runs / "train" / f"digits-darts-s{seed}", kind="train", method="darts", search_data="rlrn",
                search_label="random", num_classes=10, seed=seed, target="digits", metrics={"top1_err": err - 5})
    collection = collect_results(runs)
    assert not collection.problems
    table = build_table(collection, repeats=2, expected=[(("random", "-", "-", None), "digits")])
    row = next(r for r in table.rows if r.method == "random" and r.metric == "top1_err")
    assert (row.n, row.mean, row.flags) == (2, 21.0, [])
    md = render(table, "markdown")
    assert "| Random cell | 20.00 (21.00±1.41) n=2 |" in md and "| 0 |" in md  # zero search cost
    assert "random,-,-,,digits,top1_err,2,20.0,21.0," in render(table, "csv")
    assert figure_label(row.setting) == "random"  # legends of the learning curves and cell drawings
