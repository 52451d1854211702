"""Issue 22 on the real test cluster (slurm/test-cluster): ``pytest -m slurm tests/test_cluster_scale_slurm.py``.

A stage larger than MaxArraySize goes out as several arrays that the next stage waits for, `status`
works without accounting, and the smoke pipeline writes the same table and genotype bytes on SLURM
as locally. Uses a running controller, or starts the kit's without accounting
(``MAX_ARRAY_SIZE=100 start.sh``) and stops it at the end. The 250- and 1,000-task sweeps are
marked slow: ``pytest -m "slurm and slow" tests/test_cluster_scale_slurm.py``.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from tests.conftest import squeue_ok
from unrealnas.launch import Task, dependency_of, format_status, status, submit_array, wait_all
from unrealnas.launch.records import RECORD_FILE

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
KIT = REPO / "slurm" / "test-cluster"
MODULE = Path(__file__).stem  # importable in the job: the fixture puts tests/ on PYTHONPATH


# ---- task functions (run inside the jobs) ----------------------------------------------------------


def _args(overrides: list[str]) -> dict[str, str]:
    return dict(o.split("=", 1) for o in overrides)


def run_once(overrides: list[str]) -> Path:
    """Append one line per execution to runs.txt (so a task run twice shows), sleep, then finish or fail."""
    kv = _args(overrides)
    run_dir = Path(kv["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "runs.txt", "a") as f:
        f.write(f"{os.environ.get('SLURM_JOB_ID')}\n")
    time.sleep(float(kv.get("sleep", 0)))
    if kv.get("fail") == "1":
        raise RuntimeError(f"boom in {run_dir.name}")
    (run_dir / "result.json").write_text(json.dumps({"kind": "search", "status": "completed", "end": time.time()}))
    return run_dir


def count_results(overrides: list[str]) -> Path:
    """The next stage: fails unless every run directory under ``root`` holds a result (it ran after all parts)."""
    kv = _args(overrides)
    run_dir = Path(kv["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    found = len(list(Path(kv["root"]).glob("*/result.json")))
    if found != int(kv["expect"]):
        raise RuntimeError(f"started with {found} of {kv['expect']} results")
    (run_dir / "result.json").write_text(json.dumps({"kind": "table", "status": "completed", "start": time.time()}))
    return run_dir


# ---- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """A reachable controller: the running one, or the kit's without accounting (MaxArraySize 100), stopped after."""
    if shutil.which("sbatch") is None:
        pytest.skip("sbatch is not installed: apt-get install -y slurm-wlm munge (see slurm/test-cluster/README.md)")
    started = False
    with pytest.MonkeyPatch.context() as mp:
        if not squeue_ok():
            if os.geteuid() != 0:
                pytest.fail(f"no SLURM controller answers and starting the test cluster needs root: sudo {KIT}/start.sh")
            env = {**os.environ, "MAX_ARRAY_SIZE": os.environ.get("MAX_ARRAY_SIZE", "100")}
            proc = subprocess.run([str(KIT / "start.sh"), "--fresh"], capture_output=True, text=True, timeout=300,
                                  env=env)
            if proc.returncode != 0:
                pytest.fail(f"{KIT / 'start.sh'} failed:\n{proc.stdout}\n{proc.stderr}")
            started = True
            cluster_dir = Path(os.environ.get("CLUSTER_DIR", "/tmp/unrealnas-slurm"))
            mp.setenv("SLURM_CONF", str(cluster_dir / "etc" / "slurm.conf"))
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(Path(__file__).parent), str(REPO),
                                                            os.environ.get("PYTHONPATH")) if p))
        yield
    if started:
        subprocess.run([str(KIT / "stop.sh")], capture_output=True, timeout=120)


def _launcher(root: Path, **extra) -> DictConfig:
    return OmegaConf.create({"name": "slurm", "folder": str(root / "runs" / "slurm"), "time_min": 10,
                             "nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0, "cpus_per_task": 1,
                             "mem_gb": None, "array_parallelism": 8, "partition": None, "account": None,
                             "qos": None, "max_array_size": None, "extra": {}, **extra})


def _tasks(root: Path, n: int, stage: str = "search", **kv) -> list[Task]:
    out = []
    for i in range(n):
        run_dir = root / "runs" / stage / f"run{i:05d}"
        out.append(Task(f"{MODULE}:run_once", [f"run_dir={run_dir}", *(f"{k}={v}" for k, v in kv.items())],
                        run_dir=run_dir, stage=stage, group=f"test/{stage}"))
    return out


def _records(root: Path, stage: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "runs" / "slurm" / stage).glob(f"*/{RECORD_FILE}"))]


def _max_array_size() -> int:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    return next(int(ln.split("=")[1]) for ln in out.splitlines() if ln.startswith("MaxArraySize"))


