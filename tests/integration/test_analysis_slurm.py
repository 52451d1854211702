"""Both analyses on the real one-node SLURM of slurm/test-cluster: ``pytest -m slurm tests/integration/test_analysis_slurm.py``.

Tiny sizes; the point is the orchestration: three chained job arrays per analysis (generate,
fit, report), every training a task of ONE array, and a report that reads their run directories.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_pipeline_slurm import SLURM, _record
from tests.integration.test_slurm_cluster import cluster  # noqa: F401  (the fixture)
from tests.unit.analysis.test_analysis import TINY
from unrealnas.cli import main as cli
from unrealnas.launch import format_status, status

pytestmark = pytest.mark.slurm


def _analyze(root: Path, kind: str, *extra: str) -> int:
    return cli.main(["analyze", kind, "preset=smoke", f"paths.runs={root / 'runs'}", f"paths.data={root / 'data'}",
                     *TINY, *SLURM, "launcher.gpus_per_node=0", "analysis.epochs=2", *extra, "--wait"])
    # (the test node has no GPU: a GPU request is refused before anything is submitted)


@pytest.fixture(scope="module")
def analysed(cluster, tmp_path_factory):  # noqa: F811  (cluster is the imported fixture)
    """Both analyses submitted with ``--wait`` and run to the end, one after the other."""
    root = tmp_path_factory.mktemp("analysis")
    rc_difficulty = _analyze(root, "difficulty", "analysis.datasets=[digits,rlrn]")
    rc_dist = _analyze(root, "distinguishability", "analysis.num_archs=3", "analysis.probe_epoch=2",
                       "analysis.datasets=[rlgd]", "analysis.target_overrides=['train.epochs=1']")
    return root, rc_difficulty, rc_dist


def test_difficulty_on_slurm(analysed):
    root, rc, _ = analysed
    runs = root / "runs"
    assert rc == 0, format_status(status(runs))
    out = runs / "analysis" / "difficulty-default"
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "completed" and {r["dataset"] for r in result["rows"]} == {"digits", "rlrn"}
    assert all(r["status"] == "completed" and r["epochs_trained"] == 2 for r in result["rows"])
    fit = json.loads((out / "train" / "digits-arch00" / "result.json").read_text())
    assert fit["slurm_job_id"]  # trained by a SLURM job, not here


def test_distinguishability_on_slurm_is_one_array_per_stage(analysed):
    root, _, rc = analysed
    runs = root / "runs"
    assert rc == 0, format_status(status(runs))
    gen, fit, report = (_record(runs, s, -1) for s in ("generate", "fit", "report"))
    assert gen["launcher"] == fit["launcher"] == "slurm" and len(fit["tasks"]) == 6  # 3 archs x (rlgd + digits)
    assert fit["dependency"] == f"afterok:{gen['job_id']}"
    assert report["dependency"] == f"afterany:{gen['job_id']}:{fit['job_id']}"
    assert {t["job_id"].split("_")[0] for t in fit["tasks"]} == {fit["job_id"]}
    result = json.loads((runs / "analysis" / "distinguishability-default" / "result.json").read_text())
    (row,) = result["rows"]
    assert row["n"] == 3 and -1.0 <= row["tau"] <= 1.0
