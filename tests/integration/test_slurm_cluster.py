"""Integration tests on a real one-node SLURM cluster (slurm/test-cluster): ``pytest -m slurm``.

Uses a cluster that already answers ``squeue``; otherwise starts one with
``slurm/test-cluster/start.sh --dbd`` (root needed) and stops it afterwards. Skipped only when
``sbatch`` is not installed. The tasks are tiny functions of this module (a ``module:function``
verb), so the tests exercise the launch layer and SLURM, not the search itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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
MODULE = Path(__file__).stem  # importable in the job: the cluster fixture puts tests/ on PYTHONPATH
JOB_TIMEOUT_S = 90


# ---- task functions (run inside the jobs) ----------------------------------------------------------


def _args(overrides: list[str]) -> dict[str, str]:
    return dict(o.split("=", 1) for o in overrides)


def _finish(run_dir: Path, **extra) -> Path:
    result = {"kind": "search", "status": "completed", "method": "darts", "search_data": "rlrn",
              "search_label": "random", "num_classes": 10, "job_id": os.environ.get("SLURM_JOB_ID"),
              "array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"), **extra}
    (run_dir / "result.json").write_text(json.dumps(result))
    return run_dir


def write_result(overrides: list[str]) -> Path:
    """Sleep a moment, record start/end times, fail on fail=1, else write a completed result.json."""
    kv = _args(overrides)
    run_dir = Path(kv["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    time.sleep(float(kv.get("sleep", 0)))
    if kv.get("fail") == "1":
        raise RuntimeError(f"boom in {run_dir.name}")
    return _finish(run_dir, start=start, end=time.time())


def hold_run_dir(overrides: list[str]) -> Path:
    """Hold the run directory's lock (as search and retrain do) for sleep= seconds, then finish."""
    from unrealnas.lock import folder_lock

    kv = _args(overrides)
    run_dir = Path(kv["run_dir"])
    with folder_lock(run_dir):
        time.sleep(float(kv.get("sleep", 0)))
        return _finish(run_dir)


