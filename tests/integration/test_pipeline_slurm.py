"""The smoke pipeline on the real one-node SLURM of slurm/test-cluster: ``pytest -m slurm tests/integration/test_pipeline_slurm.py``.

Reuses the ``cluster`` fixture of tests/integration/test_slurm_cluster.py (a running controller, or the kit's,
started and stopped by the fixture). Tiny sizes: the stages are the real ones (generate, search,
retrain, table), each task a few seconds of compute plus the job's start-up.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.integration.test_slurm_cluster import cluster  # noqa: F401  (the fixture)
from tests.unit.pipeline.test_pipeline import TINY, _csv, _plan, _records
from unrealnas.cli import main as cli
from unrealnas.launch import format_status, status, wait_all
from unrealnas.launch.records import RECORD_FILE
from unrealnas.pipeline.submit import run_pipeline

pytestmark = pytest.mark.slurm

# CPU-only node, one core per task; the test node advertises more slots than cores. No
# launcher.gpus_per_node here: +experiment=smoke itself asks for no GPU (the node has none).
SLURM = ["launcher=slurm", "launcher.cpus_per_task=1", "launcher.time_min=15", "launcher.array_parallelism=8"]
TIMEOUT_S = 600


def _overrides(root: Path, *extra: str) -> list[str]:
    # DARTS only: the assertions count one row of searched cells (the random cells need no search).
    return ["+experiment=smoke", f"paths.runs={root / 'runs'}", f"paths.data={root / 'data'}", *TINY, *SLURM,
            "experiment.methods=[darts]", *extra]


def _record(runs: Path, stage: str, index: int = 0) -> dict:
    paths = sorted((runs / "slurm" / stage).glob(f"*/{RECORD_FILE}"), key=lambda p: p.stat().st_mtime)
    return json.loads(paths[index].read_text())


def _settle(runs: Path, timeout_s: float = 60) -> None:
    """Wait until status has no pending/running task (accounting lags the result pickles a little)."""
    deadline = time.time() + timeout_s
    while any(t.state in ("pending", "running") for t in status(runs).tasks) and time.time() < deadline:
        time.sleep(1)


@pytest.fixture(scope="module")
def finished(cluster, tmp_path_factory):  # noqa: F811  (cluster is the imported fixture)
    """The smoke pipeline submitted with ``--wait`` and run to the end."""
    root = tmp_path_factory.mktemp("pipeline")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(cli.VERBS, "pipeline", ("unrealnas.cli.pipeline", "cmd_pipeline", "run an experiment"))
        t0 = time.time()
        rc = cli.main(["pipeline", *_overrides(root), "--wait"])
    return root, rc, time.time() - t0


def test_one_array_per_stage_chained_by_dependencies(finished):
    root, rc, _ = finished
    runs = root / "runs"
    assert rc == 0, format_status(status(runs))
    assert _records(runs) == {"generate": 1, "search": 1, "retrain": 1, "table": 1}
    gen, search, retrain, table = (_record(runs, s) for s in ("generate", "search", "retrain", "table"))
    assert gen["launcher"] == "slurm" and len(gen["tasks"]) == 2 and len(search["tasks"]) == 2
    assert len(retrain["tasks"]) == 2 and len(table["tasks"]) == 1
    assert gen["dependency"] is None
    assert search["dependency"] == f"afterok:{gen['job_id']}"
    assert retrain["dependency"] == f"afterany:{search['job_id']}"
    assert table["dependency"] == f"afterany:{gen['job_id']}:{search['job_id']}:{retrain['job_id']}"
    ids = {t["job_id"].split("_")[0] for t in search["tasks"]}
    assert ids == {search["job_id"]}  # tasks of one array, not separate jobs


def test_end_to_end_table_has_n_equal_to_the_repeats(finished):
    root, _, _ = finished
    runs = root / "runs"
    rows = _csv(runs)
    assert rows and all(r["n"] == "2" and r["flags"] == "" for r in rows), rows
    results = [json.loads(p.read_text()) for p in (runs / "train").glob("*/result.json")]
    assert len(results) == 2 and all(r["status"] == "completed" and r["slurm_job_id"] for r in results)
    assert {t.state for t in status(runs).tasks} == {"done"}


def test_resubmitting_the_finished_sweep_submits_nothing(finished):
    root, _, _ = finished
    runs = root / "runs"
    before = sorted((runs / "slurm").glob(f"*/*/{RECORD_FILE}"))
    run = run_pipeline(_plan(_overrides(root)))
    assert all(jobs == [] for jobs in run.jobs.values()), run.jobs
    assert sorted((runs / "slurm").glob(f"*/*/{RECORD_FILE}")) == before


def test_failing_task_shows_as_failed_in_status_and_table_with_its_log(finished):
    root, _, _ = finished
    runs = root / "runs"
    plan = _plan(_overrides(root, "experiment.seeds=[0,1,2]"))
    (bad,) = [t for t in plan.stage("search").tasks if not t.is_complete()]
    bad.run_dir.mkdir(parents=True)
    (bad.run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")  # the search refuses to resume from it
    run = run_pipeline(plan)
    assert {k: len(v) for k, v in run.jobs.items()} == {"generate": 1, "search": 1, "retrain": 1, "table": 1}
    states = wait_all(run.all_jobs(), timeout_s=TIMEOUT_S, poll_s=1)
    assert states == ["COMPLETED", "FAILED", "FAILED", "COMPLETED"], states
    _settle(runs)
    report = status(runs)
    failed = {t.name: t for t in report.failures()}
    assert bad.run_dir.name in failed, format_status(report)
    log = failed[bad.run_dir.name].log
    assert log and "CheckpointError" in Path(log).read_text()
    assert log in format_status(report)
    rows = _csv(runs)
    assert all(r["n"] == "2" for r in rows)
    assert all("incomplete: n=2 of 3" in r["flags"] and log in r["flags"] for r in rows), rows
    assert "failed search run" in (runs / "tables" / "smoke" / "table.md").read_text()