def _split_sweep(root: Path, n: int, limit: int | None, timeout_s: float) -> None:
    """Submit n tasks (limit per array), then a stage that needs every result; check each task ran once."""
    launcher = _launcher(root, max_array_size=limit)
    per_array = min(limit or 10**9, _max_array_size())
    jobs = submit_array(_tasks(root, n), launcher, "search")
    arrays = _records(root, "search")
    assert [len(r["tasks"]) for r in arrays] == [min(per_array, n - k * per_array)
                                                for k in range(-(-n // per_array))]
    assert len({r["job_id"] for r in arrays}) == len(arrays) and len(jobs) == n
    final_dir = root / "runs" / "table" / "check"
    final = Task(f"{MODULE}:count_results", [f"run_dir={final_dir}", f"root={root / 'runs' / 'search'}",
                                             f"expect={n}"], run_dir=final_dir, stage="table", group="test/table")
    (after,) = submit_array([final], launcher, "table", dependency=dependency_of(jobs))
    assert _records(root, "table")[0]["dependency"] == "afterok:" + ":".join(r["job_id"] for r in arrays)
    states = wait_all([after], timeout_s=timeout_s, poll_s=2)
    assert states == ["COMPLETED"], format_status(status(root / "runs"))
    runs = [(root / "runs" / "search" / f"run{i:05d}" / "runs.txt").read_text().split() for i in range(n)]
    assert all(len(r) == 1 for r in runs), [r for r in runs if len(r) != 1][:3]  # every task ran exactly once
    report = status(root / "runs")
    assert {t.state for t in report.tasks} == {"done"} and len(report.tasks) == n + 1
    assert {(s, g) for s, g in report.counts()} == {("search", "test/search"), ("table", "test/table")}  # one stage
    # Resubmission sees one stage: nothing is left to submit.
    assert submit_array(_tasks(root, n), launcher, "search") == []


def test_a_stage_above_max_array_size_is_several_arrays_and_the_next_stage_waits_for_all(cluster, tmp_path):
    _split_sweep(tmp_path, 25, 10, timeout_s=240)


@pytest.mark.slow
def test_a_250_task_sweep_at_max_array_size_100(cluster, tmp_path):
    if _max_array_size() < 250:  # the kit started with MAX_ARRAY_SIZE=100: a single array is refused
        proc = subprocess.run(["sbatch", "--array=0-249", "--wrap", "true"], capture_output=True, text=True)
        assert proc.returncode != 0 and "array" in proc.stderr.lower(), proc.stderr
    _split_sweep(tmp_path, 250, 100, timeout_s=600)


@pytest.mark.slow
def test_a_1000_task_sweep_is_submitted_and_reported_in_seconds(cluster, tmp_path, capsys):
    """The submitting side at scale: planning + submission time, its memory, status on the finished sweep."""
    import tracemalloc

    launcher = _launcher(tmp_path, array_parallelism=8)
    tracemalloc.start()
    t0 = time.perf_counter()
    tasks = _tasks(tmp_path, 1000)
    jobs = submit_array(tasks, launcher, "search")
    submit_s = time.perf_counter() - t0
    peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    assert len(jobs) == 1000
    states = wait_all(jobs, timeout_s=1800, poll_s=5)
    assert set(states) == {"COMPLETED"}, sorted(set(states))
    t0 = time.perf_counter()
    report = status(tmp_path / "runs")
    status_s = time.perf_counter() - t0
    assert {t.state for t in report.tasks} == {"done"} and len(report.tasks) == 1000
    with capsys.disabled():
        print(f"\n1000 tasks: plan+submit {submit_s:.2f} s ({len(_records(tmp_path, 'search'))} arrays), "
              f"peak Python heap of the submission {peak_mb:.1f} MiB, status on the finished sweep {status_s:.2f} s, "
              f"ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    # The targets, with room for a loaded 2-core test machine.
    assert submit_s < 30 and status_s < 6, (submit_s, status_s)


# ---- no accounting ---------------------------------------------------------------------------------------


@pytest.fixture
def no_accounting(cluster, tmp_path, monkeypatch):
    """sacct as on a cluster without slurmdbd: a cluster of the kit without --dbd, or sacct hidden from users."""
    probe = subprocess.run(["sacct", "--noheader", "-X", "-S", "now"], capture_output=True, text=True)
    if probe.returncode == 0:  # accounting runs here: hide it, as clusters that keep sacct from users do
        shim = tmp_path / "bin"
        shim.mkdir()
        (shim / "sacct").write_text("#!/bin/sh\necho 'sacct: error: Slurm accounting storage is disabled' >&2\n"
                                    "exit 1\n")
        (shim / "sacct").chmod(0o755)
        monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ['PATH']}")
    check = subprocess.run(["sacct", "--noheader", "-X"], capture_output=True, text=True)
    assert check.returncode != 0 and "accounting storage is disabled" in check.stderr, check


def _wait_for(predicate, timeout_s: float = 90) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.5)


def test_status_without_accounting_reads_the_queue_and_the_outcome_files(no_accounting, tmp_path):
    root = tmp_path
    runs = root / "runs"
    launcher = _launcher(root)
    ok = _tasks(root, 2)
    bad = [Task(f"{MODULE}:run_once", [f"run_dir={runs / 'search' / 'bad'}", "fail=1"],
                run_dir=runs / "search" / "bad", stage="search", group="test/search")]
    slow = [Task(f"{MODULE}:run_once", [f"run_dir={runs / 'search' / f'slow{i}'}", "sleep=120"],
                 run_dir=runs / "search" / f"slow{i}", stage="search", group="test/search") for i in range(2)]
    first = submit_array([*ok, *bad], launcher, "search")
    running = submit_array(slow, launcher, "search")
    waiting = submit_array(_tasks(root, 1, stage="train"), launcher, "retrain", dependency=dependency_of(running))

    def states() -> dict[tuple[str, str], str]:
        return {(t.stage, t.name): t.state for t in status(runs).tasks}

    # A job has written its result a moment before squeue stops listing it as RUNNING: wait for both.
    _wait_for(lambda: all(j.done() for j in first) and states()[("search", "bad")] == "failed"
              and states()[("search", "run00001")] == "done" and states()[("search", "slow1")] == "running"
              and states()[("search", "slow0")] == "running")
    assert states() == {("search", "run00000"): "done", ("search", "run00001"): "done",
                        ("search", "bad"): "failed", ("search", "slow0"): "running",
                        ("search", "slow1"): "running", ("train", "run00000"): "pending"}
    report = status(runs)
    failed = {t.name: t for t in report.failures()}
    assert "RuntimeError: boom in bad" in Path(failed["bad"].log).read_text()
    (waiting_status,) = [t for t in report.tasks if t.stage == "train"]
    assert "Dependency" in waiting_status.note, waiting_status
    assert waiting_status.job_id == str(waiting[0].job_id)
    # A job that leaves the queue without an outcome (cancelled, node lost) is failed, not pending forever.
    subprocess.run(["scancel", str(running[0].job_id)], check=True)
    _wait_for(lambda: states()[("search", "slow0")] == "failed")
    note = next(t.note for t in status(runs).tasks if t.name == "slow0")
    assert "left the queue without a result" in note, note
    assert states()[("search", "slow1")] == "running"
    assert states()[("train", "run00000")] == "pending"  # afterok on an array: decided when the array ends
    subprocess.run(["scancel", str(running[1].job_id)], check=True)
    # Now the retrain stage can never run (SLURM kills it or says DependencyNeverSatisfied): failed.
    _wait_for(lambda: states()[("search", "slow1")] == "failed" and states()[("train", "run00000")] == "failed")
    assert sorted(states().values()) == ["done", "done", "failed", "failed", "failed", "failed"]


# ---- the same bytes on every launcher ------------------------------------------------------------------


def _pipeline(root: Path, *extra: str) -> int:
    from tests.unit.pipeline.test_pipeline import TINY
    from unrealnas.cli import main as cli

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(cli.VERBS, "pipeline", ("unrealnas.cli.pipeline", "cmd_pipeline", "run an experiment"))
        return cli.main(["pipeline", "+experiment=smoke", *TINY, f"paths.runs={root / 'runs'}",
                         f"paths.data={root / 'data'}", *extra])


def _genotypes(runs: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in (runs / "search").glob("*/genotype.json")}


def test_the_smoke_pipeline_gives_the_same_bytes_locally_and_on_slurm(cluster, tmp_path, monkeypatch):
    # As from a login shell: no OMP_NUM_THREADS, so each job's torch would take its 4 allocated CPUs.
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert _pipeline(tmp_path / "local", "launcher=local") == 0
    assert _pipeline(tmp_path / "slurm", "launcher=slurm", "launcher.cpus_per_task=4", "launcher.time_min=15",
                     "launcher.array_parallelism=8", "--wait") == 0
    local, slurm = tmp_path / "local" / "runs", tmp_path / "slurm" / "runs"
    for name in ("table.csv", "table.md"):
        assert (slurm / "tables" / "smoke" / name).read_bytes() == (local / "tables" / "smoke" / name).read_bytes()
    assert _genotypes(slurm) == _genotypes(local) and len(_genotypes(local)) == 4
    provenance = [json.loads(p.read_text()) for p in (slurm / "search").glob("*/provenance.json")]
    assert provenance and all(p["threads"] == 1 and p["slurm"] for p in provenance), provenance
    trained = [json.loads(p.read_text()) for p in (slurm / "train").glob("*/result.json")]
    assert len(trained) == 4 and all(r["threads"] == 1 and r["slurm_job_id"] for r in trained)
    # runtime.threads=0 follows the launcher: the job's 4 CPUs, recorded as such.
    from tests.unit.pipeline.test_pipeline import TINY

    run_dir = tmp_path / "follow" / "runs"
    overrides = ["search=darts", "preset=smoke", *TINY[:-2], "runtime.threads=0", f"paths.runs={run_dir}",
                 f"paths.data={tmp_path / 'slurm' / 'data'}", "data.num_classes=10"]
    (job,) = submit_array([Task("search", overrides, run_dir=tmp_path / "follow" / "x")],
                          _launcher(tmp_path / "follow", cpus_per_task=4), "search")
    wait_all([job], timeout_s=240, poll_s=1)
    (prov,) = (run_dir / "search").glob("*/provenance.json")
    # torch takes OMP_NUM_THREADS = the job's 4 CPUs, capped at the cores it sees (2 on the test VM): not 1
    assert json.loads(prov.read_text())["threads"] > 1