def count_steps(overrides: list[str]) -> Path:
    """Count to steps=N, 0.5 s per step, keeping the count on disk (the run's own checkpoint)."""
    kv = _args(overrides)
    run_dir = Path(kv["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    counter = run_dir / "counter.txt"
    i = int(counter.read_text()) if counter.exists() else 0
    with open(run_dir / "history.jsonl", "a") as f:
        f.write(json.dumps({"start": i, "job": os.environ.get("SLURM_JOB_ID"),
                            "restarts": int(os.environ.get("SLURM_RESTART_COUNT", "0"))}) + "\n")
    while i < int(kv["steps"]):
        time.sleep(0.5)
        i += 1
        tmp = counter.with_suffix(".tmp")
        tmp.write_text(str(i))
        os.replace(tmp, counter)
    return _finish(run_dir, count=i)


def every_rank(overrides: list[str]) -> Path:
    """Each rank of a multi-task job leaves a file; rank 0 writes the result once all have (a barrier)."""
    kv = _args(overrides)
    run_dir = Path(kv["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    rank, ntasks = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
    (run_dir / f"rank{rank}.txt").write_text(f"{rank}/{ntasks}")
    if rank == 0:
        deadline = time.time() + 30
        while len(list(run_dir.glob("rank*.txt"))) < ntasks and time.time() < deadline:
            time.sleep(0.1)
        _finish(run_dir, world_size=ntasks)
    return run_dir


# ---- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """A reachable SLURM controller: the running one, or the kit's (started here, stopped at the end)."""
    if shutil.which("sbatch") is None:
        pytest.skip("sbatch is not installed: apt-get install -y slurm-wlm munge slurmdbd mariadb-server "
                    "(see slurm/test-cluster/README.md)")
    started = False
    with pytest.MonkeyPatch.context() as mp:
        if not squeue_ok():
            if os.geteuid() != 0:
                pytest.fail("no SLURM controller answers and starting the test cluster needs root: "
                            f"sudo {KIT / 'start.sh'} --dbd")
            proc = subprocess.run([str(KIT / "start.sh"), "--dbd"], capture_output=True, text=True,
                                  timeout=300)
            if proc.returncode != 0:
                pytest.fail(f"{KIT / 'start.sh'} --dbd failed:\n{proc.stdout}\n{proc.stderr}")
            started = True
            cluster_dir = Path(os.environ.get("CLUSTER_DIR", "/tmp/unrealnas-slurm"))
            mp.setenv("SLURM_CONF", str(cluster_dir / "etc" / "slurm.conf"))
        # sbatch exports the environment: the jobs import this module from tests/.
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(Path(__file__).parent), str(REPO),
                                                            os.environ.get("PYTHONPATH")) if p))
        yield
    if started:
        subprocess.run([str(KIT / "stop.sh")], capture_output=True, timeout=120)


def _launcher(root: Path, **extra) -> DictConfig:
    return OmegaConf.create({"name": "slurm", "folder": str(root / "runs" / "slurm"), "time_min": 10,
                             "nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0, "cpus_per_task": 1,
                             "mem_gb": None, "array_parallelism": 8, "partition": None, "account": None,
                             "qos": None, "extra": {}, **extra})


def _task(root: Path, verb: str, name: str, stage: str = "search", **kv) -> Task:
    run_dir = root / "runs" / stage / name
    return Task(f"{MODULE}:{verb}", [f"run_dir={run_dir}", *(f"{k}={v}" for k, v in kv.items())],
                run_dir=run_dir, stage=stage, group=f"test/{stage}")


def _wait_done(jobs: list, timeout_s: float = JOB_TIMEOUT_S) -> list[str]:
    states = wait_all(jobs, timeout_s=timeout_s, poll_s=0.5)
    assert all(j.done() for j in jobs), f"jobs not done after {timeout_s}s: {states}"
    return states


def _records(root: Path) -> list[Path]:
    return sorted((root / "runs" / "slurm").glob(f"*/*/{RECORD_FILE}"))


@pytest.fixture(scope="module")
def finished_array(cluster, tmp_path_factory):
    """An array of 3 tasks, run to completion."""
    root = tmp_path_factory.mktemp("array")
    tasks = [_task(root, "write_result", f"run{i}", seed=i) for i in range(3)]
    jobs = submit_array(tasks, _launcher(root), "search")
    return root, tasks, jobs, _wait_done(jobs)


# ---- tests ----------------------------------------------------------------------------------------------


def test_array_of_three_tasks_runs_and_each_writes_its_result(finished_array):
    root, tasks, jobs, states = finished_array
    assert states == ["COMPLETED"] * 3
    assert len({str(j.job_id).split("_")[0] for j in jobs}) == 1, "one array, not three jobs"
    results = [json.loads((t.run_dir / "result.json").read_text()) for t in tasks]
    assert sorted(r["array_task_id"] for r in results) == ["0", "1", "2"]
    assert [Path(j.result()) for j in jobs] == [t.run_dir for t in tasks]
    report = status(root / "runs")
    assert report.counts() == {("search", "test/search"): dict(done=3, running=0, pending=0, failed=0)}


def test_resubmitting_a_finished_array_submits_nothing(finished_array):
    root, tasks, _, _ = finished_array
    before = _records(root)
    assert submit_array(tasks, _launcher(root), "search") == []
    assert _records(root) == before


def test_dependency_chain_runs_in_order(cluster, tmp_path):
    first = [_task(tmp_path, "write_result", f"a{i}", sleep=1.5) for i in range(2)]
    second = [_task(tmp_path, "write_result", "b0", stage="train")]
    jobs_a = submit_array(first, _launcher(tmp_path), "search")
    jobs_b = submit_array(second, _launcher(tmp_path), "retrain", dependency=jobs_a)
    assert _wait_done(jobs_a + jobs_b) == ["COMPLETED"] * 3
    ends = [json.loads((t.run_dir / "result.json").read_text())["end"] for t in first]
    start_b = json.loads((second[0].run_dir / "result.json").read_text())["start"]
    assert start_b >= max(ends), "the dependent stage started before the first one ended"
    (record_path,) = (tmp_path / "runs" / "slurm" / "retrain").glob(f"*/{RECORD_FILE}")
    record = json.loads(record_path.read_text())
    assert record["dependency"] == f"afterok:{str(jobs_a[0].job_id).split('_')[0]}"


def test_interrupted_task_is_requeued_and_resumes_from_its_checkpoint(cluster, tmp_path):
    task = _task(tmp_path, "count_steps", "counter", steps=12)
    (job,) = submit_array([task], _launcher(tmp_path), "search")
    counter = task.run_dir / "counter.txt"
    deadline = time.time() + JOB_TIMEOUT_S
    while not (counter.exists() and int(counter.read_text() or 0) >= 2):
        assert time.time() < deadline, "the task never started counting"
        time.sleep(0.2)
    job._interrupt()  # what SLURM does on preemption: SIGTERM, then USR2 (submitit checkpoints on USR2)
    assert Path(job.result()) == task.run_dir
    history = [json.loads(line) for line in (task.run_dir / "history.jsonl").read_text().splitlines()]
    assert len(history) == 2, history
    assert history[0]["start"] == 0 and history[1]["start"] >= 2, "the second attempt did not resume"
    assert history[1]["job"] == history[0]["job"] and history[1]["restarts"] == 1  # requeued, same job id
    assert json.loads((task.run_dir / "result.json").read_text())["count"] == 12


def test_failing_task_shows_as_failed_with_its_log(cluster, tmp_path):
    tasks = [_task(tmp_path, "write_result", "ok"), _task(tmp_path, "write_result", "bad", fail=1)]
    jobs = submit_array(tasks, _launcher(tmp_path), "search")
    downstream = submit_array([_task(tmp_path, "write_result", "after", stage="train")], _launcher(tmp_path),
                              "retrain", dependency=dependency_of(jobs))
    assert _wait_done(jobs) == ["COMPLETED", "FAILED"]
    with pytest.raises(Exception, match="boom in bad"):
        jobs[1].result()
    # The dependent job never runs: the cluster cancels it (kill_invalid_depend); elsewhere it pends
    # as DependencyNeverSatisfied. Either way status calls it failed.
    deadline = time.time() + 30
    while True:
        report = status(tmp_path / "runs")
        failed = {t.name: t for t in report.failures()}
        if "after" in failed or time.time() > deadline:
            break
        time.sleep(0.5)
    assert set(failed) == {"bad", "after"}, format_status(report)
    assert "boom in bad" in failed["bad"].note
    assert failed["bad"].log and "RuntimeError: boom in bad" in Path(failed["bad"].log).read_text()
    assert failed["bad"].log in format_status(report)
    assert {t.name: t.state for t in report.tasks}["ok"] == "done"
    assert failed["after"].job_id == str(downstream[0].job_id)
    assert failed["after"].log is None  # it never started, so there is no log to point at


def test_double_submission_is_skipped_as_running_elsewhere_not_failed(cluster, tmp_path):
    from unrealnas.lock import holder

    first = _task(tmp_path, "hold_run_dir", "twice", sleep=8)
    (job_a,) = submit_array([first], _launcher(tmp_path), "search")
    deadline = time.time() + JOB_TIMEOUT_S
    while holder(first.run_dir) is None:
        assert time.time() < deadline, "the first job never took the run directory"
        time.sleep(0.2)
    (job_b,) = submit_array([first], _launcher(tmp_path), "search-again")  # the same run, submitted again
    wait_all([job_b], timeout_s=JOB_TIMEOUT_S, poll_s=0.5)
    deadline = time.time() + 30
    while True:  # until the second job has left the queue (COMPLETING still counts as running)
        [t] = status(tmp_path / "runs").tasks
        if t.note or time.time() > deadline:
            break
        time.sleep(0.5)
    assert t.state == "running" and t.note.startswith("skipped here: running elsewhere (host "), t
    assert _wait_done([job_a]) == ["COMPLETED"]
    assert [(t.state, t.name) for t in status(tmp_path / "runs").tasks] == [("done", "twice")]


def test_multi_task_job_runs_every_rank(cluster, tmp_path):
    task = _task(tmp_path, "every_rank", "ddp", stage="train")
    (job,) = submit_array([task], _launcher(tmp_path, tasks_per_node=2), "retrain")
    assert _wait_done([job]) == ["COMPLETED"]
    assert sorted(p.read_text() for p in task.run_dir.glob("rank*.txt")) == ["0/2", "1/2"]
    assert json.loads((task.run_dir / "result.json").read_text())["world_size"] == 2


def test_a_cli_verb_runs_inside_a_job(cluster, tmp_path):
    (job,) = submit_array([Task("unrealnas.cli.data:cmd_config", ["seed=5", "preset=smoke"], stage="config")], _launcher(tmp_path), "config")
    assert _wait_done([job]) == ["COMPLETED"]
    assert "seed: 5" in Path(job.paths.stdout).read_text()


def test_sweep_array_sbatch_runs_one_line_per_task(cluster, tmp_path):
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("# a comment\n\n" + "".join(f"config seed={s} preset=smoke\n" for s in range(3)))
    # The console script of the interpreter running the tests (the project's venv).
    env = {**os.environ, "UNREALNAS": str(Path(sys.executable).parent / "unrealnas")}
    # The script asks for a GPU and 8 CPUs; the command line overrides that for the CPU-only test node.
    cmd = ["sbatch", "--parsable", "--array=0-2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=5",
           f"--output={tmp_path}/%A_%a.out", str(REPO / "slurm" / "sweep_array.sbatch"), str(tasks)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    array_id = proc.stdout.strip().split(";")[0]
    # Poll the queue (sbatch --wait polls every few seconds, which triples this test's time).
    deadline = time.time() + JOB_TIMEOUT_S
    queued = ["squeue", "--noheader", "--jobs", array_id]
    while subprocess.run(queued, capture_output=True, text=True, timeout=30).stdout.strip():
        assert time.time() < deadline, f"array {array_id} still queued after {JOB_TIMEOUT_S}s"
        time.sleep(0.3)
    outs = sorted(tmp_path.glob(f"{array_id}_*.out"))
    assert len(outs) == 3, [p.name for p in tmp_path.iterdir()]
    for out in outs:
        i = int(out.stem.rsplit("_", 1)[1])
        assert f"seed: {i}" in out.read_text()


def test_ddp_retrain_runs_as_one_job_with_two_ranks(cluster, tmp_path, cifar_root):
    """The real retrain stage through the launch layer: one job, 2 tasks, gloo all-reduce between them."""
    tiny = ["preset=smoke", "genotype=DARTS_V2", "train.layers=3", "train.init_channels=4",
            "train.batch_size=8", "train.max_images=32", "train.max_eval_images=16", "device=cpu",
            "train.epochs=1",
            f"data.root={cifar_root}", f"paths.runs={tmp_path / 'runs'}"]
    run_dir = tmp_path / "runs" / "train" / "ddp"
    task = Task("retrain", [*tiny, "train.run_id=ddp"], run_dir=run_dir)
    (job,) = submit_array([task], _launcher(tmp_path, tasks_per_node=2), "retrain")
    assert _wait_done([job], timeout_s=180) == ["COMPLETED"], Path(job.paths.stderr).read_text()[-3000:]
    assert [Path(r) for r in job.results()] == [run_dir, run_dir]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed" and result["world_size"] == 2
    assert [(t.stage, t.state) for t in status(tmp_path / "runs").tasks] == [("train", "done")]


def test_srun_two_tasks_runs_one_ddp_retrain(cluster, tmp_path, cifar_root):
    """`srun -n2 unrealnas retrain ...` (what slurm/retrain_multinode.sbatch does): one run, world size 2."""
    tiny = ["preset=smoke", "genotype=DARTS_V2", "train.layers=3", "train.init_channels=4", "train.batch_size=8",
            "train.max_images=32", "train.max_eval_images=16", "device=cpu", "train.epochs=1",
            f"data.root={cifar_root}", f"paths.runs={tmp_path / 'runs'}", "train.run_id=srun"]
    cmd = ["srun", "-n2", "--cpus-per-task=1", "--time=5", sys.executable, "-m", "unrealnas", "retrain", *tiny]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "runs" / "train" / "srun" / "result.json").read_text())
    assert result["status"] == "completed" and result["world_size"] == 2


def test_preempted_search_is_requeued_and_ends_like_an_uninterrupted_one(cluster, tmp_path):
    """A real search task interrupted (USR2) mid-search: requeued, resumed from its checkpoint, same alphas."""
    from unrealnas.config import compose_config
    from unrealnas.search.run import run_search
    from unrealnas.search.state import search_run_dir

    tiny = ["preset=smoke", "search.layers=3", "search.init_channels=2", "search.resolution=8", "search.batch_size=8",
            "data.num_images=64", "data.num_classes=10", "search.warmup_epochs=1", "search.epochs=7",
            "search.checkpoint_every=2", "device=cpu"]
    straight = run_search(compose_config([*tiny, f"paths.data={tmp_path / 'a'}", f"paths.runs={tmp_path / 'a'}"]))
    overrides = [*tiny, f"paths.data={tmp_path / 'b'}", f"paths.runs={tmp_path / 'b'}"]
    run_dir = search_run_dir(compose_config(overrides))
    (job,) = submit_array([Task("search", overrides, run_dir=run_dir)], _launcher(tmp_path), "search")
    deadline = time.time() + 180
    while not (run_dir / "checkpoint.pt").exists():
        assert time.time() < deadline, "the search never checkpointed"
        time.sleep(0.2)
    assert not (run_dir / "result.json").exists(), "the search finished before it could be interrupted"
    job._interrupt()  # preemption: SIGTERM then USR2; submitit requeues a fresh copy of the task
    assert Path(job.result()) == run_dir
    assert "resuming at epoch" in Path(job.paths.stderr).read_text()
    a = json.loads((straight / "result.json").read_text())
    b = json.loads((run_dir / "result.json").read_text())
    assert a["alphas"] == b["alphas"] and a["genotype_json"] == b["genotype_json"]
